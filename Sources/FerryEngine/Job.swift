public import FerryCore
import Foundation
public import Logging
import Synchronization

/// How `ferry run` ended.
public enum RunResult: Sendable {
    /// Verified clean and ready for cutover (exit 0).
    case ready(VerifyReport)
    /// Verify found mismatches (exit 1).
    case mismatches(VerifyReport)
    /// Nothing to do: the job was already verified (or cut over).
    case alreadyDone(String)
}

public struct RunOptions: Sendable {
    public var catchUp = false
    public var repair = false
    public init(catchUp: Bool = false, repair: Bool = false) {
        self.catchUp = catchUp
        self.repair = repair
    }
}

/// One migration job: the plan, its stores and its ledger. Walks the phases snapshot → copy → verify and
/// stops at ready-for-cutover; every step records its state before its effects, so any step can run again.
public final class Job {
    public let plan: Plan
    public let source: any Store
    public let destination: any Store
    public let logger: Logger
    public let progress: ProgressTracker
    /// The plan's live-write tap, when it has one (armed before the snapshot, switched at cutover).
    public var tap: (any TapControl)?
    /// The source at its live path (not the snapshot): where a rollback's fence must land.
    public var liveSource: (any Store)?
    /// The live controls (`ferry ctl`): pause, rate, concurrency. The run follows the ledger's settings.
    public let steering: Steering
    /// The stores' network counters as last added to the ledger (they count for the life of the stores).
    let wireMark = WireMark()

    /// `source` must read from the snapshot root (`snapshot.path` when set, else `source.path`).
    public init(plan: Plan, source: any Store, destination: any Store, logger: Logger, progress: ProgressTracker) {
        self.plan = plan
        self.source = source
        self.destination = destination
        self.logger = logger
        self.progress = progress
        self.steering = Steering(schedule: plan.copy.bandwidthSchedule, concurrency: plan.copy.concurrency)
    }

    var readRoot: String { plan.snapshot.path ?? plan.source.path ?? "" }

    /// Opens (creating when asked) the ledger and checks that it belongs to this plan.
    public func openLedger(create: Bool) throws -> Ledger {
        let ledger = try Ledger(stateDirectory: plan.stateDirectory, create: create)
        if let job = try ledger.job(), job.planIdentity != plan.identity {
            let old = Set(job.planIdentity.split(separator: "\n"))
            let changed = plan.identity.split(separator: "\n").filter { !old.contains($0) }.map {
                $0.split(separator: "=").first.map(String.init) ?? ""
            }
            throw FerryError(
                .stateConflict,
                "the plan changed since this job's snapshot (\(changed.joined(separator: ", "))); its manifest and chunks "
                    + "no longer apply. Restore the plan, or remove \(plan.stateDirectory) to start a new job")
        }
        return ledger
    }

    /// One run: the steps before the copy under the coordinator lock (waiting for it when another run holds
    /// it), then the copy from leased files, shared with any other run on the job, then, once no file is left
    /// pending or leased elsewhere, the finishing steps and verify, under the coordinator again. A second
    /// `ferry run` on the same job joins the first: they share the files, and the one that finishes last verifies.
    public func run(_ options: RunOptions) throws -> RunResult {
        let membership = try WorkerMembership(stateDirectory: plan.stateDirectory)
        defer { withExtendedLifetime(membership) {} }
        let ledger = try openLedger(create: true)
        if let early = try JobLock.coordinate(plan.stateDirectory, step: "start", logger: logger, { try prepare(ledger, options) }) {
            return early
        }
        try ledger.registerWorker(worker, pid: Int(getpid()), now: Date().timeIntervalSince1970)
        let stopFollowing = followControl(ledger)
        defer {
            stopFollowing()
            stopReadingBack()
        }
        do {
            while true {
                let summary = try copyFiles(ledger)
                logger.info(
                    "copy finished",
                    metadata: [
                        "files": "\(summary.filesCopied)", "bytes": "\(summary.bytesCopied)", "failed": "\(summary.failed)",
                        "vanished": "\(summary.vanished)", "merged": "\(summary.merged)",
                        "values_merged": "\(summary.valuesMerged)", "found": "\(summary.filesFound)",
                    ])
                let outcome: RunResult? = try JobLock.coordinate(plan.stateDirectory, step: "verify", logger: logger) {
                    guard let phase = try ledger.job()?.phase, phase == .copy else {
                        return .alreadyDone("another ferry run on this job finished the copy and verified it; see `ferry status`")
                    }
                    let now = Date().timeIntervalSince1970
                    guard try ledger.pendingFiles() == 0, try ledger.liveLeases(excluding: worker, now: now) == 0 else { return nil }
                    try finishCopy(ledger)
                    let report = try verify(ledger, asRun: true)
                    try ledger.setLastError(nil)
                    return report.ok ? .ready(report) : .mismatches(report)
                }
                if let outcome { return outcome }
                try awaitOtherWorkers(ledger)
            }
        } catch {
            try? ledger.setLastError(error.operatorText)
            throw error
        }
    }

    /// This process's name in the ledger's leases and workers table.
    public let worker = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(UInt32.random(in: 0...UInt32.max))"

    /// The steps before the copy (a singleton): the job record, the tap, the snapshot, repair and catch-up.
    /// Returns the run's result when there is nothing to copy.
    func prepare(_ ledger: Ledger, _ options: RunOptions) throws -> RunResult? {
        if try ledger.job() == nil {
            try ledger.createJob(name: plan.name, planIdentity: plan.identity, chunkSize: plan.copy.chunkSize)
        }
        guard let job = try ledger.job() else { throw FerryError(.ledger, "job record missing after creation") }
        if job.phase == .switched || job.phase == .complete {
            return .alreadyDone("this job was cut over already; nothing to do")
        }
        if try job.phase == .ready && !options.catchUp && !options.repair && ledger.unsettledCount() == 0 {
            let age = (try ledger.lastVerify()).map { Units.formatDuration(Date().timeIntervalSince1970 - ($0.finishedAt ?? 0)) } ?? "?"
            return .alreadyDone(
                "job is verified and ready for cutover (last verify \(age) ago); nothing to do. "
                    + "`ferry run --catch-up` copies source changes, `ferry verify` re-checks")
        }
        do {
            if let tap {
                // Armed before the snapshot, so no live write falls between the manifest and the dual write.
                // On a resume this restarts a tap that died; its spool replays what it held.
                let seq = try tap.arm()
                if job.phase == .snapshot || job.tapSeq == nil {
                    try ledger.recordTapArmed(seq: seq)
                    logger.info("tap armed", metadata: ["sequence": "\(seq)"])
                }
            }
            if job.phase == .snapshot {
                try snapshot(ledger)
            }
            if options.repair {
                let ids = try ledger.lastVerifyFailedItems()
                for id in ids { try ledger.requeue(id) }
                try ledger.recordEvent("repair", "re-queued \(ids.count) items that the last verify found bad")
                logger.info("repair: re-queued \(ids.count) items that failed the last verify")
            }
            if options.catchUp {
                try catchUp(ledger)
            } else if options.repair {
                // A failed item may be readable now; give it another try.
                try ledger.forEachItem(states: [.failed]) { try ledger.requeue($0.id) }
            }
            try ledger.setPhase(.copy)
            return nil
        } catch {
            try? ledger.setLastError(error.operatorText)
            throw error
        }
    }

    /// Waits while other workers hold live leases on pending files: until they have committed them (the copy
    /// is done), or a lease expires (its worker died: this run takes the files over).
    func awaitOtherWorkers(_ ledger: Ledger) throws {
        logger.info("waiting for the other workers on this job to commit their files (or for their leases to expire)")
        var pause = 0.05
        while true {
            let now = Date().timeIntervalSince1970
            let others = try ledger.liveLeases(excluding: worker, now: now)
            let pending = try ledger.pendingFiles()
            // Done (the verify step decides), or a pending file no live lease holds: back to copying.
            if others == 0 || pending > others { return }
            if Interruption.requested { throw FerryError(.other, "interrupted while other workers copy; run `ferry run` again to join them") }
            Thread.sleep(forTimeInterval: pause)  // polling the shared ledger, not synchronisation of a test
            pause = min(pause * 2, 1)
        }
    }

    // MARK: - snapshot

    func runHook(_ command: String, what: String, extraEnvironment: [String: String] = [:]) throws {
        try ledgerlessRunHook(command, what: what, environment: hookEnvironment().merging(extraEnvironment) { $1 })
    }

    func hookEnvironment() -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["FERRY_PLAN"] = plan.file
        env["FERRY_JOB"] = plan.name
        env["FERRY_SOURCE"] = plan.source.path ?? plan.source.displayName
        env["FERRY_DESTINATION"] = plan.destination.path ?? plan.destination.displayName
        env["FERRY_STATE_DIR"] = plan.stateDirectory
        if let p = plan.snapshot.path { env["FERRY_SNAPSHOT_PATH"] = p }
        return env
    }

    func ledgerlessRunHook(_ command: String, what: String, environment: [String: String]) throws {
        logger.info("running \(what)", metadata: ["command": "\(command)"])
        let status: Int32
        do {
            status = try runToExit(["/bin/sh", "-c", command], environment: environment)
        } catch {
            throw FerryError(.hookFailed, "\(what) could not start: \(command)", underlying: error)
        }
        if status != 0 {
            let how = status > 128 ? "signal \(status - 128)" : "exit status \(status)"
            throw FerryError(.hookFailed, "\(what) failed (\(how)): \(command)")
        }
    }

    /// Takes the manifest. A snapshot interrupted half way is started over (the phase is still `snapshot`).
    func snapshot(_ ledger: Ledger) throws {
        if let hook = plan.snapshot.hook { try runHook(hook, what: "snapshot hook") }
        if !readRoot.isEmpty && !PathUtil.isDirectory(readRoot) {
            throw FerryError(.sourceIO, "the source \(readRoot) is not a readable directory")
        }
        try ledger.clearManifest()
        let time = Date().timeIntervalSince1970
        let writer = ledger.manifestWriter()
        var files: Int64 = 0
        var bytes: Int64 = 0
        if let root = try source.stat("") { try writer.add(root) }
        // Every entry ends copied, refused (the run fails, the entry is named) or skipped by a plan policy.
        var filter = EntryFilter(plan: plan, destination: destination)
        var refused = 0
        var skippedByPolicy = 0
        try source.walk(
            { e in
                switch filter.classify(e) {
                case .copy(let e):
                    try writer.add(e)
                    if e.kind == .file {
                        files += 1
                        bytes += e.size
                    }
                case .refuse(let why):
                    refused += 1
                    logger.warning("refused", metadata: ["path": "\(RawName.display(e.path))", "reason": "\(why)"])
                    try ledger.recordSkipped(SkippedEntry(path: e.path, reason: why, category: .refused))
                case .skip(let why):
                    skippedByPolicy += 1
                    try ledger.recordSkipped(SkippedEntry(path: e.path, reason: why, category: .policy))
                }
            },
            skipped: { s in
                if s.category == .policy {
                    skippedByPolicy += 1
                } else {
                    refused += 1
                    logger.warning("cannot read source entry", metadata: ["path": "\(RawName.display(s.path))", "reason": "\(s.reason)"])
                }
                try? ledger.recordSkipped(s)
            })
        if refused > 0 || skippedByPolicy > 0 {
            logger.info("snapshot: entries not copied", metadata: ["refused": "\(refused)", "skipped_by_policy": "\(skippedByPolicy)"])
        }
        try writer.flush()
        try ledger.finishSnapshot(root: readRoot.isEmpty ? source.displayName : readRoot, at: time)
        logger.info("snapshot taken", metadata: ["files": "\(files)", "bytes": "\(bytes)", "root": "\(readRoot)"])
    }

    /// Re-scans the source and queues what changed since the snapshot: new, changed and removed entries.
    func catchUp(_ ledger: Ledger, runHook hooked: Bool = true) throws {
        if hooked, let hook = plan.snapshot.hook { try runHook(hook, what: "snapshot hook") }
        let scan = try ledger.beginScan()
        let writer = ledger.manifestWriter(scan: scan)
        var seen: [Int64] = []
        var added = 0
        var changed = 0
        // Refusals and policy skips are decided again from this walk: what the operator fixed or removed at the
        // source is forgotten, what is still wrong is recorded again.
        try ledger.clearSkipped()
        var filter = EntryFilter(plan: plan, destination: destination)
        func visit(_ found: Entry) throws {
            let e: Entry
            let verdict = filter.classify(found)
            switch verdict {
            case .copy(let c): e = c
            case .refuse(let why), .skip(let why):
                var refused = false
                if case .refuse = verdict { refused = true }
                try ledger.recordSkipped(SkippedEntry(path: found.path, reason: why, category: refused ? .refused : .policy))
                // What was copied before stays at the destination (as rsync keeps excluded files).
                if let item = try ledger.item(path: found.path) { seen.append(item.id) }
                return
            }
            guard let item = try ledger.item(path: e.path) else {
                try writer.add(e)
                added += 1
                return
            }
            seen.append(item.id)
            let old = item.entry
            if item.state == .vanished || item.state == .deleted || e.changed(comparedTo: old) || e.mode != old.mode
                || e.uid != old.uid || e.gid != old.gid
            {
                try ledger.requeue(item.id, entry: e)
                changed += 1
            }
            if seen.count >= 5000 {
                try ledger.markSeen(seen, scan: scan)
                seen.removeAll(keepingCapacity: true)
            }
        }
        if let root = try source.stat("") { try visit(root) }
        try source.walk(
            visit,
            skipped: { s in
                try? ledger.recordSkipped(s)
                if let item = try? ledger.item(path: s.path) { seen.append(item.id) }
            })
        try writer.flush()
        try ledger.markSeen(seen, scan: scan)
        let gone = try ledger.markUnseenVanished(scan: scan)
        // Remove what left the source, children before parents.
        var removed: [Int64] = []
        var vanished: [ItemRecord] = []
        try ledger.forEachItem(states: [.vanished]) { vanished.append($0) }
        let tag = try ledger.partialTag()
        for item in vanished.sorted(by: { $0.entry.path > $1.entry.path }) {
            do {
                if item.entry.kind == .file { try? destination.discardPartial(for: item.entry.path, token: "\(tag).\(item.id)") }
                try destination.remove(item.entry.path, kind: item.entry.kind == .hardlink ? .file : item.entry.kind)
                removed.append(item.id)
            } catch {
                logger.warning("cannot remove at the destination", metadata: ["path": "\(RawName.display(item.entry.path))", "error": "\(error)"])
            }
        }
        try ledger.setState(removed, .deleted, error: "removed from the source")
        try ledger.recordEvent("catch-up", "scan \(scan): \(added) new, \(changed) changed, \(gone) removed")
        logger.info("catch-up scan", metadata: ["new": "\(added)", "changed": "\(changed)", "removed": "\(gone)"])
    }

    // MARK: - copy and verify

    func withCopyPhase<T>(_ ledger: Ledger, _ body: (CopyPhase) throws -> T) throws -> T {
        let chunkSize = try ledger.job()?.chunkSize ?? plan.copy.chunkSize
        let phase = CopyPhase(
            source: source, destination: destination, ledger: ledger, chunkSize: chunkSize,
            steering: steering, progress: progress, logger: logger)
        if let at = try ledger.job()?.snapshotAt { phase.snapshotTime = Int(at) }
        phase.partialTag = try ledger.partialTag()
        phase.worker = worker
        phase.leaseTTL = plan.copy.leaseTTL
        let record = wireRecorder(ledger)
        let stop = progress.startReporting(heartbeat: heartbeat(ledger, record))
        defer {
            stop()
            record()
            sampleRecorder(ledger)(true)
            try? ledger.heartbeat(pid: nil, bytesDone: 0, filesDone: 0)
        }
        return try body(phase)
    }

    /// The whole copy in this process (files, then links, specials and directories).
    func copy(_ ledger: Ledger) throws -> CopySummary { try withCopyPhase(ledger) { try $0.run() } }

    /// The files this run can lease. With a full verify to follow, a local destination's files are read back
    /// while the copy goes on (`ContentReadBack`; not with a tap, whose live writes change them again, nor for a
    /// metric store, compared point by point). The read-back goes on until verify starts its content checks.
    func copyFiles(_ ledger: Ledger) throws -> CopySummary {
        if readingBack == nil, plan.verify.mode == .full, plan.tap == nil, !(destination is any PointComparing),
            let stamping = destination as? any ChangeStamping
        {
            readingBack = ContentReadBack(destination: stamping, ledger: ledger, logger: logger)
            readingBack?.start()
        }
        return try withCopyPhase(ledger) { phase in
            phase.readingBack = readingBack
            return try phase.copyFiles()
        }
    }

    /// This run's read-back of copied files, while it goes on.
    var readingBack: ContentReadBack?

    func stopReadingBack() {
        readingBack?.stop()
        readingBack = nil
    }

    /// Links, specials and directories, once every file is copied.
    func finishCopy(_ ledger: Ledger) throws { _ = try withCopyPhase(ledger) { try $0.finish() } }

    private func heartbeat(_ ledger: Ledger, _ record: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        let pid = Int(getpid())
        let progress = self.progress
        let sampler = sampleRecorder(ledger)
        return {
            let s = progress.snapshot
            try? ledger.heartbeat(pid: pid, bytesDone: s.bytesDone, filesDone: s.filesDone)
            record()
            sampler(false)
        }
    }

    /// Keeps a progress sample in the ledger at the first call, every `sampleInterval` seconds after, and
    /// whenever `force` (a phase's end); with a tap, its spool and largest lag too.
    func sampleRecorder(_ ledger: Ledger) -> @Sendable (_ force: Bool) -> Void {
        let progress = self.progress
        let tap = self.tap
        let last = Mutex<Double>(0)
        return { force in
            let now = Date().timeIntervalSince1970
            let due = last.withLock { t in
                guard force || now - t >= Self.sampleInterval else { return false }
                t = now
                return true
            }
            guard due else { return }
            var sample = progress.sample(at: now)
            if let status = try? tap?.status() {
                sample.tapSpoolBytes = status.spoolBytes
                sample.tapLagSeconds = status.upstreams.filter { $0.role != "detached" }.map(\.lagSeconds).max()
            }
            try? ledger.addSample(sample)
        }
    }

    static let sampleInterval: Double = 5

    /// Adds to the ledger what the stores moved across a network since it last did (each heartbeat, and once
    /// more as a phase ends).
    func wireRecorder(_ ledger: Ledger) -> @Sendable () -> Void {
        let counting = [source, destination].compactMap { $0 as? any WireCounting }
        guard !counting.isEmpty else { return {} }
        let mark = wireMark
        return {
            let totals = counting.map(\.wireTotals)
            let now = (wire: totals.reduce(0) { $0 + $1.wire }, logical: totals.reduce(0) { $0 + $1.logical })
            let delta = mark.value.withLock { m -> (Int64, Int64) in
                defer { m = now }
                return (now.wire - m.wire, now.logical - m.logical)
            }
            do {
                try ledger.addWire(bytes: delta.0, logical: delta.1)
            } catch {
                mark.value.withLock { $0 = (now.wire - delta.0, now.logical - delta.1) }  // counted again next time
            }
        }
    }

    /// Runs verify and moves the job to `ready` or `verify-failed`.
    /// `asRun`: the verify step of `ferry run`. Partial files of this job's interrupted copies found at the
    /// destination are removed (`ferry verify` only reports them), and files the copy read back and that show
    /// the same change stamp count as checked (`ferry verify` reads every file again).
    public func verify(_ ledger: Ledger, asRun: Bool = false) throws -> VerifyReport {
        try ledger.setPhase(.verify)
        let phase = VerifyPhase(
            plan: plan, source: source, destination: destination, ledger: ledger, progress: progress, logger: logger)
        if asRun {
            phase.removeLeftoversTagged = try ledger.partialTag()
            phase.useReadBack = true
            phase.readBackToStop = readingBack
        }
        let record = wireRecorder(ledger)
        let stop = progress.startReporting(heartbeat: heartbeat(ledger, record))
        let report: VerifyReport
        do {
            defer {
                stop()
                record()
                sampleRecorder(ledger)(true)
                try? ledger.heartbeat(pid: nil, bytesDone: 0, filesDone: 0)
            }
            report = try phase.run()
        }
        if asRun { try ledger.clearReadBack() }
        try ledger.setPhase(report.ok ? .ready : .verifyFailed, note: "\(report.mismatches) mismatches")
        return report
    }

    /// `ferry verify`: verify an existing job without copying.
    public func verifyOnly() throws -> VerifyReport {
        let lock = try JobLock(stateDirectory: plan.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let ledger = try openLedger(create: false)
        guard let job = try ledger.job(), job.phase != .snapshot else {
            throw FerryError(.stateConflict, "there is nothing to verify yet: run `ferry run` first")
        }
        if job.phase == .switched {
            return try VerifyPhase(
                plan: plan, source: source, destination: destination, ledger: ledger, progress: progress, logger: logger
            ).run()
        }
        return try verify(ledger)
    }
}

/// The network counters already added to the ledger, shared by every phase of a job.
final class WireMark: Sendable {
    let value = Mutex((wire: Int64(0), logical: Int64(0)))
}
