public import FerryCore
public import FerryLocal
import Foundation

/// A Ceres tree seen as the Whisper tree it becomes: node `a/b/c` appears as the file `a/b/c.wsp`, whose bytes
/// are the node converted (`Whisper.convert`) into the destination's schema. The engine then copies, merges and
/// verifies it like any Whisper file. Read-only: a Ceres tree is a source.
public final class CeresTreeStore: Store, @unchecked Sendable {
    // @unchecked: immutable configuration only.
    let tree: LocalStore
    public var root: String { tree.root }
    /// The schema each metric is converted to (from the plan, or carbon's conf files).
    let schemaFor: @Sendable (String) throws -> WhisperSchema?
    public var displayName: String { "ceres:\(root)" }

    public init(root: String, schemaFor: @escaping @Sendable (String) throws -> WhisperSchema?) {
        tree = LocalStore(root: root)
        self.schemaFor = schemaFor
    }

    func readOnly() -> FerryError { FerryError(.other, "a Ceres tree is read-only in ferry (a source, not a destination)") }

    public func prepareRoot() throws { throw readOnly() }

    static func metric(_ path: String) -> String {
        String(path.dropLast(4)).replacingOccurrences(of: "/", with: ".")
    }

    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        var dirs = Set<String>()
        for (metric, _) in try CeresTree.nodes(root: root) {  // refuses a directory that is not a Ceres tree
            let rel = metric.replacingOccurrences(of: ".", with: "/")
            var parent = PathUtil.directory(of: rel)
            var chain: [String] = []
            while parent != "." && !parent.isEmpty && !dirs.contains(parent) {
                chain.append(parent)
                parent = PathUtil.directory(of: parent)
            }
            for d in chain.reversed() {
                dirs.insert(d)
                if let dir = try directory(d) { try visit(dir) }
            }
            do {
                if let e = try tree.withConfinedCeresNode(rel + ".wsp", create: false, { try resolve(rel + ".wsp", nodePath: $0).entry }) {
                    try visit(e)
                }
            } catch let e as CeresError {
                skipped(SkippedEntry(path: rel + ".wsp", reason: e.description))
            } catch let e as FerryError where e.code == .invalidPlan {
                skipped(SkippedEntry(path: rel + ".wsp", reason: e.message))
            }
        }
    }

    /// The virtual file's metadata: the converted size; mtime and inode of the node's newest slice, so a
    /// catch-up sees a node that received points as changed.
    func resolve(_ rel: String, nodePath: String) throws -> (entry: Entry, node: CeresNode, schema: WhisperSchema) {
        let node = try CeresNode(path: nodePath)
        guard let schema = try schemaFor(Self.metric(rel)) else {
            throw FerryError(.invalidPlan, "no schema rule matches \(Self.metric(rel))")
        }
        let archives = schema.archives
        let size =
            Whisper.headerSize + archives.count * Whisper.archiveInfoSize
            + archives.reduce(0) { $0 + $1.points * Whisper.pointSize }
        var mtime: Int64 = 0
        var inode: UInt64 = 0
        for s in node.slices {
            var st = Foundation.stat()
            if lstat(s.path, &st) == 0 {
                let m = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
                if m > mtime {
                    mtime = m
                    inode = UInt64(st.st_ino)
                }
            }
        }
        return (Entry(path: rel, kind: .file, size: Int64(size), mtimeNs: mtime, mode: 0o644, inode: inode), node, schema)
    }

    /// A directory of the tree as an entry (mtime 0: the Whisper view's directories are virtual), reached beneath
    /// the root; nil when `path` is not a directory.
    func directory(_ path: String) throws -> Entry? {
        guard var e = try tree.stat(path), e.kind == .directory else { return nil }
        e.mtimeNs = 0
        e.xattrs = []
        e.allocated = nil
        return e
    }

    public func stat(_ path: String) throws -> Entry? {
        if path.isEmpty { return try directory("") }
        guard PathUtil.isSafeRelative(path) else { throw FerryError(.unsafePath, "refusing unsafe path \"\(path)\"") }
        guard path.hasSuffix(".wsp") else { return try directory(path) }
        return try tree.withConfinedCeresNode(path, create: false) { node -> Entry? in
            guard CeresNode.isNode(node) else { return nil }
            return try resolve(path, nodePath: node).entry
        } ?? nil
    }

    /// Reads the node of `path` converted to Whisper; the node is reached beneath the root (no symlinked
    /// directory on the way, the node and its slices not symlinks).
    public func openReader(_ path: String) throws -> (any ObjectReader)? {
        guard PathUtil.isSafeRelative(path), path.hasSuffix(".wsp") else { return nil }
        return try tree.withConfinedCeresNode(path, create: false) { nodePath -> (any ObjectReader)? in
            guard CeresNode.isNode(nodePath) else { return nil }
            let (e, node, schema) = try resolve(path, nodePath: nodePath)
            let db = try Whisper.convert(node, schema: schema, now: Int(Date().timeIntervalSince1970))
            return BytesReader(bytes: db.bytes, entry: e)
        } ?? nil
    }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? { throw readOnly() }
    public func makeDirectory(_ entry: Entry) throws { throw readOnly() }
    public func finishDirectory(_ entry: Entry) throws { throw readOnly() }
    public func makeSymlink(_ entry: Entry) throws { throw readOnly() }
    public func remove(_ path: String, kind: EntryKind) throws { throw readOnly() }
    public func syncAll() throws {}
    public func discardPartial(for path: String, token: String) throws {}
}

extension LocalStore {
    /// Runs `body` with the node directory of `path` (`servers/a.wsp` → `servers/a`) reached beneath the root:
    /// its parent is opened through the local store (no symlink on the way, missing directories created) and the
    /// node is named inside that descriptor (`/proc/self/fd/N/a`), so a directory of the live tree swapped for
    /// a symlink never leads a merge or a new node outside the tree. A node that is itself a symlink is refused.
    public func withConfinedCeresNode<T>(_ path: String, create: Bool, _ body: (String) throws -> T) throws -> T? {
        guard PathUtil.isSafeRelative(path), path.hasSuffix(".wsp") else {
            throw FerryError(.unsafePath, "refusing unsafe path \"\(path)\"")
        }
        guard let (fd, name) = try openParent(of: String(path.dropLast(4)), create: create) else { return nil }
        defer { close(fd) }
        var st = Foundation.stat()
        if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & S_IFMT == S_IFLNK {
            throw FerryError(.unsafePath, "\"\(path)\": the node is a symlink; not followed")
        }
        return try body("/proc/self/fd/\(fd)/\(name)")
    }
}
