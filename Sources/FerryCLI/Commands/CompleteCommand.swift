import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

struct CompleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "complete", abstract: "End a cut-over job: once the old side has every write the tap took, the tap stops mirroring to it.")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Flag(name: .long, help: "End the job even when a side has not received every write the tap took (recorded).") var force = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            try makeJob(p, global).complete(force: force)
            out("job complete" + (p.tap != nil ? "; the tap now feeds the new side only" : ""))
        }
    }
}
