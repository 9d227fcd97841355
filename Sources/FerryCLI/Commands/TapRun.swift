import ArgumentParser
import FerryCore
import FerryTap
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct TapRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the tap in the foreground until SIGTERM or SIGINT (`ferry run` starts it when it is not running).",
        discussion: """
            The tap accepts live writes, spools them durably and mirrors them to both upstreams. Stopping it (or a
            kill -9) loses nothing: a restart replays what the spool holds for each upstream.
            """)
    @Argument(help: "The plan file (YAML).") var plan: String
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            guard let kind = try Backends.tapKind(p) else { throw FerryError(.invalidPlan, "the plan has no tap section") }
            let logger = global.logger()
            let metrics = try startMetrics(p.metrics.tapListen, process: "tap", logger: logger)
            defer { metrics?.stop() }
            let tap = try kind.make(p, logger)
            // One lifecycle for every tap (FerryTap's TapHost): started, then stopped gracefully on SIGTERM or
            // SIGINT by swift-service-lifecycle.
            try TapHost.runUntilSignalled(metrics == nil ? tap : ObservedTap(tap), logger: logger)
        }
    }
}
