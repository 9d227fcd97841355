import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

struct PlanCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Validate a plan: exit 0 when valid, 2 with precise errors when not.")
    @Argument(help: "The plan file (YAML).") var plan: String

    func run() throws {
        let p = try loadPlan(plan)
        out("plan \(plan) is valid: job '\(p.name)', \(p.source.displayName) → \(p.destination.displayName)")
        out("state: \(p.stateDirectory)")
        if let t = p.tap {
            let old = t.options["old"] ?? p.source.displayName, new = t.options["new"] ?? p.destination.displayName
            let input = t.options["listen"].map { "listening on \($0)" } ?? "watching \(p.source.path ?? p.source.displayName)"
            out("tap: \(t.kind), \(input), old \(old), new \(new)")
        }
    }
}

// MARK: - run
