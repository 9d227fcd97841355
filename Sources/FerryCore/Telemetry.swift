/// Every metric ferry exports, with its type, labels and help text: the one list the exporter registers help
/// from, docs/metrics.md documents and the Grafana dashboard is checked against.
public enum Telemetry {
    public enum Kind: String, Sendable {
        case counter, gauge
    }

    public struct Metric: Sendable {
        public var name: String
        public var kind: Kind
        public var labels: [String]
        public var help: String
        /// Which processes export it: run, tap, serve.
        public var exportedBy: [String]
    }

    public static let buildInfo = "ferry_build_info"
    public static let phase = "ferry_phase"
    public static let filesDone = "ferry_files_done"
    public static let filesPlanned = "ferry_files_planned"
    public static let filesPending = "ferry_files_pending"
    public static let bytesDone = "ferry_bytes_done"
    public static let bytesPlanned = "ferry_bytes_planned"
    public static let bytesPending = "ferry_bytes_pending"
    public static let bytesProcessed = "ferry_bytes_processed_total"
    public static let filesProcessed = "ferry_files_processed_total"
    public static let chunksCommitted = "ferry_chunks_committed_total"
    public static let throughput = "ferry_throughput_bytes_per_second"
    public static let lastProgress = "ferry_last_progress_timestamp_seconds"
    public static let verifyMismatches = "ferry_verify_mismatches"
    public static let errors = "ferry_errors_total"
    public static let tapReceived = "ferry_tap_received_total"
    public static let tapRefused = "ferry_tap_refused_total"
    public static let tapForwarded = "ferry_tap_forwarded_total"
    public static let tapForwardedBytes = "ferry_tap_forwarded_bytes_total"
    public static let tapUpstreamSpoolBytes = "ferry_tap_upstream_spooled_bytes"
    public static let tapUpstreamConnected = "ferry_tap_upstream_connected"
    public static let tapLag = "ferry_tap_lag_seconds"
    public static let tapSpoolBytes = "ferry_tap_spool_bytes"
    public static let tapSpoolLimit = "ferry_tap_spool_limit_bytes"
    public static let tapBackPressure = "ferry_tap_back_pressure"
    public static let tapMode = "ferry_tap_mode"
    public static let serveRequests = "ferry_serve_requests_total"
    public static let serveBytesIn = "ferry_serve_received_bytes_total"

    public static let catalog: [Metric] = [
        Metric(
            name: buildInfo, kind: .gauge, labels: ["version", "process"], help: "Always 1: which ferry version serves these metrics",
            exportedBy: ["run", "tap", "serve"]),
        Metric(
            name: phase, kind: .gauge, labels: ["phase"], help: "1 for the phase the job is in, 0 for the others",
            exportedBy: ["run"]),
        Metric(
            name: filesDone, kind: .gauge, labels: [], help: "Files done in the current phase (copied, or verified)",
            exportedBy: ["run"]),
        Metric(name: filesPlanned, kind: .gauge, labels: [], help: "Files the current phase has to do", exportedBy: ["run"]),
        Metric(name: filesPending, kind: .gauge, labels: [], help: "Files the current phase has still to do", exportedBy: ["run"]),
        Metric(
            name: bytesDone, kind: .gauge, labels: [], help: "Bytes done in the current phase (copied, or verified)",
            exportedBy: ["run"]),
        Metric(name: bytesPlanned, kind: .gauge, labels: [], help: "Bytes the current phase has to do", exportedBy: ["run"]),
        Metric(name: bytesPending, kind: .gauge, labels: [], help: "Bytes the current phase has still to do", exportedBy: ["run"]),
        Metric(
            name: bytesProcessed, kind: .counter, labels: ["phase"],
            help: "Bytes this process copied or verified, attempts thrown away included (a file that changed while copied counts again)",
            exportedBy: ["run"]),
        Metric(
            name: filesProcessed, kind: .counter, labels: ["phase"], help: "Files this process copied or verified",
            exportedBy: ["run"]),
        Metric(
            name: chunksCommitted, kind: .counter, labels: [],
            help: "Chunks of large files made durable at the destination and recorded in the ledger", exportedBy: ["run"]),
        Metric(
            name: throughput, kind: .gauge, labels: [], help: "Bytes per second of the current phase, smoothed",
            exportedBy: ["run"]),
        Metric(
            name: lastProgress, kind: .gauge, labels: [],
            help: "Unix time of the last file or chunk done (alert when it stops moving while a phase runs)",
            exportedBy: ["run"]),
        Metric(
            name: verifyMismatches, kind: .gauge, labels: [], help: "Entries the last verify found different or missing",
            exportedBy: ["run"]),
        Metric(
            name: errors, kind: .counter, labels: ["kind"],
            help: "Errors by kind: entry (an entry failed or was refused), invalid, refused, dropped (tap input), request (serve)",
            exportedBy: ["run", "tap", "serve"]),
        Metric(name: tapReceived, kind: .counter, labels: [], help: "Records (lines, writes, paths) the tap accepted", exportedBy: ["tap"]),
        Metric(
            name: tapRefused, kind: .counter, labels: [], help: "Messages the tap refused (malformed, hostile)",
            exportedBy: ["tap"]),
        Metric(
            name: tapForwarded, kind: .counter, labels: ["upstream"], help: "Records the tap delivered to this upstream",
            exportedBy: ["tap"]),
        Metric(
            name: tapForwardedBytes, kind: .counter, labels: ["upstream"], help: "Bytes the tap delivered to this upstream",
            exportedBy: ["tap"]),
        Metric(
            name: tapUpstreamSpoolBytes, kind: .gauge, labels: ["upstream"],
            help: "Bytes spooled for this upstream: accepted, not yet delivered", exportedBy: ["tap"]),
        Metric(
            name: tapUpstreamConnected, kind: .gauge, labels: ["upstream"], help: "1 while the tap is connected to this upstream",
            exportedBy: ["tap"]),
        Metric(
            name: tapLag, kind: .gauge, labels: ["upstream"],
            help: "Age in seconds of the oldest record this upstream has not received (0 when caught up)", exportedBy: ["tap"]),
        Metric(name: tapSpoolBytes, kind: .gauge, labels: [], help: "Bytes in the tap's spool on disk", exportedBy: ["tap"]),
        Metric(
            name: tapSpoolLimit, kind: .gauge, labels: [], help: "The spool's limit in bytes (0: no limit of its own)",
            exportedBy: ["tap"]),
        Metric(
            name: tapBackPressure, kind: .gauge, labels: [], help: "1 while the spool is full and senders are held back",
            exportedBy: ["tap"]),
        Metric(
            name: tapMode, kind: .gauge, labels: ["mode"], help: "1 for the tap's mode (mirror, cutover, reverse, single)",
            exportedBy: ["tap"]),
        Metric(
            name: serveRequests, kind: .counter, labels: ["operation"], help: "Requests ferry serve answered, by operation",
            exportedBy: ["serve"]),
        Metric(
            name: serveBytesIn, kind: .counter, labels: [], help: "Request body bytes ferry serve received", exportedBy: ["serve"]),
    ]

    public static func metric(_ name: String) -> Metric? { catalog.first { $0.name == name } }
}
