import FerryCore
import FerryZstd

/// The point codec: a lossless encoding of Whisper archives that goes beyond generic zstd.
///
/// A body is a sequence of segments that together restore the chunk byte for byte. The bytes outside point
/// arrays (the header, a point cut by the chunk's edge) travel as they are or zstd-compressed. Each array of
/// 12-byte points (a 4-byte big-endian timestamp and an 8-byte big-endian value) is split into a timestamp plane
/// and a value plane:
/// - timestamps become the difference to the previous one (regular steps, so one repeated value);
/// - values become the XOR with the previous value's bits, as Gorilla does (few changing bits), or stay as they
///   are when they repeat exactly (a gauge of a few distinct values, which XOR would scatter);
/// - both planes are transposed byte by byte, so the zero bytes of each column lie together, then zstd.
///
/// Each array takes whichever of zeros, the two plane forms and plain zstd is smallest (raw when nothing is
/// smaller), so a sparse or empty archive does not get worse than plain zstd. An array up to 256 KiB is encoded
/// every way; a larger one is judged on four evenly spread 16 KiB samples, then encoded once. The receiver checks
/// the restored chunk against its SHA-256 as for any encoding.
///
/// Segment: tag (1 byte), decoded length (u32 LE), payload length (u32 LE), payload.
enum PointCodec {
    static let pointSize = 12

    enum Tag: UInt8 {
        case raw = 0
        case zstd = 1
        case zero = 2
        case planes = 3
        case valuePlanes = 4
    }

    /// What was chosen, segment by segment (for tests and the benchmark's report).
    struct Choice: Equatable {
        var tag: Tag
        var decoded: Int
        var payload: Int
    }

    /// The body for `bytes`, which start at `offset` in an object whose point arrays are `runs`.
    static func encode(
        _ bytes: UnsafeRawBufferPointer, offset: Int64, runs: [ByteRange], compressor: ZstdCompressor
    ) -> (body: [UInt8], choices: [Choice]) {
        var body: [UInt8] = []
        body.reserveCapacity(bytes.count / 4)
        var choices: [Choice] = []
        var at = 0
        func emit(_ tag: Tag, decoded: Int, _ payload: [UInt8]) {
            body.append(tag.rawValue)
            appendU32(&body, UInt32(decoded))
            appendU32(&body, UInt32(payload.count))
            body += payload
            choices.append(Choice(tag: tag, decoded: decoded, payload: payload.count))
        }
        func plain(_ part: UnsafeRawBufferPointer) {
            guard part.count > 0 else { return }
            if Bytes.isZero(part) { return emit(.zero, decoded: part.count, []) }
            let z = compressor.compress(part)
            if z.count < part.count { emit(.zstd, decoded: part.count, z) } else { emit(.raw, decoded: part.count, Array(part)) }
        }
        for (start, end) in pointSpans(count: bytes.count, offset: offset, runs: runs) {
            plain(UnsafeRawBufferPointer(rebasing: bytes[at..<start]))
            let part = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
            at = end
            if Bytes.isZero(part) {
                emit(.zero, decoded: part.count, [])
                continue
            }
            let (tag, payload) = choose(part, compressor: compressor)
            if payload.count < part.count { emit(tag, decoded: part.count, payload) } else { emit(.raw, decoded: part.count, Array(part)) }
        }
        plain(UnsafeRawBufferPointer(rebasing: bytes[at..<bytes.count]))
        return (body, choices)
    }

    /// The whole-point spans (start, end) of the chunk `[offset, offset + count)` that lie in `runs`, as
    /// offsets in the chunk, each aligned to its run's points.
    static func pointSpans(count: Int, offset: Int64, runs: [ByteRange]) -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        let chunkEnd = offset + Int64(count)
        var last: Int64 = offset
        for r in runs.sorted(by: { $0.offset < $1.offset }) where r.length > 0 {
            let runEnd = r.offset + r.length
            var start = max(r.offset, offset, last)
            var end = min(runEnd, chunkEnd)
            guard start < end else { continue }
            // Whole points only: a point cut by the chunk's edge travels with the plain bytes.
            let skew = (start - r.offset) % Int64(pointSize)
            if skew != 0 { start += Int64(pointSize) - skew }
            end = start + (end - start) / Int64(pointSize) * Int64(pointSize)
            guard start < end else { continue }
            out.append((Int(start - offset), Int(end - offset)))
            last = end
        }
        return out
    }

    /// Archives up to this size are encoded every way and the smallest kept; a larger one is judged on samples.
    static let wholeTrial = 256 << 10
    static let samples = 4
    static let samplePoints = 1365  // 16 KiB of points per sample

    /// The encoding for one array of whole points: plain zstd, planes with values XORed (Gorilla: values that
    /// change a little), or planes with the values as they are (values that repeat exactly, which XOR would
    /// scatter). Ties go to plain zstd.
    static func choose(_ part: UnsafeRawBufferPointer, compressor: ZstdCompressor) -> (Tag, [UInt8]) {
        func encodings(_ t: UnsafeRawBufferPointer) -> [(Tag, [UInt8])] {
            // In order of preference on a tie.
            [
                (.zstd, compressor.compress(t)), (.planes, compressor.compress(planes(t, xor: true))),
                (.valuePlanes, compressor.compress(planes(t, xor: false))),
            ]
        }
        func smallest(_ list: [(Tag, [UInt8])]) -> (Tag, [UInt8]) {
            list.dropFirst().reduce(list[0]) { $1.1.count < $0.1.count ? $1 : $0 }
        }
        if part.count <= wholeTrial { return smallest(encodings(part)) }
        // Evenly spread samples: a ring that is full at one end and empty at the other is seen at both.
        let n = part.count / pointSize
        var sample: [UInt8] = []
        sample.reserveCapacity(samples * samplePoints * pointSize)
        for k in 0..<samples {
            let first = (n - samplePoints) * k / (samples - 1)
            sample += part[(first * pointSize)..<((first + samplePoints) * pointSize)]
        }
        let tag = smallest(sample.withUnsafeBytes { encodings($0) }).0
        switch tag {
        case .zstd: return (tag, compressor.compress(part))
        default: return (tag, compressor.compress(planes(part, xor: tag == .planes)))
        }
    }

    /// The planes of whole points: timestamp deltas then values (XORed with the previous one, or as they are),
    /// each transposed byte by byte.
    static func planes(_ points: UnsafeRawBufferPointer, xor: Bool) -> [UInt8] {
        let n = points.count / pointSize
        var previousTime: UInt32 = 0
        var previousValue: UInt64 = 0
        // Every byte is written below, so the buffer is not zero-filled first.
        return [UInt8](unsafeUninitializedCapacity: n * pointSize) { o, count in
            count = n * pointSize
            for i in 0..<n {
                let p = i * pointSize
                let t = bigEndian32(points, p)
                let v = bigEndian64(points, p + 4)
                let dt = t &- previousTime
                let xv = xor ? v ^ previousValue : v
                previousTime = t
                previousValue = v
                for b in 0..<4 { o[b * n + i] = UInt8(truncatingIfNeeded: dt >> (8 * (3 - b))) }
                for b in 0..<8 { o[(4 + b) * n + i] = UInt8(truncatingIfNeeded: xv >> (8 * (7 - b))) }
            }
        }
    }

    /// The points that `planes` were made from.
    static func points(fromPlanes planes: [UInt8], xor: Bool) -> [UInt8] {
        let n = planes.count / pointSize
        var out = [UInt8](repeating: 0, count: n * pointSize)
        var time: UInt32 = 0
        var value: UInt64 = 0
        planes.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { o in
                for i in 0..<n {
                    var dt: UInt32 = 0
                    var xv: UInt64 = 0
                    for b in 0..<4 { dt = dt << 8 | UInt32(s[b * n + i]) }
                    for b in 0..<8 { xv = xv << 8 | UInt64(s[(4 + b) * n + i]) }
                    time = time &+ dt
                    value = xor ? value ^ xv : xv
                    let p = i * pointSize
                    for b in 0..<4 { o[p + b] = UInt8(truncatingIfNeeded: time >> (8 * (3 - b))) }
                    for b in 0..<8 { o[p + 4 + b] = UInt8(truncatingIfNeeded: value >> (8 * (7 - b))) }
                }
            }
        }
        return out
    }

    /// The bytes a body stands for: exactly `length` of them, or an error naming what is wrong. Every length is
    /// checked before anything is allocated, so a hostile body cannot make the receiver hold more than `length`.
    static func decode(_ body: [UInt8], length: Int) throws(CodecError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(length)
        var at = 0
        let decompressor = ZstdDecompressor()
        while at < body.count {
            guard body.count - at >= 9 else { throw CodecError("a segment header is cut at byte \(at)") }
            guard let tag = Tag(rawValue: body[at]) else { throw CodecError("unknown segment tag \(body[at]) at byte \(at)") }
            let decoded = Int(readU32(body, at + 1))
            let payload = Int(readU32(body, at + 5))
            at += 9
            guard decoded <= length - out.count else {
                throw CodecError("the segments decode to more than the \(length) bytes stated")
            }
            guard payload <= body.count - at else { throw CodecError("a segment of \(payload) bytes is cut at byte \(at)") }
            let slice = body[at..<(at + payload)]
            at += payload
            switch tag {
            case .raw:
                guard payload == decoded else { throw CodecError("a raw segment of \(payload) bytes says it holds \(decoded)") }
                out += slice
            case .zero:
                guard payload == 0 else { throw CodecError("a zero segment carries \(payload) bytes") }
                out += repeatElement(0, count: decoded)
            case .zstd, .planes, .valuePlanes:
                let bytes: [UInt8]
                do {
                    bytes = try slice.withUnsafeBytes { try decompressor.decompress($0, limit: decoded) }
                } catch {
                    throw CodecError("\(error)")
                }
                guard bytes.count == decoded else {
                    throw CodecError("a segment decodes to \(bytes.count) bytes, not the \(decoded) stated")
                }
                if tag != .zstd {
                    guard decoded % pointSize == 0 else { throw CodecError("a point segment of \(decoded) bytes holds no whole points") }
                    out += points(fromPlanes: bytes, xor: tag == .planes)
                } else {
                    out += bytes
                }
            }
        }
        guard out.count == length else { throw CodecError("the segments hold \(out.count) bytes, not the \(length) stated") }
        return out
    }

    struct CodecError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    @inline(__always) static func bigEndian32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3])
    }

    @inline(__always) static func bigEndian64(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        UInt64(bigEndian32(b, at)) << 32 | UInt64(bigEndian32(b, at + 4))
    }

    static func appendU32(_ b: inout [UInt8], _ v: UInt32) {
        for i in 0..<4 { b.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }

    static func readU32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }
}
