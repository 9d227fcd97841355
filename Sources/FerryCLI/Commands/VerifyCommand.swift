import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

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
            if json { try writeJSON(report) } else { printReport(report, stateDirectory: p.stateDirectory, plan: plan, tapped: p.tap != nil) }
            if !report.ok { throw ExitCode(Exit.mismatch) }
        }
    }
}

// MARK: - status
