import ArgumentParser
import FerryCore
import FerryEngine
import Foundation

struct EventsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Show the job's event log from the ledger: phases, the tap armed, fences, gates forced, hooks, cutover, rollback.",
        discussion: "Oldest first. Safe while a run is working (it only reads the ledger).")
    @Argument(help: "The plan file (YAML).") var plan: String
    @Option(name: .long, help: "Only events of this kind (phase, snapshot, tap, fence, cutover, cutover-hook, rollback, rollback-hook, error, ...).")
    var kind: String?
    @Option(name: .long, help: "At most this many (the newest).") var limit = 1000
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var global: GlobalOptions

    struct Event: Encodable {
        var at: String
        var unixSeconds: Double
        var kind: String
        var message: String
    }

    struct Events: Encodable {
        var schemaVersion = 1
        var job: String
        var events: [Event]
    }

    func run() throws {
        let p = try loadPlan(plan)
        try guarded {
            guard limit > 0 else { throw FerryError(.invalidPlan, "--limit: expected a positive number, got \(limit)") }
            guard Ledger.exists(in: p.stateDirectory) else {
                if json {
                    try writeJSON(Events(job: p.name, events: []))
                } else {
                    out("job '\(p.name)' has not started (no state at \(p.stateDirectory)); no events")
                }
                return
            }
            let ledger = try Ledger(stateDirectory: p.stateDirectory, create: false)
            let iso = ISO8601DateFormatter()
            iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            let events = try ledger.events(kind: kind, limit: limit).map {
                Event(at: iso.string(from: Date(timeIntervalSince1970: $0.at)), unixSeconds: $0.at, kind: $0.kind, message: $0.message)
            }
            if json {
                try writeJSON(Events(job: p.name, events: events))
                return
            }
            if events.isEmpty { out("no events\(kind.map { " of kind \($0)" } ?? "")") }
            let width = max(5, events.map(\.kind.count).max() ?? 0)
            for e in events { out("\(e.at)  \(pad(e.kind, width))  \(e.message)") }
        }
    }
}
