import FerryCore
import FerryDigest
import Foundation
import Logging
import Synchronization

/// A verify report, printed as a table and written as JSON.
public struct VerifyReport: Codable, Sendable {
    public struct Problem: Codable, Sendable {
        /// missing, extra, differs, refused, unverifiable, not-copied
        public var kind: String
        public var path: String
        public var reason: String
    }
    public struct Drift: Codable, Sendable {
        public var changed: Int64 = 0
        public var added: Int64 = 0
        public var deleted: Int64 = 0
        public var examples: [String] = []
        public var total: Int64 { changed + added + deleted }
    }
    public struct Counts: Codable, Sendable {
        public var missing: Int64 = 0
        public var extra: Int64 = 0
        public var differs: Int64 = 0
        public var refused: Int64 = 0
        public var unverifiable: Int64 = 0
        public var notCopied: Int64 = 0
        /// Entries left out by an explicit plan policy (listed, not failures).
        public var skippedByPolicy: Int64 = 0
        /// Destination entries outside the source where the destination is live (metric trees): informational.
        public var liveExtras: Int64 = 0
        /// Partial files of this job's interrupted copies, removed by this verify (`ferry run` only).
        public var leftoversRemoved: Int64 = 0
    }
    public var job: String
    public var plan: String
    public var run: Int64
    public var round: Int
    public var mode: String
    public var sample: Double
    public var startedAt: String
    public var finishedAt: String
    public var seconds: Double
    /// Entries listed by the fresh walks: source and destination.
    public var sourceEntries: Int64
    public var destinationEntries: Int64
    public var entries: Int64
    public var filesContentChecked: Int64
    public var bytesChecked: Int64
    /// Files whose content was proven by the hash stored beside them at the destination (not read back).
    public var filesCheckedByStoredHash: Int64
    /// Files among `filesContentChecked` whose bytes were read back and hashed while the copy went on, and which
    /// showed the same change stamp (device, inode, size, mtime, change time) when this verify came to them.
    public var filesReadBackDuringCopy: Int64
    /// Files whose content this verify did not prove (outside the sample, no stored hash): never counted as
    /// matching; a later round of the rotating sample covers them.
    public var filesUnverified: Int64
    public var mismatches: Int64
    public var counts: Counts
    public var problems: [Problem]
    public var problemsTruncated: Bool
    /// The first entries skipped by policy, with the policy that skipped them.
    public var skippedByPolicy: [Problem]
    /// The plan's policies in force: copy.symlinks (and whether it is the destination's default),
    /// copy.specials, exclude.
    public var policies: [String: String]
    public var drift: Drift
    public var ok: Bool
}

/// Proves parity from two fresh walks: the source and the destination are both listed again, and the two
/// listings are joined by path (in a scratch SQLite database in the state directory, so memory does not grow
/// with the tree). Which entries exist comes from these walks, never from the manifest alone: an entry the copy's
/// own walk missed is missing here, an entry ferry left behind is an extra. The manifest only says what the copy
/// did (its chunk SHA-256s prove content without reading the source again) and what the source held at the
/// snapshot (what changed since is drift: it does not fail verify, it blocks cutover until a catch-up).
///
/// Each source entry is classified by the same `EntryFilter` as the snapshot: refused entries fail verify, policy
/// skips are listed. Every file in `full` mode (a rotating deterministic sample otherwise) has its bytes proven.
final class VerifyPhase: @unchecked Sendable {
    // @unchecked: immutable configuration plus Mutex-protected accumulators.
    let plan: Plan
    let source: any Store
    let destination: any Store
    let ledger: Ledger
    let progress: ProgressTracker
    let logger: Logger
    static let maxProblemsKept = 10_000
    var snapshotTime: Int = Int(Date().timeIntervalSince1970)
    /// `ferry run` passes the job's partial tag: partial files of this job found at the destination are removed.
    var removeLeftoversTagged: String?
    /// Whether a file the copy of this run read back (`ContentReadBack`) counts as checked while its change stamp
    /// is the same (`ferry run`); `ferry verify` reads every file again.
    var useReadBack = false
    /// The run's read-back, still going while both sides are listed: stopped before the content checks begin.
    var readBackToStop: ContentReadBack?

    private let cursor = Mutex<Int64>(0)
    private let acc = Mutex<Accumulator>(Accumulator())
    private let fatal = Mutex<(any Error)?>(nil)

    struct Accumulator {
        var problems: [VerifyReport.Problem] = []
        var failures: [(Int64?, String, String)] = []
        var mismatches: Int64 = 0
        var files: Int64 = 0
        var bytes: Int64 = 0
        var entries: Int64 = 0
        var byHash: Int64 = 0
        var readBack: Int64 = 0
        var unverified: Int64 = 0
        var counts = VerifyReport.Counts()
        var policy: [VerifyReport.Problem] = []
        var drift = VerifyReport.Drift()

        mutating func problem(_ kind: String, _ path: String, _ reason: String, item: Int64?) {
            mismatches += 1
            switch kind {
            case "missing": counts.missing += 1
            case "extra": counts.extra += 1
            case "differs": counts.differs += 1
            case "refused": counts.refused += 1
            case "unverifiable": counts.unverifiable += 1
            default: counts.notCopied += 1
            }
            if problems.count < VerifyPhase.maxProblemsKept {
                problems.append(.init(kind: kind, path: path, reason: reason))
                failures.append((item, path, reason))
            }
        }

        mutating func drifted(_ path: String, _ keyPath: WritableKeyPath<VerifyReport.Drift, Int64>) {
            drift[keyPath: keyPath] += 1
            if drift.examples.count < 20 { drift.examples.append(path.isEmpty ? "." : RawName.display(path)) }
        }
    }

    init(plan: Plan, source: any Store, destination: any Store, ledger: Ledger, progress: ProgressTracker, logger: Logger) {
        self.plan = plan
        self.source = source
        self.destination = destination
        self.ledger = ledger
        self.progress = progress
        self.logger = logger
    }

    func run() throws -> VerifyReport {
        let started = Date()
        let mode = plan.verify.mode
        let rate = mode == .full ? 1.0 : plan.verify.sample
        let (runID, round) = try ledger.beginVerify(mode: mode.rawValue, sample: rate)
        let chunkSize = try ledger.job()?.chunkSize ?? plan.copy.chunkSize
        if let at = try ledger.job()?.snapshotAt { snapshotTime = Int(at) }
        let scratch = try WalkScratch(stateDirectory: plan.stateDirectory)
        defer { scratch.remove() }
        progress.begin(phase: "verify: listing", filesTotal: 0, bytesTotal: 0)
        let listed = try listBothSides(scratch)
        let toCheck = try classify(scratch, round: round, rate: rate)
        readBackToStop?.stop()
        progress.begin(phase: "verify", filesTotal: toCheck.files, bytesTotal: toCheck.bytes)
        // Only a destination with change stamps can hold read-back records: no ledger query per page elsewhere.
        let readsBack = useReadBack && destination is any ChangeStamping
        runThreads(plan.copy.concurrency, name: "ferry-verify") { [self] _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkSize), alignment: 4096)
            defer { buffer.deallocate() }
            let hasher = SHA256Hasher()
            do {
                while fatal.withLock({ $0 == nil }) {
                    let page = try cursor.withLock { after in
                        let p = try scratch.checks(after: after, limit: 64)
                        if let last = p.last { after = last.seq }
                        return p
                    }
                    if page.isEmpty { break }
                    // The page's items and chunk checksums in one read of the ledger.
                    let records = try ledger.itemsWithChunks(ids: page.map(\.item))
                    let digests = try prefetchDigests(page.filter(\.sampled).compactMap { records[$0.item] })
                    let readBack = readsBack ? try ledger.readBack(ids: page.filter(\.sampled).map(\.item)) : [:]
                    for c in page {
                        guard let (item, chunks) = records[c.item] else { continue }
                        let problem = try checkContent(
                            item, chunks: chunks, sampled: c.sampled, buffer: buffer, hasher: hasher, digests: digests[item.id],
                            readBack: readBack[item.id])
                        acc.withLock { a in
                            if let problem {
                                a.problem("differs", item.entry.path, problem, item: item.id)
                            } else if c.sampled {
                                a.files += 1
                                a.bytes += item.entry.size
                            }
                        }
                        progress.add(files: 1, bytes: c.sampled ? item.entry.size : 0)
                    }
                }
            } catch {
                fatal.withLock { if $0 == nil { $0 = error } }
            }
        }
        if let error = fatal.withLock({ $0 }) { throw error }
        let finished = Date()
        let a = acc.withLock { $0 }
        let iso = ISO8601DateFormatter()
        let report = VerifyReport(
            job: plan.name, plan: plan.file, run: runID, round: round, mode: mode.rawValue, sample: rate,
            startedAt: iso.string(from: started), finishedAt: iso.string(from: finished),
            seconds: finished.timeIntervalSince(started), sourceEntries: listed.source, destinationEntries: listed.destination,
            entries: a.entries, filesContentChecked: a.files, bytesChecked: a.bytes, filesCheckedByStoredHash: a.byHash,
            filesReadBackDuringCopy: a.readBack,
            filesUnverified: a.unverified, mismatches: a.mismatches, counts: a.counts,
            problems: a.problems.sorted { $0.path < $1.path }, problemsTruncated: a.mismatches > Int64(a.problems.count),
            skippedByPolicy: a.policy, policies: policies(), drift: a.drift, ok: a.mismatches == 0)
        let reportPath = plan.stateDirectory + "/verify-\(runID).json"
        let data = try Self.encode(report)
        do {
            try data.write(to: URL(fileURLWithPath: reportPath), options: .atomic)
            try data.write(to: URL(fileURLWithPath: plan.stateDirectory + "/verify-latest.json"), options: .atomic)
        } catch {
            throw FerryError(.other, "cannot write the verify report \(reportPath)", underlying: error)
        }
        try ledger.finishVerify(
            id: runID, filesChecked: a.files, bytesChecked: a.bytes, failures: a.failures.map { ($0.0, $0.1, $0.2) },
            mismatches: a.mismatches, drift: a.drift.total, ok: report.ok, reportPath: reportPath)
        ProgressMetrics.record(verifyMismatches: Int(a.mismatches))
        return report
    }

    func policies() -> [String: String] {
        let (symlinks, defaulted) = EntryFilter.symlinkPolicy(plan, destination: destination)
        return [
            "copy.symlinks": symlinks.rawValue + (defaulted ? " (default for this destination)" : ""),
            "copy.specials": plan.copy.specials?.rawValue ?? "refuse (no policy)",
            "exclude": plan.copy.exclude.isEmpty ? "none" : plan.copy.exclude.joined(separator: ", "),
        ]
    }

    static func encode(_ report: VerifyReport) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        return try enc.encode(report)
    }

    /// Walks both sides afresh into the scratch database. Where something else writes both sides (a live tap, a
    /// metric tree's daemon) the destination is walked first: an entry written to both sides while the walks run
    /// then shows as new at the source (drift), never as an extra at the destination. Elsewhere nothing writes
    /// the destination during a verify, and the two walks run at once. The source side is classified by the
    /// plan's policies.
    private func listBothSides(_ scratch: WalkScratch) throws -> (source: Int64, destination: Int64) {
        guard plan.tap == nil && !(destination is any Merging) else {
            let d = try listDestination(scratch)
            return (try listSource(scratch), d)
        }
        let counts = Mutex<[Int: Result<Int64, any Error>]>([:])
        runThreads(2, name: "ferry-verify-walk") { [self] side in
            let count = Result { try side == 0 ? listDestination(scratch) : listSource(scratch) }
            counts.withLock { $0[side] = count }
        }
        let (d, s) = counts.withLock { ($0[0], $0[1]) }
        guard let d, let s else { throw FerryError(.other, "verify: a walk ended without a result") }
        return (try s.get(), try d.get())
    }

    /// Lists the destination into the scratch table `dst`; returns how many entries it holds.
    private func listDestination(_ scratch: WalkScratch) throws -> Int64 {
        let dst = scratch.writer(table: "dst")
        if let root = try destination.stat("") { try dst.add(root, verdict: "copy", reason: nil) }
        var unlisted: [SkippedEntry] = []
        try destination.walk(
            { e in try dst.add(e, verdict: "copy", reason: nil) },
            skipped: { s in
                if s.category == .refused && unlisted.count < 100 { unlisted.append(s) }
            })
        try dst.flush()
        // What the destination walk could not read is not proven.
        acc.withLock { a in
            for s in unlisted { a.problem("unverifiable", s.path, "cannot be listed at the destination: \(s.reason)", item: nil) }
        }
        return dst.count
    }

    /// Lists the source into the scratch table `src`, each entry with the plan's verdict; returns how many.
    private func listSource(_ scratch: WalkScratch) throws -> Int64 {
        var filter = EntryFilter(plan: plan, destination: destination)
        let src = scratch.writer(table: "src")
        if let root = try source.stat("") { try src.add(root, verdict: "copy", reason: nil) }
        try source.walk(
            { e in
                switch filter.classify(e) {
                case .copy: try src.add(e, verdict: "copy", reason: nil)  // as walked: a second name is still a file
                case .refuse(let why): try src.add(e, verdict: "refused", reason: why)
                case .skip(let why): try src.add(e, verdict: "policy", reason: why)
                }
            },
            skipped: { s in
                try? src.add(
                    Entry(path: s.path, kind: .file, size: 0, mtimeNs: 0, mode: 0, inode: 0),
                    verdict: s.category == .policy ? "policy" : "refused", reason: s.reason)
            })
        try src.flush()
        return src.count
    }

    /// Joins the two listings with the manifest and records every finding; returns how much content to check.
    private func classify(_ scratch: WalkScratch, round: Int, rate: Double) throws -> (files: Int64, bytes: Int64) {
        let posix = source.keepsPOSIXMetadata && destination.keepsPOSIXMetadata
        // A live destination (metric trees) or a live tap writes entries the snapshot never saw.
        let live = destination is any Merging || plan.tap != nil
        let pointwise = destination is any PointComparing
        var files: Int64 = 0
        var bytes: Int64 = 0
        var removeLeftovers: [String] = []
        var a = acc.withLock { $0 }
        try scratch.join(ledgerPath: ledger.path) { row in
            let path = row.path
            a.entries += 1
            if let s = row.source, row.sourceVerdict == "refused" {
                a.problem("refused", s.path, row.sourceReason ?? "refused", item: row.item?.id)
                return nil
            }
            if row.sourceVerdict == "policy" {
                a.counts.skippedByPolicy += 1
                if a.policy.count < 1000 { a.policy.append(.init(kind: "skipped", path: path, reason: row.sourceReason ?? "")) }
                return nil
            }
            // A bucket holds no directories; a tree made from a bucket has directories the bucket never listed.
            if row.source?.kind == .directory && (!destination.keepsPOSIXMetadata || pointwise) { return nil }
            if row.source == nil && row.destination?.kind == .directory && !source.keepsPOSIXMetadata { return nil }
            let item = row.item
            let present = item.map { [.pending, .done, .failed].contains($0.state) } ?? false
            guard let s = row.source else {
                if present || item?.state == .vanished {
                    a.drifted(path, \.deleted)  // gone from the source since the snapshot: a catch-up removes it
                    return nil
                }
                guard let d = row.destination else { return nil }
                if destination.isOwnTemporary(d.path) {
                    if let tag = removeLeftoversTagged, PathUtil.lastComponent(d.path).hasPrefix(".ferry-\(tag).") {
                        removeLeftovers.append(d.path)
                        return nil
                    }
                    a.problem("extra", d.path, "a partial file that an interrupted copy left behind (`ferry run` removes this job's own)", item: nil)
                } else if live {
                    a.counts.liveExtras += 1
                } else {
                    a.problem("extra", d.path, "extra at the destination: the source has no such \(d.kind.noun)", item: nil)
                }
                return nil
            }
            guard let item, present else {
                a.drifted(path, \.added)  // new at the source since the snapshot
                return nil
            }
            switch item.state {
            case .pending:
                a.problem("not-copied", path, "not copied yet", item: item.id)
                return nil
            case .failed:
                a.problem("not-copied", path, "not copied: \(item.error ?? "failed")", item: item.id)
                return nil
            default: break
            }
            var manifest = item.entry
            if manifest.kind == .hardlink { manifest.kind = .file }
            if s.changed(comparedTo: manifest) || s.mode != manifest.mode {
                a.drifted(path, \.changed)  // the destination holds the snapshot's version; a catch-up copies the new one
                return nil
            }
            guard let d = row.destination else {
                a.problem("missing", path, "missing at the destination", item: item.id)
                return nil
            }
            if let why = Self.metadataDiffers(manifest, d, posix: posix && !pointwise, sizes: !pointwise, sourceAllocated: s.allocated) {
                a.problem("differs", path, why, item: item.id)
                return nil
            }
            guard manifest.kind == .file, item.entry.kind != .hardlink else { return nil }
            let sampled = Sampling.isSelected(path, round: round, rate: rate)
            if sampled || destination is any ChecksumProviding {
                files += 1
                if sampled { bytes += manifest.size }
                return (item.id, sampled)
            }
            if manifest.size > 0 { a.unverified += 1 }
            return nil
        }
        acc.withLock { $0 = a }
        for path in removeLeftovers {
            do {
                try destination.remove(path, kind: .file)
                acc.withLock { $0.counts.leftoversRemoved += 1 }
                logger.info("removed a partial file of an interrupted copy", metadata: ["path": "\(RawName.display(path))"])
            } catch {
                acc.withLock { $0.problem("extra", path, "a partial file that could not be removed: \(error.operatorText)", item: nil) }
            }
        }
        if posix && destination is any HardLinking {
            for (path, why, names) in try scratch.hardLinkDifferences() {
                // A live tree's links made or broken since the snapshot are drift (the tap carries them), as a
                // changed file is; a group whose every name is as the manifest has it is ferry's to mirror.
                // The manifest holds a group as one file and its other names as links to it.
                let items = try names.map { try ledger.item(path: $0) }
                let asManifest =
                    items.allSatisfy { $0.map { [.done, .pending].contains($0.state) } ?? false }
                    && items.filter { $0?.entry.kind == .file }.count == 1
                if plan.tap != nil && !asManifest {
                    acc.withLock { $0.drifted(path, \.changed) }
                    continue
                }
                acc.withLock { $0.problem("differs", path, why, item: nil) }
            }
        }
        return (files, bytes)
    }

    /// What differs between the manifest's view of an entry and the destination's, judging by metadata.
    static func metadataDiffers(_ e: Entry, _ d: Entry, posix: Bool, sizes: Bool, sourceAllocated: Int64?) -> String? {
        if d.kind != e.kind { return "is a \(d.kind.noun) at the destination, a \(e.kind.noun) at the source" }
        func octal(_ m: UInt32) -> String { "0" + String(m, radix: 8) }
        switch e.kind {
        case .symlink:
            if d.linkTarget != e.linkTarget {
                return "link target differs (source \(RawName.display(e.linkTarget ?? "?")), destination \(RawName.display(d.linkTarget ?? "?")))"
            }
        case .charDevice, .blockDevice:
            if d.rdev != e.rdev { return "device number differs" }
        case .file:
            if sizes && d.size != e.size { return "size differs (source \(e.size), destination \(d.size))" }
        default: break
        }
        guard posix else { return nil }
        if d.mode != e.mode { return "mode differs (source \(octal(e.mode)), destination \(octal(d.mode)))" }
        if e.kind == .file && d.mtimeNs != e.mtimeNs { return "mtime differs" }
        if geteuid() == 0 && (d.uid != e.uid || d.gid != e.gid) {
            return "owner differs (source \(e.uid):\(e.gid), destination \(d.uid):\(d.gid))"
        }
        if d.xattrs != e.xattrs {
            let names = Set(e.xattrs.map(\.name)).symmetricDifference(d.xattrs.map(\.name)).sorted()
            return "extended attributes differ" + (names.isEmpty ? " (values)" : " (\(names.joined(separator: ", ")))")
        }
        if e.kind == .file, let src = sourceAllocated, let dst = d.allocated, src < e.size, dst > src + max(1 << 20, src / 10) {
            return "holes not kept: the source allocates \(src) bytes of \(e.size), the destination \(dst)"
        }
        return nil
    }

    /// Whether a store on another host holds exactly the bytes that were copied into it (its own digests of the
    /// ledger's chunk ranges, and nothing past the end): then every point is the source's, and only digests
    /// cross the network. A file merged into, or written since by a live carbon, differs and is compared point
    /// by point.
    private func sameBytesAsCopied(_ item: ItemRecord, chunks: [ChunkRecord], digests prefetched: Digests?) throws -> Bool {
        guard let far = destination as? any RangeHashing, let ranges = hashedRanges(item, chunks: chunks) else { return false }
        let answer = prefetched ?? Result { try far.digests(of: item.entry.path, ranges: ranges) }
        guard let digests = try? answer.get(), digests.count == ranges.count else { return false }
        guard digests.last?.length == 0 else { return false }
        return zip(chunks, digests).allSatisfy { $0.length == $1.length && $0.sha256 == $1.sha256 }
    }

    typealias Digests = Result<[RangeDigest]?, any Error>

    /// Whether what the copy read back still proves the destination's file: it hashed to the same chunk checksums
    /// as the ledger's now, and the file shows the same change stamp (so nothing wrote to it since).
    private func readBackHolds(_ proof: (stamp: String, chunkList: String), _ path: String, chunks: [ChunkRecord]) -> Bool {
        guard let stamping = destination as? any ChangeStamping, let list = SHA256Hasher.chunkListDigest(chunks.map(\.sha256)),
            list.hex == proof.chunkList, let now = try? stamping.changeStamp(path)
        else { return false }
        return now.text == proof.stamp
    }

    /// The ranges a content check asks a range-hashing destination for: a metric file's chunks and one byte
    /// past its end (nothing may be there) when the chunks cover it; another file's chunks.
    private func hashedRanges(_ item: ItemRecord, chunks: [ChunkRecord]) -> [ByteRange]? {
        guard destination is any RangeHashing, !chunks.isEmpty else { return nil }
        let ranges = chunks.map { ByteRange(offset: $0.offset, length: $0.length) }
        guard destination is any PointComparing else { return ranges }
        guard chunks.reduce(Int64(0), { $0 + $1.length }) == item.entry.size else { return nil }
        return ranges + [ByteRange(offset: item.entry.size, length: 1)]
    }

    /// The digests a page's content checks will ask a destination on another host for, in one round trip
    /// (or as few as its bounds allow) instead of one per file.
    private func prefetchDigests(_ records: [(ItemRecord, [ChunkRecord])]) throws -> [Int64: Digests] {
        guard let batcher = destination as? any Batching else { return [:] }
        let asked = records.compactMap { item, chunks in hashedRanges(item, chunks: chunks).map { (item, $0) } }
        guard asked.count > 1 else { return [:] }
        let answers = try batcher.digests(ofEach: asked.map { ($0.0.entry.path, $0.1) })
        return Dictionary(zip(asked.map(\.0.id), answers), uniquingKeysWith: { a, _ in a })
    }

    /// Returns a problem description, or nil when the content matches.
    /// `chunks` are the item's chunk checksums from the ledger, in index order.
    private func checkContent(
        _ item: ItemRecord, chunks: [ChunkRecord], sampled content: Bool, buffer: UnsafeMutableRawBufferPointer, hasher: SHA256Hasher,
        digests prefetched: Digests? = nil, readBack: (stamp: String, chunkList: String)? = nil
    ) throws -> String? {
        let e = item.entry
        if let points = destination as? any PointComparing {
            // Metric files: the destination keeps live points, so parity is proven value by value.
            guard content else { return nil }
            if try sameBytesAsCopied(item, chunks: chunks, digests: prefetched) { return nil }
            do {
                // With a tap, the last seconds before the snapshot are still on their way to the new side through
                // it (its lag gates cover them): points are compared up to the snapshot less max_tap_lag.
                let margin = plan.tap != nil ? Int(plan.cutover.maxTapLag ?? 30) : 0
                return try points.comparePoints(
                    e.path, source: source, until: snapshotTime - margin, window: plan.verify.window.map { Int($0) },
                    now: Int(Date().timeIntervalSince1970))
            } catch {
                return "cannot compare points: \(error.operatorText)"
            }
        }
        guard content else {
            // Outside the sample: a hash stored beside the object still proves a single-chunk file.
            if let sums = destination as? any ChecksumProviding {
                if chunks.count == 1, let stored = try? sums.storedSHA256(e.path) {
                    if stored != chunks[0].sha256 { return "stored SHA-256 differs from the source's" }
                    acc.withLock { $0.byHash += 1 }
                    return nil
                }
                if chunks.count > 1, let (size, stored) = try? sums.storedChunkListSHA256(e.path),
                    size == chunks[0].length, let want = SHA256Hasher.chunkListDigest(chunks.map(\.sha256))
                {
                    if stored != want.hex { return "stored SHA-256 of the chunk list differs from the source's" }
                    acc.withLock { $0.byHash += 1 }
                    return nil
                }
            }
            if e.size > 0 { acc.withLock { $0.unverified += 1 } }
            return nil
        }
        if chunks.isEmpty && e.size > 0 {
            // Copied server-side (no bytes through ferry, no chunk hashes): read both sides.
            return compareBothSides(e, buffer: buffer, hasher: hasher)
        }
        let planned = Int64(buffer.count)
        let itemChunk = (destination as? any ChunkSizing)?.chunkSize(forSize: e.size, planned: planned) ?? planned
        let layout = ChunkLayout.chunks(size: e.size, chunkSize: e.size <= planned ? planned : itemChunk)
        if chunks.count != layout.count { return "ledger holds \(chunks.count) of \(layout.count) chunk checksums" }
        if let readBack, readBackHolds(readBack, e.path, chunks: chunks) {
            acc.withLock { $0.readBack += 1 }
            return nil
        }
        if let far = destination as? any RangeHashing {
            // A store on another host hashes its own bytes: only the digests cross the network.
            let digests: [RangeDigest]
            do {
                let ranges = chunks.map { ByteRange(offset: $0.offset, length: $0.length) }
                guard let d = try (prefetched ?? Result { try far.digests(of: e.path, ranges: ranges) }).get() else {
                    return "missing at the destination"
                }
                digests = d
            } catch {
                return "cannot hash at the destination: \(error.operatorText)"
            }
            guard digests.count == chunks.count else { return "the destination hashed \(digests.count) of \(chunks.count) chunks" }
            for (c, d) in zip(chunks, digests) {
                if d.length != c.length { return "truncated at the destination in chunk \(c.index)" }
                if d.sha256 != c.sha256 { return "content differs in chunk \(c.index) (bytes \(c.offset)-\(c.offset + c.length - 1))" }
            }
            return nil
        }
        let chunkBuffer = ChunkBuffer(buffer, atLeast: itemChunk)
        defer { withExtendedLifetime(chunkBuffer) {} }  // the buffer lives as long as this function uses it
        let buffer = chunkBuffer.buffer
        let reader: any ObjectReader
        do {
            guard let r = try destination.openReader(e.path) else { return "missing at the destination" }
            reader = r
        } catch {
            return "cannot read at the destination: \(error.operatorText)"
        }
        defer { reader.close() }
        for c in chunks {
            let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(c.length)])
            let n: Int
            do {
                n = try reader.read(into: window, at: c.offset)
            } catch {
                return "cannot read at the destination: \(error.operatorText)"
            }
            if n != Int(c.length) { return "truncated at the destination in chunk \(c.index)" }
            hasher.update(UnsafeRawBufferPointer(window))
            if hasher.finish().hex != c.sha256 {
                return "content differs in chunk \(c.index) (bytes \(c.offset)-\(c.offset + c.length - 1))"
            }
        }
        return nil
    }

}

extension VerifyPhase {
    /// An item copied server-side has no chunk hashes: both sides are read chunk by chunk and their SHA-256
    /// compared.
    func compareBothSides(_ e: Entry, buffer: UnsafeMutableRawBufferPointer, hasher: SHA256Hasher) -> String? {
        let readers: (any ObjectReader, any ObjectReader)
        do {
            guard let s = try source.openReader(e.path) else { return "missing at the source" }
            guard let d = try destination.openReader(e.path) else {
                s.close()
                return "missing at the destination"
            }
            readers = (s, d)
        } catch {
            return "cannot read both sides: \(error.operatorText)"
        }
        defer {
            readers.0.close()
            readers.1.close()
        }
        for chunk in ChunkLayout.chunks(size: e.size, chunkSize: Int64(buffer.count)) {
            let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(chunk.length)])
            var digests: [String] = []
            for r in [readers.0, readers.1] {
                do {
                    guard try r.read(into: window, at: chunk.offset) == Int(chunk.length) else {
                        return "truncated in chunk \(chunk.index) on one side"
                    }
                } catch {
                    return "cannot read chunk \(chunk.index): \(error.operatorText)"
                }
                hasher.update(UnsafeRawBufferPointer(window))
                digests.append(hasher.finish().hex)
            }
            if digests[0] != digests[1] {
                return "content differs in chunk \(chunk.index) (bytes \(chunk.offset)-\(chunk.offset + chunk.length - 1))"
            }
        }
        return nil
    }
}
