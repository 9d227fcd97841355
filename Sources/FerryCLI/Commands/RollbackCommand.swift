import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

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
