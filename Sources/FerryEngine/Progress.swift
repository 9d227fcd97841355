import CoreMetrics
import FerryCore
import Foundation
import Synchronization

/// Counters that workers bump and a reporter reads. On a terminal: a live bar redrawn in place; otherwise one
/// log line every few seconds. The run's counters also go to the ledger so `ferry status` sees them.
public final class ProgressTracker: Sendable {
    struct Counters {
        var phase = ""
        var filesTotal: Int64 = 0
        var bytesTotal: Int64 = 0
        var filesDone: Int64 = 0
        var bytesDone: Int64 = 0
        var failed: Int64 = 0
        var bytesThisRun: Int64 = 0
        var started = DispatchTime.now().uptimeNanoseconds
        var rate: Double = 0
        var lastSample: (at: UInt64, bytes: Int64) = (DispatchTime.now().uptimeNanoseconds, 0)

        /// Smooths the rate over samples at least half a second apart.
        mutating func updateRate(now: UInt64) {
            let dt = Double(now - lastSample.at) / 1e9
            guard dt >= 0.5 else { return }
            let inst = Double(bytesThisRun - lastSample.bytes) / dt
            rate = rate == 0 ? inst : 0.7 * rate + 0.3 * inst
            lastSample = (now, bytesThisRun)
        }
    }

    private let counters = Mutex(Counters())
    private let output: ProgressOutput
    private let metrics = ProgressMetrics()

    public enum ProgressOutput: Sendable {
        case terminal
        case log(interval: Double)
        /// As `log`, one JSON object per line (`--log-format json`).
        case json(interval: Double)
        case none
    }

    public init(output: ProgressOutput) {
        self.output = output
    }

    public func begin(phase: String, filesTotal: Int64, bytesTotal: Int64, filesDone: Int64 = 0, bytesDone: Int64 = 0) {
        counters.withLock {
            $0 = Counters()
            $0.phase = phase
            $0.filesTotal = filesTotal
            $0.bytesTotal = bytesTotal
            $0.filesDone = filesDone
            $0.bytesDone = bytesDone
        }
        metrics.begin(phase: phase)
        publish()
    }

    public func add(files: Int64 = 0, bytes: Int64 = 0) {
        counters.withLock {
            $0.filesDone += files
            $0.bytesDone += bytes
            $0.bytesThisRun += bytes
        }
        metrics.add(files: files, bytes: bytes)
    }

    public func addFailed() {
        counters.withLock { $0.failed += 1 }
        metrics.failed.increment()
    }

    /// A chunk of a large file is durable at the destination and in the ledger.
    public func addChunk() { metrics.chunks.increment() }

    /// Sets the metrics' gauges from the counters (the reporter calls it every tick).
    public func publish() {
        let c = counters.withLock { c in
            c.updateRate(now: DispatchTime.now().uptimeNanoseconds)
            return c
        }
        metrics.publish(filesDone: c.filesDone, filesTotal: c.filesTotal, bytesDone: c.bytesDone, bytesTotal: c.bytesTotal, rate: c.rate)
    }

    /// Un-counts bytes of an attempt that was thrown away (the file changed while it was copied).
    public func retract(bytes: Int64) {
        counters.withLock {
            $0.bytesDone -= bytes
            $0.bytesThisRun -= bytes
        }
    }

    /// The counters as a ledger sample.
    public func sample(at time: Double) -> ProgressSample {
        counters.withLock {
            ProgressSample(
                at: time, phase: phaseName($0.phase), filesDone: $0.filesDone, filesPlanned: $0.filesTotal,
                bytesDone: $0.bytesDone, bytesPlanned: $0.bytesTotal)
        }
    }

    public var snapshot: (filesDone: Int64, bytesDone: Int64, bytesThisRun: Int64) {
        counters.withLock { ($0.filesDone, $0.bytesDone, $0.bytesThisRun) }
    }

    /// One line describing the state now; updates the rate estimate.
    func line(final: Bool = false) -> String {
        counters.withLock { c in
            let now = DispatchTime.now().uptimeNanoseconds
            c.updateRate(now: now)
            let elapsed = Double(now - c.started) / 1e9
            let fraction =
                c.bytesTotal > 0 ? Double(c.bytesDone) / Double(c.bytesTotal) : (c.filesTotal > 0 ? Double(c.filesDone) / Double(c.filesTotal) : 1)
            let pct = Int((min(max(fraction, 0), 1) * 100).rounded(.down))
            let rate = final && elapsed > 0 ? Double(c.bytesThisRun) / elapsed : c.rate
            var eta = "--"
            if rate > 0 && c.bytesTotal > c.bytesDone { eta = Units.formatDuration(Double(c.bytesTotal - c.bytesDone) / rate) }
            if c.bytesDone >= c.bytesTotal && c.filesDone >= c.filesTotal { eta = "0s" }
            let width = 24
            let filled = Int(Double(width) * min(max(fraction, 0), 1))
            let bar = String(repeating: "=", count: filled) + (filled < width ? ">" : "") + String(repeating: " ", count: max(0, width - filled - 1))
            var s = "\(c.phase) [\(bar)] \(pct)%  \(c.filesDone)/\(c.filesTotal) files  "
            s += "\(Units.formatBytes(c.bytesDone))/\(Units.formatBytes(c.bytesTotal))  \(Units.formatBytes(Int64(rate)))/s"
            s += final ? "  in \(Units.formatElapsed(elapsed))" : "  ETA \(eta)"
            if c.failed > 0 { s += "  failed \(c.failed)" }
            return s
        }
    }

    /// Starts the periodic reporter; returns a function that stops it (printing a final line).
    public func startReporting(heartbeat: (@Sendable () -> Void)? = nil) -> @Sendable () -> Void {
        let interval: Double
        switch output {
        case .terminal: interval = 0.25
        case .log(let i), .json(let i): interval = i
        case .none: interval = 2
        }
        let output = self.output
        let stopSignal = DispatchSemaphore(value: 0)
        let stopped = DispatchSemaphore(value: 0)
        // Tick at least once a second for the heartbeat; print at the output's own interval.
        let tick = min(interval, 1.0)
        let thread = Thread { [self] in
            let start = DispatchTime.now().uptimeNanoseconds
            var lastPrint = start
            var lastBeat: UInt64 = 0
            while stopSignal.wait(timeout: .now() + tick) == .timedOut {
                let now = DispatchTime.now().uptimeNanoseconds
                publish()
                if Double(now - lastPrint) / 1e9 >= interval - 0.01 {
                    lastPrint = now
                    switch output {
                    case .terminal: FileHandle.standardError.write(Data(("\r\u{1B}[K" + line()).utf8))
                    case .log: FileHandle.standardError.write(Data((line() + "  [progress \(timestamp())]\n").utf8))
                    case .json: FileHandle.standardError.write(Data((jsonLine() + "\n").utf8))
                    case .none: break
                    }
                }
                if now - lastBeat >= 900_000_000 {
                    lastBeat = now
                    heartbeat?()
                }
            }
            stopped.signal()
        }
        thread.name = "ferry-progress"
        thread.start()
        return { [self] in
            stopSignal.signal()
            stopped.wait()
            heartbeat?()
            publish()
            switch output {
            case .terminal: FileHandle.standardError.write(Data(("\r\u{1B}[K" + line(final: true) + "\n").utf8))
            case .log: FileHandle.standardError.write(Data((line(final: true) + "  [progress \(timestamp())]\n").utf8))
            case .json: FileHandle.standardError.write(Data((jsonLine(final: true) + "\n").utf8))
            case .none: break
            }
        }
    }

    /// The progress as one JSON object: what `line` says, as numbers.
    func jsonLine(final: Bool = false) -> String {
        let c = counters.withLock { c in
            c.updateRate(now: DispatchTime.now().uptimeNanoseconds)
            return c
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - c.started) / 1e9
        let object: [String: Any] = [
            "time": timestamp(), "level": "info", "message": final ? "progress (phase done)" : "progress", "module": "FerryEngine",
            "phase": c.phase, "files_done": c.filesDone, "files_planned": c.filesTotal, "bytes_done": c.bytesDone,
            "bytes_planned": c.bytesTotal, "failed": c.failed,
            "bytes_per_second": (final && elapsed > 0 ? Double(c.bytesThisRun) / elapsed : c.rate).rounded(),
            "elapsed_seconds": (elapsed * 1000).rounded() / 1000,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    private func timestamp() -> String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date())
    }
}

/// A phase's name without its detail: `verify: listing` and `ready: 0 mismatches` (an event's text) are
/// `verify` and `ready`.
public func phaseName(_ text: String) -> String { String(text.prefix { $0 != ":" }) }

/// The progress counters as swift-metrics (a no-op unless the process installed a backend: `metrics.listen`).
final class ProgressMetrics: Sendable {
    let filesDone = Gauge(label: Telemetry.filesDone)
    let filesTotal = Gauge(label: Telemetry.filesPlanned)
    let filesPending = Gauge(label: Telemetry.filesPending)
    let bytesDone = Gauge(label: Telemetry.bytesDone)
    let bytesTotal = Gauge(label: Telemetry.bytesPlanned)
    let bytesPending = Gauge(label: Telemetry.bytesPending)
    let rate = Gauge(label: Telemetry.throughput)
    let lastProgress = Gauge(label: Telemetry.lastProgress)
    let chunks = Counter(label: Telemetry.chunksCommitted)
    let failed = Counter(label: Telemetry.errors, dimensions: [("kind", "entry")])
    /// Per phase (copy, verify): the counters of what this process did.
    private let processed = Mutex<(phase: String, files: Counter?, bytes: Counter?)>(("", nil, nil))

    init() {
        lastProgress.record(Date().timeIntervalSince1970)
    }

    func begin(phase: String) {
        let name = phaseName(phase)
        processed.withLock { p in
            guard p.phase != name else { return }
            p = (
                name, Counter(label: Telemetry.filesProcessed, dimensions: [("phase", name)]),
                Counter(label: Telemetry.bytesProcessed, dimensions: [("phase", name)])
            )
        }
    }

    func add(files: Int64, bytes: Int64) {
        let (f, b) = processed.withLock { ($0.files, $0.bytes) }
        if files > 0 { f?.increment(by: files) }
        if bytes > 0 { b?.increment(by: bytes) }
        if files > 0 || bytes > 0 { lastProgress.record(Date().timeIntervalSince1970) }
    }

    func publish(filesDone: Int64, filesTotal: Int64, bytesDone: Int64, bytesTotal: Int64, rate: Double) {
        self.filesDone.record(filesDone)
        self.filesTotal.record(filesTotal)
        filesPending.record(max(0, filesTotal - filesDone))
        self.bytesDone.record(bytesDone)
        self.bytesTotal.record(bytesTotal)
        bytesPending.record(max(0, bytesTotal - bytesDone))
        self.rate.record(max(0, rate))
    }

    /// The job's phase as a labelled gauge: 1 for `phase`, 0 for the others.
    static func record(phase: Phase) {
        for p in Phase.allCases { Gauge(label: Telemetry.phase, dimensions: [("phase", p.rawValue)]).record(p == phase ? 1 : 0) }
    }

    static func record(verifyMismatches n: Int) { Gauge(label: Telemetry.verifyMismatches).record(n) }
}
