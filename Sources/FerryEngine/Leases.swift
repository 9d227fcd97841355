public import FerryCore
import Foundation
internal import GRDB

/// Leased work: how several `ferry run` processes (on one host today, on several with a shared ledger) share one
/// job's copy. A worker leases a page of pending files for `ttl` seconds and renews its leases while it works;
/// `commit` records done states and chunk rows in one transaction for the files whose lease it still holds, and
/// reports the others as lost (another worker took them over after the lease expired, and its commit counts).
/// A worker killed with `kill -9` stops renewing; after the TTL its files are leased again by the others.
/// Time is passed in (`now`): the engine uses the wall clock, the conformance suite drives it.
public protocol WorkLeasing: Sendable {
    /// Records a worker taking part (one heartbeat row per worker).
    func registerWorker(_ worker: String, pid: Int, now: Double) throws
    /// Up to `limit` pending files that no live lease holds, now leased to `worker` until `now + ttl`.
    func lease(limit: Int, worker: String, ttl: Double, now: Double) throws -> [ItemRecord]
    /// Extends every lease `worker` holds to `now + ttl` and beats its heartbeat; returns how many it holds.
    @discardableResult func renew(worker: String, ttl: Double, now: Double) throws -> Int
    /// Commits the finished files whose lease `worker` still holds (one transaction) and releases those leases;
    /// returns the ids it no longer held, which were not committed.
    func commit(_ done: [(id: Int64, chunks: [ChunkRecord], entry: Entry?)], worker: String) throws -> [Int64]
    /// Gives up every lease `worker` holds (its files become pending for anyone).
    func release(worker: String) throws
    /// Leases other workers hold that have not expired.
    func liveLeases(excluding worker: String, now: Double) throws -> Int
    /// Pending files, leased or not.
    func pendingFiles() throws -> Int
}

extension Ledger: WorkLeasing {
    static func registerLeaseMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v4-leases") { db in
            try db.execute(
                sql: """
                    CREATE TABLE leases (item_id INTEGER PRIMARY KEY, worker TEXT NOT NULL, expires REAL NOT NULL);
                    CREATE INDEX leases_worker ON leases(worker);
                    CREATE TABLE workers (id TEXT PRIMARY KEY, pid INTEGER, started REAL NOT NULL, heartbeat REAL NOT NULL);
                    ALTER TABLE items ADD COLUMN committed_by TEXT;
                    ALTER TABLE items ADD COLUMN commits INTEGER NOT NULL DEFAULT 0;
                    """)
        }
        m.registerMigration("v5-wire") { db in
            try db.execute(
                sql: """
                    ALTER TABLE job ADD COLUMN wire_bytes INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE job ADD COLUMN wire_logical INTEGER NOT NULL DEFAULT 0;
                    """)
        }
        m.registerMigration("v6-control") { db in
            try db.execute(
                sql: "CREATE TABLE control (id INTEGER PRIMARY KEY CHECK (id = 1), settings TEXT NOT NULL, updated_at REAL NOT NULL)")
        }
    }

    /// A write transaction that takes the write lock first (BEGIN IMMEDIATE): two processes leasing at once
    /// queue on the lock instead of one failing its upgrade from reader to writer.
    func immediate<T>(_ what: String, _ body: @escaping (Database) throws -> T) throws -> T {
        try wrap(what) {
            try db.writeWithoutTransaction { db in
                var out: T?
                try db.inTransaction(.immediate) {
                    out = try body(db)
                    return .commit
                }
                return out!
            }
        }
    }

    public func registerWorker(_ worker: String, pid: Int, now: Double) throws {
        _ = try immediate("register a worker") { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO workers (id, pid, started, heartbeat) VALUES (?, ?, ?, ?)", arguments: [worker, pid, now, now])
        }
    }

    public func lease(limit: Int, worker: String, ttl: Double, now: Double) throws -> [ItemRecord] {
        try lease(limit: limit, maxBytes: nil, worker: worker, ttl: ttl, now: now)
    }

    /// As `lease`, with the page also ending before the file that would take it past `maxBytes` (its first file
    /// is always taken): large files next to each other in the listing go to different threads instead of one.
    public func lease(limit: Int, maxBytes: Int64?, worker: String, ttl: Double, now: Double) throws -> [ItemRecord] {
        try immediate("lease files") { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT items.* FROM items LEFT JOIN leases ON leases.item_id = items.id
                    WHERE items.state = 'pending' AND items.kind = 'file' AND (leases.item_id IS NULL OR leases.expires < ?)
                    ORDER BY items.id LIMIT ?
                    """, arguments: [now, limit])
            var items = rows.map(Self.item)
            if let maxBytes {
                var bytes: Int64 = 0
                var taken = 0
                for item in items {
                    if taken > 0 && bytes + item.entry.size > maxBytes { break }
                    bytes += item.entry.size
                    taken += 1
                }
                items.removeSubrange(taken...)
            }
            let ins = try db.cachedStatement(sql: "INSERT OR REPLACE INTO leases (item_id, worker, expires) VALUES (?, ?, ?)")
            for item in items { try ins.execute(arguments: [item.id, worker, now + ttl]) }
            return items
        }
    }

    @discardableResult public func renew(worker: String, ttl: Double, now: Double) throws -> Int {
        try immediate("renew leases") { db in
            try db.execute(sql: "UPDATE leases SET expires = ? WHERE worker = ?", arguments: [now + ttl, worker])
            let n = db.changesCount
            try db.execute(sql: "UPDATE workers SET heartbeat = ? WHERE id = ?", arguments: [now, worker])
            return n
        }
    }

    public func commit(_ done: [(id: Int64, chunks: [ChunkRecord], entry: Entry?)], worker: String) throws -> [Int64] {
        try commit(done, partialChunks: [], worker: worker)
    }

    /// One group commit: the durable chunks of files still being written (`partialChunks`, so a resumed run
    /// continues after them) and the finished files, in one transaction, for the files whose lease `worker`
    /// still holds. Returns the ids it no longer held, which were not recorded.
    public func commit(
        _ done: [(id: Int64, chunks: [ChunkRecord], entry: Entry?)], partialChunks: [(id: Int64, chunk: ChunkRecord)], worker: String
    ) throws -> [Int64] {
        guard !done.isEmpty || !partialChunks.isEmpty else { return [] }
        return try immediate("commit files") { db in
            // A lease is ours while its row names us: a worker that takes over an expired lease replaces the row,
            // so only one of two workers can commit a file.
            let ids = Set(done.map(\.id)).union(partialChunks.map(\.id))
            let held = try Int64.fetchSet(
                db, sql: "SELECT item_id FROM leases WHERE worker = ? AND item_id IN (\(ids.map(String.init).joined(separator: ",")))",
                arguments: [worker])
            let ins = try db.cachedStatement(sql: "INSERT OR REPLACE INTO chunks (item_id, idx, offset, length, sha256) VALUES (?, ?, ?, ?, ?)")
            let upd = try db.cachedStatement(
                sql: "UPDATE items SET state = 'done', error = NULL, committed_by = ?, commits = commits + 1 WHERE id = ?")
            let del = try db.cachedStatement(sql: "DELETE FROM leases WHERE item_id = ?")
            for (id, c) in partialChunks where held.contains(id) {
                try ins.execute(arguments: [id, c.index, c.offset, c.length, c.sha256])
            }
            var lost: Set<Int64> = []
            for item in done {
                guard held.contains(item.id) else {
                    lost.insert(item.id)
                    continue
                }
                for c in item.chunks { try ins.execute(arguments: [item.id, c.index, c.offset, c.length, c.sha256]) }
                if let e = item.entry { try Self.updateEntry(db, item.id, e) }
                try upd.execute(arguments: [worker, item.id])
                try del.execute(arguments: [item.id])
            }
            lost.formUnion(partialChunks.map(\.id).filter { !held.contains($0) })
            return lost.sorted()
        }
    }

    public func release(worker: String) throws {
        _ = try immediate("release leases") { db in try db.execute(sql: "DELETE FROM leases WHERE worker = ?", arguments: [worker]) }
    }

    public func liveLeases(excluding worker: String, now: Double) throws -> Int {
        try wrap("count leases") {
            try db.read { db in
                try Int.fetchOne(
                    db,
                    sql: """
                        SELECT COUNT(*) FROM leases JOIN items ON items.id = leases.item_id
                        WHERE items.state = 'pending' AND leases.worker != ? AND leases.expires >= ?
                        """, arguments: [worker, now]) ?? 0
            }
        }
    }

    public func pendingFiles() throws -> Int {
        try wrap("count pending files") {
            try db.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM items WHERE state = 'pending' AND kind = 'file'") ?? 0 }
        }
    }
}

/// The lease rules without a database: the reference the conformance suite checks the SQLite ledger against,
/// and what an engine test can lease from.
public final class MemoryLeases: WorkLeasing, @unchecked Sendable {
    private let lock = NSLock()
    private var pending: Set<Int64>
    private var leases: [Int64: (worker: String, expires: Double)] = [:]
    public private(set) var committedBy: [Int64: [String]] = [:]
    private var workers: [String: Double] = [:]

    public init(pending ids: [Int64]) {
        pending = Set(ids)
    }

    public func registerWorker(_ worker: String, pid: Int, now: Double) throws {
        lock.withLock { workers[worker] = now }
    }

    public func lease(limit: Int, worker: String, ttl: Double, now: Double) throws -> [ItemRecord] {
        lock.withLock {
            let free = pending.filter { id in leases[id].map { $0.expires < now } ?? true }.sorted().prefix(limit)
            for id in free { leases[id] = (worker, now + ttl) }
            return free.map { id in
                ItemRecord(
                    id: id, entry: Entry(path: "item-\(id)", kind: .file, size: 0, mtimeNs: 0, mode: 0o644, inode: UInt64(id)), state: .pending,
                    attempts: 0, error: nil)
            }
        }
    }

    @discardableResult public func renew(worker: String, ttl: Double, now: Double) throws -> Int {
        lock.withLock {
            var n = 0
            for (id, l) in leases where l.worker == worker {
                leases[id] = (worker, now + ttl)
                n += 1
            }
            workers[worker] = now
            return n
        }
    }

    public func commit(_ done: [(id: Int64, chunks: [ChunkRecord], entry: Entry?)], worker: String) throws -> [Int64] {
        lock.withLock {
            var lost: [Int64] = []
            for item in done {
                guard leases[item.id]?.worker == worker else {
                    lost.append(item.id)
                    continue
                }
                leases[item.id] = nil
                pending.remove(item.id)
                committedBy[item.id, default: []].append(worker)
            }
            return lost
        }
    }

    public func release(worker: String) throws {
        lock.withLock { leases = leases.filter { $0.value.worker != worker } }
    }

    public func liveLeases(excluding worker: String, now: Double) throws -> Int {
        lock.withLock { leases.values.filter { $0.worker != worker && $0.expires >= now }.count }
    }

    public func pendingFiles() throws -> Int { lock.withLock { pending.count } }
}
