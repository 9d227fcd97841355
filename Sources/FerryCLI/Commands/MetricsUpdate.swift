import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

struct MetricsUpdate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "update", abstract: "Write points (TIMESTAMP:VALUE ...) as carbon does (update_many).")
    @Argument var file: String
    @Argument(help: "Points as TIMESTAMP:VALUE.") var points: [String]
    @Option(help: "The current time (default: the clock).") var now: Int?

    func run() throws {
        try guarded {
            let parsed: [(timestamp: Int, value: Double)] = try points.map { p in
                let parts = p.split(separator: ":")
                guard parts.count == 2, let t = Int(parts[0]), let v = Double(parts[1]) else {
                    throw FerryError(.other, "bad point \"\(p)\": expected TIMESTAMP:VALUE")
                }
                return (t, v)
            }
            let file = try WhisperFile(path: file)
            let original = try file.read()
            var db = original
            db.updateMany(parsed, now: nowOrClock(now))
            try file.write(db, original: original)
        }
    }
}
