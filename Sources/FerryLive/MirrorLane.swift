import FerryCore
import FerryEngine
import FerryTap
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One direction of a live tree's mirror: a watcher on one tree, the journal its changes go into first, and a
/// thread that applies the journal to the other side through a job's copy. The fs-journal tap has one lane from
/// the source tree to the destination (`new`), and for an fs → fs move a second one back (`old`), which runs in
/// `reverse` mode: the rollback window.
final class MirrorLane: @unchecked Sendable {
    // @unchecked: mutable state is behind `state`; the journal and watcher are thread-safe; `watcher` and
    // `thread` are set by `start` and read by `stop`, which the tap calls in turn, never at once.
    /// The upstream this lane feeds, as the status names it (`new` or `old`).
    let side: String
    /// The tree watched.
    let root: String
    let directory: String
    let backend: WatchBackend
    let logger: Logger
    let makeJob: @Sendable () throws -> Job
    /// Whether the tap's mode lets this lane apply its journal now.
    let active: @Sendable () -> Bool
    /// Whether what the watcher sees is journaled now (a reverse lane journals from the cutover on: before it, the
    /// only writer of its tree is the forward mirror).
    let journaling: @Sendable () -> Bool
    /// Run (once) before the first application when the job has no ready ledger yet; nil: wait for the job to
    /// become ready (the initial copy and verify).
    let prepare: (@Sendable (Job) throws -> Void)?
    let journal: Journal
    private var watcher: (any TreeWatching)?
    private var thread: Thread?

    struct State {
        var cursor: UInt64 = 0
        var running = false
        var received: UInt64 = 0
        var applied: UInt64 = 0
        var lastError: String?
        var connected = true
        var waitingForReady = true
        /// Entries the ledger holds as not settled (pending, failed, vanished) after the last application.
        var unsettled: Int64 = 0
        /// A change could not be journaled: the whole tree is rescanned before the mirror counts as caught up.
        /// (A count: a failure during a rescan still owes the next one.)
        var rescanOwed = 0
        /// How many times events were lost (each journals a rescan).
        var lost: UInt64 = 0
        /// Fence files the watcher reported, with the journal offset just past their record.
        var fenceSeen: [String: UInt64] = [:]
        /// Records after the cursor: counted at start, then one more per record journaled and one less per
        /// record applied.
        var pending: UInt64 = 0
    }
    let state = Mutex(State())

    let cursorName: String
    var cursorFile: String { directory + "/" + cursorName }
    /// Present while the lane runs; found at start, it says the last run did not stop cleanly.
    var runningMarker: String { directory + "/running" }

    init(
        side: String, root: String, directory: String, cursorName: String, backend: WatchBackend, fsync: FsyncPolicy, logger: Logger,
        makeJob: @escaping @Sendable () throws -> Job, active: @escaping @Sendable () -> Bool,
        journaling: @escaping @Sendable () -> Bool = { true }, prepare: (@Sendable (Job) throws -> Void)? = nil
    ) throws {
        self.side = side
        self.root = root
        self.directory = directory
        self.cursorName = cursorName
        self.backend = backend
        self.logger = logger
        self.makeJob = makeJob
        self.active = active
        self.journaling = journaling
        self.prepare = prepare
        try FileManager.default.createDirectory(atPath: directory + "/journal", withIntermediateDirectories: true)
        journal = try Journal(directory: directory + "/journal", fsync: fsync)
    }

    var isRunning: Bool { state.withLock { $0.running } }
    var watcherSummary: String { watcher?.summary ?? "not watching" }
    var watchFailures: Int { watcher?.watchFailures ?? 0 }

    /// Starts watching (first: nothing is journaled before the watch is up, so the walk that follows misses
    /// nothing), then the applying thread.
    func start() throws {
        let cursor = max(try CursorFile.load(cursorFile) ?? journal.tail, journal.tail)
        var backlog: UInt64 = 0
        var at = cursor
        while case let batch = try journal.read(from: at, maxBytes: 4 << 20), let last = batch.last {
            backlog += UInt64(batch.count)
            at = last.end
        }
        state.withLock {
            $0.cursor = cursor
            $0.pending = backlog
            $0.running = true
        }
        if FileManager.default.fileExists(atPath: runningMarker) && journaling() {
            // The last run ended without stopping (kill -9, a crash): what changed meanwhile was not seen.
            try record(ChangeRecord(o: "a", p: "the tap did not stop cleanly last time: changes while it was down were not watched"))
            logger.warning("the tap did not stop cleanly last time: the whole tree will be rescanned by metadata", metadata: ["tree": "\(root)"])
        }
        _ = FileManager.default.createFile(atPath: runningMarker, contents: Data("\(getpid())\n".utf8))
        let (w, fallback) = try startWatcher(backend, root: root) { [weak self] event in self?.journal(event) }
        watcher = w
        if let fallback {
            logger.notice(
                "fanotify is not available, watching with inotify (one watch per directory, up to fs.inotify.max_user_watches)",
                metadata: ["why": "\(fallback)"])
        }
        let t = Thread { [self] in loop() }
        t.name = "ferry-mirror-\(side)"
        t.start()
        thread = t
    }

    /// Stops watching and applying; the journal is synced and kept. With `discard`, the lane's files go too (a
    /// reverse lane after a rollback: the next cutover seeds a new one).
    func stop(discard: Bool = false) {
        watcher?.stop()
        watcher = nil
        state.withLock { $0.running = false }
        while thread?.isFinished == false { usleep(10_000) }
        thread = nil
        journal.sync()
        journal.shutdown()
        try? FileManager.default.removeItem(atPath: runningMarker)
        if discard { try? FileManager.default.removeItem(atPath: directory) }
    }

    // MARK: - the journal

    @discardableResult
    func record(_ r: ChangeRecord) throws -> UInt64 {
        let end = try journal.append(r.bytes)
        state.withLock {
            $0.received += 1
            $0.pending += 1
            if r.o == "c" && r.p.hasPrefix(FenceFile.directory + "/") { $0.fenceSeen[r.p] = end }
        }
        return end
    }

    /// Every event is in the journal before anything else happens with it.
    private func journal(_ event: WatchEvent) {
        guard journaling() else { return }
        let r: ChangeRecord
        switch event {
        case .changed(let p): r = ChangeRecord(o: "c", p: p)
        case .gone(let p): r = ChangeRecord(o: "g", p: p)
        case .subtree(let p): r = ChangeRecord(o: "s", p: p)
        case .lost(let why):
            let n = state.withLock {
                $0.lost += 1
                return $0.lost
            }
            if LogLimit.allows(n) {
                logger.warning(
                    "events lost; the whole tree will be rescanned by metadata", metadata: ["why": "\(why)", "times": "\(n)", "tree": "\(root)"])
            }
            r = ChangeRecord(o: "a", p: why)
        }
        do {
            try record(r)
        } catch {
            // The journal cannot take it: the change is not lost as long as a rescan follows. The mirror rescans
            // the whole tree with its next batch, and reports the destination behind until it has (so no cutover).
            logger.error("cannot journal a change (\(error)); the tree will be rescanned")
            state.withLock {
                $0.lastError = "journal: \(error)"
                $0.rescanOwed += 1
            }
            _ = FileManager.default.createFile(atPath: runningMarker, contents: nil)
        }
    }

    // MARK: - applying

    private func loop() {
        var backoff = 0.2
        while isRunning {
            journal.syncIfDue()
            let cursor = state.withLock { $0.cursor }
            guard active() else {
                _ = journal.wait(beyond: journal.head, timeout: 0.5)
                continue
            }
            let records: [JournalRecord]
            do {
                records = try journal.read(from: cursor, maxBytes: 4 << 20)
            } catch {
                state.withLock { $0.lastError = "journal: \(error)" }
                Thread.sleep(forTimeInterval: 1)
                continue
            }
            if records.isEmpty {
                // Entries left pending (held by a lease of a killed process until it expires, or changed again
                // while copied) are copied once nothing new arrives; until then the status says so.
                settleLeftovers()
                _ = journal.wait(beyond: cursor, timeout: 0.5)
                continue
            }
            do {
                let job = try makeJob()
                guard let ledger = try readyLedger(job) else {
                    // The initial copy (or its verify) is still running: the changes wait in the journal.
                    state.withLock { $0.waitingForReady = true }
                    Thread.sleep(forTimeInterval: 0.3)
                    continue
                }
                state.withLock { $0.waitingForReady = false }
                var changes = LiveChanges()
                let owed = state.withLock { $0.rescanOwed }
                if owed > 0 { changes.subtrees.insert("") }
                var later: [ChangeRecord] = []
                for r in records {
                    guard let c = try? JSONDecoder().decode(ChangeRecord.self, from: Data(r.payload)) else {
                        // A record this tap cannot read: treated as lost events.
                        changes.subtrees.insert("")
                        continue
                    }
                    switch c.o {
                    case "c":
                        if watcher?.isBeingWritten(c.p) == true { later.append(c) } else { changes.paths.insert(c.p) }
                    case "g": changes.paths.insert(c.p)
                    case "s": changes.subtrees.insert(c.p)
                    default: changes.subtrees.insert("")
                    }
                }
                let summary = try job.mirror(changes, ledger: ledger)
                // A file still open for writing comes back after the others, in the journal (durable), not in memory.
                for c in later { try record(c) }
                let end = records.last!.end
                try CursorFile.encode(end).withUnsafeBytes { b in
                    try Data(b).write(to: URL(fileURLWithPath: cursorFile), options: .atomic)
                }
                journal.release(below: end)
                state.withLock {
                    $0.cursor = end
                    $0.applied += UInt64(records.count - later.count)
                    $0.pending -= min($0.pending, UInt64(records.count))
                    $0.lastError = nil
                    $0.connected = true
                    $0.rescanOwed -= owed
                    // Said at once, not at the next idle look: a drained journal with entries still unsettled is
                    // not caught up.
                    $0.unsettled = summary.unsettled
                }
                if summary.changedAnything {
                    logger.info(
                        "mirrored",
                        metadata: ["to": "\(side)", "added": "\(summary.added)", "changed": "\(summary.changed)", "removed": "\(summary.removed)"])
                }
                backoff = 0.2
                if !later.isEmpty { _ = journal.wait(beyond: journal.head, timeout: 0.5) }
            } catch {
                // The destination (or the source) failed: the records stay in the journal and are applied again.
                state.withLock {
                    $0.lastError = "\(error)"
                    $0.connected = false
                }
                logger.warning("mirroring failed; retrying", metadata: ["to": "\(side)", "error": "\(error)"])
                Thread.sleep(forTimeInterval: backoff)
                backoff = min(backoff * 2, 10)
            }
        }
    }

    /// The job's ledger once it may be mirrored into: ready (or later) after the initial copy, or prepared here.
    private func readyLedger(_ job: Job) throws -> Ledger? {
        func open() throws -> (Ledger, Phase?)? {
            guard Ledger.exists(in: job.plan.stateDirectory) else { return nil }
            let ledger = try job.openLedger(create: false)
            return (ledger, try ledger.job()?.phase)
        }
        var found = try open()
        if let prepare, found?.1 != .ready {
            try prepare(job)
            found = try open()
        }
        guard let (ledger, phase) = found, let phase, [.ready, .switched, .complete].contains(phase) else { return nil }
        return ledger
    }

    private var lastSettle = Date.distantPast

    private func settleLeftovers() {
        guard Date().timeIntervalSince(lastSettle) >= 2 else { return }
        lastSettle = Date()
        do {
            let job = try makeJob()
            guard let ledger = try readyLedger(job) else { return }
            let unsettled = try ledger.unsettledCount()
            state.withLock { $0.unsettled = unsettled }
            guard unsettled > 0 else { return }
            let summary = try job.mirror(LiveChanges(), ledger: ledger)
            state.withLock { $0.unsettled = summary.unsettled }
        } catch {
            state.withLock { $0.lastError = "\(error)" }
        }
    }

    // MARK: - the fence and the status

    /// Writes the fence's file in the watched tree and returns the journal offset just past its record: once
    /// this lane's cursor is past it and the other side holds the file, everything before it has been applied.
    func fence(_ token: FenceToken) throws -> UInt64 {
        state.withLock { _ = $0.fenceSeen.removeValue(forKey: FenceFile.path(token)) }
        let dir = root + "/" + FenceFile.directory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = root + "/" + FenceFile.path(token)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw SystemCallError("open", errno: errno, path: path) }
        let bytes = FenceFile.contents(token)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced else { throw SystemCallError("write", errno: errno, path: path) }
        // The watcher's own report of the fence file comes after every event before it (the kernel keeps order),
        // so its journal offset covers them all; without it in time (events lost), the fence is journaled here.
        // (Well inside the control client's 10 s.)
        let rel = FenceFile.path(token)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            if let seq = state.withLock({ $0.fenceSeen.removeValue(forKey: rel) }) { return seq }
            usleep(10_000)
        }
        return try record(ChangeRecord(o: "c", p: rel))
    }

    /// This lane as the upstream it feeds: connected once caught up on what it owes, its lag in seconds and in
    /// paths (records not applied yet).
    func upstream(address: String, role: String) -> TapUpstreamStatus {
        let s = state.withLock { $0 }
        let head = journal.head
        let lag = s.cursor < head ? journal.appendedAt(s.cursor).map { max(0, Date().timeIntervalSince1970 - Double($0) / 1000) } ?? 0 : 0
        return TapUpstreamStatus(
            name: side, address: address, role: role, connected: s.connected && s.rescanOwed == 0,
            forwardedLines: s.applied, forwardedBytes: 0, spoolBytes: journal.bytes(after: s.cursor), lagSeconds: lag, cursor: s.cursor,
            reconnects: 0,
            lastError: s.lastError
                ?? (s.waitingForReady && s.cursor < head
                    ? "waiting for the job to be ready" : s.unsettled > 0 ? "\(s.unsettled) entries not settled yet" : nil),
            pendingRecords: s.pending)
    }

    var received: UInt64 { state.withLock { $0.received } }
}
