import FerryCore
import Foundation

extension CeresNode {
    /// The reference's MAX_SLICE_GAP: a gap longer than this many points starts a new slice.
    public static let maxSliceGap = 80

    /// Creates a node directory with carbon's metadata (`timeStep`, `xFilesFactor`, `aggregationMethod`,
    /// `retentions`).
    public static func create(
        path: String, timeStep: Int, xFilesFactor: Double, aggregation: Aggregation, retentions: [(Int, Int)]
    ) throws -> CeresNode {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let meta: [String: Any] = [
            "timeStep": timeStep, "xFilesFactor": xFilesFactor, "aggregationMethod": aggregation.description,
            "retentions": retentions.map { [$0.0, $0.1] },
        ]
        let data = try JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys])
        try data.write(to: URL(fileURLWithPath: path + "/" + metadataFile), options: .atomic)
        return try CeresNode(path: path)
    }

    /// The reference `CeresNode.compact`: sorted, aligned, the latest value of a duplicate interval, split into
    /// runs of consecutive intervals.
    func compact(_ points: [(Int, Double)]) -> [[(Int, Double)]] {
        let sorted = points.enumerated().sorted { ($0.element.0, $0.offset) < ($1.element.0, $1.offset) }.map(\.element)
        var sequences: [[(Int, Double)]] = []
        var sequence: [(Int, Double)] = []
        var minimum = 0
        for (ts, v) in sorted {
            let t = ts - Whisper.mod(ts, timeStep)
            if sequence.isEmpty {
                sequence.append((t, v))
            } else if t == minimum {
                sequence[sequence.count - 1] = (t, v)
                continue
            } else if t == sequence[sequence.count - 1].0 + timeStep {
                sequence.append((t, v))
            } else {
                sequences.append(sequence)
                sequence = [(t, v)]
            }
            minimum = t
        }
        if !sequence.isEmpty { sequences.append(sequence) }
        return sequences
    }

    /// The reference `CeresNode.write`: each run goes into the newest slice starting at or before it (padded with
    /// NaN across gaps of at most 80 points), a run straddling a slice start is split, a larger gap or a run
    /// older than every slice starts a new slice. Slices of another step are left alone.
    public mutating func write(_ points: [(Int, Double)]) throws {
        var sequences = compact(points.filter { !$0.1.isNaN })
        var needsEarlier: [[(Int, Double)]] = []
        while let popped = sequences.popLast() {
            var sequence = popped
            let sameStep = slices.filter { $0.timeStep == timeStep }
            if sameStep.isEmpty {
                needsEarlier = sequences + [sequence]
                break
            }
            var boundary: Int? = nil
            var placed = false
            for slice in sameStep {
                let begin = sequence[0].0
                let end = sequence[sequence.count - 1].0
                if begin >= slice.startTime {
                    let within = boundary.map { b in sequence.filter { $0.0 < b } } ?? sequence
                    if !within.isEmpty {
                        if try !append(within, to: slice) {
                            try newSlice(within)
                        }
                    }
                    sequence = []
                    placed = true
                    break
                } else if end >= slice.startTime {
                    let split = sequence.firstIndex { $0.0 >= slice.startTime } ?? sequence.count
                    let right = Array(sequence[split...])
                    sequence = Array(sequence[..<split])
                    if try !append(right, to: slice) { try newSlice(right) }
                }
                if sequence.isEmpty {
                    placed = true
                    break
                }
                boundary = slice.startTime
            }
            if !placed && !sequence.isEmpty { needsEarlier.append(sequence) }
            try reloadSlices()
        }
        for sequence in needsEarlier where !sequence.isEmpty {
            try newSlice(sequence)
        }
        try reloadSlices()
    }

    /// Writes a run into a slice, NaN-padding a gap of up to 80 points; false when the gap is larger.
    private func append(_ run: [(Int, Double)], to slice: CeresSlice) throws -> Bool {
        var byteOffset = (run[0].0 - slice.startTime) / timeStep * 8
        var payload: [UInt8] = []
        let gap = byteOffset - slice.size
        if gap > 0 {
            guard gap / 8 <= Self.maxSliceGap else { return false }
            for _ in 0..<(gap / 8) { Self.pack(.nan, into: &payload) }
            byteOffset -= gap
        }
        for (_, v) in run { Self.pack(v, into: &payload) }
        let fd = open(slice.path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)  // a slice that is a symlink is never written through
        guard fd >= 0 else { throw CeresError(path: slice.path, offset: nil, reason: "cannot open slice for writing") }
        defer { close(fd) }
        _ = flock(fd, LOCK_EX)
        let n = payload.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(byteOffset)) }
        guard n == payload.count else { throw SystemCallError("write", errno: errno, path: slice.path) }
        return true
    }

    private func newSlice(_ run: [(Int, Double)]) throws {
        let path = "\(self.path)/\(run[0].0)@\(timeStep).slice"
        guard FileManager.default.createFile(atPath: path, contents: Data()) else {
            throw CeresError(path: path, offset: nil, reason: "cannot create slice")
        }
        let slice = CeresSlice(path: path, startTime: run[0].0, timeStep: timeStep, size: 0)
        _ = try append(run, to: slice)
    }

    private mutating func reloadSlices() throws {
        slices = try CeresNode(path: path).slices
    }

    static func pack(_ v: Double, into out: inout [UInt8]) {
        let bits = v.bitPattern
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: bits >> (56 - 8 * k))) }
    }
}
