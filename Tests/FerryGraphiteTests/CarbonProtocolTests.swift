import FerryTesting
import Foundation
import Testing

@testable import FerryGraphite

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

    /// A value is valid exactly when it parses to a finite double: the oracle is Python's own float().
    @Test func valuesAreFiniteDoublesAsPythonReadsThemAndTimestampsFitWhisper() throws {
        let values = [
            "1e-300", "1e300", "1.7976931348623157e308", "1" + String(repeating: "0", count: 400), "99999999999999999999e299",
            "1e-400", "-0.0", "4e308", "0.000001", "12345678901234567890",
        ]
        let python = String(
            decoding: try pythonOutput(
                "import math\nfor v in [\(values.map { "'\($0)'" }.joined(separator: ", "))]:\n    print('finite' if math.isfinite(float(v)) else 'inf')"
            ), as: UTF8.self
        )
        .split(separator: "\n").map(String.init)
        #expect(python.count == values.count)
        for (v, verdict) in zip(values, python) {
            let problem = check("a.b \(v) 1700000000").1
            #expect((problem == nil) == (verdict == "finite"), "\(v.prefix(30)): python says \(verdict), ferry \(String(describing: problem))")
        }
        #expect(check("a.b 1 " + "1" + String(repeating: "0", count: 400)).1 == .badTimestamp, "a 400-digit timestamp")
        #expect(check("a.b 1 4294967295").1 == nil)
        #expect(check("a.b 1 4294967296").1 == .badTimestamp, "beyond Whisper's 32-bit timestamps")
        var out: [UInt8] = []
        #expect(CarbonLine.normalize(path: "a.b", value: 1, timestamp: 1e12, into: &out) == .badTimestamp)
        #expect(CarbonLine.normalize(path: "a.b", value: 1e300, timestamp: 1_700_000_000, into: &out) == nil)
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

    /// The review's reproducer: 100,000 levels of nesting crashed the tap (a recursive teardown overflowed the
    /// event loop's stack). Refused with the depth limit, freed without recursion.
    @Test func aDeeplyNestedPickleIsRefusedNotACrash() throws {
        let nested: [UInt8] =
            [0x80, 0x02] + [UInt8](repeating: UInt8(ascii: "("), count: 100_000)
            + [UInt8](repeating: UInt8(ascii: "l"), count: 100_000) + [UInt8(ascii: ".")]
        do {
            _ = try PickleDecoder.decode(nested)
            Issue.record("a 100,000-deep pickle was accepted")
        } catch {
            #expect(error.reason.contains("nested deeper"), "\(error.reason)")
        }
        // Deep nesting through APPEND instead of MARK/LIST is bounded the same way.
        var viaAppend: [UInt8] = [0x80, 0x02, UInt8(ascii: "]")]
        for _ in 0..<50_000 { viaAppend += [UInt8(ascii: "]"), UInt8(ascii: "a")] }
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(viaAppend + [UInt8(ascii: ".")]) }
        // Real Python pickles of a deep list (built by Python) are refused too.
        let deep = try python("x = []\nfor _ in range(200): x = [x]\nsys.stdout.buffer.write(pickle.dumps(x, protocol=2))")
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(deep) }
    }

    /// The review's 1 MB pickle that memoizes the list after every APPEND cost minutes of CPU (each APPEND copied
    /// the list). Decoding is linear now: a message of 200,000 such APPENDs is read in well under a second.
    @Test func aMemoHeavyPickleDecodesInLinearTime() throws {
        var quadratic: [UInt8] = [UInt8(ascii: "]"), UInt8(ascii: "q"), 0]
        for _ in 0..<200_000 { quadratic += [UInt8(ascii: "K"), 1, UInt8(ascii: "a"), UInt8(ascii: "q"), 0] }
        quadratic.append(UInt8(ascii: "."))
        let started = Date()
        #expect(throws: PickleDecoder.Refused.self) { try PickleDecoder.decode(quadratic) }  // not carbon's shape
        let took = Date().timeIntervalSince(started)
        print("memo-heavy pickle of \(quadratic.count) bytes refused in \(took) s")
        #expect(took < 5, "took \(took) s")
        // The same shape of real data: Python memoizes a shared list and appends to it; it still decodes.
        let shared = try python(
            "l = []\nfor i in range(2000): l.append(('m%d' % i, (1700000000 + i, float(i))))\n"
                + "sys.stdout.buffer.write(pickle.dumps(l, protocol=2))")
        let points = try PickleDecoder.decode(shared)
        #expect(points.count == 2000 && points[1999] == .init(path: "m1999", timestamp: 1_700_001_999, value: 1999))
    }

    @Test func pythonTwoStylePicklesDecode() throws {
        // What a Python 2 carbon client sends: protocol 2 with SHORT_BINSTRING paths and BININT timestamps.
        let bytes: [UInt8] =
            [0x80, 0x02, 0x5D, 0x71, 0x00, 0x28, 0x55, 0x03] + Array("a.b".utf8)
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
