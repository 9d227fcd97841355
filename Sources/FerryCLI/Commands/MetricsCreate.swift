import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

struct MetricsCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create an empty Whisper file.")
    @Argument var file: String
    @Argument(help: "Retentions such as 60s:30d,600s:1y.") var retentions: String
    @Option(name: .customLong("xff"), help: "xFilesFactor.") var xff: Float = 0.5
    @Option(help: "average, sum, last, max, min, avg_zero, absmax, absmin.") var aggregation = "average"

    func run() throws {
        try guarded {
            guard let method = Aggregation(name: aggregation) else {
                throw FerryError(.invalidPlan, "unknown aggregation method '\(aggregation)'")
            }
            guard !FileManager.default.fileExists(atPath: file) else { throw FerryError(.other, "\(file) exists") }
            let db = try Whisper(retentions: try Retentions.parse(retentions), xFilesFactor: xff, aggregation: method)
            try db.write(to: file)
        }
    }
}
