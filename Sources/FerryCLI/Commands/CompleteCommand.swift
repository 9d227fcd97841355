import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

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
