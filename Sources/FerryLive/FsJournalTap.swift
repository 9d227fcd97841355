public import FerryCore
public import FerryEngine
public import FerryTap
import Foundation
public import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `tap: {kind: fs-journal}`'s settings.
public struct FsJournalTapConfig: Sendable {
    public var root: String
    public var directory: String
    public var controlSocket: String
    public var fsync: FsyncPolicy = .interval(1)

    /// How the tree is watched (`watch:`): fanotify where possible (`auto`, the default), or one of the two.
    public var watch: WatchBackend = .auto

    public static let keys: Set<String> = ["spool_dir", "control", "fsync", "fence_timeout", "watch"]

    public init(plan: Plan) throws {
        guard let tap = plan.tap, tap.kind == "fs-journal" else { throw FerryError(.invalidPlan, "the plan has no fs-journal tap") }
        guard plan.source.kind == "fs", let root = plan.source.path else {
            throw FerryError(
                .invalidPlan, "tap.kind fs-journal watches a directory tree: the source must be kind fs (got \(plan.source.kind))")
        }
        if plan.snapshot.path != nil {
            throw FerryError(
                .invalidPlan,
                "tap.kind fs-journal: snapshot.path is not used with a live tree's tap (the tap carries what changes after the copy's walk)")
        }
        let o = tap.options
        let base = PathUtil.directory(of: plan.file)
        self.root = root
        directory = o["spool_dir"].map { PathUtil.absolute(PathUtil.expandTilde($0), relativeTo: base) } ?? plan.stateDirectory + "/tap"
        controlSocket = o["control"].map { PathUtil.absolute(PathUtil.expandTilde($0), relativeTo: base) } ?? directory + "/control.sock"
        if let v = o["fsync"] {
            guard let p = FsyncPolicy.parse(v) else { throw FerryError(.invalidPlan, "tap.fsync: expected always, never or an interval, got '\(v)'") }
            fsync = p
        }
        if let v = o["watch"] {
            guard let w = WatchBackend(rawValue: v) else {
                throw FerryError(.invalidPlan, "tap.watch: expected auto, fanotify or inotify, got '\(v)'")
            }
            watch = w
        }
    }
}

/// One journal record: what changed, as a path.
struct ChangeRecord: Codable, Equatable {
    /// `c` look again, `g` gone, `s` rescan the subtree, `a` rescan everything (`p` then says why).
    var o: String
    var p: String

    var bytes: [UInt8] { Array((try? JSONEncoder().encode(self)) ?? Data()) }
}

/// The fs-journal tap: the live tree's changes, journaled and mirrored.
///
/// ```
/// application ──writes──▶ source tree ──fanotify/inotify──▶ watcher ──path records──▶ Journal (durable, first)
///                                                                                     │ cursor.new
///                                                                                     ▼
///                                      destination ◀── Job.mirror (catch-up of those paths + the copy phase)
/// ```
/// Every change goes into the journal as a path record before anything else happens with it. The mirror
/// starts once the job is ready (the initial copy and its verify are done), reads records from its cursor,
/// coalesces them (a burst on one path is one look), leaves a file that is still being written for after its
/// close, and applies the rest through the engine's copy, so it is chunked, hashed and ledgered. The cursor
/// moves only after the destination has them; a destination that is down keeps them in the journal.
///
/// Gaps are never silent: a queue overflow, a directory that cannot be watched, or a start after the tap did not
/// stop cleanly (kill -9) journals a rescan (the subtree, or the whole tree), done by metadata like a catch-up.
public final class FsJournalTap: TapService, TapServer, @unchecked Sendable {
    // @unchecked: mutable state is behind `state`; the journal, watcher and event loop are thread-safe.
    let config: FsJournalTapConfig
    let plan: Plan
    let logger: Logger
    let makeJob: @Sendable () throws -> Job
    let journal: Journal
    private var watcher: (any TreeWatching)?
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var control: (any Channel)?
    private var mirrorThread: Thread?

    struct State {
        var mode: TapMode = .mirror
        var cursor: UInt64 = 0
        var running = true
        var received: UInt64 = 0
        var applied: UInt64 = 0
        var lastError: String?
        var connected = true
        var waitingForReady = true
        /// Entries the ledger holds as not settled (pending, failed, vanished) at the last look.
        var unsettled: Int64 = 0
        /// A change could not be journaled: the whole tree is rescanned before the mirror counts as caught up.
        /// (A count: a failure during a rescan still owes the next one.)
        var rescanOwed = 0
        /// How many times events were lost (each journals a rescan).
        var lost: UInt64 = 0
        /// Fence files the watcher reported, with the journal offset just past their record.
        var fenceSeen: [String: UInt64] = [:]
    }
    private let state = Mutex(State())

    var cursorFile: String { config.directory + "/cursor.new" }
    var modeFile: String { config.directory + "/mode" }
    /// Present while the tap runs; found at start, it says the last run did not stop cleanly.
    var runningMarker: String { config.directory + "/running" }

    public init(config: FsJournalTapConfig, plan: Plan, logger: Logger, makeJob: @escaping @Sendable () throws -> Job) throws {
        self.config = config
        self.plan = plan
        self.logger = logger
        self.makeJob = makeJob
        try FileManager.default.createDirectory(atPath: config.directory + "/journal", withIntermediateDirectories: true)
        journal = try Journal(directory: config.directory + "/journal", fsync: config.fsync)
    }

    /// The tap kind, with how the tap process builds its job (the stores come from the composition root).
    public static func kind(jobs: @escaping @Sendable (Plan, Logger) throws -> Job) -> TapKind {
        TapKind(
            schema: TapKindSchema(kind: "fs-journal", keys: FsJournalTapConfig.keys, required: []),
            locate: { plan in
                let c = try FsJournalTapConfig(plan: plan)
                return TapLocation(directory: c.directory, controlSocket: c.controlSocket)
            },
            make: { plan, logger in
                try FsJournalTap(config: try FsJournalTapConfig(plan: plan), plan: plan, logger: logger) { try jobs(plan, logger) }
            })
    }

    // MARK: - lifecycle

    public func start() throws {
        let cursor = try CursorFile.load(cursorFile) ?? journal.tail
        let mode = ModeFile.load(modeFile)?.mode ?? .mirror
        state.withLock {
            $0.cursor = max(cursor, journal.tail)
            $0.mode = mode
        }
        if FileManager.default.fileExists(atPath: runningMarker) {
            // The last run ended without stopping (kill -9, a crash): what changed meanwhile was not seen.
            try record(ChangeRecord(o: "a", p: "the tap did not stop cleanly last time: changes while it was down were not watched"))
            logger.warning("the tap did not stop cleanly last time: the whole tree will be rescanned by metadata")
        }
        _ = FileManager.default.createFile(atPath: runningMarker, contents: Data("\(getpid())\n".utf8))
        let (w, fallback) = try startWatcher(config.watch, root: config.root) { [weak self] event in self?.journal(event) }
        watcher = w
        if let fallback {
            logger.notice(
                "fanotify is not available, watching with inotify (one watch per directory, up to fs.inotify.max_user_watches)",
                metadata: ["why": "\(fallback)"])
        }
        let channel = try ServerBootstrap(group: group)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlHandler(handle: { self.handle($0) }))
                }
            }
            .bind(unixDomainSocketPath: config.controlSocket, cleanupExistingSocketFile: true).wait()
        chmod(config.controlSocket, 0o600)
        control = channel
        let t = Thread { [self] in mirrorLoop() }
        t.name = "ferry-mirror"
        t.start()
        mirrorThread = t
        logger.info(
            "fs-journal tap watching \(config.root) (\(w.summary)); mode \(mode.rawValue)",
            metadata: ["failed_watches": "\(w.watchFailures)"])
    }

    public func stop() {
        try? control?.close().wait()
        watcher?.stop()
        state.withLock { $0.running = false }
        while mirrorThread?.isFinished == false { usleep(10_000) }
        journal.sync()
        journal.shutdown()
        try? group.syncShutdownGracefully()
        try? FileManager.default.removeItem(atPath: runningMarker)
    }

    // MARK: - the journal

    @discardableResult
    private func record(_ r: ChangeRecord) throws -> UInt64 {
        let end = try journal.append(r.bytes)
        state.withLock {
            $0.received += 1
            if r.o == "c" && r.p.hasPrefix(FenceFile.directory + "/") { $0.fenceSeen[r.p] = end }
        }
        return end
    }

    /// Every event is in the journal before anything else happens with it.
    private func journal(_ event: WatchEvent) {
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
                logger.warning("events lost; the whole tree will be rescanned by metadata", metadata: ["why": "\(why)", "times": "\(n)"])
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

    // MARK: - the mirror

    private var isRunning: Bool { state.withLock { $0.running } }

    private func mirrorLoop() {
        var backoff = 0.2
        while isRunning {
            journal.syncIfDue()
            let (mode, cursor) = state.withLock { ($0.mode, $0.cursor) }
            guard mode == .mirror || mode == .cutover else {
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
                let ledger = try job.openLedger(create: false)
                guard let phase = try ledger.job()?.phase, [.ready, .switched, .complete].contains(phase) else {
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
                    $0.lastError = nil
                    $0.connected = true
                    $0.rescanOwed -= owed
                    // Said at once, not at the next idle look: a drained journal with entries still unsettled is
                    // not caught up.
                    $0.unsettled = summary.unsettled
                }
                if summary.changedAnything {
                    logger.info(
                        "mirrored", metadata: ["added": "\(summary.added)", "changed": "\(summary.changed)", "removed": "\(summary.removed)"])
                }
                backoff = 0.2
                if !later.isEmpty { _ = journal.wait(beyond: journal.head, timeout: 0.5) }
            } catch {
                // The destination (or the source) failed: the records stay in the journal and are applied again.
                state.withLock {
                    $0.lastError = "\(error)"
                    $0.connected = false
                }
                logger.warning("mirroring failed; retrying", metadata: ["error": "\(error)"])
                Thread.sleep(forTimeInterval: backoff)
                backoff = min(backoff * 2, 10)
            }
        }
    }

    private var lastSettle = Date.distantPast

    private func settleLeftovers() {
        guard Date().timeIntervalSince(lastSettle) >= 2 else { return }
        lastSettle = Date()
        do {
            let job = try makeJob()
            let ledger = try job.openLedger(create: false)
            guard let phase = try ledger.job()?.phase, [.ready, .switched, .complete].contains(phase) else { return }
            let unsettled = try ledger.unsettledCount()
            state.withLock { $0.unsettled = unsettled }
            guard unsettled > 0 else { return }
            let summary = try job.mirror(LiveChanges(), ledger: ledger)
            state.withLock { $0.unsettled = summary.unsettled }
        } catch {
            state.withLock { $0.lastError = "\(error)" }
        }
    }

    // MARK: - control

    public func status() -> TapStatus {
        let s = state.withLock { $0 }
        let head = journal.head
        let lag = s.cursor < head ? journal.appendedAt(s.cursor).map { max(0, Date().timeIntervalSince1970 - Double($0) / 1000) } ?? 0 : 0
        let mirroring = s.mode == .mirror || s.mode == .cutover
        let new = TapUpstreamStatus(
            name: "new", address: plan.destination.displayName, role: mirroring ? "mirror" : "detached",
            connected: s.connected && s.rescanOwed == 0,
            forwardedLines: s.applied, forwardedBytes: 0, spoolBytes: journal.bytes(after: s.cursor), lagSeconds: lag, cursor: s.cursor,
            reconnects: 0,
            lastError: s.lastError
                ?? (s.waitingForReady && s.cursor < head
                    ? "waiting for the job to be ready" : s.unsettled > 0 ? "\(s.unsettled) entries not settled yet" : nil))
        let old = TapUpstreamStatus(
            name: "old", address: config.root, role: mirroring ? "primary" : "detached", connected: true, forwardedLines: s.received,
            forwardedBytes: 0, spoolBytes: 0, lagSeconds: 0, cursor: head, reconnects: 0,
            lastError: mirroring ? nil : "not mirrored back (the fs-journal tap mirrors the source tree only)")
        return TapStatus(
            kind: "fs-journal", pid: getpid(), mode: s.mode, primary: mirroring ? "old" : "new", head: head, receivedLines: s.received,
            invalidLines: 0, refusedMessages: UInt64(watcher?.watchFailures ?? 0), droppedLines: 0, backPressure: false,
            spoolBytes: journal.bytes(after: s.cursor), spoolLimit: 0, upstreams: [old, new])
    }

    public func setMode(_ m: TapMode) throws -> TapStatus {
        try ModeFile.store(modeFile, mode: m, primary: m == .mirror || m == .cutover ? "old" : "new")
        state.withLock { $0.mode = m }
        logger.notice("mode \(m.rawValue)")
        return status()
    }

    /// Writes the fence's file in the source tree and journals it after everything seen before: once the
    /// mirror's cursor is past it and the destination holds the file, everything before it has been applied.
    public func fence(_ token: FenceToken) throws -> UInt64 {
        let mode = state.withLock { $0.mode }
        guard mode == .mirror || mode == .cutover else {
            throw FerryError(
                .other,
                "the fs-journal tap does not mirror the new tree back to the old one (mode \(mode.rawValue)): a rollback "
                    + "through it cannot be fenced. Copy the new tree back with a plan of the reverse direction")
        }
        state.withLock { _ = $0.fenceSeen.removeValue(forKey: FenceFile.path(token)) }
        let dir = config.root + "/" + FenceFile.directory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = config.root + "/" + FenceFile.path(token)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw SystemCallError("open", errno: errno, path: path) }
        let bytes = FenceFile.contents(token)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced else { throw SystemCallError("write", errno: errno, path: path) }
        // The watcher's own report of the fence file comes after every event before it (the kernel keeps order), so
        // its journal offset covers them all; without it in time (events lost), the fence is journaled here.
        let rel = FenceFile.path(token)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let seq = state.withLock({ $0.fenceSeen.removeValue(forKey: rel) }) { return seq }
            usleep(10_000)
        }
        return try record(ChangeRecord(o: "c", p: rel))
    }
}
