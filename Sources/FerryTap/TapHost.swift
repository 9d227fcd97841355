public import FerryCore
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// One lifecycle for every tap: a `Service` under swift-service-lifecycle that starts the tap, waits for the
/// graceful shutdown (SIGTERM or SIGINT through the service group), then stops it in the one order every tap
/// keeps (listeners closed first, so nothing new is accepted, then the journal, then the event loops).
public struct TapHost: Service {
    let tap: any TapService
    let logger: Logger

    public init(_ tap: any TapService, logger: Logger) {
        self.tap = tap
        self.logger = logger
    }

    public func run() async throws {
        try tap.start()
        try? await gracefulShutdown()
        logger.notice("\(tap.shutdownNotice)")
        tap.stop()
    }

    /// Runs `tap` until SIGTERM or SIGINT, blocking the calling (non-async) thread: `ferry tap run`.
    public static func runUntilSignalled(_ tap: any TapService, logger: Logger) throws {
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: TapHost(tap, logger: logger), successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let failure = Mutex<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                try await group.run()
            } catch {
                failure.withLock { $0 = error }
            }
            done.signal()
        }
        done.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }
}

/// A tap's persisted mode, in the one format every tap writes: `MODE PRIMARY\n` (`cutover new`), replaced
/// atomically (temporary file, fsync, rename) before the mode takes effect. A file of the mode alone (written by
/// an earlier S3 tap) reads with no primary.
public enum ModeFile {
    public static func load(_ path: String) -> (mode: TapMode, primary: String?)? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let parts = text.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let first = parts.first, let mode = TapMode(rawValue: first) else { return nil }
        let primary = parts.count > 1 && (parts[1] == "old" || parts[1] == "new") ? parts[1] : nil
        return (mode, primary)
    }

    public static func store(_ path: String, mode: TapMode, primary: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FerryError(.other, "cannot write \(tmp)", cause: String(cString: strerror(errno))) }
        let bytes = Array("\(mode.rawValue) \(primary)\n".utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(tmp, path) == 0 else {
            throw FerryError(.other, "cannot persist the tap mode to \(path)", cause: String(cString: strerror(errno)))
        }
    }
}
