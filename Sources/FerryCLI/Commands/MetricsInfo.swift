import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

struct MetricsInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show a Whisper file's header.")
    @Argument var file: String
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        let db = try loadWhisper(file)
        if json {
            struct Info: Encodable {
                var aggregationMethod: String
                var maxRetention: Int
                var xFilesFactor: Float
                var fileSize: Int
                var archives: [[String: Int]]
            }
            try writeJSON(
                Info(
                    aggregationMethod: db.aggregation.description, maxRetention: db.maxRetention,
                    xFilesFactor: db.xFilesFactor, fileSize: db.bytes.count,
                    archives: db.archives.map {
                        [
                            "offset": $0.offset, "seconds_per_point": $0.secondsPerPoint, "points": $0.points,
                            "retention": $0.retention, "size": $0.size,
                        ]
                    }))
            return
        }
        out("aggregationMethod: \(db.aggregation)")
        out("maxRetention: \(db.maxRetention)")
        out("xFilesFactor: \(db.xFilesFactor)")
        out("fileSize: \(db.bytes.count)")
        for (i, a) in db.archives.enumerated() {
            out("")
            out("Archive \(i)")
            out("offset: \(a.offset)")
            out("secondsPerPoint: \(a.secondsPerPoint)")
            out("points: \(a.points)")
            out("retention: \(a.retention)")
            out("size: \(a.size)")
        }
    }
}
