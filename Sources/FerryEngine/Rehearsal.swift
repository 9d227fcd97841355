import FerryCore
import Foundation

/// The phases of a job's history and how long each took, from the ledger's events: the job's creation starts
/// the snapshot, the snapshot's event starts the copy, each `phase` event starts the phase it names. A phase
/// entered more than once (a catch-up, a repair) adds up.
public enum PhaseTimeline {
    public static func durations(_ events: [(at: Double, kind: String, message: String)]) -> [(phase: String, seconds: Double, open: Bool)] {
        var marks: [(Double, String)] = []
        for e in events {
            switch e.kind {
            case "job": marks.append((e.at, "snapshot"))
            case "snapshot": marks.append((e.at, "copy"))
            case "phase": marks.append((e.at, phaseName(e.message)))
            case "cutover" where e.message.hasPrefix("cutover done"): marks.append((e.at, "switched"))
            case "rollback": marks.append((e.at, "ready"))
            case "complete": marks.append((e.at, "complete"))
            default: break
            }
        }
        var order: [String] = []
        var total: [String: Double] = [:]
        for (i, m) in marks.enumerated() {
            if total[m.1] == nil { order.append(m.1) }
            let end = i + 1 < marks.count ? marks[i + 1].0 : m.0
            total[m.1, default: 0] += max(0, end - m.0)
        }
        let last = marks.last?.1
        return order.map { ($0, total[$0] ?? 0, $0 == last) }
    }
}

/// What `ferry rehearse` measured on staging, and the production timeline projected from it: each phase's
/// measured unit costs (seconds per file, bytes per second, merges per second) times production's inventory.
public struct Rehearsal: Codable, Sendable {
    public struct Counts: Codable, Sendable {
        public var files: Int64
        public var bytes: Int64
        /// Files that already exist at the destination and are merged (metric stores).
        public var merges: Int64
        /// Every entry the snapshot lists (files, directories, links).
        public var entries: Int64
        public init(files: Int64, bytes: Int64, merges: Int64, entries: Int64) {
            (self.files, self.bytes, self.merges, self.entries) = (files, bytes, merges, entries)
        }
    }

    /// One phase: measured on staging, projected for production, and the unit costs behind it.
    public struct Phase: Codable, Sendable {
        public var name: String
        public var stagingSeconds: Double
        public var projectedSeconds: Double
        public var secondsPerFile: Double
        public var bytesPerSecond: Double
        public var mergesPerSecond: Double?
        /// How the projection was made, in words.
        public var basis: String
    }

    public var at: Double
    public var productionPlan: String
    public var stagingPlan: String
    public var staging: Counts
    public var production: Counts
    public var phases: [Phase]
    /// Freeze → switch, as the staging cutover took it (fence and hooks; it does not grow with the data).
    public var cutoverWindowSeconds: Double?
    public var rollbackSeconds: Double?
    /// The tap's ingest during the rehearsal (records per second), and the spool a side that is down for the
    /// whole projected copy would need at that rate.
    public var ingestRecordsPerSecond: Double?
    public var ingestBytesPerSecond: Double?
    public var spoolNeededBytes: Double?
    public var spoolLimitBytes: UInt64?
    /// Whether the staging destination was restored to its state before the rehearsal.
    public var restored: Bool

    public init(
        at: Double, productionPlan: String, stagingPlan: String, staging: Counts, production: Counts, phases: [Phase],
        cutoverWindowSeconds: Double?, rollbackSeconds: Double?, restored: Bool
    ) {
        self.at = at
        self.productionPlan = productionPlan
        self.stagingPlan = stagingPlan
        self.staging = staging
        self.production = production
        self.phases = phases
        self.cutoverWindowSeconds = cutoverWindowSeconds
        self.rollbackSeconds = rollbackSeconds
        self.restored = restored
    }

    public var projectedSeconds: Double { phases.reduce(0) { $0 + $1.projectedSeconds } }

    public static func file(in stateDirectory: String) -> String { stateDirectory + "/rehearsal.json" }

    public static func load(from stateDirectory: String) -> Rehearsal? {
        guard let data = FileManager.default.contents(atPath: file(in: stateDirectory)) else { return nil }
        return try? JSONDecoder().decode(Rehearsal.self, from: data)
    }

    public func save(in stateDirectory: String) throws {
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            try enc.encode(self).write(to: URL(fileURLWithPath: Self.file(in: stateDirectory)), options: .atomic)
        } catch {
            throw FerryError(.other, "cannot save the rehearsal's projection in \(stateDirectory)", underlying: error)
        }
    }

    /// Splits `seconds` measured for a phase over its files, bytes and merges, in the proportions the dry run's
    /// probe of the same tree gives them, and returns the unit costs that make up the measured time.
    /// Scaled by another inventory, they give that inventory's time on the same machine.
    public static func unitCosts(
        seconds: Double, files: Int64, bytes: Int64, merges: Int64, probe: Inventory
    ) -> (perFile: Double, perByte: Double, perMerge: Double) {
        let wFile = Double(files) * probe.probeSecondsPerFile
        let wByte = probe.probeBytesPerSecond > 0 ? Double(bytes) / probe.probeBytesPerSecond : 0
        let wMerge = Double(merges) * probe.mergeSecondsPerFile
        let weight = wFile + wByte + wMerge
        guard weight > 0 else {
            // No probe to split by: the time goes to the bytes (or to the files, when there are no bytes).
            if bytes > 0 { return (0, seconds / Double(bytes), 0) }
            return (files > 0 ? seconds / Double(files) : 0, 0, 0)
        }
        let k = seconds / weight
        return (
            probe.probeSecondsPerFile * k,
            probe.probeBytesPerSecond > 0 ? k / probe.probeBytesPerSecond : 0,
            probe.mergeSecondsPerFile * k
        )
    }

    /// The phase's line for production. Staging's time is split into work (files, bytes and merges, weighed as
    /// the dry run's probe weighs them) and a fixed tail (what the phase did after its last counted file).
    /// Production's time is the tail plus production's work at staging's unit costs; a bandwidth limit bounds a
    /// copy from below.
    public static func project(
        name: String, stagingSeconds: Double, staging: Counts, production: Counts, probe: Inventory, withMerges: Bool,
        bandwidth: Int64?, trace: [ProgressTrace.Point] = []
    ) -> Phase {
        var u = unitCosts(
            seconds: stagingSeconds, files: staging.files, bytes: staging.bytes, merges: withMerges ? staging.merges : 0, probe: probe)
        func work(_ c: Counts, _ u: (perFile: Double, perByte: Double, perMerge: Double)) -> Double {
            Double(c.files) * u.perFile + Double(c.bytes) * u.perByte + (withMerges ? Double(c.merges) * u.perMerge : 0)
        }
        // The unit costs give staging's whole time as work (1 unit = 1 s); the phase's tail after its last counted
        // file is fixed, and the unit costs cover the rest.
        var fixed = 0.0
        if let tail = ProgressTrace.tailSeconds(trace, phase: name), tail < stagingSeconds, stagingSeconds > 0 {
            fixed = tail
            let scale = (stagingSeconds - tail) / stagingSeconds
            u = (u.perFile * scale, u.perByte * scale, u.perMerge * scale)
        }
        var projected = fixed + work(production, u)
        var basis =
            "\(Units.formatDecimal(u.perFile * 1e6, places: 1)) µs per file, "
            + "\(u.perByte > 0 ? Units.formatBytes(Int64(1 / u.perByte)) + "/s" : "no byte cost")"
        if withMerges && staging.merges > 0 { basis += ", \(Units.formatDecimal(1 / max(u.perMerge, 1e-9), places: 1)) merges/s" }
        basis += ", \(Units.formatDecimal(fixed, places: 2)) s fixed"
        if let bw = bandwidth, bw > 0, Double(production.bytes) / Double(bw) > projected {
            projected = Double(production.bytes) / Double(bw)
            basis += "; bounded by copy.bandwidth \(Units.formatBytes(bw))/s"
        }
        return Phase(
            name: name, stagingSeconds: stagingSeconds, projectedSeconds: projected, secondsPerFile: u.perFile,
            bytesPerSecond: u.perByte > 0 ? 1 / u.perByte : 0,
            mergesPerSecond: withMerges && staging.merges > 0 && u.perMerge > 0 ? 1 / u.perMerge : nil, basis: basis)
    }

    /// The snapshot lists entries: its time scales with their number.
    public static func projectWalk(stagingSeconds: Double, staging: Counts, production: Counts) -> Phase {
        let perEntry = staging.entries > 0 ? stagingSeconds / Double(staging.entries) : 0
        return Phase(
            name: "snapshot", stagingSeconds: stagingSeconds, projectedSeconds: perEntry * Double(production.entries),
            secondsPerFile: perEntry, bytesPerSecond: 0, mergesPerSecond: nil,
            basis: "\(Units.formatDecimal(perEntry * 1e6, places: 1)) µs per entry listed")
    }

    /// Seconds with a decimal under a minute, the usual form above.
    static func duration(_ s: Double) -> String { s < 60 ? Units.formatDecimal(s, places: 1) + " s" : Units.formatDuration(s) }

    /// The projection as the operator reads it.
    public var lines: [String] {
        func n(_ c: Counts) -> String { "\(c.files) files, \(Units.formatBytes(c.bytes))\(c.merges > 0 ? ", \(c.merges) to merge" : "")" }
        var out = ["projected production timeline (staging's measured rates × production's inventory)"]
        out.append("  staging     \(n(staging)) (\(stagingPlan))")
        out.append("  production  \(n(production)) (\(productionPlan), from a dry run: a listing only)")
        for p in phases {
            out.append(
                "  \(p.name.padding(toLength: 10, withPad: " ", startingAt: 0))  \(Self.duration(p.projectedSeconds).padding(toLength: 10, withPad: " ", startingAt: 0))"
                    + " (staging \(Units.formatDecimal(p.stagingSeconds, places: 2)) s; \(p.basis))")
        }
        out.append("  total       \(Self.duration(projectedSeconds)) from the snapshot to ready for cutover")
        if let w = cutoverWindowSeconds {
            out.append("  cutover window (freeze → switch) about \(Units.formatDecimal(w, places: 2)) s, as measured on staging")
        }
        if let r = rollbackSeconds { out.append("  rollback    \(Units.formatDecimal(r, places: 2)) s on staging") }
        if let rate = ingestRecordsPerSecond {
            var line = "  tap ingest  \(Units.formatDecimal(rate, places: 1)) records/s"
            if let b = ingestBytesPerSecond { line += " (\(Units.formatBytes(Int64(b)))/s)" }
            out.append(line)
            if let need = spoolNeededBytes {
                var s = "  tap spool   \(Units.formatBytes(Int64(need))) to hold a side that is down for the whole projected timeline"
                if let limit = spoolLimitBytes {
                    s +=
                        Double(limit) >= need
                        ? " (spool_limit \(Units.formatBytes(Int64(limit))): enough)" : " (spool_limit \(Units.formatBytes(Int64(limit))): TOO SMALL)"
                }
                out.append(s)
            }
        }
        out.append("  staging destination \(restored ? "restored to its state before the rehearsal" : "NOT restored")")
        return out
    }
}

/// The progress of a rehearsal's phases at a fine grain (every 20 ms, thinned as it grows: at most 8192
/// points), so that a phase's steady rate can be told from the fixed costs at its start and end.
public final class ProgressTrace: @unchecked Sendable {
    // @unchecked: `points` and `interval` are guarded by `lock`.
    public struct Point: Sendable {
        public var at: Double
        public var phase: String
        public var files: Int64
        public var bytes: Int64
    }
    private let lock = NSLock()
    private var points: [Point] = []
    private var interval = 0.02
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    public init(_ progress: ProgressTracker) {
        let thread = Thread { [self] in
            repeat {
                let s = progress.sample(at: Date().timeIntervalSince1970)
                lock.lock()
                points.append(Point(at: s.at, phase: s.phase, files: s.filesDone, bytes: s.bytesDone))
                if points.count > 8192 {
                    points = points.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
                    interval *= 2
                }
                let wait = interval
                lock.unlock()
                if done.wait(timeout: .now() + wait) == .success { break }
            } while true
            finished.signal()
        }
        thread.name = "ferry-rehearse-trace"
        thread.start()
    }

    /// Stops tracing (once; later calls only read); returns the points.
    public func stop() -> [Point] {
        lock.lock()
        let first = !stopped
        stopped = true
        lock.unlock()
        if first {
            done.signal()
            finished.wait()
        }
        lock.lock()
        defer { lock.unlock() }
        return points
    }

    /// How long `phase` went on after its counted work was done (its final commit, sync and report): a cost
    /// that does not grow with the data. The time before the counters move (a verify's listing) does grow, and
    /// is not part of it. nil when the trace holds too little of the phase to tell.
    public static func tailSeconds(_ points: [Point], phase: String) -> Double? {
        let mine = points.filter { $0.phase == phase }
        guard let last = mine.last, mine.count >= 5, last.files > 0 || last.bytes > 0 else { return nil }
        guard let done = mine.first(where: { $0.files == last.files && $0.bytes == last.bytes }) else { return nil }
        return max(0, last.at - done.at)
    }
}
