public import FerryCore
import Foundation
import Synchronization

/// An in-memory store, registered exactly like the real kinds (`MemoryStore.kind`, `kind: memory` with a `name`):
/// for engine tests that need no filesystem, and as the reference implementation the store conformance suite
/// runs against first. Stores of one name are one tree for the life of the process.
public final class MemoryStore: Store, HardLinking, @unchecked Sendable {
    struct Node {
        var entry: Entry
        var data: [UInt8]
    }

    public let name: String
    private let lock = NSLock()
    private var nodes: [String: Node] = [:]
    /// Partial objects of transfers in flight, by token and path.
    private var partials: [String: [UInt8]] = [:]
    private var nextInode: UInt64 = 1

    public init(name: String) {
        self.name = name
    }

    private static let named = Mutex<[String: MemoryStore]>([:])

    /// The store of that name (created on first use).
    public static func named(_ name: String) -> MemoryStore {
        named.withLock { all in
            if let s = all[name] { return s }
            let s = MemoryStore(name: name)
            all[name] = s
            return s
        }
    }

    /// `kind: memory`: one line in a test's backend list, like every real kind.
    public static let kind = StoreKind(
        schema: StoreKindSchema(kind: "memory", keys: ["name"], required: ["name"], pathIsLocal: false, holdsLinks: true),
        sources: ["memory", "fs"]
    ) { ctx in
        guard let name = ctx.spec.options["name"], !name.isEmpty else {
            throw FerryError(.invalidPlan, "\(ctx.section).name: a memory store needs a name")
        }
        return MemoryStore.named(name)
    }

    public var displayName: String { "memory:\(name)" }
    public var keepsPOSIXMetadata: Bool { true }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// The bytes of a file, for tests.
    public func contents(_ path: String) -> [UInt8]? { locked { nodes[path]?.data } }

    /// Puts a file (creating its parent directories), for tests that build a source tree.
    public func put(_ path: String, _ data: [UInt8], mtimeNs: Int64 = 1_700_000_000_000_000_000, mode: UInt32 = 0o644) {
        locked {
            var parent = ""
            for part in path.split(separator: "/").dropLast() {
                parent += (parent.isEmpty ? "" : "/") + part
                if nodes[parent] == nil {
                    nodes[parent] = Node(entry: newEntry(parent, .directory, size: 0, mtimeNs: mtimeNs, mode: 0o755), data: [])
                }
            }
            nodes[path] = Node(entry: newEntry(path, .file, size: Int64(data.count), mtimeNs: mtimeNs, mode: mode), data: data)
        }
    }

    private func newEntry(_ path: String, _ kind: EntryKind, size: Int64, mtimeNs: Int64, mode: UInt32) -> Entry {
        nextInode += 1
        return Entry(path: path, kind: kind, size: size, mtimeNs: mtimeNs, mode: mode, inode: nextInode)
    }

    public func prepareRoot() throws {}

    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        // Sorted by path: a parent sorts before everything below it.
        let all = locked { nodes.values.map(\.entry).sorted { $0.path < $1.path } }
        for e in all { try visit(e) }
    }

    public func stat(_ path: String) throws -> Entry? {
        if path.isEmpty { return Entry(path: "", kind: .directory, size: 0, mtimeNs: 0, mode: 0o755, inode: 1) }
        return locked { nodes[path]?.entry }
    }

    final class Reader: ObjectReader {
        let store: MemoryStore
        let path: String
        let data: [UInt8]
        let entry: Entry
        init(store: MemoryStore, path: String, node: Node) {
            self.store = store
            self.path = path
            data = node.data
            entry = node.entry
        }
        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
            guard offset < data.count else { return 0 }
            let n = min(buffer.count, data.count - Int(offset))
            data.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: n) }
            return n
        }
        func currentEntry() throws -> Entry {
            guard let e = try store.stat(path) else { throw FerryError(.sourceIO, "\(path) vanished") }
            return e
        }
        func close() {}
    }

    public func openReader(_ path: String) throws -> (any ObjectReader)? {
        guard let node = locked({ nodes[path] }), node.entry.kind == .file else { return nil }
        return Reader(store: self, path: path, node: node)
    }

    final class Writer: ObjectWriter {
        let store: MemoryStore
        let key: String
        let path: String
        init(store: MemoryStore, key: String, path: String) {
            self.store = store
            self.key = key
            self.path = path
        }
        func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
            store.locked {
                var b = store.partials[key] ?? []
                let end = Int(offset) + bytes.count
                if b.count < end { b += [UInt8](repeating: 0, count: end - b.count) }
                b.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: Int(offset)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
                store.partials[key] = b
            }
        }
        func makeDurable() throws {}
        func publish(_ entry: Entry) throws {
            try store.locked {
                let data = store.partials.removeValue(forKey: key) ?? []
                guard data.count == entry.size else {
                    throw FerryError(.destinationIO, "\(path): \(data.count) bytes written, \(entry.size) expected")
                }
                var e = entry
                e.inode =
                    store.nodes[path]?.entry.inode
                    ?? {
                        store.nextInode += 1; return store.nextInode
                    }()
                e.links = 1
                store.nodes[path] = Node(entry: e, data: data)
            }
        }
        func discard() { _ = store.locked { store.partials.removeValue(forKey: key) } }
    }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        let key = token + "\u{0}" + entry.path
        let exists = locked { partials[key] != nil }
        if resume && !exists { return nil }
        if !resume { locked { partials[key] = [] } }
        return Writer(store: self, key: key, path: entry.path)
    }

    public func makeDirectory(_ entry: Entry) throws {
        locked {
            if nodes[entry.path]?.entry.kind != .directory { nodes[entry.path] = Node(entry: entry, data: []) }
        }
    }

    public func finishDirectory(_ entry: Entry) throws {
        locked {
            if var n = nodes[entry.path] {
                n.entry.mode = entry.mode
                n.entry.mtimeNs = entry.mtimeNs
                n.entry.uid = entry.uid
                n.entry.gid = entry.gid
                nodes[entry.path] = n
            }
        }
    }

    public func makeSymlink(_ entry: Entry) throws {
        var e = entry
        e.size = Int64(entry.linkTarget?.utf8.count ?? 0)
        locked { nodes[entry.path] = Node(entry: e, data: []) }
    }

    public func makeHardLink(_ entry: Entry) throws {
        try locked {
            guard let target = entry.linkTarget, var first = nodes[target] else {
                throw FerryError(.destinationIO, "\(entry.path): the link's first name \(entry.linkTarget ?? "?") is not there")
            }
            first.entry.links += 1
            nodes[target] = first
            var second = first
            second.entry.path = entry.path
            nodes[entry.path] = second
        }
    }

    public func remove(_ path: String, kind: EntryKind) throws {
        try locked {
            if kind == .directory, nodes.keys.contains(where: { $0.hasPrefix(path + "/") }) {
                throw FerryError(.destinationIO, "\(path): the directory is not empty")
            }
            nodes[path] = nil
        }
    }

    public func syncAll() throws {}

    public func discardPartial(for path: String, token: String) throws {
        _ = locked { partials.removeValue(forKey: token + "\u{0}" + path) }
    }
}
