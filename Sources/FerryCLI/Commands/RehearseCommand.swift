import ArgumentParser
import FerryCore
import FerryEngine
import FerryTap
import Foundation
import Logging

struct RehearseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rehearse",
        abstract: "Rehearse a plan on staging (every phase, then rollback and teardown) and project production's timeline.",
        discussion: """
            The staging plan is STAGING_PLAN (--against), or PLAN with --set overrides (`--set source.path=/staging/src
            --set destination.path=/staging/dst`; without `--set state=...` staging keeps its state in PLAN's state dir,
            under rehearsal/). On staging it runs the tap, the snapshot, the copy or merge, the verify and the cutover,
            with the hooks seeing FERRY_REHEARSAL=1; then the rollback, stops the tap and restores staging's destination
            to what it was before. Production is only listed (a dry run). The projection (each phase's measured rate
            times production's inventory, the cutover window, the tap spool needed) is printed and saved as
            rehearsal.json in PLAN's state dir, where `ferry report` shows it.
            """)
    @Argument(help: "The production plan file (YAML); only listed.") var plan: String
    @Option(name: .long, help: "The staging plan file.") var against: String?
    @Option(name: .customLong("set"), help: "key.path=value: an override of PLAN for staging (repeatable).") var sets: [String] = []
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let production = try loadPlan(plan)
        var temporaryPlan: String?
        defer { if let t = temporaryPlan { unlink(t) } }
        let stagingFile: String
        if let against {
            guard sets.isEmpty else { throw ValidationError("give --against or --set, not both") }
            stagingFile = against
        } else if !sets.isEmpty {
            stagingFile = try writeOverriddenPlan(production)
            temporaryPlan = stagingFile
        } else {
            throw ValidationError("a rehearsal needs a staging plan: --against STAGING_PLAN, or --set key=value overrides of PLAN")
        }
        let staging = try loadPlan(stagingFile)
        let stagingName = against ?? ([plan] + sets.map { "--set \($0)" }).joined(separator: " ")
        try guarded {
            try refuseProduction(staging, production)
            let logger = global.logger()
            out("rehearsal of \(production.name) on staging: \(staging.source.displayName) → \(staging.destination.displayName)")
            out("production inventory: a dry run of \(plan) (a listing only, nothing is written)")
            let prodInv = try DryRun.inventory(
                source: try Backends.source(production), destination: try Backends.destination(production), plan: production)
            let stagInv = try DryRun.inventory(source: try Backends.source(staging), destination: try Backends.destination(staging), plan: staging)
            try freshStagingState(staging)
            let image = try DestinationImage.capture(staging)
            setenv("FERRY_REHEARSAL", "1", 1)
            let job = try makeJob(staging, global)
            Interruption.install()
            var measured = Measured()
            do {
                measured = try rehearse(job, logger: logger)
            } catch {
                stopTap(job)
                let back = (try? image.restore()) != nil
                printError(
                    "the rehearsal stopped: \(error); staging's destination \(back ? "was restored" : "could NOT be restored (\(image.path))")")
                throw error
            }
            stopTap(job)
            try image.restore()
            let rehearsal = try project(
                production: production, staging: staging, stagingName: stagingName, prodInv: prodInv, stagInv: stagInv, measured: measured)
            try rehearsal.save(in: production.stateDirectory)
            try rehearsal.save(in: staging.stateDirectory)
            for line in rehearsal.lines { out(line) }
            out("saved: \(Rehearsal.file(in: production.stateDirectory)) (`ferry report \(plan) --html FILE` shows it)")
        }
    }

    /// Marks a state dir as a rehearsal's, so the next rehearsal may clear it.
    static let marker = "rehearsal.staging"

    /// PLAN with the overrides, written beside it (relative paths resolve the same), removed when done.
    func writeOverriddenPlan(_ production: Plan) throws -> String {
        guard let text = try? String(contentsOfFile: production.file, encoding: .utf8) else {
            throw ValidationError("cannot read \(production.file)")
        }
        var all = sets
        if !sets.contains(where: { $0.hasPrefix("state=") }) { all.append("state=\(production.stateDirectory)/rehearsal") }
        let overridden: String
        do { overridden = try PlanLoader.applyOverrides(text, all) } catch {
            for d in error.diagnostics { printError("\(d)") }
            throw ExitCode(Exit.planError)
        }
        let path = PathUtil.directory(of: production.file) + "/.ferry-rehearsal-\(getpid())-" + (production.file as NSString).lastPathComponent
        do { try overridden.write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw FerryError(.other, "cannot write the staging plan beside \(production.file)", underlying: error)
        }
        return path
    }

    /// Staging must not be production: not its state, its source, its destination, or its tap's address.
    func refuseProduction(_ s: Plan, _ p: Plan) throws {
        var same: [String] = []
        if s.stateDirectory == p.stateDirectory { same.append("state dir (\(p.stateDirectory))") }
        if s.source.identity == p.source.identity { same.append("source (\(p.source.displayName))") }
        if s.destination.identity == p.destination.identity { same.append("destination (\(p.destination.displayName))") }
        if let a = s.tap?.options["listen"], a == p.tap?.options["listen"] { same.append("tap listen address (\(a))") }
        guard same.isEmpty else {
            throw FerryError(
                .invalidPlan, "the staging plan shares production's " + same.joined(separator: ", ") + "; a rehearsal never touches production")
        }
    }

    /// A rehearsal starts from a new staging job; a previous rehearsal's state is cleared, anything else refused.
    func freshStagingState(_ s: Plan) throws {
        let dir = s.stateDirectory
        let fm = FileManager.default
        if Ledger.exists(in: dir) {
            guard fm.fileExists(atPath: dir + "/" + Self.marker) else {
                throw FerryError(
                    .stateConflict, "the staging state dir \(dir) holds a job that is not a rehearsal's; give staging a state dir of its own")
            }
            do { try fm.removeItem(atPath: dir) } catch {
                throw FerryError(.other, "cannot clear the previous rehearsal's state at \(dir)", underlying: error)
            }
        }
        do {
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try Data("a rehearsal's staging job: the next `ferry rehearse` clears this directory\n".utf8).write(
                to: URL(fileURLWithPath: dir + "/" + Self.marker))
        } catch {
            throw FerryError(.other, "cannot prepare the staging state dir \(dir)", underlying: error)
        }
    }

    struct Measured {
        var cutoverSeconds: Double?
        var rollbackSeconds: Double?
        var ingest: (lines: UInt64, seconds: Double)?
        var spoolLimit: UInt64?
        var journalBytesPerRecord: Double?
        var trace: [ProgressTrace.Point] = []
    }

    /// Every phase on staging: run (tap, snapshot, copy or merge, verify), cutover, rollback.
    func rehearse(_ job: Job, logger: Logger) throws -> Measured {
        var m = Measured()
        let sampler = TapSampler(job.tap)
        let trace = ProgressTrace(job.progress)
        defer { _ = trace.stop() }
        let outcome = try job.run(RunOptions())
        m.trace = trace.stop()
        switch outcome {
        case .ready: out("staging: verified clean and ready")
        case .mismatches(let r): throw FerryError(.other, "staging's verify found \(r.mismatches) mismatches; fix them before projecting")
        case .alreadyDone(let why): throw FerryError(.stateConflict, "staging job: \(why)")
        }
        let c0 = Date()
        switch try job.cutover(force: false) {
        case .done: m.cutoverSeconds = Date().timeIntervalSince(c0)
        case .refused(let gates):
            for g in gates where !g.ok { out("  [FAIL] \(g.name) \(g.detail)") }
            throw FerryError(.gateNotMet, "the staging cutover was refused: " + gates.filter { !$0.ok }.map(\.name).joined(separator: ", "))
        case .alreadyDone: throw FerryError(.stateConflict, "the staging job was cut over already")
        }
        out("staging: cut over in \(Units.formatDecimal(m.cutoverSeconds ?? 0, places: 2)) s")
        let r0 = Date()
        try job.rollback()
        m.rollbackSeconds = Date().timeIntervalSince(r0)
        out("staging: rolled back in \(Units.formatDecimal(m.rollbackSeconds ?? 0, places: 2)) s")
        let last = sampler.stop()
        if let first = sampler.first, let last, last.at > first.at {
            m.ingest = (last.status.receivedLines - min(last.status.receivedLines, first.status.receivedLines), last.at - first.at)
            m.spoolLimit = last.status.spoolLimit
            if let dir = try? Backends.tapKind(job.plan)?.locate(job.plan).directory, last.status.head > 0 {
                let bytes = Self.journalBytes(dir)
                if bytes > 0 { m.journalBytesPerRecord = Double(bytes) / Double(last.status.head) }
            }
        }
        return m
    }

    /// Bytes of the tap's journal on disk (its log left out).
    static func journalBytes(_ dir: String) -> Int64 {
        var total: Int64 = 0
        for p in (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String]) ?? [] where !p.hasSuffix(".log") {
            var st = stat()
            if lstat(dir + "/" + p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG { total += Int64(st.st_size) }
        }
        return total
    }

    /// Stops staging's tap (the rehearsal started it) and waits for it to go.
    func stopTap(_ job: Job) {
        guard let tap = job.tap, let s = try? tap.status() else { return }
        kill(pid_t(s.pid), SIGTERM)
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, (try? tap.status()) != nil { Thread.sleep(forTimeInterval: 0.1) }
    }

    func project(
        production: Plan, staging: Plan, stagingName: String, prodInv: Inventory, stagInv: Inventory, measured: Measured
    ) throws -> Rehearsal {
        let ledger = try Ledger(stateDirectory: staging.stateDirectory, create: false)
        let durations = PhaseTimeline.durations(try ledger.events(limit: 100_000))
        func seconds(_ name: String) -> Double { durations.first { $0.phase == name }?.seconds ?? 0 }
        let other = try ledger.countOther()
        let c = try ledger.counts()
        let stagingCounts = Rehearsal.Counts(
            files: c.totalFiles, bytes: c.totalBytes, merges: stagInv.toMerge, entries: c.totalFiles + other.directories + other.symlinks)
        let prodCounts = Rehearsal.Counts(
            files: prodInv.files, bytes: prodInv.bytes, merges: prodInv.toMerge, entries: prodInv.files + prodInv.directories + prodInv.symlinks)
        let phases = [
            Rehearsal.projectWalk(stagingSeconds: seconds("snapshot"), staging: stagingCounts, production: prodCounts),
            Rehearsal.project(
                name: "copy", stagingSeconds: seconds("copy"), staging: stagingCounts, production: prodCounts, probe: stagInv, withMerges: true,
                bandwidth: production.copy.bandwidth, trace: measured.trace),
            Rehearsal.project(
                name: "verify", stagingSeconds: seconds("verify"), staging: stagingCounts, production: prodCounts, probe: stagInv,
                withMerges: false, bandwidth: nil, trace: measured.trace),
        ]
        var r = Rehearsal(
            at: Date().timeIntervalSince1970, productionPlan: production.file, stagingPlan: stagingName, staging: stagingCounts,
            production: prodCounts, phases: phases, cutoverWindowSeconds: measured.cutoverSeconds, rollbackSeconds: measured.rollbackSeconds,
            restored: true)  // saved only once the destination is back
        if let i = measured.ingest, i.seconds > 0 {
            let rate = Double(i.lines) / i.seconds
            r.ingestRecordsPerSecond = rate
            if let b = measured.journalBytesPerRecord {
                r.ingestBytesPerSecond = rate * b
                r.spoolNeededBytes = rate * b * r.projectedSeconds
            }
            r.spoolLimitBytes = measured.spoolLimit
        }
        return r
    }
}

/// Reads the tap's status once a second while the rehearsal runs: its first and last readings give the ingest rate.
final class TapSampler: @unchecked Sendable {
    // @unchecked: `readings` is guarded by `lock`; the tap client is a Sendable struct.
    private let lock = NSLock()
    private var readings: [(at: Double, status: TapStatus)] = []
    private let done = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let active: Bool

    init(_ tap: (any TapControl)?) {
        active = tap != nil
        guard let tap else { return }
        let thread = Thread { [self] in
            repeat {
                if let s = try? tap.status() {
                    lock.lock()
                    readings.append((Date().timeIntervalSince1970, s))
                    if readings.count > 2 { readings.remove(at: 1) }
                    lock.unlock()
                }
            } while done.wait(timeout: .now() + 1) == .timedOut
            finished.signal()
        }
        thread.name = "ferry-rehearse-tap"
        thread.start()
    }

    var first: (at: Double, status: TapStatus)? {
        lock.lock()
        defer { lock.unlock() }
        return readings.first
    }

    /// Stops sampling and returns the last reading.
    func stop() -> (at: Double, status: TapStatus)? {
        guard active else { return nil }
        done.signal()
        finished.wait()
        lock.lock()
        defer { lock.unlock() }
        return readings.count > 1 ? readings.last : nil
    }
}

/// Staging's destination as it was before the rehearsal: a copy beside it (`cp -a`, reflinked where the
/// filesystem can), swapped back afterwards; or nothing, when it did not exist.
struct DestinationImage {
    let path: String
    let existed: Bool
    var backup: String { path + ".ferry-rehearsal-before" }

    static func capture(_ plan: Plan) throws -> DestinationImage {
        guard ["fs", "whisper", "ceres"].contains(plan.destination.kind), let path = plan.destination.path else {
            throw FerryError(
                .invalidPlan,
                "a rehearsal restores a local staging destination (fs, whisper, ceres); this one is \(plan.destination.kind): "
                    + "give staging a local destination")
        }
        let image = DestinationImage(path: path, existed: FileManager.default.fileExists(atPath: path))
        guard image.existed else { return image }
        if FileManager.default.fileExists(atPath: image.backup) {
            throw FerryError(.stateConflict, "a previous rehearsal's copy of the staging destination is at \(image.backup): restore or remove it")
        }
        // cp's output goes to this process's stderr.
        let status = try runToExit(["/bin/cp", "-a", "--reflink=auto", "--", path, image.backup], environment: ProcessInfo.processInfo.environment)
        guard status == 0 else {
            try? FileManager.default.removeItem(atPath: image.backup)
            throw FerryError(.other, "cannot copy the staging destination \(path) aside before the rehearsal (cp -a exited \(status))")
        }
        return image
    }

    /// Puts the destination back as it was (or throws, saying where it is).
    func restore() throws {
        let fm = FileManager.default
        let trash = path + ".ferry-rehearsal-after"
        try? fm.removeItem(atPath: trash)
        if fm.fileExists(atPath: path) {
            do { try fm.moveItem(atPath: path, toPath: trash) } catch {
                throw FerryError(.other, "cannot move the rehearsed destination \(path) aside", underlying: error)
            }
        }
        if existed {
            do { try fm.moveItem(atPath: backup, toPath: path) } catch {
                throw FerryError(.other, "cannot put the staging destination back from \(backup)", underlying: error)
            }
        }
        try? fm.removeItem(atPath: trash)
    }
}
