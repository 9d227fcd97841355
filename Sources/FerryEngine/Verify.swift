import Foundation
import Synchronization
import FerryCore
import FerryDigest
import Logging

/// A verify report, printed as a table and written as JSON.
public struct VerifyReport: Codable, Sendable {
    public struct Problem: Codable, Sendable {
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
    public var job: String
    public var plan: String
    public var run: Int64
    public var round: Int
    public var mode: String
    public var sample: Double
    public var startedAt: String
    public var finishedAt: String
    public var seconds: Double
    public var entries: Int64
    public var filesContentChecked: Int64
    public var bytesChecked: Int64
    /// Files whose content was proven by the hash stored beside them at the destination (not read back).
    public var filesCheckedByStoredHash: Int64
    /// Files whose content this verify did not prove (outside the sample, no stored hash): never counted as
    /// matching; a later round of the rotating sample covers them.
    public var filesUnverified: Int64
    public var mismatches: Int64
    public var problems: [Problem]
    public var problemsTruncated: Bool
    public var drift: Drift
    public var ok: Bool
}

/// Proves parity: every manifest entry exists at the destination with the same type, size, mode, mtime and
/// link target, and (all files in `full` mode, a rotating deterministic sample otherwise) the same bytes, chunk
/// by chunk against the SHA-256 recorded when the source was read. Also measures the source's drift since the
/// snapshot (what a catch-up would copy), which does not fail verify but blocks cutover.
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

    private let cursor = Mutex<Int64>(0)
    private let acc = Mutex<(problems: [VerifyReport.Problem], failures: [(Int64?, String, String)], mismatches: Int64, files: Int64, bytes: Int64, entries: Int64)>(([], [], 0, 0, 0, 0))
    private let proof = Mutex<(byHash: Int64, unverified: Int64)>((0, 0))
    private let fatal = Mutex<(any Error)?>(nil)

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
        let counts = try ledger.counts()
        progress.begin(phase: "verify", filesTotal: counts.totalFiles, bytesTotal: Int64(Double(counts.totalBytes) * rate))
        let chunkSize = try ledger.job()?.chunkSize ?? plan.copy.chunkSize
        if let at = try ledger.job()?.snapshotAt { snapshotTime = Int(at) }
        runThreads(plan.copy.concurrency, name: "ferry-verify") { [self] _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkSize), alignment: 4096)
            defer { buffer.deallocate() }
            let hasher = SHA256Hasher()
            do {
                while fatal.withLock({ $0 == nil }) {
                    let page: [ItemRecord] = try cursor.withLock { after in
                        let p = try ledger.items(states: [.pending, .done, .failed], after: after, limit: 64)
                        if let last = p.last { after = last.id }
                        return p
                    }
                    if page.isEmpty { break }
                    for item in page {
                        let content = item.entry.kind == .file && Sampling.isSelected(item.entry.path, round: round, rate: rate)
                        let problem = try check(item, content: content, buffer: buffer, hasher: hasher)
                        acc.withLock { a in
                            a.entries += 1
                            if item.entry.kind == .file && content && problem == nil {
                                a.files += 1
                                a.bytes += item.entry.size
                            }
                            if let problem {
                                a.mismatches += 1
                                if a.problems.count < Self.maxProblemsKept {
                                    a.problems.append(.init(path: item.entry.path, reason: problem))
                                    a.failures.append((item.id, item.entry.path, problem))
                                }
                            }
                        }
                        if item.entry.kind == .file { progress.add(files: 1, bytes: content ? item.entry.size : 0) }
                    }
                }
            } catch {
                fatal.withLock { if $0 == nil { $0 = error } }
            }
        }
        if let error = fatal.withLock({ $0 }) { throw error }
        // Entries the snapshot could not read are not at the destination: parity is not proven for them.
        for s in try ledger.skipped() {
            acc.withLock { a in
                a.mismatches += 1
                a.problems.append(.init(path: s.path, reason: "not copied: \(s.reason)"))
                a.failures.append((nil, s.path, "not copied: \(s.reason)"))
            }
        }
        let drift = try measureDrift()
        let finished = Date()
        let a = acc.withLock { $0 }
        let iso = ISO8601DateFormatter()
        let report = VerifyReport(
            job: plan.name, plan: plan.file, run: runID, round: round, mode: mode.rawValue, sample: rate,
            startedAt: iso.string(from: started), finishedAt: iso.string(from: finished),
            seconds: finished.timeIntervalSince(started), entries: a.entries, filesContentChecked: a.files,
            bytesChecked: a.bytes, filesCheckedByStoredHash: proof.withLock { $0.byHash },
            filesUnverified: proof.withLock { $0.unverified }, mismatches: a.mismatches,
            problems: a.problems.sorted { $0.path < $1.path }, problemsTruncated: a.mismatches > Int64(a.problems.count),
            drift: drift, ok: a.mismatches == 0)
        let reportPath = plan.stateDirectory + "/verify-\(runID).json"
        let data = try Self.encode(report)
        do {
            try data.write(to: URL(fileURLWithPath: reportPath), options: .atomic)
            try data.write(to: URL(fileURLWithPath: plan.stateDirectory + "/verify-latest.json"), options: .atomic)
        } catch {
            throw FerryError(.other, "cannot write the verify report \(reportPath)", cause: "\(error)")
        }
        try ledger.finishVerify(
            id: runID, filesChecked: a.files, bytesChecked: a.bytes, failures: a.failures.map { ($0.0, $0.1, $0.2) },
            mismatches: a.mismatches, drift: drift.total, ok: report.ok, reportPath: reportPath)
        return report
    }

    static func encode(_ report: VerifyReport) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        return try enc.encode(report)
    }

    /// Returns a problem description, or nil when the entry matches.
    private func check(
        _ item: ItemRecord, content: Bool, buffer: UnsafeMutableRawBufferPointer, hasher: SHA256Hasher
    ) throws -> String? {
        let e = item.entry
        switch item.state {
        case .pending: return "not copied yet"
        case .failed: return "not copied: \(item.error ?? "failed")"
        default: break
        }
        let posix = source.keepsPOSIXMetadata && destination.keepsPOSIXMetadata
        if !posix && e.kind == .directory { return nil }  // a bucket has no directories to compare
        let d: Entry?
        do {
            d = try destination.stat(e.path)
        } catch {
            return "cannot stat at the destination: \(error.operatorText)"
        }
        guard let d else { return "missing at the destination" }
        if d.kind != e.kind { return "is a \(d.kind.rawValue) at the destination, a \(e.kind.rawValue) at the source" }
        switch e.kind {
        case .symlink:
            if d.linkTarget != e.linkTarget {
                return "link target differs (source \(e.linkTarget ?? "?"), destination \(d.linkTarget ?? "?"))"
            }
            return nil
        case .directory:
            if d.mode != e.mode { return "mode differs (source \(octal(e.mode)), destination \(octal(d.mode)))" }
            return nil
        case .file:
            break
        }
        if let points = destination as? any PointComparing {
            // Metric files: the destination keeps live points, so parity is proven value by value.
            guard content else { return nil }
            do {
                return try points.comparePoints(
                    e.path, source: source, until: snapshotTime, window: plan.verify.window.map { Int($0) },
                    now: Int(Date().timeIntervalSince1970))
            } catch {
                return "cannot compare points: \(error.operatorText)"
            }
        }
        if d.size != e.size { return "size differs (source \(e.size), destination \(d.size))" }
        if posix && d.mode != e.mode { return "mode differs (source \(octal(e.mode)), destination \(octal(d.mode)))" }
        if posix && d.mtimeNs != e.mtimeNs { return "mtime differs" }
        if posix && geteuid() == 0 && (d.uid != e.uid || d.gid != e.gid) {
            return "owner differs (source \(e.uid):\(e.gid), destination \(d.uid):\(d.gid))"
        }
        guard content else {
            // Outside the sample: a hash stored beside the object still proves a single-chunk file.
            if let sums = destination as? any ChecksumProviding {
                let chunks = try ledger.chunks(of: item.id)
                if chunks.count == 1, let stored = try? sums.storedSHA256(e.path) {
                    if stored != chunks[0].sha256 { return "stored SHA-256 differs from the source's" }
                    proof.withLock { $0.byHash += 1 }
                    return nil
                }
                if chunks.count > 1, let (size, stored) = try? sums.storedChunkListSHA256(e.path),
                    size == chunks.sorted(by: { $0.index < $1.index })[0].length,
                    let want = SHA256Hasher.chunkListDigest(chunks.sorted { $0.index < $1.index }.map(\.sha256))
                {
                    if stored != want.hex { return "stored SHA-256 of the chunk list differs from the source's" }
                    proof.withLock { $0.byHash += 1 }
                    return nil
                }
            }
            if e.size > 0 { proof.withLock { $0.unverified += 1 } }
            return nil
        }
        let chunks = try ledger.chunks(of: item.id)
        if chunks.isEmpty && e.size > 0 && destination is any ServerSideCopying {
            return compareBothSides(e, buffer: buffer, hasher: hasher)
        }
        let planned = Int64(buffer.count)
        let itemChunk = (destination as? any ChunkSizing)?.chunkSize(forSize: e.size, planned: planned) ?? planned
        let layout = ChunkLayout.chunks(size: e.size, chunkSize: e.size <= planned ? planned : itemChunk)
        if chunks.count != layout.count { return "ledger holds \(chunks.count) of \(layout.count) chunk checksums" }
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

    private func octal(_ m: UInt32) -> String { "0" + String(m, radix: 8) }

    /// Re-walks the source (metadata only) and counts what changed since the snapshot.
    func measureDrift() throws -> VerifyReport.Drift {
        var drift = VerifyReport.Drift()
        var seenPresent: Int64 = 0
        func note(_ path: String) {
            if drift.examples.count < 20 { drift.examples.append(path) }
        }
        func visit(_ e: Entry) throws {
            guard let item = try ledger.item(path: e.path) else {
                drift.added += 1
                note(e.path)
                return
            }
            switch item.state {
            case .vanished, .deleted:
                drift.added += 1
                note(e.path)
            case .pending, .done, .failed:
                seenPresent += 1
                if e.changed(comparedTo: item.entry) || e.mode != item.entry.mode {
                    drift.changed += 1
                    note(e.path.isEmpty ? "." : e.path)
                }
            }
        }
        if let root = try source.stat("") { try visit(root) }
        try source.walk(visit, skipped: { _ in })
        let present = try ledger.countPresent()
        drift.deleted = max(0, present - seenPresent)
        drift.deleted += try ledger.countVanished()
        return drift
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
