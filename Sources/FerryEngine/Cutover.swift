import Foundation
import FerryCore

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
            gates.append(
                Gate(
                    name: "no-drift", ok: v.drift == 0,
                    detail: v.drift == 0
                        ? "source unchanged since the snapshot at the last verify"
                        : "\(v.drift) source changes since the snapshot; run `ferry run --catch-up`"))
        } else {
            gates.append(Gate(name: "verify-clean", ok: false, detail: "never verified"))
        }
        let unsettled = try ledger.unsettledCount()
        gates.append(
            Gate(
                name: "no-pending-catch-up", ok: unsettled == 0,
                detail: unsettled == 0 ? "every entry copied" : "\(unsettled) entries pending, failed or removed from the source"))
        return gates
    }

    /// Checks the gates, runs the plan's hooks in order and records the cutover.
    public func cutover(force: Bool) throws -> CutoverResult {
        let lock = try JobLock(stateDirectory: plan.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let ledger = try openLedger(create: false)
        guard let job = try ledger.job() else { throw FerryError(.stateConflict, "no job yet: run `ferry run` first") }
        if job.phase == .switched, let at = job.cutoverAt { return .alreadyDone(at: at) }
        let gates = try gates(ledger)
        let failed = gates.filter { !$0.ok }
        if !failed.isEmpty && !force { return .refused(gates: gates) }
        if !failed.isEmpty {
            try ledger.recordEvent("cutover", "forced past: " + failed.map { "\($0.name) (\($0.detail))" }.joined(separator: "; "))
        }
        try ledger.recordEvent("cutover", "gates checked; running \(plan.cutover.hooks.count) hooks")
        for (i, hook) in plan.cutover.hooks.enumerated() {
            var env = hookEnvironment()
            env["FERRY_HOOK_INDEX"] = String(i + 1)
            env["FERRY_HOOK_COUNT"] = String(plan.cutover.hooks.count)
            env["FERRY_FORCED"] = force && !failed.isEmpty ? "1" : "0"
            do {
                try ledgerlessRunHook(hook, what: "cutover hook \(i + 1) of \(plan.cutover.hooks.count)", environment: env)
                try ledger.recordEvent("cutover-hook", "hook \(i + 1) ok: \(hook)")
            } catch {
                try ledger.recordEvent("cutover-hook", "hook \(i + 1) failed: \(hook)")
                try ledger.setLastError("\(error); cutover not recorded, later hooks not run")
                throw FerryError(
                    .hookFailed,
                    "\(error); the cutover stopped there (hooks after it did not run) and is not recorded. "
                        + "Fix the cause and run `ferry cutover` again (hooks should be safe to re-run)")
            }
        }
        try ledger.recordCutover(forced: force && !failed.isEmpty)
        return .done(gates: gates, forced: force && !failed.isEmpty)
    }
}
