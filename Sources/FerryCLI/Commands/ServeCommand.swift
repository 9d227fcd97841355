import ArgumentParser
import FerryCore
import FerryRemote
import FerryTap
import Foundation

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the stores under a root to ferry jobs on other hosts, until SIGTERM or SIGINT.",
        discussion: """
            Run on the far host of a migration. A plan there names `kind: remote` with this host's url, the token
            and the store (`store: {kind: whisper, path: /var/lib/graphite/whisper}`), which must lie beneath --root.
            Every request needs the token. A listen address other than loopback needs TLS (--tls-cert, --tls-key)
            unless --insecure is given.
            """)
    @Option(name: .long, help: "HOST:PORT to listen on (port 0: any free port, printed on stdout), or unix:PATH.") var listen: String
    @Option(name: .long, help: "The directory whose stores are served; nothing outside it is reachable.") var root: String
    @Option(name: .long, help: "A file holding the bearer token (at least 16 printable characters).") var tokenFile: String?
    @Flag(
        name: .long,
        help: "Read the token from the first line of stdin and stop when stdin closes (how a job starts it over SSH).")
    var stdioSession = false
    @Flag(name: .long, help: "Create --root when it does not exist.") var mkdirRoot = false
    @Option(name: .long, help: "PEM certificate chain for TLS.") var tlsCert: String?
    @Option(name: .long, help: "PEM private key for TLS.") var tlsKey: String?
    @Flag(name: .long, help: "Allow plain HTTP on an address other than loopback (the token then travels in clear).") var insecure = false
    @Option(name: .long, help: "Connections at once.") var maxConnections = 64
    @Option(name: .long, help: "The largest chunk accepted, e.g. 64MiB.") var maxChunk = "64MiB"
    @Option(name: .long, help: "HOST:PORT of a Prometheus endpoint (GET /metrics; port 0: any free port).") var metricsListen: String?
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try guarded {
            let socket = listen.hasPrefix("unix:") ? String(listen.dropFirst(5)) : nil
            let address = HostPort.parse(listen, allowAnyPort: true)
            guard socket != nil || address != nil else {
                throw FerryError(.invalidPlan, "--listen: expected HOST:PORT or unix:PATH, got \(listen)")
            }
            if (tlsCert == nil) != (tlsKey == nil) { throw FerryError(.invalidPlan, "--tls-cert and --tls-key go together") }
            if let address, tlsCert == nil && !Self.isLoopback(address.host) && !insecure {
                throw FerryError(
                    .invalidPlan,
                    "--listen \(listen) is not a loopback address: without TLS the token and the data would cross the network in clear; "
                        + "give --tls-cert and --tls-key, or --insecure to accept that")
            }
            let token: RemoteToken
            if stdioSession {
                guard let line = Self.stdinLine(timeout: 30) else { throw FerryError(.invalidPlan, "--stdio-session: no token on stdin") }
                token = try RemoteToken(line)
            } else if let tokenFile {
                token = try RemoteToken.fromFile(tokenFile, field: "--token-file")
            } else {
                throw FerryError(.invalidPlan, "--token-file is required (or --stdio-session)")
            }
            if mkdirRoot { try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true) }
            var config = RemoteServerConfig(root: root, token: token)
            config.maxConnections = maxConnections
            config.tlsCertificate = tlsCert
            config.tlsKey = tlsKey
            guard let chunk = Units.parseSize(maxChunk), chunk >= 1 << 20, chunk <= 1 << 30 else {
                throw FerryError(.invalidPlan, "--max-chunk: expected a size from 1MiB to 1GiB, got \(maxChunk)")
            }
            config.maxChunk = Int(chunk)
            let logger = global.logger()
            let metrics = try startMetrics(metricsListen, process: "serve", logger: logger)
            defer { metrics?.stop() }
            let server = try RemoteServer(config: config, opener: Backends.serve, logger: logger)
            if stdioSession {
                // The session ends when the job's side closes stdin (its ssh ended): stop as on SIGTERM.
                // Only a true end of file ends it: sshd may hand over a non-blocking stdin, where a read that finds
                // nothing yet (EAGAIN) is no end (seen on a far host in its own namespaces).
                Thread {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while true {
                        let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                        if n > 0 { continue }
                        if n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                            var fds = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
                            _ = poll(&fds, 1, 1000)
                            continue
                        }
                        break
                    }
                    kill(getpid(), SIGTERM)
                }.start()
            }
            try TapHost.runUntilSignalled(ServeService(server: server, address: address, socket: socket), logger: logger)
        }
    }

    /// One line from stdin (fd 0, unbuffered, blocking or not) within `timeout` seconds; nil at end of file.
    static func stdinLine(timeout: Double) -> String? {
        var bytes: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        var byte: UInt8 = 0
        while bytes.count < 4096 && Date() < deadline {
            let n = read(0, &byte, 1)
            if n == 1 {
                if byte == 0x0A { return String(decoding: bytes, as: UTF8.self) }
                bytes.append(byte)
            } else if n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                var fds = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
                _ = poll(&fds, 1, 200)
            } else {
                break
            }
        }
        return nil
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// `ferry serve` under the same lifecycle as a tap: started, then stopped gracefully on SIGTERM or SIGINT.
final class ServeService: TapService, @unchecked Sendable {
    // @unchecked: immutable.
    let server: RemoteServer
    let address: HostPort?
    let socket: String?

    init(server: RemoteServer, address: HostPort?, socket: String?) {
        self.server = server
        self.address = address
        self.socket = socket
    }

    var shutdownNotice: String { "shutting down: ferry serve stops accepting, then ends its connections" }

    func start() throws {
        // Where it listens, on stdout, for whoever started it (a test with port 0, a job over SSH).
        if let socket {
            try server.start(unixSocket: socket)
            FileHandle.standardOutput.write(Data("listening unix:\(socket)\n".utf8))
        } else if let address {
            let bound = try server.start(host: address.host, port: address.port)
            FileHandle.standardOutput.write(Data("listening \(address.host):\(bound)\n".utf8))
        }
    }

    func stop() { server.stop() }
}
