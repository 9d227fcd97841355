import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

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
