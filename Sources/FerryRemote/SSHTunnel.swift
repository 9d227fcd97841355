import FerryCore
import Foundation

/// Where `url: ssh://[user@]host[:port]` leads, and how to get there.
public struct SSHTarget: Sendable, Equatable {
    public var destination: String
    public var port: Int?
    /// The ssh command and its own options (the plan's `ssh`, default `ssh`): `ssh -F /etc/ferry/ssh_config`.
    public var command: [String]
    /// The ferry executable on the far host (the plan's `ferry`, default `ferry` on its PATH).
    public var ferry: String
}

/// `ferry serve` on the far host, started for this job through the system ssh client: no open port, no
/// certificate, the operator's own SSH keys and config (rsync's way). The far server listens on a unix socket
/// that ssh forwards to one here (`-L local.sock:remote.sock`); the token is minted for the connection and
/// travels on ssh's stdin, never on a command line. When this process ends, even by kill -9, ssh's stdin closes,
/// the far `ferry serve --stdio-session` sees end of file and stops, and ssh exits.
public final class SSHTunnel: @unchecked Sendable {
    // @unchecked: mutable state only under `lock`.
    let target: SSHTarget
    let root: String
    public let token = RemoteToken.random()
    private let lock = NSLock()
    private var process: Process?
    private var stdin: Pipe?
    private var socketDirectory: String?
    private var started: String?

    public init(target: SSHTarget, root: String) {
        self.target = target
        self.root = root
    }

    deinit { close() }

    static func quote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// The local socket that reaches the far `ferry serve`, starting ssh on first use.
    public func socket() throws -> String {
        lock.lock()
        defer { lock.unlock() }
        if let started, process?.isRunning == true { return started }
        close(locked: true)
        let dir = NSTemporaryDirectory() + "ferry-ssh-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let local = dir + "/serve.sock"
        let remote = "/tmp/ferry-serve-\(UUID().uuidString.prefix(12)).sock"
        let log = dir + "/ssh.log"
        var args =
            Array(target.command.dropFirst()) + [
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes", "-L", "\(local):\(remote)",
            ]
        if let port = target.port { args += ["-p", String(port)] }
        let serve = [target.ferry, "serve", "--listen", "unix:" + remote, "--root", root, "--mkdir-root", "--stdio-session"]
        args += [target.destination, "--", serve.map(Self.quote).joined(separator: " ")]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [target.command.first ?? "ssh"] + args
        let input = Pipe()
        let output = Pipe()
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        p.standardInput = input
        p.standardOutput = output
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        do {
            try withDefaultSignalMask { try p.run() }
        } catch {
            throw FerryError(.other, "cannot start \(target.command.first ?? "ssh")", underlying: error)
        }
        process = p
        stdin = input
        socketDirectory = dir
        input.fileHandleForWriting.write(Data((String(decoding: Array(token.header.utf8.dropFirst(7)), as: UTF8.self) + "\n").utf8))
        // The far server says where it listens once it does; ssh then forwards to it.
        let line = Self.readLine(output.fileHandleForReading, timeout: 60)
        guard let line, line.hasPrefix("listening") else {
            let why = (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").suffix(4).joined(separator: "; ") ?? ""
            close(locked: true)
            throw FerryError(
                .other,
                "ssh \(target.destination): ferry serve did not start on the far host"
                    + (why.isEmpty ? "" : ": \(why)") + " (is ferry installed there? set `ferry:` to its path)")
        }
        started = local
        return local
    }

    /// One line from `handle` within `timeout` seconds (nil at end of file or timeout).
    static func readLine(_ handle: FileHandle, timeout: Double) -> String? {
        let result = NSLock.Box<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            var bytes: [UInt8] = []
            while true {
                let d = handle.readData(ofLength: 1)
                if d.isEmpty || d.first == 0x0A { break }
                bytes += d
            }
            result.value = bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
            done.signal()
        }.start()
        return done.wait(timeout: .now() + timeout) == .success ? result.value : nil
    }

    public func close() {
        lock.lock()
        defer { lock.unlock() }
        close(locked: true)
    }

    private func close(locked: Bool) {
        try? stdin?.fileHandleForWriting.close()
        if let p = process, p.isRunning {
            // ssh ends when its stdin closes; SIGTERM, then SIGKILL if it has not within 5 s: never a hang here.
            p.terminate()
            let deadline = Date().addingTimeInterval(5)
            while p.isRunning && Date() < deadline { usleep(10_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        if let dir = socketDirectory { try? FileManager.default.removeItem(atPath: dir) }
        process = nil
        stdin = nil
        socketDirectory = nil
        started = nil
    }
}

extension NSLock {
    /// A value set by one thread and read by another after a semaphore.
    final class Box<T>: @unchecked Sendable {
        var value: T
        init(_ v: T) { value = v }
    }
}
