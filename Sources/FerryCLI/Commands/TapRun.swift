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
            // Signals are blocked before any thread starts and taken synchronously here (sigwait), so none can
            // arrive half way through a write.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGTERM)
            sigaddset(&set, SIGINT)
            pthread_sigmask(SIG_BLOCK, &set, nil)
            let tap = try kind.make(p, logger)
            try tap.start()
            let stop = tap.stop
            var sig: Int32 = 0
            sigwait(&set, &sig)
            logger.notice("signal \(sig): stopping the tap")
            stop()
        }
    }
}
