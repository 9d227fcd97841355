import Foundation
import Testing
import FerryTesting
@testable import FerryTap

@Suite struct CarbonLineTests {
    func check(_ line: String) -> (String?, CarbonLine.Problem?) {
        var out: [UInt8] = []
        let problem = Array(line.utf8).withUnsafeBytes { CarbonLine.normalize($0, into: &out) }
        return (out.isEmpty ? nil : String(decoding: out, as: UTF8.self), problem)
    }

    @Test func validLinesAreNormalized() {
        #expect(check("a.b.c 1.5 1700000000").0 == "a.b.c 1.5 1700000000\n")
        #expect(check("  a.b\t-2e3   1700000000.5\r").0 == "a.b -2e3 1700000000.5\n")
        #expect(check("servers.web-01.cpu_user 0 1700000000").0 != nil)
        #expect(check("ünïcode.metric 1 1700000000").0 != nil)
        #expect(check("").1 == nil && check("").0 == nil)
    }

    @Test func invalidLinesAreRefusedWithTheReason() {
        #expect(check("garbage").1 == .fieldCount(1))
        #expect(check("a b c d").1 == .fieldCount(4))
        #expect(check("a.b notanumber 1700000000").1 == .badValue)
        #expect(check("a.b nan 1700000000").1 == .badValue)
        #expect(check("a.b inf 1700000000").1 == .badValue)
        #expect(check("a.b 1e999 1700000000").1 == .badValue)
        #expect(check("a.b 1 -5").1 == .badTimestamp)
        #expect(check("a.b 1 soon").1 == .badTimestamp)
        #expect(check("../../etc/passwd 1 1700000000").1 == .badPath)
        #expect(check("a..b 1 1700000000").1 == .badPath)
        #expect(check(".a 1 1700000000").1 == .badPath)
        #expect(check("a/b 1 1700000000").1 == .badPath)
        #expect(check("a\u{01}b 1 1700000000").1 == .badPath)
        var out: [UInt8] = []
        let bad: [UInt8] = Array("a.".utf8) + [0xFF, 0xFE] + Array(" 1 1700000000".utf8)
        #expect(bad.withUnsafeBytes { CarbonLine.normalize($0, into: &out) } == .badPath)
    }

    @Test func linesSplitAcrossReadsAreJoinedAndLongLinesRefusedWhole() {
        var asm = LineAssembler(maxLineLength: 64)
        var lines: [String] = []
        var long: [Int] = []
        let stream = "a.b 1 1700000000\na.c 2 17" + "00000000\n" + String(repeating: "x", count: 100) + "\nd.e 3 1700000000\n"
        let bytes = Array(stream.utf8)
        // Feed in awkward pieces, including the long line spread over several reads.
        var i = 0
        for size in [5, 13, 1, 40, 7, 60, 30, 200] where i < bytes.count {
            let end = min(bytes.count, i + size)
            bytes[i..<end].withUnsafeBytes { raw in
                asm.feed(raw, line: { lines.append(String(decoding: $0, as: UTF8.self)) }, tooLong: { long.append($0) })
            }
            i = end
        }
        #expect(lines == ["a.b 1 1700000000", "a.c 2 1700000000", "d.e 3 1700000000"])
        #expect(long.count == 1)
        #expect(asm.pendingBytes == 0)
    }
}

@Suite struct PickleTests {
    /// Pickles produced by the real Python `pickle` module.
    func python(_ code: String) throws -> [UInt8] { try pythonOutput(code) }

    @Test(arguments: [0, 1, 2, 3, 4, 5])
    func carbonPayloadsDecodeInEveryProtocol(proto: Int) throws {
        let bytes = try python(
            "sys.stdout.buffer.write(pickle.dumps([('a.b.c', (1700000000, 1.5)), ('d.e', (1700000001.0, -2)), "
                + "('ü.x', (1700000002, 3)), ('big', (1700000003, 12345678901234))], protocol=\(proto)))")
        let points = try PickleDecoder.decode(bytes)
        #expect(
            points == [
                .init(path: "a.b.c", timestamp: 1_700_000_000, value: 1.5), .init(path: "d.e", timestamp: 1_700_000_001, value: -2),
                .init(path: "ü.x", timestamp: 1_700_000_002, value: 3), .init(path: "big", timestamp: 1_700_000_003, value: 12_345_678_901_234),
            ])
    }

    @Test func pythonTwoStylePicklesDecode() throws {
        // What a Python 2 carbon client sends: protocol 2 with SHORT_BINSTRING paths and BININT timestamps.
        let bytes: [UInt8] = [0x80, 0x02, 0x5D, 0x71, 0x00, 0x28, 0x55, 0x03] + Array("a.b".utf8)
            + [0x71, 0x01, 0x4A, 0x00, 0xF1, 0x53, 0x65, 0x47, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0, 0x86, 0x71, 0x02, 0x86, 0x71, 0x03, 0x65, 0x2E]
        #expect(try PickleDecoder.decode(bytes) == [.init(path: "a.b", timestamp: 1_700_000_000, value: 1.5)])
    }

    @Test func hostilePicklesAreRefusedWithoutRunningAnything() throws {
        // The directory lives as long as the test (a TempDir released at once would delete it, and a check that
        // the marker is absent could never fail).
        let markerDir = TempDir("pickle")
        let marker = markerDir.sub("pwned")
        let evil = try python(
            "class E:\n    def __reduce__(self): return (os.system, ('touch \(marker)',))\n"
                + "sys.stdout.buffer.write(pickle.dumps([('a', (1, E()))], protocol=2))")
        // Control: Python's own unpickler runs the payload, so the marker check below can fail.
        _ = try python("pickle.loads(bytes.fromhex('\(evil.map { String(format: "%02x", $0) }.joined())'))")
        #expect(FileManager.default.fileExists(atPath: marker), "the payload works when unpickled by Python")
        try FileManager.default.removeItem(atPath: marker)
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(evil) }
        #expect(!FileManager.default.fileExists(atPath: marker))
        let global = try python("sys.stdout.buffer.write(pickle.dumps([('a', (1, os.getcwd))], protocol=0))")
        do {
            _ = try PickleDecoder.decode(global)
            Issue.record("a GLOBAL opcode was accepted")
        } catch {
            #expect(error.reason.contains("GLOBAL"))
        }
        let dict = try python("sys.stdout.buffer.write(pickle.dumps({'a': 1}, protocol=2))")
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(dict) }
        let good = try python("sys.stdout.buffer.write(pickle.dumps([('a', (1, 2))], protocol=2))")
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(Array(good.dropLast(3))) }
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode([]) }
        let wrongShape = try python("sys.stdout.buffer.write(pickle.dumps([('a', 1, 2)], protocol=2))")
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(wrongShape) }
    }
}
