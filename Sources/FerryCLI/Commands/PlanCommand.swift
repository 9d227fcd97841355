import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Work with plan files.", subcommands: [PlanCheck.self])
}
