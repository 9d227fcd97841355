import FerryTesting
import Foundation
import Testing

/// Crashes, faults and hostile input, each against the real binary.
@Suite(.serialized) struct FaultTests {
    @Test func killNineAtRandomPointsThenResumeWithoutResending() throws {
        let chunk: Int64 = 1 << 20
        let concurrency: Int64 = 4
        let s = try Scenario(chunkSize: "1MiB", concurrency: Int(concurrency), bandwidth: "80MiB/s")
        try TreeGen.make(at: s.source, files: 600, maxSmall: 64 * 1024, large: [30 << 20, 17 << 20, 9 << 20 + 123])
        let total = s.treeBytes()
        var kills: Int64 = 0
        var rng = SeededRandom("kill -9 targets")
        var targets = [
            Double.random(in: 0.05...0.3, using: &rng), Double.random(in: 0.35...0.6, using: &rng),
            Double.random(in: 0.65...0.9, using: &rng),
        ]
        targets.sort()
        for target in targets {
            let (p, _, _) = try Ferry.start(["run", s.plan], environment: try WriteCounter.environment(log: s.auditLog))
            let reached = waitUntil { s.bytesWritten() >= Int64(Double(total) * target) || !p.isRunning }
            #expect(reached)
            guard p.isRunning else {
                p.waitUntilExit()
                break
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            #expect(p.terminationReason == .uncaughtSignal)
            kills += 1
            let st = try s.ferry("status", "PLAN", "--json")
            #expect(st.status == 0, "status readable after kill -9: \(st.all)")
        }
        #expect(kills >= 1, "the run was killed at least once")
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(s.parity() == [])
        let written = s.bytesWritten()
        let bound = total + kills * 2 * concurrency * chunk
        // What a killed run wrote is found at the destination and not written again, so every byte is written
        // about once; the shim logs a write just after it, so a kill can fall between the two (one write of at
        // most a chunk per kill goes uncounted).
        #expect(written >= total - kills * chunk)
        #expect(written <= bound, "wrote \(written) bytes for a \(total)-byte tree after \(kills) kills (bound \(bound))")
    }

    @Test func catchUpCopiesChangesAndGatesCutover() throws {
        let s = try Scenario(extra: "cutover: { max_verify_age: 1h, hooks: [ \"echo switched\" ] }")
        try TreeGen.make(at: s.source, files: 100)
        #expect(try s.ferry("run", "PLAN").status == 0)
        try TreeGen.write(s.source + "/d0/e0/f0.dat", size: 5000, seed: 99)
        try TreeGen.write(s.source + "/new/file.txt", size: 1234, seed: 98)
        try FileManager.default.removeItem(atPath: s.source + "/d1/e1/f1.dat")
        chmod(s.source + "/d2/e2/f2.dat", 0o644)

        let v = try s.ferry("verify", "PLAN", "--json")
        #expect(v.status == 0, "the destination still matches the snapshot: \(v.all)")
        let drift = try #require(try s.json(v)["drift"] as? [String: Any])
        #expect(drift["added"] as? Int == 2, "new/ and new/file.txt")
        // f0.dat (content), f2.dat (mode), d1/e1 (lost a file) and the root (gained new/).
        #expect(drift["changed"] as? Int == 4)
        #expect(drift["deleted"] as? Int == 1)

        let refused = try s.ferry("cutover", "PLAN")
        #expect(refused.status == 4)
        #expect(refused.stdout.contains("[FAIL] no-drift"))

        let c = try s.ferry("run", "PLAN", "--catch-up")
        #expect(c.status == 0, "\(c.all)")
        #expect(s.parity() == [])
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/d1/e1/f1.dat"))
        let ok = try s.ferry("cutover", "PLAN")
        #expect(ok.status == 0, "\(ok.all)")
        #expect(ok.stderr.contains("switched"))
    }

    @Test func corruptedChunkIsNamedAndRepairReCopiesOnlyThatFile() throws {
        let s = try Scenario(chunkSize: "1MiB")
        try TreeGen.make(at: s.source, files: 50, large: [5 << 20])
        #expect(try s.ferry("run", "PLAN").status == 0)
        let victim = s.destination + "/large/big-0.bin"
        var st = stat()
        lstat(victim, &st)
        let fd = open(victim, O_WRONLY)
        var byte: UInt8 = 0xFF
        pwrite(fd, &byte, 1, 3 << 20 + 5)
        var times = [st.st_atim, st.st_mtim]
        futimens(fd, &times)  // bit rot keeps the mtime
        close(fd)

        let v = try s.ferry("verify", "PLAN")
        #expect(v.status == 1)
        #expect(v.stdout.contains("large/big-0.bin"))
        #expect(v.stdout.contains("content differs in chunk 3"))
        let j = try s.json(try s.ferry("verify", "PLAN", "--json"))
        let problems = try #require(j["problems"] as? [[String: Any]])
        #expect(problems.map { $0["path"] as? String } == ["large/big-0.bin"])
        #expect(j["ok"] as? Bool == false)

        s.resetAudit()
        let r = try s.ferry("run", "PLAN", "--repair")
        #expect(r.status == 0, "\(r.all)")
        #expect(s.bytesWritten() == 5 << 20, "only the bad file was sent again")
        #expect(s.parity() == [])
    }

    @Test func unreadableFilesAreReportedAndTheJobContinues() throws {
        let s = try Scenario()
        try TreeGen.make(at: s.source, files: 60)
        chmod(s.source + "/d4/e4/f4.dat", 0)
        try FileManager.default.createDirectory(atPath: s.source + "/locked/inner", withIntermediateDirectories: true)
        try TreeGen.write(s.source + "/locked/inner/x", size: 10, seed: 1)
        chmod(s.source + "/locked", 0)
        // Tests run as root: drop the capabilities that let root read anything.
        let noDAC = ["/usr/bin/setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        let r = try s.ferry("run", "PLAN", prefix: noDAC)
        #expect(r.status == 1, "\(r.all)")
        #expect(r.stdout.contains("d4/e4/f4.dat"))
        #expect(r.stdout.contains("Permission denied"))
        #expect(r.stdout.contains("locked"))
        let st = try s.json(try s.ferry("status", "PLAN", "--json"))
        #expect(st["files_failed"] as? Int == 1)
        #expect(st["files_done"] as? Int == 63)
        #expect(FileManager.default.fileExists(atPath: s.destination + "/d5/e0/f5.dat"))
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/d4/e4/f4.dat"))
    }

    @Test func fullDestinationStopsCleanlyAndResumesAfterSpaceIsFreed() throws {
        let s = try Scenario(chunkSize: "1MiB", concurrency: 2)
        try TreeGen.make(at: s.source, files: 80, maxSmall: 64 * 1024, large: [6 << 20])
        try FileManager.default.createDirectory(atPath: s.destination, withIntermediateDirectories: true)
        let disk = try TmpfsMount(at: s.destination, size: "5m")
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 3, "\(r.all)")
        #expect(r.stderr.contains("is full"))
        let st = try s.json(try s.ferry("status", "PLAN", "--json"))
        #expect(st["phase"] as? String == "copy")
        #expect((st["last_error"] as? String)?.contains("full") == true)
        // What the ledger calls done is really at the destination, byte for byte.
        try disk.resize("64m")
        let again = try s.ferry("run", "PLAN")
        #expect(again.status == 0, "\(again.all)")
        #expect(s.parity() == [])
    }

    @Test func aFileThatKeepsChangingIsNeverPublishedHalfCopied() throws {
        let s = try Scenario(chunkSize: "1MiB", concurrency: 2, bandwidth: "16MiB/s")
        try TreeGen.make(at: s.source, files: 10, large: [6 << 20])
        let target = s.source + "/large/big-0.bin"
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        writer.arguments = [
            "python3", "-c",
            "import sys, time\nf = open(sys.argv[1], 'ab')\nf.write(b'x'); f.flush()\nprint('writing', flush=True)\n"
                + "while True:\n    f.write(b'x'); f.flush(); time.sleep(0.01)\n",
            target,
        ]
        let ready = Pipe()
        writer.standardOutput = ready
        try writer.run()
        defer { stopWriter(writer) }
        // Handshake: ferry starts only once the writer is appending.
        let line = ready.fileHandleForReading.availableData
        #expect(String(decoding: line, as: UTF8.self).hasPrefix("writing"))
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 1, "\(r.all)")
        #expect(r.stdout.contains("large/big-0.bin"))
        #expect(r.stdout.contains("kept changing"))
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/large/big-0.bin"))
        stopWriter(writer)
        let c = try s.ferry("run", "PLAN", "--catch-up")
        #expect(c.status == 0, "\(c.all)")
        #expect(s.parity() == [])
    }

    func stopWriter(_ p: Process) {
        guard p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    @Test func hostileDestinationSymlinkIsNeverFollowed() throws {
        let s = try Scenario()
        try TreeGen.make(at: s.source, files: 20)
        let outside = s.dir.sub("outside")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: s.destination, withIntermediateDirectories: true)
        symlink(outside, s.destination + "/d0")
        let r = try s.ferry("run", "PLAN")
        // The entries below the planted link are refused one by one (the run fails, naming them); the rest of
        // the tree is copied, and nothing is written through the link.
        #expect(r.status == 1, "\(r.all)")
        #expect(r.stdout.contains("d0/e0/f0.dat") && r.stdout.contains("symlink is never followed"), "\(r.stdout)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        #expect(FileManager.default.fileExists(atPath: s.destination + "/d1/e1/f1.dat"), "the rest is copied")
    }

    @Test func changedPlanIdentityIsRefused() throws {
        let s = try Scenario(chunkSize: "1MiB")
        try TreeGen.make(at: s.source, files: 10)
        #expect(try s.ferry("run", "PLAN").status == 0)
        try s.writePlan(chunkSize: "2MiB")
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 3)
        #expect(r.stderr.contains("plan changed"))
        #expect(r.stderr.contains("chunk_size"))
        try s.writePlan(chunkSize: "1MiB", concurrency: 1)
        #expect(try s.ferry("run", "PLAN").status == 0, "concurrency is not part of the job's identity")
    }
}

@Suite(.serialized) struct CutoverAndStatusTests {
    @Test func hooksRunInOrderAndTheFirstFailureStops() throws {
        let s = try Scenario()
        let log = s.dir.sub("hooks.log")
        try TreeGen.make(at: s.source, files: 10)
        try s.writePlan(
            extra: """
                cutover:
                  max_verify_age: 1h
                  hooks: [ "echo one $FERRY_HOOK_INDEX $FERRY_JOB >> \(log)", "exit 7", "echo three >> \(log)" ]
                """)
        #expect(try s.ferry("run", "PLAN").status == 0)
        let bad = try s.ferry("cutover", "PLAN")
        #expect(bad.status == 3)
        #expect(bad.stderr.contains("cutover hook 2 of 3 failed (exit status 7)"))
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "one 1 it\n")
        #expect(try s.json(try s.ferry("status", "PLAN", "--json"))["cutover_at"] == nil)

        try s.writePlan(extra: "cutover: { max_verify_age: 1h, hooks: [ \"echo two $FERRY_HOOK_COUNT >> \(log)\" ] }")
        let good = try s.ferry("cutover", "PLAN")
        #expect(good.status == 0, "\(good.all)")
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "one 1 it\ntwo 1\n")
        let st = try s.json(try s.ferry("status", "PLAN", "--json"))
        #expect(st["cutover_at"] as? String != nil)
        #expect(st["cutover_forced"] as? Bool == false)
        #expect(try s.ferry("cutover", "PLAN").stdout.contains("already cut over"))
    }

    @Test func staleVerifyRefusesAndForceIsRecorded() throws {
        let s = try Scenario(extra: "cutover: { max_verify_age: 10m }")
        try TreeGen.make(at: s.source, files: 10)
        #expect(try s.ferry("run", "PLAN").status == 0)
        // Age the last verify by two hours, as if it had run yesterday.
        let age = Process()
        age.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        age.arguments = [
            "python3", "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE verify_runs SET finished_at = finished_at - 7200'); c.commit()",
            s.state + "/ledger.sqlite",
        ]
        try age.run()
        age.waitUntilExit()
        let r = try s.ferry("cutover", "PLAN")
        #expect(r.status == 4)
        #expect(r.stdout.contains("[FAIL] verify-fresh"))
        #expect(r.stderr.contains("verify-fresh"))
        let forced = try s.ferry("cutover", "PLAN", "--force")
        #expect(forced.status == 0)
        #expect(forced.stdout.contains("FORCED"))
        #expect(try s.json(try s.ferry("status", "PLAN", "--json"))["cutover_forced"] as? Bool == true)
    }

    @Test func statusReadsProgressWhileARunIsWorking() throws {
        // 24 MiB at 4 MiB/s: the copy phase lasts about 6 s, many heartbeats (1 s) long.
        let s = try Scenario(chunkSize: "1MiB", concurrency: 2, bandwidth: "4MiB/s")
        try TreeGen.make(at: s.source, files: 20, large: [24 << 20])
        let (p, _, _) = try Ferry.start(["run", s.plan], environment: try WriteCounter.environment(log: s.auditLog))
        var seen: [String: Any] = [:]
        let ok = waitUntil(timeout: 60) {
            guard let r = try? s.ferry("status", "PLAN", "--json"), r.status == 0,
                let j = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
                let runner = j["runner"] as? [String: Any], runner["alive"] as? Bool == true,
                j["phase"] as? String == "copy", (runner["live_bytes_done"] as? Int ?? 0) > 0
            else { return false }
            seen = j
            return true
        }
        #expect(ok, "status showed a live run in the copy phase")
        #expect((seen["bytes_total"] as? Int ?? 0) > 24 << 20)
        let human = try s.ferry("status", "PLAN")
        #expect(human.status == 0)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let after = try s.json(try s.ferry("status", "PLAN", "--json"))
        #expect(after["phase"] as? String == "ready")
    }
}

@Suite(.serialized) struct InterruptTests {
    @Test func sigtermStopsCleanlyAndTheRunResumes() throws {
        let s = try Scenario(chunkSize: "1MiB", concurrency: 2, bandwidth: "20MiB/s")
        try TreeGen.make(at: s.source, files: 100, large: [30 << 20])
        let (p, _, errPipe) = try Ferry.start(["run", s.plan], environment: try WriteCounter.environment(log: s.auditLog))
        #expect(waitUntil { s.bytesWritten() >= 4 << 20 || !p.isRunning })
        #expect(p.isRunning)
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        let err = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 3)
        #expect(err.contains("interrupted"))
        let before = s.bytesWritten()
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(s.parity() == [])
        #expect(s.bytesWritten() == s.treeBytes(), "nothing committed before the stop was sent again (\(before) before)")
    }
}

extension FaultTests {
    /// A destination that already holds a file exactly as the copy would leave it (an interrupted run published it
    /// and was killed before recording it, or an earlier copy) has it recorded without being written; a file that
    /// differs in a byte or in its mode is written again.
    @Test func filesAlreadyAtTheDestinationAreRecordedWithoutBeingWrittenAgain() throws {
        let s = try Scenario(chunkSize: "1MiB", concurrency: 2)
        try TreeGen.make(at: s.source, files: 120, maxSmall: 48 * 1024, large: [3 << 20])
        #expect(try s.ferry("run", "PLAN").status == 0)
        // A new job over the same destination: a fresh ledger, nothing recorded.
        try FileManager.default.removeItem(atPath: s.state)
        s.resetAudit()
        let changedBytes = "d3/e3/f3.dat", changedMode = "d4/e4/f4.dat"
        let bytesPath = s.destination + "/" + changedBytes
        let mtime = try #require(try FileManager.default.attributesOfItem(atPath: bytesPath)[.modificationDate] as? Date)
        let h = try #require(FileHandle(forUpdatingAtPath: bytesPath))
        try h.write(contentsOf: Data([0x5A, 0x5A]))
        try h.close()
        try FileManager.default.setAttributes([.modificationDate: mtime], ofItemAtPath: bytesPath)
        #expect(chmod(s.destination + "/" + changedMode, 0o600) == 0)
        #expect(s.parity() != [], "the destination differs before the second run")

        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(s.parity() == [])
        func size(_ p: String) throws -> Int64 {
            try #require(try FileManager.default.attributesOfItem(atPath: s.source + "/" + p)[.size] as? Int64)
        }
        // Written again: the two that differ, and the large file (compared only when it fits a chunk buffer twice).
        let expected = try size(changedBytes) + size(changedMode) + size("large/big-0.bin")
        #expect(s.bytesWritten() == expected, "wrote \(s.bytesWritten()) bytes; \(expected) differ or are large")
    }
}
