public import FerryCore
import FerryDigest
import FerryHTTP
import FerryZstd
import Foundation
import Synchronization

/// Where a `ferry serve` answers and how to reach it.
public struct RemoteEndpoint: Sendable {
    /// `http://host:port` or `https://host:port` (no trailing slash).
    public var baseURL: String
    public var token: RemoteToken
    /// A PEM file of the CA that signed the server's certificate (a private CA).
    public var caFile: String?
    /// A unix socket to connect through instead of TCP.
    public var unixSocket: String?
    /// Over SSH: the tunnel that starts the far `ferry serve` and gives the socket to connect through.
    public var tunnel: SSHTunnel?

    /// Where the far side is, as the plan says it: `ssh://user@host` over SSH (not the tunnel's local URL).
    public var displayURL: String {
        guard let t = tunnel?.target else { return baseURL }
        return "ssh://\(t.destination)" + (t.port.map { ":\($0)" } ?? "")
    }

    public init(baseURL: String, token: RemoteToken, caFile: String? = nil, unixSocket: String? = nil) {
        self.baseURL = baseURL
        self.token = token
        self.caFile = caFile
        self.unixSocket = unixSocket
    }

    /// `ferry serve` started over SSH for this job, serving `root` on the far host.
    public init(ssh target: SSHTarget, root: String) {
        let tunnel = SSHTunnel(target: target, root: root)
        self.init(baseURL: "http://localhost", token: tunnel.token)
        self.tunnel = tunnel
    }
}

/// A store on another host, through its `ferry serve`: every Store operation becomes one request. Chunks
/// travel zstd-compressed (zero runs as their length), verify asks the far side for digests (`RangeHashing`),
/// and the metric kinds merge and compare points on the far side, next to the live files.
public class RemoteStore: Store, RangeHashing, Batching, ObjectBatching, WirePacing, @unchecked Sendable {
    // @unchecked: configuration is immutable; the client pool and counters are behind Mutexes.
    public let endpoint: RemoteEndpoint
    let ref: Wire.StoreRef
    let compressionLevel: Int32?
    /// Whisper files travel in the point codec where it is smaller than zstd (`copy.point_codec`).
    let pointCodec: Bool
    /// Idle clients (libcurl handles, each keeping its connection alive); one thread uses a client at a time.
    private let clientLock = NSLock()
    nonisolated(unsafe) private var idleClients: [HTTPClient] = []
    private let counters = Mutex(WireTotals())
    private let pacer = Mutex<(@Sendable (Int) -> Void)?>(nil)
    /// The far side's own temporaries seen by the last walk (partial files: a handful).
    private let temporaries = Mutex<Set<String>>([])
    /// How long a far side that cannot be reached (restarting, a dropped link) is waited for before the job
    /// fails; requests are retried with backoff meanwhile. Before the first answer it is short: a wrong URL or a
    /// server that is not running fails the job quickly.
    let reconnectWindow: Double = 120
    let firstContactWindow: Double = 5
    private let reached = Mutex(false)

    public var displayName: String { "remote:\(endpoint.displayURL)/\(ref.kind):\(ref.path)" }

    /// `kind` is the far store's kind, `path` its directory on the far host, `role` what it is opened for.
    public required init(
        endpoint: RemoteEndpoint, kind: String, path: String, role: StoreRole, compressionLevel: Int?, pointCodec: Bool = true
    ) {
        self.pointCodec = pointCodec && compressionLevel != nil
        self.endpoint = endpoint
        ref = Wire.StoreRef(kind: kind, role: role == .destination ? "destination" : "source", path: path)
        self.compressionLevel = compressionLevel.map { Int32($0) }
    }

    /// The right class for a far store kind: metric trees merge, compare points and check fences.
    public static func make(
        endpoint: RemoteEndpoint, kind: String, path: String, role: StoreRole, compressionLevel: Int?, pointCodec: Bool = true
    ) -> RemoteStore {
        let type: RemoteStore.Type = kind == "fs" ? RemoteTreeStore.self : RemoteMetricStore.self
        return type.init(
            endpoint: endpoint, kind: kind, path: path, role: role, compressionLevel: compressionLevel, pointCodec: pointCodec)
    }

    public var wireTotals: WireTotals { counters.withLock { $0 } }

    public func pace(with acquire: @escaping @Sendable (Int) -> Void) { pacer.withLock { $0 = acquire } }

    // MARK: - transport

    private func withClient<T>(_ body: (HTTPClient) throws -> T) throws -> T {
        clientLock.lock()
        let idle = idleClients.popLast()
        clientLock.unlock()
        let client =
            idle
            ?? {
                let c = HTTPClient()
                c.caFile = endpoint.caFile
                c.unixSocket = endpoint.unixSocket
                return c
            }()
        defer {
            clientLock.lock()
            idleClients.append(client)
            clientLock.unlock()
        }
        if let tunnel = endpoint.tunnel { client.unixSocket = try tunnel.socket() }
        return try body(client)
    }

    func headers(_ extra: [(String, String)] = []) -> [(String, String)] {
        // libcurl's own Accept and form Content-Type say nothing here: left out, as every byte is on the link.
        [("Authorization", endpoint.token.header), (Wire.Header.store, ref.header), ("Accept", ""), ("Content-Type", "")] + extra
    }

    /// One request. A transport failure is retried with backoff for up to `reconnectWindow` seconds (a restart of
    /// ferry serve, a dropped link): always when the connection could not be made (nothing was sent), otherwise
    /// when the operation is idempotent. A refusal from the far side becomes a FerryError with its code and
    /// message.
    func call(
        _ operation: String, body: [UInt8] = [], headers extra: [(String, String)] = [], idempotent: Bool = true,
        sink: ((UnsafeRawBufferPointer) -> Bool)? = nil
    ) throws -> HTTPResponse {
        var attempt = 0
        let started = Date()
        let pace = pacer.withLock { $0 }
        while true {
            do {
                pace?(body.count)
                let response = try withClient { c in
                    try c.perform(
                        method: "POST", url: endpoint.baseURL + "/v1/" + operation, headers: headers(extra), upload: .bytes(body),
                        sink: sink)
                }
                counters.withLock {
                    $0.sent += Int64(body.count)
                    $0.received += Int64(response.body.count)
                }
                // What came back (a ranged read) is charged after the fact: the next request waits it out.
                pace?(response.body.count)
                reached.withLock { $0 = true }
                guard response.status == 200 else { throw failure(operation, response) }
                return response
            } catch let e as HTTPTransportError {
                // TLS failures (untrusted or mismatched certificate, handshake refused) are not retried.
                if [35, 51, 53, 58, 59, 60, 77, 80, 82, 83, 90, 91].contains(e.code) {
                    throw FerryError(
                        .invalidPlan,
                        "\(displayName): TLS with ferry serve failed: the server's certificate is not trusted or does not name this "
                            + "host (set ca: to the CA that signed it)", underlying: e)
                }
                attempt += 1
                let notSent = e.code == 7  // CURLE_COULDNT_CONNECT: the request never left
                let window = reached.withLock { $0 } ? reconnectWindow : firstContactWindow
                guard idempotent || notSent, Date().timeIntervalSince(started) < window else {
                    throw FerryError(
                        ref.role == "destination" ? .destinationIO : .sourceIO,
                        "\(displayName): \(operation) failed: cannot reach ferry serve"
                            + (idempotent || notSent ? " (retried for \(Int(window))s)" : ""), underlying: e)
                }
                Thread.sleep(forTimeInterval: min(5, 0.1 * Double(1 << min(attempt, 6))))
            }
        }
    }

    func failure(_ operation: String, _ r: HTTPResponse) -> FerryError { failure(operation, status: r.status, body: r.body) }

    func failure(_ operation: String, status: Int, body: [UInt8]) -> FerryError {
        let f = try? JSONDecoder().decode(Wire.Failure.self, from: Data(body))
        let message = f?.message ?? "HTTP \(status)"
        let code: FerryError.Code =
            status == 401 ? .invalidPlan : f.map { FerryError.Code($0.code) } ?? (ref.role == "destination" ? .destinationIO : .sourceIO)
        let hint = status == 401 ? " (check the plan's token: it must be the one ferry serve was started with)" : ""
        return FerryError(code, "\(displayName): \(operation): \(message)\(hint)")
    }

    // MARK: - batches

    /// Calls of one operation, as few `batch` requests as the bounds allow: at most `Wire.Batch.maxCalls` calls
    /// and 1 MiB of arguments each, and at most `weightLimit` of the calls' weights (the bytes the far side
    /// hashes for them: a batch answers well inside the client's low-speed timeout). Each answer is decoded as
    /// `T`, or is the call's own failure.
    func batched<A: Encodable, T: Decodable>(
        _ operation: String, _ arguments: [A], as type: T.Type, weights: [Int64]? = nil, weightLimit: Int64 = 256 << 20
    ) throws -> [Result<T, any Error>] {
        var out: [Result<T, any Error>] = []
        out.reserveCapacity(arguments.count)
        var calls: [Wire.Batch.Call] = []
        var size = 0
        var weight: Int64 = 0
        func send() throws {
            guard !calls.isEmpty else { return }
            let answers = try json("batch", Wire.Batch(calls: calls), as: Wire.BatchAnswers.self).answers
            guard answers.count == calls.count else {
                throw FerryError(.other, "\(displayName): batch: \(answers.count) answers to \(calls.count) calls")
            }
            for a in answers {
                let body = Array(a.body.utf8)
                guard a.status == 200 else {
                    out.append(.failure(failure(operation, status: a.status, body: body)))
                    continue
                }
                out.append(Result { try Wire.decode(type, body, what: "\(displayName): \(operation)") })
            }
            calls.removeAll(keepingCapacity: true)
            size = 0
            weight = 0
        }
        for (i, a) in arguments.enumerated() {
            let text = String(decoding: Wire.encode(a), as: UTF8.self)
            let w = weights?[i] ?? 0
            if !calls.isEmpty && (calls.count == Wire.Batch.maxCalls || size + text.utf8.count > 1 << 20 || weight + w > weightLimit) {
                try send()
            }
            calls.append(.init(operation: operation, arguments: text))
            size += text.utf8.count
            weight += w
        }
        try send()
        return out
    }

    public func digests(ofEach requests: [(path: String, ranges: [ByteRange])]) throws -> [Result<[RangeDigest]?, any Error>] {
        try batched(
            "hash", requests.map { Wire.HashArgs(path: $0.path, ranges: $0.ranges) }, as: Wire.Digests.self,
            weights: requests.map { $0.ranges.reduce(0) { $0 + $1.length } }
        ).map { $0.map(\.digests) }
    }

    public func exist(_ paths: [String]) throws -> [Result<Bool, any Error>] {
        try batched("stat", paths.map { Wire.PathArgs(path: $0) }, as: Wire.MaybeEntry.self).map { $0.map { $0.entry != nil } }
    }

    public func placeDirectories(_ entries: [Entry]) throws -> [(any Error)?] {
        let calls = entries.flatMap { [Wire.OpArgs(op: "makeDirectory", entry: $0), Wire.OpArgs(op: "finishDirectory", entry: $0)] }
        let answers = try batched("op", calls, as: Wire.Done.self)
        return stride(from: 0, to: answers.count, by: 2).map { i in
            for a in answers[i...i + 1] { if case .failure(let e) = a { return e } }
            return nil
        }
    }

    // MARK: - whole objects, several per request

    /// Bytes of objects per `writer/puts` request, at most (one object bigger than this goes alone).
    static let putsBytes = 8 << 20

    public func encodeWhole(_ entry: Entry, token: String, bytes: UnsafeRawBufferPointer, sha256Hex: String, pointRuns: [ByteRange]) -> WholeObject {
        let (encoding, body) = Codec.encode(bytes, compressor: compressionLevel.map { ZstdCompressor(level: $0) }, runs: pointCodec ? pointRuns : [])
        return WholeObject(entry: entry, token: token, sha256: sha256Hex, length: bytes.count, encoding: encoding, body: body)
    }

    /// Sends the objects in as few `writer/puts` requests as the bounds allow (`Wire.PutsArgs.maxObjects`
    /// objects, `putsBytes` of bodies). An object damaged on the way (the far side's SHA-256 check) is sent again,
    /// up to three times; any other failure is that object's answer. A request is not retried once it may have
    /// been sent (its objects may have landed), as a single put is not.
    public func putEach(_ objects: [WholeObject]) throws -> [(any Error)?] {
        var answers = [(any Error)?](repeating: nil, count: objects.count)
        var todo = Array(objects.indices)
        var attempt = 0
        while !todo.isEmpty {
            var again: [Int] = []
            var start = 0
            while start < todo.count {
                var end = start
                var bytes = 0
                while end < todo.count, end - start < Wire.PutsArgs.maxObjects,
                    end == start || bytes + objects[todo[end]].body.count <= Self.putsBytes
                {
                    bytes += objects[todo[end]].body.count
                    end += 1
                }
                let part = Array(todo[start..<end])
                for (i, failure) in zip(part, try puts(part.map { objects[$0] })) {
                    if let e = failure as? FerryError, e.code.rawValue == "checksum", attempt < 3 {
                        again.append(i)
                    } else {
                        answers[i] = failure
                    }
                }
                start = end
            }
            todo = again
            attempt += 1
        }
        return answers
    }

    /// One `writer/puts` request: the arguments (compressed when that is smaller), then every object's bytes.
    private func puts(_ objects: [WholeObject]) throws -> [(any Error)?] {
        let args = Wire.PutsArgs(
            objects: objects.map {
                .init(
                    put: Wire.PutArgs(entry: $0.entry, publish: nil, token: $0.token), encoding: $0.encoding, sha256: $0.sha256,
                    length: $0.length, size: $0.body.count)
            })
        var (headers, head) = compressed(Wire.encode(args), level: compressionLevel, atLeast: 0)
        headers.append((Wire.Header.split, String(head.count)))
        if compressionLevel != nil { headers.append((Wire.Header.accept, "zstd")) }
        var body = head
        body.reserveCapacity(head.count + objects.reduce(0) { $0 + $1.body.count })
        for o in objects { body += o.body }
        let r = try call("writer/puts", body: body, headers: headers, idempotent: false)
        let answers = try Wire.decode(Wire.BatchAnswers.self, try answer(r, "writer/puts"), what: "\(displayName): writer/puts").answers
        guard answers.count == objects.count else {
            throw FerryError(.other, "\(displayName): writer/puts: \(answers.count) answers to \(objects.count) objects")
        }
        return zip(objects, answers).map { o, a in
            guard a.status == 200 else { return failure("writer/put \(RawName.display(o.entry.path))", status: a.status, body: Array(a.body.utf8)) }
            count(logical: o.length)
            return nil
        }
    }

    func json<A: Encodable, T: Decodable>(_ operation: String, _ arguments: A, as type: T.Type, idempotent: Bool = true) throws -> T {
        // A batch's arguments and answer are JSON of many entries: compressed when the plan compresses.
        var (extra, body) = compressed(Wire.encode(arguments), level: compressionLevel.map { _ in 3 }, atLeast: 1024)
        if compressionLevel != nil && operation == "batch" { extra.append((Wire.Header.accept, "zstd")) }
        let r = try call(operation, body: body, headers: extra, idempotent: idempotent)
        return try Wire.decode(type, try answer(r, operation), what: "\(displayName): \(operation)")
    }

    /// JSON arguments as they travel: zstd at `level` (none: plain) when they are at least `minimum` bytes and
    /// that is smaller, with the `encoding` and `length` headers that say so.
    private func compressed(_ json: [UInt8], level: Int32?, atLeast minimum: Int) -> ([(String, String)], [UInt8]) {
        guard let level, json.count >= minimum else { return ([], json) }
        let (encoding, z) = json.withUnsafeBytes { Codec.encode($0, compressor: ZstdCompressor(level: level)) }
        guard encoding == "zstd" else { return ([], json) }
        return ([(Wire.Header.encoding, encoding), (Wire.Header.length, String(json.count))], z)
    }

    /// A JSON answer's bytes, decoded when it came compressed.
    private func answer(_ r: HTTPResponse, _ operation: String) throws -> [UInt8] {
        guard let encoding = r.headers[Wire.Header.encoding] else { return r.body }
        do {
            return try Codec.decode(encoding: encoding, length: r.headers[Wire.Header.length], body: r.body, limit: 64 << 20)
        } catch let e as RemoteServer.Refusal {
            throw FerryError(.other, "\(displayName): \(operation): an answer that does not decode: \(e.message)")
        }
    }

    func op(_ name: String, entry: Entry? = nil, path: String? = nil, kind: EntryKind? = nil, token: String? = nil) throws {
        _ = try json("op", Wire.OpArgs(op: name, entry: entry, path: path, kind: kind, token: token), as: Wire.Done.self)
    }

    func count(logical n: Int) { counters.withLock { $0.logical += Int64(n) } }

    /// Checks that the server speaks this protocol and serves this store.
    public func hello() throws -> Wire.Hello {
        let h = try json("hello", [String: String](), as: Wire.Hello.self)
        guard h.version == Wire.version else {
            throw FerryError(
                .other, "\(displayName): ferry serve speaks protocol \(h.version), this ferry \(Wire.version): run the same version on both hosts")
        }
        return h
    }

    // MARK: - Store

    public func prepareRoot() throws { try op("prepareRoot") }

    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        var pending: [UInt8] = []
        var failure: (any Error)?
        var complete = false
        var seen: Set<String> = []
        withoutActuallyEscaping(visit) { visit in
            withoutActuallyEscaping(skipped) { skipped in
                func line(_ bytes: ArraySlice<UInt8>) -> Bool {
                    guard !bytes.isEmpty else { return true }
                    guard let l = try? JSONDecoder().decode(Wire.WalkLine.self, from: Data(bytes)) else {
                        failure = FerryError(.sourceIO, "\(displayName): walk: a malformed listing line")
                        return false
                    }
                    if let e = l.e {
                        if l.t == true { seen.insert(e.path) }
                        do { try visit(e) } catch {
                            failure = error
                            return false
                        }
                    } else if let s = l.s {
                        skipped(s)
                    } else if let f = l.error {
                        failure = FerryError(FerryError.Code(f.code), "\(displayName): walk failed on the far side: \(f.message)")
                        return false
                    } else if l.end == true {
                        complete = true
                    }
                    return true
                }
                let zstd = compressionLevel != nil
                var framed: [UInt8] = []
                let decompressor = ZstdDecompressor()
                func lines(_ piece: UnsafeRawBufferPointer) -> Bool {
                    pending += piece
                    var start = 0
                    while let nl = pending[start...].firstIndex(of: 0x0A) {
                        if !line(pending[start..<nl]) { return false }
                        start = nl + 1
                    }
                    pending.removeSubrange(0..<start)
                    // One entry is a few hundred bytes; a line this long is not a listing.
                    if pending.count > 16 << 20 {
                        failure = FerryError(.sourceIO, "\(self.displayName): walk: a listing line over 16 MiB")
                        return false
                    }
                    return true
                }
                // Compressed, the listing is frames of whole lines: each decoded once it is all here.
                func frames(_ piece: UnsafeRawBufferPointer) -> Bool {
                    framed += piece
                    var start = 0
                    while framed.count - start >= 4 {
                        let n = framed[start..<start + 4].reduce(0) { $0 << 8 | Int($1) }
                        guard n <= Wire.WalkArgs.maxFrame else {
                            failure = FerryError(.sourceIO, "\(self.displayName): walk: a listing frame of \(n) bytes")
                            return false
                        }
                        guard framed.count - start - 4 >= n else { break }
                        let decoded: [UInt8]
                        do {
                            decoded = try framed[start + 4..<start + 4 + n].withUnsafeBytes {
                                try decompressor.decompress($0, limit: Wire.WalkArgs.maxFrame)
                            }
                        } catch {
                            failure = FerryError(.sourceIO, "\(self.displayName): walk: a listing frame that does not decode", underlying: error)
                            return false
                        }
                        start += 4 + n
                        if !decoded.withUnsafeBytes({ lines($0) }) { return false }
                    }
                    framed.removeSubrange(0..<start)
                    return true
                }
                let sink: (UnsafeRawBufferPointer) -> Bool = { piece in
                    self.counters.withLock { $0.received += Int64(piece.count) }
                    return zstd ? frames(piece) : lines(piece)
                }
                do {
                    _ = try call("walk", body: Wire.encode(Wire.WalkArgs(zstd: zstd ? true : nil)), idempotent: false, sink: sink)
                } catch {
                    if failure == nil { failure = error }
                }
            }
        }
        if let failure { throw failure }
        guard complete else { throw FerryError(.sourceIO, "\(displayName): walk: the listing ended before its terminator (connection cut)") }
        temporaries.withLock { $0 = seen }
    }

    public func stat(_ path: String) throws -> Entry? {
        try json("stat", Wire.PathArgs(path: path), as: Wire.MaybeEntry.self).entry
    }

    public func openReader(_ path: String) throws -> (any ObjectReader)? {
        guard let entry = try stat(path), entry.kind == .file else { return nil }
        return RemoteReader(store: self, path: path, entry: entry)
    }

    /// Reads up to `length` bytes at `offset` (compressed on the way when the plan compresses).
    func readRange(_ path: String, offset: Int64, length: Int) throws -> [UInt8]? {
        let args = Wire.ReadArgs(path: path, offset: offset, length: length, zstd: compressionLevel != nil, points: pointCodec)
        let r: HTTPResponse
        do {
            r = try call("read", body: Wire.encode(args))
        } catch let e as FerryError where e.code.rawValue == "notFound" {
            return nil
        }
        let bytes: [UInt8]
        do {
            bytes = try Codec.decode(encoding: r.headers[Wire.Header.encoding], length: r.headers[Wire.Header.length], body: r.body, limit: length)
        } catch let e as RemoteServer.Refusal {
            throw FerryError(.sourceIO, "\(displayName): read \(RawName.display(path)): \(e.message)")
        }
        count(logical: bytes.count)
        return bytes
    }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        // A new object is opened on the far side with its first need (or created, written and published at once).
        if !resume { return RemoteWriter(store: self, deferring: entry, token: token) }
        let ref = try json("writer/open", Wire.OpenWriterArgs(entry: entry, token: token, resume: resume), as: Wire.WriterRef.self, idempotent: false)
        guard let id = ref.id else { return nil }
        return RemoteWriter(store: self, id: id, entry: entry, token: token)
    }

    public func makeDirectory(_ entry: Entry) throws { try op("makeDirectory", entry: entry) }
    public func finishDirectory(_ entry: Entry) throws { try op("finishDirectory", entry: entry) }
    public func makeSymlink(_ entry: Entry) throws { try op("makeSymlink", entry: entry) }
    public func remove(_ path: String, kind: EntryKind) throws { try op("remove", path: path, kind: kind) }
    public func syncAll() throws { try op("syncAll") }
    public func discardPartial(for path: String, token: String) throws { try op("discardPartial", path: path, token: token) }

    // A far store of these kinds is a directory tree: it keeps POSIX metadata and takes any byte name.
    public var keepsPOSIXMetadata: Bool { true }
    public var namesAreText: Bool { false }
    public func isOwnTemporary(_ path: String) -> Bool { temporaries.withLock { $0.contains(path) } }

    public func digests(of path: String, ranges: [ByteRange]) throws -> [RangeDigest]? {
        try json("hash", Wire.HashArgs(path: path, ranges: ranges), as: Wire.Digests.self).digests
    }

    // MARK: - metric operations (used by RemoteMetricStore)

    /// The source object read whole and sent, compressed, with an operation that runs on the far side.
    func staged(
        _ operation: String, path: String, from source: any Store, arguments: Wire.MetricArgs, limit: Int = 256 << 20
    ) throws
        -> [UInt8]?
    {
        guard let reader = try source.openReader(path) else { return nil }
        defer { reader.close() }
        let size = Int(try reader.currentEntry().size)
        guard size <= limit else { throw FerryError(.sourceIO, "\(RawName.display(path)): \(size) bytes, more than the \(limit) sent for a merge") }
        let bytes = try reader.read(count: size, at: 0)
        count(logical: bytes.count)
        let runs = pointCodec ? (source as? any PointLayoutProviding)?.pointRuns(reader) ?? [] : []
        let (encoding, body) = bytes.withUnsafeBytes {
            Codec.encode($0, compressor: ZstdCompressor(level: compressionLevel ?? 3), runs: runs)
        }
        let r = try call(
            operation, body: body,
            headers: [
                (Wire.Header.encoding, encoding), (Wire.Header.length, String(bytes.count)),
                (Wire.Header.arguments, String(decoding: Wire.encode(arguments), as: UTF8.self)),
            ])
        return r.body
    }
}

/// A directory tree on another host (`store: {kind: fs}`).
public final class RemoteTreeStore: RemoteStore, HardLinking, SpecialMaking, FenceChecking, @unchecked Sendable {
    /// A live tree's fence (the fs-journal tap) has landed when its file is on the far side.
    public func hasFence(_ token: FenceToken) throws -> Bool { try FenceFile.landed(token, in: self) }

    public func makeHardLink(_ entry: Entry) throws { try op("makeHardLink", entry: entry) }
    public func makeSpecial(_ entry: Entry) throws { try op("makeSpecial", entry: entry) }
    public func refusalChecker() -> ((Entry) -> String?)? { TreeNaming.refusalChecker() }
}

/// A Whisper or Ceres tree on another host: merges and point comparisons run there, next to the live files,
/// under carbon's locks; the source object travels compressed.
public final class RemoteMetricStore: RemoteStore, Merging, PointComparing, FenceChecking, @unchecked Sendable {
    public func merge(_ path: String, from source: any Store, until: Int, now: Int) throws -> Int? {
        // Nothing to merge into: the engine copies the file whole, so its bytes are not sent twice.
        guard try stat(path) != nil else { return nil }
        guard let body = try staged("merge", path: path, from: source, arguments: Wire.MetricArgs(path: path, until: until, now: now)) else {
            throw FerryError(.sourceIO, "\(RawName.display(path)) vanished from the source")
        }
        return try Wire.decode(Wire.Merged.self, body, what: "\(displayName): merge").written
    }

    public func comparePoints(_ path: String, source: any Store, until: Int, window: Int?, now: Int) throws -> String? {
        guard
            let body = try staged("compare", path: path, from: source, arguments: Wire.MetricArgs(path: path, until: until, now: now, window: window))
        else { return "missing at the source" }
        return try Wire.decode(Wire.Compared.self, body, what: "\(displayName): compare").verdict
    }

    public func hasFence(_ token: FenceToken) throws -> Bool {
        try json("fence", Wire.FenceArgs(token: token), as: Wire.Landed.self).landed
    }
}

final class RemoteReader: ObjectReader {
    let store: RemoteStore
    let path: String
    let entry: Entry

    init(store: RemoteStore, path: String, entry: Entry) {
        self.store = store
        self.path = path
        self.entry = entry
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        guard let bytes = try store.readRange(path, offset: offset, length: buffer.count) else {
            throw FerryError(.sourceIO, "\(RawName.display(path)) vanished at \(store.displayName)")
        }
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return bytes.count
    }

    func currentEntry() throws -> Entry {
        guard let e = try store.stat(path) else { throw FerryError(.sourceIO, "\(RawName.display(path)) vanished at \(store.displayName)") }
        return e
    }

    func close() {}
}

/// Writes one object on the far side. A new object is opened lazily: one that is written whole at offset 0 and
/// published (every object up to the chunk size) travels in a single `writer/put` request; anything else opens
/// a writer there on first need and sends the held chunk.
///
/// When the far side forgets the writer (ferry serve restarted, or reaped it while idle), the partial file it
/// kept is opened again by the writer's token, the chunks sent since the last durable point are sent again, and
/// the operation goes on: a restart of the server costs the chunks in flight, not the job.
final class RemoteWriter: DigestAwareWriter, PointLayoutAccepting {
    let store: RemoteStore
    let path: String
    private var id: String?
    /// What the object is opened (and opened again) with.
    private let opening: (entry: Entry, token: String)
    /// Not opened on the far side yet, and the chunk held for it.
    private var deferred: Bool
    private var held: (bytes: [UInt8], sha256: String)?
    /// Chunks sent since the last durable point, kept to send again after a restart of the far side (up to
    /// `unsyncedLimit` bytes; past that a restart fails the file, which the next run resumes).
    private var unsynced: [(offset: Int64, bytes: [UInt8], sha256: String)] = []
    private var unsyncedBytes = 0
    private var recoverable = true
    static let unsyncedLimit = 256 << 20
    var pointRuns: [ByteRange] = []
    lazy var compressor: ZstdCompressor? = store.compressionLevel.map { ZstdCompressor(level: $0) }

    init(store: RemoteStore, id: String, entry: Entry, token: String) {
        self.store = store
        self.id = id
        self.path = entry.path
        self.opening = (entry, token)
        self.deferred = false
    }

    init(store: RemoteStore, deferring entry: Entry, token: String) {
        self.store = store
        self.path = entry.path
        self.opening = (entry, token)
        self.deferred = true
    }

    private func open(resume: Bool) throws -> String {
        let ref = try store.json(
            "writer/open", Wire.OpenWriterArgs(entry: opening.entry, token: opening.token, resume: resume), as: Wire.WriterRef.self,
            idempotent: false)
        guard let opened = ref.id else {
            throw FerryError(
                .destinationIO,
                resume
                    ? "\(RawName.display(path)): the partial file is gone at \(store.displayName) after its restart; run `ferry run` again to resume"
                    : "cannot create \(RawName.display(path)) at \(store.displayName)")
        }
        id = opened
        return opened
    }

    /// The far writer, opened now if it was deferred (the held chunk sent to it).
    private func opened() throws -> String {
        if let id { return id }
        let opened = try open(resume: false)
        deferred = false
        if let (bytes, sha256) = held {
            held = nil
            try record(0, bytes, sha256)
            try bytes.withUnsafeBytes { try send($0, at: 0, sha256Hex: sha256, to: opened) }
        }
        return opened
    }

    private func record(_ offset: Int64, _ bytes: [UInt8], _ sha256: String) throws {
        guard recoverable else { return }
        unsyncedBytes += bytes.count
        if unsyncedBytes > Self.unsyncedLimit {
            recoverable = false
            unsynced = []
        } else {
            unsynced.append((offset, bytes, sha256))
        }
    }

    /// Runs `body` with the far writer; when the far side no longer knows it, opens the partial again, sends the
    /// unsynced chunks again, and (unless `resent` is enough) runs `body` once more.
    private func withWriter(resentIsEnough: Bool = false, _ body: (String) throws -> Void) throws {
        let current = try opened()
        do {
            try body(current)
        } catch let e as FerryError where e.code.rawValue == "unknownWriter" && recoverable {
            let fresh = try open(resume: true)
            for c in unsynced { try c.bytes.withUnsafeBytes { try send($0, at: c.offset, sha256Hex: c.sha256, to: fresh) } }
            if !resentIsEnough { try body(fresh) }
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        try write(bytes, at: offset, sha256Hex: SHA256Hasher.digest(Array(bytes)).hex)
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64, sha256Hex: String) throws {
        if id == nil && deferred && held == nil && offset == 0 {
            held = (Array(bytes), sha256Hex)
            return
        }
        _ = try opened()
        try record(offset, Array(bytes), sha256Hex)
        // After a restart of the far side, sending the unsynced chunks again includes this one.
        try withWriter(resentIsEnough: recoverable) { try send(bytes, at: offset, sha256Hex: sha256Hex, to: $0) }
    }

    /// The headers of a chunk and its body, encoded.
    private func encoded(_ bytes: UnsafeRawBufferPointer, at offset: Int64, sha256Hex: String, arguments: [UInt8]) -> ([(String, String)], [UInt8]) {
        let (encoding, body) = Codec.encode(bytes, compressor: compressor, offset: offset, runs: pointRuns)
        return (
            [
                (Wire.Header.encoding, encoding), (Wire.Header.length, String(bytes.count)), (Wire.Header.sha256, sha256Hex),
                (Wire.Header.arguments, String(decoding: arguments, as: UTF8.self)),
            ], body
        )
    }

    /// Sends a chunk until it arrives intact: the far side checks the SHA-256 of the uncompressed bytes before
    /// writing, and a chunk damaged on the way (422) is sent again.
    private func deliver(_ operation: String, headers: [(String, String)], body: [UInt8], idempotent: Bool, logical: Int) throws {
        var attempt = 0
        while true {
            do {
                _ = try store.call(operation, body: body, headers: headers, idempotent: idempotent)
                store.count(logical: logical)
                return
            } catch let e as FerryError where e.code.rawValue == "checksum" && attempt < 3 {
                attempt += 1
            }
        }
    }

    private func send(_ bytes: UnsafeRawBufferPointer, at offset: Int64, sha256Hex: String, to id: String) throws {
        let (headers, body) = encoded(bytes, at: offset, sha256Hex: sha256Hex, arguments: Wire.encode(Wire.WriteArgs(id: id, offset: offset)))
        try deliver("writer/write", headers: headers, body: body, idempotent: true, logical: bytes.count)
    }

    func accept(chunkDigests: [String]) {}

    func accept(pointRuns: [ByteRange]) {
        if store.pointCodec { self.pointRuns = pointRuns }
    }

    func makeDurable() throws {
        try withWriter { _ = try store.json("writer/durable", Wire.WriterRef(id: $0), as: Wire.Done.self) }
        unsynced = []
        unsyncedBytes = 0
        recoverable = true
    }

    func publish(_ entry: Entry) throws {
        if id == nil && deferred {
            // Open, write and publish in one request (not retried once it may have been sent: it may have landed).
            let (bytes, sha256) = held ?? ([], SHA256Hasher.digest([]).hex)
            let (headers, body) = bytes.withUnsafeBytes {
                encoded(
                    $0, at: 0, sha256Hex: sha256,
                    arguments: Wire.encode(Wire.PutArgs(entry: opening.entry, publish: entry == opening.entry ? nil : entry, token: opening.token)))
            }
            try deliver("writer/put", headers: headers, body: body, idempotent: false, logical: bytes.count)
            held = nil
            deferred = false
            return
        }
        try withWriter { _ = try store.json("writer/publish", Wire.PublishArgs(id: $0, entry: entry), as: Wire.Done.self, idempotent: false) }
    }

    func discard() {
        held = nil
        deferred = false
        unsynced = []
        guard let id else { return }
        _ = try? store.json("writer/discard", Wire.WriterRef(id: id), as: Wire.Done.self)
    }
}
