import ArgumentParser
import FerryCore
import FerryTap
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct TapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "Run the plan's dual-write tap, or talk to a running one.",
        subcommands: [TapRun.self, TapCtl.self],
        defaultSubcommand: TapRun.self
    )
}
