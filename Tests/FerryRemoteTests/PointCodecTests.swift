import FerryCore
import FerryDigest
import FerryGraphite
import FerryTesting
import FerryZstd
import Foundation
import Testing

@testable import FerryRemote

/// The point codec against files made by the reference PyPI whisper package: every encoding restores the file's
/// bytes exactly (compared with the bytes read from disk), whatever the chunk boundaries.
@Suite struct PointCodecTests {
    static let now = 1_700_000_000

    enum Shape: String, CaseIterable {
        case gauge, counter, sparse, empty, noise
    }

    /// A file as carbon makes it (whisper.create), updated by the reference with series of the given shape.
    static func file(
        _ shape: Shape, in dir: TempDir, rng: inout SeededRandom, retentions: String = "60:1440,300:2016,3600:1000", minutes: Int = 1440
    ) throws -> [UInt8] {
        let path = dir.sub("\(shape).wsp")
        _ = try WhisperOracle.run(["create", path, retentions, "0.5", "average"])
        var points: [(Int, Double)] = []
        switch shape {
        case .gauge: points = (0..<minutes).map { (now - $0 * 60, (50 + 10 * sin(Double($0) / 30) * 10).rounded() / 10) }
        case .counter: points = (0..<minutes).map { (now - $0 * 60, Double(1_000_000 - $0 * Int.random(in: 3...5, using: &rng))) }
        case .sparse: points = stride(from: 0, to: minutes, by: 97).map { (now - $0 * 60, Double($0 % 7)) }
        case .empty: points = []
        case .noise: points = (0..<minutes).map { (now - $0 * 60, Double.random(in: -1e9...1e9, using: &rng)) }
        }
        if !points.isEmpty {
            _ = try WhisperOracle.run(["update", path, String(now), try WhisperOracle.pointsFile(dir.sub("\(shape).json"), points)])
        }
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    static func runs(_ bytes: [UInt8]) -> [ByteRange] {
        Whisper.pointRuns(
            BytesReader(bytes: bytes, entry: Entry(path: "x", kind: .file, size: Int64(bytes.count), mtimeNs: 0, mode: 0o644, inode: 0)))
    }

    @Test(arguments: Shape.allCases)
    func everyChunkingRestoresTheFileExactly(_ shape: Shape) throws {
        let dir = TempDir()
        var rng = SeededRandom("\(#function) \(shape)")
        let bytes = try Self.file(shape, in: dir, rng: &rng)
        let runs = Self.runs(bytes)
        // The reference's own layout: three archives after a 52-byte header.
        let expected: [Int64] = [52, 52 + 1440 * 12, 52 + 3456 * 12]
        #expect(runs.map(\.offset) == expected)
        let compressor = ZstdCompressor(level: 3)
        for chunk in [bytes.count, 65_536, 4_099, 1_000 + Int.random(in: 0..<500, using: &rng)] {
            var offset = 0
            while offset < bytes.count {
                let end = min(offset + chunk, bytes.count)
                let part = Array(bytes[offset..<end])
                let body = part.withUnsafeBytes { PointCodec.encode($0, offset: Int64(offset), runs: runs, compressor: compressor).body }
                let back = try PointCodec.decode(body, length: part.count)
                let firstDifference = zip(back, part).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                #expect(
                    back.count == part.count && firstDifference == nil,
                    "\(shape): chunk of \(chunk) at \(offset): first wrong byte \(firstDifference ?? -1)")
                let (encoding, wire) = part.withUnsafeBytes { Codec.encode($0, compressor: compressor, offset: Int64(offset), runs: runs) }
                let decoded = try Codec.decode(encoding: encoding, length: String(part.count), body: wire, limit: part.count)
                #expect(SHA256Hasher.digest(decoded) == SHA256Hasher.digest(part))
                offset = end
            }
        }
    }

    @Test func eachArchiveTakesTheSmallestEncoding() throws {
        let dir = TempDir()
        var rng = SeededRandom(#function)
        let compressor = ZstdCompressor(level: 3)
        for shape in Shape.allCases {
            let bytes = try Self.file(shape, in: dir, rng: &rng)
            let runs = Self.runs(bytes)
            let choices = bytes.withUnsafeBytes { PointCodec.encode($0, offset: 0, runs: runs, compressor: compressor).choices }
            // The header, then one segment per archive.
            #expect(choices.count == 4, "\(shape): \(choices)")
            for (archive, run) in zip(choices.dropFirst(), runs) {
                let raw = Array(bytes[Int(run.offset)..<Int(run.offset + run.length)])
                #expect(archive.decoded == raw.count)
                if raw.allSatisfy({ $0 == 0 }) {
                    #expect(archive.tag == .zero, "\(shape): an empty archive travels as its length")
                } else {
                    // Never worse than zstd alone, which is computed here independently.
                    #expect(archive.payload <= compressor.compress(raw).count, "\(shape): \(archive)")
                }
            }
            let finest = choices[1]
            switch shape {
            case .gauge, .counter:
                #expect([.planes, .valuePlanes].contains(finest.tag), "\(shape): a regular dense archive is sent as planes")
                let plain = compressor.compress(Array(bytes[Int(runs[0].offset)..<Int(runs[0].offset + runs[0].length)])).count
                #expect(finest.payload * 2 < plain, "\(shape): planes \(finest.payload) bytes against zstd's \(plain)")
            case .empty: #expect(choices.dropFirst().allSatisfy { $0.tag == .zero })
            case .sparse, .noise: break
            }
        }
    }

    /// A month of minutes (a 506 KiB archive) is judged on samples, then encoded once: still exact, and still no
    /// larger than zstd alone.
    @Test(arguments: Shape.allCases)
    func largeArchivesAreJudgedOnSamples(_ shape: Shape) throws {
        let dir = TempDir()
        var rng = SeededRandom("\(#function) \(shape)")
        let bytes = try Self.file(shape, in: dir, rng: &rng, retentions: "60:43200,600:8640", minutes: 43200)
        let runs = Self.runs(bytes)
        #expect(runs.first.map { $0.length > Int64(PointCodec.wholeTrial) } == true)
        let compressor = ZstdCompressor(level: 3)
        let (body, choices) = bytes.withUnsafeBytes { PointCodec.encode($0, offset: 0, runs: runs, compressor: compressor) }
        let back = try PointCodec.decode(body, length: bytes.count)
        #expect(SHA256Hasher.digest(back) == SHA256Hasher.digest(bytes), "\(shape): the file does not come back")
        let month = Array(bytes[Int(runs[0].offset)..<Int(runs[0].offset + runs[0].length)])
        let plain = compressor.compress(month).count
        #expect(choices[1].payload <= plain, "\(shape): \(choices[1]) against zstd's \(plain) bytes")
    }

    @Test func hostileBodiesAreRefusedWithoutCrashingOrOverAllocating() throws {
        let dir = TempDir()
        var rng = SeededRandom(#function)
        let bytes = try Self.file(.gauge, in: dir, rng: &rng)
        let body = bytes.withUnsafeBytes { PointCodec.encode($0, offset: 0, runs: Self.runs(bytes), compressor: ZstdCompressor(level: 3)).body }
        // Named cases first.
        func refused(_ b: [UInt8], length: Int, _ what: String) {
            #expect(throws: PointCodec.CodecError.self, "\(what)") { _ = try PointCodec.decode(b, length: length) }
        }
        refused(Array(body.dropLast()), length: bytes.count, "a cut body")
        refused(body, length: bytes.count - 1, "a body larger than stated")
        refused(body + [3, 0, 0, 0, 0x40, 0, 0, 0, 0], length: bytes.count, "a segment past the stated length")
        refused([9, 1, 0, 0, 0, 1, 0, 0, 0, 7], length: 1, "an unknown tag")
        refused([0, 5, 0, 0, 0, 1, 0, 0, 0, 7], length: 5, "a raw segment shorter than it says")
        refused([2, 4, 0, 0, 0, 1, 0, 0, 0, 7], length: 4, "a zero segment with a payload")
        refused([2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], length: 1 << 20, "a zero run of 4 GiB")
        let eleven = ZstdCompressor().compress([UInt8](repeating: 1, count: 11))
        refused([3, 11, 0, 0, 0, UInt8(eleven.count), 0, 0, 0] + eleven, length: 11, "planes without whole points")
        // Then random damage: an error, or exactly the stated length (the receiver's SHA-256 check catches the rest).
        for _ in 0..<300 {
            var damaged = body
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                damaged[Int.random(in: 0..<damaged.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if let out = try? PointCodec.decode(damaged, length: bytes.count) { #expect(out.count == bytes.count) }
        }
    }
}
