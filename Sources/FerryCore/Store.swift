/// What a manifest row describes: a file, a directory, a symbolic link, a second name of a file (a hard link),
/// or a special file (FIFO, socket, device node).
public enum EntryKind: String, Sendable, Codable {
    case file
    case directory
    case symlink
    /// Another name of a file already in the tree: `linkTarget` holds the first name's path.
    case hardlink
    case fifo
    case socket
    case charDevice = "char-device"
    case blockDevice = "block-device"

    /// FIFOs, sockets and device nodes: never opened, recreated only under `copy.specials: copy`.
    public var isSpecial: Bool {
        switch self {
        case .fifo, .socket, .charDevice, .blockDevice: true
        default: false
        }
    }

    /// How an operator names it.
    public var noun: String {
        switch self {
        case .file: "file"
        case .directory: "directory"
        case .symlink: "symlink"
        case .hardlink: "hard link"
        case .fifo: "FIFO"
        case .socket: "socket"
        case .charDevice: "character device"
        case .blockDevice: "block device"
        }
    }
}

/// One extended attribute (ACLs are the `system.posix_acl_*` ones). The value is raw bytes.
public struct ExtendedAttribute: Sendable, Equatable, Codable {
    public var name: String
    public var value: [UInt8]
    public init(name: String, value: [UInt8]) {
        self.name = name
        self.value = value
    }
}

/// One entry of a store, as a snapshot records it. `path` is relative to the store's root, '/'-separated,
/// and never contains `.`/`..` components.
public struct Entry: Sendable, Equatable, Codable {
    public var path: String
    public var kind: EntryKind
    public var size: Int64
    /// Modification time in nanoseconds since the epoch.
    public var mtimeNs: Int64
    /// Permission bits (including setuid/setgid/sticky), without the file-type bits.
    public var mode: UInt32
    public var inode: UInt64
    public var uid: UInt32
    public var gid: UInt32
    /// For symbolic links: the target, exactly as stored (never resolved). For hard links: the path of the
    /// file's first name in the tree.
    public var linkTarget: String?
    /// For device nodes: the device number.
    public var rdev: UInt64 = 0
    /// How many names the file has (st_nlink); more than one means hard links may be in the tree.
    public var links: UInt32 = 1
    /// Extended attributes (sorted by name), where the store keeps them; empty when there are none.
    public var xattrs: [ExtendedAttribute] = []
    /// Bytes allocated on disk (st_blocks * 512) where the store knows; a sparse file holds fewer than its size.
    public var allocated: Int64? = nil

    public init(
        path: String, kind: EntryKind, size: Int64, mtimeNs: Int64, mode: UInt32, inode: UInt64,
        uid: UInt32 = 0, gid: UInt32 = 0, linkTarget: String? = nil
    ) {
        self.uid = uid
        self.gid = gid
        self.path = path
        self.kind = kind
        self.size = size
        self.mtimeNs = mtimeNs
        self.mode = mode
        self.inode = inode
        self.linkTarget = linkTarget
    }

    /// Whether the content could differ from `other` judging by metadata alone (the catch-up test).
    public func changed(comparedTo other: Entry) -> Bool {
        kind != other.kind || size != other.size || mtimeNs != other.mtimeNs || inode != other.inode
            || linkTarget != other.linkTarget || rdev != other.rdev
    }
}

/// An entry that is not copied, with the reason: `refused` (unreadable, unrepresentable at the destination; it
/// fails the run) or skipped by an explicit plan `policy` (listed, does not fail).
public struct SkippedEntry: Sendable, Codable {
    public enum Category: String, Sendable, Codable {
        case refused
        case policy
    }
    public var path: String
    public var reason: String
    public var category: Category
    public init(path: String, reason: String, category: Category = .refused) {
        self.path = path
        self.reason = reason
        self.category = category
    }
}

/// An open, readable object. `read` fills as much of the buffer as the object has at `offset`.
public protocol ObjectReader: AnyObject {
    /// Reads up to `buffer.count` bytes at `offset`; returns the count read (0 at the end).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int
    /// The object's metadata now (for detecting changes while it is read).
    func currentEntry() throws -> Entry
    func close()
}

extension ObjectReader {
    /// Up to `count` bytes at `offset`, reading until that many arrived or the object ends (fewer at its end).
    public func read(count: Int, at offset: Int64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try bytes.withUnsafeMutableBytes { b in
                try read(into: UnsafeMutableRawBufferPointer(rebasing: b[got...]), at: offset + Int64(got))
            }
            if n == 0 { break }
            got += n
        }
        bytes.removeSubrange(got...)
        return bytes
    }
}

/// A writer for one object at the destination. Bytes become visible under the final name only at `publish`.
public protocol ObjectWriter: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws
    /// Makes everything written so far durable (fdatasync or the store's equivalent).
    func makeDurable() throws
    /// Applies the entry's metadata and moves the object under its final name, atomically.
    func publish(_ entry: Entry) throws
    /// Gives up: removes what was written.
    func discard()
}

/// A reader whose object carries metadata that should travel with it (S3 → S3): the standard headers
/// (Content-Type, Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires) and user
/// metadata (`x-amz-meta-*`), with lower-cased names.
public protocol MetadataCarrying: AnyObject {
    func carriedMetadata() throws -> [String: String]
}

/// A writer that can apply carried metadata to the object it creates.
public protocol MetadataAccepting: AnyObject {
    func accept(metadata: [String: String])
}

/// A source whose objects hold arrays of fixed-size points (Whisper archives: a 4-byte timestamp and an 8-byte
/// value each), and can say where they are, so that a codec on the wire can encode them point by point.
public protocol PointLayoutProviding {
    /// The byte ranges of the object that `reader` reads which are arrays of 12-byte points; none when the
    /// object is not one this store can parse (the bytes then travel as they are).
    func pointRuns(_ reader: any ObjectReader) -> [ByteRange]
}

/// A writer that can use where the object's point arrays are (see `PointLayoutProviding`).
public protocol PointLayoutAccepting: AnyObject {
    func accept(pointRuns: [ByteRange])
}

/// A store that can hand over a file already at the destination that is exactly what publishing an entry would
/// leave (its size, mtime, mode, owner and extended attributes, one name), so the copy can compare its bytes and
/// record it without writing: what an interrupted run published but had not recorded yet, or an earlier copy.
public protocol ExistingCopyFinding {
    /// A reader on that file; nil when there is none, or it differs in any of those.
    func identicalCandidate(for entry: Entry) throws -> (any ObjectReader)?
}

/// A writer whose bytes the store's `syncAll` makes durable along with everything else written to it (a file on a
/// local filesystem: `syncfs` covers it), so the copy may leave a chunk to the next group sync instead of syncing
/// it on its own. `startWriteback` starts writing a range out now (`sync_file_range`), so that sync waits less.
public protocol SyncCoveredWriter: ObjectWriter {
    func startWriteback(offset: Int64, length: Int64)
}

/// A store whose partial objects survive a crash as what was written into them (partial files), and whose
/// writers, reopened with `resume`, can read that back: a resumed copy compares a chunk written but not yet
/// recorded with the source's instead of writing it again.
public protocol PartialsKept {}

/// A writer that reads back what its partial object holds (see `PartialsKept`).
public protocol PartialReading: ObjectWriter {
    /// How many bytes the partial held when it was opened.
    var keptBytes: Int64 { get }
    /// Up to `buffer.count` bytes of the partial at `offset` (fewer at its end).
    func readPartial(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int
}

/// A writer that can use the SHA-256 the engine already computed for the bytes it writes (an S3 payload hash,
/// a stored object hash), so no byte is hashed twice.
public protocol DigestAwareWriter: ObjectWriter {
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64, sha256Hex: String) throws
    /// Before `publish` of an object sent in chunks: every chunk's SHA-256, in order (including chunks sent by an
    /// earlier, interrupted run).
    func accept(chunkDigests: [String])
}

/// A destination that needs larger chunks for some objects (S3: at most 10,000 parts per object).
public protocol ChunkSizing {
    /// The chunk size for an object of `size` bytes when the plan asks for `planned`.
    func chunkSize(forSize size: Int64, planned: Int64) -> Int64
}

/// A destination that can copy an object from a source on the same service without the bytes passing through
/// ferry (S3 CopyObject between buckets of one endpoint). The ledger then holds no chunk hashes for the item:
/// verify proves it by reading both sides.
public protocol ServerSideCopying {
    /// Copies `entry` from `source` server-side; false when this source cannot be copied that way.
    func copyServerSide(_ entry: Entry, from source: any Store) throws -> Bool
}

/// A store holds a tree of entries (a directory, a bucket, a metric tree). Not-found is `nil`, not an error.
/// After rclone's `fs.Fs`: list, stat, read a range, write with an atomic commit.
public protocol Store: Sendable {
    /// A human name such as `fs:/srv/data`; never contains secrets.
    var displayName: String { get }

    /// Creates the store's root when it does not exist yet (a destination on its first run).
    func prepareRoot() throws

    /// Walks every entry below the root, parents before children, calling `visit` for each.
    /// Entries that cannot be listed are reported through `skipped` and the walk goes on.
    func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws

    /// The entry at `path`, or nil when there is none.
    func stat(_ path: String) throws -> Entry?

    /// Opens the object for reading, or nil when it no longer exists.
    func openReader(_ path: String) throws -> (any ObjectReader)?

    /// Opens a writer for `entry`. `token` identifies the transfer across restarts: with `resume` the writer
    /// continues the partial object left under that token instead of starting anew (nil if there is none).
    func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)?

    /// Creates (or updates) a directory entry; metadata may be applied later by `finishDirectory`.
    func makeDirectory(_ entry: Entry) throws
    /// Applies a directory's mode and mtime once everything inside it is written.
    func finishDirectory(_ entry: Entry) throws
    func makeSymlink(_ entry: Entry) throws
    /// Removes an entry (file, link, or an empty directory). Missing is not an error.
    func remove(_ path: String, kind: EntryKind) throws

    /// Makes every write so far durable at once (e.g. `syncfs`): how a batch of small files is committed.
    func syncAll() throws
    /// Removes the partial object a transfer with `token` may have left for `path` (after a crash).
    func discardPartial(for path: String, token: String) throws

    /// Whether the store keeps mode, owner and directories (a filesystem does, a bucket does not); verify only
    /// compares what both sides can hold.
    var keepsPOSIXMetadata: Bool { get }
    /// Whether names must be UTF-8 text (S3 keys); a name with raw bytes is then refused.
    var namesAreText: Bool { get }
    /// Whether a name is the store's own temporary object (a partial file of a copy in flight or interrupted).
    func isOwnTemporary(_ path: String) -> Bool

    /// As a destination: a checker that names why an entry cannot be represented here (a key too long, two
    /// names that would become one object), applied to the whole manifest before anything is copied. It may keep
    /// state across entries. nil: every entry fits.
    func refusalChecker() -> ((Entry) -> String?)?
}

extension Store {
    public var keepsPOSIXMetadata: Bool { true }
    public var namesAreText: Bool { false }
    public func isOwnTemporary(_ path: String) -> Bool { false }
    public func refusalChecker() -> ((Entry) -> String?)? { nil }
}

/// A destination that can give a file a second name (hard links, fs → fs).
public protocol HardLinking: Store {
    /// Links `entry.path` to the already copied file at `entry.linkTarget`.
    func makeHardLink(_ entry: Entry) throws
}

/// A destination that can recreate FIFOs, sockets and device nodes (`copy.specials: copy`).
public protocol SpecialMaking: Store {
    func makeSpecial(_ entry: Entry) throws
}

/// A store whose objects can absorb another copy's content instead of being replaced (metric files: the
/// destination is live, the source is history). The engine merges when the destination object exists.
public protocol Merging: Store {
    /// Merges `path` from `source` into the existing destination object, considering data up to `until`.
    /// Returns how many values were written, or nil when the destination has no such object (copy it whole).
    /// What it wrote is durable after the store's `syncAll`, which the engine runs before recording the merge.
    func merge(_ path: String, from source: any Store, until: Int, now: Int) throws -> Int?
}

/// A store that can describe an object's layout in a few words (a Whisper file's aggregation and archives), so
/// a dry run can warn when the source's and the destination's differ.
public protocol SchemaDescribing: Store {
    /// The layout of `path`, or nil when it is not such an object.
    func schema(_ path: String) throws -> String?
}

/// A store whose parity is proven value by value rather than byte by byte (metric files: the destination keeps
/// receiving live points, so its bytes legitimately differ).
public protocol PointComparing: Store {
    /// Compares `path` in `source` and here over `window` seconds up to `until`; nil when every value the source
    /// holds is at the destination, else what differs.
    func comparePoints(_ path: String, source: any Store, until: Int, window: Int?, now: Int) throws -> String?
}

/// A store that keeps ferry's SHA-256 of an object's content beside it (S3: `x-amz-meta-ferry-sha256`), so a
/// verify can compare hashes without reading the bytes back.
public protocol ChecksumProviding: Store {
    func storedSHA256(_ path: String) throws -> String?
    /// For an object sent in chunks: the chunk size and the hash of its chunks' digests stored beside it.
    func storedChunkListSHA256(_ path: String) throws -> (chunkSize: Int64, sha256: String)?
}

/// What identifies one state of a file's content: its device, inode, size, modification time and change time.
/// Every write to the file, every truncate and every rename onto its name gives another stamp: the kernel sets
/// the change time to the current time and no caller can set it. Bytes hashed under a stamp are therefore still
/// those bytes while the file shows the same stamp, provided the stamp's change time lies clearly before the hash
/// began (`changedNs`): a write within the same clock tick as the change before it may leave the time as it was.
public struct ChangeStamp: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    public var mtimeNs: Int64
    /// The change time (st_ctime), nanoseconds since the epoch.
    public var changedNs: Int64

    public init(device: UInt64, inode: UInt64, size: Int64, mtimeNs: Int64, changedNs: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.mtimeNs = mtimeNs
        self.changedNs = changedNs
    }

    /// One line, as the ledger keeps it.
    public var text: String { "\(device):\(inode):\(size):\(mtimeNs):\(changedNs)" }
}

/// A store whose files carry a `ChangeStamp` (a local filesystem), so content proven once (read back and hashed)
/// stays proven while the file shows the same stamp.
public protocol ChangeStamping: Store {
    /// The stamp of the file at `path` now; nil when there is no such file.
    func changeStamp(_ path: String) throws -> ChangeStamp?
}

/// A reader of a `ChangeStamping` store: the stamp of the very file it reads (before and after reading it).
public protocol ChangeStampedReader: ObjectReader {
    func changeStamp() throws -> ChangeStamp
}
/// One range of an object's bytes.
public struct ByteRange: Sendable, Codable, Equatable {
    public var offset: Int64
    public var length: Int64
    public init(offset: Int64, length: Int64) {
        self.offset = offset
        self.length = length
    }
}

/// What a store found in one range: how many bytes it holds there (fewer at the end of a shorter object) and
/// their SHA-256.
public struct RangeDigest: Sendable, Codable, Equatable {
    public var length: Int64
    public var sha256: String
    public init(length: Int64, sha256: String) {
        self.length = length
        self.sha256 = sha256
    }
}

/// A store that hashes ranges of its objects where they live (a store on another host), so a verify moves
/// digests across the network instead of the bytes.
public protocol RangeHashing: Store {
    /// The digest of each range of `path`, in order; nil when there is no such object.
    func digests(of path: String, ranges: [ByteRange]) throws -> [RangeDigest]?
}

/// A store where every request is a round trip (a store on another host): small operations asked of many
/// entries at once travel as one request. Each answer stands alone: one entry's failure is that entry's.
public protocol Batching: Store {
    /// `digests(of:ranges:)` for each request, in order.
    func digests(ofEach requests: [(path: String, ranges: [ByteRange])]) throws -> [Result<[RangeDigest]?, any Error>]
    /// Whether each path names an entry, in order.
    func exist(_ paths: [String]) throws -> [Result<Bool, any Error>]
    /// `makeDirectory` then `finishDirectory` for each entry, in order; nil where both were done.
    func placeDirectories(_ entries: [Entry]) throws -> [(any Error)?]
}

/// A whole small object as a store on another host sends it: its entry and writer token, the SHA-256 and length
/// of its bytes, and the bytes encoded the way the store sends them (compressed as it chose, when it was read).
public struct WholeObject: Sendable {
    public var entry: Entry
    public var token: String
    public var sha256: String
    public var length: Int
    /// The store's name for how `body` holds the bytes (its wire encoding).
    public var encoding: String
    public var body: [UInt8]

    public init(entry: Entry, token: String, sha256: String, length: Int, encoding: String, body: [UInt8]) {
        self.entry = entry
        self.token = token
        self.sha256 = sha256
        self.length = length
        self.encoding = encoding
        self.body = body
    }
}

/// A store on another host that writes several small objects in one round trip. Each object is encoded when it
/// is read (`encodeWhole`, so what waits is the bytes that will travel), then a group of them is sent together
/// (`putEach`). Each is written and published exactly as `openWriter`, `write` and `publish` would do it alone,
/// with the same checks, and each one's failure is its own.
public protocol ObjectBatching: Store {
    /// `bytes` (the whole object) encoded for `putEach`; `pointRuns` says where its point arrays are, if known.
    func encodeWhole(_ entry: Entry, token: String, bytes: UnsafeRawBufferPointer, sha256Hex: String, pointRuns: [ByteRange]) -> WholeObject
    /// Writes and publishes each object, in order; one answer per object: nil when it was published, else why not.
    func putEach(_ objects: [WholeObject]) throws -> [(any Error)?]
}

/// Bytes a store moved across a network, beside the logical bytes they carried (a store on another host).
public struct WireTotals: Sendable, Equatable {
    public var sent: Int64 = 0
    public var received: Int64 = 0
    /// Uncompressed bytes of the chunks, ranges and staged objects those carried.
    public var logical: Int64 = 0
    public init() {}
    public var wire: Int64 { sent + received }
}

/// A store that counts the bytes it moves across a network, so the ledger can keep wire beside logical bytes.
public protocol WireCounting: Sendable {
    var wireTotals: WireTotals { get }
}

/// A store that can list one subtree (a directory and everything beneath it), for rescans of part of a tree.
public protocol SubtreeWalking: Store {
    /// Visits `path` (a directory) and its entries beneath, as `walk` visits the whole store; nothing when
    /// `path` is not a directory (anymore).
    func walk(under path: String, _ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws
}

/// The fence of a live tree: a small file `.ferry-fence/<name>` holding the fence's serial, written in the
/// source by the fs-journal tap and mirrored like any file. It has landed when the destination holds it.
public enum FenceFile {
    public static let directory = ".ferry-fence"
    public static func path(_ token: FenceToken) -> String { directory + "/" + token.name }
    public static func contents(_ token: FenceToken) -> [UInt8] { Array(String(token.serial).utf8) }

    /// Whether `store` holds this fence's file with its serial.
    public static func landed(_ token: FenceToken, in store: any Store) throws -> Bool {
        guard let reader = try store.openReader(path(token)) else { return false }
        defer { reader.close() }
        let want = contents(token)
        let got = try reader.read(count: want.count + 1, at: 0)
        return got == want
    }
}

/// A store whose bytes cross a network and that paces them itself: `acquire` is called with the size of each
/// body as it goes on (or comes off) the wire, compressed, so `copy.bandwidth` limits the link, not the logical
/// bytes.
public protocol WirePacing: WireCounting {
    func pace(with acquire: @escaping @Sendable (Int) -> Void)
}

/// An object whose bytes are in memory (a converted file, a staged copy).
public final class BytesReader: ObjectReader {
    let bytes: [UInt8]
    let entry: Entry

    public init(bytes: [UInt8], entry: Entry) {
        self.bytes = bytes
        self.entry = entry
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        guard offset >= 0, offset < Int64(bytes.count) else { return 0 }
        let n = min(buffer.count, bytes.count - Int(offset))
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: n) }
        return n
    }

    public func currentEntry() throws -> Entry { entry }
    public func close() {}
}
