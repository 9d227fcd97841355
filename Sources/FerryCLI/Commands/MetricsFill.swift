import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

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
        var db = try file.read()
        let report = db.fill(from: src, until: until, now: now)
        try file.write(db, range: report.changed)
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
