import FerryCore
import FerryTesting
import Foundation
import Testing

@testable import FerryEngine

@Suite struct ChunkingTests {
    @Test func layoutCoversTheFileExactly() {
        #expect(ChunkLayout.chunks(size: 0, chunkSize: 4).isEmpty)
        let c = ChunkLayout.chunks(size: 10, chunkSize: 4)
        #expect(c.map(\.offset) == [0, 4, 8])
        #expect(c.map(\.length) == [4, 4, 2])
        #expect(ChunkLayout.chunks(size: 8, chunkSize: 4).map(\.length) == [4, 4])
    }

    @Test func rotatingSampleIsDeterministicAndCoversEverything() {
        let paths = (0..<2000).map { "dir/file-\($0)" }
        let rate = 0.1
        var covered = Set<String>()
        for round in 0..<10 {
            let picked = paths.filter { Sampling.isSelected($0, round: round, rate: rate) }
            #expect(picked == paths.filter { Sampling.isSelected($0, round: round, rate: rate) })
            #expect(picked.count > 120 && picked.count < 280, "about 10% in round \(round): \(picked.count)")
            covered.formUnion(picked)
        }
        #expect(covered.count == paths.count)
        #expect(paths.allSatisfy { Sampling.isSelected($0, round: 3, rate: 1) })
    }
}

@Suite struct LedgerTests {
    func entry(_ path: String, size: Int64 = 10, kind: EntryKind = .file) -> Entry {
        Entry(path: path, kind: kind, size: size, mtimeNs: 1, mode: 0o644, inode: 1)
    }

    @Test func stateTransitions() throws {
        let dir = TempDir()
        let ledger = try Ledger(stateDirectory: dir.path, create: true)
        #expect(try ledger.job() == nil)
        try ledger.createJob(name: "t", planIdentity: "id", chunkSize: 4)
        #expect(try ledger.job()?.phase == .snapshot)
        let w = ledger.manifestWriter(batch: 2)
        for p in ["a", "b", "c"] { try w.add(entry(p)) }
        try w.add(entry("d", kind: .directory))
        try w.flush()
        try ledger.finishSnapshot(root: "/src", at: 100)
        #expect(try ledger.job()?.phase == .copy)
        var c = try ledger.counts()
        #expect(c.totalFiles == 3)
        #expect(c.files["pending"] == 3)

        let a = try #require(try ledger.item(path: "a"))
        // Committed through a lease, as every copy commits: a chunk of a file still being written first.
        #expect(try ledger.lease(limit: 10, worker: "w", ttl: 30, now: 100).map(\.id).contains(a.id))
        let chunk0 = ChunkRecord(index: 0, offset: 0, length: 4, sha256: "x")
        #expect(try ledger.commit([], partialChunks: [(a.id, chunk0)], worker: "other") == [a.id], "not its lease: not recorded")
        #expect(try ledger.counts().partialBytes == 0)
        #expect(try ledger.commit([], partialChunks: [(a.id, chunk0)], worker: "w").isEmpty)
        c = try ledger.counts()
        #expect(c.partialBytes == 4, "committed chunks of a pending file count as progress")
        #expect(try ledger.item(id: a.id)?.state == .pending)
        #expect(try ledger.commit([(a.id, [ChunkRecord(index: 1, offset: 4, length: 4, sha256: "y")], nil)], worker: "w").isEmpty)
        #expect(try ledger.item(id: a.id)?.state == .done)
        #expect(try ledger.chunks(of: a.id).map(\.index) == [0, 1])

        let b = try #require(try ledger.item(path: "b"))
        try ledger.fail(b.id, error: "permission denied")
        #expect(try ledger.item(id: b.id)?.state == .failed)
        #expect(try ledger.item(id: b.id)?.attempts == 1)
        try ledger.requeue(a.id, entry: entry("a", size: 99))
        let a2 = try #require(try ledger.item(id: a.id))
        #expect(a2.state == .pending)
        #expect(a2.entry.size == 99)
        #expect(try ledger.chunks(of: a.id).isEmpty, "requeue forgets stale chunks")
        #expect(try ledger.unsettledCount() == 4)

        // A re-scan that sees only "a" marks the rest vanished.
        let scan = try ledger.beginScan()
        try ledger.markSeen([a.id], scan: scan)
        #expect(try ledger.markUnseenVanished(scan: scan) == 3)
        #expect(try ledger.item(path: "c")?.state == .vanished)
    }

    @Test func verifyRunsAndFailuresAreKept() throws {
        let dir = TempDir()
        let ledger = try Ledger(stateDirectory: dir.path, create: true)
        try ledger.createJob(name: "t", planIdentity: "id", chunkSize: 4)
        let (id, round) = try ledger.beginVerify(mode: "sample", sample: 0.1)
        #expect(round == 0)
        try ledger.finishVerify(
            id: id, filesChecked: 3, bytesChecked: 30, failures: [(7, "x", "content differs")], mismatches: 1, drift: 0,
            ok: false, reportPath: nil)
        let v = try #require(try ledger.lastVerify())
        #expect(!v.ok)
        #expect(v.mismatches == 1)
        #expect(try ledger.lastVerifyFailedItems() == [7])
        #expect(try ledger.beginVerify(mode: "full", sample: 1).round == 1)
    }

    /// Verify joins its listings with the ledger while the run's read-back still writes the ledger: the join
    /// reads from a snapshot and neither waits for nor blocks that writer (once, the join's transaction took the
    /// ledger's write lock as well and failed with "database is locked").
    @Test func verifysJoinGoesOnWhileAWriterHoldsTheLedger() throws {
        let dir = TempDir()
        let ledger = try Ledger(stateDirectory: dir.path, create: true)
        try ledger.createJob(name: "t", planIdentity: "id", chunkSize: 4)
        let w = ledger.manifestWriter(batch: 10)
        for p in ["a", "b"] { try w.add(entry(p)) }
        try w.flush()
        let scratch = try WalkScratch(stateDirectory: dir.path)
        defer { scratch.remove() }
        let src = scratch.writer(table: "src")
        try src.add(entry("a"), verdict: "copy", reason: nil)
        try src.flush()

        let holding = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let writerDone = DispatchSemaphore(value: 0)
        // Written by the writer thread before `writerDone`, read only after it.
        final class ErrorBox: @unchecked Sendable { var error: (any Error)? }
        let writerError = ErrorBox()
        Thread.detachNewThread {
            do {
                try ledger.db.write { db in
                    try db.execute(sql: "UPDATE job SET updated_at = updated_at + 1")
                    holding.signal()
                    release.wait()
                }
            } catch {
                writerError.error = error
                holding.signal()
            }
            writerDone.signal()
        }
        holding.wait()
        var seen: [String: Bool] = [:]
        let joined = Result {
            try scratch.join(ledgerPath: ledger.path) { row in
                seen[row.path] = row.item != nil
                return nil
            }
        }
        release.signal()
        writerDone.wait()
        #expect(writerError.error == nil)
        #expect(throws: Never.self) { try joined.get() }
        #expect(seen == ["a": true, "b": true], "a in the listing and the manifest; b in the manifest only")
    }

    /// A page ends before the file that would take it past the byte bound (its first file is always taken), and
    /// what it left is leased by the next page: nothing is skipped or leased twice.
    @Test func aPageEndsAtItsByteBound() throws {
        let dir = TempDir()
        let ledger = try Ledger(stateDirectory: dir.path, create: true)
        try ledger.createJob(name: "t", planIdentity: "id", chunkSize: 4)
        let w = ledger.manifestWriter(batch: 10)
        for (p, size) in [("a", 100), ("b", 50), ("c", 30), ("d", 10), ("e", 500)] { try w.add(entry(p, size: Int64(size))) }
        try w.flush()
        try ledger.finishSnapshot(root: "/src", at: 100)
        var pages: [[String]] = []
        while true {
            let page = try ledger.lease(limit: 10, maxBytes: 120, worker: "w", ttl: 30, now: 100)
            if page.isEmpty { break }
            pages.append(page.map(\.entry.path))
        }
        #expect(pages == [["a"], ["b", "c", "d"], ["e"]])
    }

    @Test func openingWithoutStateSaysSo() throws {
        let dir = TempDir()
        #expect(throws: FerryError.self) { _ = try Ledger(stateDirectory: dir.sub("none"), create: false) }
    }
}
