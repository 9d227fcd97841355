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
}
