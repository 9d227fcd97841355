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
    @Option(name: .long, help: "HOST:PORT to listen on (port 0: any free port, printed on stdout).") var listen: String
    @Option(name: .long, help: "The directory whose stores are served; nothing outside it is reachable.") var root: String
    @Option(name: .long, help: "A file holding the bearer token (at least 16 printable characters).") var tokenFile: String
    @Option(name: .long, help: "PEM certificate chain for TLS.") var tlsCert: String?
    @Option(name: .long, help: "PEM private key for TLS.") var tlsKey: String?
    @Flag(name: .long, help: "Allow plain HTTP on an address other than loopback (the token then travels in clear).") var insecure = false
    @Option(name: .long, help: "Connections at once.") var maxConnections = 64
    @Option(name: .long, help: "The largest chunk accepted, e.g. 64MiB.") var maxChunk = "64MiB"
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try guarded {
            guard let address = HostPort.parse(listen, allowAnyPort: true) else {
                throw FerryError(.invalidPlan, "--listen: expected HOST:PORT, got \(listen)")
            }
            if (tlsCert == nil) != (tlsKey == nil) { throw FerryError(.invalidPlan, "--tls-cert and --tls-key go together") }
            if tlsCert == nil && !Self.isLoopback(address.host) && !insecure {
                throw FerryError(
                    .invalidPlan,
                    "--listen \(listen) is not a loopback address: without TLS the token and the data would cross the network in clear; "
                        + "give --tls-cert and --tls-key, or --insecure to accept that")
            }
            var config = RemoteServerConfig(root: root, token: try RemoteToken.fromFile(tokenFile, field: "--token-file"))
            config.maxConnections = maxConnections
            config.tlsCertificate = tlsCert
            config.tlsKey = tlsKey
            guard let chunk = Units.parseSize(maxChunk), chunk >= 1 << 20, chunk <= 1 << 30 else {
                throw FerryError(.invalidPlan, "--max-chunk: expected a size from 1MiB to 1GiB, got \(maxChunk)")
            }
            config.maxChunk = Int(chunk)
            let logger = global.logger()
            let server = try RemoteServer(config: config, opener: Backends.serve, logger: logger)
            try TapHost.runUntilSignalled(ServeService(server: server, host: address.host, port: address.port), logger: logger)
        }
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// `ferry serve` under the same lifecycle as a tap: started, then stopped gracefully on SIGTERM or SIGINT.
final class ServeService: TapService, @unchecked Sendable {
    // @unchecked: immutable.
    let server: RemoteServer
    let host: String
    let port: Int

    init(server: RemoteServer, host: String, port: Int) {
        self.server = server
        self.host = host
        self.port = port
    }

    func start() throws {
        let bound = try server.start(host: host, port: port)
        // The port on stdout, for whoever started it with port 0 (a test, an SSH session).
        FileHandle.standardOutput.write(Data("listening \(host):\(bound)\n".utf8))
    }

    func stop() { server.stop() }
}
