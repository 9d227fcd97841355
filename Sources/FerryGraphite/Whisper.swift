public import FerryCore
import Foundation

/// Whisper's aggregation methods, numbered as in the file header.
public enum Aggregation: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case average = 1, sum, last, max, min, avgZero, absmax, absmin

    public var description: String {
        switch self {
        case .average: "average"
        case .sum: "sum"
        case .last: "last"
        case .max: "max"
        case .min: "min"
        case .avgZero: "avg_zero"
        case .absmax: "absmax"
        case .absmin: "absmin"
        }
    }

    public init?(name: String) {
        guard let m = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = m
    }

    /// Aggregates as the reference `whisper.aggregate` does, value for value (sums left to right, ties keep
    /// the first).
    public func aggregate(known: [Double], neighbors: [Double?]) -> Double {
        switch self {
        case .average: return known.reduce(0, +) / Double(known.count)
        case .sum: return known.reduce(0, +)
        case .last: return known[known.count - 1]
        case .max: return known.dropFirst().reduce(known[0]) { $1 > $0 ? $1 : $0 }
        case .min: return known.dropFirst().reduce(known[0]) { $1 < $0 ? $1 : $0 }
        case .avgZero: return neighbors.map { $0 ?? 0 }.reduce(0, +) / Double(neighbors.count)
        case .absmax: return known.dropFirst().reduce(known[0]) { abs($1) > abs($0) ? $1 : $0 }
        case .absmin: return known.dropFirst().reduce(known[0]) { abs($1) < abs($0) ? $1 : $0 }
        }
    }
}

/// A Whisper file that cannot be used, with the file and the byte offset of the problem.
public struct WhisperError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var offset: Int
    public var reason: String
    public var description: String { "\(path): corrupt Whisper file at byte \(offset): \(reason)" }
}

/// One archive: `points` slots of `secondsPerPoint` seconds starting at byte `offset`.
public struct WhisperArchive: Sendable, Equatable {
    public var offset: Int
    public var secondsPerPoint: Int
    public var points: Int
    public var retention: Int { secondsPerPoint * points }
    public var size: Int { points * Whisper.pointSize }

    public init(offset: Int, secondsPerPoint: Int, points: Int) {
        self.offset = offset
        self.secondsPerPoint = secondsPerPoint
        self.points = points
    }
}

/// What `fetch` returns, as the reference: `(from, until, step)` and one optional value per step.
public struct WhisperSeries: Sendable, Equatable {
    public var from: Int
    public var until: Int
    public var step: Int
    public var values: [Double?]
}

/// A Whisper database held in memory (`bytes`) with the reference implementation's algorithms. Read it with
/// `Whisper(path:)`, change it, and `write(to:)` it back (or use `WhisperFile` for locked in-place updates).
public struct Whisper: Sendable {
    public static let headerSize = 16
    public static let archiveInfoSize = 12
    public static let pointSize = 12

    public var bytes: [UInt8]
    public var path: String
    public private(set) var aggregation: Aggregation
    public private(set) var maxRetention: Int
    public private(set) var xFilesFactor: Float
    public private(set) var archives: [WhisperArchive]

    // MARK: - parsing

    /// Parses and validates a whole file's bytes. Every inconsistency is a `WhisperError` naming the offset.
    public init(bytes: [UInt8], path: String) throws(WhisperError) {
        self.bytes = bytes
        self.path = path
        func fail(_ offset: Int, _ why: String) -> WhisperError { WhisperError(path: path, offset: offset, reason: why) }
        guard bytes.count >= Self.headerSize else {
            throw fail(bytes.count, "truncated header: \(bytes.count) of \(Self.headerSize) bytes")
        }
        let aggRaw = Self.u32(bytes, 0)
        guard let agg = Aggregation(rawValue: aggRaw) else { throw fail(0, "unknown aggregation method \(aggRaw)") }
        aggregation = agg
        maxRetention = Int(Self.u32(bytes, 4))
        xFilesFactor = Float(bitPattern: Self.u32(bytes, 8))
        guard xFilesFactor >= 0 && xFilesFactor <= 1 else { throw fail(8, "xFilesFactor \(xFilesFactor) is not in [0, 1]") }
        let count = Int(Self.u32(bytes, 12))
        guard count >= 1 && count <= 64 else { throw fail(12, "archive count \(count) is not in 1...64") }
        let infoEnd = Self.headerSize + count * Self.archiveInfoSize
        guard bytes.count >= infoEnd else {
            throw fail(bytes.count, "truncated archive table: \(bytes.count) of \(infoEnd) bytes")
        }
        var list: [WhisperArchive] = []
        var expectedOffset = infoEnd
        for i in 0..<count {
            let at = Self.headerSize + i * Self.archiveInfoSize
            let a = WhisperArchive(
                offset: Int(Self.u32(bytes, at)), secondsPerPoint: Int(Self.u32(bytes, at + 4)),
                points: Int(Self.u32(bytes, at + 8)))
            guard a.secondsPerPoint > 0, a.points > 0 else { throw fail(at, "archive \(i) has zero step or points") }
            guard a.offset == expectedOffset else {
                throw fail(at, "archive \(i) starts at \(a.offset), expected \(expectedOffset)")
            }
            if let prev = list.last {
                guard a.secondsPerPoint > prev.secondsPerPoint, a.secondsPerPoint % prev.secondsPerPoint == 0,
                    a.retention > prev.retention
                else { throw fail(at, "archive \(i) (\(a.secondsPerPoint)s × \(a.points)) does not follow archive \(i - 1)") }
            }
            expectedOffset = a.offset + a.size
            list.append(a)
        }
        guard bytes.count >= expectedOffset else {
            throw fail(bytes.count, "truncated: \(bytes.count) of \(expectedOffset) bytes")
        }
        guard maxRetention == list.map(\.retention).max() else {
            throw fail(4, "maxRetention \(maxRetention) does not match the archives")
        }
        archives = list
    }

    /// Reads and parses a file.
    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FerryError(.sourceIO, "cannot read \(path)")
        }
        try self.init(bytes: [UInt8](data), path: path)
    }

    /// A new, empty database, as `whisper.create` makes it. `retentions` are (secondsPerPoint, points).
    public init(
        retentions: [(secondsPerPoint: Int, points: Int)], xFilesFactor: Float = 0.5, aggregation: Aggregation = .average,
        path: String = "<new>"
    ) throws {
        let sorted = retentions.sorted { $0.secondsPerPoint < $1.secondsPerPoint }
        guard !sorted.isEmpty else { throw FerryError(.invalidPlan, "a Whisper schema needs at least one archive") }
        for (i, r) in sorted.enumerated() where i > 0 {
            let prev = sorted[i - 1]
            guard r.secondsPerPoint != prev.secondsPerPoint else {
                throw FerryError(.invalidPlan, "two archives with \(r.secondsPerPoint)s per point")
            }
            guard r.secondsPerPoint % prev.secondsPerPoint == 0 else {
                throw FerryError(.invalidPlan, "\(r.secondsPerPoint)s is not a multiple of \(prev.secondsPerPoint)s")
            }
            guard r.secondsPerPoint * r.points > prev.secondsPerPoint * prev.points else {
                throw FerryError(.invalidPlan, "each coarser archive must cover a longer time")
            }
            guard prev.points >= r.secondsPerPoint / prev.secondsPerPoint else {
                throw FerryError(.invalidPlan, "archive \(i - 1) has too few points to consolidate into archive \(i)")
            }
        }
        var out = [UInt8]()
        let infoEnd = Self.headerSize + sorted.count * Self.archiveInfoSize
        Self.put32(&out, aggregation.rawValue)
        Self.put32(&out, UInt32(sorted.map { $0.secondsPerPoint * $0.points }.max()!))
        Self.put32(&out, xFilesFactor.bitPattern)
        Self.put32(&out, UInt32(sorted.count))
        var offset = infoEnd
        for r in sorted {
            Self.put32(&out, UInt32(offset))
            Self.put32(&out, UInt32(r.secondsPerPoint))
            Self.put32(&out, UInt32(r.points))
            offset += r.points * Self.pointSize
        }
        out += [UInt8](repeating: 0, count: offset - infoEnd)
        try self.init(bytes: out, path: path)
    }

    // MARK: - byte helpers

    @inline(__always) static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3])
    }

    @inline(__always) static func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
        UInt64(u32(b, at)) << 32 | UInt64(u32(b, at + 4))
    }

    /// The same big-endian reads through a pointer (walks that hold one for a whole archive).
    @inline(__always) static func u32(_ p: UnsafePointer<UInt8>) -> UInt32 {
        UInt32(p[0]) << 24 | UInt32(p[1]) << 16 | UInt32(p[2]) << 8 | UInt32(p[3])
    }

    @inline(__always) static func u64(_ p: UnsafePointer<UInt8>) -> UInt64 { UInt64(u32(p)) << 32 | UInt64(u32(p + 4)) }

    static func put32(_ b: inout [UInt8], _ v: UInt32) {
        b += [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
    }

    /// The (timestamp, value) stored at a byte offset.
    @inline(__always) func point(at offset: Int) -> (Int, Double) {
        (Int(Self.u32(bytes, offset)), Double(bitPattern: Self.u64(bytes, offset + 4)))
    }

    @inline(__always) mutating func setPoint(at offset: Int, _ t: Int, _ v: Double) {
        let ts = UInt32(truncatingIfNeeded: t)
        let bits = v.bitPattern
        bytes.withUnsafeMutableBufferPointer { p in
            p[offset] = UInt8(ts >> 24)
            p[offset + 1] = UInt8(truncatingIfNeeded: ts >> 16)
            p[offset + 2] = UInt8(truncatingIfNeeded: ts >> 8)
            p[offset + 3] = UInt8(truncatingIfNeeded: ts)
            for k in 0..<8 { p[offset + 4 + k] = UInt8(truncatingIfNeeded: bits >> (56 - 8 * k)) }
        }
    }

    /// Timestamp stored in slot 0 (0: the archive was never written).
    public func baseInterval(_ a: WhisperArchive) -> Int { point(at: a.offset).0 }

    /// Byte offset of the slot for an aligned `interval`, given the archive's base.
    @inline(__always) func slotOffset(_ a: WhisperArchive, base: Int, interval: Int) -> Int {
        let distance = (interval - base) / a.secondsPerPoint
        var slot = distance % a.points
        if slot < 0 { slot += a.points }
        return a.offset + slot * Self.pointSize
    }

    /// The value held for `interval` (aligned) in archive `a`, or nil when its slot holds another time.
    public func value(_ a: WhisperArchive, at interval: Int) -> Double? {
        value(a, at: interval, base: baseInterval(a))
    }

    /// As `value(_:at:)`, with the archive's base interval already read (a loop over one archive reads it once).
    @inline(__always) func value(_ a: WhisperArchive, at interval: Int, base: Int) -> Double? {
        if base == 0 { return nil }
        let (t, v) = point(at: slotOffset(a, base: base, interval: interval))
        return t == interval ? v : nil
    }

    // MARK: - fetch, as whisper.fetch

    /// The reference `fetch`: picks the finest archive covering `now - from`, returns a step-aligned series.
    public func fetch(from fromTime: Int, until untilTime: Int? = nil, now: Int) -> WhisperSeries? {
        var from = fromTime
        var until = untilTime ?? now
        guard from <= until else { return nil }
        let oldest = now - maxRetention
        if from > now { return nil }
        if until < oldest { return nil }
        if from < oldest { from = oldest }
        if until > now { until = now }
        let diff = now - from
        let archive = archives.first { $0.retention >= diff } ?? archives[archives.count - 1]
        return archiveFetch(archive, from: from, until: until)
    }

    public func archiveFetch(_ a: WhisperArchive, from: Int, until: Int) -> WhisperSeries {
        let step = a.secondsPerPoint
        let fromInterval = from - Self.mod(from, step) + step
        var untilInterval = until - Self.mod(until, step) + step
        if fromInterval == untilInterval { untilInterval += step }
        let count = (untilInterval - fromInterval) / step
        var values = [Double?](repeating: nil, count: count)
        let base = baseInterval(a)
        if base != 0 {
            for i in 0..<count {
                let interval = fromInterval + i * step
                let (t, v) = point(at: slotOffset(a, base: base, interval: interval))
                if t == interval { values[i] = v }
            }
        }
        return WhisperSeries(from: fromInterval, until: untilInterval, step: step, values: values)
    }

    /// Python's `%` (the result has the divisor's sign).
    @inline(__always) static func mod(_ a: Int, _ b: Int) -> Int {
        let r = a % b
        return r < 0 ? r + b : r
    }

    // MARK: - update_many, as whisper.update_many

    /// The reference `update_many`: each point goes to the finest archive whose retention covers its age,
    /// then coarser archives are re-aggregated (xFilesFactor applies). Points too old for any archive are dropped.
    public mutating func updateMany(_ input: [(timestamp: Int, value: Double)], now: Int) {
        guard !input.isEmpty else { return }
        // Stable sort, newest first, exactly as the reference (duplicates keep their input order).
        let points = input.enumerated().sorted { l, r in
            l.element.timestamp != r.element.timestamp ? l.element.timestamp > r.element.timestamp : l.offset < r.offset
        }.map(\.element)
        var archiveIndex = 0
        var current: [(timestamp: Int, value: Double)] = []
        for p in points {
            let age = now - p.timestamp
            var exhausted = false
            while archives[archiveIndex].retention < age {
                if !current.isEmpty {
                    archiveUpdateMany(archiveIndex, current.reversed())
                    current = []
                }
                archiveIndex += 1
                if archiveIndex == archives.count {
                    exhausted = true
                    break
                }
            }
            if exhausted { return }
            current.append(p)
        }
        if !current.isEmpty { archiveUpdateMany(archiveIndex, current.reversed()) }
    }

    private mutating func archiveUpdateMany(_ index: Int, _ points: [(timestamp: Int, value: Double)]) {
        let a = archives[index]
        let step = a.secondsPerPoint
        let aligned = points.map { ($0.timestamp - Self.mod($0.timestamp, step), $0.value) }
        // Runs of consecutive intervals, the last of duplicate intervals winning.
        var runs: [(start: Int, points: [(Int, Double)])] = []
        var run: [(Int, Double)] = []
        var previous: Int? = nil
        for i in 0..<aligned.count {
            if i + 1 < aligned.count && aligned[i].0 == aligned[i + 1].0 { continue }
            let (interval, value) = aligned[i]
            if previous == nil || previous == 0 || interval == previous! + step {
                run.append((interval, value))
            } else {
                runs.append((previous! - step * (run.count - 1), run))
                run = [(interval, value)]
            }
            previous = interval
        }
        if !run.isEmpty { runs.append((previous! - step * (run.count - 1), run)) }
        var base = baseInterval(a)
        if base == 0 { base = runs[0].start }
        for (_, pts) in runs {
            for (interval, value) in pts {
                setPoint(at: slotOffset(a, base: base, interval: interval), interval, value)
            }
        }
        // Propagate to coarser archives.
        var higher = a
        for lower in archives where lower.secondsPerPoint > a.secondsPerPoint {
            let intervals = Set(aligned.map { $0.0 - Self.mod($0.0, lower.secondsPerPoint) })
            var further = false
            for interval in intervals where propagate(interval, higher: higher, lower: lower) { further = true }
            if !further { break }
            higher = lower
        }
    }

    private mutating func propagate(_ timestamp: Int, higher: WhisperArchive, lower: WhisperArchive) -> Bool {
        let lowerStart = timestamp - Self.mod(timestamp, lower.secondsPerPoint)
        let higherBase = baseInterval(higher)
        let n = lower.secondsPerPoint / higher.secondsPerPoint
        var neighbors = [Double?](repeating: nil, count: n)
        var known: [Double] = []
        known.reserveCapacity(n)
        // Slots are read from the base-relative position of lowerStart, wrapping, as the reference does.
        let firstSlot: Int
        if higherBase == 0 {
            firstSlot = 0
        } else {
            firstSlot = Self.mod((lowerStart - higherBase) / higher.secondsPerPoint, higher.points)
        }
        var interval = lowerStart
        for i in 0..<n {
            let off = higher.offset + ((firstSlot + i) % higher.points) * Self.pointSize
            let (t, v) = point(at: off)
            if t == interval {
                neighbors[i] = v
                known.append(v)
            }
            interval += higher.secondsPerPoint
        }
        guard !known.isEmpty else { return false }
        // As the reference: a Python float ratio against the header's f32 widened to double.
        guard Double(known.count) / Double(n) >= Double(xFilesFactor) else { return false }
        let value = aggregation.aggregate(known: known, neighbors: neighbors)
        var lowerBase = baseInterval(lower)
        if lowerBase == 0 { lowerBase = lowerStart }
        setPoint(at: slotOffset(lower, base: lowerBase, interval: lowerStart), lowerStart, value)
        return true
    }

    // MARK: - writing

    public func write(to path: String) throws {
        do {
            try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw FerryError(.destinationIO, "cannot write \(path)", underlying: error)
        }
    }
}

extension Whisper {
    /// Where the archives of the Whisper file that `reader` reads hold their points, from its header alone: one
    /// range per archive. None when the header does not parse or the file is shorter than the header says (the
    /// bytes then travel as they are).
    public static func pointRuns(_ reader: any ObjectReader) -> [ByteRange] {
        guard let head = try? reader.read(count: headerSize, at: 0), head.count == headerSize else { return [] }
        let count = Int(u32(head, 12))
        guard (1...64).contains(count) else { return [] }
        let infoEnd = headerSize + count * archiveInfoSize
        guard let table = try? reader.read(count: infoEnd, at: 0), table.count == infoEnd,
            let size = try? reader.currentEntry().size
        else { return [] }
        var runs: [ByteRange] = []
        var expected = infoEnd
        for i in 0..<count {
            let at = headerSize + i * archiveInfoSize
            let offset = Int(u32(table, at))
            let points = Int(u32(table, at + 8))
            guard offset == expected, points > 0 else { return [] }
            runs.append(ByteRange(offset: Int64(offset), length: Int64(points * pointSize)))
            expected = offset + points * pointSize
        }
        return Int64(expected) <= size ? runs : []
    }
}

extension WhisperTreeStore: PointLayoutProviding {
    public func pointRuns(_ reader: any ObjectReader) -> [ByteRange] { Whisper.pointRuns(reader) }
}

extension CeresTreeStore: PointLayoutProviding {
    // A Ceres source reads each node converted to a Whisper file.
    public func pointRuns(_ reader: any ObjectReader) -> [ByteRange] { Whisper.pointRuns(reader) }
}
