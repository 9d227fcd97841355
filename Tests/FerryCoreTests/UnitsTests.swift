import Testing

@testable import FerryCore

@Suite struct UnitsTests {
    @Test(arguments: [
        ("8MiB", Int64(8 * 1_048_576)), ("512KiB", 524_288), ("1GiB", 1_073_741_824), ("4096", 4096),
        ("100MB", 100_000_000), ("1.5GiB", 1_610_612_736), ("64 KiB", 65536), ("0", 0), ("12B", 12),
    ])
    func parsesSizes(_ text: String, _ bytes: Int64) {
        #expect(Units.parseSize(text) == bytes)
    }

    @Test(arguments: ["8 megs", "MiB", "-1MiB", "1.2.3MiB", "8MiBs", "", "8mib", ".5MiB", "1e3", "0.3B"])
    func rejectsMalformedSizes(_ text: String) {
        #expect(Units.parseSize(text) == nil)
    }

    @Test func parsesRatesAndOff() throws {
        #expect(try Units.parseRate("50MiB/s").get() == 50 * 1_048_576)
        #expect(try Units.parseRate("off").get() == nil)
        #expect((try? Units.parseRate("50MiB").get()) == nil)
        #expect((try? Units.parseRate("0MiB/s").get()) == nil)
    }

    @Test func parsesDurations() {
        #expect(Units.parseDuration("1h") == 3600)
        #expect(Units.parseDuration("1h30m") == 5400)
        #expect(Units.parseDuration("30d") == 2_592_000)
        #expect(Units.parseDuration("90s") == 90)
        #expect(Units.parseDuration("10") == nil)
        #expect(Units.parseDuration("1x") == nil)
        #expect(Units.parseDuration("h") == nil)
    }

    @Test func parsesFractions() {
        #expect(Units.parseFraction("5%") == 0.05)
        #expect(Units.parseFraction("100%") == 1)
        #expect(Units.parseFraction("0.1") == 0.1)
        #expect(Units.parseFraction("0%") == nil)
        #expect(Units.parseFraction("150%") == nil)
    }

    @Test func formats() {
        #expect(Units.formatBytes(512) == "512 B")
        #expect(Units.formatBytes(1_572_864) == "1.50 MiB")
        #expect(Units.formatDuration(3723) == "1h02m03s")
        #expect(Units.formatDuration(65) == "1m05s")
        #expect(Units.formatElapsed(0.43) == "0.4s")
        #expect(Units.formatElapsed(9.96) == "10s")
        #expect(Units.formatElapsed(65) == "1m05s")
    }

    @Test func pathSafety() {
        #expect(PathUtil.isSafeRelative("a/b/c"))
        #expect(!PathUtil.isSafeRelative("../etc/passwd"))
        #expect(!PathUtil.isSafeRelative("a/../../b"))
        #expect(!PathUtil.isSafeRelative("/etc/passwd"))
        #expect(!PathUtil.isSafeRelative("a//b"))
        #expect(!PathUtil.isSafeRelative("a/./b"))
        #expect(PathUtil.normalize("/a/b/../c/./d") == "/a/c/d")
        #expect(PathUtil.isInside("/a/b/c", "/a/b"))
        #expect(!PathUtil.isInside("/a/bc", "/a/b"))
    }
}
