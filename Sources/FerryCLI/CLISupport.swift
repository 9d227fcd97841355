import ArgumentParser
import CFerrySys
import FerryCore
import FerryEngine
import Foundation
import Logging

public let ferryVersion = "0.1.0"

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Flag(name: .long, help: "No progress output and no info or notice lines: warnings and errors only.")
    var quiet = false

    @Option(name: .long, help: "Log lines as text (the message first) or json (one object per line).")
    var logFormat: String = "text"

    /// `--log-format` (validated before any command runs).
    var format: LogFormat { LogFormat(rawValue: logFormat) ?? .text }

    func logger() -> Logger {
        let format = self.format
        var l = Logger(label: "ferry") { _ in FerryLogHandler(format: format) }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        l.logLevel = quiet ? max(level, .warning) : level
        return l
    }

    mutating func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level: expected one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), got \(logLevel)")
        }
        guard LogFormat(rawValue: logFormat) != nil else {
            throw ValidationError("--log-format: expected text or json, got \(logFormat)")
        }
    }

    func progressOutput() -> ProgressTracker.ProgressOutput {
        if quiet { return .none }
        if isatty(2) == 1 { return .terminal }
        let interval = ProcessInfo.processInfo.environment["FERRY_PROGRESS_INTERVAL"].flatMap(Double.init) ?? 5
        return format == .json ? .json(interval: interval) : .log(interval: interval)
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

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

func printReport(_ r: VerifyReport, stateDirectory: String, plan: String = "PLAN", tapped: Bool = false) {
    let what = r.mode == "full" ? "full" : "sample \(Units.formatDecimal(r.sample * 100, places: 1))% (round \(r.round))"
    out(
        "verify: \(what), fresh walks of both sides (\(r.sourceEntries) source entries, \(r.destinationEntries) at the "
            + "destination), \(r.filesContentChecked) files hashed (\(Units.formatBytes(r.bytesChecked))) in \(Units.formatElapsed(r.seconds))")
    if r.filesReadBackDuringCopy > 0 {
        out("read back while copied, unchanged since (same device, inode, size, mtime and change time): \(r.filesReadBackDuringCopy) of them")
    }
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
        // With a tap, what changed after the snapshot is the tap's to carry (the cutover gates on its lag): a
        // catch-up walk would add nothing.
        out(
            "source drift since the snapshot: \(r.drift.changed) changed, \(r.drift.added) new, \(r.drift.deleted) removed "
                + (tapped
                    ? "(live writes: the tap carries them, and the cutover waits for its lag; no catch-up is needed)"
                    : "(`ferry run --catch-up` copies them)"))
    }
    out("report: \(stateDirectory)/verify-\(r.run).json")
}

// MARK: - verify

/// Process-wide settings made once, before any command runs.
public enum FerryProcess {
    /// Allocations up to 72 MiB (a 64 MiB chunk and its encoding) come from the heap, and up to 128 MiB freed
    /// stays with the process.
    public static func keepFreedMemory() { ferry_keep_freed_memory(72 << 20, 128 << 20) }
}
