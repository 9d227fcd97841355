import CFerrySys
public import FerryCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One control request (a JSON line on the tap's unix socket).
public struct ControlRequest: Codable, Sendable {
    public var op: String
    public var mode: String?
    public var fence: FenceToken?

    public init(op: String, mode: String? = nil, fence: FenceToken? = nil) {
        self.op = op
        self.mode = mode
        self.fence = fence
    }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var status: TapStatus?
    public var seq: UInt64?
    public var error: String?

    public init(ok: Bool, status: TapStatus? = nil, seq: UInt64? = nil, error: String? = nil) {
        self.ok = ok
        self.status = status
        self.seq = seq
        self.error = error
    }
}

/// What every tap process answers on its control socket.
public protocol TapServer: AnyObject {
    func status() -> TapStatus
    func setMode(_ m: TapMode) throws -> TapStatus
    func fence(_ token: FenceToken) throws -> UInt64
}

extension TapServer {
    /// One control request: status, mode or fence.
    public func handle(_ request: ControlRequest) -> ControlResponse {
        do {
            switch request.op {
            case "status", "mark":
                let s = status()
                return ControlResponse(ok: true, status: s, seq: s.head)
            case "mode":
                guard let name = request.mode, let m = TapMode(rawValue: name) else {
                    return ControlResponse(ok: false, error: "mode: expected one of \(TapMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return ControlResponse(ok: true, status: try setMode(m))
            case "fence":
                guard let token = request.fence else { return ControlResponse(ok: false, error: "fence needs its token") }
                return ControlResponse(ok: true, seq: try fence(token))
            default:
                return ControlResponse(ok: false, error: "unknown op '\(request.op)' (status, mode, fence)")
            }
        } catch {
            return ControlResponse(ok: false, error: "\(error)")
        }
    }
}

/// Sends `request` to the unix socket at `path` and returns the answer: up to its first newline with
/// `untilNewline`, else until the server closes. nil when nothing listens there (no socket, or a stale one).
public func unixExchange(_ path: String, _ request: [UInt8], timeout: Double, what: String, untilNewline: Bool) throws -> [UInt8]? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemCallError("socket", errno: errno) }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
        throw FerryError(.invalidPlan, "\(what) socket path too long (max 107 bytes): \(path)")
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { p in
        for (i, b) in bytes.enumerated() { p[i] = b }
    }
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if ok != 0 {
        if errno == ENOENT || errno == ECONNREFUSED { return nil }
        throw SystemCallError("connect", errno: errno, path: path)
    }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    guard sent == request.count else { throw FerryError(.other, "\(what): request not sent (\(String(cString: strerror(errno))))") }
    var reply: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while !(untilNewline && reply.contains(0x0A)) {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
        if n < 0 && errno == EINTR { continue }
        if n == 0 && !untilNewline { break }
        guard n > 0 else { throw FerryError(.other, "\(what): no answer from \(path) within \(Int(timeout)) s") }
        reply.append(contentsOf: chunk[0..<n])
        guard reply.count <= 1 << 20 else { throw FerryError(.other, "\(what): answer from \(path) is over 1 MiB") }
    }
    return reply
}

/// The engine's and `ferry tap ctl`'s handle on a tap process, through its control socket. `arm()` starts the
/// tap (detached, in its own session) when nothing answers on the socket.
public struct TapClient: TapControl {
    public let socketPath: String
    /// Starts the tap process; nil when this client must not start one.
    public let launcher: (@Sendable () throws -> Void)?
    public let timeout: Double

    public init(socketPath: String, timeout: Double = 10, launcher: (@Sendable () throws -> Void)? = nil) {
        self.socketPath = socketPath
        self.timeout = timeout
        self.launcher = launcher
    }

    public func request(_ req: ControlRequest) throws -> ControlResponse? {
        var line = try JSONEncoder().encode(req)
        line.append(0x0A)
        guard let reply = try unixExchange(socketPath, Array(line), timeout: timeout, what: "tap control", untilNewline: true) else { return nil }
        let body = reply[..<(reply.firstIndex(of: 0x0A) ?? reply.endIndex)]
        return try JSONDecoder().decode(ControlResponse.self, from: Data(body))
    }

    func must(_ req: ControlRequest) throws -> ControlResponse {
        guard let r = try request(req) else {
            throw FerryError(.other, "the tap is not running (nothing answers on \(socketPath)); start it with `ferry tap PLAN`")
        }
        guard r.ok else { throw FerryError(.other, "tap refused \(req.op): \(r.error ?? "no reason given")") }
        return r
    }

    public func status() throws -> TapStatus? {
        try request(ControlRequest(op: "status"))?.status
    }

    public func arm() throws -> UInt64 {
        if let s = try status() {
            if s.mode != .mirror { try setMode(.mirror) }
            return s.head
        }
        guard let launcher else { return try must(ControlRequest(op: "mark")).seq ?? 0 }
        try launcher()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let s = try status() { return s.head }
            usleep(50_000)
        }
        throw FerryError(.other, "the tap did not start within \(Int(timeout)) s (see its log)")
    }

    @discardableResult
    public func setMode(_ mode: TapMode) throws -> TapStatus {
        guard let s = try must(ControlRequest(op: "mode", mode: mode.rawValue)).status else {
            throw FerryError(.other, "tap answered without a status")
        }
        return s
    }

    public func fence(_ token: FenceToken) throws -> UInt64 {
        guard let seq = try must(ControlRequest(op: "fence", fence: token)).seq else {
            throw FerryError(.other, "tap answered the fence without a sequence number")
        }
        return seq
    }
}

/// Starts a process in a session of its own (so a Ctrl-C in the operator's terminal does not reach it), with
/// stdin from /dev/null and stdout/stderr appended to `log`.
public func spawnDetached(executable: String, arguments: [String], log: String) throws -> Int32 {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    posix_spawnattr_setflags(&attr, Int16(0x80 /* POSIX_SPAWN_SETSID, glibc */ | POSIX_SPAWN_SETSIGMASK))
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // Nothing else leaks into the daemon: an inherited descriptor (a pipe or the socket a parent uses to see its
    // child exit) would keep whoever started ferry waiting for the daemon instead.
    ferry_spawn_closefrom(&actions, 3)
    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, &attr, argv, environ)
    guard rc == 0 else { throw SystemCallError("posix_spawn", errno: rc, path: executable) }
    return pid
}

/// How often the taps log one kind of refused input: the first 20, then every 10,000th, so unauthenticated floods
/// cannot fill the disk the spool and the log share, while the counters in the status stay exact.
public enum LogLimit {
    public static func allows(_ n: UInt64) -> Bool { n <= 20 || n % 10_000 == 0 }
}
