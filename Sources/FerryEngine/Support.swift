import FerryCore
import Foundation
public import Logging
import Synchronization

/// Runs `count` OS threads and waits for all. Copy and verify workers do blocking file I/O, which belongs on
/// threads of its own rather than in Swift's cooperative pool (two threads on this kind of machine).
func runThreads(_ count: Int, name: String, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            body(i)
            group.leave()
        }
        t.name = "\(name)-\(i)"
        t.stackSize = 4 << 20
        t.start()
    }
    group.wait()
}

/// The first error that stops a phase, shared by its threads.
final class FatalError: Sendable {
    private let state = Mutex<(any Error)?>(nil)
    func set(_ e: any Error) { state.withLock { if $0 == nil { $0 = e } } }
    var error: (any Error)? { state.withLock { $0 } }
    var isSet: Bool { error != nil }
    /// Whether the phase's threads should stop: an error, or the operator's interrupt.
    var halted: Bool { Interruption.requested || isSet }
}

/// Deterministic rotating sample: each verify round takes a different slice of the key space, so successive
/// sampled verifies cover every file after 1/rate rounds.
public enum Sampling {
    public static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        // Final avalanche (splitmix64) so that similar paths spread evenly.
        h ^= h >> 30
        h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27
        h = h &* 0x94d0_49bb_1331_11eb
        h ^= h >> 31
        return h
    }

    public static func isSelected(_ path: String, round: Int, rate: Double) -> Bool {
        if rate >= 1 { return true }
        let position = Double(fnv1a(path) >> 11) / Double(UInt64(1) << 53)
        let start = (Double(round) * rate).truncatingRemainder(dividingBy: 1)
        var d = position - start
        if d < 0 { d += 1 }
        return d < rate
    }
}

/// Chunk layout of a file: fixed-size chunks, the last one shorter; an empty file has none.
public enum ChunkLayout {
    public static func chunks(size: Int64, chunkSize: Int64) -> [(index: Int, offset: Int64, length: Int64)] {
        precondition(chunkSize > 0)
        var out: [(Int, Int64, Int64)] = []
        var offset: Int64 = 0
        var i = 0
        while offset < size {
            let len = min(chunkSize, size - offset)
            out.append((i, offset, len))
            offset += len
            i += 1
        }
        return out
    }
}

/// The job's locks, two `flock`s in the state directory (released by the kernel when a process dies, even by
/// `kill -9`):
/// - `lock`, the coordinator: held exclusively for a singleton step (a run's snapshot, catch-up and finish, a
///   verify, a cutover). Runs wait for it; `ferry verify`, `cutover`, `rollback` and `complete` refuse when it is
///   taken.
/// - `workers.lock`, held shared by every `ferry run` for its whole life: the commands that need the job to
///   themselves take it exclusively, so they refuse while any run is at work, and runs join each other.
public final class JobLock {
    private let fd: Int32
    private let workersFD: Int32

    /// The job to this process alone: no run at work and no step of another command (non-blocking).
    public init(stateDirectory: String) throws {
        fd = try Self.open(stateDirectory + "/lock")
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let holder = Self.holder(fd)
            close(fd)
            throw FerryError(.stateConflict, "another ferry process (pid \(holder)) is working on this job")
        }
        do {
            workersFD = try Self.open(stateDirectory + "/workers.lock")
        } catch {
            close(fd)
            throw error
        }
        if flock(workersFD, LOCK_EX | LOCK_NB) != 0 {
            close(workersFD)
            close(fd)
            throw FerryError(.stateConflict, "a ferry run is working on this job (see `ferry status`); wait for it, or stop it")
        }
        Self.writePID(fd)
    }

    deinit {
        if workersFD >= 0 { close(workersFD) }
        close(fd)
    }

    static func open(_ path: String) throws -> Int32 {
        try FileManager.default.createDirectory(atPath: PathUtil.directory(of: path), withIntermediateDirectories: true)
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FerryError(.other, "cannot open \(path)", cause: String(cString: strerror(errno))) }
        return fd
    }

    static func holder(_ fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buf, 31, 0)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
    }

    static func writePID(_ fd: Int32) {
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    /// Runs a singleton step of a run under the coordinator lock, waiting for it while another run holds it.
    public static func coordinate<T>(_ stateDirectory: String, step: String, logger: Logger, _ body: () throws -> T) throws -> T {
        let fd = try open(stateDirectory + "/lock")
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            logger.info("waiting for another ferry process (pid \(holder(fd))) to finish its step before this run's \(step)")
            while flock(fd, LOCK_EX) != 0 {
                guard errno == EINTR else { throw FerryError(.other, "cannot lock \(stateDirectory)/lock", cause: String(cString: strerror(errno))) }
            }
        }
        writePID(fd)
        return try body()
    }
}

/// A run's membership of the job's workers: a shared lock on `workers.lock` for the run's life.
public final class WorkerMembership {
    private let fd: Int32

    public init(stateDirectory: String) throws {
        fd = try JobLock.open(stateDirectory + "/workers.lock")
        if flock(fd, LOCK_SH | LOCK_NB) != 0 {
            close(fd)
            throw FerryError(.stateConflict, "another ferry command (verify, cutover, rollback, complete) has this job; run again when it is done")
        }
    }

    deinit { close(fd) }
}

extension Error {
    /// The operator-facing text of an error (FerryError, SystemCallError or anything else).
    var operatorText: String { "\(self)" }

    /// Whether the error means the destination is out of space.
    var isNoSpace: Bool {
        if let e = self as? SystemCallError { return e.errno == ENOSPC || e.errno == EDQUOT }
        if let e = self as? FerryError { return e.code == .destinationFull }
        return false
    }
}

private let interruptFlag = Atomic<Bool>(false)

/// SIGINT/SIGTERM ask a run to stop cleanly: workers finish the file in hand, commit what is durable, and the
/// run exits with "interrupted"; `ferry run` again resumes. A second signal kills the process at once.
public enum Interruption {
    public static func install() {
        // A parent may have spawned us with these signals blocked (threads of libdispatch block them, and the
        // mask is inherited): unblock them, or a stop request would never arrive.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for sig in [SIGINT, SIGTERM] {
            signal(sig) { s in
                if interruptFlag.exchange(true, ordering: .relaxed) {
                    signal(s, SIG_DFL)
                    raise(s)
                }
            }
        }
    }

    public static var requested: Bool { interruptFlag.load(ordering: .relaxed) }
}

/// A worker's chunk buffer, or one of `size` bytes when an object needs larger chunks than the plan's (S3's
/// 10,000-part limit); the larger one is freed with the value.
final class ChunkBuffer {
    let buffer: UnsafeMutableRawBufferPointer
    private let owned: Bool

    init(_ shared: UnsafeMutableRawBufferPointer, atLeast size: Int64) {
        owned = Int(size) > shared.count
        buffer = owned ? UnsafeMutableRawBufferPointer.allocate(byteCount: Int(size), alignment: 4096) : shared
    }

    deinit { if owned { buffer.deallocate() } }
}
