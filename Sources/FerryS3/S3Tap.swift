public import FerryCore
import FerryDigest
import FerryHTTP
public import FerryTap
import Foundation
public import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The settings of `tap: {kind: s3, ...}`: the application talks S3 to `listen` with the tap's own credentials
/// and bucket name; `old` and `new` are the plan's source and destination buckets.
public struct S3TapConfig: Sendable {
    public var listen: HostPort
    public var credentials: S3Credentials
    /// The bucket name the application uses (default: the source bucket's name).
    public var bucket: String
    public var old: S3Side
    public var new: S3Side
    public var directory: String
    public var controlSocket: String
    public var maxBody: Int = 64 * 1_048_576
    /// How long a client may take to send a request head, and how long an idle connection is kept.
    public var headerTimeout: Double = 30
    /// Connections served at once; more are closed at accept.
    public var maxConnections: Int = 512
    public var fsync: FsyncPolicy = .interval(1)

    /// A side is the plan's source or destination bucket, parsed as the S3 store parses it.
    public typealias S3Side = S3Settings

    public static let keys: Set<String> = [
        "listen", "credentials", "bucket", "spool_dir", "control", "max_body", "fsync", "fence_timeout", "header_timeout",
        "max_connections",
    ]
    public static let required: Set<String> = ["listen", "credentials"]

    public init(plan: Plan) throws {
        guard let tap = plan.tap, tap.kind == "s3" else { throw FerryError(.invalidPlan, "the plan has no s3 tap") }
        let o = tap.options
        let base = PathUtil.directory(of: plan.file)
        guard let l = o["listen"], let listen = HostPort.parse(l) else {
            throw FerryError(.invalidPlan, "tap.listen: expected host:port, got '\(o["listen"] ?? "")'")
        }
        guard plan.source.kind == "s3", plan.destination.kind == "s3" else {
            throw FerryError(.invalidPlan, "tap.kind s3 needs an s3 source and an s3 destination (the application writes to a bucket)")
        }
        self.listen = listen
        credentials = try CredentialSource.resolve(o["credentials"] ?? "", baseDirectory: base)
        old = try S3Settings(plan.source.options, section: "source", baseDirectory: base)
        new = try S3Settings(plan.destination.options, section: "destination", baseDirectory: base)
        bucket = o["bucket"] ?? old.bucket
        directory = o["spool_dir"].map { PathUtil.absolute(PathUtil.expandTilde($0), relativeTo: base) } ?? plan.stateDirectory + "/tap"
        controlSocket = o["control"].map { PathUtil.absolute(PathUtil.expandTilde($0), relativeTo: base) } ?? directory + "/control.sock"
        if let v = o["max_body"] {
            guard let n = Units.parseSize(v), n >= 1_048_576 else {
                throw FerryError(.invalidPlan, "tap.max_body: expected a size of at least 1MiB, got '\(v)'")
            }
            maxBody = Int(n)
        }
        if let v = o["fsync"] {
            guard let p = FsyncPolicy.parse(v) else { throw FerryError(.invalidPlan, "tap.fsync: expected always, never or an interval, got '\(v)'") }
            fsync = p
        }
        if let v = o["header_timeout"] {
            guard let d = Units.parseDuration(v), d > 0 else {
                throw FerryError(.invalidPlan, "tap.header_timeout: expected a duration such as 30s, got '\(v)'")
            }
            headerTimeout = d
        }
        if let v = o["max_connections"] {
            guard let n = Int(v), n >= 1 else {
                throw FerryError(.invalidPlan, "tap.max_connections: expected a whole number of at least 1, got '\(v)'")
            }
            maxConnections = n
        }
    }
}

/// The S3 dual-write proxy. The application points at it instead of its bucket. Every request must be signed
/// with the tap's credentials (anything else gets 403: the tap is never an open relay); it is re-signed and sent
/// to the primary side, and every successful write (PUT, completed multipart upload, copy, DELETE) is recorded in
/// the durable journal, from which one mirror thread replays it, in order, onto the secondary side (reading the
/// object back from the primary, so the secondary gets the bytes and metadata that were committed). A down
/// secondary only grows the backlog. The same key is not written to the secondary twice within a second (R2's
/// limit). Reads go to the primary; in `cutover` mode to the new side first, then the old one for what it lacks.
public final class S3Tap: TapServer, @unchecked Sendable {
    public let config: S3TapConfig
    let logger: Logger
    let journal: Journal
    let verifier: SigV4Verifier
    let group: MultiThreadedEventLoopGroup
    /// The two sides, for their client pools.
    let oldStore: S3Store
    let newStore: S3Store
    private let lock = NSLock()
    private var mode: TapMode = .mirror
    /// While the primary changes sides, writes are answered 503 SlowDown (clients retry) until every write made
    /// on the old primary has been mirrored: a record is always applied from the side it was written on.
    private var switching = false
    private var writesInFlight = 0
    private var channels: [any Channel] = []
    private var running = true
    private var received: UInt64 = 0
    private var refused: UInt64 = 0
    private var mirrored: UInt64 = 0
    private var cursor: UInt64
    private var mirrorError: String?
    private var lastWrite: [String: Date] = [:]
    /// Keys the primary took whose journal record failed, with their canned ACL (`recordOutcome`).
    private var unsettled: [String: String?] = [:]
    private let cursorPath: String
    private let modePath: String
    private let workers = DispatchQueue(label: "ferry-s3-tap", attributes: .concurrent)
    let connections = Mutex<Int>(0)
    /// Request body bytes held in memory across all connections. A body larger than `memoryBody`, or any body
    /// once `maxInMemory` is reached, goes to a file in `bodies/` instead: memory stays bounded whatever the
    /// number of uploads and their sizes.
    let bodyBytes = Mutex<Int>(0)
    static let memoryBody = 2 * 1_048_576
    static let maxInMemory = 128 * 1_048_576
    /// Request body bytes spooled to disk across all connections; past `maxOnDisk` a request gets 503 SlowDown
    /// (clients retry) rather than filling the disk the journal lives on.
    let diskBytes = Mutex<Int>(0)
    let spoolFailures = Mutex<Int>(0)
    var maxOnDisk: Int { max(16 * config.maxBody, 1 << 30) }
    var bodyDirectory: String { config.directory + "/bodies" }

    /// Reserves `n` more body bytes in memory (or on disk); false when the bound would be passed.
    func reserveBody(_ n: Int, onDisk: Bool = false) -> Bool {
        let bound = onDisk ? maxOnDisk : Self.maxInMemory
        func take(_ held: inout Int) -> Bool {
            guard held + n <= bound else { return false }
            held += n
            return true
        }
        return onDisk ? diskBytes.withLock { take(&$0) } : bodyBytes.withLock { take(&$0) }
    }

    func releaseBody(_ n: Int, onDisk: Bool = false) {
        if onDisk { diskBytes.withLock { $0 -= n } } else { bodyBytes.withLock { $0 -= n } }
    }

    public init(config: S3TapConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        try FileManager.default.createDirectory(atPath: config.directory, withIntermediateDirectories: true)
        // Bodies of requests a previous run was receiving: never answered, so no client counts on them.
        try? FileManager.default.removeItem(atPath: config.directory + "/bodies")
        try FileManager.default.createDirectory(atPath: config.directory + "/bodies", withIntermediateDirectories: true)
        journal = try Journal(directory: config.directory + "/queue", fsync: config.fsync)
        verifier = SigV4Verifier(credentials: [config.credentials])
        cursorPath = config.directory + "/cursor.mirror"
        modePath = config.directory + "/mode"
        // The kit's cursor file (offset and CRC); a text cursor written by an earlier version still reads.
        let savedCursor =
            (try? CursorFile.load(cursorPath))
            ?? (try? String(contentsOfFile: cursorPath, encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        cursor = savedCursor ?? journal.head
        cursor = min(max(cursor, journal.tail), journal.head)
        if let saved = ModeFile.load(modePath) {
            mode = saved.mode
        }
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, min(4, System.coreCount)))
        oldStore = S3Store(config.old, partSize: Self.mirrorPartSize)
        newStore = S3Store(config.new, partSize: Self.mirrorPartSize)
        try reconcileIntents()
    }

    func side(_ name: String) -> S3TapConfig.S3Side { name == "old" ? config.old : config.new }

    var primary: String {
        lock.lock()
        defer { lock.unlock() }
        return mode == .mirror ? "old" : "new"
    }

    var secondary: String? {
        lock.lock()
        defer { lock.unlock() }
        switch mode {
        case .mirror: return "new"
        case .cutover, .reverse: return "old"
        case .single: return nil
        }
    }

    /// Runs `body` with a pooled client for a side, so requests reuse keep-alive connections.
    func withClient<T>(_ name: String, _ body: (S3Client) throws -> T) throws -> T {
        try (name == "old" ? oldStore : newStore).withClient(body)
    }

    // MARK: - lifecycle

    public func start() throws {
        let t = Thread { [self] in self.mirrorLoop() }
        t.name = "ferry-s3-tap-mirror"
        t.start()
        let maxBody = config.maxBody
        let http = try listening(on: "\(config.listen)", what: "the S3 endpoint, tap.listen") {
            try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Over the connection limit: closed at once, before anything is read or buffered.
                        guard
                            self.connections.withLock({ n in
                                guard n < self.config.maxConnections else { return false }
                                n += 1
                                return true
                            })
                        else {
                            // Closed as soon as it is active (an unregistered channel cannot be closed yet).
                            try channel.pipeline.syncOperations.addHandler(CloseOnActive())
                            return
                        }
                        channel.closeFuture.whenComplete { _ in self.connections.withLock { $0 -= 1 } }
                        let timeout = TimeAmount.milliseconds(Int64(self.config.headerTimeout * 1000))
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: timeout))
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(S3ProxyHandler(tap: self, maxBody: maxBody))
                    }
                }
                .bind(host: config.listen.host, port: config.listen.port).wait()
        }
        let control = try bindControlSocket(config.controlSocket, group: group, server: self)
        lock.lock()
        channels = [http, control]
        lock.unlock()
        logger.info("s3 tap listening on \(config.listen) for bucket \(config.bucket); mode \(mode.rawValue)")
    }

    public func stop() {
        lock.lock()
        let cs = channels
        channels = []
        running = false
        lock.unlock()
        for c in cs { try? c.close().wait() }
        journal.shutdown()
        try? group.syncShutdownGracefully()
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    // MARK: - requests

    struct Request {
        var method: String
        var uri: String
        var headers: [(String, String)]
        var body: HTTPBody
    }

    struct Response {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]

        static func error(_ status: Int, _ code: String, _ message: String) -> Response {
            let xml =
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>\(escapeXML(code))</Code><Message>\(escapeXML(message))</Message></Error>"
            return Response(status: status, headers: [("Content-Type", "application/xml")], body: Array(xml.utf8))
        }
    }

    /// Text reflected into an error body (a request's key or access key) is escaped: the XML stays well formed.
    static func escapeXML(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.unicodeScalars.append(c.value < 0x20 ? " " : c)
            }
        }
        return out
    }

    /// What the application sent that S3 acts on, forwarded to the primary as it came: object headers, the
    /// conditions, tagging, ACL, storage class, server-side encryption, redirects and checksums.
    static let forwardedRequestHeaders: Set<String> = [
        "content-type", "cache-control", "content-disposition", "content-encoding", "content-language", "expires", "content-md5",
        "range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "x-amz-metadata-directive",
        "x-amz-tagging", "x-amz-tagging-directive", "x-amz-acl", "x-amz-storage-class", "x-amz-website-redirect-location",
        "x-amz-grant-read", "x-amz-grant-read-acp", "x-amz-grant-write-acp", "x-amz-grant-full-control",
    ]
    static let forwardedPrefixes = ["x-amz-meta-", "x-amz-server-side-encryption", "x-amz-checksum-"]
    /// What a HEAD of the primary's object returns that the application set, beyond the headers a bucket copy
    /// carries: the mirror writes them to the secondary too.
    static let mirroredObjectHeaders = [
        "x-amz-storage-class", "x-amz-website-redirect-location", "x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id",
    ]
    static let returnedHeaders: Set<String> = [
        "etag", "content-type", "last-modified", "content-range", "accept-ranges", "cache-control", "content-disposition",
        "content-encoding", "content-language", "expires",
    ]

    /// Runs on a worker thread: authenticate, forward, record the write.
    func serve(_ r: Request) -> Response {
        let (rawPath, rawQuery) = r.uri.firstIndex(of: "?").map { (String(r.uri[..<$0]), String(r.uri[r.uri.index(after: $0)...])) } ?? (r.uri, nil)
        let bodyHash: String
        do {
            bodyHash = try Self.sha256(of: r.body)
        } catch {
            logger.error("reading a spooled request body failed: \(error)")
            return .error(500, "InternalError", "the tap could not read the request body back")
        }
        do {
            _ = try verifier.verify(method: r.method, rawPath: rawPath, rawQuery: rawQuery, headers: r.headers, bodySHA256: bodyHash)
        } catch {
            return refusal(error, r.method, rawPath)
        }
        lock.lock()
        received += 1
        lock.unlock()
        let decoded = rawPath.removingPercentEncoding ?? rawPath
        let parts = decoded.drop { $0 == "/" }.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let bucket = parts.first, bucket == config.bucket else {
            return .error(404, "NoSuchBucket", "this tap serves the bucket \(config.bucket)")
        }
        let key = parts.count > 1 && !parts[1].isEmpty ? String(parts[1]) : nil
        if let key, key.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == "." || $0 == ".." }) {
            // Confinement to the bucket (and prefix) is the tap's own rule, not the upstream's signature check.
            return .error(400, "InvalidURI", "keys with . or .. segments are refused by the tap")
        }
        let query: [(String, String)] = (rawQuery ?? "").split(separator: "&").map { p in
            let kv = p.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (
                String(kv[0]).removingPercentEncoding ?? String(kv[0]), kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            )
        }
        var headers = r.headers.filter { h in
            let n = h.0.lowercased()
            return Self.forwardedRequestHeaders.contains(n) || Self.forwardedPrefixes.contains { n.hasPrefix($0) }
        }
        let names = Set(query.map(\.0))
        let isRead = r.method == "GET" || r.method == "HEAD"
        if !isRead, headers.contains(where: { $0.0.lowercased().hasPrefix("x-amz-server-side-encryption-customer-") }) {
            // The mirror reads each object back from the primary, which takes the customer's key: refused on
            // both sides rather than written to one.
            return .error(501, "NotImplemented", "SSE-C writes are not mirrored by the tap (it does not hold the customer key)")
        }
        if key == nil && isRead && r.method == "GET" && !names.contains("uploads") && !names.contains("location") {
            return list(query)
        }
        if key == nil && !isRead {
            if r.method == "POST" && names.contains("delete") { return deleteObjects(r, query, headers, bodyHash) }
            // Tagging, ACL, policy, lifecycle, CORS, ...: not mirrored, so refused rather than applied to one side.
            return .error(
                501, "NotImplemented",
                "bucket-level writes (\(names.sorted().joined(separator: ", "))) are not mirrored by the tap; set them on both buckets directly")
        }
        // An object write with a subresource changes the object in place: the mirror can sync tags (read back
        // from the primary) and a canned ACL (journaled with the write), nothing else, so everything else is
        // refused on both sides. It is never mirrored as a delete: DELETE ?tagging removes tags, not the object.
        let subresources = names.subtracting(["x-id", "uploadId", "partNumber", "uploads"])
        if key != nil && !isRead, let refusal = Self.unmirrorable(subresources, r.headers) {
            return .error(501, "NotImplemented", refusal)
        }
        do {
            if let copySource = r.headers.first(where: { $0.0.lowercased() == "x-amz-copy-source" })?.1 {
                // The source names the application's bucket: point it at the same side's bucket.
                let src = (copySource.removingPercentEncoding ?? copySource).drop { $0 == "/" }
                let srcParts = src.split(separator: "/", maxSplits: 1)
                guard srcParts.count == 2, srcParts[0] == config.bucket else {
                    return .error(400, "InvalidArgument", "x-amz-copy-source must name \(config.bucket)")
                }
                let p = side(primary)
                headers.append(("x-amz-copy-source", SigV4.encode("/" + p.bucket + "/" + p.prefix + srcParts[1], encodeSlash: false)))
            }
            let isPartUpload = names.contains("partNumber") || names.contains("uploads")
            let isAbort = r.method == "DELETE" && names.contains("uploadId")
            let isWrite = key != nil && !isRead && !isPartUpload && !isAbort
            if isWrite && !beginWrite() { return Self.switchingSides }
            defer { if isWrite { endWrite() } }
            if isWrite, let key {
                // The intent is journaled before the primary acts: after a crash between the primary's answer and
                // the record below, the restart syncs the key again from the primary (`reconcileIntents`).
                try record(op: "intent", key: key)
            }
            var target = primary
            var res = try forward(target, r.method, key, query, headers, r.body, bodyHash)
            lock.lock()
            let cutover = mode == .cutover
            lock.unlock()
            if isRead && cutover && res.status == 404, key != nil {
                // Cutover: the new side first, the old one for what has not been copied yet.
                target = "old"
                res = try forward(target, r.method, key, query, headers, r.body, bodyHash)
            }
            if (200..<300).contains(res.status), let key, isWrite {
                // Once the primary has it, the mirror syncs the key from the primary.
                let acl = r.headers.first { $0.0.lowercased() == "x-amz-acl" }?.1
                recordOutcome(op: r.method == "DELETE" && subresources.isEmpty ? "delete" : "put", key: key, acl: acl)
            }
            var out = res.headers.filter { Self.returnedHeaders.contains($0.key) || $0.key.hasPrefix("x-amz-meta-") }.map { ($0.key, $0.value) }
            if r.method == "HEAD", let len = res.headers["content-length"] { out.append(("content-length", len)) }
            return Response(status: res.status, headers: out, body: res.body)
        } catch {
            logger.error("\(r.method) \(rawPath) to \(primary) failed: \(error)")
            return .error(503, "ServiceUnavailable", "the primary side did not answer")
        }
    }

    /// The SHA-256 of a request body, a file read a MiB at a time.
    static func sha256(of body: HTTPBody) throws -> String {
        switch body {
        case .bytes(let b): return SHA256Hasher.digest(b).hex
        case .file(let path, let size):
            guard let fh = FileHandle(forReadingAtPath: path) else { throw FerryError(.other, "cannot open \(path)") }
            defer { try? fh.close() }
            let h = SHA256Hasher()
            var left = size
            while left > 0 {
                guard let chunk = try fh.read(upToCount: min(left, 1 << 20)), !chunk.isEmpty else {
                    throw FerryError(.other, "\(path) is shorter than the \(size) bytes received")
                }
                chunk.withUnsafeBytes { h.update($0) }
                left -= chunk.count
            }
            return h.finish().hex
        }
    }

    /// Why an object write cannot be mirrored (nil when it can): a subresource other than tagging or a canned
    /// ACL, an ACL given as grants or an XML body, or a write of one version.
    static func unmirrorable(_ subresources: Set<String>, _ headers: [(String, String)]) -> String? {
        if headers.contains(where: { $0.0.lowercased().hasPrefix("x-amz-grant-") }) {
            return "x-amz-grant-* headers are not mirrored by the tap; use a canned x-amz-acl"
        }
        let canned = headers.contains { $0.0.lowercased() == "x-amz-acl" }
        for name in subresources.sorted() {
            switch name {
            case "tagging": continue
            case "acl" where canned: continue
            case "acl": return "an object ACL given as XML is not mirrored by the tap; use a canned x-amz-acl"
            default: return "object writes with ?\(name) are not mirrored by the tap"
            }
        }
        return nil
    }

    /// Counts and logs a refused request (at most the first 20, then every 10,000th: a flood of refusals must not
    /// fill the disk the queue lives on) and answers it.
    func refusal(_ error: SigV4Verifier.Failure, _ method: String, _ rawPath: String) -> Response {
        lock.lock()
        refused += 1
        let n = refused
        lock.unlock()
        if LogLimit.allows(n) {
            logger.warning("refused \(method) \(String(rawPath.prefix(200))): \(error)", metadata: ["refused_total": "\(n)"])
        }
        return .error(error.code == "NotImplemented" ? 501 : 403, error.code, "\(error)")
    }

    /// What can be checked from a request's head alone, before any body byte is read: the signature over the
    /// declared payload hash (the body is checked against that hash once it has arrived).
    func checkHead(method: String, uri: String, headers: [(String, String)]) -> Response? {
        let (rawPath, rawQuery) = uri.firstIndex(of: "?").map { (String(uri[..<$0]), String(uri[uri.index(after: $0)...])) } ?? (uri, nil)
        let declared = headers.first { $0.0.lowercased() == "x-amz-content-sha256" }?.1.lowercased() ?? ""
        do {
            _ = try verifier.verify(method: method, rawPath: rawPath, rawQuery: rawQuery, headers: headers, bodySHA256: declared)
            return nil
        } catch {
            return refusal(error, method, rawPath)
        }
    }

    /// A listing through the tap shows the application its own bucket: with a side prefix, the prefix is added to
    /// `prefix` and `start-after` on the way in and stripped from every key and prefix on the way out, so no key
    /// outside it is ever shown, and every key shown can be read back through the tap.
    func list(_ query: [(String, String)]) -> Response {
        let p = primary
        let sidePrefix = side(p).prefix
        var q = query.filter { $0.0 != "prefix" && $0.0 != "start-after" && $0.0 != "marker" }
        let asked = query.first { $0.0 == "prefix" }?.1 ?? ""
        q.append(("prefix", sidePrefix + asked))
        if let after = query.first(where: { $0.0 == "start-after" })?.1 { q.append(("start-after", sidePrefix + after)) }
        if let marker = query.first(where: { $0.0 == "marker" })?.1 { q.append(("marker", sidePrefix + marker)) }
        let urlEncoded = query.contains { $0.0 == "encoding-type" && $0.1 == "url" }
        do {
            let res = try forward(p, "GET", nil, q, [], .empty, SigV4.emptyPayloadHash)
            var body = String(decoding: res.body, as: UTF8.self)
            if (200..<300).contains(res.status) {
                if !sidePrefix.isEmpty {
                    let shown =
                        urlEncoded
                        ? (sidePrefix.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? sidePrefix) : Self.escapeXML(sidePrefix)
                    for tag in ["Key", "Prefix", "StartAfter", "Marker", "NextMarker"] {
                        body = body.replacingOccurrences(of: "<\(tag)>\(shown)", with: "<\(tag)>")
                    }
                }
                body = body.replacingOccurrences(
                    of: "<Name>\(Self.escapeXML(side(p).bucket))</Name>", with: "<Name>\(Self.escapeXML(config.bucket))</Name>")
            }
            let out = res.headers.filter { Self.returnedHeaders.contains($0.key) }.map { ($0.key, $0.value) }
            return Response(status: res.status, headers: out, body: Array(body.utf8))
        } catch {
            logger.error("listing \(p) failed: \(error)")
            return .error(503, "ServiceUnavailable", "the primary side did not answer")
        }
    }

    /// DeleteObjects (`POST /bucket?delete`, how Mastodon removes media in batches): forwarded to the primary,
    /// and every key its answer reports deleted is journaled for the secondary. With a side prefix, the prefix is
    /// added to every key of the request (its Content-MD5 computed again, the client's checksums dropped with the
    /// bytes they covered) and stripped from every key of the answer.
    func deleteObjects(_ r: Request, _ query: [(String, String)], _ headers: [(String, String)], _ bodyHash: String) -> Response {
        guard case .bytes(let xml) = r.body else {
            return .error(400, "MalformedXML", "a DeleteObjects body is at most 1000 keys")
        }
        let requested = Self.xmlValues(xml, "Key")
        guard beginWrite() else { return Self.switchingSides }
        defer { endWrite() }
        let p = primary
        let sidePrefix = side(p).prefix
        var body = xml, hash = bodyHash, headers = headers
        if !sidePrefix.isEmpty {
            body = Array(String(decoding: xml, as: UTF8.self).replacingOccurrences(of: "<Key>", with: "<Key>" + Self.escapeXML(sidePrefix)).utf8)
            hash = SHA256Hasher.digest(body).hex
            headers.removeAll { h in
                let n = h.0.lowercased()
                return n == "content-md5" || n.hasPrefix("x-amz-checksum-") || n == "x-amz-sdk-checksum-algorithm"
            }
            headers.append(("Content-MD5", Data(MD5.digest(body)).base64EncodedString()))
        }
        do {
            for key in requested { try record(op: "intent", key: key) }
            let res = try forward(p, r.method, nil, query, headers, .bytes(body), hash)
            var answer = res.body
            if !sidePrefix.isEmpty {
                answer = Array(
                    String(decoding: res.body, as: UTF8.self).replacingOccurrences(of: "<Key>" + Self.escapeXML(sidePrefix), with: "<Key>").utf8)
            }
            if (200..<300).contains(res.status) {
                let asked = Set(requested)
                // Only the keys under <Deleted>: a key under <Error> is still on the primary, and stays on both.
                let deleted = Self.xmlValues(answer, "Deleted", decode: false).flatMap { Self.xmlValues(Array($0.utf8), "Key") }
                for key in deleted where asked.contains(key) { recordOutcome(op: "delete", key: key) }
            }
            let out = res.headers.filter { Self.returnedHeaders.contains($0.key) }.map { ($0.key, $0.value) }
            return Response(status: res.status, headers: out, body: answer)
        } catch {
            logger.error("DeleteObjects to \(p) failed: \(error)")
            return .error(503, "ServiceUnavailable", "the primary side did not answer")
        }
    }

    /// The answer to a write while the primary changes sides: S3 clients retry a SlowDown.
    static let switchingSides = Response.error(503, "SlowDown", "the tap is switching sides; retry")

    /// Admits a write (false while the primary changes sides) and counts it in flight until `endWrite`, so a
    /// switch waits for every write the old primary took: keyed writes and DeleteObjects alike.
    func beginWrite() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !switching else { return false }
        writesInFlight += 1
        return true
    }

    func endWrite() {
        lock.lock()
        writesInFlight -= 1
        lock.unlock()
    }

    /// The text of every `<name>` element (XML entities decoded, unless `decode` is false), in order.
    static func xmlValues(_ body: [UInt8], _ name: String, decode: Bool = true) -> [String] {
        let text = String(decoding: body, as: UTF8.self)
        var out: [String] = []
        var rest = text[...]
        while let open = rest.range(of: "<\(name)>"), let close = rest[open.upperBound...].range(of: "</\(name)>") {
            let raw = String(rest[open.upperBound..<close.lowerBound])
            out.append(
                !decode
                    ? raw
                    : raw.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
                        .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
                        .replacingOccurrences(of: "&amp;", with: "&"))
            rest = rest[close.upperBound...]
        }
        return out
    }

    /// Sends the request to a side; `bodyHash` is the one computed when the signature was checked.
    func forward(
        _ name: String, _ method: String, _ key: String?, _ query: [(String, String)], _ headers: [(String, String)], _ body: HTTPBody,
        _ bodyHash: String
    ) throws -> HTTPResponse {
        let k = key.map { side(name).prefix + $0 }
        return try withClient(name) { try $0.forward(method: method, key: k, query: query, headers: headers, upload: body, payloadHash: bodyHash) }
    }

    /// Records a write for the secondary, durably, before the application hears it succeeded.
    /// `acl`: the canned ACL the application set with the write (`x-amz-acl`), which a GET of the object does not
    /// return: the mirror applies it to the secondary too.
    func record(op: String, key: String, acl: String? = nil) throws {
        var fields = ["op": op, "key": key]
        if let acl { fields["acl"] = acl }
        let line = try JSONSerialization.data(withJSONObject: fields)
        try journal.append([UInt8](line))
    }

    /// Records a write the primary has taken. If the journal fails now (its intent is already in it), the key is
    /// kept in memory and the mirror thread records it again until it succeeds: the application hears the
    /// primary's answer, and the write reaches the secondary once the journal takes records again (or, after a
    /// crash, through the intent `reconcileIntents` finds).
    func recordOutcome(op: String, key: String, acl: String? = nil) {
        do {
            try record(op: op, key: key, acl: acl)
        } catch {
            lock.lock()
            unsettled[key] = acl
            let n = unsettled.count
            lock.unlock()
            logger.error("journaling \(op) \(key) failed (\(error)); kept in memory and retried (\(n) keys waiting)")
        }
    }

    /// Records again the writes whose outcome the journal refused (`recordOutcome`), as `put`: a sync from the
    /// primary, which also covers a delete.
    func settleUnrecorded() {
        lock.lock()
        let waiting = unsettled
        lock.unlock()
        for (key, acl) in waiting.sorted(by: { $0.key < $1.key }) {
            guard (try? record(op: "put", key: key, acl: acl)) != nil else { return }
            lock.lock()
            unsettled[key] = nil
            lock.unlock()
        }
        logger.notice("\(waiting.count) writes the journal had refused are recorded")
    }

    /// After a restart (a crash may have come between a primary's answer and the journal's record of it), the
    /// keys of the latest intents are synced again from the primary: the journal's last MiB of records.
    func reconcileIntents() throws {
        let from = journal.head > 1 << 20 ? max(journal.tail, journal.head - (1 << 20)) : journal.tail
        guard from < journal.head else { return }
        var keys: [String] = []
        var offset = from
        while offset < journal.head, let records = try? journal.read(from: offset, maxBytes: 256 << 10), let last = records.last {
            for rec in records {
                if let obj = try? JSONSerialization.jsonObject(with: Data(rec.payload)) as? [String: String], obj["op"] == "intent",
                    let key = obj["key"]
                {
                    keys.append(key)
                }
            }
            offset = last.end
        }
        for key in Set(keys).sorted() { try record(op: "put", key: key) }
        if !keys.isEmpty { logger.notice("restart: \(Set(keys).count) keys of recent writes synced again from the primary") }
    }

    // MARK: - mirror

    /// Objects above this are mirrored as multipart uploads of this part size.
    static let mirrorPartSize: Int64 = 16 * 1_048_576

    private func mirrorLoop() {
        var backoff = 0.2
        while isRunning {
            lock.lock()
            let unsettledKeys = !unsettled.isEmpty
            lock.unlock()
            if unsettledKeys { settleUnrecorded() }
            let target = secondary
            lock.lock()
            let from = cursor
            lock.unlock()
            guard let target else {
                _ = journal.wait(beyond: journal.head, timeout: 0.5)
                lock.lock()
                cursor = journal.head
                lock.unlock()
                continue
            }
            if from >= journal.head {
                _ = journal.wait(beyond: from, timeout: 0.5)
                continue
            }
            guard let rec = (try? journal.read(from: from, maxBytes: 1))?.first else { continue }
            do {
                if !rec.payload.isEmpty { try apply(rec.payload, to: target) }
                lock.lock()
                cursor = rec.end
                mirrored += 1
                mirrorError = nil
                lock.unlock()
                try? Data(CursorFile.encode(rec.end)).write(to: URL(fileURLWithPath: cursorPath), options: .atomic)
                journal.release(below: rec.end)
                backoff = 0.2
            } catch {
                lock.lock()
                let first = mirrorError == nil
                mirrorError = "\(error)"
                lock.unlock()
                if first { logger.warning("mirroring to \(target) failed (\(error)); the queue keeps it and retries") }
                Thread.sleep(forTimeInterval: backoff)  // retry pacing, not synchronisation
                backoff = min(backoff * 2, 5)
            }
        }
    }

    /// Makes the secondary match the primary for one key.
    private func apply(_ payload: [UInt8], to target: String) throws {
        guard let obj = try JSONSerialization.jsonObject(with: Data(payload)) as? [String: String], let op = obj["op"], let key = obj["key"]
        else { return }
        // An intent is applied only through a restart's reconciliation: a write that succeeded is followed by its
        // own record, one that failed changed nothing, and a crash in between is what `reconcileIntents` covers.
        if op == "intent" { return }
        // R2 takes one write per key per second.
        lock.lock()
        let last = lastWrite[key]
        lock.unlock()
        if let last, Date().timeIntervalSince(last) < 1 { Thread.sleep(forTimeInterval: 1 - Date().timeIntervalSince(last)) }
        let source = target == "old" ? "new" : "old"
        let dkey = side(target).prefix + key
        let skey = side(source).prefix + key
        try withClient(source) { src in
            try withClient(target) { dst in try mirror(op: op, key: key, acl: obj["acl"], from: src, skey, to: dst, dkey) }
        }
        lock.lock()
        lastWrite[key] = Date()
        if lastWrite.count > 100_000 { lastWrite = lastWrite.filter { Date().timeIntervalSince($0.value) < 1 } }
        lock.unlock()
    }

    /// Makes `dkey` on `dst` what `skey` on `src` is now (or removes it).
    /// `put` syncs the key from the primary; `delete` removes it. (`intent` records are skipped by `apply`.)
    private func mirror(
        op: String, key: String, acl: String? = nil, from src: S3Client, _ skey: String, to dst: S3Client, _ dkey: String
    ) throws {
        guard op != "delete", let head = try src.headObject(skey) else {
            // Deleted, or gone from the primary since: the secondary follows.
            return try dst.deleteObject(dkey)
        }
        var carried = S3Store.carried(head.headers)
        for name in Self.mirroredObjectHeaders { if let v = head.headers[name] { carried[name] = v } }
        var headers = carried.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        if let acl { headers.append(("x-amz-acl", acl)) }
        // Object tags travel too (a GET does not return them): read from the primary, sent with the write.
        if let count = head.headers["x-amz-tagging-count"].flatMap(Int.init), count > 0,
            let tags = try? src.forward(method: "GET", key: skey, query: [("tagging", "")], headers: [], body: []),
            (200..<300).contains(tags.status)
        {
            let keys = Self.xmlValues(tags.body, "Key"), values = Self.xmlValues(tags.body, "Value")
            var allowed = CharacterSet.alphanumerics
            allowed.insert(charactersIn: "-_.~")
            let pairs = zip(keys, values).map {
                ($0.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0) + "="
                    + ($1.addingPercentEncoding(withAllowedCharacters: allowed) ?? $1)
            }
            if !pairs.isEmpty { headers.append(("x-amz-tagging", pairs.joined(separator: "&"))) }
        }
        if head.size <= Self.mirrorPartSize {
            guard let body = try src.getObject(skey) else { return try dst.deleteObject(dkey) }
            let digest = SHA256Hasher.digest(body).hex
            headers.append(("x-amz-meta-ferry-sha256", digest))
            _ = try dst.putObject(dkey, body, headers: headers, payloadHash: digest)
            return
        }
        // Large objects go part by part (ranged reads), so memory stays one part whatever the size.
        let id = try dst.createMultipartUpload(dkey, headers: headers)
        do {
            var parts: [(number: Int, etag: String)] = []
            var offset: Int64 = 0
            while offset < head.size {
                let end = min(head.size, offset + Self.mirrorPartSize) - 1
                guard let part = try src.getObject(skey, range: offset...end) else {
                    throw FerryError(.sourceIO, "\(key) vanished from the primary while mirrored")
                }
                parts.append((parts.count + 1, try dst.uploadPart(dkey, uploadID: id, number: parts.count + 1, part)))
                offset = end + 1
            }
            try dst.completeMultipartUpload(dkey, uploadID: id, parts: parts)
        } catch {
            try? dst.abortMultipartUpload(dkey, uploadID: id)
            throw error
        }
    }

    // MARK: - control

    public func status() -> TapStatus {
        lock.lock()
        let m = mode, r = received, rf = refused, mi = mirrored, c = cursor, err = mirrorError
        lock.unlock()
        let head = journal.head
        let lag = c < head ? journal.appendedAt(c).map { max(0, Date().timeIntervalSince1970 - Double($0) / 1000) } ?? 0 : 0
        let sec = secondary
        func upstream(_ name: String) -> TapUpstreamStatus {
            let s = side(name)
            let isPrimary = name == primary
            return TapUpstreamStatus(
                name: name, address: "\(s.endpoint)/\(s.bucket)", role: isPrimary ? "primary" : (sec == name ? "mirror" : "detached"),
                connected: isPrimary || err == nil, forwardedLines: isPrimary ? r : mi, forwardedBytes: 0,
                spoolBytes: isPrimary ? 0 : head - c, lagSeconds: isPrimary ? 0 : lag, cursor: isPrimary ? head : c, reconnects: 0,
                lastError: isPrimary ? nil : err)
        }
        return TapStatus(
            kind: "s3", pid: getpid(), mode: m, primary: primary, head: head, receivedLines: r, invalidLines: 0, refusedMessages: rf,
            droppedLines: 0, backPressure: false, spoolBytes: head - c, spoolLimit: 0, upstreams: [upstream("old"), upstream("new")])
    }

    public func setMode(_ m: TapMode) throws -> TapStatus {
        lock.lock()
        let before = mode
        lock.unlock()
        let primaryOf: (TapMode) -> String = { $0 == .mirror ? "old" : "new" }
        if primaryOf(before) != primaryOf(m) && before != .single {
            // Hold writes and let the mirror drain what the current primary took, so no record written on one
            // side is ever applied in the other direction.
            lock.lock()
            switching = true
            lock.unlock()
            defer {
                lock.lock()
                switching = false
                lock.unlock()
            }
            let deadline = Date().addingTimeInterval(60)
            while true {
                lock.lock()
                let drained = writesInFlight == 0 && cursor >= journal.head
                lock.unlock()
                if drained { break }
                guard Date() < deadline else {
                    throw FerryError(.gateNotMet, "the mirror did not drain within 60s; the primary was not switched")
                }
                _ = journal.wait(beyond: journal.head, timeout: 0.05)
            }
            try ModeFile.store(modePath, mode: m, primary: m == .mirror ? "old" : "new")
            lock.lock()
            mode = m
            lock.unlock()
        } else {
            try ModeFile.store(modePath, mode: m, primary: m == .mirror ? "old" : "new")
            lock.lock()
            mode = m
            lock.unlock()
        }
        if before != m { logger.notice("mode \(before.rawValue) -> \(m.rawValue)") }
        return status()
    }

    /// The fence: a marker object written to the primary and mirrored like any write.
    public func fence(_ token: FenceToken) throws -> UInt64 {
        let key = S3Store.fenceKey(token.name)
        let p = primary
        let serial = String(token.serial)
        _ = try withClient(p) { try $0.putObject(side(p).prefix + key, Array(serial.utf8), headers: [("x-amz-meta-ferry-fence", serial)]) }
        try record(op: "put", key: key)
        return journal.head
    }
}

/// A request body past what is kept in memory: written to a file under the tap's `bodies/` as it arrives
/// (one `write` per received chunk, on the event loop: a page-cache write, like the journal's appends), read back
/// by the forwarding request, removed once the request is answered or its connection is gone.
final class SpooledBody {
    let path: String
    private var fd: Int32
    private(set) var size = 0

    init(directory: String) throws {
        path = directory + "/" + UUID().uuidString
        fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FerryError(.destinationIO, "cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try SystemCalls.pwriteAll(fd, bytes, at: Int64(size), what: path)
        size += bytes.count
    }

    /// Closes the file; the body is then `.file(path, size)` until `remove`.
    func seal() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    func remove() {
        seal()
        unlink(path)
    }
}

/// Collects one HTTP request (head and body, up to `maxBody`: the first 2 MiB in memory, the rest spooled to a
/// file), serves it on a worker thread and writes the answer back on the channel's event loop.
final class S3ProxyHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let tap: S3Tap
    let maxBody: Int
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var spooled: SpooledBody?
    var received = 0
    var tooLarge = false
    /// The tap's bound on body bytes on disk was reached (or the disk failed) for this request.
    var overloaded = false
    /// Body bytes this handler holds in the tap's account, in memory and on disk.
    var reserved = 0
    var reservedOnDisk = 0
    /// The head was refused: the answer is sent and the connection closes; no body byte is kept.
    var rejected = false
    /// A request is being served (set and cleared on the event loop): the idle timeout waits for its answer.
    final class Busy: @unchecked Sendable {
        var value = false
    }
    let busy = Busy()

    init(tap: S3Tap, maxBody: Int) {
        self.tap = tap
        self.maxBody = maxBody
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            dropBody()
            tooLarge = false
            overloaded = false
            rejected = false
            // Refused from the head, before any body byte is read: a declared size over max_body (413), a
            // missing or wrong signature (403).
            if let n = h.headers.first(name: "content-length").flatMap(Int.init), n > maxBody {
                reject(context, .error(413, "EntityTooLarge", "bodies over \(maxBody) bytes: use a multipart upload"))
            } else if let refusal = tap.checkHead(method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) }) {
                reject(context, refusal)
            } else if h.headers.first(name: "expect")?.lowercased() == "100-continue" {
                // The head is acceptable: the client may send its body now (boto3 and the AWS SDKs wait up to a
                // second for this before every PUT otherwise).
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .continue))), promise: nil)
            }
        case .body(let b):
            if rejected || overloaded || tooLarge { return }
            let n = b.readableBytes
            if received + n > maxBody {
                tooLarge = true
                dropBody()
                return
            }
            received += n
            if spooled == nil && body.count + n <= S3Tap.memoryBody && tap.reserveBody(n) {
                reserved += n
                body += b.readableBytesView
                return
            }
            // Past what one request keeps in memory (or the tap's memory bound): to disk, what was held first.
            do {
                guard tap.reserveBody(n + (spooled == nil ? body.count : 0), onDisk: true) else {
                    throw FerryError(.destinationIO, "the tap holds too many request bodies")
                }
                reservedOnDisk += n + (spooled == nil ? body.count : 0)
                if spooled == nil {
                    let file = try SpooledBody(directory: tap.bodyDirectory)
                    spooled = file
                    try body.withUnsafeBytes { try file.write($0) }
                    body = []
                    tap.releaseBody(reserved)
                    reserved = 0
                }
                try b.withUnsafeReadableBytes { try spooled!.write($0) }
            } catch {
                overloaded = true
                tap.logBodySpoolFailure(error)
                dropBody()
            }
        case .end:
            guard let h = head, !rejected else { return }
            let file = spooled.map { f in
                f.seal()
                return UnsafeTransfer(f)
            }
            let request = S3Tap.Request(
                method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) },
                body: spooled.map { .file(path: $0.path, size: $0.size) } ?? .bytes(body))
            let keepAlive = h.isKeepAlive
            let channel = context.channel
            let tap = self.tap
            let large = tooLarge
            let busyTap = overloaded
            let maxBody = self.maxBody
            let busy = self.busy
            let held = reserved, heldOnDisk = reservedOnDisk
            // The request owns the body from here: the worker releases it once answered.
            reserved = 0
            reservedOnDisk = 0
            spooled = nil
            body = []
            received = 0
            overloaded = false
            busy.value = true
            tap.dispatch {
                defer {
                    file?.wrappedValue.remove()
                    tap.releaseBody(held)
                    tap.releaseBody(heldOnDisk, onDisk: true)
                }
                let r =
                    large
                    ? S3Tap.Response.error(400, "EntityTooLarge", "bodies over \(maxBody) bytes: use a multipart upload")
                    : busyTap ? S3Tap.Response.error(503, "SlowDown", "the tap holds too many request bodies; retry") : tap.serve(request)
                channel.eventLoop.execute {
                    var headers = HTTPHeaders(r.headers.filter { $0.0.lowercased() != "content-length" })
                    let isHead = request.method == "HEAD"
                    headers.replaceOrAdd(
                        name: "content-length", value: isHead ? (r.headers.first { $0.0 == "content-length" }?.1 ?? "0") : String(r.body.count))
                    if !keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
                    let status = HTTPResponseStatus(statusCode: r.status)
                    channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)), promise: nil)
                    if !isHead && !r.body.isEmpty { channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: r.body))), promise: nil) }
                    channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
                        busy.value = false
                        if !keepAlive { channel.close(promise: nil) }
                    }
                }
            }
        }
    }
}

extension S3ProxyHandler {
    /// A connection that closes inside a body gives its bytes back to the tap's account.
    func channelInactive(context: ChannelHandlerContext) {
        dropBody()
        context.fireChannelInactive()
    }

    /// Forgets the body being received, in memory and on disk.
    func dropBody() {
        body = []
        spooled?.remove()
        spooled = nil
        received = 0
        if reserved > 0 { tap.releaseBody(reserved) }
        if reservedOnDisk > 0 { tap.releaseBody(reservedOnDisk, onDisk: true) }
        reserved = 0
        reservedOnDisk = 0
    }
}

/// A connection over `max_connections`: closed as soon as it is accepted, nothing read.
final class CloseOnActive: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    func channelActive(context: ChannelHandlerContext) { context.close(promise: nil) }
}

extension S3ProxyHandler {
    func reject(_ context: ChannelHandlerContext, _ r: S3Tap.Response) {
        rejected = true
        var headers = HTTPHeaders(r.headers)
        headers.replaceOrAdd(name: "content-length", value: String(r.body.count))
        headers.replaceOrAdd(name: "connection", value: "close")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: r.status), headers: headers))),
            promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: r.body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    /// A client that sends nothing for `header_timeout` (half a head, or an idle keep-alive) is closed.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            if !busy.value { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Hands a value confined to one thread at a time (a request's spooled body) to the worker that takes it over.
struct UnsafeTransfer<T>: @unchecked Sendable {
    let wrappedValue: T
    init(_ v: T) { wrappedValue = v }
}

extension S3Tap {
    /// A body that could not be spooled (the disk bound, a full disk): the request gets 503 SlowDown; logged at
    /// the LogLimit rate.
    func logBodySpoolFailure(_ error: any Error) {
        let n = spoolFailures.withLock { n in
            n += 1
            return n
        }
        if LogLimit.allows(UInt64(n)) {
            logger.warning("a request body was refused (503 SlowDown): \(error)", metadata: ["spool_refusals_total": "\(n)"])
        }
    }

    func dispatch(_ work: @escaping @Sendable () -> Void) { workers.async(execute: work) }
}

extension S3Tap: TapService {
    /// `tap: {kind: s3}`: the S3 dual-write proxy.
    public static let kind = TapKind(
        schema: TapKindSchema(kind: "s3", keys: S3TapConfig.keys, required: S3TapConfig.required),
        locate: { plan in
            let c = try S3TapConfig(plan: plan)
            return TapLocation(directory: c.directory, controlSocket: c.controlSocket)
        },
        make: { plan, logger in try S3Tap(config: try S3TapConfig(plan: plan), logger: logger) })
}
