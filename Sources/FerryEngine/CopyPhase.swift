import FerryCore
import FerryDigest
import Foundation
import Logging
import Synchronization

/// What a copy pass did.
public struct CopySummary: Sendable {
    public var filesCopied: Int64 = 0
    public var bytesCopied: Int64 = 0
    public var failed: Int64 = 0
    public var vanished: Int64 = 0
    public var requeued: Int64 = 0
    /// Files merged into existing destination objects (metric stores) and the values they gained.
    public var merged: Int64 = 0
    public var valuesMerged: Int64 = 0
    /// Files found already at the destination exactly as the copy would leave them (an interrupted run's): recorded
    /// without being written.
    public var filesFound: Int64 = 0
}

/// The copy phase: every pending manifest item is copied chunk by chunk, each chunk SHA-256'd as it is read.
///
/// Small files (one chunk) are written under a partial name and renamed into place; large files are written
/// into a partial file chunk by chunk, so a resumed run continues after the last recorded chunk. A copy thread
/// collects what it finished in a group of at most one chunk's bytes and hands it to the `GroupCommitter`, which
/// makes the groups of every thread durable with one `syncAll` and then records them in one ledger transaction,
/// while the threads go on copying (a chunk the store's sync does not cover is made durable by its writer
/// first). A file whose metadata changes while it is read is thrown away and copied again; one that keeps
/// changing is marked failed, never published half-copied.
final class CopyPhase: @unchecked Sendable {
    // @unchecked: the stores and ledger are Sendable; the only shared mutable state is behind Mutexes.
    let source: any Store
    let destination: any Store
    let ledger: Ledger
    let chunkSize: Int64
    let steering: Steering
    /// Paces local writes; nil when a store across a network paces its own wire bytes through it instead.
    let throttle: Throttle?
    let progress: ProgressTracker
    let logger: Logger
    /// The snapshot time: merges take source data up to here (later points belong to the live side).
    var snapshotTime: Int = Int(Date().timeIntervalSince1970)
    /// The job's tag in partial names: an item's token is `TAG.ID`.
    var partialTag = "0"
    func token(_ id: Int64) -> String { "\(partialTag).\(id)" }
    static let maxAttempts = 3
    /// How the ledger's error of a file that kept changing begins (a live mirror looks at such files again).
    static let keptChanging = "kept changing while copied"
    /// Small files per group, at most; a group also closes before it would hold more than `chunkSize` bytes, and
    /// once it has been open for `groupSeconds`.
    static let groupFiles = 5000
    static let groupSeconds = 0.5

    /// This process's name in the ledger's leases (`host:pid:random`).
    var worker = "local"
    /// How long a lease holds without renewal; renewed every third of it while this process works.
    var leaseTTL: Double = 30
    private let fatal: FatalError
    private let summary = Mutex(CopySummary())
    /// Records the copy threads' groups once durable; set while `copyFiles` runs.
    private var committer: GroupCommitter?
    /// Reads back the files this phase records, for the full verify that follows in the same run (started and
    /// stopped by the job, so that it goes on while the job finishes and verify lists both sides).
    var readingBack: ContentReadBack?

    init(
        source: any Store, destination: any Store, ledger: Ledger, chunkSize: Int64, steering: Steering,
        progress: ProgressTracker, logger: Logger
    ) {
        self.source = source
        self.destination = destination
        self.ledger = ledger
        self.chunkSize = chunkSize
        self.steering = steering
        self.progress = progress
        self.logger = logger
        // A store across a network paces its own wire bytes (compressed); otherwise the logical bytes are paced.
        // The rate is the one in force (the plan's timetable, or `ferry ctl throttle`), looked up as the bytes go.
        let fatal = FatalError()
        self.fatal = fatal
        let limit = Throttle(steering: steering) { fatal.halted }
        let paced = [source, destination].compactMap { $0 as? any WirePacing }
        for store in paced { store.pace { limit.acquire($0) } }
        self.throttle = paced.isEmpty ? limit : nil
    }

    var stopped: Bool { fatal.halted }

    func stop(_ error: any Error) {
        fatal.set(error)
    }

    /// The whole copy in one process: the files, then what comes after them.
    func run() throws -> CopySummary {
        _ = try copyFiles()
        try finish()
        return summary.withLock { $0 }
    }

    /// Copies pending files until none is left to lease (other workers may still hold some). The leases are
    /// renewed by a thread of their own while the copy threads work, and given back if this run stops early.
    func copyFiles() throws -> CopySummary {
        try destinationCall("create the destination root") { try destination.prepareRoot() }
        let counts = try ledger.counts()
        progress.begin(
            phase: "copy", filesTotal: counts.totalFiles, bytesTotal: counts.totalBytes,
            filesDone: counts.files[ItemState.done.rawValue] ?? 0, bytesDone: counts.doneBytes)
        let finished = DispatchSemaphore(value: 0)
        let renewer = Thread { [self] in
            while finished.wait(timeout: .now() + leaseTTL / 3) == .timedOut {
                do {
                    try ledger.renew(worker: worker, ttl: leaseTTL, now: Date().timeIntervalSince1970)
                } catch {
                    logger.warning("renewing this worker's leases failed: \(error)")
                }
            }
        }
        renewer.name = "ferry-lease-renew"
        renewer.start()
        // Where a resumed run finds what a lost round held (a local tree: its files at the destination, its chunks
        // in the partial files), a round gathers at least `roundBytes` (or what waited 0.25 s): each sync of a
        // filesystem flushes its journal and the disk's cache, so fewer, larger rounds write back faster. At
        // 256 MiB the 0.25 s usually ends a round first on a local disk (fs-copy, mixed 2 GiB tree: 64 MiB rounds
        // 4.7-5.6 s, 256 MiB 3.6-3.9 s, 1 GiB no better).
        // Elsewhere (a bucket, a remote store) what a lost round held is sent again, so a round starts at once and
        // at most one chunk per planned thread waits: a kill costs the chunks in flight, as it always did.
        let recoverable = destination is any ExistingCopyFinding && destination is any PartialsKept
        let perThreads = chunkSize * Int64(steering.planConcurrency)
        let roundBytes = recoverable ? max(perThreads, 256 << 20) : 0
        let committer = GroupCommitter(
            budget: recoverable ? 2 * roundBytes : perThreads, roundBytes: roundBytes, roundSeconds: recoverable ? 0.25 : 0
        ) { [self] in try record($0) }
        self.committer = committer
        committer.start()
        // Threads beyond the concurrency in force wait parked, so `ferry ctl concurrency` can raise it live.
        steering.beginCopy()
        runThreads(max(steering.planConcurrency, Steering.maxConcurrency), name: "ferry-copy") { [self] in copyWorker($0) }
        do { try committer.flush() } catch { stop(error) }
        committer.close()
        self.committer = nil
        finished.signal()
        if let error = fatal.error {
            try? ledger.release(worker: worker)
            throw error
        }
        if Interruption.requested {
            try? ledger.release(worker: worker)
            throw FerryError(.other, "interrupted; what was committed is kept: run `ferry run` again to resume")
        }
        return summary.withLock { $0 }
    }

    /// What comes once every file is copied (by any worker): links, specials, directories' metadata. A singleton
    /// step: the job runs it under its coordinator.
    func finish() throws {
        try copySymlinks()
        try copyLinksAndSpecials()
        try finishDirectories()
    }

    /// Leases the next page of pending files. Pages are large enough that workers mostly create files in
    /// different directories (less directory-lock contention), up to 128 files, and small enough near the end
    /// (a quarter of the pending files per copy thread) that a worker joining the job still finds work.
    private func claim() throws -> [ItemRecord] {
        // The pending count is taken once per copy and then estimated (it only shapes page sizes): counting
        // before every page cost a scan of the state index per 128 files.
        let limit = try remaining.withLock { left in
            if left < 0 { left = try ledger.pendingFiles() }
            return max(1, min(128, left / (4 * steering.effectiveConcurrency)))
        }
        let page = try ledger.lease(
            limit: limit, maxBytes: Self.pageChunks * chunkSize, worker: worker, ttl: leaseTTL, now: Date().timeIntervalSince1970)
        remaining.withLock { $0 = page.isEmpty ? -1 : max(0, $0 - page.count) }
        return page
    }

    /// A page holds at most this many chunks' bytes (and at least one file): the large files of a tree, listed
    /// side by side, are copied by different threads (all four of the fs-copy trees' went to one thread, which
    /// then copied half the bytes alone while the others ran out of work).
    static let pageChunks: Int64 = 16

    /// Pending files not yet leased by this run, estimated; -1 until counted.
    private let remaining = Mutex<Int>(-1)

    // MARK: - worker

    typealias Group = CommitGroup

    /// Copy thread `index`: page after page while it is within the concurrency in force; its buffer is
    /// allocated when it first works.
    private func copyWorker(_ index: Int) {
        var buffer: UnsafeMutableRawBufferPointer?
        defer { buffer?.deallocate() }
        let hasher = SHA256Hasher()
        var group = Group()
        let halted: () -> Bool = { [self] in stopped }
        do {
            while steering.enter(index, halted) {
                // Counted as running for this page only: left on every way out of it (a throw included).
                var noneLeft = false
                defer { steering.leave(drained: noneLeft) }
                let page = try claim()
                if page.isEmpty {
                    noneLeft = true
                    break
                }
                let chunkBuffer =
                    buffer ?? UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkSize), alignment: 4096)
                buffer = chunkBuffer
                let absent = try absentMergeTargets(page)
                for item in page {
                    steering.holdWhilePaused(halted)
                    if stopped { break }
                    try copyFile(item, buffer: chunkBuffer, hasher: hasher, group: &group, absent: absent.contains(item.id))
                    if group.done.count + group.puts.count >= Self.groupFiles || openTooLong(group) { try hand(&group) }
                }
                // A thread that parks for a lower concurrency hands over what it copied first.
                if index >= steering.effectiveConcurrency { try hand(&group) }
            }
            try hand(&group)
        } catch {
            stop(error)
            // What was written is complete: record it if the destination still takes a sync.
            try? hand(&group)
            try? committer?.flush()
        }
    }

    private func openTooLong(_ group: Group) -> Bool {
        group.openedAt > 0 && Double(DispatchTime.now().uptimeNanoseconds - group.openedAt) / 1e9 >= Self.groupSeconds
    }

    /// Hands the group to the committer (it is recorded once durable) and starts a new one. Its small files not
    /// sent yet are sent first, in one round trip.
    private func hand(_ group: inout Group, startRound: Bool = false) throws {
        try sendPuts(&group)
        let full = group
        group = Group()
        guard let committer else { return try record([full]) }
        try committer.submit(full, startRound: startRound)
    }

    /// Sends the group's waiting small files to a destination that takes several at once. Each published one
    /// joins the group's done files; one refused for its path is refused alone; any other failure stops the run,
    /// after the published ones joined the group (they are recorded once durable, as always).
    private func sendPuts(_ group: inout Group) throws {
        guard !group.puts.isEmpty, let batcher = destination as? any ObjectBatching else { return }
        let puts = group.puts
        group.puts = []
        group.putBytes = 0
        let answers = try destinationCall("publish") { try batcher.putEach(puts.map(\.object)) }
        var stop: (any Error)?
        for (put, failure) in zip(puts, answers) {
            guard let failure else {
                published(put.id, put.object.entry, chunks: put.chunks, in: &group)
                continue
            }
            if let e = failure as? FerryError, e.code == .unsafePath {
                try refuse(id: put.id, path: put.object.entry.path, e)
            } else if stop == nil {
                stop = failure
            }
        }
        if let stop { try destinationCall("publish") { throw stop } }
    }

    /// Makes room for `bytes` more in the group: hands it over first when they would take it past a chunk.
    private func makeRoom(_ bytes: Int64, in group: inout Group) throws {
        if group.bytes > 0 && group.bytes + bytes > chunkSize { try hand(&group) }
    }

    /// Makes the groups durable with one sync, then records them in one transaction (the committer's round).
    private func record(_ groups: [Group]) throws {
        let done = groups.flatMap(\.done)
        let partial = groups.flatMap(\.partialChunks)
        guard !done.isEmpty || !partial.isEmpty else { return }
        try destinationCall("sync") { try destination.syncAll() }
        let lost = Set(try ledger.commit(done, partialChunks: partial, worker: worker))
        // A file of a hard-link group written anew is a new inode at the destination: the names linked to the
        // one it replaced (a live mirror may have linked them before this copy) are linked again.
        try ledger.requeueHardLinks(to: groups.flatMap(\.rewritten))
        if !lost.isEmpty {
            // This worker's lease expired and another took the files over: its commit counts, not this one.
            logger.warning("\(lost.count) files were taken over by another worker after this one's lease expired; its copies count")
        }
        let copied = done.map(\.id).filter { !lost.contains($0) }
        summary.withLock { $0.filesCopied += Int64(copied.count) }
        readingBack?.offer(copied)
    }

    /// A large file's attempt ends without publishing: its chunks not yet recorded are dropped from the group
    /// (the partial file is thrown away), and those handed over are recorded first, so that the requeue that
    /// follows clears every chunk row of this attempt.
    private func abandon(_ id: Int64, group: inout Group) throws {
        let before = group.partialChunks.count
        group.partialChunks.removeAll { $0.id == id }
        if group.partialChunks.count != before && group.isEmpty { group = Group() }
        try committer?.flush()
    }

    /// The page's files that a merging destination on another host does not hold, asked in one round trip
    /// (instead of one per file before its merge). They are copied whole; one that a live daemon creates
    /// meanwhile is not replaced: the far side's publish merges into it (`LocalStore.onExisting`).
    ///
    /// Pages are leased in id order and shrink towards the end of a copy, so the far side is asked about a window
    /// of the next `existenceWindow` pending files at once, and the pages within it are answered from that (a
    /// tree of 400 files took 120 round trips one page at a time). What the window holds is bounded, never the
    /// tree. An answer that is out of date by the time a file is copied is safe either way: a file absent then
    /// and created meanwhile is merged into by the far side's publish, and one present then and gone meanwhile
    /// is copied whole by the merge.
    private func absentMergeTargets(_ page: [ItemRecord]) throws -> Set<Int64> {
        guard destination is any Merging, let batcher = destination as? any Batching, let first = page.map(\.id).min(),
            let last = page.map(\.id).max()
        else { return [] }
        return try existence.withLock { window in
            if !(window.from <= first && last <= window.through) {
                let ahead = try ledger.items(states: [.pending], kind: .file, after: first - 1, limit: Self.existenceWindow)
                let found = try destinationCall("stat") { try batcher.exist(ahead.map(\.entry.path)) }
                window.from = first
                // A short answer asked about every pending file from here on: it covers every later page.
                window.through = ahead.count < Self.existenceWindow ? Int64.max : max(last, ahead.last?.id ?? last)
                window.absent = Set(zip(ahead, found).compactMap { item, r in (try? r.get()) == false ? item.id : nil })
            }
            return Set(page.map(\.id).filter { window.absent.contains($0) })
        }
    }

    /// How many pending files one existence request asks about, at most.
    static let existenceWindow = 1024
    private let existence = Mutex<(from: Int64, through: Int64, absent: Set<Int64>)>((0, -1, []))

    /// Copies one file; source problems mark the item, destination problems throw (they stop the run).
    /// `absent`: the destination was just seen not to hold it (nothing to merge into).
    private func copyFile(
        _ item: ItemRecord, buffer: UnsafeMutableRawBufferPointer, hasher: SHA256Hasher, group: inout Group, absent: Bool = false
    ) throws {
        if !absent, let merger = destination as? any Merging, try merge(item, merger, group: &group) { return }
        if let server = destination as? any ServerSideCopying, item.entry.size > 0,
            try destinationCall("server-side copy", { try server.copyServerSide(item.entry, from: source) })
        {
            // No bytes through ferry and no chunk hashes: verify proves it by reading both sides.
            group.done.append((item.id, [], nil))
            group.note(bytes: 0)
            progress.add(files: 1, bytes: item.entry.size)
            summary.withLock { $0.bytesCopied += item.entry.size }
            return
        }
        var attempts = 0
        var entry = item.entry
        while true {
            attempts += 1
            let outcome: Outcome
            do {
                outcome = try attempt(item.id, &entry, buffer: buffer, hasher: hasher, group: &group)
            } catch let e as FerryError where e.code == .unsafePath {
                // This one entry cannot be placed at the destination (a file stands where its directory would
                // go): it is refused alone, and the rest is copied.
                try refuse(item, e)
                return
            }
            switch outcome {
            case .copied, .interrupted:
                return
            case .vanished:
                try? destination.discardPartial(for: entry.path, token: token(item.id))
                try ledger.setState([item.id], .vanished, error: "vanished from the source during the copy")
                summary.withLock { $0.vanished += 1 }
                logger.info("vanished during copy", metadata: ["path": "\(RawName.display(entry.path))"])
                return
            case .unreadable(let why):
                try ledger.fail(item.id, error: why)
                summary.withLock { $0.failed += 1 }
                progress.addFailed()
                logger.warning("cannot read source file", metadata: ["path": "\(RawName.display(entry.path))", "error": "\(why)"])
                return
            case .changed(let now):
                summary.withLock { $0.requeued += 1 }
                logger.info("source changed while copied; copying again", metadata: ["path": "\(RawName.display(entry.path))"])
                if attempts >= Self.maxAttempts {
                    try ledger.requeue(item.id, entry: now, countAttempt: true)
                    try ledger.fail(
                        item.id,
                        error: "\(Self.keptChanging) (\(attempts) attempts); run `ferry run --catch-up` when it is quiet")
                    summary.withLock { $0.failed += 1 }
                    progress.addFailed()
                    return
                }
                try ledger.requeue(item.id, entry: now, countAttempt: true)
                entry = now
            }
        }
    }

    /// Marks an entry that the destination cannot hold as failed with the destination's reason.
    private func refuse(_ item: ItemRecord, _ e: FerryError) throws { try refuse(id: item.id, path: item.entry.path, e) }

    private func refuse(id: Int64, path: String, _ e: FerryError) throws {
        try ledger.fail(id, error: "refused by the destination: \(e.message)")
        summary.withLock { $0.failed += 1 }
        progress.addFailed()
        logger.warning("refused by the destination", metadata: ["path": "\(RawName.display(path))", "reason": "\(e.message)"])
    }

    /// Merges into an existing destination object; false when there is none (the file is copied whole).
    private func merge(_ item: ItemRecord, _ merger: any Merging, group: inout Group) throws -> Bool {
        let merged: Int?
        do {
            merged = try merger.merge(
                item.entry.path, from: source, until: snapshotTime, now: Int(Date().timeIntervalSince1970))
        } catch {
            if error.isNoSpace { throw FerryError(.destinationFull, "the destination is full", cause: error.operatorText) }
            // A corrupt or unreadable file is reported and left untouched; the job goes on.
            try ledger.fail(item.id, error: "merge failed, destination left untouched: \(error.operatorText)")
            summary.withLock { $0.failed += 1 }
            progress.addFailed()
            return true
        }
        guard let merged else { return false }
        group.done.append((item.id, [], nil))
        group.note(bytes: 0)
        progress.add(files: 1, bytes: item.entry.size)
        summary.withLock {
            $0.merged += 1
            $0.valuesMerged += Int64(merged)
        }
        return true
    }

    enum Outcome {
        case copied
        case vanished
        case unreadable(String)
        case changed(Entry)
        /// The run is stopping; committed chunks stay for the resume.
        case interrupted
    }

    enum ReadResult {
        case success(Int)
        case failure(String)
    }

    private func attempt(
        _ id: Int64, _ entry: inout Entry, buffer: UnsafeMutableRawBufferPointer, hasher: SHA256Hasher, group: inout Group
    ) throws -> Outcome {
        let reader: any ObjectReader
        do {
            guard let r = try source.openReader(entry.path) else { return .vanished }
            reader = r
        } catch {
            return .unreadable(error.operatorText)
        }
        defer { reader.close() }
        let opened: Entry
        do {
            opened = try reader.currentEntry()
        } catch {
            return .unreadable(error.operatorText)
        }
        guard opened.kind == .file else { return .unreadable("is no longer a regular file; run `ferry run --catch-up`") }
        // The ledger does not keep link counts: whether the file has other names (`rewritten`) is asked of it now.
        entry.links = opened.links
        if opened.changed(comparedTo: entry) || opened.mode != entry.mode {
            // Changed after the snapshot, before its copy started: copy what is there now and record that.
            var now = opened
            now.path = entry.path
            try ledger.requeue(id, entry: now)
            entry = now
        }
        if entry.size <= chunkSize {
            return try copySmall(id, entry, reader: reader, buffer: buffer, hasher: hasher, group: &group)
        }
        return try copyLarge(id, entry, reader: reader, buffer: buffer, hasher: hasher, group: &group)
    }

    static func write(_ writer: any ObjectWriter, _ data: UnsafeRawBufferPointer, at offset: Int64, digest: String) throws {
        if let w = writer as? any DigestAwareWriter {
            try w.write(data, at: offset, sha256Hex: digest)
        } else {
            try writer.write(data, at: offset)
        }
    }

    /// Hands the source object's metadata (and where its point arrays are) to the destination writer when both
    /// sides keep it; the reason when the source cannot tell it.
    private func carryMetadata(_ reader: any ObjectReader, _ writer: any ObjectWriter) -> String? {
        if let to = writer as? any PointLayoutAccepting, let from = source as? any PointLayoutProviding {
            // Where the point arrays are, for the codec on the wire (nothing when the source cannot tell).
            to.accept(pointRuns: from.pointRuns(reader))
        }
        guard let from = reader as? any MetadataCarrying, let to = writer as? any MetadataAccepting else { return nil }
        do {
            to.accept(metadata: try from.carriedMetadata())
            return nil
        } catch {
            return error.operatorText
        }
    }

    private func read(_ reader: any ObjectReader, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) -> ReadResult {
        do {
            return .success(try reader.read(into: buffer, at: offset))
        } catch {
            return .failure(error.operatorText)
        }
    }

    private func changedSince(_ entry: Entry, _ reader: any ObjectReader) -> Entry? {
        guard var now = try? reader.currentEntry() else { return nil }
        now.path = entry.path
        return now.changed(comparedTo: entry) ? now : nil
    }

    private func copySmall(
        _ id: Int64, _ entry: Entry, reader: any ObjectReader, buffer: UnsafeMutableRawBufferPointer,
        hasher: SHA256Hasher, group: inout Group
    ) throws -> Outcome {
        let size = Int(entry.size)
        // Read one byte more than expected: a file that grew is a changed file.
        let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(size + 1, buffer.count)])
        let n: Int
        switch read(reader, into: window, at: 0) {
        case .success(let count): n = count
        case .failure(let why): return .unreadable(why)
        }
        if let now = changedSince(entry, reader) { return .changed(now) }
        if n != size {
            var now = entry
            now.size = Int64(n)
            return .changed(now)
        }
        let data = UnsafeRawBufferPointer(rebasing: buffer[0..<size])
        hasher.update(data)
        let digest = hasher.finish()
        let token = token(id)
        let batcher = reader is any MetadataCarrying ? nil : destination as? any ObjectBatching
        if batcher == nil { try makeRoom(Int64(size), in: &group) }
        let chunks = size > 0 ? [ChunkRecord(index: 0, offset: 0, length: Int64(size), sha256: digest.hex)] : []
        if !(reader is any MetadataCarrying), try alreadyThere(entry, buffer: buffer) {
            // Recorded with the group, after the sync that makes it durable; nothing is written.
            group.done.append((id, chunks, nil))
            group.note(bytes: Int64(size))
            progress.add(files: 1, bytes: Int64(size))
            summary.withLock { $0.filesFound += 1 }
            return .copied
        }
        if let batcher {
            // Encoded now and sent with the group's other small files, in one round trip, before it is handed over.
            // A group holds a chunk of files and of what travels, as any group does. (Four chunks of files per
            // group made fewer requests but burstier ones: 5-8% slower on scripts/bench/remote-whisper.)
            let runs = (source as? any PointLayoutProviding)?.pointRuns(reader) ?? []
            throttle?.acquire(size)
            let object = batcher.encodeWhole(entry, token: token, bytes: data, sha256Hex: digest.hex, pointRuns: runs)
            if !group.isEmpty && (group.putBytes + Int64(object.body.count) > chunkSize || group.bytes + Int64(size) > chunkSize) {
                try hand(&group)
            }
            group.puts.append((id, chunks, object))
            group.putBytes += Int64(object.body.count)
            group.note(bytes: Int64(size))
            return .copied
        }
        guard let writer = try destinationCall("create", { try destination.openWriter(for: entry, token: token, resume: false) })
        else { throw FerryError(.destinationIO, "cannot create \(entry.path) at the destination") }
        if let why = carryMetadata(reader, writer) { return .unreadable(why) }
        if size > 0 {
            throttle?.acquire(size)
            try destinationCall("write") { try Self.write(writer, data, at: 0, digest: digest.hex) }
        }
        try destinationCall("publish") { try writer.publish(entry) }
        group.note(bytes: Int64(size))
        published(id, entry, chunks: chunks, in: &group)
        return .copied
    }

    /// A small file published whole (alone, or with others in one request): done with its group, counted.
    private func published(_ id: Int64, _ entry: Entry, chunks: [ChunkRecord], in group: inout Group) {
        if entry.links > 1 { group.rewritten.append(entry.path) }
        group.done.append((id, chunks, nil))
        progress.add(files: 1, bytes: entry.size)
        summary.withLock { $0.bytesCopied += entry.size }
    }

    /// Whether the destination already holds exactly this file (metadata as publishing would leave it, and the
    /// bytes the source's, which are in `buffer`): what an interrupted run published and did not record is then
    /// recorded without being written again. Compared in the buffer's unused half; a file too big for it is
    /// written as usual. Not asked for a source that carries metadata of its own (a bucket's mtime header): what
    /// publishing would leave then is not the entry's metadata.
    private func alreadyThere(_ entry: Entry, buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        let size = Int(entry.size)
        guard let finder = destination as? any ExistingCopyFinding, 2 * size + 1 <= buffer.count,
            let existing = try? finder.identicalCandidate(for: entry)
        else { return false }
        defer { existing.close() }
        // One byte more than expected: a file that grew since it was looked at is not this one.
        let theirs = UnsafeMutableRawBufferPointer(rebasing: buffer[size..<(2 * size + 1)])
        guard (try? existing.read(into: theirs, at: 0)) == size else { return false }
        return size == 0 || memcmp(buffer.baseAddress!, theirs.baseAddress!, size) == 0
    }

    /// Whether the partial file already holds `data` at `offset` (an interrupted run wrote it and was killed
    /// before recording it). `scratch` is allocated on first use, a chunk for this file.
    private func sameAsKept(
        _ data: UnsafeRawBufferPointer, at offset: Int64, in kept: any PartialReading, scratch: inout ChunkBuffer?, size: Int64
    ) throws -> Bool {
        let buffer = scratch ?? ChunkBuffer(UnsafeMutableRawBufferPointer(start: nil, count: 0), atLeast: size)
        scratch = buffer
        let window = UnsafeMutableRawBufferPointer(rebasing: buffer.buffer[0..<data.count])
        let n = try destinationCall("read the partial file") { try kept.readPartial(into: window, at: offset) }
        return n == data.count && memcmp(window.baseAddress!, data.baseAddress!, data.count) == 0
    }

    private func copyLarge(
        _ id: Int64, _ entry: Entry, reader: any ObjectReader, buffer: UnsafeMutableRawBufferPointer,
        hasher: SHA256Hasher, group: inout Group
    ) throws -> Outcome {
        let token = token(id)
        let itemChunk = (destination as? any ChunkSizing)?.chunkSize(forSize: entry.size, planned: chunkSize) ?? chunkSize
        let layout = ChunkLayout.chunks(size: entry.size, chunkSize: itemChunk)
        let chunkBuffer = ChunkBuffer(buffer, atLeast: itemChunk)
        defer { withExtendedLifetime(chunkBuffer) {} }  // the buffer lives as long as this function uses it
        let buffer = chunkBuffer.buffer
        var committed = Dictionary(uniqueKeysWithValues: try ledger.chunks(of: id).map { ($0.index, $0) })
        // Committed chunks must match this layout; anything else is stale and starts over.
        if committed.values.contains(where: { c in
            c.index >= layout.count || layout[c.index].offset != c.offset || layout[c.index].length != c.length
        }) {
            try ledger.requeue(id)
            committed = [:]
        }
        // A partial file kept by a store that keeps them is reopened even with no chunk recorded: what it holds
        // beyond the recorded chunks is compared with the source, not written again.
        let keepsPartials = destination is any PartialsKept
        var writer = try destinationCall("open partial") {
            try destination.openWriter(for: entry, token: token, resume: keepsPartials || !committed.isEmpty)
        }
        if writer == nil {
            if !committed.isEmpty {
                logger.info(
                    "partial file missing at the destination; starting the file over", metadata: ["path": "\(RawName.display(entry.path))"])
                try ledger.requeue(id)
                committed = [:]
            }
            writer = try destinationCall("create") { try destination.openWriter(for: entry, token: token, resume: false) }
        }
        guard let writer else { throw FerryError(.destinationIO, "cannot create \(entry.path) at the destination") }
        if let why = carryMetadata(reader, writer) { return .unreadable(why) }
        var sentThisAttempt: Int64 = 0
        let alreadyDone = committed.values.reduce(Int64(0)) { $0 + $1.length }
        if alreadyDone > 0 {
            logger.info(
                "resuming file after committed chunks",
                metadata: ["path": "\(RawName.display(entry.path))", "committed": "\(committed.count)/\(layout.count)"])
        }
        // Every chunk's digest, for a writer that sends the list at publish (recorded ones and this attempt's).
        var digests = committed.mapValues(\.sha256)
        // A chunk the destination's sync covers waits for the next group sync; any other is made durable by its
        // writer before it goes in the group.
        let covered = writer as? any SyncCoveredWriter
        // What an interrupted run wrote past the recorded chunks, read back into a second buffer (while this file
        // is copied) and compared with the source.
        let kept = writer as? any PartialReading
        // Chunks of this file handed over and not yet recorded; a writer whose partial cannot be read back keeps
        // at most two, since a resumed run would send them again.
        var unrecorded = 0
        var compareBuffer: ChunkBuffer?
        defer { withExtendedLifetime(compareBuffer) {} }
        for chunk in layout where committed[chunk.index] == nil {
            if stopped { return .interrupted }
            let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(chunk.length)])
            let n: Int
            switch read(reader, into: window, at: chunk.offset) {
            case .success(let count): n = count
            case .failure(let why):
                writer.discard()
                try abandon(id, group: &group)
                try ledger.requeue(id)
                progress.retract(bytes: sentThisAttempt)
                return .unreadable(why)
            }
            if n != Int(chunk.length) {
                writer.discard()
                try abandon(id, group: &group)
                progress.retract(bytes: sentThisAttempt)
                var now = changedSince(entry, reader) ?? entry
                if now.size == entry.size { now.size = chunk.offset + Int64(n) }
                return .changed(now)
            }
            let data = UnsafeRawBufferPointer(window)
            hasher.update(data)
            let digest = hasher.finish()
            try makeRoom(chunk.length, in: &group)
            if kept == nil && unrecorded >= 2 {
                try hand(&group)
                try committer?.flush()
                unrecorded = 0
            }
            if let kept, chunk.offset + chunk.length <= kept.keptBytes,
                try sameAsKept(data, at: chunk.offset, in: kept, scratch: &compareBuffer, size: itemChunk)
            {
                // Already in the partial file: recorded after the group's sync, not written again.
            } else {
                throttle?.acquire(n)
                try destinationCall("write") { try Self.write(writer, data, at: chunk.offset, digest: digest.hex) }
            }
            if let covered {
                covered.startWriteback(offset: chunk.offset, length: chunk.length)
            } else {
                try destinationCall("fdatasync") { try writer.makeDurable() }
            }
            let record = ChunkRecord(index: chunk.index, offset: chunk.offset, length: chunk.length, sha256: digest.hex)
            group.partialChunks.append((id, record))
            group.note(bytes: chunk.length)
            unrecorded += 1
            digests[chunk.index] = digest.hex
            sentThisAttempt += chunk.length
            progress.add(bytes: chunk.length)
            progress.addChunk()
            summary.withLock { $0.bytesCopied += chunk.length }
        }
        if let now = changedSince(entry, reader) {
            writer.discard()
            try abandon(id, group: &group)
            progress.retract(bytes: sentThisAttempt + alreadyDone)
            return .changed(now)
        }
        if let w = writer as? any DigestAwareWriter {
            w.accept(chunkDigests: layout.map { digests[$0.index] ?? "" })
        }
        try destinationCall("publish") { try writer.publish(entry) }
        if entry.links > 1 { group.rewritten.append(entry.path) }
        progress.add(files: 1)
        // Recorded by a round that starts now, not with a later group: a kill before it would find the partial
        // file gone and copy the whole file again. This thread goes on meanwhile (waiting for the round, a sync of
        // everything the other threads wrote too, left it idle and kept the window just as long).
        group.done.append((id, [], nil))
        try hand(&group, startRound: true)
        return .copied
    }

    /// Wraps destination calls so a full disk becomes one clear error.
    private func destinationCall<T>(_ what: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as FerryError {
            throw e
        } catch {
            if error.isNoSpace {
                throw FerryError(
                    .destinationFull,
                    "the destination \(destination.displayName) is full (\(what) failed); free space and run `ferry run` again to resume",
                    cause: error.operatorText)
            }
            throw FerryError(.destinationIO, "writing to the destination failed (\(what))", cause: error.operatorText)
        }
    }

    // MARK: - links and directories

    /// Creates the pending entries of `kinds` (no content to copy) with `make`, committing them in groups of
    /// 1,000 after a sync. An entry the destination cannot place (`refusable` codes) is refused alone.
    private func placeInGroups(
        _ kinds: [EntryKind], refusable: Set<FerryError.Code> = [.unsafePath], _ make: (ItemRecord) throws -> Void
    ) throws {
        var ids: [Int64] = []
        func flush() throws {
            guard !ids.isEmpty else { return }
            try destinationCall("sync") { try destination.syncAll() }
            try ledger.setState(ids, .done)
            ids.removeAll()
        }
        for kind in kinds {
            try ledger.forEachItem(states: [.pending], kind: kind) { item in
                do {
                    try make(item)
                } catch let e as FerryError where refusable.contains(e.code) {
                    try refuse(item, e)
                    return
                }
                ids.append(item.id)
                if ids.count >= 1000 { try flush() }
            }
        }
        try flush()
    }

    private func copySymlinks() throws {
        try placeInGroups([.symlink]) { item in
            try destinationCall("symlink") { try destination.makeSymlink(item.entry) }
        }
    }

    /// Second names of files (hard links, after every file is in place) and special files. A second name whose
    /// first one is not at the destination is refused.
    private func copyLinksAndSpecials() throws {
        if let links = destination as? any HardLinking {
            try placeInGroups([.hardlink], refusable: [.unsafePath, .destinationIO]) { item in
                try destinationCall("link") { try links.makeHardLink(item.entry) }
            }
        }
        if let maker = destination as? any SpecialMaking {
            try placeInGroups([.fifo, .socket, .charDevice, .blockDevice], refusable: [.unsafePath, .destinationIO]) { item in
                try destinationCall("mknod") { try maker.makeSpecial(item.entry) }
            }
        }
    }

    /// Creates every directory (including empty ones) and applies its mode and mtime, deepest first, after the
    /// files inside it are written (writing a file changes its directory's mtime).
    /// A store on another host takes them in batches (one round trip per 512 directories), in the same order.
    private func finishDirectories() throws {
        var ids: [Int64] = []
        var waiting: [ItemRecord] = []
        func placed(_ item: ItemRecord, _ error: (any Error)?) throws {
            if let e = error as? FerryError, e.code == .unsafePath { return try refuse(item, e) }
            if let error { try destinationCall("directory") { throw error } }
            if item.state == .pending { ids.append(item.id) }
        }
        func placeWaiting() throws {
            guard let batcher = destination as? any Batching, !waiting.isEmpty else { return }
            let errors = try destinationCall("mkdir") { try batcher.placeDirectories(waiting.map(\.entry)) }
            for (item, error) in zip(waiting, errors) { try placed(item, error) }
            waiting.removeAll(keepingCapacity: true)
        }
        try ledger.forEachDirectoryDeepestFirst { item in
            if destination is any Batching {
                waiting.append(item)
                if waiting.count >= 512 { try placeWaiting() }
                return
            }
            var failure: (any Error)?
            do {
                try destinationCall("mkdir") { try destination.makeDirectory(item.entry) }
                try destinationCall("directory metadata") { try destination.finishDirectory(item.entry) }
            } catch {
                failure = error
            }
            try placed(item, failure)
        }
        try placeWaiting()
        try destinationCall("sync") { try destination.syncAll() }
        try ledger.setState(ids, .done)
    }
}
