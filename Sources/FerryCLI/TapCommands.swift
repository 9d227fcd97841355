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

struct TapCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Ask a running tap for its status or switch its mode (mirror, cutover, reverse, single).",
        discussion: "Examples: ferry tap ctl plans/metrics.yml status; ferry tap ctl plans/metrics.yml mode reverse")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Argument(help: "status | mode MODE") var command: String
    @Argument(help: "The mode, for `mode`.") var mode: String?
    @Flag(name: .long, help: "Print as JSON.") var json = false

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            guard let client = try Backends.tap(p, launch: false) else { throw FerryError(.invalidPlan, "the plan has no tap section") }
            switch command {
            case "status":
                guard let s = try client.status() else {
                    throw FerryError(.other, "the tap is not running (nothing answers on \(client.socketPath))")
                }
                if json { try writeJSON(s) } else { printTap(s) }
            case "mode":
                guard let name = mode, let m = TapMode(rawValue: name) else {
                    throw ValidationError("mode: expected one of \(TapMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                let s = try client.setMode(m)
                if json { try writeJSON(s) } else { printTap(s) }
            default:
                throw ValidationError("unknown command '\(command)': expected status or mode")
            }
        }
    }
}

/// The tap's health as `ferry tap ctl status` and `ferry status` print it.
func printTap(_ s: TapStatus, indent: String = "") {
    out("\(indent)tap          \(s.kind), pid \(s.pid), mode \(s.mode.rawValue) (primary \(s.primary)), sequence \(s.head)")
    var line = "\(indent)  received   \(s.receivedLines) lines, \(s.invalidLines) invalid, \(s.refusedMessages) refused messages"
    if s.droppedLines > 0 { line += ", \(s.droppedLines) UDP lines DROPPED (spool full)" }
    out(line)
    out(
        "\(indent)  spool      \(Units.formatBytes(Int64(s.spoolBytes))) of \(Units.formatBytes(Int64(s.spoolLimit)))"
            + (s.backPressure ? "  FULL: senders held back" : "")
            + (s.spoolError.map { "  WRITE FAILING (\($0)): senders held back" } ?? ""))
    for u in s.upstreams {
        var l = "\(indent)  \(pad(u.name, 4))       \(u.address) \(u.role), \(u.connected ? "connected" : "DOWN"), "
        l +=
            "forwarded \(u.forwardedLines) lines, spooled \(Units.formatBytes(Int64(u.spoolBytes))), lag \(Units.formatDecimal(u.lagSeconds, places: 1)) s"
        if u.reconnects > 0 { l += ", \(u.reconnects) reconnects" }
        if let e = u.lastError, !u.connected { l += " (\(e))" }
        out(l)
    }
}
