public import FerryCore
import FerryDigest
import FerryZstd
import Foundation
public import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// What `ferry serve` enforces. Every bound holds before authentication as well as after: no client can make
/// the server hold more than `memoryLimit` bytes of bodies, keep more than `maxConnections` sockets, or keep a
/// connection that sends nothing for `idleTimeout`.
public struct RemoteServerConfig: Sendable {
    public var root: String
    public var token: RemoteToken
    /// The largest chunk a client may send (uncompressed).
    public var maxChunk = 64 << 20
    /// The largest source object staged for a merge or a point comparison.
    public var maxStaged = 256 << 20
    /// Body bytes held across every connection at once; past it, 503 (the client retries).
    public var memoryLimit = 1 << 30
    public var maxConnections = 64
    /// Seconds a connection may send nothing (also while a request head is incomplete: slow clients are cut).
    public var idleTimeout: Double = 30
    /// Open writers (files being received); a writer idle for `writerIdle` seconds is dropped when room is
    /// needed (its partial file stays, so the transfer resumes).
    public var maxWriters = 512
    public var writerIdle: Double = 600
    /// Threads that run store operations (blocking syscalls), off the event loops.
    public var threads = 8
    /// PEM files of the certificate chain and its private key: TLS on every connection (swift-nio-ssl).
    public var tlsCertificate: String?
    public var tlsKey: String?

    public init(root: String, token: RemoteToken) {
        self.root = root
        self.token = token
    }
}

/// Builds the store a request names: its kind (fs, whisper, ceres), its directory (already confined beneath
/// the root) and the role it is opened for. Supplied by the composition root, which has the kinds.
public typealias StoreOpener = @Sendable (_ kind: String, _ directory: String, _ role: StoreRole) throws -> any Store

/// `ferry serve`: the stores beneath one root, offered over HTTP to ferry jobs on other hosts. A SwiftNIO server
/// whose handlers only parse, bound and authenticate; store operations run on a thread pool.
public final class RemoteServer: @unchecked Sendable {
    // @unchecked: the mutable state is behind Mutexes; `channel` is set once in start.
    let config: RemoteServerConfig
    let opener: StoreOpener
    let logger: Logger
    let canonicalRoot: String
    let group: MultiThreadedEventLoopGroup
    let pool: NIOThreadPool
    /// Open stores, with the identity (device, inode) of the directory each was opened on.
    let stores = Mutex<[Wire.StoreRef: (store: any Store, dev: UInt64, ino: UInt64)]>([:])
    let writers = Mutex<[String: WriterSlot]>([:])
    let memory = Mutex<Int>(0)
    let connections = Mutex<Int>(0)
    let refusals = Atomic<Int>(0)
    private let channel = Mutex<(any Channel)?>(nil)
    let tls: NIOSSLContext?

    public init(config: RemoteServerConfig, opener: @escaping StoreOpener, logger: Logger) throws {
        self.config = config
        self.opener = opener
        self.logger = logger
        guard let real = realpath(config.root, nil) else {
            throw FerryError(.invalidPlan, "--root \(config.root): \(String(cString: strerror(errno)))")
        }
        canonicalRoot = String(cString: real)
        free(real)
        guard PathUtil.isDirectory(canonicalRoot) else { throw FerryError(.invalidPlan, "--root \(config.root) is not a directory") }
        if let cert = config.tlsCertificate, let key = config.tlsKey {
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(cert).map { NIOSSLCertificateSource.certificate($0) }
                var tlsConfig = TLSConfiguration.makeServerConfiguration(
                    certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
                tlsConfig.minimumTLSVersion = .tlsv12
                tls = try NIOSSLContext(configuration: tlsConfig)
            } catch {
                throw FerryError(.invalidPlan, "--tls-cert/--tls-key: cannot load \(cert) and \(key)", underlying: error)
            }
        } else {
            tls = nil
        }
        group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        pool = NIOThreadPool(numberOfThreads: config.threads)
        pool.start()
    }

    /// Listens on `host:port` (port 0: any free port); returns the port bound.
    @discardableResult
    public func start(host: String, port: Int) throws -> Int {
        let ch = try listening(on: "\(host):\(port)", what: "ferry serve --listen") { try bootstrap().bind(host: host, port: port).wait() }
        channel.withLock { $0 = ch }
        let bound = ch.localAddress?.port ?? port
        logger.info("ferry serve listening", metadata: ["address": "\(host):\(bound)", "root": "\(canonicalRoot)"])
        return bound
    }

    /// Listens on a unix socket (the far end of an SSH forward), created 0600.
    public func start(unixSocket path: String) throws {
        let ch = try listening(on: path, what: "ferry serve's unix socket") {
            try bootstrap().bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
        }
        chmod(path, 0o600)
        channel.withLock { $0 = ch }
        logger.info("ferry serve listening", metadata: ["socket": "\(path)", "root": "\(canonicalRoot)"])
    }

    private func bootstrap() -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let admitted = connections.withLock { n in
                        guard n < config.maxConnections else { return false }
                        n += 1
                        return true
                    }
                    guard admitted else {
                        try channel.pipeline.syncOperations.addHandler(CloseWhenActive())
                        return
                    }
                    channel.closeFuture.whenComplete { _ in self.connections.withLock { $0 -= 1 } }
                    let idle = TimeAmount.milliseconds(Int64(config.idleTimeout * 1000))
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idle))
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(RemoteRequestHandler(server: self))
                }
            }
    }

    /// Blocks until the listener is closed.
    public func wait() throws {
        let ch = channel.withLock { $0 }
        try ch?.closeFuture.wait()
    }

    /// Stops accepting, waits for the requests in flight, and releases every writer (their partial files stay).
    public func stop() {
        let ch = channel.withLock { c in
            defer { c = nil }
            return c
        }
        try? ch?.close().wait()
        try? pool.syncShutdownGracefully()
        try? group.syncShutdownGracefully()
        writers.withLock { $0.removeAll() }
    }

    // MARK: - bounds

    func reserve(_ n: Int) -> Bool {
        memory.withLock { used in
            guard used + n <= config.memoryLimit else { return false }
            used += n
            return true
        }
    }

    func release(_ n: Int) { memory.withLock { $0 -= n } }

    /// The largest body an operation accepts.
    func bodyLimit(_ uri: String) -> Int {
        switch Self.operation(uri) {
        case "writer/write", "writer/put": return config.maxChunk + config.maxChunk / 128 + 4096
        case "writer/puts": return config.maxChunk + config.maxChunk / 128 + 4096 + Wire.maxJSON
        case "merge", "compare": return config.maxStaged + config.maxStaged / 128 + 4096
        default: return Wire.maxJSON
        }
    }

    static func operation(_ uri: String) -> String {
        let path = uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri
        return path.hasPrefix("/v1/") ? String(path.dropFirst(4)) : ""
    }

    /// Refusals are logged, but at most one in a thousand after the first ten (a flood must not fill the log).
    func logRefusal(_ what: String, _ peer: String) {
        let n = refusals.wrappingAdd(1, ordering: .relaxed).newValue
        if n <= 10 || n % 1000 == 0 {
            logger.warning("refused a request", metadata: ["why": "\(what)", "peer": "\(peer)", "refused": "\(n)"])
        }
    }

    // MARK: - stores

    /// The directory a request names, confined beneath the root: absolute or relative to the root, no `..`,
    /// and with every symlink on the way resolved and still inside the root.
    func confinedDirectory(_ path: String) throws -> String {
        let absolute = path.hasPrefix("/") ? path : canonicalRoot + "/" + path
        let parts = absolute.split(separator: "/", omittingEmptySubsequences: true)
        guard !parts.contains(where: { $0 == ".." }), !path.utf8.contains(0) else {
            throw FerryError(.unsafePath, "store path \"\(RawName.display(path))\": '..' is not allowed")
        }
        var existing = "/"
        var rest: [Substring] = []
        for (i, p) in parts.enumerated() where p != "." {
            let next = (existing == "/" ? "" : existing) + "/" + p
            if PathUtil.exists(next) || isSymlink(next) {
                guard let real = realpath(next, nil) else {
                    throw FerryError(.unsafePath, "store path \"\(RawName.display(path))\": \(String(cString: strerror(errno)))")
                }
                existing = String(cString: real)
                free(real)
            } else {
                rest = Array(parts[i...]).filter { $0 != "." }
                break
            }
        }
        let resolved = rest.isEmpty ? existing : (existing == "/" ? "" : existing) + "/" + rest.joined(separator: "/")
        guard resolved == canonicalRoot || PathUtil.isInside(resolved, canonicalRoot) else {
            throw FerryError(.unsafePath, "store path \"\(RawName.display(path))\" is outside the served root")
        }
        return resolved
    }

    private func isSymlink(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK
    }

    func store(_ ref: Wire.StoreRef) throws -> any Store {
        let directory = try confinedDirectory(ref.path)
        var st = stat()
        let exists = stat(directory, &st) == 0
        // A directory removed and made again (a destination started over) is a new store, not the old handle.
        if exists, let s = stores.withLock({ $0[ref] }), s.dev == UInt64(st.st_dev), s.ino == UInt64(st.st_ino) { return s.store }
        let role: StoreRole
        switch ref.role {
        case "source": role = .source
        case "destination": role = .destination
        default: throw FerryError(.invalidPlan, "unknown store role \"\(ref.role)\"")
        }
        let store = try opener(ref.kind, directory, role)
        // Kept only once the directory exists (a destination's is made by its first operation).
        if exists {
            stores.withLock { s in
                if s.count >= 64 { s.removeAll() }  // a handful in practice; never grows without bound
                s[ref] = (store, UInt64(st.st_dev), UInt64(st.st_ino))
            }
        }
        return store
    }

    // MARK: - writers

    final class WriterSlot: @unchecked Sendable {
        // @unchecked: `writer` is used only under `lock`.
        let writer: any ObjectWriter
        let lock = NSLock()
        let lastUsed = Mutex<Double>(Date().timeIntervalSince1970)
        init(_ w: any ObjectWriter) { writer = w }
        func use<T>(_ body: (any ObjectWriter) throws -> T) rethrows -> T {
            lock.lock()
            defer { lock.unlock() }
            lastUsed.withLock { $0 = Date().timeIntervalSince1970 }
            return try body(writer)
        }
    }

    func addWriter(_ w: any ObjectWriter) throws -> String {
        let id = UUID().uuidString
        let now = Date().timeIntervalSince1970
        let added = writers.withLock { table -> Bool in
            if table.count >= config.maxWriters {
                for (k, slot) in table where now - slot.lastUsed.withLock({ $0 }) > config.writerIdle { table[k] = nil }
            }
            guard table.count < config.maxWriters else { return false }
            table[id] = WriterSlot(w)
            return true
        }
        guard added else { throw RemoteServer.Refusal(503, "busy", "too many files are being received at once; retry") }
        return id
    }

    func writer(_ id: String) throws -> WriterSlot {
        guard let slot = writers.withLock({ $0[id] }) else {
            throw RemoteServer.Refusal(
                404, "unknownWriter", "no open writer \(id) (the server restarted, or it was idle too long): resume the transfer")
        }
        return slot
    }

    /// A refusal with its own status (other errors are 500 with the error's code).
    struct Refusal: Error {
        var status: Int
        var code: String
        var message: String
        init(_ status: Int, _ code: String, _ message: String) {
            self.status = status
            self.code = code
            self.message = message
        }
    }
}

/// Closes a connection over the limit as soon as it is active, before anything is read.
final class CloseWhenActive: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    func channelActive(context: ChannelHandlerContext) { context.close(promise: nil) }
}
