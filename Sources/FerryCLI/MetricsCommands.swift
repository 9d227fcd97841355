import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

/// Operator helpers for single Whisper files (like whisper-info, whisper-diff, whisper-fill, whisper-create and
/// whisper-update), built on the same code the metric migration uses.
struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics", abstract: "Inspect, compare and merge Whisper files.",
        subcommands: [MetricsInfo.self, MetricsDiff.self, MetricsFill.self, MetricsCreate.self, MetricsUpdate.self])
}

/// Loads a Whisper file, turning corruption into a clear error and exit 3.
func loadWhisper(_ path: String) throws -> Whisper {
    do {
        return try Whisper(path: path)
    } catch {
        printError("\(error)")
        throw ExitCode(Exit.failure)
    }
}

func nowOrClock(_ now: Int?) -> Int { now ?? Int(Date().timeIntervalSince1970) }

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

struct MetricsDiff: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two Whisper files point by point, archive by archive (exit 1 when they differ).")
    @Argument var a: String
    @Argument var b: String
    @Option(help: "Compare up to this Unix time (default: now).") var until: Int?
    @Option(help: "The current time, for retention windows (default: the clock).") var now: Int?
    @Flag(help: "Print as JSON.") var json = false

    struct ArchiveDiff: Encodable {
        var secondsPerPoint: Int
        var compared: Int
        var onlyInA: Int
        var onlyInB: Int
        var differing: Int
        var examples: [String]
    }

    func run() throws {
        let x = try loadWhisper(a)
        let y = try loadWhisper(b)
        let now = nowOrClock(now)
        let limit = until ?? now
        var diffs: [ArchiveDiff] = []
        for ax in x.archives {
            guard let ay = y.archives.first(where: { $0.secondsPerPoint == ax.secondsPerPoint }) else { continue }
            let step = ax.secondsPerPoint
            let oldest = now - min(ax.retention, ay.retention)
            var t = oldest - ((oldest % step) + step) % step + step
            var d = ArchiveDiff(secondsPerPoint: step, compared: 0, onlyInA: 0, onlyInB: 0, differing: 0, examples: [])
            while t <= limit {
                let vx = x.value(ax, at: t)
                let vy = y.value(ay, at: t)
                switch (vx, vy) {
                case (nil, nil): break
                case (.some, nil): d.onlyInA += 1
                case (nil, .some): d.onlyInB += 1
                case (.some(let p), .some(let q)):
                    d.compared += 1
                    if p.bitPattern != q.bitPattern && !(p.isNaN && q.isNaN) {
                        d.differing += 1
                        if d.examples.count < 5 { d.examples.append("\(t): \(p) != \(q)") }
                    }
                }
                t += step
            }
            diffs.append(d)
        }
        let clean = diffs.allSatisfy { $0.onlyInA == 0 && $0.onlyInB == 0 && $0.differing == 0 }
        if json {
            try writeJSON(diffs)
        } else {
            for d in diffs {
                out(
                    "archive \(d.secondsPerPoint)s: \(d.compared) points in both, \(d.differing) differ, "
                        + "\(d.onlyInA) only in \(a), \(d.onlyInB) only in \(b)")
                for e in d.examples { out("  \(e)") }
            }
            out(clean ? "identical" : "different")
        }
        if !clean { throw ExitCode(Exit.mismatch) }
    }
}

struct MetricsFill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fill",
        abstract: "Fill gaps in live Whisper files from others, never overwriting a stored value.",
        discussion: """
            With two files: fills DESTINATION from SOURCE. With two directories: every .wsp file under SOURCE is
            filled into the file at the same path under DESTINATION, or copied there when it does not exist.
            Each destination file is locked (flock, as carbon does) while it is updated in place.
            """)
    @Argument(help: "The file (or tree) holding history.") var source: String
    @Argument(help: "The live file (or tree) to fill.") var destination: String
    @Option(help: "Fill intervals up to this Unix time (default: now).") var until: Int?
    @Option(help: "The current time, for retention windows (default: the clock).") var now: Int?
    @Flag(help: "Print one line per file in tree mode.") var verbose = false

    func run() throws {
        let now = nowOrClock(now)
        let limit = until ?? now
        if PathUtil.isDirectory(source) {
            try fillTree(now: now, until: limit)
            return
        }
        let src = try loadWhisper(source)
        try guarded {
            let report = try Self.fillFile(src, destination, until: limit, now: now)
            let steps = try Whisper(path: destination).archives.map(\.secondsPerPoint)
            for (i, n) in report.filled.enumerated() where !report.skipped.contains(i) {
                out("archive \(steps[i])s: \(n) points filled")
            }
            for i in report.skipped { out("archive \(steps[i])s: skipped (the source has no archive this fine)") }
        }
    }

    static func fillFile(_ src: Whisper, _ destination: String, until: Int, now: Int) throws -> FillReport {
        let file = try WhisperFile(path: destination)
        let original = try file.read()
        var db = original
        let report = db.fill(from: src, until: until, now: now)
        try file.write(db, original: original)
        return report
    }

    func fillTree(now: Int, until: Int) throws {
        var files = 0
        var copied = 0
        var points = 0
        var failed = 0
        let started = Date()
        guard let walker = FileManager.default.enumerator(atPath: source) else {
            throw ValidationError("cannot list \(source)")
        }
        while let rel = walker.nextObject() as? String {
            guard rel.hasSuffix(".wsp") else { continue }
            let dst = destination + "/" + rel
            do {
                let src = try Whisper(path: source + "/" + rel)
                if !FileManager.default.fileExists(atPath: dst) {
                    try FileManager.default.createDirectory(
                        atPath: PathUtil.directory(of: dst), withIntermediateDirectories: true)
                    try src.write(to: dst)
                    copied += 1
                } else {
                    points += try Self.fillFile(src, dst, until: until, now: now).total
                }
                files += 1
                if verbose { out("filled \(rel)") }
            } catch {
                failed += 1
                printError("\(rel): \(error)")
            }
        }
        let secs = Date().timeIntervalSince(started)
        out(
            "\(files) files (\(copied) copied whole), \(points) points filled, \(failed) failed in "
                + "\(Units.formatDecimal(secs, places: 2)) s (\(Units.formatDecimal(Double(files) / max(secs, 1e-9), places: 1)) files/s)")
        if failed > 0 { throw ExitCode(Exit.failure) }
    }
}

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
