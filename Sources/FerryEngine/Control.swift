public import FerryCore
import Foundation
import GRDB

/// One `ferry ctl` command, as typed (`throttle 20MiB/s`), in the forms gh-ost's interactive commands use.
public enum ControlCommand: Sendable, Equatable {
    public enum Throttle: Sendable, Equatable {
        /// Back to `copy.bandwidth` (its timetable, if it has one).
        case plan
        case unlimited
        case rate(Int64)
    }
    case pause, resume, postpone, unpostpone, status
    case throttle(Throttle)
    /// nil: back to `copy.concurrency`.
    case concurrency(Int?)

    public static let usage =
        "commands: pause | resume | throttle RATE|off|plan | concurrency N|plan | postpone | unpostpone | status"

    /// Parses one command line; the error says what was wrong.
    public static func parse(_ line: String) -> Result<ControlCommand, FerryError> {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
        func bad(_ why: String) -> Result<ControlCommand, FerryError> { .failure(FerryError(.other, why + "; " + usage)) }
        guard let verb = words.first else { return bad("empty command") }
        let args = Array(words.dropFirst())
        func noArgs(_ c: ControlCommand) -> Result<ControlCommand, FerryError> {
            args.isEmpty ? .success(c) : bad("`\(verb)` takes no argument")
        }
        switch verb {
        case "pause": return noArgs(.pause)
        case "resume": return noArgs(.resume)
        case "postpone": return noArgs(.postpone)
        case "unpostpone": return noArgs(.unpostpone)
        case "status": return noArgs(.status)
        case "throttle":
            guard args.count == 1 else { return bad("`throttle` takes one rate, such as 20MiB/s, or off, or plan") }
            if args[0] == "plan" { return .success(.throttle(.plan)) }
            switch Units.parseRate(args[0]) {
            case .success(let r): return .success(.throttle(r.map { .rate($0) } ?? .unlimited))
            case .failure: return bad("`throttle` expected a rate such as 20MiB/s, or off, or plan, got \"\(args[0].prefix(40))\"")
            }
        case "concurrency":
            guard args.count == 1 else { return bad("`concurrency` takes one number, or plan") }
            if args[0] == "plan" { return .success(.concurrency(nil)) }
            guard let n = Int(args[0]), (1...Steering.maxConcurrency).contains(n) else {
                return bad("`concurrency` expected a number from 1 to \(Steering.maxConcurrency), or plan, got \"\(args[0].prefix(40))\"")
            }
            return .success(.concurrency(n))
        default:
            return bad("unknown command \"\(verb.prefix(40))\"")
        }
    }
}

extension Ledger {
    /// What `ferry ctl` has set (the defaults when nothing was).
    public func controlSettings() throws -> ControlSettings {
        try wrap("read control settings") { try db.read { try Self.controlSettings($0) } }
    }

    static func controlSettings(_ db: Database) throws -> ControlSettings {
        guard let text = try String.fetchOne(db, sql: "SELECT settings FROM control WHERE id = 1") else { return ControlSettings() }
        return try JSONDecoder().decode(ControlSettings.self, from: Data(text.utf8))
    }

    /// Changes the settings in one transaction and records `event` in the event log.
    func updateControlSettings(event: String, _ change: (inout ControlSettings) -> Void) throws -> ControlSettings {
        try wrap("record control settings") {
            try db.write { db in
                var s = try Self.controlSettings(db)
                change(&s)
                let text = String(decoding: try JSONEncoder().encode(s), as: UTF8.self)
                try db.execute(
                    sql: "INSERT INTO control (id, settings, updated_at) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET settings = ?, updated_at = ?",
                    arguments: [text, Self.now, text, Self.now])
                try Self.event(db, "control", event)
                return s
            }
        }
    }
}

extension Job {
    /// Carries out one control command: the ledger records it (every worker on the job follows within a second,
    /// and so does the next run), this process applies it at once. Returns the answer for the operator.
    /// `live` says whether this process is running the job (its copy threads follow the steering).
    public func control(_ command: ControlCommand, ledger: Ledger, live: Bool, by who: String) throws -> String {
        guard try ledger.job() != nil else {
            throw FerryError(.stateConflict, "no job yet: `ferry run` creates it (ferry ctl steers a job)")
        }
        func update(_ event: String, _ change: (inout ControlSettings) -> Void) throws -> ControlSettings {
            let s = try ledger.updateControlSettings(event: "\(event) (ferry ctl, \(who))", change)
            steering.apply(s)
            return s
        }
        let later = live ? "" : " (no ferry run is active on this job: the next one follows it)"
        switch command {
        case .status:
            return try controlStatus(ledger, live: live)
        case .pause:
            _ = try update("paused") { $0.paused = true }
            guard live else { return "paused\(later)" }
            let t = steering.awaitParked(timeout: 10)
            if t.running == 0 {
                // A verify (or the steps around the copy) goes on: only the copy holds.
                return "paused: no copy thread is working now; the copy holds before its next chunk until `resume`"
            }
            if t.parked < t.running {
                return "pausing: \(t.parked) of \(t.running) copy threads parked, the others finish the chunk they hold"
            }
            return "paused: \(t.parked) of \(t.running) copy threads parked; no bytes move until `resume`"
        case .resume:
            _ = try update("resumed") { $0.paused = false }
            return "resumed\(later)"
        case .throttle(let t):
            let (event, value): (String, Int64?) =
                switch t {
                case .plan: ("throttle back to copy.bandwidth (\(plan.copy.bandwidthSchedule))", nil)
                case .unlimited: ("throttle off (unlimited)", 0)
                case .rate(let r): ("throttle \(Units.formatBytes(r))/s", r)
                }
            let s = try update(event) { $0.throttle = value }
            return "rate limit now \(rateText(s))\(later)"
        case .concurrency(let n):
            let s = try update(n.map { "concurrency \($0)" } ?? "concurrency back to copy.concurrency (\(plan.copy.concurrency))") {
                $0.concurrency = n
            }
            return "concurrency now \(s.concurrency ?? plan.copy.concurrency) copy threads (threads beyond it park after their current page)\(later)"
        case .postpone:
            _ = try update("cutover postponed") {
                $0.postponed = true
                $0.postponedAt = Date().timeIntervalSince1970
            }
            return "postponed: the job holds at ready and `ferry cutover` refuses until `ferry ctl \(plan.file) unpostpone`"
        case .unpostpone:
            _ = try update("cutover no longer postponed") {
                $0.postponed = false
                $0.postponedAt = nil
            }
            return "unpostponed: `ferry cutover` may go ahead once its gates are met"
        }
    }

    /// The rate in force now and where it comes from.
    func rateText(_ s: ControlSettings) -> String {
        let now = s.rate(plan.copy.bandwidthSchedule, at: Date()).map { Units.formatBytes($0) + "/s" } ?? "unlimited"
        switch s.throttle {
        case .some(0): return "\(now) (ferry ctl throttle off)"
        case .some: return "\(now) (ferry ctl throttle)"
        case .none:
            return plan.copy.bandwidthSchedule.isTimetable
                ? "\(now) (copy.bandwidth timetable \(plan.copy.bandwidthSchedule))" : "\(now) (copy.bandwidth)"
        }
    }

    func controlStatus(_ ledger: Ledger, live: Bool) throws -> String {
        let s = try ledger.controlSettings()
        let job = try ledger.job()
        var lines = ["job \(plan.name): \(job?.phase.rawValue ?? "none")\(live ? ", running in pid \(getpid())" : ", no ferry run active")"]
        if live {
            let p = progress.snapshot
            lines.append("copied \(p.filesDone) files, \(Units.formatBytes(p.bytesDone))")
            let t = steering.threads
            lines.append("copy threads \(t.running) working, \(t.parked) of them parked in a pause")
        }
        lines.append("paused \(s.paused ? "yes (`resume` releases it)" : "no")")
        lines.append("rate limit \(rateText(s))")
        lines.append(
            "concurrency \(s.concurrency ?? plan.copy.concurrency)\(s.concurrency == nil ? " (copy.concurrency)" : " (ferry ctl; the plan says \(plan.copy.concurrency))")"
        )
        let since = s.postponedAt.map { " since \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: $0)))" } ?? ""
        lines.append("postponed \(s.postponed ? "yes\(since) (`unpostpone` releases it)" : "no")")
        return lines.joined(separator: "\n")
    }

    /// Follows the ledger's control settings (set by `ferry ctl` through another process, or before this run)
    /// until the returned function is called.
    public func followControl(_ ledger: Ledger) -> @Sendable () -> Void {
        let done = DispatchSemaphore(value: 0)
        if let s = try? ledger.controlSettings() {
            steering.apply(s)
            if s.paused { logger.warning("the job is paused (ferry ctl pause); `ferry ctl \(plan.file) resume` releases it") }
        }
        let steering = self.steering
        let logger = self.logger
        let thread = Thread {
            var last = steering.current
            while done.wait(timeout: .now() + 1) == .timedOut {
                do {
                    let s = try ledger.controlSettings()
                    if s != last {
                        steering.apply(s)
                        last = s
                    }
                } catch {
                    logger.warning("reading the control settings failed: \(error)")
                }
            }
        }
        thread.name = "ferry-control"
        thread.start()
        return { done.signal() }
    }
}
