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

/// The tap's mode, shared with the lanes (which apply only in the modes that are theirs).
final class SharedMode: Sendable {
    let value = Mutex(TapMode.mirror)
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
///
/// For an fs → fs move a second lane runs the other way: the new tree is watched from the tap's start (in the
/// background: a watch of a large tree with inotify takes a while), its changes journaled from `cutover` mode on
/// (before the switch hooks point the application at it; what the forward mirror itself writes there before is
/// not journaled), and in `reverse` mode mirrored back to the old tree, through a job of the reverse direction
/// whose ledger is seeded from the new tree by metadata (see `Job.seedReverse`). That is the rollback window: a
/// rollback fences through the reverse lane. After a rollback the reverse lane is discarded and armed afresh;
/// `ferry complete` stops it. A cutover before the new tree is watched is refused (try again in a moment).
public final class FsJournalTap: TapService, TapServer, @unchecked Sendable {
    // @unchecked: mutable state is behind `state`; the lanes are thread-safe; `reverse` is started and stopped
    // under `laneLock`.
    let config: FsJournalTapConfig
    let plan: Plan
    let logger: Logger
    let jobs: @Sendable (Plan) throws -> Job
    let forward: MirrorLane
    /// The plan of the mirror back (new tree → old tree), for an fs → fs move; nil for other destinations.
    let reversePlan: Plan?
    private var reverse: MirrorLane?
    /// Why the new tree could not be watched, when it could not.
    private var reverseError: String?
    private let laneLock = NSLock()
    private let armLock = NSLock()
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var control: (any Channel)?
    private let mode = SharedMode()

    var modeFile: String { config.directory + "/mode" }
    var reverseDirectory: String { config.directory + "/reverse" }

    public init(config: FsJournalTapConfig, plan: Plan, logger: Logger, jobs: @escaping @Sendable (Plan) throws -> Job) throws {
        self.config = config
        self.plan = plan
        self.logger = logger
        self.jobs = jobs
        let mode = self.mode
        forward = try MirrorLane(
            side: "new", root: config.root, directory: config.directory, cursorName: "cursor.new", backend: config.watch, fsync: config.fsync,
            logger: logger, makeJob: { try jobs(plan) }, active: { [.mirror, .cutover].contains(mode.value.withLock { $0 }) })
        reversePlan = Self.reversed(plan)
    }

    /// The plan of the mirror back for an fs → fs move: the new tree is the source, the old one the destination,
    /// its own state beneath the job's.
    static func reversed(_ plan: Plan) -> Plan? {
        guard plan.destination.kind == "fs", plan.destination.path != nil else { return nil }
        var r = plan
        r.name = plan.name + "-reverse"
        r.source = plan.destination
        r.destination = plan.source
        r.tap = nil
        r.stateDirectory = plan.stateDirectory + "/reverse"
        return r
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
                try FsJournalTap(config: try FsJournalTapConfig(plan: plan), plan: plan, logger: logger) { p in try jobs(p, logger) }
            })
    }

    // MARK: - lifecycle

    public func start() throws {
        let m = ModeFile.load(modeFile)?.mode ?? .mirror
        mode.value.withLock { $0 = m }
        try forward.start()
        // A tap that stopped in cutover or reverse mode watches the new tree again (a kill -9 meanwhile is a
        // rescan of it, as for the source tree).
        if m == .cutover || m == .reverse {
            try startReverse()
        } else if m == .mirror {
            armReverseInBackground()
        }
        control = try bindControlSocket(config.controlSocket, group: group, server: self)
        logger.info(
            "fs-journal tap watching \(config.root) (\(forward.watcherSummary)); mode \(m.rawValue)",
            metadata: ["failed_watches": "\(forward.watchFailures)"])
    }

    public func stop() {
        try? control?.close().wait()
        forward.stop()
        armLock.withLock {
            let lane = laneLock.withLock {
                let l = reverse
                reverse = nil
                return l
            }
            lane?.stop()
        }
        try? group.syncShutdownGracefully()
    }

    /// Starts watching the new tree (the mirror back applies once the mode is `reverse`). One at a time
    /// (`armLock`), and without holding `laneLock` meanwhile, so the status answers while a large tree is
    /// being watched.
    /// `fresh`: whatever an earlier mirror back left (a tap stopped in the middle of discarding it) is removed
    /// first; the next cutover seeds a new one.
    private func startReverse(fresh: Bool = false) throws {
        guard let reversePlan else { return }
        try armLock.withLock {
            if laneLock.withLock({ reverse != nil }) { return }
            if fresh {
                try? FileManager.default.removeItem(atPath: reverseDirectory)
                try? FileManager.default.removeItem(atPath: reversePlan.stateDirectory)
            }
            let mode = self.mode
            let (jobs, plan) = (self.jobs, self.plan)
            let lane = try MirrorLane(
                side: "old", root: reversePlan.source.path!, directory: reverseDirectory, cursorName: "cursor.old", backend: config.watch,
                fsync: config.fsync, logger: logger, makeJob: { try jobs(reversePlan) }, active: { mode.value.withLock { $0 } == .reverse },
                journaling: { [.cutover, .reverse].contains(mode.value.withLock { $0 }) },
                prepare: { job in
                    let forwardLedger = try jobs(plan).openLedger(create: false)
                    let seeded = try job.seedReverse(from: forwardLedger)
                    try forwardLedger.recordEvent(
                        "reverse",
                        "mirror back seeded from the new tree: \(seeded.entries) entries, \(seeded.queued) to copy back, \(seeded.removed) removed from the old tree"
                    )
                })
            let started = Date()
            try lane.start()
            laneLock.withLock {
                reverse = lane
                reverseError = nil
            }
            logger.info(
                "watching the new tree for the mirror back",
                metadata: [
                    "tree": "\(lane.root)", "watch": "\(lane.watcherSummary)",
                    "seconds": "\(Units.formatDecimal(Date().timeIntervalSince(started), places: 1))",
                ])
        }
    }

    /// Starts watching the new tree on a thread of its own (the control socket answers meanwhile).
    private func armReverseInBackground() {
        guard reversePlan != nil else { return }
        let t = Thread { [self] in
            do {
                try startReverse(fresh: true)
            } catch {
                laneLock.withLock { reverseError = "\(error)" }
                logger.error("cannot watch the new tree for the mirror back: \(error)")
            }
        }
        t.name = "ferry-arm-reverse"
        t.start()
    }

    /// Stops the mirror back and forgets it (its journal, cursor and ledger): after a rollback the trees are
    /// equal again, and the next cutover seeds a new one.
    private func stopReverse() {
        armLock.withLock {
            let lane = laneLock.withLock {
                let l = reverse
                reverse = nil
                return l
            }
            lane?.stop(discard: true)
            if let reversePlan { try? FileManager.default.removeItem(atPath: reversePlan.stateDirectory) }
        }
    }

    // MARK: - control

    public func status() -> TapStatus {
        let m = mode.value.withLock { $0 }
        let back = laneLock.withLock { reverse }
        let mirroring = m == .mirror || m == .cutover
        let new = forward.upstream(address: plan.destination.displayName, role: mirroring ? "mirror" : "primary")
        let old: TapUpstreamStatus
        if m == .reverse, let back {
            old = back.upstream(address: config.root, role: "mirror")
        } else {
            old = TapUpstreamStatus(
                name: "old", address: config.root, role: mirroring ? "primary" : "detached", connected: true,
                forwardedLines: forward.received, forwardedBytes: 0, spoolBytes: 0, lagSeconds: 0, cursor: forward.journal.head, reconnects: 0,
                lastError: mirroring || m == .single
                    ? nil
                    : reversePlan == nil
                        ? "not mirrored back (a \(plan.destination.kind) destination is not watched: rollback is refused)"
                        : "the mirror back is not running")
        }
        let head = m == .reverse ? (back?.journal.head ?? 0) : forward.journal.head
        let spool = m == .reverse ? old.spoolBytes : new.spoolBytes
        return TapStatus(
            kind: "fs-journal", pid: getpid(), mode: m, primary: mirroring ? "old" : "new", head: head,
            receivedLines: forward.received + (back?.received ?? 0), invalidLines: 0,
            refusedMessages: UInt64(forward.watchFailures + (back?.watchFailures ?? 0)), droppedLines: 0, backPressure: false,
            spoolBytes: spool, spoolLimit: 0, upstreams: [old, new])
    }

    public func setMode(_ m: TapMode) throws -> TapStatus {
        let was = mode.value.withLock { $0 }
        switch m {
        case .cutover:
            // The new tree is watched before the application is switched to it (cutover comes before the switch
            // hooks), so nothing it writes there falls before the watch.
            if reversePlan != nil, let why = laneLock.withLock({ reverse == nil ? reverseError ?? "the watch is still being set up" : nil }) {
                throw FerryError(
                    .other,
                    "the new tree \(reversePlan?.source.path ?? "") is not watched yet for the mirror back (\(why)); the cutover "
                        + "needs that watch first: run it again in a moment")
            }
        case .reverse:
            try startReverse()
        case .mirror:
            // After a rollback (or an aborted cutover) the mirror back starts afresh at the next cutover.
            if was == .cutover || was == .reverse {
                stopReverse()
                armReverseInBackground()
            }
        case .single:
            stopReverse()
        }
        try ModeFile.store(modeFile, mode: m, primary: m == .mirror || m == .cutover ? "old" : "new")
        mode.value.withLock { $0 = m }
        logger.notice("mode \(m.rawValue)")
        return status()
    }

    /// Writes the fence's file in the tree the application writes to (the source before the cutover, the new
    /// tree in `reverse` mode) and returns the journal offset just past its record: once that lane's cursor is
    /// past it and the other side holds the file, everything before it has been applied.
    public func fence(_ token: FenceToken) throws -> UInt64 {
        switch mode.value.withLock({ $0 }) {
        case .mirror, .cutover:
            return try forward.fence(token)
        case .reverse:
            guard let back = laneLock.withLock({ reverse }) else {
                throw FerryError(
                    .other,
                    "the fs-journal tap does not mirror a \(plan.destination.kind) destination back to the old tree: a rollback "
                        + "through it cannot be fenced. Copy the new side back with a plan of the reverse direction")
            }
            return try back.fence(token)
        case .single:
            throw FerryError(.other, "the tap is in single mode (the job is complete): nothing is mirrored, so nothing can be fenced")
        }
    }
}
