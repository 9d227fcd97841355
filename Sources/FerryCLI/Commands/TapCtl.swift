import ArgumentParser
import FerryCore
import FerryTap
import Foundation

#if canImport(Glibc)
import Glibc
#endif

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
