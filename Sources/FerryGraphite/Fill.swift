import FerryCore
import Foundation

/// What a fill did to one destination file.
public struct FillReport: Sendable, Equatable {
    /// Slots written per destination archive (index order).
    public var filled: [Int]
    /// Destination archives that no source archive could fill without routing coarse data into fine slots.
    public var skipped: [Int]
    /// Coarse slots recomputed from their finer archive because the fill completed the data they aggregate.
    public var recomputed: Int = 0
    /// The bytes of the file the fill wrote, first through last (nil when it wrote none): what a merge writes back.
    public var changed: ClosedRange<Int>?
    public var total: Int { filled.reduce(0, +) }
}

/// The span of offsets a fill has written, widened point by point.
struct ChangedSpan {
    var first = Int.max
    var last = Int.min

    @inline(__always) mutating func mark(_ offset: Int) {
        if offset < first { first = offset }
        if offset + Whisper.pointSize - 1 > last { last = offset + Whisper.pointSize - 1 }
    }

    var range: ClosedRange<Int>? { first <= last ? first...last : nil }
}

extension Whisper {
    /// Merges history from `source` into this (live) database: fills gaps, never clobbers.
    ///
    /// - A slot holding a valid value (its own timestamp) is never changed, 0.0 included; nor is a slot holding a
    ///   newer lap (live points near `now` share slots with history one retention older: the live one wins).
    /// - Every gap is filled, a one-slot gap too.
    /// - Each archive is filled from the source archive of the same resolution; when the source has none, from
    ///   the finest finer source archive, aggregated with this file's method and xFilesFactor (what carbon would
    ///   hold had it received those points); never from a coarser archive.
    /// - Only intervals up to `until` (the snapshot time) are considered: what came later belongs to the live side.
    public mutating func fill(from source: Whisper, until: Int, now: Int) -> FillReport {
        var report = FillReport(filled: Array(repeating: 0, count: archives.count), skipped: [])
        var touched: [Int] = []  // intervals written in the previous (finer) archive
        var changed = ChangedSpan()
        for (index, a) in archives.enumerated() {
            let step = a.secondsPerPoint
            let same = source.archives.first { $0.secondsPerPoint == step }
            let finer = source.archives.last { $0.secondsPerPoint < step && step % $0.secondsPerPoint == 0 }
            guard let from = same ?? finer else {
                report.skipped.append(index)
                touched = []
                continue
            }
            var writtenTimes: [Int] = []
            // Intervals both archives still hold: (now - retention, min(now, until)].
            let oldest = now - min(a.retention, from.retention)
            var t = oldest - Self.mod(oldest, step) + step
            let last = min(now, until) - Self.mod(min(now, until), step)
            var base = baseInterval(a)
            var written = 0
            if from.secondsPerPoint == step {
                written = fillSameStep(
                    a, from: source, archive: from, first: t, last: last, base: &base, times: &writtenTimes, changed: &changed)
            } else {
                while t <= last {
                    defer { t += step }
                    if base != 0 {
                        let (stored, _) = point(at: slotOffset(a, base: base, interval: t))
                        if stored >= t { continue }  // its own value, or a newer lap's: never clobbered
                    }
                    guard let value = source.aggregate(from, into: t, step: step, method: aggregation, xff: xFilesFactor)
                    else { continue }
                    if base == 0 { base = t }
                    let offset = slotOffset(a, base: base, interval: t)
                    setPoint(at: offset, t, value)
                    changed.mark(offset)
                    writtenTimes.append(t)
                    written += 1
                }
            }
            report.filled[index] = written
            if index > 0 {
                report.recomputed += recomputeDerived(index, touchedBelow: touched, writtenHere: &writtenTimes, changed: &changed)
            }
            touched = writtenTimes
        }
        report.changed = changed.range
        return report
    }

    /// The hot loop of a migration (≈93k slots a file): walks both archives slot by slot, advancing byte offsets
    /// instead of dividing per point, and copies the source's 12-byte point where the destination has a gap.
    private mutating func fillSameStep(
        _ a: WhisperArchive, from source: Whisper, archive b: WhisperArchive, first: Int, last: Int, base: inout Int,
        times: inout [Int], changed: inout ChangedSpan
    ) -> Int {
        guard first <= last else { return 0 }
        let srcBase = source.baseInterval(b)
        if srcBase == 0 { return 0 }
        let step = a.secondsPerPoint
        var written = 0
        var t = first
        var srcOff = source.slotOffset(b, base: srcBase, interval: t)
        let srcEnd = b.offset + b.size
        var dstOff = base == 0 ? -1 : slotOffset(a, base: base, interval: t)
        let dstEnd = a.offset + a.size
        // One pointer on each side for the whole walk (not a buffer access per slot and per written point).
        let pointSize = Self.pointSize
        source.bytes.withUnsafeBufferPointer { sp in
            bytes.withUnsafeMutableBufferPointer { dp in
                let src = sp.baseAddress!
                let dst = dp.baseAddress!
                func time(_ p: UnsafePointer<UInt8>) -> Int { Int(Self.u32(p)) }
                while t <= last {
                    // A slot holding this time, or a newer lap (live data past the ring's end), is kept.
                    if time(src + srcOff) == t && (dstOff < 0 || time(dst + dstOff) < t) {
                        if base == 0 {
                            // The archive's first point: its slot is the first one (base = t).
                            base = t
                            dstOff = a.offset
                        }
                        (dst + dstOff).update(from: src + srcOff, count: pointSize)
                        changed.mark(dstOff)
                        times.append(t)
                        written += 1
                    }
                    t += step
                    srcOff += pointSize
                    if srcOff == srcEnd { srcOff = b.offset }
                    if dstOff >= 0 {
                        dstOff += pointSize
                        if dstOff == dstEnd { dstOff = a.offset }
                    }
                }
            }
        }
        return written
    }

    /// A coarse slot that already held a value was aggregated by carbon from the finer points it had then: when
    /// live writes started inside its interval, from part of them. Once the fill has completed the finer archive
    /// there, the slot is recomputed from it as carbon's propagation does (method, xFilesFactor), which is what
    /// carbon would hold had it received every point. Slots the fill wrote from the source are left alone.
    private mutating func recomputeDerived(_ index: Int, touchedBelow: [Int], writtenHere: inout [Int], changed: inout ChangedSpan) -> Int {
        guard !touchedBelow.isEmpty else { return 0 }
        let lower = archives[index]
        let higher = archives[index - 1]
        // Sorted arrays walked side by side, not sets: hashing every interval was most of a merge's time.
        // Both come in ascending order from the walks that wrote them; sorted only if ever they do not.
        func ascending(_ a: [Int]) -> [Int] { zip(a, a.dropFirst()).allSatisfy { $0 <= $1 } ? a : a.sorted() }
        let written = ascending(writtenHere)
        let intervals = ascending(touchedBelow.map { $0 - Self.mod($0, lower.secondsPerPoint) })
        var count = 0
        var w = 0
        var previous: Int?
        for start in intervals {
            if start == previous { continue }
            previous = start
            while w < written.count && written[w] < start { w += 1 }
            if w < written.count && written[w] == start { continue }
            guard let current = value(lower, at: start) else { continue }  // a gap was the fill's job, not ours
            guard let v = aggregate(higher, into: start, step: lower.secondsPerPoint, method: aggregation, xff: xFilesFactor)
            else { continue }
            if v.bitPattern != current.bitPattern {
                let offset = slotOffset(lower, base: baseInterval(lower), interval: start)
                setPoint(at: offset, start, v)
                changed.mark(offset)
                writtenHere.append(start)
                count += 1
            }
        }
        return count
    }

    /// The value carbon would hold for the coarse interval `[start, start + step)`: the finer archive's known
    /// points aggregated, if their share reaches `xff`.
    func aggregate(_ fine: WhisperArchive, into start: Int, step: Int, method: Aggregation, xff: Float) -> Double? {
        let n = step / fine.secondsPerPoint
        var neighbors = [Double?](repeating: nil, count: n)
        var known: [Double] = []
        for i in 0..<n {
            if let v = value(fine, at: start + i * fine.secondsPerPoint) {
                neighbors[i] = v
                known.append(v)
            }
        }
        guard !known.isEmpty, Double(known.count) / Double(n) >= Double(xff) else { return nil }
        return method.aggregate(known: known, neighbors: neighbors)
    }
}

/// A Whisper file opened for an in-place update under carbon's lock (`flock(LOCK_EX)`), so a carbon-cache
/// writing the same file waits rather than interleaving. Updates are written in place: replacing the inode
/// would send a concurrent writer's points to an orphaned file.
public final class WhisperFile {
    public let path: String
    private let fd: Int32

    /// Opens and locks the file. `wait: false` fails at once when another process holds the lock.
    public convenience init(path: String, wait: Bool = true) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw FerryError(.destinationIO, "cannot open \(path)", cause: String(cString: strerror(errno))) }
        try self.init(fd: fd, path: path, wait: wait)
    }

    /// Takes over `fd` (opened read-write beneath its tree's root) and locks it.
    public init(fd: Int32, path: String, wait: Bool = true) throws {
        self.path = path
        self.fd = fd
        if flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0 {
            let e = errno
            close(fd)
            throw FerryError(.destinationIO, "\(path) is locked by another writer", cause: String(cString: strerror(e)))
        }
    }

    deinit { close(fd) }  // also releases the lock

    public func read() throws -> Whisper {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemCallError("fstat", errno: errno, path: path) }
        return try Whisper(bytes: Self.readWhole(fd, size: Int(st.st_size), path: path), path: path)
    }

    /// The first `size` bytes of `fd`, read into an array that is not zero-filled first (a Whisper file is read
    /// whole for every merge and compare); fewer bytes than that (the file shrank) is a read error.
    static func readWhole(_ fd: Int32, size: Int, path: String) throws -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = 0
            let n = try SystemCalls.preadFully(fd, into: UnsafeMutableRawBufferPointer(buffer), at: 0, what: path)
            guard n == size else { throw SystemCallError("read", errno: EIO, path: path + " (ended after \(n) of \(size) bytes)") }
            count = n
        }
    }

    /// Writes back `range` of `db` (the span a fill reports it wrote), then fdatasync unless `sync` is false.
    /// A merge needs no copy of the file as it was to find what changed.
    public func write(_ db: Whisper, range: ClosedRange<Int>?, sync: Bool = true) throws {
        guard let range else { return }
        guard range.upperBound < db.bytes.count else { throw FerryError(.destinationIO, "\(path): a write past the file's end") }
        let n = db.bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + range.lowerBound, range.count, off_t(range.lowerBound)) }
        guard n == range.count else { throw SystemCallError("write", errno: errno, path: path) }
        if sync { guard fdatasync(fd) == 0 else { throw SystemCallError("fdatasync", errno: errno, path: path) } }
    }

    /// Writes back the bytes that differ from `original` (one contiguous range), then fdatasync: an update
    /// that does not know the span it wrote (`ferry metrics update`).
    public func write(_ db: Whisper, original: Whisper) throws {
        guard db.bytes.count == original.bytes.count else {
            throw FerryError(.destinationIO, "\(path): size changed under an update")
        }
        guard let first = db.bytes.indices.first(where: { db.bytes[$0] != original.bytes[$0] }) else { return }
        var last = db.bytes.count - 1
        while db.bytes[last] == original.bytes[last] { last -= 1 }
        try write(db, range: first...last)
    }
}

/// Parses carbon retention definitions: `60s:30d,600s:1y`, `1m:7d`, or `60:1440` (seconds:points).
public enum Retentions {
    static let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31_536_000]

    public static func parse(_ text: String) throws -> [(secondsPerPoint: Int, points: Int)] {
        try text.split(separator: ",").map { def in
            let parts = def.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let step = seconds(parts[0]), step > 0 else {
                throw FerryError(.invalidPlan, "bad retention \"\(def)\": expected PRECISION:RETENTION such as 60s:30d")
            }
            if let points = Int(parts[1]), points > 0 { return (step, points) }
            guard let span = seconds(parts[1]), span >= step else {
                throw FerryError(.invalidPlan, "bad retention \"\(def)\": expected PRECISION:RETENTION such as 60s:30d")
            }
            return (step, span / step)
        }
    }

    static func seconds(_ s: String) -> Int? {
        if let n = Int(s) { return n }
        guard let unit = s.last.flatMap({ units[$0] }), let n = Int(s.dropLast()) else { return nil }
        return n * unit
    }
}
