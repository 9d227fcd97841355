import FerryCore
import FerryTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Two `ferry run` processes on one fs job share its files through the ledger's leases; a worker killed with
/// kill -9 has its files taken over once its leases expire. The ledger is read by Python's sqlite3 and the trees
/// are compared by testdata/oracle/treecmp.py: neither is ferry's code.
@Suite(.serialized) struct WorkerTests {
    func plan(_ dir: TempDir) throws -> String {
        try TreeGen.make(at: dir.sub("src"), files: 240, maxSmall: 48 * 1024, seed: UInt64.random(in: 1...1_000_000))
        // Throttled so the runs overlap; a short lease TTL so a takeover happens within the test.
        return try writePlan(
            dir.path,
            """
            version: 1
            name: shared
            source: { kind: fs, path: src }
            destination: { kind: fs, path: dst }
            copy: { chunk_size: 64KiB, concurrency: 2, bandwidth: 2MiB/s, lease_ttl: 2s }
            """)
    }

    /// Rows of the ledger, as Python's sqlite3 reads them.
    func ledger(_ dir: TempDir, _ sql: String) throws -> [[String]] {
        let out = try pythonOutput(
            """
            import sqlite3, json
            db = sqlite3.connect("file:\(dir.sub(".ferry/shared/ledger.sqlite"))?mode=ro", uri=True)
            sys.stdout.write(json.dumps([[str(c) for c in row] for row in db.execute(\"\"\"\(sql)\"\"\")]))
            """)
        return try JSONSerialization.jsonObject(with: Data(out)) as? [[String]] ?? []
    }

    /// One number from the ledger (0 while it does not exist yet).
    func count(_ dir: TempDir, _ sql: String) -> Int {
        guard FileManager.default.fileExists(atPath: dir.sub(".ferry/shared/ledger.sqlite")) else { return 0 }
        return (try? ledger(dir, sql))?.first?.first.flatMap { Int($0) } ?? 0
    }

    func differences(_ a: String, _ b: String) throws -> [String] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", ParityTests.oracle, a, b]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    @Test func twoRunsShareTheFilesAndNoneIsCommittedTwice() throws {
        let dir = TempDir("workers-share")
        let plan = try plan(dir)
        let (a, ao, ae) = try Ferry.start(["run", plan, "--quiet"])
        // The second run starts once the first holds leases (it waits for the snapshot otherwise).
        let leased = waitUntil(timeout: 60) { count(dir, "SELECT COUNT(*) FROM leases") > 0 }
        #expect(leased)
        let (b, bo, be) = try Ferry.start(["run", plan, "--quiet"])
        let outA = String(decoding: ao.fileHandleForReading.readDataToEndOfFile() + ae.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let outB = String(decoding: bo.fileHandleForReading.readDataToEndOfFile() + be.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        a.waitUntilExit()
        b.waitUntilExit()
        #expect(a.terminationStatus == 0, "\(outA)")
        #expect(b.terminationStatus == 0, "\(outB)")
        let byWorker = try ledger(dir, "SELECT committed_by, COUNT(*) FROM items WHERE kind = 'file' GROUP BY committed_by")
        print("files committed per worker: \(byWorker)")
        #expect(byWorker.count == 2 && byWorker.allSatisfy { $0[0] != "None" && Int($0[1]) ?? 0 > 0 }, "both workers committed files: \(byWorker)")
        let commits = try ledger(dir, "SELECT MIN(commits), MAX(commits) FROM items WHERE kind = 'file'")
        #expect(commits.first == ["1", "1"], "every file committed exactly once: \(commits)")
        #expect(try ledger(dir, "SELECT phase FROM job").first == ["ready"])
        #expect(try differences(dir.sub("src"), dir.sub("dst")).isEmpty)
    }

    @Test func aKilledWorkersLeasesAreTakenOverAfterTheTTL() throws {
        let dir = TempDir("workers-kill")
        let plan = try plan(dir)
        let (a, _, _) = try Ferry.start(["run", plan, "--quiet"])
        let working = waitUntil(timeout: 60) { count(dir, "SELECT COUNT(*) FROM items WHERE committed_by IS NOT NULL") > 0 }
        #expect(working, "the first worker committed files")
        kill(a.processIdentifier, SIGKILL)
        a.waitUntilExit()
        let held = try ledger(dir, "SELECT item_id, worker FROM leases JOIN items ON items.id = leases.item_id WHERE items.state = 'pending'")
        #expect(!held.isEmpty, "the killed worker held leases")
        let dead = Set(held.map { $0[1] })
        let r = try Ferry.run(["run", plan, "--quiet"])
        #expect(r.status == 0, "\(r.all)")
        let ids = held.map { $0[0] }.joined(separator: ",")
        let after = try ledger(dir, "SELECT committed_by, commits FROM items WHERE id IN (\(ids))")
        #expect(after.count == held.count)
        #expect(after.allSatisfy { !dead.contains($0[0]) && $0[0] != "None" && $0[1] == "1" }, "taken over and committed once: \(after)")
        let commits = try ledger(dir, "SELECT MIN(commits), MAX(commits) FROM items WHERE kind = 'file'")
        #expect(commits.first == ["1", "1"], "\(commits)")
        #expect(try differences(dir.sub("src"), dir.sub("dst")).isEmpty)
    }
}
