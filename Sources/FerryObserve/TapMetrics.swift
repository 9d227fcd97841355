import CoreMetrics
public import FerryCore
import Foundation
import Synchronization

/// Turns a tap's status into metrics, once a second: counters advance by what the status's totals moved
/// since the last look (a restarted tap starts them again, as Prometheus expects of counters).
public final class TapMetricsSampler: Sendable {
    private let status: @Sendable () -> TapStatus?
    private let stopSignal = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let last = Mutex<[String: UInt64]>([:])

    public init(status: @escaping @Sendable () -> TapStatus?) {
        self.status = status
    }

    public func start() {
        let thread = Thread { [self] in
            repeat {
                if let s = status() { record(s) }
            } while stopSignal.wait(timeout: .now() + 1) == .timedOut
            stopped.signal()
        }
        thread.name = "ferry-tap-metrics"
        thread.start()
    }

    public func stop() {
        stopSignal.signal()
        stopped.wait()
    }

    /// Advances the counter `name` (with `dimensions`) to `total`.
    private func advance(_ name: String, _ dimensions: [(String, String)] = [], to total: UInt64) {
        let key = name + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let delta = last.withLock { seen -> UInt64 in
            let before = seen[key] ?? 0
            seen[key] = total
            return total >= before ? total - before : total
        }
        // Registered at the first look even when nothing moved, so the series exists from the start.
        Counter(label: name, dimensions: dimensions).increment(by: Int64(clamping: delta))
    }

    func record(_ s: TapStatus) {
        advance(Telemetry.tapReceived, to: s.receivedLines)
        advance(Telemetry.tapRefused, to: s.refusedMessages)
        advance(Telemetry.errors, [("kind", "invalid")], to: s.invalidLines)
        advance(Telemetry.errors, [("kind", "refused")], to: s.refusedMessages)
        advance(Telemetry.errors, [("kind", "dropped")], to: s.droppedLines)
        Gauge(label: Telemetry.tapSpoolBytes).record(Double(s.spoolBytes))
        Gauge(label: Telemetry.tapSpoolLimit).record(Double(s.spoolLimit))
        Gauge(label: Telemetry.tapBackPressure).record(s.backPressure ? 1 : 0)
        for m in TapMode.allCases { Gauge(label: Telemetry.tapMode, dimensions: [("mode", m.rawValue)]).record(m == s.mode ? 1 : 0) }
        for u in s.upstreams {
            let d = [("upstream", u.name)]
            advance(Telemetry.tapForwarded, d, to: u.forwardedLines)
            advance(Telemetry.tapForwardedBytes, d, to: u.forwardedBytes)
            Gauge(label: Telemetry.tapUpstreamSpoolBytes, dimensions: d).record(Double(u.spoolBytes))
            Gauge(label: Telemetry.tapLag, dimensions: d).record(u.lagSeconds)
            Gauge(label: Telemetry.tapUpstreamConnected, dimensions: d).record(u.connected ? 1 : 0)
        }
    }
}
