public import FerryCore
public import FerryLocal
import Foundation

/// A tree of Whisper files (carbon's storage/whisper). Lists, reads and writes like a directory tree, merges
/// into existing files (fill, never clobber, under carbon's flock) and proves parity point by point.
public final class WhisperTreeStore: Store, Merging, PointComparing, @unchecked Sendable {
    // @unchecked: wraps an immutable LocalStore.
    public let tree: LocalStore
    public var root: String { tree.root }
    public var displayName: String { "whisper:\(tree.root)" }

    public init(root: String) {
        // A file that a live carbon-cache created while ferry was copying it is never replaced: the copy's
        // points are merged into it instead (fill gaps, never clobber what carbon wrote).
        tree = LocalStore(root: root) { staged, existing in
            let src = try Whisper(path: staged)
            let file = try WhisperFile(path: existing)
            var db = try file.read()
            let now = Int(Date().timeIntervalSince1970)
            let report = db.fill(from: src, until: now, now: now)
            try file.write(db, range: report.changed)
        }
    }

    public func prepareRoot() throws { try tree.prepareRoot() }

    /// Lists directories, links and `.wsp` files (carbon's tree holds nothing else worth moving).
    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        try tree.walk(
            { e in
                if e.kind != .file || e.path.hasSuffix(".wsp") { try visit(e) }
            }, skipped: skipped)
    }

    public func stat(_ path: String) throws -> Entry? { try tree.stat(path) }
    public func openReader(_ path: String) throws -> (any ObjectReader)? { try tree.openReader(path) }
    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        try tree.openWriter(for: entry, token: token, resume: resume)
    }
    public func makeDirectory(_ entry: Entry) throws { try tree.makeDirectory(entry) }
    public func finishDirectory(_ entry: Entry) throws { try tree.finishDirectory(entry) }
    public func makeSymlink(_ entry: Entry) throws { try tree.makeSymlink(entry) }
    public func remove(_ path: String, kind: EntryKind) throws { try tree.remove(path, kind: kind) }
    public func syncAll() throws { try tree.syncAll() }
    public func discardPartial(for path: String, token: String) throws { try tree.discardPartial(for: path, token: token) }

    /// Reads a whole Whisper file from any store (under a shared flock when it is local, so a carbon write in
    /// progress is never seen half done).
    static func load(_ path: String, from store: any Store) throws -> Whisper? {
        if let local = (store as? WhisperTreeStore)?.tree ?? (store as? LocalStore) {
            // Opened beneath the tree's root: no symlinked directory leads the read outside it.
            let full = local.root + "/" + path
            guard let fd = try local.openDescriptor(path, O_RDONLY) else { return nil }
            defer { close(fd) }
            _ = flock(fd, LOCK_SH)
            var st = Foundation.stat()
            guard fstat(fd, &st) == 0 else { throw SystemCallError("fstat", errno: errno, path: full) }
            return try Whisper(bytes: WhisperFile.readWhole(fd, size: Int(st.st_size), path: full), path: full)
        }
        guard let reader = try store.openReader(path) else { return nil }
        defer { reader.close() }
        let size = Int(try reader.currentEntry().size)
        var bytes = [UInt8](repeating: 0, count: size)
        let n = try bytes.withUnsafeMutableBytes { try reader.read(into: $0, at: 0) }
        return try Whisper(bytes: Array(bytes[0..<n]), path: store.displayName + "/" + path)
    }

    public func merge(_ path: String, from source: any Store, until: Int, now: Int) throws -> Int? {
        let full = root + "/" + path
        // Opened beneath the root (a directory swapped for a symlink is refused, never merged through).
        guard let fd = try tree.openDescriptor(path, O_RDWR) else { return nil }
        let file = try WhisperFile(fd: fd, path: full)
        guard let src = try Self.load(path, from: source) else {
            throw FerryError(.sourceIO, "\(path) vanished from the source")
        }
        var db = try file.read()
        let report = db.fill(from: src, until: until, now: now)
        // Only the span the fill wrote goes back. Made durable by the engine's group sync (syncAll) before the
        // merge is recorded, with the files copied beside it: no fdatasync per merged file.
        try file.write(db, range: report.changed, sync: false)
        return report.total
    }

    public func comparePoints(_ path: String, source: any Store, until: Int, window: Int?, now: Int) throws -> String? {
        if let ceres = source as? CeresTreeStore {
            return try comparePoints(path, ceres: ceres, until: until, window: window, now: now)
        }
        guard let src = try Self.load(path, from: source) else { return "missing at the source" }
        guard let dst = try Self.load(path, from: self) else { return "missing at the destination" }
        var tally = PointTally()
        // Every destination archive, at its resolution, against the source archive of the same step (or the
        // finest finer one, aggregated by the destination's rules, as the merge filled it).
        for a in dst.archives {
            guard
                let from = src.archives.first(where: { $0.secondsPerPoint == a.secondsPerPoint })
                    ?? src.archives.last(where: { $0.secondsPerPoint < a.secondsPerPoint && a.secondsPerPoint % $0.secondsPerPoint == 0 })
            else { continue }
            let step = a.secondsPerPoint
            var oldest = now - min(a.retention, from.retention)
            if let window { oldest = max(oldest, until - window) }
            var t = oldest - Whisper.mod(oldest, step) + step
            let last = min(until, now) - Whisper.mod(min(until, now), step)
            let base = dst.baseInterval(a)
            if from.secondsPerPoint == step {
                comparePointsSameStep(src, from, fromBase: src.baseInterval(from), dst, a, base: base, from: t, through: last, into: &tally)
                continue
            }
            // A finer source archive, aggregated by the destination's rules.
            while t <= last {
                let want = src.aggregate(from, into: t, step: step, method: dst.aggregation, xff: dst.xFilesFactor)
                // A slot already holding a newer lap has rolled past t at the destination: nothing to compare.
                let lapped = base != 0 && dst.point(at: dst.slotOffset(a, base: base, interval: t)).0 > t
                if let want, !lapped { tally.compare("\(step)s@\(t)", want: want, got: dst.value(a, at: t, base: base)) }
                t += step
            }
        }
        return tally.verdict
    }
}

extension WhisperTreeStore {
    /// Two archives of one step compared slot by slot from `first` through `last` (aligned): the slot offsets
    /// advance and wrap instead of being divided out for every point, and each slot is read once. The same
    /// rules as the general loop: a source point is compared where the source holds that time, unless the
    /// destination's slot holds a newer lap.
    func comparePointsSameStep(
        _ src: Whisper, _ from: WhisperArchive, fromBase: Int, _ dst: Whisper, _ a: WhisperArchive, base: Int,
        from first: Int, through last: Int, into tally: inout PointTally
    ) {
        guard fromBase != 0, first <= last else { return }
        let size = Whisper.pointSize
        let step = a.secondsPerPoint
        var sOff = src.slotOffset(from, base: fromBase, interval: first)
        let sEnd = from.offset + from.points * size
        var dOff = base != 0 ? dst.slotOffset(a, base: base, interval: first) : 0
        let dEnd = a.offset + a.points * size
        var t = first
        // One pointer on each side for the whole walk; a value whose 8 bytes are the source's needs no decoding.
        src.bytes.withUnsafeBufferPointer { sp in
            dst.bytes.withUnsafeBufferPointer { dp in
                let s = sp.baseAddress!
                let d = dp.baseAddress!
                func time(_ p: UnsafePointer<UInt8>) -> Int { Int(Whisper.u32(p)) }
                func value(_ p: UnsafePointer<UInt8>) -> Double { Double(bitPattern: Whisper.u64(p + 4)) }
                while t <= last {
                    let sp = s + sOff
                    if time(sp) == t {
                        if base == 0 {
                            tally.compare("\(step)s@\(t)", want: value(sp), got: nil)
                        } else {
                            let dp = d + dOff
                            let dt = time(dp)
                            if dt == t {
                                if memcmp(sp + 4, dp + 4, 8) != 0 { tally.compare("\(step)s@\(t)", want: value(sp), got: value(dp)) }
                            } else if dt < t {
                                tally.compare("\(step)s@\(t)", want: value(sp), got: nil)
                            }
                        }
                    }
                    t += step
                    sOff += size
                    if sOff == sEnd { sOff = from.offset }
                    if base != 0 {
                        dOff += size
                        if dOff == dEnd { dOff = a.offset }
                    }
                }
            }
        }
    }
}

extension WhisperTreeStore {
    /// A Ceres source is read independently of the conversion that filled the destination: by the reference read
    /// rules (newest slice shadows older ones, finer data aggregated to the step read), in pieces between the
    /// slices' boundaries, at each destination archive's resolution. A piece whose data is coarser than the
    /// archive has nothing to compare there.
    func comparePoints(_ path: String, ceres: CeresTreeStore, until: Int, window: Int?, now: Int) throws -> String? {
        let nodePath = ceres.root + "/" + String(path.dropLast(4))
        guard CeresNode.isNode(nodePath) else { return "missing at the source" }
        let node = try CeresNode(path: nodePath)
        guard let dst = try Self.load(path, from: self) else { return "missing at the destination" }
        var tally = PointTally()
        let edges = Set(node.slices.flatMap { [$0.startTime, $0.endTime] })
        for a in dst.archives {
            let step = a.secondsPerPoint
            var oldest = now - a.retention
            if let window { oldest = max(oldest, until - window) }
            let first = oldest - Whisper.mod(oldest, step) + step
            let lastTime = min(until, now)
            let last = lastTime - Whisper.mod(lastTime, step)
            guard first <= last else { continue }
            let cuts = ([first, last + step] + edges.map { $0 - Whisper.mod($0, step) }.filter { $0 > first && $0 < last + step })
            let bounds = Array(Set(cuts)).sorted()
            for (lo, hi) in zip(bounds, bounds.dropFirst()) {
                let series = try node.read(from: lo, until: hi)
                let s = series.step
                guard s <= step, step % s == 0 else { continue }
                let factor = step / s
                var t = lo
                while t < hi {
                    let i = (t - series.start) / s
                    guard i >= 0, i + factor <= series.values.count else { break }
                    let group = Array(series.values[i..<(i + factor)])
                    let known = group.compactMap { $0 }
                    if !known.isEmpty, factor == 1 || Double(known.count) / Double(factor) >= Double(dst.xFilesFactor) {
                        let want = factor == 1 ? known[0] : dst.aggregation.aggregate(known: known, neighbors: group)
                        let lapped =
                            dst.baseInterval(a) != 0
                            && dst.point(at: dst.slotOffset(a, base: dst.baseInterval(a), interval: t)).0 > t
                        if !lapped { tally.compare("\(step)s@\(t)", want: want, got: dst.value(a, at: t)) }
                    }
                    t += step
                }
            }
        }
        return tally.verdict
    }
}

/// Counts what a point-by-point comparison found, keeping the first few examples for the report.
struct PointTally {
    var missing = 0
    var differing = 0
    var examples: [String] = []

    /// One source value against the destination's (nil: the destination has none). The label is only built for
    /// an example (it was most of a point verify's time).
    mutating func compare(_ label: @autoclosure () -> String, want: Double, got: Double?) {
        guard let got else {
            missing += 1
            if examples.count < 3 { examples.append("\(label()): missing at the destination") }
            return
        }
        if got.bitPattern != want.bitPattern && !(got.isNaN && want.isNaN) {
            differing += 1
            if examples.count < 3 { examples.append("\(label()): source \(want), destination \(got)") }
        }
    }

    /// nil when everything matched, else the summary verify reports.
    var verdict: String? {
        if missing == 0 && differing == 0 { return nil }
        return "\(missing) points missing, \(differing) differing (\(examples.joined(separator: "; ")))"
    }
}

extension WhisperTreeStore: FenceChecking {
    /// Whether the fence's metric file holds its serial at its time in the finest archive.
    public func hasFence(_ token: FenceToken) throws -> Bool {
        let rel = token.name.split(separator: ".").joined(separator: "/") + ".wsp"
        guard let w = try Self.load(rel, from: self), let a = w.archives.first else { return false }
        let interval = token.issuedAt - token.issuedAt % a.secondsPerPoint
        return w.value(a, at: interval) == Double(token.serial)
    }
}

extension WhisperTreeStore: SchemaDescribing {
    /// Seconds in carbon's retention style: the largest unit that divides them (`30d`, `6h`, `90m`, `45s`).
    static func retention(_ seconds: Int) -> String {
        for (unit, n) in [("y", 31_536_000), ("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] where seconds >= n && seconds % n == 0 {
            return "\(seconds / n)\(unit)"
        }
        return "\(seconds)s"
    }

    /// `aggregation xff=F 60s:1d,...` from the header only (16 bytes, then 12 per archive).
    public func schema(_ path: String) throws -> String? {
        guard let r = try tree.openReader(path) else { return nil }
        defer { r.close() }
        let head = try r.read(count: 16, at: 0)
        guard head.count == 16 else { return nil }
        func u32(_ b: [UInt8], _ o: Int) -> UInt32 { b[o..<(o + 4)].reduce(0) { $0 << 8 | UInt32($1) } }
        let count = Int(u32(head, 12))
        guard count > 0, count <= 64 else { return nil }
        let infos = try r.read(count: 12 * count, at: 16)
        guard infos.count == 12 * count else { return nil }
        let aggregation = Aggregation(rawValue: u32(head, 0)).map { "\($0)" } ?? "aggregation \(u32(head, 0))"
        let xff = Float(bitPattern: u32(head, 8))
        let archives = (0..<count).map { i -> String in
            let step = Int(u32(infos, 12 * i + 4)), points = Int(u32(infos, 12 * i + 8))
            return "\(step)s:\(Self.retention(step * points))"
        }
        return "\(aggregation) xff=\(xff) " + archives.joined(separator: ",")
    }
}
