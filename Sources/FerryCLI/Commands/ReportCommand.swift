import ArgumentParser
import FerryCore
import FerryEngine
import Foundation

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write the job's report as one self-contained HTML file (plan, inventory, phases, throughput, verify, events).",
        discussion: "Reads the ledger only: safe while a run works, and after the job is complete.")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Option(name: .long, help: "Where to write the HTML file.") var html: String
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            guard Ledger.exists(in: p.stateDirectory) else {
                throw FerryError(.stateConflict, "job '\(p.name)' has not started (no state at \(p.stateDirectory)): nothing to report")
            }
            let ledger = try Ledger(stateDirectory: p.stateDirectory, create: false)
            guard let job = try ledger.job() else { throw FerryError(.stateConflict, "the ledger at \(p.stateDirectory) holds no job") }
            let other = try ledger.countOther()
            let skipped = try ledger.countSkipped()
            let data = ReportData(
                plan: p, job: job, counts: try ledger.counts(), directories: other.directories, symlinks: other.symlinks,
                refused: skipped.refused, skippedByPolicy: skipped.policy, events: try ledger.events(limit: 100_000),
                verifies: try ledger.verifyRuns(), samples: try ledger.samples(), generatedAt: Date(),
                rehearsal: Rehearsal.load(from: p.stateDirectory))
            let page = ReportHTML.render(data)
            do {
                try Data(page.utf8).write(to: URL(fileURLWithPath: html), options: .atomic)
            } catch {
                throw FerryError(.other, "cannot write the report to \(html)", underlying: error)
            }
            out("report: \(html) (\(Units.formatBytes(Int64(page.utf8.count))), \(data.samples.count) samples, \(data.events.count) events)")
        }
    }
}
