import FerryLocal
import FerryTesting
import Foundation
import Logging
import Testing

@testable import FerryCore
@testable import FerryEngine

/// Engine-level tests that need to act between phases (which the CLI runs back to back).
@Suite struct JobTests {
    func makeJob(_ dir: TempDir) throws -> Job {
        let yaml = """
            version: 1
            name: job
            source: { kind: fs, path: src }
            destination: { kind: fs, path: dst }
            copy: { chunk_size: 64KiB, concurrency: 2 }
            """
        let loader = PlanLoader(storeKinds: [StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true)])
        let plan = try loader.parse(yaml, displayPath: "plan.yml", absolutePath: dir.sub("plan.yml"))
        return Job(
            plan: plan, source: LocalStore(root: dir.sub("src")), destination: LocalStore(root: dir.sub("dst")),
            logger: Logger(label: "test"), progress: ProgressTracker(output: .none))
    }

    /// A job over a generated tree with its snapshot taken (the moment the tests act in).
    func snapshotted(_ dir: TempDir, files: Int, large: Int) throws -> (Job, Ledger) {
        try TreeGen.make(at: dir.sub("src"), files: files, large: [large])
        let job = try makeJob(dir)
        let ledger = try job.openLedger(create: true)
        try ledger.createJob(name: "job", planIdentity: job.plan.identity, chunkSize: job.plan.copy.chunkSize)
        try job.snapshot(ledger)
        return (job, ledger)
    }

    /// A job over what `src` holds now, snapshotted and copied.
    func copied(_ dir: TempDir) throws -> (Job, Ledger) {
        let job = try makeJob(dir)
        let ledger = try job.openLedger(create: true)
        try ledger.createJob(name: "job", planIdentity: job.plan.identity, chunkSize: job.plan.copy.chunkSize)
        try job.snapshot(ledger)
        _ = try job.copy(ledger)
        return (job, ledger)
    }

    /// The inode at `path` (the kernel's lstat), nil when there is nothing.
    static func inode(_ path: String) -> UInt64? {
        var st = stat()
        return lstat(path, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    /// Files read back at the destination while the copy went on count as checked by the run's verify only while
    /// nothing wrote to them since. Two files are changed after the read-back, keeping their size and mtime (so
    /// the metadata comparison passes): one rewritten in place (its change time moves), one replaced by a renamed
    /// copy (its inode changes). The run's verify finds exactly those two different, and takes only the others
    /// from the read-back; `ferry verify` (not the run's) reads every file again. The oracle is the SHA-256 of both
    /// trees' files, computed by the test.
    @Test func aFileWrittenAfterItWasReadBackIsReadAgainByTheRunsVerify() throws {
        let dir = TempDir()
        let (job, ledger) = try snapshotted(dir, files: 40, large: 300_000)
        _ = try job.copy(ledger)
        let files = try ledger.items(states: [.done], kind: .file, after: 0, limit: 1000).filter { $0.entry.size > 0 }
        let readBack = ContentReadBack(destination: LocalStore(root: dir.sub("dst")), ledger: ledger, logger: Logger(label: "test"))
        readBack.start()
        readBack.offer(files.map(\.id))
        let allRead = try waitUntil(timeout: 30) { try ledger.readBack(ids: files.map(\.id)).count == files.count }
        readBack.stop()
        #expect(allRead, "every copied file was read back")

        // Same size and mtime, other bytes: in place, and through a renamed copy.
        func keepMtime(_ path: String, _ change: (String) throws -> Void) throws {
            var st = stat()
            #expect(lstat(path, &st) == 0)
            try change(path)
            var times = [st.st_atim, st.st_mtim]
            #expect(utimensat(AT_FDCWD, path, &times, 0) == 0, "the nanosecond mtime is put back")
        }
        let inPlace = try #require(files.first { $0.entry.size > 10 && $0.entry.kind == .file && !$0.entry.path.hasPrefix("large") })
        try keepMtime(dir.sub("dst/" + inPlace.entry.path)) { p in
            let h = try #require(FileHandle(forUpdatingAtPath: p))
            try h.seek(toOffset: 5)
            let old = try #require(try h.read(upToCount: 1)).first ?? 0
            try h.seek(toOffset: 5)
            try h.write(contentsOf: Data([old ^ 0xff]))
            try h.close()
        }
        let replaced = "large/big-0.bin"
        try keepMtime(dir.sub("dst/" + replaced)) { p in
            var bytes = try #require(FileManager.default.contents(atPath: p))
            bytes[200_000] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: p + ".new"))
            #expect(rename(p + ".new", p) == 0)
        }
        let differing = Set(
            files.map(\.entry.path).filter {
                TreeCompare.fileDigest(dir.sub("src/" + $0)) != TreeCompare.fileDigest(dir.sub("dst/" + $0))
            })
        #expect(differing == [inPlace.entry.path, replaced], "the oracle sees the two changed files")

        let again = try job.verify(ledger)
        #expect(again.filesReadBackDuringCopy == 0, "ferry verify reads every file again")
        #expect(Set(again.problems.filter { $0.reason.hasPrefix("content differs") }.map(\.path)) == differing, "\(again.problems)")

        let report = try job.verify(ledger, asRun: true)
        #expect(!report.ok)
        #expect(Set(report.problems.filter { $0.reason.hasPrefix("content differs") }.map(\.path)) == differing, "\(report.problems)")
        #expect(report.filesReadBackDuringCopy == Int64(files.count - differing.count), "the unchanged ones count as read back")
        #expect(try ledger.readBack(ids: files.map(\.id)).isEmpty, "the run's verify used them up")
    }

    @Test func fileVanishingBetweenSnapshotAndCopyIsRecordedNotFatal() throws {
        let dir = TempDir()
        let (job, ledger) = try snapshotted(dir, files: 30, large: 200_000)
        try FileManager.default.removeItem(atPath: dir.sub("src/d5/e0/f5.dat"))
        try FileManager.default.removeItem(atPath: dir.sub("src/large/big-0.bin"))

        let summary = try job.copy(ledger)
        #expect(summary.vanished == 2)
        #expect(try ledger.item(path: "d5/e0/f5.dat")?.state == .vanished)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("dst/d5/e0/f5.dat")))

        let report = try job.verify(ledger)
        #expect(report.ok, "the destination holds everything that still exists: \(report.problems)")
        #expect(report.drift.deleted >= 2)
        let gates = try job.gates(ledger)
        #expect(gates.first { $0.name == "no-pending-catch-up" }?.ok == false)
        #expect(gates.first { $0.name == "no-drift" }?.ok == false)
    }

    @Test func fileChangedBetweenSnapshotAndCopyIsCopiedAsItIsNow() throws {
        let dir = TempDir()
        let (job, ledger) = try snapshotted(dir, files: 10, large: 300_000)
        try TreeGen.write(dir.sub("src/large/big-0.bin"), size: 400_123, seed: 77)
        _ = try job.copy(ledger)
        let item = try #require(try ledger.item(path: "large/big-0.bin"))
        #expect(item.state == .done)
        #expect(item.entry.size == 400_123, "the manifest records what was copied")
        #expect(TreeCompare.fileDigest(dir.sub("src/large/big-0.bin")) == TreeCompare.fileDigest(dir.sub("dst/large/big-0.bin")))
        #expect(try job.verify(ledger).ok)
    }
    /// A live mirror settles a file whose copy failed because it kept changing, and keeps its hard-link group
    /// whole. A new name appears for a file whose own copy failed, so the file is not at the destination; the
    /// mirror's own second look, or the tap's settling look (an application with no changes, every two seconds),
    /// copies the file again, and the destination's names are one inode. Before, such a file waited for its next
    /// change, which never comes once the application stops writing (the cutover then waited forever), and a
    /// name that could not be linked was copied as a file of its own, splitting the group for good. The
    /// destination's inodes are the oracle (the kernel's stat).
    @Test func aFileWhoseCopyFailedIsSettledByTheMirrorAndItsHardLinkGroupStaysWhole() throws {
        let dir = TempDir()
        try TreeGen.write(dir.sub("src/g/a.dat"), size: 70_000, seed: 5)
        let (job, ledger) = try copied(dir)
        func inode(_ path: String) -> UInt64? { Self.inode(dir.sub(path)) }
        #expect(inode("dst/g/a.dat") != nil)

        // A second name appears while the file is being rewritten: its copy failed (kept changing), so the file
        // is not at the destination to be linked to.
        #expect(link(dir.sub("src/g/a.dat"), dir.sub("src/g/c.dat")) == 0)
        let a = try #require(try ledger.item(path: "g/a.dat"))
        try FileManager.default.removeItem(atPath: dir.sub("dst/g/a.dat"))
        try ledger.setState([a.id], .failed, error: "\(CopyPhase.keptChanging) (3 attempts)")
        _ = try job.mirror(LiveChanges(paths: ["g/c.dat"]), ledger: ledger)
        // Whichever name is the group's file now, two names that are both settled are one inode at the destination.
        let (a1, c1) = (try #require(try ledger.item(path: "g/a.dat")), try #require(try ledger.item(path: "g/c.dat")))
        #expect([a1.entry.kind, c1.entry.kind].sorted { $0.rawValue < $1.rawValue } == [.file, .hardlink], "\(a1.entry.kind), \(c1.entry.kind)")
        #expect(a1.state != .done || c1.state != .done || inode("dst/g/a.dat") == inode("dst/g/c.dat"))

        // The settling look: no new changes. Everything is settled, and the names are one file.
        let settled = try job.mirror(LiveChanges(), ledger: ledger)
        #expect(settled.unsettled == 0, "\(settled.unsettled) entries unsettled")
        let group = ["dst/g/a.dat", "dst/g/c.dat"].map(inode)
        #expect(group[0] != nil && Set(group).count == 1, "the destination's group was split: inodes \(group)")
        #expect(TreeCompare.fileDigest(dir.sub("src/g/a.dat")) == TreeCompare.fileDigest(dir.sub("dst/g/c.dat")))
    }
    /// A file of a hard-link group copied again (its bytes changed) is a new inode at the destination: the names
    /// already linked to the old one are linked again, whatever queued the file (here only the file is queued,
    /// as the mirror back's seed or a copy delayed by another worker's lease leaves it). Before, the second
    /// name kept the old inode and its old bytes, and the group was split for good. The kernel's stat is the
    /// oracle for the inodes, and the bytes are hashed on both sides.
    @Test func aHardLinkedFileWrittenAnewHasItsOtherNamesLinkedAgain() throws {
        let dir = TempDir()
        try TreeGen.write(dir.sub("src/g/a.dat"), size: 70_000, seed: 5)
        #expect(link(dir.sub("src/g/a.dat"), dir.sub("src/g/b.dat")) == 0)
        let (job, ledger) = try copied(dir)
        func inode(_ path: String) -> UInt64? { Self.inode(dir.sub(path)) }
        #expect(inode("dst/g/a.dat") != nil && inode("dst/g/a.dat") == inode("dst/g/b.dat"), "the first copy did not link the group")

        // New bytes through the file's own inode (both names), and only the file queued again.
        let handle = try #require(FileHandle(forWritingAtPath: dir.sub("src/g/a.dat")))
        try handle.write(contentsOf: Data(repeating: 0x5A, count: 9000))
        try handle.close()
        // The group's file is the name the snapshot met first.
        let file = try #require(try ["g/a.dat", "g/b.dat"].compactMap { try ledger.item(path: $0) }.first { $0.entry.kind == .file })
        let now: Entry? = try job.source.stat(file.entry.path)
        #expect(now?.size == 70_000 && now?.links == 2, "\(String(describing: now))")
        try ledger.requeue(file.id, entry: now)
        _ = try job.copy(ledger)
        #expect(inode("dst/g/a.dat") != nil && inode("dst/g/a.dat") == inode("dst/g/b.dat"), "the group was split at the destination")
        #expect(TreeCompare.fileDigest(dir.sub("dst/g/b.dat")) == TreeCompare.fileDigest(dir.sub("src/g/b.dat")))
        #expect(try ledger.unsettledCount() == 0)
    }
}
