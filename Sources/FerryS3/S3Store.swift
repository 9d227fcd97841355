public import FerryCore
import FerryDigest
import Foundation
import Synchronization

/// Where credentials come from: `env:PREFIX_` (PREFIX_ACCESS_KEY_ID, PREFIX_SECRET_ACCESS_KEY) or
/// `file:PATH#profile` (the AWS credentials file format). Errors name the source, never a value.
public enum CredentialSource {
    public static func resolve(_ spec: String, baseDirectory: String) throws -> S3Credentials {
        if spec.hasPrefix("env:") {
            let prefix = String(spec.dropFirst(4))
            let env = ProcessInfo.processInfo.environment
            guard let id = env[prefix + "ACCESS_KEY_ID"], !id.isEmpty,
                let secret = env[prefix + "SECRET_ACCESS_KEY"], !secret.isEmpty
            else {
                throw FerryError(.invalidPlan, "credentials \(spec): set \(prefix)ACCESS_KEY_ID and \(prefix)SECRET_ACCESS_KEY")
            }
            return S3Credentials(accessKeyID: id, secretAccessKey: secret)
        }
        if spec.hasPrefix("file:") {
            let rest = String(spec.dropFirst(5))
            let parts = rest.split(separator: "#", maxSplits: 1).map(String.init)
            let path = PathUtil.absolute(PathUtil.expandTilde(parts[0]), relativeTo: baseDirectory)
            let profile = parts.count > 1 ? parts[1] : "default"
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw FerryError(.invalidPlan, "credentials \(spec): cannot read \(path)")
            }
            var section = ""
            var values: [String: String] = [:]
            for raw in text.split(separator: "\n") {
                let line = raw.trimmingCharacters(in: .whitespaces)
                if line.hasPrefix("[") && line.hasSuffix("]") {
                    section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                } else if section == profile, let eq = line.firstIndex(of: "=") {
                    values[line[..<eq].trimmingCharacters(in: .whitespaces)] = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
                }
            }
            guard let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else {
                throw FerryError(.invalidPlan, "credentials \(spec): profile [\(profile)] lacks aws_access_key_id or aws_secret_access_key")
            }
            return S3Credentials(accessKeyID: id, secretAccessKey: secret)
        }
        throw FerryError(.invalidPlan, "credentials must be env:PREFIX_ or file:PATH#profile")
    }
}

/// A bucket (and key prefix) as a store. Objects are entries; keys map to paths below the prefix. Keys that
/// cannot be paths (`..` or empty segments, a leading `/`) are reported by the walk, never followed.
public final class S3Store: Store, ChecksumProviding, FenceChecking, ChunkSizing, ServerSideCopying, @unchecked Sendable {
    // @unchecked: configuration is immutable; the client pool is behind a Mutex.
    public let endpoint: String
    public let region: String
    public let bucket: String
    public let prefix: String
    let credentials: S3Credentials
    /// Multipart part size: the plan's chunk size (every part but the last the same size, as R2 requires).
    public let partSize: Int64
    private let pool = Mutex<[S3Client]>([])

    public var displayName: String { "s3://\(bucket)/\(prefix) at \(endpoint)" }
    public var keepsPOSIXMetadata: Bool { false }
    /// S3 keys are UTF-8 text: a file name with raw bytes is refused.
    public var namesAreText: Bool { true }

    /// The change token of an object, the same from a listing and from a HEAD: a stable hash of its ETag (a
    /// listing carries no user metadata, so the `x-amz-meta-mtime` that a HEAD sees must not count as a change).
    static func changeToken(_ etag: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in etag.utf8 where b != UInt8(ascii: "\"") {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }

    public let addressing: S3Addressing
    /// `copy.headers`: set on every object this store uploads (lower-case names), winning over the rest.
    public let planHeaders: [(name: String, value: String)]

    public init(
        endpoint: String, region: String, bucket: String, prefix: String, credentials: S3Credentials, partSize: Int64,
        addressing: S3Addressing = .path, maxParts: Int64 = 10_000, headers: [(name: String, value: String)] = []
    ) {
        self.planHeaders = headers
        self.maxParts = maxParts
        self.addressing = addressing
        self.endpoint = endpoint
        self.region = region
        self.bucket = bucket
        self.prefix = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.credentials = credentials
        self.partSize = partSize
    }

    /// Runs `body` with a client from the store's pool (one keep-alive connection each, reused).
    public func withClient<T>(_ body: (S3Client) throws -> T) throws -> T {
        let client =
            pool.withLock { $0.popLast() }
            ?? S3Client(endpoint: endpoint, region: region, bucket: bucket, credentials: credentials, addressing: addressing)
        defer { pool.withLock { $0.append(client) } }
        return try body(client)
    }

    func key(_ path: String) -> String { prefix + path }

    /// S3 allows 10,000 parts per object, each at most 5 GiB. (A test store may hold fewer, to reach the limit
    /// with small objects; it is given at init, never read from the environment.)
    public let maxParts: Int64
    static let maxPartSize: Int64 = 5 << 30

    /// `copy.chunk_size`, or for an object that would need more than 10,000 parts of it, the smallest whole
    /// number of MiB that keeps it within 10,000 equal parts.
    public func chunkSize(forSize size: Int64, planned: Int64) -> Int64 {
        guard (size + planned - 1) / planned > maxParts else { return planned }
        let mib: Int64 = 1_048_576
        let needed = (size + maxParts - 1) / maxParts
        return (needed + mib - 1) / mib * mib
    }

    /// CopyObject from a bucket on the same endpoint, readable with the same credentials, for objects up to
    /// 5 GiB: the object and all its metadata are copied by the server.
    public func copyServerSide(_ entry: Entry, from source: any Store) throws -> Bool {
        guard let src = source as? S3Store, src.endpoint == endpoint, src.credentials.accessKeyID == credentials.accessKeyID,
            entry.size <= Self.maxCopySize, entry.kind == .file
        else { return false }
        try withClient { c in
            try c.copyObject(fromBucket: src.bucket, key: src.key(entry.path), to: key(entry.path))
        }
        return true
    }

    /// This object's part size.
    func partSize(for size: Int64) -> Int64 { chunkSize(forSize: size, planned: partSize) }

    /// Keys longer than 1,024 bytes, and a second name that is the same text in another Unicode normalisation
    /// (R2 normalises keys to NFC, so an NFC/NFD pair would become one object).
    public func refusalChecker() -> ((Entry) -> String?)? {
        var seen: [Int: Int] = [:]  // hash of the NFC form -> hash of the first name's bytes
        let prefix = self.prefix
        let maxParts = self.maxParts
        return { entry in
            guard entry.kind == .file || entry.kind == .hardlink else { return nil }
            let key = prefix + entry.path
            if key.utf8.count > 1024 { return "key is \(key.utf8.count) bytes; S3 and R2 allow 1,024" }
            if entry.size > maxParts * Self.maxPartSize || entry.size > 5 << 40 {
                return "\(entry.size) bytes exceed the largest object S3 holds (5 TiB)"
            }
            let nfc = key.precomposedStringWithCanonicalMapping
            var hn = Hasher()
            hn.combine(Array(nfc.utf8))
            var hb = Hasher()
            hb.combine(Array(key.utf8))
            let (n, b) = (hn.finalize(), hb.finalize())
            if let first = seen[n], first != b {
                return "another name differs from this one only in Unicode normalisation (NFC/NFD); R2 stores both as one object"
            }
            seen[n] = b
            return nil
        }
    }

    public func prepareRoot() throws {
        try withClient { c in
            do {
                try c.list(prefix: prefix, pageSize: 1) { _ in }
            } catch let e as S3Error where e.code == "NoSuchBucket" {
                throw FerryError(.destinationIO, "the bucket \(bucket) does not exist at \(endpoint); create it first")
            }
        }
    }

    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        try withClient { c in
            try c.list(prefix: prefix) { o in
                let rel = String(o.key.dropFirst(prefix.count))
                if rel.isEmpty { return }  // the prefix's own folder marker
                if rel.hasPrefix(".ferry-fence/") {
                    // The taps' cutover fence objects are ferry's, not data: listed as skipped, never copied.
                    skipped(SkippedEntry(path: rel, reason: "a cutover fence object of ferry's S3 tap", category: .policy))
                    return
                }
                if rel.hasSuffix("/") {
                    // A folder marker (the console's "Create folder", s3fs, rclone): a directory, as rclone reads it.
                    let dir = String(rel.dropLast())
                    guard o.size == 0, PathUtil.isSafeRelative(dir) else {
                        skipped(
                            SkippedEntry(
                                path: rel,
                                reason: o.size == 0
                                    ? "key \"\(RawName.display(o.key))\" cannot be a path (empty, `.` or `..` segments)"
                                    : "key \"\(RawName.display(o.key))\" ends with / but holds \(o.size) bytes; it cannot be a file name"))
                        return
                    }
                    try visit(Entry(path: dir, kind: .directory, size: 0, mtimeNs: 0, mode: 0o755, inode: Self.changeToken(o.etag)))
                    return
                }
                guard PathUtil.isSafeRelative(rel) else {
                    skipped(SkippedEntry(path: rel, reason: "key \"\(RawName.display(o.key))\" cannot be a path (empty, `.` or `..` segments)"))
                    return
                }
                try visit(Entry(path: rel, kind: .file, size: o.size, mtimeNs: 0, mode: 0o644, inode: Self.changeToken(o.etag)))
            }
        }
    }

    public func stat(_ path: String) throws -> Entry? {
        if path.isEmpty { return nil }  // a bucket prefix is no object
        return try withClient { c in
            guard let h = try c.headObject(key(path)) else { return nil }
            return Entry(path: path, kind: .file, size: h.size, mtimeNs: 0, mode: 0o644, inode: Self.changeToken(h.etag))
        }
    }

    public func storedSHA256(_ path: String) throws -> String? {
        try withClient { try $0.headObject(key(path))?.headers["x-amz-meta-ferry-sha256"] }
    }

    public func storedChunkListSHA256(_ path: String) throws -> (chunkSize: Int64, sha256: String)? {
        guard let v = try withClient({ try $0.headObject(key(path))?.headers[Self.chunkListHeader] }) else { return nil }
        let parts = v.split(separator: ":")
        guard parts.count == 2, let size = Int64(parts[0]) else { return nil }
        return (size, String(parts[1]))
    }

    /// Where a tap's cutover fence for `marker` lives in a bucket.
    public static func fenceKey(_ marker: String) -> String { ".ferry-fence/" + marker }

    /// Whether the fence's object holding its serial has arrived.
    /// Written by the S3 tap with the serial in its metadata, or mirrored from a live tree by the fs-journal tap
    /// with the serial as its body.
    public func hasFence(_ token: FenceToken) throws -> Bool {
        let head = try withClient { try $0.headObject(key(Self.fenceKey(token.name))) }
        guard let head else { return false }
        if head.headers["x-amz-meta-ferry-fence"] == String(token.serial) { return true }
        return try FenceFile.landed(token, in: self)
    }

    /// `PARTSIZE:SHA256` of a multipart object: the hash of its parts' SHA-256 digests.
    static let chunkListHeader = "x-amz-meta-ferry-sha256-chunks"
    /// CopyObject (used to set the chunk-list hash after a multipart upload) takes objects up to 5 GiB.
    static let maxCopySize: Int64 = 5 << 30

    static func parseNs(_ s: String) -> Int64? {
        let parts = s.split(separator: ".")
        guard let sec = Int64(parts[0]) else { return nil }
        var ns: Int64 = 0
        if parts.count > 1 {
            let frac = String(parts[1].prefix(9))
            ns = (Int64(frac) ?? 0) * Int64(pow(10, Double(9 - frac.count)))
        }
        return sec * 1_000_000_000 + ns
    }

    static func formatNs(_ ns: Int64) -> String {
        let frac = String(ns % 1_000_000_000)
        return "\(ns / 1_000_000_000)." + String(repeating: "0", count: 9 - frac.count) + frac
    }

    public func openReader(_ path: String) throws -> (any ObjectReader)? {
        guard let e = try stat(path) else { return nil }
        return S3Reader(store: self, path: path, entry: e)
    }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        guard PathUtil.isSafeRelative(entry.path) else { throw FerryError(.unsafePath, "refusing unsafe key \(entry.path)") }
        let w = S3Writer(store: self, entry: entry)
        if resume {
            // Continue the newest unfinished upload of this key, or start over when there is none.
            let k = key(entry.path)
            guard let id = try withClient({ try $0.listMultipartUploads(prefix: k) }).last(where: { $0.key == k })?.uploadID
            else { return nil }
            w.uploadID = id
        }
        return w
    }

    public func makeDirectory(_ entry: Entry) throws {}
    public func finishDirectory(_ entry: Entry) throws {}
    /// A bucket cannot hold a symlink: none is written, and verify reports it as missing.
    public func makeSymlink(_ entry: Entry) throws {}
    public func remove(_ path: String, kind: EntryKind) throws {
        if kind == .file { try withClient { try $0.deleteObject(key(path)) } }
    }
    public func syncAll() throws {}  // a 200 answer is durable
    public func discardPartial(for path: String, token: String) throws {
        let k = key(path)
        try withClient { c in
            for u in try c.listMultipartUploads(prefix: k) where u.key == k { try c.abortMultipartUpload(k, uploadID: u.uploadID) }
        }
    }

    /// Content-Type from the file extension (what Mastodon's media needs to be served right).
    static func contentType(_ path: String) -> String {
        let ext = PathUtil.lastComponent(path).split(separator: ".").last.map { $0.lowercased() } ?? ""
        let types = [
            "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
            "avif": "image/avif", "svg": "image/svg+xml", "mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime",
            "mp3": "audio/mpeg", "ogg": "audio/ogg", "m4a": "audio/mp4", "txt": "text/plain", "html": "text/html",
            "css": "text/css", "js": "text/javascript", "json": "application/json", "pdf": "application/pdf",
        ]
        return types[ext] ?? "application/octet-stream"
    }

    /// Headers that travel S3 → S3 (lower-case names), besides ferry's own hash, which is recomputed.
    static let carriedHeaders: Set<String> = [
        "content-type", "cache-control", "content-disposition", "content-encoding", "content-language", "expires",
    ]

    public static func carried(_ headers: [String: String]) -> [String: String] {
        headers.filter { k, _ in
            carriedHeaders.contains(k) || (k.hasPrefix("x-amz-meta-") && k != "x-amz-meta-ferry-sha256")
        }
    }

    /// The headers of a new object: the plan's `copy.headers` win, then carried metadata (S3 sources), then what
    /// a file suggests (the type from the extension, the mtime).
    func headers(for entry: Entry, sha256: String?, carried: [String: String] = [:]) -> [(String, String)] {
        var h: [(String, String)] = []
        let set = Set(planHeaders.map(\.name))
        if carried["content-type"] == nil && !set.contains("content-type") { h.append(("Content-Type", Self.contentType(entry.path))) }
        if carried["x-amz-meta-mtime"] == nil { h.append(("x-amz-meta-mtime", Self.formatNs(entry.mtimeNs))) }
        h += carried.filter { !set.contains($0.key) }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        h += planHeaders.map { ($0.name, $0.value) }
        if let sha256 { h.append(("x-amz-meta-ferry-sha256", sha256)) }
        return h
    }
}

final class S3Reader: ObjectReader, MetadataCarrying {
    let store: S3Store
    let path: String
    let entry: Entry
    private var metadata: [String: String]?

    /// The object's carried headers, from one HEAD.
    func carriedMetadata() throws -> [String: String] {
        if let metadata { return metadata }
        guard let h = try store.withClient({ try $0.headObject(store.key(path)) }) else {
            throw FerryError(.sourceIO, "\(path) vanished from \(store.displayName)")
        }
        let m = S3Store.carried(h.headers)
        metadata = m
        return m
    }

    init(store: S3Store, path: String, entry: Entry) {
        self.store = store
        self.path = path
        self.entry = entry
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        guard offset < entry.size, buffer.count > 0 else { return 0 }
        let last = min(entry.size, offset + Int64(buffer.count)) - 1
        guard let bytes = try store.withClient({ try $0.getObject(store.key(path), range: offset...last) }) else {
            throw FerryError(.sourceIO, "\(path) vanished from \(store.displayName)")
        }
        let n = min(bytes.count, buffer.count)
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        return n
    }

    func currentEntry() throws -> Entry { entry }
    func close() {}
}

/// Small objects are sent with one PUT at publish; larger ones as a multipart upload, one part per chunk,
/// each part uploaded when the engine asks for durability, so a resumed run skips the parts S3 already has.
final class S3Writer: DigestAwareWriter, MetadataAccepting {
    let store: S3Store
    let entry: Entry
    var carried: [String: String] = [:]

    func accept(metadata: [String: String]) { carried = metadata }

    var chunkDigests: [String] = []
    func accept(chunkDigests: [String]) { self.chunkDigests = chunkDigests }
    var path: String { entry.path }
    var size: Int64 { entry.size }
    var uploadID: String?
    var pending: [(offset: Int64, bytes: [UInt8], sha256: String?)] = []
    var small: [UInt8] = []
    /// The engine's SHA-256 of `small`, when it was written in one piece.
    var smallDigest: String?

    init(store: S3Store, entry: Entry) {
        self.store = store
        self.entry = entry
    }

    /// This object's part size: `copy.chunk_size`, larger for an object that would need over 10,000 parts.
    var partSize: Int64 { store.partSize(for: size) }
    var multipart: Bool { size > store.partSize }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64, sha256Hex: String) throws {
        try write(bytes, at: offset)
        if multipart {
            pending[pending.count - 1].sha256 = sha256Hex
        } else if offset == 0 && bytes.count == Int(size) {
            smallDigest = sha256Hex
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        smallDigest = nil
        if multipart {
            pending.append((offset, Array(bytes), nil))
        } else {
            if small.count < Int(offset) + bytes.count { small += [UInt8](repeating: 0, count: Int(offset) + bytes.count - small.count) }
            small.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: Int(offset)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        }
    }

    func makeDurable() throws {
        guard multipart else { return }
        let k = store.key(path)
        if uploadID == nil {
            let headers = store.headers(for: entry, sha256: nil, carried: carried)
            uploadID = try store.withClient { try $0.createMultipartUpload(k, headers: headers) }
        }
        for p in pending {
            let number = Int(p.offset / partSize) + 1
            _ = try store.withClient { try $0.uploadPart(k, uploadID: uploadID!, number: number, p.bytes, payloadHash: p.sha256) }
        }
        pending = []
    }

    func publish(_ entry: Entry) throws {
        let k = store.key(path)
        if !multipart {
            // One SHA-256 of the content serves as the stored hash and as the request's payload hash.
            let digest = smallDigest ?? SHA256Hasher.digest(small).hex
            try store.withClient { c in
                _ = try c.putObject(k, small, headers: store.headers(for: entry, sha256: digest, carried: carried), payloadHash: digest)
            }
            return
        }
        try makeDurable()
        guard let id = uploadID else { throw FerryError(.destinationIO, "\(path): no multipart upload to complete") }
        try store.withClient { c in
            // A part sent again after an interruption can be listed twice (SeaweedFS); the last listing of a
            // number is the one that counts, as a re-upload replaces a part in S3.
            var byNumber: [Int: (number: Int, etag: String, size: Int64)] = [:]
            for p in try c.listParts(k, uploadID: id) { byNumber[p.number] = p }
            let parts = byNumber.values.sorted { $0.number < $1.number }
            let expected = Int((size + partSize - 1) / partSize)
            guard parts.count == expected else {
                throw FerryError(.destinationIO, "\(path): \(parts.count) of \(expected) parts uploaded")
            }
            try c.completeMultipartUpload(k, uploadID: id, parts: parts.map { ($0.number, $0.etag) })
            // The hash of the parts' digests goes beside the object (a server-side copy onto itself, metadata
            // replaced), so verify can prove it without reading it back. Metadata of a multipart upload is fixed
            // when it starts, before the digests are known.
            if chunkDigests.count == expected, size <= S3Store.maxCopySize,
                let list = SHA256Hasher.chunkListDigest(chunkDigests)
            {
                var headers = store.headers(for: entry, sha256: nil, carried: carried)
                headers.append((S3Store.chunkListHeader, "\(partSize):\(list.hex)"))
                try c.copyObject(from: k, to: k, replacing: headers)
            }
        }
    }

    func discard() {
        if let id = uploadID { try? store.withClient { try $0.abortMultipartUpload(store.key(path), uploadID: id) } }
    }
}
