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
    @Flag(name: .long, help: "Only check the gates and print them; change nothing (exit 4 when one is not met).") var check = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            let job = try makeJob(p, global)
            func show(_ gates: [Gate]) {
                for g in gates { out("  [\(g.ok ? "ok" : "FAIL")] \(pad(g.name, 20)) \(g.detail)") }
            }
            if check {
                let gates = try job.gates(try job.openLedger(create: false))
                show(gates)
                let failed = gates.filter { !$0.ok }
                guard failed.isEmpty else {
                    out("gates not met: " + failed.map(\.name).joined(separator: ", ") + " (nothing was changed)")
                    throw ExitCode(Exit.gate)
                }
                out("every gate is met; `ferry cutover \(plan)` would fence and run \(p.cutover.hooks.count) hooks")
                return
            }
            switch try job.cutover(force: force) {
            case .alreadyDone(let at):
                out("already cut over at \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: at))); nothing to do")
            case .refused(let gates):
                out(gates.contains { $0.name == "fence-new" } ? "cutover aborted: the fence did not land" : "cutover refused: gates not met")
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
