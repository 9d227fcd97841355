public import FerryCore
import Foundation
internal import GRDB

/// Phases a job walks (see docs/architecture.md). Stored as text in the ledger.
public enum Phase: String, Sendable, Codable, CaseIterable {
    case snapshot
    case copy
    case verify
    case ready
    case verifyFailed = "verify-failed"
    case switched
    /// `ferry complete`: the migration is finished; the tap feeds the new side only.
    case complete
}

/// Item states in the manifest.
public enum ItemState: String, Sendable, Codable {
    /// Not copied (yet, or again after a change or a repair).
    case pending
    /// Copied; its chunks are durable at the destination.
    case done
    /// Could not be copied (unreadable, kept changing); `error` says why.
    case failed
    /// Gone from the source after the snapshot; catch-up removes it from the destination.
    case vanished
    /// Removed from the destination by a catch-up (kept for the record).
    case deleted
}

public struct JobRecord: Sendable {
    public var name: String
    public var planIdentity: String
    public var phase: Phase
    public var createdAt: Double
    public var updatedAt: Double
    public var snapshotAt: Double?
    public var snapshotRoot: String?
    public var chunkSize: Int64
    public var cutoverAt: Double?
    public var cutoverForced: Bool
    public var lastError: String?
    public var runnerPID: Int?
    public var runnerHeartbeat: Double?
    public var liveBytesDone: Int64
    public var liveFilesDone: Int64
    /// The tap's sequence number when the snapshot was taken (nil without a tap).
    public var tapSeq: Int64?
    public var rolledBackAt: Double?
    /// Bytes that crossed a network for this job (both directions, every run), and the logical bytes they carried.
    public var wireBytes: Int64 = 0
    public var wireLogical: Int64 = 0
}

public struct ItemRecord: Sendable {
    public var id: Int64
    public var entry: Entry
    public var state: ItemState
    public var attempts: Int
    public var error: String?

    public init(id: Int64, entry: Entry, state: ItemState, attempts: Int, error: String?) {
        self.id = id
        self.entry = entry
        self.state = state
        self.attempts = attempts
        self.error = error
    }
}

public struct ChunkRecord: Sendable, Equatable {
    public var index: Int
    public var offset: Int64
    public var length: Int64
    public var sha256: String
    public init(index: Int, offset: Int64, length: Int64, sha256: String) {
        self.index = index
        self.offset = offset
        self.length = length
        self.sha256 = sha256
    }
}

/// The progress at one moment, kept in the ledger every few seconds while a phase runs.
public struct ProgressSample: Sendable, Codable {
    public var at: Double
    public var phase: String
    public var filesDone: Int64
    public var filesPlanned: Int64
    public var bytesDone: Int64
    public var bytesPlanned: Int64
    public var tapSpoolBytes: UInt64?
    /// The largest lag among the tap's fed upstreams.
    public var tapLagSeconds: Double?

    public init(
        at: Double, phase: String, filesDone: Int64, filesPlanned: Int64, bytesDone: Int64, bytesPlanned: Int64,
        tapSpoolBytes: UInt64? = nil, tapLagSeconds: Double? = nil
    ) {
        self.at = at
        self.phase = phase
        self.filesDone = filesDone
        self.filesPlanned = filesPlanned
        self.bytesDone = bytesDone
        self.bytesPlanned = bytesPlanned
        self.tapSpoolBytes = tapSpoolBytes
        self.tapLagSeconds = tapLagSeconds
    }
}

public struct VerifyRunRecord: Sendable, Codable {
    public var id: Int64
    public var startedAt: Double
    public var finishedAt: Double?
    public var mode: String
    public var sample: Double
    public var round: Int
    public var filesChecked: Int64
    public var bytesChecked: Int64
    public var mismatches: Int64
    public var drift: Int64
    public var ok: Bool
    public var reportPath: String?
}

public struct StateCounts: Sendable, Codable {
    public var files: [String: Int64] = [:]
    public var bytes: [String: Int64] = [:]
    public var totalFiles: Int64 = 0
    public var totalBytes: Int64 = 0
    /// Bytes of committed chunks of files still pending (partially copied large files).
    public var partialBytes: Int64 = 0
    public var doneBytes: Int64 { (bytes[ItemState.done.rawValue] ?? 0) + partialBytes }
}

/// Runs a database call; a GRDB or SQLite error becomes a ledger error naming what failed, with its cause.
func databaseCall<T>(_ what: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as FerryError {
        throw e
    } catch {
        throw FerryError(.ledger, "\(what) failed", underlying: error)
    }
}

/// All job state: the plan identity, the snapshot manifest, committed chunks, verify results and the event log.
/// SQLite in WAL mode through GRDB; safe to read from another process (`ferry status`) while a run writes.
///
/// Ordering rule: a chunk row is inserted only after its bytes are durable at the destination, so the ledger
/// never claims more than the destination holds. Commits use `synchronous=NORMAL`: a power loss may drop the
/// last commits, which only means those chunks are copied again.
public final class Ledger: Sendable {
    let db: DatabasePool
    public let path: String

    public static func file(in stateDirectory: String) -> String { stateDirectory + "/ledger.sqlite" }

    public static func exists(in stateDirectory: String) -> Bool {
        FileManager.default.fileExists(atPath: file(in: stateDirectory))
    }

    /// Opens (and with `create`, creates) the ledger in `stateDirectory`.
    public init(stateDirectory: String, create: Bool) throws {
        path = Self.file(in: stateDirectory)
        if !create && !FileManager.default.fileExists(atPath: path) {
            throw FerryError(.stateConflict, "no job state at \(stateDirectory) (has `ferry run` been started?)")
        }
        do {
            if create {
                try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
            }
            var config = Configuration()
            config.busyMode = .timeout(10)
            config.prepareDatabase { db in
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
            }
            db = try DatabasePool(path: path, configuration: config)
            try Self.migrator.migrate(db)
        } catch let e as FerryError {
            throw e
        } catch {
            throw FerryError(.ledger, "cannot open the ledger \(path)", underlying: error)
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE job (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        name TEXT NOT NULL,
                        plan_identity TEXT NOT NULL,
                        phase TEXT NOT NULL,
                        created_at REAL NOT NULL,
                        updated_at REAL NOT NULL,
                        snapshot_at REAL,
                        snapshot_root TEXT,
                        chunk_size INTEGER NOT NULL,
                        cutover_at REAL,
                        cutover_forced INTEGER NOT NULL DEFAULT 0,
                        last_error TEXT,
                        runner_pid INTEGER,
                        runner_heartbeat REAL,
                        live_bytes_done INTEGER NOT NULL DEFAULT 0,
                        live_files_done INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE TABLE items (
                        id INTEGER PRIMARY KEY,
                        path TEXT NOT NULL UNIQUE,
                        kind TEXT NOT NULL,
                        size INTEGER NOT NULL,
                        mtime_ns INTEGER NOT NULL,
                        mode INTEGER NOT NULL,
                        inode INTEGER NOT NULL,
                        uid INTEGER NOT NULL,
                        gid INTEGER NOT NULL,
                        link_target TEXT,
                        state TEXT NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        error TEXT,
                        scan INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE INDEX items_state ON items(state, kind, id);
                    CREATE TABLE chunks (
                        item_id INTEGER NOT NULL,
                        idx INTEGER NOT NULL,
                        offset INTEGER NOT NULL,
                        length INTEGER NOT NULL,
                        sha256 TEXT NOT NULL,
                        state TEXT NOT NULL DEFAULT 'committed',
                        attempts INTEGER NOT NULL DEFAULT 1,
                        PRIMARY KEY (item_id, idx)
                    ) WITHOUT ROWID;
                    CREATE TABLE verify_runs (
                        id INTEGER PRIMARY KEY,
                        started_at REAL NOT NULL,
                        finished_at REAL,
                        mode TEXT NOT NULL,
                        sample REAL NOT NULL,
                        round INTEGER NOT NULL,
                        files_checked INTEGER NOT NULL DEFAULT 0,
                        bytes_checked INTEGER NOT NULL DEFAULT 0,
                        mismatches INTEGER NOT NULL DEFAULT 0,
                        drift INTEGER NOT NULL DEFAULT 0,
                        ok INTEGER NOT NULL DEFAULT 0,
                        report_path TEXT
                    );
                    CREATE TABLE verify_failures (
                        run_id INTEGER NOT NULL,
                        item_id INTEGER,
                        path TEXT NOT NULL,
                        reason TEXT NOT NULL
                    );
                    CREATE INDEX verify_failures_run ON verify_failures(run_id);
                    CREATE TABLE skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
                    CREATE TABLE events (
                        id INTEGER PRIMARY KEY,
                        at REAL NOT NULL,
                        kind TEXT NOT NULL,
                        message TEXT NOT NULL
                    );
                    """)
        }
        m.registerMigration("v2-tap") { db in
            try db.execute(
                sql: """
                    ALTER TABLE job ADD COLUMN tap_seq INTEGER;
                    ALTER TABLE job ADD COLUMN rolled_back_at REAL;
                    ALTER TABLE job ADD COLUMN completed_at REAL;
                    """)
        }
        m.registerMigration("v3-parity") { db in
            try db.execute(
                sql: """
                    ALTER TABLE skipped ADD COLUMN category TEXT NOT NULL DEFAULT 'refused';
                    ALTER TABLE job ADD COLUMN partial_tag TEXT;
                    ALTER TABLE items ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE items ADD COLUMN xattrs BLOB;
                    """)
        }
        m.registerMigration("v4-samples") { db in
            try db.execute(
                sql: """
                    CREATE TABLE samples (
                        at REAL NOT NULL,
                        phase TEXT NOT NULL,
                        files_done INTEGER NOT NULL,
                        files_planned INTEGER NOT NULL,
                        bytes_done INTEGER NOT NULL,
                        bytes_planned INTEGER NOT NULL,
                        tap_spool_bytes INTEGER,
                        tap_lag_seconds REAL
                    );
                    """)
        }
        registerLeaseMigration(&m)
        m.registerMigration("v5-link-targets") { db in
            // The second names of a file, found by the file's path (`requeueHardLinks`).
            try db.execute(sql: "CREATE INDEX items_hardlink_target ON items(link_target) WHERE kind = 'hardlink'")
        }
        m.registerMigration("v6-read-back") { db in
            // Files the copy read back at the destination (`ContentReadBack`): the file's change stamp then, and the
            // digest of the chunk checksums its bytes matched.
            try db.execute(sql: "CREATE TABLE read_back (item_id INTEGER PRIMARY KEY, stamp TEXT NOT NULL, chunk_list TEXT NOT NULL)")
        }
        return m
    }

    /// The job's random tag in partial-file names (`.ferry-TAG.ID.part`): a leftover of this job is recognised by
    /// it, and no user's file name collides with it. Created on first use.
    public func partialTag() throws -> String {
        try wrap("partial tag") {
            try db.write { db in
                if let tag = try String.fetchOne(db, sql: "SELECT partial_tag FROM job WHERE id = 1") { return tag }
                let tag = String(UInt64.random(in: 0...UInt64.max), radix: 16)
                try db.execute(sql: "UPDATE job SET partial_tag = ? WHERE id = 1", arguments: [tag])
                return tag
            }
        }
    }

    static func encodeXattrs(_ x: [ExtendedAttribute]) -> Data? {
        x.isEmpty ? nil : try? JSONEncoder().encode(x)
    }

    static func decodeXattrs(_ d: Data?) -> [ExtendedAttribute] {
        guard let d else { return [] }
        return (try? JSONDecoder().decode([ExtendedAttribute].self, from: d)) ?? []
    }

    func wrap<T>(_ what: String, _ body: () throws -> T) throws -> T { try databaseCall("ledger: \(what)", body) }

    static var now: Double { Date().timeIntervalSince1970 }

    // MARK: - job

    public func job() throws -> JobRecord? {
        try wrap("read job") {
            try db.read { db in
                guard let r = try Row.fetchOne(db, sql: "SELECT * FROM job WHERE id = 1") else { return nil }
                return JobRecord(
                    name: r["name"], planIdentity: r["plan_identity"], phase: Phase(rawValue: r["phase"]) ?? .snapshot,
                    createdAt: r["created_at"], updatedAt: r["updated_at"], snapshotAt: r["snapshot_at"],
                    snapshotRoot: r["snapshot_root"], chunkSize: r["chunk_size"], cutoverAt: r["cutover_at"],
                    cutoverForced: (r["cutover_forced"] as Int) != 0, lastError: r["last_error"],
                    runnerPID: r["runner_pid"], runnerHeartbeat: r["runner_heartbeat"],
                    liveBytesDone: r["live_bytes_done"], liveFilesDone: r["live_files_done"], tapSeq: r["tap_seq"],
                    rolledBackAt: r["rolled_back_at"], wireBytes: r["wire_bytes"], wireLogical: r["wire_logical"])
            }
        }
    }

    public func createJob(name: String, planIdentity: String, chunkSize: Int64) throws {
        try wrap("create job") {
            try db.write { db in
                let now = Self.now
                try db.execute(
                    sql: """
                        INSERT INTO job (id, name, plan_identity, phase, created_at, updated_at, chunk_size)
                        VALUES (1, ?, ?, ?, ?, ?, ?)
                        """, arguments: [name, planIdentity, Phase.snapshot.rawValue, now, now, chunkSize])
                try Self.event(db, "job", "job created")
            }
        }
    }

    public func setPhase(_ phase: Phase, note: String? = nil) throws {
        try wrap("set phase") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE job SET phase = ?, updated_at = ? WHERE id = 1", arguments: [phase.rawValue, Self.now])
                try Self.event(db, "phase", note.map { "\(phase.rawValue): \($0)" } ?? phase.rawValue)
            }
        }
        ProgressMetrics.record(phase: phase)
    }

    public func setLastError(_ message: String?) throws {
        try wrap("record error") {
            try db.write { db in
                try db.execute(sql: "UPDATE job SET last_error = ?, updated_at = ? WHERE id = 1", arguments: [message, Self.now])
                if let message { try Self.event(db, "error", message) }
            }
        }
    }

    public func heartbeat(pid: Int?, bytesDone: Int64, filesDone: Int64) throws {
        try wrap("heartbeat") {
            try db.write { db in
                try db.execute(
                    sql: """
                        UPDATE job SET runner_pid = ?, runner_heartbeat = ?, live_bytes_done = ?, live_files_done = ?
                        WHERE id = 1
                        """, arguments: [pid, pid == nil ? nil : Self.now, bytesDone, filesDone])
            }
        }
    }

    /// Adds what the stores moved across a network since the last call.
    public func addWire(bytes: Int64, logical: Int64) throws {
        guard bytes != 0 || logical != 0 else { return }
        try wrap("record wire bytes") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE job SET wire_bytes = wire_bytes + ?, wire_logical = wire_logical + ? WHERE id = 1", arguments: [bytes, logical])
            }
        }
    }

    public func recordEvent(_ kind: String, _ message: String) throws {
        try wrap("record event") { try db.write { db in try Self.event(db, kind, message) } }
    }

    static func event(_ db: Database, _ kind: String, _ message: String) throws {
        try db.execute(sql: "INSERT INTO events (at, kind, message) VALUES (?, ?, ?)", arguments: [now, kind, message])
    }

    public func events(kind: String? = nil, limit: Int = 50) throws -> [(at: Double, kind: String, message: String)] {
        try wrap("read events") {
            try db.read { db in
                let rows =
                    kind == nil
                    ? try Row.fetchAll(db, sql: "SELECT * FROM events ORDER BY id DESC LIMIT ?", arguments: [limit])
                    : try Row.fetchAll(
                        db, sql: "SELECT * FROM events WHERE kind = ? ORDER BY id DESC LIMIT ?", arguments: [kind, limit])
                return rows.reversed().map { (at: $0["at"], kind: $0["kind"], message: $0["message"]) }
            }
        }
    }

    public func recordCutover(forced: Bool) throws {
        try wrap("record cutover") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE job SET phase = ?, cutover_at = ?, cutover_forced = ?, updated_at = ? WHERE id = 1",
                    arguments: [Phase.switched.rawValue, Self.now, forced ? 1 : 0, Self.now])
                try Self.event(db, "cutover", forced ? "cutover done (forced past unmet gates)" : "cutover done")
            }
        }
        ProgressMetrics.record(phase: .switched)
    }

    /// Records that the tap was armed at `seq` before the snapshot.
    public func recordTapArmed(seq: UInt64) throws {
        try wrap("record tap") {
            try db.write { db in
                try db.execute(sql: "UPDATE job SET tap_seq = ?, updated_at = ? WHERE id = 1", arguments: [Int64(seq), Self.now])
                try Self.event(db, "tap", "tap armed at sequence \(seq), before the snapshot")
            }
        }
    }

    /// Undoes the cutover: the job is ready again, the old side primary.
    public func recordRollback() throws {
        try wrap("record rollback") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE job SET phase = ?, cutover_at = NULL, rolled_back_at = ?, updated_at = ? WHERE id = 1",
                    arguments: [Phase.ready.rawValue, Self.now, Self.now])
                try Self.event(db, "rollback", "rolled back to the old side")
            }
        }
        ProgressMetrics.record(phase: .ready)
    }

    public func recordComplete() throws {
        try wrap("record complete") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE job SET phase = ?, completed_at = ?, updated_at = ? WHERE id = 1",
                    arguments: [Phase.complete.rawValue, Self.now, Self.now])
                try Self.event(db, "complete", "job complete")
            }
        }
        ProgressMetrics.record(phase: .complete)
    }

    // MARK: - manifest

    /// Streams manifest rows into the ledger in transactions of `batch` rows; marks the snapshot time.
    public final class ManifestWriter {
        let ledger: Ledger
        var pending: [(Entry, ItemState)] = []
        let batch: Int
        let scan: Int64
        init(ledger: Ledger, batch: Int, scan: Int64) {
            self.ledger = ledger
            self.batch = batch
            self.scan = scan
        }
        public func add(_ e: Entry) throws { try add(e, state: .pending) }

        /// Adds an entry in a given state (the reverse of a live tree's cutover records what the fence proved
        /// equal as done).
        public func add(_ e: Entry, state: ItemState) throws {
            pending.append((e, state))
            if pending.count >= batch { try flush() }
        }
        public func flush() throws {
            guard !pending.isEmpty else { return }
            let rows = pending
            pending.removeAll(keepingCapacity: true)
            try ledger.wrap("write manifest") {
                try ledger.db.write { db in
                    let stmt = try db.cachedStatement(
                        sql: """
                            INSERT INTO items (path, kind, size, mtime_ns, mode, inode, uid, gid, link_target, state, scan,
                                rdev, xattrs)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                            """)
                    for (e, state) in rows {
                        try stmt.execute(arguments: [
                            e.path, e.kind.rawValue, e.size, e.mtimeNs, Int64(e.mode), Int64(bitPattern: e.inode),
                            Int64(e.uid), Int64(e.gid), e.linkTarget, state.rawValue, scan, Int64(bitPattern: e.rdev),
                            Ledger.encodeXattrs(e.xattrs),
                        ])
                    }
                }
            }
        }
    }

    public func manifestWriter(batch: Int = 5000) -> ManifestWriter {
        ManifestWriter(ledger: self, batch: batch, scan: 0)
    }

    public func finishSnapshot(root: String, at time: Double) throws {
        try wrap("finish snapshot") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE job SET snapshot_at = ?, snapshot_root = ?, phase = ?, updated_at = ? WHERE id = 1",
                    arguments: [time, root, Phase.copy.rawValue, Self.now])
                let n = try Int.fetchOne(db, sql: "SELECT count(*) FROM items") ?? 0
                try Self.event(db, "snapshot", "manifest of \(n) entries taken from \(root)")
            }
        }
        ProgressMetrics.record(phase: .copy)
    }

    public func clearManifest() throws {
        try wrap("clear manifest") {
            try db.write { db in
                try db.execute(sql: "DELETE FROM items; DELETE FROM chunks; DELETE FROM skipped;")
            }
        }
    }

    public func recordSkipped(_ s: SkippedEntry) throws {
        try wrap("record skipped") {
            try db.write { db in
                try db.execute(
                    sql: "INSERT OR REPLACE INTO skipped (path, reason, category) VALUES (?, ?, ?)",
                    arguments: [s.path, s.reason, s.category.rawValue])
            }
        }
    }

    /// Forgets every refusal and policy skip (a catch-up records them again from its own walk, so an entry the
    /// operator removed or fixed at the source is no longer held against the job).
    public func clearSkipped() throws {
        try wrap("clear skipped") { try db.write { db in try db.execute(sql: "DELETE FROM skipped") } }
    }

    public func skipped(category: SkippedEntry.Category? = nil, limit: Int = Int.max) throws -> [SkippedEntry] {
        try wrap("read skipped") {
            try db.read { db in
                var sql = "SELECT * FROM skipped"
                var args: [any DatabaseValueConvertible] = []
                if let category {
                    sql += " WHERE category = ?"
                    args.append(category.rawValue)
                }
                sql += " ORDER BY path LIMIT ?"
                args.append(limit)
                return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map {
                    SkippedEntry(
                        path: $0["path"], reason: $0["reason"],
                        category: SkippedEntry.Category(rawValue: $0["category"]) ?? .refused)
                }
            }
        }
    }

    public func countSkipped() throws -> (refused: Int64, policy: Int64) {
        try wrap("count skipped") {
            try db.read { db in
                let r = try Int64.fetchOne(db, sql: "SELECT count(*) FROM skipped WHERE category = 'refused'") ?? 0
                let p = try Int64.fetchOne(db, sql: "SELECT count(*) FROM skipped WHERE category = 'policy'") ?? 0
                return (r, p)
            }
        }
    }

    static func item(_ r: Row) -> ItemRecord {
        let e = Entry(
            path: r["path"], kind: EntryKind(rawValue: r["kind"]) ?? .file, size: r["size"], mtimeNs: r["mtime_ns"],
            mode: UInt32(truncatingIfNeeded: r["mode"] as Int64), inode: UInt64(bitPattern: r["inode"] as Int64),
            uid: UInt32(truncatingIfNeeded: r["uid"] as Int64), gid: UInt32(truncatingIfNeeded: r["gid"] as Int64),
            linkTarget: r["link_target"])
        var entry = e
        entry.rdev = UInt64(bitPattern: (r["rdev"] as Int64?) ?? 0)
        entry.xattrs = decodeXattrs(r["xattrs"])
        let e2 = entry
        return ItemRecord(
            id: r["id"], entry: e2, state: ItemState(rawValue: r["state"]) ?? .pending, attempts: r["attempts"],
            error: r["error"])
    }

    /// A page of items in id order after `afterID`, optionally filtered by state and kind. Paging keeps memory
    /// independent of the manifest's size.
    public func items(
        states: [ItemState]? = nil, kind: EntryKind? = nil, after afterID: Int64, limit: Int
    ) throws -> [ItemRecord] {
        try wrap("read items") {
            try db.read { db in
                var sql = "SELECT * FROM items WHERE id > ?"
                var args: [any DatabaseValueConvertible] = [afterID]
                if let states {
                    // The (state, kind, id) index serves one state of one kind in id order; for anything else
                    // SQLite would sort every matching row per page, so walk the rowid instead (`+state`).
                    let column = states.count == 1 && kind != nil ? "state" : "+state"
                    sql += " AND \(column) IN (\(states.map { _ in "?" }.joined(separator: ",")))"
                    args += states.map(\.rawValue)
                }
                if let kind {
                    sql += " AND kind = ?"
                    args.append(kind.rawValue)
                }
                sql += " ORDER BY id LIMIT ?"
                args.append(limit)
                return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Self.item)
            }
        }
    }

    /// Calls `body` for every item matching the filter, a page at a time.
    public func forEachItem(
        states: [ItemState]? = nil, kind: EntryKind? = nil, page: Int = 2000, _ body: (ItemRecord) throws -> Void
    ) throws {
        var after: Int64 = 0
        while true {
            let rows = try items(states: states, kind: kind, after: after, limit: page)
            for r in rows { try body(r) }
            guard let last = rows.last else { return }
            after = last.id
        }
    }

    /// Directories in reverse path order (children before parents), a page at a time.
    public func forEachDirectoryDeepestFirst(_ body: (ItemRecord) throws -> Void) throws {
        var before: String? = nil
        while true {
            let rows: [ItemRecord] = try wrap("read directories") {
                try db.read { db in
                    if let before {
                        return try Row.fetchAll(
                            db,
                            sql: """
                                SELECT * FROM items WHERE kind = 'directory' AND state IN ('pending', 'done')
                                AND path < ? ORDER BY path DESC LIMIT 2000
                                """, arguments: [before]
                        ).map(Self.item)
                    }
                    return try Row.fetchAll(
                        db,
                        sql: """
                            SELECT * FROM items WHERE kind = 'directory' AND state IN ('pending', 'done')
                            ORDER BY path DESC LIMIT 2000
                            """
                    ).map(Self.item)
                }
            }
            for r in rows { try body(r) }
            guard let last = rows.last else { return }
            before = last.entry.path
        }
    }

    public func item(path: String) throws -> ItemRecord? {
        try wrap("read item") {
            try db.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM items WHERE path = ?", arguments: [path]).map(Self.item)
            }
        }
    }

    /// The item at `path` and every item beneath it (any state), deepest first.
    public func items(under path: String) throws -> [ItemRecord] {
        try wrap("read items under a path") {
            try db.read { db in
                if path.isEmpty { return try Row.fetchAll(db, sql: "SELECT * FROM items ORDER BY path DESC").map(Self.item) }
                // substr, not LIKE: names may hold % and _.
                return try Row.fetchAll(
                    db, sql: "SELECT * FROM items WHERE path = ? OR substr(path, 1, ?) = ? ORDER BY path DESC",
                    arguments: [path, (path + "/").unicodeScalars.count, path + "/"]  // SQLite counts code points
                ).map(Self.item)
            }
        }
    }

    /// Every present item with this source inode other than at `path` (the other names of a hard-link group).
    public func names(inode: UInt64, notAt path: String) throws -> [ItemRecord] {
        try wrap("read items by inode") {
            try db.read { db in
                try Row.fetchAll(
                    db,
                    sql: "SELECT * FROM items WHERE inode = ? AND kind IN ('file', 'hardlink') AND path != ? AND state IN ('pending', 'done')",
                    arguments: [Int64(bitPattern: inode), path]
                ).map(Self.item)
            }
        }
    }

    public func item(id: Int64) throws -> ItemRecord? {
        try wrap("read item") {
            try db.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM items WHERE id = ?", arguments: [id]).map(Self.item)
            }
        }
    }

    public func setState(_ ids: [Int64], _ state: ItemState, error: String? = nil) throws {
        guard !ids.isEmpty else { return }
        try wrap("set item state") {
            try db.write { db in
                let stmt = try db.cachedStatement(sql: "UPDATE items SET state = ?, error = ? WHERE id = ?")
                for id in ids { try stmt.execute(arguments: [state.rawValue, error, id]) }
            }
        }
    }

    /// Marks an item failed, counting the attempt.
    public func fail(_ id: Int64, error: String) throws {
        try wrap("mark failed") {
            try db.write { db in
                try db.execute(
                    sql: "UPDATE items SET state = 'failed', error = ?, attempts = attempts + 1 WHERE id = ?",
                    arguments: [error, id])
            }
        }
    }

    /// Forgets an item's chunks and queues it again, with new metadata when the source changed.
    public func requeue(_ id: Int64, entry: Entry? = nil, countAttempt: Bool = false) throws {
        try wrap("requeue item") {
            try db.write { db in
                try db.execute(sql: "DELETE FROM chunks WHERE item_id = ?", arguments: [id])
                try db.execute(
                    sql: "UPDATE items SET state = 'pending', error = NULL, attempts = attempts + ? WHERE id = ?",
                    arguments: [countAttempt ? 1 : 0, id])
                if let e = entry { try Self.updateEntry(db, id, e) }
            }
        }
    }

    /// Hard links recorded as placed whose first name is one of `paths`, queued again: that file was just written
    /// anew at the destination (a new inode), so the names linked to the file it replaced no longer name it.
    public func requeueHardLinks(to paths: [String]) throws {
        guard !paths.isEmpty else { return }
        try wrap("requeue hard links") {
            try db.write { db in
                for p in paths {
                    try db.execute(
                        sql: "UPDATE items SET state = 'pending', error = NULL WHERE kind = 'hardlink' AND link_target = ? AND state = 'done'",
                        arguments: [p])
                }
            }
        }
    }

    /// Records new metadata for an item whose source changed before its copy started.
    public func updateEntry(_ id: Int64, _ e: Entry) throws {
        try wrap("update item") { try db.write { db in try Self.updateEntry(db, id, e) } }
    }

    static func updateEntry(_ db: Database, _ id: Int64, _ e: Entry) throws {
        try db.execute(
            sql: """
                UPDATE items SET kind = ?, size = ?, mtime_ns = ?, mode = ?, inode = ?, uid = ?, gid = ?, link_target = ?,
                    rdev = ?, xattrs = ?
                WHERE id = ?
                """,
            arguments: [
                e.kind.rawValue, e.size, e.mtimeNs, Int64(e.mode), Int64(bitPattern: e.inode), Int64(e.uid),
                Int64(e.gid), e.linkTarget, Int64(bitPattern: e.rdev), encodeXattrs(e.xattrs), id,
            ])
    }

    // MARK: - chunks

    public func chunks(of itemID: Int64) throws -> [ChunkRecord] {
        try wrap("read chunks") {
            try db.read { db in
                try Row.fetchAll(
                    db, sql: "SELECT idx, offset, length, sha256 FROM chunks WHERE item_id = ? ORDER BY idx",
                    arguments: [itemID]
                ).map { ChunkRecord(index: $0["idx"], offset: $0["offset"], length: $0["length"], sha256: $0["sha256"]) }
            }
        }
    }

    /// The items with these ids and each one's chunk checksums in index order, in one read (a verify page).
    public func itemsWithChunks(ids: [Int64]) throws -> [Int64: (ItemRecord, [ChunkRecord])] {
        guard !ids.isEmpty else { return [:] }
        let list = ids.map(String.init).joined(separator: ",")
        return try wrap("read items and chunks") {
            try db.read { db in
                var out: [Int64: (ItemRecord, [ChunkRecord])] = [:]
                let items = try Row.fetchCursor(db, sql: "SELECT * FROM items WHERE id IN (\(list))")
                while let r = try items.next() {
                    let item = Self.item(r)
                    out[item.id] = (item, [])
                }
                let rows = try Row.fetchCursor(
                    db, sql: "SELECT item_id, idx, offset, length, sha256 FROM chunks WHERE item_id IN (\(list)) ORDER BY item_id, idx")
                while let r = try rows.next() {
                    let id: Int64 = r[0]
                    out[id]?.1.append(ChunkRecord(index: r[1], offset: r[2], length: r[3], sha256: r[4]))
                }
                return out
            }
        }
    }

    // MARK: - read back during the copy

    /// Keeps what the copy's read-back proved: for each item, the destination file's change stamp and the digest
    /// of the chunk checksums its bytes matched.
    public func addReadBack(_ proofs: [(item: Int64, stamp: String, chunkList: String)]) throws {
        guard !proofs.isEmpty else { return }
        try wrap("record read-back") {
            try db.write { db in
                let stmt = try db.cachedStatement(sql: "INSERT OR REPLACE INTO read_back (item_id, stamp, chunk_list) VALUES (?, ?, ?)")
                for p in proofs { try stmt.execute(arguments: [p.item, p.stamp, p.chunkList]) }
            }
        }
    }

    /// The read-back records of `ids` that exist: stamp and chunk-list digest by item.
    public func readBack(ids: [Int64]) throws -> [Int64: (stamp: String, chunkList: String)] {
        guard !ids.isEmpty else { return [:] }
        let list = ids.map(String.init).joined(separator: ",")
        return try wrap("read read-back") {
            try db.read { db in
                var out: [Int64: (stamp: String, chunkList: String)] = [:]
                let rows = try Row.fetchCursor(db, sql: "SELECT item_id, stamp, chunk_list FROM read_back WHERE item_id IN (\(list))")
                while let r = try rows.next() { out[r[0]] = (r[1], r[2]) }
                return out
            }
        }
    }

    /// Forgets every read-back record (once the verify that used them is done).
    public func clearReadBack() throws {
        try wrap("clear read-back") { try db.write { db in try db.execute(sql: "DELETE FROM read_back") } }
    }

    // MARK: - counts

    public func counts() throws -> StateCounts {
        try wrap("count items") {
            try db.read { db in
                var c = StateCounts()
                for r in try Row.fetchAll(
                    db, sql: "SELECT state, count(*) AS n, sum(size) AS b FROM items WHERE kind = 'file' GROUP BY state")
                {
                    let s: String = r["state"]
                    c.files[s] = r["n"]
                    c.bytes[s] = r["b"] ?? 0
                    if s != ItemState.deleted.rawValue && s != ItemState.vanished.rawValue {
                        c.totalFiles += r["n"] as Int64
                        c.totalBytes += (r["b"] as Int64?) ?? 0
                    }
                }
                c.partialBytes =
                    try Int64.fetchOne(
                        db,
                        sql: """
                            SELECT coalesce(sum(c.length), 0) FROM chunks c JOIN items i ON i.id = c.item_id
                            WHERE i.state = 'pending'
                            """) ?? 0
                return c
            }
        }
    }

    public func countOther() throws -> (directories: Int64, symlinks: Int64) {
        try wrap("count entries") {
            try db.read { db in
                let d = try Int64.fetchOne(db, sql: "SELECT count(*) FROM items WHERE kind = 'directory'") ?? 0
                let s = try Int64.fetchOne(db, sql: "SELECT count(*) FROM items WHERE kind = 'symlink'") ?? 0
                return (d, s)
            }
        }
    }

    /// Items not yet in their final state: what blocks cutover besides verify.
    public func unsettledCount() throws -> Int64 {
        try wrap("count unsettled") {
            try db.read { db in
                try Int64.fetchOne(db, sql: "SELECT count(*) FROM items WHERE state IN ('pending', 'failed', 'vanished')")
                    ?? 0
            }
        }
    }

    // MARK: - catch-up scans

    /// Starts a re-scan: returns its number; `markSeen` stamps rows found by the scan.
    public func beginScan() throws -> Int64 {
        try wrap("begin scan") {
            try db.write { db in (try Int64.fetchOne(db, sql: "SELECT coalesce(max(scan), 0) + 1 FROM items")) ?? 1 }
        }
    }

    public func markSeen(_ ids: [Int64], scan: Int64) throws {
        guard !ids.isEmpty else { return }
        try wrap("mark seen") {
            try db.write { db in
                let stmt = try db.cachedStatement(sql: "UPDATE items SET scan = ? WHERE id = ?")
                for id in ids { try stmt.execute(arguments: [scan, id]) }
            }
        }
    }

    public func manifestWriter(scan: Int64) -> ManifestWriter { ManifestWriter(ledger: self, batch: 5000, scan: scan) }

    /// Items the scan did not see (gone from the source); returns how many were marked vanished.
    public func markUnseenVanished(scan: Int64) throws -> Int {
        try wrap("mark vanished") {
            try db.write { db in
                try db.execute(
                    sql: """
                        UPDATE items SET state = 'vanished', error = 'removed from the source'
                        WHERE scan < ? AND state IN ('pending', 'done', 'failed')
                        """, arguments: [scan])
                return db.changesCount
            }
        }
    }

    // MARK: - verify

    public func beginVerify(mode: String, sample: Double) throws -> (id: Int64, round: Int) {
        try wrap("begin verify") {
            try db.write { db in
                let round = try Int.fetchOne(db, sql: "SELECT count(*) FROM verify_runs") ?? 0
                try db.execute(
                    sql: "INSERT INTO verify_runs (started_at, mode, sample, round) VALUES (?, ?, ?, ?)",
                    arguments: [Self.now, mode, sample, round])
                return (db.lastInsertedRowID, round)
            }
        }
    }

    public func finishVerify(
        id: Int64, filesChecked: Int64, bytesChecked: Int64, failures: [(itemID: Int64?, path: String, reason: String)],
        mismatches: Int64, drift: Int64, ok: Bool, reportPath: String?
    ) throws {
        try wrap("finish verify") {
            try db.write { db in
                try db.execute(
                    sql: """
                        UPDATE verify_runs SET finished_at = ?, files_checked = ?, bytes_checked = ?, mismatches = ?,
                        drift = ?, ok = ?, report_path = ? WHERE id = ?
                        """,
                    arguments: [Self.now, filesChecked, bytesChecked, mismatches, drift, ok ? 1 : 0, reportPath, id])
                let stmt = try db.cachedStatement(
                    sql: "INSERT INTO verify_failures (run_id, item_id, path, reason) VALUES (?, ?, ?, ?)")
                for f in failures { try stmt.execute(arguments: [id, f.itemID, f.path, f.reason]) }
                try Self.event(
                    db, "verify",
                    ok ? "verify clean: \(filesChecked) files checked" : "verify found \(mismatches) mismatches")
            }
        }
    }

    public func lastVerify() throws -> VerifyRunRecord? {
        try wrap("read verify") {
            try db.read { db in
                guard
                    let r = try Row.fetchOne(
                        db, sql: "SELECT * FROM verify_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1")
                else { return nil }
                return Self.verifyRun(r)
            }
        }
    }

    static func verifyRun(_ r: Row) -> VerifyRunRecord {
        VerifyRunRecord(
            id: r["id"], startedAt: r["started_at"], finishedAt: r["finished_at"], mode: r["mode"], sample: r["sample"], round: r["round"],
            filesChecked: r["files_checked"], bytesChecked: r["bytes_checked"], mismatches: r["mismatches"], drift: r["drift"],
            ok: (r["ok"] as Int) != 0, reportPath: r["report_path"])
    }

    /// Every finished verify round, oldest first.
    public func verifyRuns() throws -> [VerifyRunRecord] {
        try wrap("read verify") {
            try db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM verify_runs WHERE finished_at IS NOT NULL ORDER BY id").map(Self.verifyRun)
            }
        }
    }

    // MARK: - samples

    /// Records one progress sample (the HTML report draws throughput, spool and lag from them).
    public func addSample(_ s: ProgressSample) throws {
        try wrap("record sample") {
            try db.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO samples (at, phase, files_done, files_planned, bytes_done, bytes_planned, tap_spool_bytes,
                        tap_lag_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        s.at, s.phase, s.filesDone, s.filesPlanned, s.bytesDone, s.bytesPlanned, s.tapSpoolBytes.map(Int64.init(clamping:)),
                        s.tapLagSeconds,
                    ])
            }
        }
    }

    public func samples() throws -> [ProgressSample] {
        try wrap("read samples") {
            try db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM samples ORDER BY rowid").map { r in
                    ProgressSample(
                        at: r["at"], phase: r["phase"], filesDone: r["files_done"], filesPlanned: r["files_planned"],
                        bytesDone: r["bytes_done"], bytesPlanned: r["bytes_planned"],
                        tapSpoolBytes: (r["tap_spool_bytes"] as Int64?).map { UInt64(max(0, $0)) }, tapLagSeconds: r["tap_lag_seconds"])
                }
            }
        }
    }

    /// Item ids that the last finished verify found bad (what `--repair` re-copies).
    public func lastVerifyFailedItems() throws -> [Int64] {
        try wrap("read verify failures") {
            try db.read { db in
                guard
                    let run = try Int64.fetchOne(
                        db, sql: "SELECT id FROM verify_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1")
                else { return [] }
                return try Int64.fetchAll(
                    db, sql: "SELECT DISTINCT item_id FROM verify_failures WHERE run_id = ? AND item_id IS NOT NULL",
                    arguments: [run])
            }
        }
    }
}

extension Ledger {
    /// Manifest entries that should exist in the source (not vanished or deleted).
    public func countPresent() throws -> Int64 {
        try wrap("count present") {
            try db.read { db in
                try Int64.fetchOne(db, sql: "SELECT count(*) FROM items WHERE state IN ('pending', 'done', 'failed')") ?? 0
            }
        }
    }

    /// Entries gone from the source whose removal at the destination is still to be done by a catch-up.
    public func countVanished() throws -> Int64 {
        try wrap("count vanished") {
            try db.read { db in try Int64.fetchOne(db, sql: "SELECT count(*) FROM items WHERE state = 'vanished'") ?? 0 }
        }
    }
}
