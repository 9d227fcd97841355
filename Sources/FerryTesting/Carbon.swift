public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Loopback TCP ports that are free right now (bound to port 0, then released).
public func freePorts(_ count: Int) -> [Int] {
    var fds: [Int32] = []
    var ports: [Int] = []
    defer { for fd in fds { close(fd) } }
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        fds.append(fd)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        ports.append(Int(UInt16(bigEndian: addr.sin_port)))
    }
    return ports
}

public struct LaunchError: Error, CustomStringConvertible {
    public var description: String
}

/// Starts a daemon for a test: `executable` with its output appended to `log` (created if missing), stdin from
/// /dev/null. Waits (polling every 20 ms) until `ready()` holds; if the process exits or `timeout` passes
/// first, kills it and throws with the end of its log.
public func launchDaemon(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, log: String, timeout: Double,
    what: String, ready: () -> Bool
) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if let environment { p.environment = environment }
    if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    try handle.seekToEnd()
    p.standardOutput = handle
    p.standardError = handle
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while !ready() {
        guard p.isRunning, Date() < deadline else {
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            throw LaunchError(description: "\(what) did not start; its log ends:\n\(text.split(separator: "\n").suffix(8).joined(separator: "\n"))")
        }
        usleep(20_000)
    }
    return p
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
public func tcpListening(_ port: Int) -> Bool { SeaweedFS.listening(port) }

/// A real carbon-cache (PyPI `carbon`, the reference daemon) on loopback ports chosen free, with its own storage
/// directory and schema; started in the foreground and stopped by PID.
public final class CarbonCache: @unchecked Sendable {
    public let dir: TempDir
    public let linePort: Int
    public let picklePort: Int
    public let queryPort: Int
    let python: String
    let script: String
    let libDir: String
    /// The interface it listens on, and the command prefix it runs under (another test host's namespaces).
    public let host: String
    let prefix: [String]
    let dataDir: String?
    private let state = NSLock.Protected<Process?>(nil)

    /// Where carbon writes its Whisper files.
    public var storage: String { dataDir ?? dir.sub("storage/whisper") }
    public var lineAddress: String { "\(host):\(linePort)" }

    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    /// `host`, `prefix` and `dataDir` run it on another test host (`TwoHosts.far`), writing its Whisper files
    /// to `dataDir` there.
    public init(
        name: String = "carbon", retentions: String = "1s:2h", storage existing: String? = nil, host: String = "127.0.0.1",
        prefix: [String] = [], dataDir: String? = nil
    ) throws {
        dir = TempDir(name)
        self.host = host
        self.prefix = prefix
        self.dataDir = dataDir
        let ports = freePorts(3)
        linePort = ports[0]
        picklePort = ports[1]
        queryPort = ports[2]
        (python, script, libDir) = try Self.locate()
        try FileManager.default.createDirectory(atPath: dir.sub("conf"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.sub("storage/whisper"), withIntermediateDirectories: true)
        let conf = """
            [cache]
            STORAGE_DIR = \(dir.sub("storage"))
            LOCAL_DATA_DIR = \(dataDir ?? dir.sub("storage/whisper"))
            WHITELISTS_DIR = \(dir.sub("storage/lists"))
            LOG_DIR = \(dir.sub("storage/log"))
            PID_DIR = \(dir.sub("storage"))
            DATABASE = whisper
            MAX_CACHE_SIZE = inf
            MAX_UPDATES_PER_SECOND = 100000
            MAX_CREATES_PER_MINUTE = 100000
            LINE_RECEIVER_INTERFACE = \(host)
            LINE_RECEIVER_PORT = \(linePort)
            ENABLE_UDP_LISTENER = False
            PICKLE_RECEIVER_INTERFACE = 127.0.0.1
            PICKLE_RECEIVER_PORT = \(picklePort)
            CACHE_QUERY_INTERFACE = 127.0.0.1
            CACHE_QUERY_PORT = \(queryPort)
            LOG_LISTENER_CONN_SUCCESS = False
            LOG_UPDATES = False
            LOG_CREATES = False
            WHISPER_AUTOFLUSH = True
            WHISPER_LOCK_WRITES = True
            WHISPER_FALLOCATE_CREATE = False

            """
        try conf.write(toFile: dir.sub("conf/carbon.conf"), atomically: true, encoding: .utf8)
        try "[default]\npattern = .*\nretentions = \(retentions)\n".write(
            toFile: dir.sub("conf/storage-schemas.conf"), atomically: true, encoding: .utf8)
        try "[default]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n".write(
            toFile: dir.sub("conf/storage-aggregation.conf"), atomically: true, encoding: .utf8)
        try launch()
    }

    /// The interpreter itself (not a version-manager shim), carbon-cache.py, and carbon's library directory
    /// (the PyPI wheel installs it under site-packages/opt/graphite/lib).
    static func locate() throws -> (String, String, String) {
        let q = Process()
        q.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        q.arguments = [
            "python3", "-c",
            "import sys, sysconfig; print(sys.executable); print(sysconfig.get_path('scripts')); print(sysconfig.get_path('purelib'))",
        ]
        let out = Pipe()
        q.standardOutput = out
        try q.run()
        let lines = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").map(String.init)
        q.waitUntilExit()
        guard lines.count == 3 else { throw StartError(description: "cannot ask python3 where carbon is") }
        let script = lines[1] + "/carbon-cache.py"
        let lib = lines[2] + "/opt/graphite/lib"
        guard FileManager.default.fileExists(atPath: script), FileManager.default.fileExists(atPath: lib + "/carbon") else {
            throw StartError(description: "carbon-cache.py not found at \(script): pip install carbon")
        }
        return (lines[0], script, lib)
    }

    /// Starts carbon-cache (again, after `stop`/`kill`, on the same ports and storage) and waits for its port.
    public func launch() throws {
        var env = ProcessInfo.processInfo.environment
        env["PYTHONPATH"] = libDir
        // A pid file left by a killed instance would make carbon refuse to start.
        try? FileManager.default.removeItem(atPath: dir.sub("storage/carbon-cache-a.pid"))
        let port = linePort
        let args = [script, "--config=\(dir.sub("conf/carbon.conf"))", "--nodaemon", "start"]
        let (host, prefix) = (self.host, self.prefix)
        let p = try launchDaemon(
            prefix.first ?? python, Array(prefix.dropFirst()) + (prefix.isEmpty ? [] : [python]) + args, environment: env,
            log: dir.sub("carbon.log"), timeout: 30, what: "carbon-cache"
        ) { prefix.isEmpty ? tcpListening(port) : Self.listening(host: host, port: port, prefix: prefix) }
        state.withLock { $0 = p }
    }

    /// Whether `host:port` accepts connections as seen from inside `prefix` (another test host).
    public static func listening(host: String, port: Int, prefix: [String]) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: prefix[0])
        p.arguments =
            Array(prefix.dropFirst()) + [
                "/usr/bin/env", "python3", "-c", "import socket; socket.create_connection((\"\(host)\", \(port)), timeout=1)",
            ]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    /// SIGKILL: the daemon dies with whatever it held in memory.
    public func kill() {
        guard let process = state.withLock({ $0 }), process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM: carbon flushes its cache to disk and exits.
    public func stop() {
        guard let process = state.withLock({ $0 }), process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    public var isRunning: Bool { state.withLock { $0?.isRunning ?? false } }

    deinit { kill() }
}

/// A plaintext Graphite sender: one TCP connection, blocking writes.
public final class LineSender {
    public let fd: Int32

    public init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let rc = SeaweedFS.withLoopback(port) { _, addr, len in connect(self.fd, addr, len) }
        guard rc == 0 else {
            // deinit closes fd (it runs for a class whose throwing init had set every property).
            throw CarbonCache.StartError(description: "cannot connect to 127.0.0.1:\(port): \(String(cString: strerror(errno)))")
        }
    }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    public func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw CarbonCache.StartError(description: "send: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    /// Carbon's pickle framing: 4-byte big-endian length, then the pickle.
    public func sendPickle(_ payload: [UInt8]) throws {
        let n = UInt32(payload.count)
        try send([UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + payload)
    }

    deinit { close(fd) }
}

/// Sends one UDP datagram to 127.0.0.1:`port`.
public func sendDatagram(_ text: String, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    let bytes = Array(text.utf8)
    _ = SeaweedFS.withLoopback(port) { _, addr, len in
        Int32(bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, bytes.count, 0, addr, len) })
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held. Tests wait on
/// observable state this way, never on a fixed sleep.
@discardableResult
public func waitUntil(timeout: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}

extension WhisperOracle {
    /// Every metric under `root` with its finest archive's points, read by the reference `whisper` package.
    public static func treePoints(_ root: String, prefix: [String] = []) throws -> [String: [Int: Double]] {
        let text = try run(["tree-points", root], prefix: prefix)
        let json = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: [String: Double]] ?? [:]
        return json.mapValues { d in Dictionary(uniqueKeysWithValues: d.compactMap { k, v in Int(k).map { ($0, v) } }) }
    }
}

/// A tmpfs of `size` (e.g. "5m") mounted on `path` (default: a fresh directory), for full-disk tests; needs
/// root. Unmounted when the value goes away; `resize` grows it in place.
public final class TmpfsMount: @unchecked Sendable {
    let owned: TempDir?
    public let path: String

    public struct Failed: Error, CustomStringConvertible {
        public var description: String
    }

    public init(at existing: String? = nil, size: String) throws {
        owned = existing == nil ? TempDir("tmpfs") : nil
        path = existing ?? owned!.path
        guard Self.mount(["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path]) else {
            throw Failed(description: "this test needs to mount a tmpfs (run as root)")
        }
    }

    public func resize(_ size: String) throws {
        guard Self.mount(["-o", "remount,size=\(size)", path]) else { throw Failed(description: "tmpfs remount failed") }
    }

    static func mount(_ args: [String], tool: String = "/bin/mount") -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    deinit { _ = Self.mount(["-l", path], tool: "/bin/umount") }
}

/// Runs Python code (with `pickle`, `sys` and `os` imported) and returns what it wrote to stdout: the tests'
/// source of real pickles, including hostile ones.
public func pythonOutput(_ code: String) throws -> [UInt8] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import pickle, sys, os\n" + code]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw TmpfsMount.Failed(description: "python3 failed: \(code.prefix(80))") }
    return [UInt8](data)
}

/// Sends `chunks` over one connection from a thread of its own (a held-back sender blocks there, not in the
/// test); the semaphore is signalled when it is done.
public func sendInBackground(_ chunks: [String], port: Int) -> DispatchSemaphore {
    let done = DispatchSemaphore(value: 0)
    Thread {
        if let sender = try? LineSender(port: port) {
            for c in chunks { try? sender.send(c) }
        }
        done.signal()
    }.start()
    return done
}
