public import FerryCore
import FerryLocal
import Foundation

/// A Ceres tree as the destination of a Whisper tree: the file `a/b/c.wsp` lands as the node `a/b/c`. A new
/// node gets the Whisper file's metadata and every archive's points, each at the finest resolution that holds
/// it (the finest archive's points in slices at the node's step; older points, kept only by coarser archives,
/// in slices at their own step, which Ceres reads aggregate). An existing (live) node is merged: only intervals
/// it has no value for are written. Parity is checked value by value at the node's resolution.
public final class CeresDestinationStore: Store, Merging, PointComparing, @unchecked Sendable {
    // @unchecked: wraps an immutable LocalStore.
    let tree: LocalStore
    public var root: String { tree.root }
    public var displayName: String { "ceres:\(tree.root)" }

    public init(root: String) {
        tree = LocalStore(root: root)
    }

    func nodePath(_ path: String) -> String { root + "/" + String(path.dropLast(4)) }

    func withConfinedNode<T>(_ path: String, create: Bool, _ body: (String) throws -> T) throws -> T? {
        try tree.withConfinedCeresNode(path, create: create, body)
    }

    public func prepareRoot() throws {
        try tree.prepareRoot()
        try FileManager.default.createDirectory(atPath: root + "/" + CeresTree.marker, withIntermediateDirectories: true)
    }

    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        for (metric, _) in try CeresTree.nodes(root: root) {
            if let e = try stat(metric.replacingOccurrences(of: ".", with: "/") + ".wsp") { try visit(e) }
        }
    }

    public func stat(_ path: String) throws -> Entry? {
        guard path.hasSuffix(".wsp") else { return try tree.stat(path) }
        guard PathUtil.isSafeRelative(path), CeresNode.isNode(nodePath(path)) else { return nil }
        var st = Foundation.stat()
        guard lstat(nodePath(path), &st) == 0 else { return nil }
        return Entry(path: path, kind: .file, size: 0, mtimeNs: 0, mode: 0o644, inode: UInt64(st.st_ino))
    }

    public func openReader(_ path: String) throws -> (any ObjectReader)? { nil }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        guard PathUtil.isSafeRelative(entry.path), entry.path.hasSuffix(".wsp") else {
            throw FerryError(.unsafePath, "only .wsp files can land in a Ceres tree: \(entry.path)")
        }
        if resume { return nil }  // partial conversions are not kept across runs: start the file over
        return NodeWriter(store: self, path: entry.path, size: Int(entry.size))
    }

    public func makeDirectory(_ entry: Entry) throws { try tree.makeDirectory(entry) }
    public func finishDirectory(_ entry: Entry) throws { try tree.finishDirectory(entry) }
    public func makeSymlink(_ entry: Entry) throws { try tree.makeSymlink(entry) }
    public func remove(_ path: String, kind: EntryKind) throws {
        if path.hasSuffix(".wsp") {
            try? FileManager.default.removeItem(atPath: nodePath(path))
        } else {
            try tree.remove(path, kind: kind)
        }
    }
    public func syncAll() throws { try tree.syncAll() }
    public func discardPartial(for path: String, token: String) throws {}

    /// Writes a Whisper database into a node: new nodes get all archives, merges only what the node lacks.
    func land(_ db: Whisper, at path: String, until: Int, now: Int) throws -> Int {
        guard let landed = try withConfinedNode(path, create: true, { try land(db, node: $0, until: until, now: now) }) else {
            throw FerryError(.destinationIO, "\(path): its directory could not be created")
        }
        return landed
    }

    /// `land` into the node directory `dir` (already confined beneath the root).
    private func land(_ db: Whisper, node dir: String, until: Int, now: Int) throws -> Int {
        let fine = db.archives[0]
        var node: CeresNode
        let existed = CeresNode.isNode(dir)
        if existed {
            node = try CeresNode(path: dir)
        } else {
            node = try CeresNode.create(
                path: dir, timeStep: fine.secondsPerPoint, xFilesFactor: Double(db.xFilesFactor),
                aggregation: db.aggregation, retentions: db.archives.map { ($0.secondsPerPoint, $0.points) })
        }
        var written = 0
        var coveredFrom = Int.max  // the oldest time a finer archive already provided
        for (i, a) in db.archives.enumerated() {
            let oldest = now - a.retention
            let first = oldest - Whisper.mod(oldest, a.secondsPerPoint) + a.secondsPerPoint
            let last = min(until, now) - Whisper.mod(min(until, now), a.secondsPerPoint)
            guard first <= last else { continue }
            let series = db.archiveFetch(a, from: first - a.secondsPerPoint, until: last)
            var points: [(Int, Double)] = []
            for (k, v) in series.values.enumerated() {
                let t = series.from + k * series.step
                guard let v, t <= last, t + a.secondsPerPoint <= coveredFrom || i == 0 else { continue }
                points.append((t, v))
            }
            if existed && a.secondsPerPoint == node.timeStep {
                let have = try node.read(from: first, until: last + a.secondsPerPoint)
                points = points.filter { t, _ in
                    let idx = (t - have.start) / have.step
                    return have.step != node.timeStep || idx < 0 || idx >= have.values.count || have.values[idx] == nil
                }
            } else if existed {
                continue  // a live node keeps its own coarse history: only the node's own step is merged
            }
            if a.secondsPerPoint == node.timeStep {
                try node.write(points)
            } else {
                try Self.writeForeignStep(node.path, step: a.secondsPerPoint, points)
            }
            written += points.count
            if let firstT = points.first?.0 { coveredFrom = min(coveredFrom, firstT) }
        }
        return written
    }

    /// Slices at a coarser step than the node's (history only a coarse archive kept), split at gaps over 80.
    static func writeForeignStep(_ dir: String, step: Int, _ points: [(Int, Double)]) throws {
        var run: [(Int, Double)] = []
        func flush() throws {
            guard let start = run.first?.0 else { return }
            var bytes: [UInt8] = []
            var t = start
            for (pt, v) in run {
                while t < pt {
                    CeresNode.pack(.nan, into: &bytes)
                    t += step
                }
                CeresNode.pack(v, into: &bytes)
                t += step
            }
            try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/\(start)@\(step).slice"))
            run = []
        }
        for p in points {
            if let last = run.last, (p.0 - last.0) / step > CeresNode.maxSliceGap + 1 { try flush() }
            run.append(p)
        }
        try flush()
    }

    public func merge(_ path: String, from source: any Store, until: Int, now: Int) throws -> Int? {
        guard try withConfinedNode(path, create: false, { CeresNode.isNode($0) }) == true else { return nil }
        guard let db = try WhisperTreeStore.load(path, from: source) else {
            throw FerryError(.sourceIO, "\(path) vanished from the source")
        }
        return try land(db, at: path, until: until, now: now)
    }

    public func comparePoints(_ path: String, source: any Store, until: Int, window: Int?, now: Int) throws -> String? {
        guard let src = try WhisperTreeStore.load(path, from: source) else { return "missing at the source" }
        let node = try CeresNode(path: nodePath(path))
        let a = src.archives[0]
        guard a.secondsPerPoint == node.timeStep else { return "node step \(node.timeStep)s differs from \(a.secondsPerPoint)s" }
        var oldest = now - a.retention
        if let window { oldest = max(oldest, until - window) }
        let first = oldest - Whisper.mod(oldest, a.secondsPerPoint) + a.secondsPerPoint
        let last = min(until, now) - Whisper.mod(min(until, now), a.secondsPerPoint)
        guard first <= last else { return nil }
        let have = try node.read(from: first, until: last + a.secondsPerPoint)
        var tally = PointTally()
        var t = first
        while t <= last {
            if let want = src.value(a, at: t) {
                let idx = (t - have.start) / have.step
                let got = have.step == a.secondsPerPoint && idx >= 0 && idx < have.values.count ? have.values[idx] : nil
                tally.compare("\(t)", want: want, got: got)
            }
            t += a.secondsPerPoint
        }
        return tally.verdict
    }
}

/// Collects a Whisper file's bytes and lands them as a Ceres node at publish.
final class NodeWriter: ObjectWriter {
    let store: CeresDestinationStore
    let path: String
    var bytes: [UInt8]

    init(store: CeresDestinationStore, path: String, size: Int) {
        self.store = store
        self.path = path
        bytes = [UInt8](repeating: 0, count: size)
    }

    func write(_ data: UnsafeRawBufferPointer, at offset: Int64) throws {
        let end = Int(offset) + data.count
        if end > bytes.count { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
        bytes.withUnsafeMutableBytes { dst in
            dst.baseAddress!.advanced(by: Int(offset)).copyMemory(from: data.baseAddress!, byteCount: data.count)
        }
    }

    func makeDurable() throws {}

    func publish(_ entry: Entry) throws {
        let db = try Whisper(bytes: bytes, path: path)
        let now = Int(Date().timeIntervalSince1970)
        _ = try store.land(db, at: path, until: now, now: now)
    }

    func discard() { bytes = [] }
}
