import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show the job's phase and progress (safe while a run is working).")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            let job = try makeJob(p, global)
            let tapStatus = try Backends.tap(p, launch: false)?.status()
            guard let s = try job.status() else {
                if json {
                    struct NotStarted: Encodable {
                        var schemaVersion = StatusReport.currentSchema
                        var job: String
                        var phase = "not-started"
                        var tap: TapStatus?
                    }
                    try writeJSON(NotStarted(job: p.name, tap: tapStatus))
                } else {
                    out("job '\(p.name)' has not started (no state at \(p.stateDirectory)); `ferry run \(plan)` starts it")
                    if let t = tapStatus { printTap(t) }
                }
                return
            }
            if json {
                var s = s
                s.tap = tapStatus
                try writeJSON(s)
                return
            }
            out("job          \(s.job)  (\(plan))")
            var phase = s.phase
            if let r = s.runner, r.alive {
                phase += "  (running: pid \(r.pid)"
                if let age = r.heartbeatAgeSeconds { phase += ", heartbeat \(Units.formatDuration(age)) ago" }
                phase += ")"
            }
            out("phase        \(phase)")
            out("source       \(s.source)")
            out("destination  \(s.destination)")
            if let at = s.snapshotAt { out("snapshot     \(at)") }
            let pct = s.bytesTotal > 0 ? Int(Double(s.bytesDone) / Double(s.bytesTotal) * 100) : 100
            var files = "\(s.filesDone)/\(s.filesTotal) done"
            if s.filesPending > 0 { files += ", \(s.filesPending) pending" }
            if s.filesFailed > 0 { files += ", \(s.filesFailed) failed" }
            if s.filesVanished > 0 { files += ", \(s.filesVanished) removed from the source" }
            out("files        \(files)")
            out("bytes        \(Units.formatBytes(s.bytesDone)) / \(Units.formatBytes(s.bytesTotal)) (\(pct)%)")
            if let r = s.runner, r.alive {
                // The runner's counters lead the ledger by what is written but not yet committed (a group commits
                // once its bytes are durable): shown as that difference, so the two never seem to disagree. In
                // the verify phase they count the verify's own progress.
                if s.phase == Phase.copy.rawValue {
                    let files = max(0, r.liveFilesDone - s.filesDone), bytes = max(0, r.liveBytesDone - s.bytesDone)
                    if files > 0 || bytes > 0 {
                        out("in flight    \(files) files, \(Units.formatBytes(bytes)) written, not yet committed to the ledger")
                    }
                } else if s.phase == Phase.verify.rawValue {
                    out("verifying    \(r.liveFilesDone) files, \(Units.formatBytes(r.liveBytesDone)) checked so far")
                }
            }
            out("other        \(s.directories) directories, \(s.symlinks) symlinks, \(s.skipped) refused entries")
            if s.wireBytes > 0 {
                let ratio = s.wireLogical > 0 ? Units.formatDecimal(Double(s.wireBytes) / Double(s.wireLogical), places: 2) : "-"
                out("wire         \(Units.formatBytes(s.wireBytes)) for \(Units.formatBytes(s.wireLogical)) logical (ratio \(ratio))")
            }
            if let v = s.lastVerify {
                let age = Units.formatDuration(Date().timeIntervalSince1970 - (v.finishedAt ?? v.startedAt))
                out(
                    "verify       \(v.ok ? "clean" : "\(v.mismatches) mismatches"), \(age) ago (\(v.mode), "
                        + "\(v.filesChecked) files hashed)\(v.drift > 0 ? ", source drift \(v.drift)" : "")")
            } else {
                out("verify       never")
            }
            out("cutover      \(s.cutoverAt.map { "done at \($0)\(s.cutoverForced ? " (forced)" : "")" } ?? "not yet")")
            if let e = s.lastError { out("last error   \(e)") }
            let c = s.control
            if c != ControlSettings() {
                var set: [String] = []
                if c.paused { set.append("PAUSED") }
                if let t = c.throttle { set.append("throttle \(t == 0 ? "off" : Units.formatBytes(t) + "/s")") }
                if let n = c.concurrency { set.append("concurrency \(n)") }
                if c.postponed { set.append("cutover POSTPONED") }
                if !set.isEmpty { out("ferry ctl    " + set.joined(separator: ", ") + " (`ferry ctl \(plan) status`)") }
            }
            if let t = tapStatus {
                printTap(t)
            } else if p.tap != nil {
                out("tap          NOT RUNNING (`ferry run` or `ferry tap \(plan)` starts it)")
            }
        }
    }
}

// MARK: - cutover
