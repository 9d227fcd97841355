import ArgumentParser
import FerryCore
import FerryEngine
import FerryTap
import Foundation

struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Steer a running job: pause, resume, throttle, concurrency, postpone, unpostpone, status.",
        discussion: """
            Goes over the job's control socket (STATE/ctl.sock, this user only) to the `ferry run` that serves it, which
            applies the command at once. Settings are kept in the ledger: every worker on the job follows them within a
            second, and so does the next run. With no run active, the command is recorded in the ledger directly.
              pause | resume              hold every copy thread before its next chunk, or release them
              throttle RATE|off|plan      limit the copy to RATE (20MiB/s), lift the limit, or follow copy.bandwidth again
              concurrency N|plan          copy threads (1-\(Steering.maxConcurrency)); threads beyond it park after their page
              postpone | unpostpone       hold the job at ready: `ferry cutover` refuses until unpostpone
              status                      the job, its progress and these settings
            """)
    @Argument(help: "The plan file (YAML).") var plan: String
    @Argument(parsing: .captureForPassthrough, help: "The command and its argument.") var command: [String] = []
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let p = try loadPlan(plan)
        let line = command.joined(separator: " ")
        try guarded {
            if case .failure(let e) = ControlCommand.parse(line) {
                printError(e.message)
                throw ExitCode(Exit.planError)
            }
            if let reply = try unixExchange(
                JobControlServer.path(p), Array((line + "\n").utf8), timeout: 30, what: "ferry ctl", untilNewline: false)
            {
                let text = String(decoding: reply, as: UTF8.self).trimmingCharacters(in: .newlines)
                if text.hasPrefix("ok: ") {
                    out(String(text.dropFirst(4)))
                    return
                }
                printError(text.hasPrefix("error: ") ? String(text.dropFirst(7)) : text)
                throw ExitCode(Exit.failure)
            }
            // Nothing serves the socket: no run is active. The ledger keeps the setting for the next one.
            guard Ledger.exists(in: p.stateDirectory), case .success(let c) = ControlCommand.parse(line) else {
                throw FerryError(.stateConflict, "no job yet at \(p.stateDirectory): `ferry run \(plan)` creates it")
            }
            let job = try makeSteeringJob(p)
            out(try job.control(c, ledger: try job.openLedger(create: false), live: false, by: "uid \(geteuid()) pid \(getpid())"))
        }
    }

    /// A job handle for the ledger: its stores are not used, and no tap is started.
    func makeSteeringJob(_ p: Plan) throws -> Job {
        Job(
            plan: p, source: try Backends.source(p), destination: try Backends.destination(p), logger: global.logger(),
            progress: ProgressTracker(output: .none))
    }
}
