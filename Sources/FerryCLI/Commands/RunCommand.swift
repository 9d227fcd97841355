import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

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
            let metrics = try startMetrics(p.metrics.listen, process: "run", logger: global.logger())
            defer {
                if let metrics {
                    // A last scrape should see the totals: hold the endpoint for metrics.linger.
                    if p.metrics.linger > 0 { Thread.sleep(forTimeInterval: p.metrics.linger) }
                    metrics.stop()
                }
            }
            let job = try makeJob(p, global)
            Interruption.install()
            let control = JobControlServer.start(job, logger: global.logger())
            defer { control?.stop() }
            switch try job.run(RunOptions(catchUp: catchUp, repair: repair)) {
            case .alreadyDone(let why):
                out(why)
            case .ready(let report):
                printReport(report, stateDirectory: p.stateDirectory, plan: plan, tapped: p.tap != nil)
                out("job '\(p.name)' is ready for cutover: `ferry cutover \(plan)`")
            case .mismatches(let report):
                printReport(report, stateDirectory: p.stateDirectory, plan: plan, tapped: p.tap != nil)
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
        if let e = inv.destinationError {
            out("destination  CANNOT BE REACHED: \(e)")
        } else if inv.destinationMissing || inv.destinationRequests == 0 {
            out("destination  does not exist yet (the run creates it): nothing to probe")
        } else {
            out(
                "destination  probed read-only: \(inv.destinationRequests) requests, "
                    + "\(Units.formatDecimal(inv.destinationSecondsPerRequest * 1000, places: 2)) ms each")
        }
        if inv.merging {
            out(
                "merges       \(inv.toMerge) of \(inv.files) files already exist at the destination and will be merged"
                    + (inv.toMerge > 0 ? " (\(Units.formatDecimal(inv.mergeSecondsPerFile * 1000, places: 2)) ms each, measured)" : ""))
        }
        if inv.schemaDifferences > 0 {
            out("WARNING      \(inv.schemaDifferences) of \(inv.schemasCompared) files compared differ in schema between source and destination:")
            for e in inv.schemaExamples { out("  \(e)") }
            out("             merged points follow the destination's archives (finer source points are aggregated or lost)")
        } else if inv.schemasCompared > 0 {
            out("schemas      \(inv.schemasCompared) files compared: source and destination match")
        }
        let parts = inv.estimateParts.filter { $0.value > 0 }.sorted { $0.value > $1.value }
            .map { "\($0.key) \(Units.formatDuration($0.value))" }.joined(separator: ", ")
        out("estimate     about \(Units.formatDuration(inv.estimatedSeconds)) (concurrency \(p.copy.concurrency), bandwidth \(bw))")
        if !parts.isEmpty { out("             \(parts)") }
        if inv.destinationError != nil { throw ExitCode(Exit.failure) }
    }
}
