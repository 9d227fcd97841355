import FerryCore
import Foundation

/// One cutover gate and whether it holds.
public struct Gate: Sendable, Codable {
    public var name: String
    public var ok: Bool
    public var detail: String
}

public enum CutoverResult: Sendable {
    case done(gates: [Gate], forced: Bool)
    case alreadyDone(at: Double)
    case refused(gates: [Gate])
}

extension Job {
    /// The cutover gates: a clean, fresh verify and nothing left for a catch-up.
    public func gates(_ ledger: Ledger) throws -> [Gate] {
        var gates: [Gate] = []
        let job = try ledger.job()
        let phase = job?.phase.rawValue ?? "none"
        gates.append(Gate(name: "ready", ok: job?.phase == .ready, detail: "job phase is \(phase)"))
        if let v = try ledger.lastVerify() {
            gates.append(
                Gate(
                    name: "verify-clean", ok: v.ok,
                    detail: v.ok ? "last verify clean (\(v.mode))" : "last verify found \(v.mismatches) mismatches"))
            let age = Date().timeIntervalSince1970 - (v.finishedAt ?? 0)
            gates.append(
                Gate(
                    name: "verify-fresh", ok: age <= plan.cutover.maxVerifyAge,
                    detail: "last verify \(Units.formatDuration(age)) ago (max_verify_age \(Units.formatDuration(plan.cutover.maxVerifyAge)))"))
            if tap == nil {
                gates.append(
                    Gate(
                        name: "no-drift", ok: v.drift == 0,
                        detail: v.drift == 0
                            ? "source unchanged since the snapshot at the last verify"
                            : "\(v.drift) source changes since the snapshot; run `ferry run --catch-up`"))
            }
        } else {
            gates.append(Gate(name: "verify-clean", ok: false, detail: "never verified"))
        }
        let unsettled = try ledger.unsettledCount()
        gates.append(
            Gate(
                name: "no-pending-catch-up", ok: unsettled == 0,
                detail: unsettled == 0 ? "every entry copied" : "\(unsettled) entries pending, failed or removed from the source"))
        if let tap { gates.append(contentsOf: tapGates(tap, job: job)) }
        let control = try ledger.controlSettings()
        let since = control.postponedAt.map { " at \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: $0)))" } ?? ""
        gates.append(
            Gate(
                name: "not-postponed", ok: !control.postponed,
                detail: control.postponed
                    ? "postponed by `ferry ctl postpone`\(since); `ferry ctl \(plan.file) unpostpone` releases it"
                    : "no postpone flag set"))
        return gates
    }

    /// With a tap, live writes after the snapshot are the tap's to carry: the gates are that it was armed
    /// before the snapshot, is running, and both sides are caught up to within `max_tap_lag`.
    func tapGates(_ tap: any TapControl, job: JobRecord?) -> [Gate] {
        var gates: [Gate] = []
        gates.append(
            Gate(
                name: "tap-armed", ok: job?.tapSeq != nil,
                detail: job?.tapSeq.map { "armed at sequence \($0), before the snapshot" } ?? "the tap was never armed by `ferry run`"))
        let maxLag = plan.cutover.maxTapLag ?? 30
        do {
            guard let s = try tap.status() else {
                gates.append(Gate(name: "tap-running", ok: false, detail: "the tap is not running; `ferry run` or `ferry tap` starts it"))
                return gates
            }
            gates.append(Gate(name: "tap-running", ok: true, detail: "pid \(s.pid), mode \(s.mode.rawValue), sequence \(s.head)"))
            for u in s.upstreams where u.role != "detached" {
                let ok = u.connected && u.lagSeconds <= maxLag
                var detail = "\(u.address) \(u.connected ? "connected" : "DOWN"), lag \(Units.formatDecimal(u.lagSeconds, places: 1)) s"
                detail += ", spooled \(Units.formatBytes(Int64(u.spoolBytes))) (max_tap_lag \(Units.formatDuration(maxLag)))"
                gates.append(Gate(name: "tap-lag-\(u.name)", ok: ok, detail: detail))
            }
        } catch {
            gates.append(Gate(name: "tap-running", ok: false, detail: "cannot ask the tap: \(error)"))
        }
        return gates
    }

    /// Sends a marker datapoint through the tap and waits until the upstream `side` has it and `store` shows
    /// it: everything the tap accepted before the marker has then been delivered to that side.
    /// Returns the gate line saying how the landing was proven. A store that cannot be read for the marker
    /// (fs, ceres) cannot tell whether it landed: the fence then passes on the tap's cursor alone (the upstream
    /// took the marker and everything before it), and the line says so.
    @discardableResult
    func fence(_ tap: any TapControl, side: String, store: (any Store)?, ledger: Ledger) throws -> Gate {
        let timeout = fenceTimeout
        let token = FenceToken.forJob(plan.name, now: Int(Date().timeIntervalSince1970), namespace: plan.cutover.fenceNamespace)
        let metric = token.name
        let seq = try tap.fence(token)
        try ledger.recordEvent("fence", "marker \(metric)=\(token.serial) at \(token.issuedAt) sent to \(side) (sequence \(seq))")
        logger.info("fence sent; waiting for it at \(side)", metadata: ["metric": "\(metric)", "sequence": "\(seq)"])
        let checker = store as? any FenceChecking
        let deadline = Date().addingTimeInterval(timeout)
        var delivered = false
        var landed = checker == nil
        while Date() < deadline {
            if !delivered, let s = try tap.status(), let u = s.upstreams.first(where: { $0.name == side }), u.cursor >= seq {
                delivered = true
            }
            if delivered && !landed { landed = (try? checker?.hasFence(token)) == true }
            if delivered && landed {
                let detail =
                    checker == nil
                    ? "cannot tell: \(store.map { "\($0.displayName)" } ?? side) cannot be read for the marker; passed on the tap's cursor (\(side) took it and everything before it)"
                    : "marker delivered to \(side) and read back from \(store.map { "\($0.displayName)" } ?? side)"
                try ledger.recordEvent("fence", detail)
                return Gate(name: "fence-\(side)", ok: true, detail: detail)
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let what = delivered ? "delivered to \(side) but not readable in \(store.map { "\($0.displayName)" } ?? side)" : "not delivered to \(side)"
        throw FerryError(.gateNotMet, "fence marker \(metric) \(what) within \(Units.formatDuration(timeout)) (tap.fence_timeout)")
    }

    /// Checks the gates, runs the plan's hooks in order and records the cutover.
    public func cutover(force: Bool) throws -> CutoverResult {
        let lock = try JobLock(stateDirectory: plan.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let ledger = try openLedger(create: false)
        guard let job = try ledger.job() else { throw FerryError(.stateConflict, "no job yet: run `ferry run` first") }
        if job.phase == .switched, let at = job.cutoverAt {
            // Recorded, but a crash may have come before the tap was switched: finish the step.
            if let tap, let s = try? tap.status(), s.mode != .reverse && s.mode != .single { try tap.setMode(.reverse) }
            return .alreadyDone(at: at)
        }
        var gates = try gates(ledger)
        // With a tap, entries the mirror is copying right now are pending until it has applied them: that gate
        // is judged after the fence, which waits for the mirror to apply everything before the freeze.
        let afterFence = tap != nil && gates.contains { $0.name == "no-pending-catch-up" && !$0.ok } && !force
        if afterFence { gates.removeAll { $0.name == "no-pending-catch-up" } }
        let failed = gates.filter { !$0.ok }
        if !failed.isEmpty && !force { return .refused(gates: gates) }
        if !failed.isEmpty {
            try ledger.recordEvent("cutover", "forced past: " + failed.map { "\($0.name) (\($0.detail))" }.joined(separator: "; "))
        }
        var shown = gates
        if let tap {
            // Record first, then act: the ledger says what the tap is being switched to before it is.
            try ledger.recordEvent("cutover", "tap to cutover mode; fencing towards new")
            try tap.setMode(.cutover)
            do {
                shown.append(try fence(tap, side: "new", store: destination, ledger: ledger))
            } catch {
                _ = try? tap.setMode(.mirror)
                try ledger.recordEvent("cutover", "aborted, back to ready: \(error)")
                shown.append(Gate(name: "fence-new", ok: false, detail: "\(error); cutover aborted, the tap is back in mirror mode"))
                return .refused(gates: shown)
            }
            if afterFence {
                let unsettled = try waitSettled(ledger)
                let gate = Gate(
                    name: "no-pending-catch-up", ok: unsettled == 0,
                    detail: unsettled == 0
                        ? "every entry copied (after the fence)"
                        : "\(unsettled) entries pending, failed or removed from the source after the fence; cutover aborted, the tap is back in mirror mode"
                )
                shown.append(gate)
                if !gate.ok {
                    _ = try? tap.setMode(.mirror)
                    try ledger.recordEvent("cutover", "aborted, back to ready: \(gate.detail)")
                    return .refused(gates: shown)
                }
            }
        }
        try ledger.recordEvent("cutover", "gates checked; running \(plan.cutover.hooks.count) hooks")
        try runHooks(plan.cutover.hooks, what: "cutover", forced: force && !failed.isEmpty, ledger: ledger) {
            if let tap { _ = try? tap.setMode(.mirror) }
        }
        try ledger.recordCutover(forced: force && !failed.isEmpty)
        if let tap { try tap.setMode(.reverse) }
        return .done(gates: shown, forced: force && !failed.isEmpty)
    }

    /// `tap.fence_timeout`: how long a fence, and the mirror's settling after it, may take.
    var fenceTimeout: Double { Double(plan.tap?.options["fence_timeout"].flatMap { Units.parseDuration($0) } ?? 60) }

    /// Waits (up to the fence timeout) for the mirror to settle what it is still copying; returns how many
    /// entries are left unsettled.
    func waitSettled(_ ledger: Ledger) throws -> Int64 {
        let timeout = fenceTimeout
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let n = try ledger.unsettledCount()
            if n == 0 || Date() >= deadline { return n }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    func runHooks(_ hooks: [String], what: String, forced: Bool, ledger: Ledger, onFailure: () -> Void) throws {
        for (i, hook) in hooks.enumerated() {
            var env = hookEnvironment()
            env["FERRY_HOOK_INDEX"] = String(i + 1)
            env["FERRY_HOOK_COUNT"] = String(hooks.count)
            env["FERRY_FORCED"] = forced ? "1" : "0"
            do {
                try ledgerlessRunHook(hook, what: "\(what) hook \(i + 1) of \(hooks.count)", environment: env)
                try ledger.recordEvent("\(what)-hook", "hook \(i + 1) ok: \(hook)")
            } catch {
                onFailure()
                try ledger.recordEvent("\(what)-hook", "hook \(i + 1) failed: \(hook)")
                try ledger.setLastError("\(error); \(what) not recorded, later hooks not run")
                throw FerryError(
                    .hookFailed,
                    "\(error); the \(what) stopped there (hooks after it did not run) and is not recorded. "
                        + "Fix the cause and run `ferry \(what)` again (hooks should be safe to re-run)")
            }
        }
    }

    /// Switches back to the old side inside the rollback window: a fence through the (reversed) tap must land
    /// at the old side, then the rollback hooks run, then the tap mirrors with the old side primary again.
    public func rollback() throws {
        let lock = try JobLock(stateDirectory: plan.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let ledger = try openLedger(create: false)
        guard let job = try ledger.job() else { throw FerryError(.stateConflict, "no job yet: nothing to roll back") }
        guard job.phase == .switched, let at = job.cutoverAt else {
            throw FerryError(.stateConflict, "the job is \(job.phase.rawValue), not cut over: nothing to roll back")
        }
        let window = plan.cutover.rollbackWindow ?? 86400
        let age = Date().timeIntervalSince1970 - at
        guard age <= window else {
            throw FerryError(
                .gateNotMet,
                "the rollback window closed: cut over \(Units.formatDuration(age)) ago, rollback_window is \(Units.formatDuration(window))")
        }
        if let tap {
            try fence(tap, side: "old", store: liveSource, ledger: ledger)
        }
        try ledger.recordEvent("rollback", "fence landed; running \(plan.cutover.rollbackHooks.count) rollback hooks")
        try runHooks(plan.cutover.rollbackHooks, what: "rollback", forced: false, ledger: ledger) {}
        try ledger.recordRollback()
        if let tap { try tap.setMode(.mirror) }
    }

    /// Ends the job after a cutover: the tap stops mirroring to the old side, once the old side has every write
    /// the tap took until now (within `tap.fence_timeout`); `force` ends it without what is still queued, recorded.
    public func complete(force: Bool = false) throws {
        let lock = try JobLock(stateDirectory: plan.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let ledger = try openLedger(create: false)
        guard let job = try ledger.job() else { throw FerryError(.stateConflict, "no job yet: nothing to complete") }
        guard job.phase == .switched || job.phase == .complete else {
            throw FerryError(.stateConflict, "the job is \(job.phase.rawValue): `ferry complete` follows `ferry cutover`")
        }
        if let tap, job.phase != .complete, let start = try tap.status(), start.mode != .single {
            // Nothing the tap accepted is left behind on a side it still feeds: wait for both to reach its head.
            let deadline = Date().addingTimeInterval(fenceTimeout)
            var behind: [TapUpstreamStatus] = []
            while true {
                guard let s = try tap.status() else { throw FerryError(.gateNotMet, "the tap stopped while `ferry complete` waited for it") }
                behind = s.upstreams.filter { $0.role != "detached" && $0.cursor < start.head }
                if behind.isEmpty || Date() >= deadline { break }
                Thread.sleep(forTimeInterval: 0.1)
            }
            if !behind.isEmpty {
                let what = behind.map {
                    "\($0.name) (\($0.address), \($0.connected ? "connected" : "DOWN"), lag \(Units.formatDecimal($0.lagSeconds, places: 1)) s)"
                }.joined(separator: ", ")
                guard force else {
                    throw FerryError(
                        .gateNotMet,
                        "not every write the tap took has reached \(what) within tap.fence_timeout; run `ferry complete` again "
                            + "once it has, or `ferry complete --force` to end the job without them (recorded)")
                }
                try ledger.recordEvent("complete", "forced: writes the tap still held for \(what) are not delivered")
            }
        }
        if job.phase != .complete { try ledger.recordComplete() }
        if let tap, (try? tap.status())?.mode != .single { try tap.setMode(.single) }
    }
}
