public import FerryCore
import FerryDigest
import Foundation

/// The protocol between `RemoteStore` (the client, on the host that runs the job) and `RemoteServer`
/// (`ferry serve`, on the far host). HTTP/1.1; every request is a POST to `/v1/<operation>` carrying:
/// - `Authorization: Bearer <token>`;
/// - `X-Ferry-Store: <kind>;<role>;<percent-encoded path>`, the store on the far host it is about;
/// - a JSON body (most operations) or the bytes of a chunk, with their parameters in `X-Ferry-*` headers.
/// Answers are JSON, the bytes of a range, or (walk) a stream of JSON lines ending with a terminator line,
/// so a listing cut short is detected. Failures are a status and `{"code": ..., "message": ...}`.
public enum Wire {
    /// 2: the point codec (`points` encoding) and `writer/put`. 3: `batch`. 4: `writer/puts`.
    public static let version = 4
    /// JSON request bodies above this are refused (413).
    public static let maxJSON = 4 << 20

    public enum Header {
        public static let store = "x-ferry-store"
        public static let sha256 = "x-ferry-sha256"
        /// The uncompressed length of a body (chunk, range, staged file).
        public static let length = "x-ferry-length"
        /// How a body is encoded: `none`, `zstd`, `zero` (no body: that many zero bytes), or `points` (the point
        /// codec, `PointCodec`: segments of a Whisper file, each archive in its smallest form).
        public static let encoding = "x-ferry-encoding"
        /// JSON parameters of an operation whose body is bytes.
        public static let arguments = "x-ferry-arguments"
        /// `zstd`: the client takes a JSON answer compressed (with `encoding` and `length`, as a range comes).
        /// A JSON request body may come compressed the same way, said by its own `encoding` and `length`.
        public static let accept = "x-ferry-accept"
        /// `writer/puts`: how many bytes of the body are its (encoded) arguments; the objects' bytes follow.
        public static let split = "x-ferry-split"
    }

    /// The store a request is about.
    public struct StoreRef: Sendable, Equatable, Hashable {
        public var kind: String
        public var role: String
        public var path: String

        public init(kind: String, role: String, path: String) {
            self.kind = kind
            self.role = role
            self.path = path
        }

        static let pathCharacters = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "/-._~"))

        public var header: String {
            "\(kind);\(role);\(path.addingPercentEncoding(withAllowedCharacters: Self.pathCharacters) ?? "")"
        }

        public init?(header: String) {
            let parts = header.split(separator: ";", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, let p = String(parts[2]).removingPercentEncoding else { return nil }
            self.init(kind: String(parts[0]), role: String(parts[1]), path: p)
        }
    }

    /// A failure as it travels.
    public struct Failure: Codable, Sendable {
        public var code: String
        public var message: String
    }

    public struct Hello: Codable, Sendable {
        public var version: Int
        /// The store's abilities: `merge`, `points`, `fence`, `hardlinks`, `specials`, `hash`.
        public var abilities: [String]
        public var keepsPOSIXMetadata: Bool
        public var namesAreText: Bool
        public var maxChunk: Int
        public var maxStaged: Int
    }

    /// A walk's request. With `zstd`, the listing comes as frames: each a 4-byte big-endian length and a zstd
    /// frame of whole lines (a listing is JSON: a tenth of it crosses the network).
    public struct WalkArgs: Codable, Sendable {
        public var zstd: Bool?
        /// A frame, compressed or not, is at most this long (the server flushes every 256 KiB of lines).
        public static let maxFrame = 16 << 20
    }

    /// One line of a walk.
    public struct WalkLine: Codable, Sendable {
        public var e: Entry?
        /// The entry is the store's own temporary (a partial file).
        public var t: Bool?
        public var s: SkippedEntry?
        /// The terminator: true once the walk is complete.
        public var end: Bool?
        /// The walk failed on the far side.
        public var error: Failure?
    }

    public struct PathArgs: Codable, Sendable {
        public var path: String
        public var kind: EntryKind?
        public var token: String?
    }

    public struct EntryArgs: Codable, Sendable {
        public var entry: Entry
    }

    public struct MaybeEntry: Codable, Sendable {
        public var entry: Entry?
    }

    public struct ReadArgs: Codable, Sendable {
        public var path: String
        public var offset: Int64
        public var length: Int
        public var zstd: Bool
        /// Whisper files may come back in the point codec (absent from older clients: no).
        public var points: Bool? = nil
    }

    public struct OpenWriterArgs: Codable, Sendable {
        public var entry: Entry
        public var token: String
        public var resume: Bool
    }

    public struct WriterRef: Codable, Sendable {
        public var id: String?
    }

    public struct WriteArgs: Codable, Sendable {
        public var id: String
        public var offset: Int64
    }

    public struct PublishArgs: Codable, Sendable {
        public var id: String
        public var entry: Entry
    }

    /// A whole object in one request (open, write at offset 0, publish): the object as opened, the entry it is
    /// published with, the writer's token.
    public struct PutArgs: Codable, Sendable {
        public var entry: Entry
        /// Absent when it is `entry`.
        public var publish: Entry?
        public var token: String
    }

    /// Several whole objects in one request (`writer/puts`). The body is the arguments (JSON, zstd-compressed
    /// when that is smaller: `encoding` and `length` say so, `split` says how long they are), then each object's
    /// encoded bytes in order. Each object is a `writer/put` of its own on the far side, with the same checks;
    /// the answers (`BatchAnswers`) are one per object, so a refusal is that object's alone.
    public struct PutsArgs: Codable, Sendable {
        public static let maxObjects = Batch.maxCalls
        public var objects: [Object]

        public struct Object: Codable, Sendable {
            public var put: PutArgs
            /// The object's bytes as they travel: encoding, SHA-256 and length of the decoded bytes, bytes in the body.
            public var encoding: String
            public var sha256: String
            public var length: Int
            public var size: Int
        }
    }

    /// A store operation without a body of bytes (`op`): its name and what it needs of these.
    public struct OpArgs: Codable, Sendable {
        public var op: String
        public var entry: Entry?
        public var path: String?
        public var kind: EntryKind?
        public var token: String?
    }

    public struct HashArgs: Codable, Sendable {
        public var path: String
        public var ranges: [ByteRange]
    }

    public struct Digests: Codable, Sendable {
        public var digests: [RangeDigest]?
    }

    /// Several small operations in one request (`batch`): each call is an operation that answers JSON (`stat`,
    /// `hash`, `op`) with its own JSON arguments, run in order. A call that fails fails alone: its answer is its
    /// status and failure, the calls after it still run. Per request, a round trip and its headers are paid
    /// once for up to `maxCalls` calls (a page of verify's hashes, a tree's directories).
    public struct Batch: Codable, Sendable {
        public static let maxCalls = 1024
        public static let operations: Set<String> = ["stat", "hash", "op"]
        public var calls: [Call]

        public struct Call: Codable, Sendable {
            public var operation: String
            /// The call's JSON arguments, as the operation alone would take them in its body.
            public var arguments: String
        }
    }

    /// The answers of a batch, one per call in order: the status and the answer's JSON (a failure's when the
    /// status is not 200).
    public struct BatchAnswers: Codable, Sendable {
        public var answers: [Answer]

        public struct Answer: Codable, Sendable {
            public var status: Int
            public var body: String
        }
    }

    /// Merge and point comparison: the source object travels as the body (staged on the far side).
    public struct MetricArgs: Codable, Sendable {
        public var path: String
        public var until: Int
        public var now: Int
        public var window: Int?
    }

    public struct Merged: Codable, Sendable {
        public var written: Int?
    }

    public struct Compared: Codable, Sendable {
        public var verdict: String?
    }

    public struct FenceArgs: Codable, Sendable {
        public var token: FenceToken
    }

    public struct Landed: Codable, Sendable {
        public var landed: Bool
    }

    public struct Done: Codable, Sendable {
        public var ok: Bool
    }

    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        // Keys in one order: lines of a listing alike enough for zstd (the encoder's own order changes per value).
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Encoding a value of these plain types cannot fail.
        return (try? Array(encoder.encode(value))) ?? Array("{}".utf8)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch {
            throw FerryError(.other, "\(what): malformed message", cause: "\(error)")
        }
    }
}

/// The bearer token shared by `ferry serve` and its clients.
public struct RemoteToken: Sendable {
    let bytes: [UInt8]

    public init(_ text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.utf8.count >= 16 else { throw FerryError(.invalidPlan, "the token is shorter than 16 characters") }
        guard trimmed.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw FerryError(.invalidPlan, "the token must be printable ASCII without spaces")
        }
        bytes = Array(trimmed.utf8)
    }

    /// `env:NAME` (an environment variable) or `file:PATH` (a file, relative to `base`); the value is never shown.
    public static func load(_ reference: String, base: String, field: String) throws -> RemoteToken {
        if reference.hasPrefix("env:") {
            let name = String(reference.dropFirst(4))
            guard let v = ProcessInfo.processInfo.environment[name] else {
                throw FerryError(.invalidPlan, "\(field): the environment variable \(name) is not set")
            }
            return try wrap(field) { try RemoteToken(v) }
        }
        if reference.hasPrefix("file:") {
            let path = PathUtil.absolute(String(reference.dropFirst(5)), relativeTo: base)
            return try fromFile(path, field: field)
        }
        throw FerryError(.invalidPlan, "\(field): expected env:NAME or file:PATH (a token is never written in a plan)")
    }

    public static func fromFile(_ path: String, field: String) throws -> RemoteToken {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw FerryError(.invalidPlan, "\(field): cannot read the token file \(path)")
        }
        return try wrap(field) { try RemoteToken(text) }
    }

    private static func wrap(_ field: String, _ body: () throws -> RemoteToken) throws -> RemoteToken {
        do {
            return try body()
        } catch let e as FerryError {
            throw FerryError(.invalidPlan, "\(field): \(e.message)")
        }
    }

    /// A fresh random token (for a connection that ferry sets up itself, over SSH).
    public static func random() -> RemoteToken {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)
        // 43 characters of 62: more than 256 bits.
        return try! RemoteToken(String(decoding: (0..<43).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }, as: UTF8.self))
    }

    public var header: String { "Bearer " + String(decoding: bytes, as: UTF8.self) }

    /// Whether an `Authorization` header carries this token. The comparison takes the same time wherever the
    /// first difference is (it folds every byte of both digests), so a client learns nothing by timing it.
    public func accepts(_ header: String?) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let given = SHA256Hasher.digest(Array(header.utf8.dropFirst(7))).bytes
        let want = SHA256Hasher.digest(bytes).bytes
        var diff: UInt8 = 0
        for i in 0..<want.count { diff |= given[i] ^ want[i] }
        return diff == 0
    }
}
