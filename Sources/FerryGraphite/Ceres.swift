import FerryCore
import Foundation

/// A Ceres node that cannot be used, naming the file and (for slices) the byte offset.
public struct CeresError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var offset: Int?
    public var reason: String
    public var description: String {
        offset.map { "\(path): corrupt Ceres data at byte \($0): \(reason)" } ?? "\(path): \(reason)"
    }
}

/// One slice file `<startTime>@<timeStep>.slice`: consecutive big-endian doubles, NaN for no value.
public struct CeresSlice: Sendable, Equatable {
    public var path: String
    public var startTime: Int
    public var timeStep: Int
    public var size: Int
    public var endTime: Int { startTime + (size / 8) * timeStep }

    /// Parses a slice file name; nil for names that are not slices.
    public static func parse(name: String, directory: String, size: Int) -> CeresSlice? {
        guard name.hasSuffix(".slice") else { return nil }
        let parts = name.dropLast(6).split(separator: "@")
        guard parts.count == 2, let start = Int(parts[0]), let step = Int(parts[1]), step > 0 else { return nil }
        return CeresSlice(path: directory + "/" + name, startTime: start, timeStep: step, size: size)
    }

    /// The reference `CeresSlice.read`: values from `from` (at or after the slice start) until `until`, or nil
    /// (the reference's NoData) when `from` is past the slice's data.
    func read(from: Int, until: Int) throws -> (start: Int, end: Int, step: Int, values: [Double?])? {
        let pointOffset = (from - startTime) / timeStep
        let byteOffset = pointOffset * 8
        if byteOffset >= size { return nil }
        let count = max(0, min((until - from) / timeStep, (size - byteOffset) / 8))
        // O_NOFOLLOW: a slice that is a symlink is never read through (it could name any file on the host).
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            throw CeresError(path: path, offset: nil, reason: "cannot open slice: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var data = [UInt8](repeating: 0, count: count * 8)
        var got = 0
        while got < data.count {
            let n = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(byteOffset + got)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            got += n
        }
        guard got == count * 8 else {
            throw CeresError(path: path, offset: byteOffset + got, reason: "slice shorter than its size")
        }
        var values = [Double?](repeating: nil, count: count)
        data.withUnsafeBytes { raw in
            for i in 0..<count {
                var bits: UInt64 = 0
                for k in 0..<8 { bits = bits << 8 | UInt64(raw[i * 8 + k]) }
                let v = Double(bitPattern: bits)
                values[i] = v.isNaN ? nil : v
            }
        }
        return (from, from + count * timeStep, timeStep, values)
    }
}

/// A Ceres node: a directory holding `.ceres-node` (JSON metadata) and slice files.
public struct CeresNode: Sendable {
    public var path: String
    public var timeStep: Int
    public var aggregation: Aggregation
    public var xFilesFactor: Double
    public var retentions: [(secondsPerPoint: Int, points: Int)]
    /// Newest first, as the reference orders them.
    public var slices: [CeresSlice]

    public static let metadataFile = ".ceres-node"

    public static func isNode(_ directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + metadataFile)
    }

    /// The whole of a small regular file, never through a symlink; nil when it cannot be read or exceeds `limit`.
    static func readSmallFile(_ path: String, limit: Int) -> Data? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out = Data()
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, $0.count, off_t(out.count)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { return out }
            out.append(contentsOf: buf[0..<n])
            if out.count > limit { return nil }
        }
    }

    public init(path: String) throws {
        self.path = path
        let metaPath = path + "/" + Self.metadataFile
        guard let data = Self.readSmallFile(metaPath, limit: 1 << 20) else {
            throw CeresError(path: metaPath, offset: nil, reason: "missing, unreadable, over 1 MiB or a symlink: node metadata")
        }
        guard let meta = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CeresError(path: metaPath, offset: nil, reason: "node metadata is not a JSON object")
        }
        guard let step = meta["timeStep"] as? Int, step > 0 else {
            throw CeresError(path: metaPath, offset: nil, reason: "node metadata has no positive integer timeStep")
        }
        timeStep = step
        if let name = meta["aggregationMethod"] as? String {
            guard let m = Aggregation(name: name) else {
                throw CeresError(path: metaPath, offset: nil, reason: "unknown aggregationMethod \(name)")
            }
            aggregation = m
        } else {
            aggregation = .average
        }
        xFilesFactor = (meta["xFilesFactor"] as? Double) ?? 0.5
        retentions = ((meta["retentions"] as? [[Int]]) ?? []).compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }
        var found: [CeresSlice] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: path) {
            let attrs = try? FileManager.default.attributesOfItem(atPath: path + "/" + name)
            let size = (attrs?[.size] as? NSNumber)?.intValue ?? 0
            if let s = CeresSlice.parse(name: name, directory: path, size: size) { found.append(s) }
        }
        slices = found.sorted { ($0.startTime, $0.timeStep) > ($1.startTime, $1.timeStep) }
    }

    /// The reference `CeresNode.read`: newest slices shadow older ones; gaps read as nil.
    public func read(from fromTime: Int, until untilTime: Int) throws -> (start: Int, end: Int, step: Int, values: [Double?]) {
        let from = fromTime - Whisper.mod(fromTime, timeStep)
        let until = untilTime - Whisper.mod(untilTime, timeStep)
        var boundary: Int? = nil
        var result: [Double?] = []
        var earliest: Int? = nil
        var step = timeStep
        for slice in slices {
            let requestUntil = boundary.map { until > $0 ? $0 : until } ?? until
            var series: (start: Int, end: Int, step: Int, values: [Double?])?
            let covering = from >= slice.startTime
            if covering {
                series = try slice.read(from: from, until: requestUntil)
                if series == nil { break }
            } else if until >= slice.startTime {
                series = try slice.read(from: slice.startTime, until: requestUntil)
                if series == nil { continue }  // as the reference: no data here, and no new boundary
            }
            if var s = series {
                if s.step != step {
                    if result.isEmpty {
                        step = s.step
                    } else if s.step < step {
                        s.values = Self.aggregateSeries(aggregation, from: s.step, to: step, s.values)
                    } else {
                        result = Self.aggregateSeries(aggregation, from: step, to: s.step, result)
                        step = s.step
                    }
                }
                earliest = s.start
                let rightMissing = max(0, (requestUntil - s.end) / step)
                result = s.values + [Double?](repeating: nil, count: rightMissing) + result
                if covering { break }
            }
            boundary = slice.startTime
        }
        if let earliest {
            result = [Double?](repeating: nil, count: max(0, (earliest - from) / step)) + result
        } else {
            result = [Double?](repeating: nil, count: max(0, (until - from) / step))
        }
        return (from, until, step, result)
    }

    /// The distinct slice steps of this node, finest first (ceres-maintenance's rollups add coarser ones).
    public var steps: [Int] { Array(Set(slices.map(\.timeStep))).sorted() }

    /// The values of the slices of one `step` only, from `from` (aligned to `step`) for `count` points: within a
    /// step, a newer slice (later start) shadows older ones from its start on, as the reference reads them.
    public func read(step: Int, from: Int, count: Int) throws -> [Double?] {
        var out = [Double?](repeating: nil, count: count)
        let until = from + count * step
        let ofStep = slices.filter { $0.timeStep == step }.sorted { $0.startTime < $1.startTime }
        for (i, slice) in ofStep.enumerated() {
            let shadowedFrom = i + 1 < ofStep.count ? ofStep[i + 1].startTime : Int.max
            let lo = max(from, slice.startTime)
            let hi = min(until, slice.endTime, shadowedFrom)
            guard lo < hi else { continue }
            let start = lo + Whisper.mod(slice.startTime - lo, step)  // first point time of this slice at or after lo
            guard let series = try slice.read(from: start, until: hi) else { continue }
            for (k, v) in series.values.enumerated() {
                let t = series.start + k * step
                let index = (t - from) / step
                if index >= 0 && index < count && (t - from) % step == 0 { out[index] = v }
            }
        }
        return out
    }

    static func aggregateSeries(_ method: Aggregation, from old: Int, to new: Int, _ values: [Double?]) -> [Double?] {
        let factor = new / old
        var out: [Double?] = []
        var i = 0
        while i < values.count {
            let group = Array(values[i..<min(i + factor, values.count)])
            let known = group.compactMap { $0 }
            out.append(known.isEmpty ? nil : method.aggregate(known: known, neighbors: group))
            i += factor
        }
        return out
    }
}

/// A Ceres tree: a root holding `.ceres-tree/`; metric `a.b.c` is the node directory `a/b/c`.
public enum CeresTree {
    public static let marker = ".ceres-tree"

    /// Every node below `root`, as (metric name, directory), in sorted order.
    public static func nodes(root: String) throws -> [(metric: String, path: String)] {
        guard FileManager.default.fileExists(atPath: root + "/" + marker) else {
            throw CeresError(path: root, offset: nil, reason: "not a Ceres tree (no \(marker)/ directory)")
        }
        var out: [(String, String)] = []
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        while let rel = walker.nextObject() as? String {
            if PathUtil.lastComponent(rel) == CeresNode.metadataFile {
                let dir = PathUtil.directory(of: rel)
                out.append((dir.replacingOccurrences(of: "/", with: "."), root + "/" + dir))
            }
        }
        return out.sorted { $0.0 < $1.0 }
    }
}
