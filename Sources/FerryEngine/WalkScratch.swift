import FerryCore
import Foundation
import GRDB

/// Verify's scratch space: the fresh listings of both sides, joined by path with the ledger's manifest in SQLite
/// (a file in the state directory, removed afterwards), so a tree of millions of entries costs disk, not memory.
final class WalkScratch: @unchecked Sendable {
    // @unchecked: a DatabaseQueue serialises every access.
    let path: String
    let db: DatabaseQueue

    init(stateDirectory: String) throws {
        path = stateDirectory + "/verify-walk.sqlite"
        for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        do {
            var config = Configuration()
            config.prepareDatabase { db in
                try db.execute(sql: "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE")
            }
            // The join attaches the ledger, which the run's read-back may be writing at that moment.
            config.busyMode = .timeout(10)
            db = try DatabaseQueue(path: path, configuration: config)
            try db.write { db in
                for table in ["src", "dst"] {
                    try db.execute(
                        sql: """
                            CREATE TABLE \(table) (
                                path TEXT PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                mode INTEGER NOT NULL, inode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
                                link_target TEXT, rdev INTEGER NOT NULL, links INTEGER NOT NULL, allocated INTEGER,
                                xattrs BLOB, verdict TEXT NOT NULL, reason TEXT
                            ) WITHOUT ROWID
                            """)
                }
                try db.execute(
                    sql: "CREATE TABLE checks (seq INTEGER PRIMARY KEY, item INTEGER NOT NULL, sampled INTEGER NOT NULL)")
            }
        } catch {
            throw FerryError(.ledger, "cannot create verify's scratch database \(path)", underlying: error)
        }
    }

    func remove() {
        for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    func wrap<T>(_ what: String, _ body: () throws -> T) throws -> T { try databaseCall("verify scratch: \(what)", body) }

    /// Streams one side's listing into its table in batches.
    final class Writer {
        let scratch: WalkScratch
        let table: String
        var rows: [(Entry, String, String?)] = []
        var count: Int64 = 0

        init(scratch: WalkScratch, table: String) {
            self.scratch = scratch
            self.table = table
        }

        func add(_ e: Entry, verdict: String, reason: String?) throws {
            rows.append((e, verdict, reason))
            count += 1
            if rows.count >= 5000 { try flush() }
        }

        func flush() throws {
            guard !rows.isEmpty else { return }
            let batch = rows
            rows.removeAll(keepingCapacity: true)
            try scratch.wrap("write the \(table) listing") {
                try scratch.db.write { db in
                    let stmt = try db.cachedStatement(
                        sql: """
                            INSERT OR REPLACE INTO \(table) (path, kind, size, mtime_ns, mode, inode, uid, gid, link_target,
                                rdev, links, allocated, xattrs, verdict, reason)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                            """)
                    for (e, verdict, reason) in batch {
                        try stmt.execute(arguments: [
                            e.path, e.kind.rawValue, e.size, e.mtimeNs, Int64(e.mode), Int64(bitPattern: e.inode),
                            Int64(e.uid), Int64(e.gid), e.linkTarget, Int64(bitPattern: e.rdev), Int64(e.links),
                            e.allocated, Ledger.encodeXattrs(e.xattrs), verdict, reason,
                        ])
                    }
                }
            }
        }
    }

    func writer(table: String) -> Writer { Writer(scratch: self, table: table) }

    /// One path of the union of both listings and the manifest.
    struct Row {
        var path: String
        var source: Entry?
        var sourceVerdict: String?
        var sourceReason: String?
        var destination: Entry?
        var item: ItemRecord?
    }

    static func columns(_ alias: String) -> String {
        [
            "path", "kind", "size", "mtime_ns", "mode", "inode", "uid", "gid", "link_target", "rdev", "links", "allocated", "xattrs",
            "verdict", "reason",
        ].map { "\(alias).\($0) AS \(alias)_\($0)" }.joined(separator: ", ")
    }

    static let itemColumns = [
        "id", "path", "kind", "size", "mtime_ns", "mode", "inode", "uid", "gid", "link_target", "rdev", "xattrs",
        "state", "error", "attempts",
    ].map { "i.\($0) AS i_\($0)" }.joined(separator: ", ")

    static func entry(_ r: GRDB.Row, _ p: String) -> Entry? {
        guard let path: String = r["\(p)_path"] else { return nil }
        var e = Entry(
            path: path, kind: EntryKind(rawValue: r["\(p)_kind"]) ?? .file, size: r["\(p)_size"], mtimeNs: r["\(p)_mtime_ns"],
            mode: UInt32(truncatingIfNeeded: r["\(p)_mode"] as Int64), inode: UInt64(bitPattern: r["\(p)_inode"] as Int64),
            uid: UInt32(truncatingIfNeeded: r["\(p)_uid"] as Int64), gid: UInt32(truncatingIfNeeded: r["\(p)_gid"] as Int64),
            linkTarget: r["\(p)_link_target"])
        e.rdev = UInt64(bitPattern: (r["\(p)_rdev"] as Int64?) ?? 0)
        if let links = r["\(p)_links"] as Int64? { e.links = UInt32(truncatingIfNeeded: links) }
        e.allocated = r["\(p)_allocated"]
        e.xattrs = Ledger.decodeXattrs(r["\(p)_xattrs"])
        return e
    }

    static func item(_ r: GRDB.Row) -> ItemRecord? {
        guard let id: Int64 = r["i_id"], let e = entry(r, "i") else { return nil }
        return ItemRecord(
            id: id, entry: e, state: ItemState(rawValue: r["i_state"]) ?? .pending, attempts: r["i_attempts"], error: r["i_error"])
    }

    /// Calls `body` for every path in either listing or in the manifest (present states); what `body` returns is
    /// queued for a content check: (item id, whether the file is in this round's sample).
    ///
    /// The transaction is deferred: it writes only the scratch's `checks` and reads the ledger from one WAL
    /// snapshot, so writers of the ledger (the run's read-back) go on beside it. An immediate one would take the
    /// ledger's write lock too, for the whole join, and fail at once if a writer held it.
    func join(ledgerPath: String, _ body: (Row) throws -> (Int64, Bool)?) throws {
        try wrap("join the listings") {
            try db.writeWithoutTransaction { db in
                try db.execute(sql: "ATTACH DATABASE ? AS l", arguments: [ledgerPath])
                defer { try? db.execute(sql: "DETACH DATABASE l") }
                try db.inTransaction(.deferred) {
                    let insert = try db.makeStatement(sql: "INSERT INTO checks (item, sampled) VALUES (?, ?)")
                    let both = try GRDB.Row.fetchCursor(
                        db,
                        sql: """
                            SELECT coalesce(s.path, d.path) AS path, \(Self.columns("s")), \(Self.columns("d")), \(Self.itemColumns)
                            FROM src s FULL OUTER JOIN dst d ON d.path = s.path
                            LEFT JOIN l.items i ON i.path = coalesce(s.path, d.path)
                            """)
                    while let r = try both.next() {
                        let row = Row(
                            path: r["path"], source: Self.entry(r, "s"), sourceVerdict: r["s_verdict"], sourceReason: r["s_reason"],
                            destination: Self.entry(r, "d"), item: Self.item(r))
                        if let (item, sampled) = try body(row) { try insert.execute(arguments: [item, sampled]) }
                    }
                    let manifestOnly = try GRDB.Row.fetchCursor(
                        db,
                        sql: """
                            SELECT i.path AS path, \(Self.itemColumns) FROM l.items i
                            WHERE i.state IN ('pending', 'done', 'failed', 'vanished')
                            AND NOT EXISTS (SELECT 1 FROM src WHERE src.path = i.path)
                            AND NOT EXISTS (SELECT 1 FROM dst WHERE dst.path = i.path)
                            """)
                    while let r = try manifestOnly.next() {
                        let row = Row(path: r["path"], item: Self.item(r))
                        if let (item, sampled) = try body(row) { try insert.execute(arguments: [item, sampled]) }
                    }
                    return .commit
                }
            }
        }
    }

    struct Check {
        var seq: Int64
        var item: Int64
        var sampled: Bool
    }

    func checks(after: Int64, limit: Int) throws -> [Check] {
        try wrap("read checks") {
            try db.read { db in
                try GRDB.Row.fetchAll(
                    db, sql: "SELECT seq, item, sampled FROM checks WHERE seq > ? ORDER BY seq LIMIT ?", arguments: [after, limit]
                ).map { Check(seq: $0["seq"], item: $0["item"], sampled: $0["sampled"]) }
            }
        }
    }

    /// Hard links that the destination does not mirror: names of one source file that are separate files at the
    /// destination, and separate source files that share one file at the destination.
    /// Each difference with the source names involved (for a live tree, names made since the snapshot are drift).
    func hardLinkDifferences() throws -> [(path: String, why: String, names: [String])] {
        try wrap("compare hard links") {
            try db.read { db in
                var out: [(path: String, why: String, names: [String])] = []
                func names(_ json: String?) -> [String] {
                    (json.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String]) ?? []
                }
                for r in try GRDB.Row.fetchAll(
                    db,
                    sql: """
                        SELECT min(s.path) AS p, count(*) AS names, count(DISTINCT d.inode) AS n, json_group_array(s.path) AS all_names
                        FROM src s JOIN dst d ON d.path = s.path
                        WHERE s.kind = 'file' AND s.links > 1 AND s.verdict = 'copy' AND d.kind = 'file'
                        GROUP BY s.inode HAVING count(DISTINCT d.inode) > 1 LIMIT 1000
                        """)
                {
                    out.append(
                        (
                            r["p"],
                            "hard link split: \(r["names"] as Int64) names of one source file are \(r["n"] as Int64) files at the destination",
                            names(r["all_names"])
                        ))
                }
                for r in try GRDB.Row.fetchAll(
                    db,
                    sql: """
                        SELECT min(d.path) AS p, count(DISTINCT s.inode) AS n, json_group_array(s.path) AS all_names
                        FROM src s JOIN dst d ON d.path = s.path
                        WHERE d.kind = 'file' AND d.links > 1 AND s.kind = 'file' AND s.verdict = 'copy'
                        GROUP BY d.inode HAVING count(DISTINCT s.inode) > 1 LIMIT 1000
                        """)
                {
                    out.append(
                        (r["p"], "hard link joined: \(r["n"] as Int64) separate source files are one file at the destination", names(r["all_names"])))
                }
                return out
            }
        }
    }
}
