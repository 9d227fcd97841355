public import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

public let ferryVersion = "0.1.0"

public struct FerryCommand: ParsableCommand {
    public init() {}
    public static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Move and replicate large datasets between machines and stores with minimal downtime.",
        discussion: """
            Exit codes: 0 success (run: verified and ready for cutover), 1 verify found mismatches, 2 plan error,
            3 any other failure, 4 a cutover gate is not met.
            """,
        version: ferryVersion,
        subcommands: [
            PlanCommand.self, RunCommand.self, VerifyCommand.self, StatusCommand.self, CutoverCommand.self,
            RollbackCommand.self, CompleteCommand.self, TapCommand.self, MetricsCommand.self,
        ]
    )
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Flag(name: .long, help: "No progress output.")
    var quiet = false

    func logger() -> Logger {
        var l = Logger(label: "ferry") { StreamLogHandler.standardError(label: $0) }
        l.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return l
    }

    func progressOutput() -> ProgressTracker.ProgressOutput {
        if quiet { return .none }
        if isatty(2) == 1 { return .terminal }
        let interval = ProcessInfo.processInfo.environment["FERRY_PROGRESS_INTERVAL"].flatMap(Double.init) ?? 5
        return .log(interval: interval)
    }
}

enum Exit {
    static let mismatch: Int32 = 1
    static let planError: Int32 = 2
    static let failure: Int32 = 3
    static let gate: Int32 = 4
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data(("ferry: " + text + "\n").utf8))
}

/// Loads and validates the plan, printing every diagnostic and exiting 2 when it is invalid.
func loadPlan(_ path: String) throws -> Plan {
    let diagnostics: [PlanDiagnostic]
    do {
        let plan = try Backends.loader.load(file: path)
        // The stores' and the tap's own checks, every problem at once, located like the loader's.
        diagnostics = Backends.problems(plan).map { PlanLoader.diagnostic($0, plan: plan, displayPath: path) }
        if diagnostics.isEmpty { return plan }
    } catch {
        diagnostics = error.diagnostics
    }
    for d in diagnostics { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
    FileHandle.standardError.write(Data("ferry: plan \(path) is invalid (\(diagnostics.count) problem(s))\n".utf8))
    throw ExitCode(Exit.planError)
}

func makeJob(_ plan: Plan, _ options: GlobalOptions) throws -> Job {
    let source = try Backends.source(plan)
    let destination = try Backends.destination(plan)
    let job = Job(
        plan: plan, source: source, destination: destination, logger: options.logger(),
        progress: ProgressTracker(output: options.progressOutput()))
    job.tap = try Backends.tap(plan, launch: true)
    if job.tap != nil { job.liveSource = try Backends.liveSource(plan) }
    return job
}

/// Runs a command body, turning errors into a message on stderr and the documented exit code.
func guarded(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch let e as FerryError {
        printError(e.description)
        throw ExitCode(e.code == .invalidPlan ? Exit.planError : e.code == .gateNotMet ? Exit.gate : Exit.failure)
    } catch {
        printError("\(error)")
        throw ExitCode(Exit.failure)
    }
}

func writeJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    enc.keyEncodingStrategy = .convertToSnakeCase
    FileHandle.standardOutput.write(try enc.encode(value))
    FileHandle.standardOutput.write(Data("\n".utf8))
}

func out(_ s: String = "") { print(s) }

// MARK: - plan

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Work with plan files.", subcommands: [PlanCheck.self])
}

struct PlanCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Validate a plan: exit 0 when valid, 2 with precise errors when not.")
    @Argument(help: "The plan file (YAML).") var plan: String

    func run() throws {
        let p = try loadPlan(plan)
        out("plan \(plan) is valid: job '\(p.name)', \(p.source.displayName) → \(p.destination.displayName)")
        out("state: \(p.stateDirectory)")
        if let t = p.tap {
            let old = t.options["old"] ?? p.source.displayName, new = t.options["new"] ?? p.destination.displayName
            out("tap: \(t.kind), listening on \(t.options["listen"] ?? "?"), old \(old), new \(new)")
        }
    }
}

// MARK: - run

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Snapshot, copy and verify; stops when ready for cutover. Resumes where a previous run stopped.")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Flag(name: .long, help: "Inventory the source and estimate the copy; write nothing.") var dryRun = false
    @Flag(name: .long, help: "Re-scan the source and copy what changed since the snapshot.") var catchUp = false
    @Flag(name: .long, help: "Re-copy the entries that the last verify found bad.") var repair = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            if dryRun {
                try runDry(p)
                return
            }
            let job = try makeJob(p, global)
            Interruption.install()
            switch try job.run(RunOptions(catchUp: catchUp, repair: repair)) {
            case .alreadyDone(let why):
                out(why)
            case .ready(let report):
                printReport(report, stateDirectory: p.stateDirectory, plan: plan)
                out("job '\(p.name)' is ready for cutover: `ferry cutover \(plan)`")
            case .mismatches(let report):
                printReport(report, stateDirectory: p.stateDirectory, plan: plan)
                throw ExitCode(Exit.mismatch)
            }
        }
    }

    func runDry(_ p: Plan) throws {
        let source = try Backends.source(p)
        out("dry run: \(source.displayName) → \(p.destination.displayName) (nothing is written)")
        if p.snapshot.hook != nil { out("note: the snapshot hook is not run in a dry run; the live tree is inventoried") }
        let destination = try Backends.destination(p)
        let inv = try DryRun.inventory(source: source, destination: destination, plan: p)
        out("files        \(inv.files)  (\(Units.formatBytes(inv.bytes)))")
        out("directories  \(inv.directories)")
        out("symlinks     \(inv.symlinks)  (copy.symlinks: \(inv.symlinkPolicy))")
        if inv.hardLinks > 0 { out("hard links   \(inv.hardLinks)  (second names, linked at the destination)") }
        if inv.specials > 0 { out("specials     \(inv.specials)  (FIFOs, sockets, devices; copy.specials: copy)") }
        out("refused      \(inv.refusedCount)\(inv.refusedCount > 0 ? "  (the run will fail until each is fixed or covered by a policy)" : "")")
        for r in inv.refused.prefix(20) { out("  \(r)") }
        if inv.refusedCount > 20 { out("  ... and \(inv.refusedCount - 20) more") }
        if inv.xattrsNotKept > 0 {
            out("not kept     \(inv.xattrsNotKept) entries carry extended attributes or ACLs this destination cannot hold")
        }
        if inv.linksAsCopies > 0 { out("not kept     \(inv.linksAsCopies) hard-linked names become separate objects") }
        out("skipped by policy \(inv.skippedByPolicyCount)")
        for r in inv.skippedByPolicy.prefix(20) { out("  \(r)") }
        if inv.skippedByPolicyCount > 20 { out("  ... and \(inv.skippedByPolicyCount - 20) more") }
        out("size classes:")
        for b in inv.histogram where b.files > 0 {
            out("  \(pad(b.label, 12)) \(pad(String(b.files), 10)) files  \(Units.formatBytes(b.bytes))")
        }
        if !inv.largest.isEmpty {
            out("largest files:")
            for l in inv.largest { out("  \(pad(Units.formatBytes(l.size), 12))  \(RawName.display(l.path))") }
        }
        if !inv.topLevel.isEmpty {
            out("per top-level directory:")
            for t in inv.topLevel.prefix(30) {
                out("  \(pad(RawName.display(t.name), 30)) \(pad(String(t.files), 10)) files  \(Units.formatBytes(t.bytes))")
            }
            if inv.topLevel.count > 30 { out("  ... and \(inv.topLevel.count - 30) more") }
        }
        let bw = p.copy.bandwidth.map { Units.formatBytes($0) + "/s" } ?? "unlimited"
        out(
            "read probe   \(Units.formatBytes(Int64(inv.probeBytesPerSecond)))/s, "
                + "\(Units.formatDecimal(inv.probeSecondsPerFile * 1000, places: 2)) ms per file")
        out("estimate     about \(Units.formatDuration(inv.estimatedSeconds)) (concurrency \(p.copy.concurrency), bandwidth \(bw))")
    }
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

func printReport(_ r: VerifyReport, stateDirectory: String, plan: String = "PLAN") {
    let what = r.mode == "full" ? "full" : "sample \(Units.formatDecimal(r.sample * 100, places: 1))% (round \(r.round))"
    out(
        "verify: \(what), fresh walks of both sides (\(r.sourceEntries) source entries, \(r.destinationEntries) at the "
            + "destination), \(r.filesContentChecked) files hashed (\(Units.formatBytes(r.bytesChecked))) in \(Units.formatDuration(r.seconds))")
    if r.filesCheckedByStoredHash > 0 { out("proven by stored SHA-256 (not read back): \(r.filesCheckedByStoredHash) files") }
    if r.filesUnverified > 0 {
        out("not content-checked this round (outside the sample): \(r.filesUnverified) files; later rounds cover them")
    }
    if r.counts.skippedByPolicy > 0 {
        out("skipped by policy: \(r.counts.skippedByPolicy) (listed in the report; not failures)")
        for p in r.skippedByPolicy.prefix(10) { out("  \(RawName.display(p.path))  \(p.reason)") }
        if r.counts.skippedByPolicy > 10 { out("  ... see the JSON report for all of them") }
    }
    if r.counts.liveExtras > 0 { out("destination entries outside the source (live data, not compared): \(r.counts.liveExtras)") }
    if r.counts.leftoversRemoved > 0 { out("partial files of interrupted copies removed: \(r.counts.leftoversRemoved)") }
    if r.ok {
        out("result: CLEAN")
    } else {
        let c = r.counts
        var parts: [String] = []
        for (n, word) in [
            (c.missing, "missing"), (c.extra, "extra"), (c.differs, "differing"), (c.refused, "refused"),
            (c.notCopied, "not copied"), (c.unverifiable, "unverifiable"),
        ] where n > 0 {
            parts.append("\(n) \(word)")
        }
        out("result: MISMATCH, \(r.mismatches) problem(s): \(parts.joined(separator: ", "))")
        let shown = r.problems.prefix(50).map { (RawName.display($0.path), $0) }
        let width = min(60, max(4, shown.map(\.0.count).max() ?? 4))
        out("  \(pad("PATH", width))  \(pad("WHAT", 12))  REASON")
        for (path, p) in shown { out("  \(pad(path, width))  \(pad(p.kind, 12))  \(p.reason)") }
        if r.problems.count > 50 || r.problemsTruncated { out("  ... see the JSON report for all of them") }
        out("what fixes them:")
        if c.refused > 0 {
            out(
                "  refused: fix or remove each entry at the source, or cover it with a plan policy (copy.symlinks, "
                    + "copy.specials, exclude), then `ferry run \(plan) --catch-up`")
        }
        if c.missing + c.differs + c.notCopied > 0 { out("  missing, differing, not copied: `ferry run \(plan) --repair` copies them again") }
        if c.extra > 0 { out("  extra: the destination holds entries the source does not; remove them there (ferry deletes only what it copied)") }
        if c.unverifiable > 0 { out("  unverifiable: make the destination entries readable, then `ferry verify \(plan)`") }
    }
    if r.drift.total > 0 {
        out(
            "source drift since the snapshot: \(r.drift.changed) changed, \(r.drift.added) new, \(r.drift.deleted) removed "
                + "(`ferry run --catch-up` copies them)")
    }
    out("report: \(stateDirectory)/verify-\(r.run).json")
}

// MARK: - verify

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Prove parity between source and destination: exit 0 clean, 1 mismatch.")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Flag(name: .long, help: "Print the report as JSON on stdout.") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            let job = try makeJob(p, global)
            let report = try job.verifyOnly()
            if json { try writeJSON(report) } else { printReport(report, stateDirectory: p.stateDirectory, plan: plan) }
            if !report.ok { throw ExitCode(Exit.mismatch) }
        }
    }
}

// MARK: - status

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
                out("live         \(r.liveFilesDone) files, \(Units.formatBytes(r.liveBytesDone)) (this run's counters)")
            }
            out("other        \(s.directories) directories, \(s.symlinks) symlinks, \(s.skipped) refused entries")
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
            if let t = tapStatus {
                printTap(t)
            } else if p.tap != nil {
                out("tap          NOT RUNNING (`ferry run` or `ferry tap \(plan)` starts it)")
            }
        }
    }
}

// MARK: - cutover

struct CutoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cutover",
        abstract: "Check the gates, run the plan's cutover hooks and record the switch (exit 4 when a gate is not met).")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Flag(name: .long, help: "Cut over even when gates are not met (recorded in the ledger).") var force = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            let job = try makeJob(p, global)
            func show(_ gates: [Gate]) {
                for g in gates { out("  [\(g.ok ? "ok" : "FAIL")] \(pad(g.name, 20)) \(g.detail)") }
            }
            switch try job.cutover(force: force) {
            case .alreadyDone(let at):
                out("already cut over at \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: at))); nothing to do")
            case .refused(let gates):
                out("cutover refused: gates not met")
                show(gates)
                printError("cutover gate not met: " + gates.filter { !$0.ok }.map(\.name).joined(separator: ", "))
                throw ExitCode(Exit.gate)
            case .done(let gates, let forced):
                show(gates)
                out(forced ? "cutover done (FORCED past unmet gates; recorded)" : "cutover done")
            }
        }
    }
}

// MARK: - rollback, complete

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Switch back to the old side inside the rollback window (fence, rollback hooks, tap to mirror).")
    @Argument(help: "The plan file (YAML).") var plan: String
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            try makeJob(p, global).rollback()
            out("rolled back: the old side is primary again and the tap mirrors to the new side; the job is ready")
        }
    }
}

struct CompleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "complete", abstract: "End a cut-over job: the tap stops mirroring to the old side.")
    @Argument(help: "The plan file (YAML).") var plan: String
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            try makeJob(p, global).complete()
            out("job complete" + (p.tap != nil ? "; the tap now feeds the new side only" : ""))
        }
    }
}
