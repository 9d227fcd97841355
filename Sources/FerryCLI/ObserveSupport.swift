import CoreMetrics
import FerryCore
import FerryObserve
import FerryTap
import Foundation
import Logging

/// Starts a Prometheus endpoint on `listen` (installing the metrics backend first), or nothing when nil.
/// Call it before the job, the tap or the server is made: their metrics bind to the backend when created.
func startMetrics(_ listen: String?, process: String, logger: Logger) throws -> MetricsEndpoint? {
    guard let listen else { return nil }
    let endpoint = try MetricsEndpoint(listen: listen, logger: logger)
    Gauge(label: Telemetry.buildInfo, dimensions: [("version", ferryVersion), ("process", process)]).record(1)
    return endpoint
}

/// A tap, seen by its metrics sampler while it runs.
final class ObservedTap: TapService {
    let tap: any TapService
    let sampler: TapMetricsSampler?

    init(_ tap: any TapService) {
        self.tap = tap
        sampler = tap is any TapServer ? TapMetricsSampler { (tap as? any TapServer)?.status() } : nil
    }

    func start() throws {
        try tap.start()
        sampler?.start()
    }

    func stop() {
        sampler?.stop()
        tap.stop()
    }
}
