public import ArgumentParser
import FerryCore
import FerryEngine
import Foundation
import Logging

public struct FerryCommand: ParsableCommand {
    public init() {}
    public static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Move and replicate large datasets between machines and stores with minimal downtime.",
        discussion: """
            Exit codes: 0 success (run: verified and ready for cutover), 1 verify found mismatches, 2 plan error,
            3 any other failure, 4 a cutover gate is not met.
            """,
        version: ferryVersion,
        subcommands: [
            PlanCommand.self, RunCommand.self, VerifyCommand.self, StatusCommand.self, CutoverCommand.self,
            RollbackCommand.self, CompleteCommand.self, CtlCommand.self, RehearseCommand.self, EventsCommand.self, ReportCommand.self,
            TapCommand.self, ServeCommand.self,
            MetricsCommand.self,
        ]
    )
}
