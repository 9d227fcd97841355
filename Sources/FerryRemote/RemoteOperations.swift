import FerryCore
import FerryDigest
import FerryZstd
import Foundation
import NIOCore
import NIOHTTP1

extension RemoteServer {
    /// Runs one operation on a pool thread. Every failure becomes a status and a JSON reason.
    func serve(_ request: ServerRequest, channel: any Channel) -> ServerReply {
        do {
            guard let header = request.headers[Wire.Header.store], let ref = Wire.StoreRef(header: header) else {
                throw Refusal(400, "badRequest", "missing or malformed \(Wire.Header.store) header")
            }
            let store = try self.store(ref)
            var request = request
            let jsonBodied = !Self.bytesBodied.contains(request.operation)
            if jsonBodied, let encoding = request.headers[Wire.Header.encoding] {
                // A compressed JSON body, decoded within the bound of any JSON body.
                request.body = try Codec.decode(
                    encoding: encoding, length: request.headers[Wire.Header.length], body: request.body, limit: Wire.maxJSON)
            }
            let reply = try perform(request, store: store, channel: channel)
            // Any JSON answer (a `batch`'s, a `writer/puts`'s) comes compressed when the client takes it so.
            if request.headers[Wire.Header.accept] == "zstd", case .bytes(200, let headers, let body) = reply,
                headers.contains(where: { $0 == ServerReply.jsonType }), body.count >= 512
            {
                return Codec.reply(body, zstd: true, level: 3)
            }
            return reply
        } catch let r as Refusal {
            return .failure(r.status, r.code, r.message)
        } catch let e as FerryError {
            return .failure(e.code == .unsafePath ? 403 : 500, e.code.rawValue, e.description)
        } catch let e as SystemCallError {
            let code: FerryError.Code = e.errno == ENOSPC || e.errno == EDQUOT ? .destinationFull : .destinationIO
            return .failure(500, code.rawValue, e.description)
        } catch {
            return .failure(500, FerryError.Code.other.rawValue, "\(error)")
        }
    }

    private func args<T: Decodable>(_ type: T.Type, _ request: ServerRequest) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(request.body))
        } catch {
            throw Refusal(400, "badRequest", "\(request.operation): malformed arguments")
        }
    }

    private func headerArgs<T: Decodable>(_ type: T.Type, _ request: ServerRequest) throws -> T {
        guard let text = request.headers[Wire.Header.arguments], let t = try? JSONDecoder().decode(type, from: Data(text.utf8)) else {
            throw Refusal(400, "badRequest", "\(request.operation): missing or malformed \(Wire.Header.arguments)")
        }
        return t
    }

    private static let done = ServerReply.json(Wire.Done(ok: true))

    /// Operations whose body (or answer) is bytes, their encoding said in headers; every other one takes and
    /// answers JSON.
    static let bytesBodied: Set<String> = ["read", "writer/write", "writer/put", "writer/puts", "merge", "compare"]

    private func perform(_ request: ServerRequest, store: any Store, channel: any Channel) throws -> ServerReply {
        switch request.operation {
        case "hello":
            var abilities: [String] = []
            if store is any Merging { abilities.append("merge") }
            if store is any PointComparing { abilities.append("points") }
            if store is any FenceChecking { abilities.append("fence") }
            if store is any HardLinking { abilities.append("hardlinks") }
            if store is any SpecialMaking { abilities.append("specials") }
            return .json(
                Wire.Hello(
                    version: Wire.version, abilities: abilities, keepsPOSIXMetadata: store.keepsPOSIXMetadata,
                    namesAreText: store.namesAreText, maxChunk: config.maxChunk, maxStaged: config.maxStaged))
        case "walk":
            try walk(store, zstd: (try? args(Wire.WalkArgs.self, request))?.zstd == true, channel: channel)
            return .streamed
        case "stat":
            let a = try args(Wire.PathArgs.self, request)
            return .json(Wire.MaybeEntry(entry: try store.stat(try checked(a.path))))
        case "read":
            return try read(store, try args(Wire.ReadArgs.self, request))
        case "hash":
            let a = try args(Wire.HashArgs.self, request)
            return .json(Wire.Digests(digests: try hash(store, path: try checked(a.path), ranges: a.ranges)))
        case "op":
            return try mutate(store, request)
        case "batch":
            return try batch(request, channel: channel)
        case "writer/open":
            let a = try args(Wire.OpenWriterArgs.self, request)
            _ = try checked(a.entry.path)
            guard let w = try store.openWriter(for: a.entry, token: a.token, resume: a.resume) else { return .json(Wire.WriterRef(id: nil)) }
            return .json(Wire.WriterRef(id: try addWriter(w)))
        case "writer/write":
            try write(request)
            return Self.done
        case "writer/put":
            try put(store, request)
            return Self.done
        case "writer/puts":
            return try puts(request, channel: channel)
        case "writer/durable":
            let a = try args(Wire.WriterRef.self, request)
            try writer(a.id ?? "").use { try $0.makeDurable() }
            return Self.done
        case "writer/publish":
            let a = try args(Wire.PublishArgs.self, request)
            let slot = try writer(a.id)
            try slot.use { try $0.publish(a.entry) }
            writers.withLock { $0[a.id] = nil }
            return Self.done
        case "writer/discard":
            let a = try args(Wire.WriterRef.self, request)
            if let id = a.id, let slot = writers.withLock({ $0.removeValue(forKey: id) }) { slot.use { $0.discard() } }
            return Self.done
        case "merge":
            guard let merger = store as? any Merging else { throw Refusal(400, "unsupported", "this store does not merge") }
            let a = try headerArgs(Wire.MetricArgs.self, request)
            let staged = try StagedObject(path: try checked(a.path), request: request, limit: config.maxStaged)
            return .json(Wire.Merged(written: try merger.merge(a.path, from: staged, until: a.until, now: a.now)))
        case "compare":
            guard let points = store as? any PointComparing else { throw Refusal(400, "unsupported", "this store does not compare points") }
            let a = try headerArgs(Wire.MetricArgs.self, request)
            let staged = try StagedObject(path: try checked(a.path), request: request, limit: config.maxStaged)
            return .json(Wire.Compared(verdict: try points.comparePoints(a.path, source: staged, until: a.until, window: a.window, now: a.now)))
        case "fence":
            guard let fences = store as? any FenceChecking else { throw Refusal(400, "unsupported", "this store cannot check a fence") }
            return .json(Wire.Landed(landed: try fences.hasFence(try args(Wire.FenceArgs.self, request).token)))
        default:
            throw Refusal(404, "unknownOperation", "no operation \"\(request.operation)\"")
        }
    }

    /// An entry path as the stores take it: relative, without `.`/`..` (the root itself is "").
    func checked(_ path: String) throws -> String {
        guard path.isEmpty || PathUtil.isSafeRelative(path) else {
            throw FerryError(.unsafePath, "refusing unsafe path \"\(RawName.display(path))\"")
        }
        return path
    }

    /// Streams the listing as JSON lines, 256 KiB at a time, each write awaited: a slow client slows the walk,
    /// it never makes the server buffer the tree.
    private func walk(_ store: any Store, zstd: Bool, channel: any Channel) throws {
        var headers = HTTPHeaders([
            ("content-type", zstd ? "application/x-ferry-zstd-frames" : "application/x-ndjson"), ("transfer-encoding", "chunked"),
        ])
        headers.replaceOrAdd(name: "cache-control", value: "no-store")
        try channel.writeAndFlush(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))).wait()
        var buffer: [UInt8] = []
        let compressor = zstd ? ZstdCompressor(level: 3) : nil
        func flush() throws {
            guard !buffer.isEmpty else { return }
            var piece = ByteBuffer(bytes: buffer)
            if let compressor {
                let frame = compressor.compress(buffer)
                piece = ByteBuffer()
                piece.writeInteger(UInt32(frame.count), endianness: .big)
                piece.writeBytes(frame)
            }
            buffer.removeAll(keepingCapacity: true)
            try channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(piece))).wait()
        }
        func emit(_ line: Wire.WalkLine) throws {
            buffer += Wire.encode(line)
            buffer.append(0x0A)
            if buffer.count >= 256 << 10 { try flush() }
        }
        do {
            try store.walk(
                { e in try emit(Wire.WalkLine(e: e, t: store.isOwnTemporary(e.path) ? true : nil)) },
                skipped: { s in try? emit(Wire.WalkLine(s: s)) })
            try emit(Wire.WalkLine(end: true))
        } catch {
            // The client sees an error line instead of the terminator, so a partial listing is never complete.
            let code = (error as? FerryError)?.code.rawValue ?? FerryError.Code.sourceIO.rawValue
            try? emit(Wire.WalkLine(error: Wire.Failure(code: code, message: "\(error)")))
        }
        try flush()
        try channel.writeAndFlush(HTTPServerResponsePart.end(nil)).wait()
    }

    private func read(_ store: any Store, _ a: Wire.ReadArgs) throws -> ServerReply {
        guard a.length >= 0, a.length <= config.maxChunk, a.offset >= 0 else {
            throw Refusal(400, "badRequest", "a read of \(a.length) bytes: at most \(config.maxChunk) at a time")
        }
        guard let reader = try store.openReader(try checked(a.path)) else {
            return .failure(404, "notFound", "no object \(RawName.display(a.path))")
        }
        defer { reader.close() }
        let bytes = try reader.read(count: a.length, at: a.offset)
        let runs = a.zstd && a.points == true ? (store as? any PointLayoutProviding)?.pointRuns(reader) ?? [] : []
        return Codec.reply(bytes, zstd: a.zstd, level: 3, offset: a.offset, runs: runs)
    }

    private func hash(_ store: any Store, path: String, ranges: [ByteRange]) throws -> [RangeDigest]? {
        guard let reader = try store.openReader(path) else { return nil }
        defer { reader.close() }
        let hasher = SHA256Hasher()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var out: [RangeDigest] = []
        for r in ranges {
            guard r.offset >= 0, r.length >= 0 else { throw Refusal(400, "badRequest", "a negative range") }
            hasher.reset()
            var done: Int64 = 0
            while done < r.length {
                let want = Int(min(Int64(buffer.count), r.length - done))
                let n = try buffer.withUnsafeMutableBytes { b in
                    try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<want]), at: r.offset + done)
                }
                if n == 0 { break }
                buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                done += Int64(n)
            }
            out.append(RangeDigest(length: done, sha256: hasher.finish().hex))
        }
        return out
    }

    /// The chunk a request carries, decoded and checked against the SHA-256 it was sent with.
    private func checkedChunk(_ request: ServerRequest, offset: Int64) throws -> (bytes: [UInt8], sha256: String) {
        guard let want = request.headers[Wire.Header.sha256], want.utf8.count == 64 else {
            throw Refusal(400, "badRequest", "a chunk needs its SHA-256 in \(Wire.Header.sha256)")
        }
        let bytes = try Codec.decode(request, limit: config.maxChunk)
        let got = SHA256Hasher.digest(bytes).hex
        guard got == want.lowercased() else {
            // Damaged on the way (or by the client): refused before a byte is written; the client sends it again.
            throw Refusal(422, "checksum", "the chunk at offset \(offset) arrived with SHA-256 \(got), not the \(want) it was sent with")
        }
        return (bytes, got)
    }

    private static func write(_ w: any ObjectWriter, _ bytes: [UInt8], at offset: Int64, sha256: String) throws {
        try bytes.withUnsafeBytes { b in
            if let aware = w as? any DigestAwareWriter {
                try aware.write(b, at: offset, sha256Hex: sha256)
            } else {
                try w.write(b, at: offset)
            }
        }
    }

    private func write(_ request: ServerRequest) throws {
        let a = try headerArgs(Wire.WriteArgs.self, request)
        let (bytes, sha256) = try checkedChunk(request, offset: a.offset)
        try writer(a.id).use { try Self.write($0, bytes, at: a.offset, sha256: sha256) }
    }

    /// A whole object in one request: checked, written, published; nothing is left behind when a step fails.
    private func put(_ store: any Store, _ request: ServerRequest) throws {
        let a = try headerArgs(Wire.PutArgs.self, request)
        _ = try checked(a.entry.path)
        let (bytes, sha256) = try checkedChunk(request, offset: 0)
        guard let w = try store.openWriter(for: a.entry, token: a.token, resume: false) else {
            throw Refusal(500, FerryError.Code.destinationIO.rawValue, "cannot create \(RawName.display(a.entry.path))")
        }
        do {
            if !bytes.isEmpty { try Self.write(w, bytes, at: 0, sha256: sha256) }
            if let aware = w as? any DigestAwareWriter { aware.accept(chunkDigests: bytes.isEmpty ? [] : [sha256]) }
            try w.publish(a.publish ?? a.entry)
        } catch {
            w.discard()
            throw error
        }
    }

    /// Several whole objects (`Wire.PutsArgs`): each is run as the `writer/put` it stands for (its own arguments,
    /// encoding, length and SHA-256 as headers beside the request's token and store, its bytes as the body)
    /// through `serve`, so each is checked and refused exactly as alone. The request as a whole is refused when
    /// its arguments are malformed, name more than `maxObjects` objects, or do not account for the body.
    private func puts(_ request: ServerRequest, channel: any Channel) throws -> ServerReply {
        guard let split = request.headers[Wire.Header.split].flatMap(Int.init), split >= 0, split <= request.body.count else {
            throw Refusal(400, "badRequest", "writer/puts: missing or malformed \(Wire.Header.split)")
        }
        let head = Array(request.body[0..<split])
        let json: [UInt8]
        if let encoding = request.headers[Wire.Header.encoding] {
            json = try Codec.decode(encoding: encoding, length: request.headers[Wire.Header.length], body: head, limit: Wire.maxJSON)
        } else {
            guard split <= Wire.maxJSON else { throw Refusal(413, "tooLarge", "writer/puts: arguments of more than \(Wire.maxJSON) bytes") }
            json = head
        }
        let a: Wire.PutsArgs
        do {
            a = try JSONDecoder().decode(Wire.PutsArgs.self, from: Data(json))
        } catch {
            throw Refusal(400, "badRequest", "writer/puts: malformed arguments")
        }
        guard a.objects.count <= Wire.PutsArgs.maxObjects else {
            throw Refusal(400, "badRequest", "writer/puts: \(a.objects.count) objects, more than the \(Wire.PutsArgs.maxObjects) a request takes")
        }
        var total = 0
        for o in a.objects {
            guard o.size >= 0, o.size <= request.body.count else { total = -1; break }
            total += o.size
        }
        guard total == request.body.count - split else {
            throw Refusal(400, "badRequest", "writer/puts: the objects' sizes do not account for the body")
        }
        var answers: [Wire.BatchAnswers.Answer] = []
        answers.reserveCapacity(a.objects.count)
        var offset = split
        for o in a.objects {
            var headers = request.headers
            for h in [Wire.Header.split, Wire.Header.accept] { headers[h] = nil }
            headers[Wire.Header.encoding] = o.encoding
            headers[Wire.Header.length] = String(o.length)
            headers[Wire.Header.sha256] = o.sha256
            headers[Wire.Header.arguments] = String(decoding: Wire.encode(o.put), as: UTF8.self)
            let sub = ServerRequest(operation: "writer/put", headers: headers, body: Array(request.body[offset..<offset + o.size]))
            offset += o.size
            guard case .bytes(let status, _, let body) = serve(sub, channel: channel) else {
                throw Refusal(500, "other", "writer/puts: a put did not answer JSON")
            }
            answers.append(.init(status: status, body: String(decoding: body, as: UTF8.self)))
        }
        return .json(Wire.BatchAnswers(answers: answers))
    }

    /// Runs each call of a batch as the request it stands for (same headers, its own arguments as the body),
    /// through `serve`, so every call is checked and refused exactly as alone. Only operations that answer
    /// JSON are taken: no streamed walk, no bodies of bytes, no batch in a batch.
    private func batch(_ request: ServerRequest, channel: any Channel) throws -> ServerReply {
        let b = try args(Wire.Batch.self, request)
        guard b.calls.count <= Wire.Batch.maxCalls else {
            throw Refusal(400, "badRequest", "batch: \(b.calls.count) calls, more than the \(Wire.Batch.maxCalls) a batch takes")
        }
        if let other = b.calls.first(where: { !Wire.Batch.operations.contains($0.operation) }) {
            throw Refusal(400, "badRequest", "batch: \"\(other.operation)\" cannot be batched (only stat, hash and op)")
        }
        var answers: [Wire.BatchAnswers.Answer] = []
        answers.reserveCapacity(b.calls.count)
        for call in b.calls {
            // The batch's own headers but those of its body and answer: each call's arguments are plain JSON.
            var headers = request.headers
            for h in [Wire.Header.encoding, Wire.Header.length, Wire.Header.accept] { headers[h] = nil }
            let sub = ServerRequest(operation: call.operation, headers: headers, body: Array(call.arguments.utf8))
            guard case .bytes(let status, _, let body) = serve(sub, channel: channel) else {
                throw Refusal(500, "other", "batch: \(call.operation) did not answer JSON")
            }
            answers.append(.init(status: status, body: String(decoding: body, as: UTF8.self)))
        }
        return .json(Wire.BatchAnswers(answers: answers))
    }

    private func mutate(_ store: any Store, _ request: ServerRequest) throws -> ServerReply {
        let op = try args(Wire.OpArgs.self, request)
        func entry() throws -> Entry {
            guard let e = op.entry else { throw Refusal(400, "badRequest", "\(op.op) needs an entry") }
            _ = try checked(e.path)
            return e
        }
        switch op.op {
        case "prepareRoot": try store.prepareRoot()
        case "makeDirectory": try store.makeDirectory(try entry())
        case "finishDirectory": try store.finishDirectory(try entry())
        case "makeSymlink": try store.makeSymlink(try entry())
        case "makeHardLink":
            guard let links = store as? any HardLinking else { throw Refusal(400, "unsupported", "this store holds no hard links") }
            let e = try entry()
            _ = try checked(e.linkTarget ?? "")
            try links.makeHardLink(e)
        case "makeSpecial":
            guard let maker = store as? any SpecialMaking else { throw Refusal(400, "unsupported", "this store holds no special files") }
            try maker.makeSpecial(try entry())
        case "remove":
            guard let p = op.path, let k = op.kind else { throw Refusal(400, "badRequest", "remove needs a path and a kind") }
            try store.remove(try checked(p), kind: k)
        case "syncAll": try store.syncAll()
        case "discardPartial":
            guard let p = op.path, let t = op.token else { throw Refusal(400, "badRequest", "discardPartial needs a path and a token") }
            try store.discardPartial(for: try checked(p), token: t)
        default: throw Refusal(404, "unknownOperation", "no store operation \"\(op.op)\"")
        }
        return Self.done
    }
}

/// How bodies are encoded on the wire: zstd when it is smaller, a run of zeros as its length alone.
enum Codec {
    /// The encoding and body for `bytes`: `zero` (no body), `zstd` when smaller, else `none`.
    /// With `runs` (where the object's Whisper points are), the point codec, which chooses part by part.
    static func encode(
        _ bytes: UnsafeRawBufferPointer, compressor: ZstdCompressor?, offset: Int64 = 0, runs: [ByteRange] = []
    ) -> (encoding: String, body: [UInt8]) {
        if bytes.count > 0 && Bytes.isZero(bytes) { return ("zero", []) }
        guard let compressor, bytes.count >= 64 else { return ("none", Array(bytes)) }
        if !PointCodec.pointSpans(count: bytes.count, offset: offset, runs: runs).isEmpty {
            // Each part already takes the smaller of zstd and the planes (or raw): no whole-chunk attempt.
            let p = PointCodec.encode(bytes, offset: offset, runs: runs, compressor: compressor).body
            return p.count < bytes.count ? ("points", p) : ("none", Array(bytes))
        }
        let z = compressor.compress(bytes)
        return z.count < bytes.count ? ("zstd", z) : ("none", Array(bytes))
    }

    static func reply(_ bytes: [UInt8], zstd: Bool, level: Int32, offset: Int64 = 0, runs: [ByteRange] = []) -> ServerReply {
        let (encoding, body) = bytes.withUnsafeBytes {
            encode($0, compressor: zstd ? ZstdCompressor(level: level) : nil, offset: offset, runs: runs)
        }
        return .bytes(
            status: 200, headers: [(Wire.Header.encoding, encoding), (Wire.Header.length, String(bytes.count))], body: body)
    }

    /// The bytes a body stands for, at most `limit`, given its encoding and stated length.
    static func decode(encoding: String?, length: String?, body: [UInt8], limit: Int) throws -> [UInt8] {
        guard let length = length.flatMap(Int.init), length >= 0, length <= limit else {
            throw RemoteServer.Refusal(400, "badRequest", "a body needs its length (at most \(limit)) in \(Wire.Header.length)")
        }
        let out: [UInt8]
        switch encoding ?? "none" {
        case "none": out = body
        case "zero": out = [UInt8](repeating: 0, count: length)
        case "points":
            do {
                out = try PointCodec.decode(body, length: length)
            } catch {
                throw RemoteServer.Refusal(400, "badEncoding", "point codec: \(error)")
            }
        case "zstd":
            do {
                out = try ZstdDecompressor().decompress(body, limit: limit)
            } catch {
                throw RemoteServer.Refusal(400, "badEncoding", "\(error)")
            }
        default: throw RemoteServer.Refusal(400, "badEncoding", "unknown encoding \(encoding ?? "")")
        }
        guard out.count == length else {
            throw RemoteServer.Refusal(400, "badEncoding", "the body holds \(out.count) bytes, not the \(length) stated")
        }
        return out
    }

    static func decode(_ request: ServerRequest, limit: Int) throws -> [UInt8] {
        try decode(encoding: request.headers[Wire.Header.encoding], length: request.headers[Wire.Header.length], body: request.body, limit: limit)
    }
}

/// A source object sent whole for a merge or a point comparison on this side: a read-only store of one object.
final class StagedObject: Store, @unchecked Sendable {
    // @unchecked: immutable after init.
    let path: String
    let bytes: [UInt8]
    var displayName: String { "staged:\(path)" }

    init(path: String, request: ServerRequest, limit: Int) throws {
        self.path = path
        bytes = try Codec.decode(request, limit: limit)
    }

    var entry: Entry { Entry(path: path, kind: .file, size: Int64(bytes.count), mtimeNs: 0, mode: 0o644, inode: 0) }

    func readOnly() -> FerryError { FerryError(.other, "a staged object is read-only") }
    func prepareRoot() throws { throw readOnly() }
    func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws { try visit(entry) }
    func stat(_ p: String) throws -> Entry? { p == path ? entry : nil }
    func openReader(_ p: String) throws -> (any ObjectReader)? { p == path ? BytesReader(bytes: bytes, entry: entry) : nil }
    func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? { throw readOnly() }
    func makeDirectory(_ entry: Entry) throws { throw readOnly() }
    func finishDirectory(_ entry: Entry) throws { throw readOnly() }
    func makeSymlink(_ entry: Entry) throws { throw readOnly() }
    func remove(_ path: String, kind: EntryKind) throws { throw readOnly() }
    func syncAll() throws {}
    func discardPartial(for path: String, token: String) throws {}
}
