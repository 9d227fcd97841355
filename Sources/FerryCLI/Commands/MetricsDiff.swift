import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

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
