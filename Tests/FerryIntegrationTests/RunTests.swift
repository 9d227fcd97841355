import FerryTesting
import Foundation
import Testing

/// End-to-end tests of the built `ferry` binary over generated trees.
@Suite(.serialized) struct RunTests {
    /// A sparse file whose data sits inside chunks (8 MiB each by default): only the blocks holding data are
    /// written, so the copy stays as sparse as the source (it was written whole, chunk by chunk, and verify
    /// rightly failed it: "holes not kept").
    @Test func holesInsideAChunkAreKept() throws {
        let s = try Scenario(chunkSize: "8MiB")
        _ = try pythonOutput(
            """
            f = open("\(s.source)/sparse.img", "wb")
            f.truncate(64 << 20)
            for at in (20 << 20, (64 << 20) - 100):
                f.seek(at); f.write(os.urandom(100))
            f.close()
            """)
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0 && r.stdout.contains("result: CLEAN"), "\(r.all)")
        #expect(s.parity() == [])
        let blocks = try pythonOutput("print(os.stat(\"\(s.destination)/sparse.img\").st_blocks * 512)")
        let allocated = Int(String(decoding: blocks, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        #expect(allocated >= 0 && allocated <= 256 << 10, "the copy allocates \(allocated) bytes for 200 bytes of data")
    }

    @Test func fullRunCopiesVerifiesAndIsIdempotent() throws {
        let s = try Scenario(chunkSize: "4MiB")
        try TreeGen.make(at: s.source, files: 3000, maxSmall: 48 * 1024, large: [110 * 1_048_576, 5 * 1_048_576 + 7])
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(r.stdout.contains("result: CLEAN"))
        #expect(s.parity() == [])
        #expect(s.bytesWritten() == s.treeBytes(), "every byte written exactly once")
        // Links are copied as links and never followed out of the tree.
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: s.destination + "/link-to-dir-outside")
        #expect(link == "/etc")
        var st = stat()
        for l in ["link-to-dir-outside", "link-outside-absolute", "d1/link-outside-relative", "link-dangling"] {
            #expect(lstat(s.destination + "/" + l, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK, "\(l) is a link, not what it points to")
        }
        // Where the relative link would lead from the destination (../../../../outside from d1): nothing there.
        let escape = URL(fileURLWithPath: s.destination + "/d1").appendingPathComponent("../../../../outside").standardized.path
        #expect(!FileManager.default.fileExists(atPath: escape), "\(escape)")
        // No partial files are left behind.
        let leftovers = (FileManager.default.enumerator(atPath: s.destination)?.allObjects as? [String] ?? [])
            .filter { $0.contains(".ferry-") }
        #expect(leftovers == [])

        s.resetAudit()
        let again = try s.ferry("run", "PLAN")
        #expect(again.status == 0)
        #expect(again.stdout.contains("nothing to do"))
        #expect(s.bytesWritten() == 0)

        let status = try s.ferry("status", "PLAN", "--json")
        let j = try s.json(status)
        #expect(j["phase"] as? String == "ready")
        #expect(j["files_done"] as? Int == 3000 + 2 + 4)
        #expect((j["bytes_done"] as? Int).map(Int64.init) == s.treeBytes())
    }

    @Test func logLinesAreJSONOnRequestStartWithTheMessageOtherwiseAndQuietLeavesWarningsOnly() throws {
        let s = try Scenario()
        try TreeGen.make(at: s.source, files: 20, large: [])
        let json = try s.ferry("run", "PLAN", "--log-format", "json")
        #expect(json.status == 0, "\(json.all)")
        let lines = json.stderr.split(separator: "\n")
        #expect(!lines.isEmpty)
        var messages: [String] = []
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object != nil, "not a JSON object: \(line)")
            if let o = object {
                #expect(o["level"] is String && o["time"] is String, "\(line)")
                messages.append(o["message"] as? String ?? "")
            }
        }
        #expect(messages.contains("snapshot taken"), "\(messages)")
        #expect(messages.contains("progress (phase done)"), "\(messages)")

        // Text: the message first, the level and time after it.
        let again = try Scenario()
        try TreeGen.make(at: again.source, files: 20, large: [])
        let text = try again.ferry("run", "PLAN")
        let snapshot = text.stderr.split(separator: "\n").first { $0.contains("snapshot taken") }
        #expect(snapshot?.hasPrefix("snapshot taken") == true && snapshot?.contains("[info ") == true, "\(text.stderr)")

        // --quiet: no progress, no info or notice lines; the result still goes to stdout.
        let quiet = try Scenario()
        try TreeGen.make(at: quiet.source, files: 20, large: [])
        let q = try quiet.ferry("run", "PLAN", "--quiet")
        #expect(q.status == 0)
        #expect(!q.stderr.contains("[info ") && !q.stderr.contains("[notice ") && !q.stderr.contains("[progress "), "\(q.stderr)")
        #expect(q.stdout.contains("result: CLEAN"), "\(q.stdout)")
        let bad = try quiet.ferry("status", "PLAN", "--log-format", "xml")
        #expect(bad.status != 0 && bad.stderr.contains("--log-format: expected text or json"), "\(bad.all)")
    }

    @Test func dryRunWritesNothing() throws {
        let s = try Scenario()
        try TreeGen.make(at: s.source, files: 200, large: [3 * 1_048_576])
        let r = try s.ferry("run", "PLAN", "--dry-run")
        #expect(r.status == 0, "\(r.all)")
        #expect(r.stdout.contains("files        205"))
        #expect(r.stdout.contains("large/big-0.bin"))
        #expect(r.stdout.contains("per top-level directory"))
        #expect(r.stdout.contains("estimate"))
        #expect(!FileManager.default.fileExists(atPath: s.destination))
        #expect(!FileManager.default.fileExists(atPath: s.state))
        #expect(s.bytesWritten() == 0)
    }

    @Test func planErrorsExitTwoWithLocation() throws {
        let s = try Scenario()
        let bad = try writePlan(
            s.dir.path,
            "version: 1\nname: x\nsource: { kind: fs, path: source }\ndestination: { kind: fs, path: source/inner }\ncopy: { chunk_size: 8 megs }\n",
            name: "bad.yml")
        let r = try Ferry.run(["plan", "check", bad])
        #expect(r.status == 2)
        #expect(r.stderr.contains("bad.yml:5:"))
        #expect(r.stderr.contains("copy.chunk_size"))
        #expect(r.stderr.contains("inside the source"))
        let run = try Ferry.run(["run", bad])
        #expect(run.status == 2)
        #expect(try Ferry.run(["plan", "check", s.dir.sub("missing.yml")]).status == 2)
    }

    @Test func storeAndTapErrorsComeAllAtOnceWithLocations() throws {
        let s = try Scenario()
        let bad = try writePlan(
            s.dir.path,
            """
            version: 1
            name: t
            source: { kind: fs, path: source }
            destination: { kind: s3, endpoint: "http://127.0.0.1:1", bucket: b, credentials: "env:NOPE_", addressing: sideways }
            copy: { chunk_size: 1MiB }
            """, name: "s3small.yml")
        let r = try Ferry.run(["plan", "check", bad])
        #expect(r.status == 2)
        #expect(r.stderr.contains("s3small.yml:5:21: copy.chunk_size:"), "\(r.stderr)")
        #expect(r.stderr.contains("s3small.yml:4:") && r.stderr.contains("destination.addressing:"))
        #expect(r.stderr.contains("destination.credentials:") && r.stderr.contains("NOPE_ACCESS_KEY_ID"))
        #expect(r.stderr.contains("(3 problem(s))"))
        let tap = try writePlan(
            s.dir.path,
            """
            version: 1
            name: t
            source: { kind: whisper, path: source }
            destination: { kind: whisper, path: dst }
            tap:
              kind: carbon
              listen: "127.0.0.1:70000"
              old: "127.0.0.1:2103"
              new: "127.0.0.1:2203"
              replay_rate: "-5/s"
            """, name: "tapbad.yml")
        let t = try Ferry.run(["plan", "check", tap])
        #expect(t.status == 2)
        #expect(t.stderr.contains("tapbad.yml:7:11: tap.listen:") && t.stderr.contains("tapbad.yml:10:16: tap.replay_rate:"), "\(t.stderr)")
        let ret = try writePlan(
            s.dir.path,
            """
            version: 1
            name: t
            source: { kind: ceres, path: source }
            destination: { kind: whisper, path: dst, retentions: "60s:forever", aggregation: median }
            """, name: "retbad.yml")
        let rb = try Ferry.run(["plan", "check", ret])
        #expect(rb.stderr.contains("destination.aggregation:") && rb.stderr.contains("destination.retentions:"), "\(rb.stderr)")
    }

    @Test func examplePlansAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let plans = try FileManager.default.contentsOfDirectory(atPath: root.path + "/plans").filter { $0.hasSuffix(".yml") }
        #expect(!plans.isEmpty)
        for p in plans {
            // Plans that take credentials from the environment get placeholders (plan check resolves them).
            let text = try String(contentsOfFile: root.path + "/plans/" + p, encoding: .utf8)
            var env: [String: String] = [:]
            for part in text.components(separatedBy: "env:").dropFirst() {
                let prefix = String(part.prefix { $0.isLetter || $0.isNumber || $0 == "_" })
                env[prefix + "ACCESS_KEY_ID"] = "placeholder"
                env[prefix + "SECRET_ACCESS_KEY"] = "placeholder"
                env[prefix] = "placeholder-token-0123456789"  // a remote store's token (env:NAME)
            }
            let r = try Ferry.run(["plan", "check", root.path + "/plans/" + p], environment: env)
            #expect(r.status == 0, "\(p): \(r.all)")
        }
    }

    @Test func versionAndHelp() throws {
        let r = try Ferry.run(["--version"])
        #expect(r.status == 0)
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".").allSatisfy { Int($0) != nil })
        #expect(r.stdout.split(separator: ".").count == 3)
        let help = try Ferry.run(["--help"])
        #expect(help.status == 0)
        for command in ["plan", "run", "verify", "status", "cutover", "rollback", "complete", "tap", "metrics"] {
            #expect(help.stdout.contains("  \(command)"), "--help lists \(command)")
        }
        #expect(help.stdout.contains("Exit codes"))
        let runHelp = try Ferry.run(["run", "--help"])
        #expect(runHelp.status == 0 && runHelp.stdout.contains("--dry-run") && runHelp.stdout.contains("--catch-up"))
    }
}

@Suite(.serialized) struct PlanFeatureTests {
    @Test func snapshotHookRunsFirstAndTheCopyReadsTheSnapshotPath() throws {
        let s = try Scenario()
        try TreeGen.make(at: s.source, files: 40)
        let snap = s.dir.sub("snap")
        let hookLog = s.dir.sub("hook.env")
        // The hook freezes the tree (as `btrfs subvolume snapshot -r` would) and records its environment.
        try s.writePlan(
            extra: """
                snapshot:
                  hook: "rm -rf \(snap) && cp -a \(s.source) \(snap) && echo \\"$FERRY_JOB $FERRY_SNAPSHOT_PATH\\" > \(hookLog)"
                  path: snap
                """)
        #expect(try Ferry.run(["plan", "check", s.plan]).status == 0, "snapshot.path may not exist before the hook")
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(try String(contentsOfFile: hookLog, encoding: .utf8) == "it \(snap)\n")
        #expect(TreeCompare.differences(snap, s.destination) == [])
        // A change to the live tree after the snapshot is not in this copy.
        try TreeGen.write(s.source + "/after-snapshot.txt", size: 10, seed: 1)
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/after-snapshot.txt"))
        let st = try s.json(try s.ferry("status", "PLAN", "--json"))
        #expect(st["phase"] as? String == "ready")
    }

    @Test func failingSnapshotHookStopsBeforeAnythingIsCopied() throws {
        let s = try Scenario(extra: "snapshot: { hook: \"exit 3\" }")
        try TreeGen.make(at: s.source, files: 5)
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 3)
        #expect(r.stderr.contains("snapshot hook failed (exit status 3)"))
        #expect(!FileManager.default.fileExists(atPath: s.destination))
    }

    @Test func bandwidthLimitHoldsTheRateDown() throws {
        let s = try Scenario(chunkSize: "1MiB", concurrency: 4, bandwidth: "16MiB/s")
        try TreeGen.make(at: s.source, files: 0, large: [32 << 20])
        let (p, _, _) = try Ferry.start(["run", s.plan])
        // The rate is measured at the destination over a window past the initial burst: the partial file's size
        // when it passes 8 MiB and when it passes 24 MiB.
        func written() -> Int64 {
            let dir = s.destination + "/large"
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            return names.filter { $0.hasSuffix(".part") || $0 == "big-0.bin" }.reduce(0) { total, name in
                var st = stat()
                return total + (lstat(dir + "/" + name, &st) == 0 ? Int64(st.st_size) : 0)
            }
        }
        var t1 = Date(), t2 = Date()
        var b1: Int64 = 0, b2: Int64 = 0
        #expect(
            waitUntil(timeout: 30) {
                b1 = written(); t1 = Date(); return b1 >= 8 << 20
            })
        #expect(
            waitUntil(timeout: 30) {
                b2 = written(); t2 = Date(); return b2 >= 24 << 20
            })
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let rate = Double(b2 - b1) / t2.timeIntervalSince(t1) / 1_048_576
        print("bandwidth test: measured \(rate) MiB/s over \(t2.timeIntervalSince(t1)) s against a 16 MiB/s limit")
        #expect(rate > 16 * 0.8 && rate < 16 * 1.2, "measured \(rate) MiB/s")
    }

    @Test func sampledVerifyRotatesThroughTheTree() throws {
        let s = try Scenario(extra: "verify: { mode: sample, sample: 25% }")
        try TreeGen.make(at: s.source, files: 400)
        #expect(try s.ferry("run", "PLAN").status == 0)
        var rounds: [Int] = []
        for _ in 0..<3 {
            let j = try s.json(try s.ferry("verify", "PLAN", "--json"))
            #expect(j["mode"] as? String == "sample")
            rounds.append(j["files_content_checked"] as? Int ?? -1)
        }
        for n in rounds { #expect(n > 50 && n < 160, "about a quarter of 404 files hashed per round: \(rounds)") }
        // A corrupted file is found by the round whose slice holds it: within 1/rate rounds, always.
        let victim = s.destination + "/d0/e0/f85.dat"
        var st = stat()
        lstat(victim, &st)
        #expect(st.st_size > 0)
        let fd = open(victim, O_RDWR)
        try #require(fd >= 0)
        var b: UInt8 = 0
        #expect(pread(fd, &b, 1, 0) == 1)
        b ^= 0xFF
        pwrite(fd, &b, 1, 0)
        var times = [st.st_atim, st.st_mtim]
        futimens(fd, &times)
        close(fd)
        var found = false
        for _ in 0..<4 where !found {
            let r = try s.ferry("verify", "PLAN")
            found = r.status == 1 && r.stdout.contains("d0/e0/f85.dat")
        }
        #expect(found, "four 25% rounds cover every file")
    }
}

@Suite struct MetricsCommandTests {
    @Test func infoDiffAndFillThroughTheCLI() throws {
        let dir = TempDir()
        let a = dir.sub("a.wsp")
        let b = dir.sub("b.wsp")
        #expect(try Ferry.run(["metrics", "create", a, "60s:1d,600s:7d", "--aggregation", "sum"]).status == 0)
        #expect(try Ferry.run(["metrics", "create", b, "60s:1d,600s:7d", "--aggregation", "sum"]).status == 0)
        let info = try Ferry.run(["metrics", "info", a])
        #expect(info.stdout.contains("aggregationMethod: sum"))
        #expect(info.stdout.contains("secondsPerPoint: 600"))
        let now = 1_700_000_000
        #expect(try Ferry.run(["metrics", "update", a, "--now", "\(now)", "\(now - 120):1.5", "\(now - 60):0"]).status == 0)
        let diff = try Ferry.run(["metrics", "diff", a, b, "--now", "\(now)"])
        #expect(diff.status == 1)
        #expect(diff.stdout.contains("2 only in"))
        let fill = try Ferry.run(["metrics", "fill", a, b, "--now", "\(now)"])
        #expect(fill.status == 0, "\(fill.all)")
        #expect(fill.stdout.contains("archive 60s: 2 points filled"))
        #expect(try Ferry.run(["metrics", "diff", a, b, "--now", "\(now)"]).status == 0)
    }

    @Test func corruptFileIsAClearError() throws {
        let dir = TempDir()
        let bad = dir.sub("bad.wsp")
        try Data([0, 0, 0, 1, 0, 0]).write(to: URL(fileURLWithPath: bad))
        let r = try Ferry.run(["metrics", "info", bad])
        #expect(r.status == 3)
        #expect(r.stderr.contains("bad.wsp: corrupt Whisper file at byte 6: truncated header"))
    }
}
