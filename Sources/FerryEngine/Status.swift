public import FerryCore
import Foundation

/// What `ferry status` shows, read from the ledger only (safe while a run works in another process).
public struct StatusReport: Codable, Sendable {
    /// The version of this JSON shape (docs/status-json.md); bumped when a field changes meaning or goes away.
    public static let currentSchema = 1
    public struct Runner: Codable, Sendable {
        public var pid: Int
        public var alive: Bool
        public var heartbeatAgeSeconds: Double?
        public var liveBytesDone: Int64
        public var liveFilesDone: Int64
    }
    public var schemaVersion = StatusReport.currentSchema
    public var job: String
    public var plan: String
    public var phase: String
    public var source: String
    public var destination: String
    public var snapshotAt: String?
    public var filesTotal: Int64
    public var filesDone: Int64
    public var filesPending: Int64
    public var filesFailed: Int64
    public var filesVanished: Int64
    public var directories: Int64
    public var symlinks: Int64
    public var bytesTotal: Int64
    public var bytesDone: Int64
    public var runner: Runner?
    public var lastVerify: VerifyRunRecord?
    public var cutoverAt: String?
    public var cutoverForced: Bool
    public var lastError: String?
    public var skipped: Int
    /// The tap's health (filled in by the CLI, which knows the tap).
    public var tap: TapStatus?
    /// Bytes that crossed a network (a remote store), and the logical bytes they carried.
    public var wireBytes: Int64 = 0
    public var wireLogical: Int64 = 0
    /// What `ferry ctl` has set (pause, throttle, concurrency, postpone).
    public var control: ControlSettings = ControlSettings()
}

extension Job {
    public func status() throws -> StatusReport? {
        guard Ledger.exists(in: plan.stateDirectory) else { return nil }
        let ledger = try openLedger(create: false)
        guard let job = try ledger.job() else { return nil }
        let c = try ledger.counts()
        let other = try ledger.countOther()
        let iso = ISO8601DateFormatter()
        var runner: StatusReport.Runner?
        if let pid = job.runnerPID {
            let alive = kill(pid_t(pid), 0) == 0 || errno == EPERM
            runner = .init(
                pid: pid, alive: alive,
                heartbeatAgeSeconds: job.runnerHeartbeat.map { Date().timeIntervalSince1970 - $0 },
                liveBytesDone: job.liveBytesDone, liveFilesDone: job.liveFilesDone)
        }
        return StatusReport(
            job: job.name, plan: plan.file, phase: job.phase.rawValue, source: plan.source.displayName,
            destination: plan.destination.displayName,
            snapshotAt: job.snapshotAt.map { iso.string(from: Date(timeIntervalSince1970: $0)) },
            filesTotal: c.totalFiles, filesDone: c.files["done"] ?? 0, filesPending: c.files["pending"] ?? 0,
            filesFailed: c.files["failed"] ?? 0, filesVanished: c.files["vanished"] ?? 0,
            directories: other.directories, symlinks: other.symlinks, bytesTotal: c.totalBytes, bytesDone: c.doneBytes,
            runner: runner, lastVerify: try ledger.lastVerify(),
            cutoverAt: job.cutoverAt.map { iso.string(from: Date(timeIntervalSince1970: $0)) },
            cutoverForced: job.cutoverForced, lastError: job.lastError, skipped: Int(try ledger.countSkipped().refused), tap: nil,
            wireBytes: job.wireBytes, wireLogical: job.wireLogical, control: try ledger.controlSettings())
    }
}
