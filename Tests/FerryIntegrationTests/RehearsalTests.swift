import FerryTesting
import Foundation
import Testing

/// `ferry rehearse`: every phase on staging, staging's destination back as it was (checked with Python's own
/// walk and SHA-256), and a projection that a real, larger run of the same shape then meets.
@Suite(.serialized) struct RehearsalTests {
    /// Every regular file under `dir`: path, size, mode, mtime and SHA-256, as Python sees them.
    static func image(_ dir: String) throws -> String {
        let script = """
            import hashlib, os, sys
            root = sys.argv[1]
            if not os.path.exists(root): print("ABSENT"); sys.exit(0)
            for d, dirs, files in sorted(os.walk(root)):
                dirs.sort()
                for n in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
                    p = os.path.join(d, n); st = os.lstat(p)
                    h = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) and not os.path.islink(p) else "-"
                    print(os.path.relpath(p, root), st.st_size, oct(st.st_mode), st.st_mtime_ns, h)
            """
        let r = try sh(["python3", "-c", script, dir])
        try #require(r.status == 0, "the image script failed: \(r.out)")
        return r.out
    }

    /// The projection `ferry rehearse` saved in the production plan's state dir, as JSON.
    static func savedProjection(_ dir: TempDir) throws -> [String: Any] {
        try #require(
            JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: dir.sub("state/rehearsal.json")))) as? [String: Any])
    }

    /// A tree of `count` files of the sizes real media stores hold (mostly small), in 20 directories.
    static func tree(_ root: String, count: Int, rng: inout SeededRandom) throws {
        let sizes = [700, 4000, 12000, 30000, 90000]
        for i in 0..<count {
            try TreeGen.write("\(root)/d\(i % 20)/f\(i).bin", size: sizes[Int(rng.next() % 5)] + Int(rng.next() % 512), seed: rng.next())
        }
    }

    @Test func aRehearsalOverTestdataProjectsAndLeavesTheStagingDestinationAsItWas() throws {
        let dir = TempDir("ferry-rehearse")
        var rng = SeededRandom("rehearseTestdata")
        let testdata = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("testdata/demo/source").path
        // Production: a larger tree, only listed. Staging: testdata, into a destination holding older copies of
        // two of its files (the rehearsal overwrites them; the teardown must bring them back).
        try Self.tree(dir.sub("production"), count: 300, rng: &rng)
        let stagingDst = dir.sub("staging-dst")
        let names = try FileManager.default.subpathsOfDirectory(atPath: testdata).filter { p in
            var st = stat()
            return lstat(testdata + "/" + p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
        }.sorted().prefix(2).map { $0 }
        #expect(names.count == 2)
        for n in names { try TreeGen.write(stagingDst + "/" + n, size: 1234, seed: rng.next()) }
        let before = try Self.image(stagingDst)
        let hookLog = dir.sub("hooks.log")
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: prod
            source:      { kind: fs, path: production }
            destination: { kind: fs, path: production-dst }
            state: state
            cutover:
              hooks: [ "echo cutover rehearsal=$FERRY_REHEARSAL >> \(hookLog)" ]
              rollback_hooks: [ "echo rollback rehearsal=$FERRY_REHEARSAL >> \(hookLog)" ]
            """)
        let r = try Ferry.run(["rehearse", plan, "--set", "source.path=\(testdata)", "--set", "destination.path=\(stagingDst)"])
        #expect(r.status == 0, "\(r.all)")
        // The projection, printed and saved in the production plan's state dir.
        for line in ["projected production timeline", "production  300 files", "copy", "verify", "cutover window", "restored"] {
            #expect(r.stdout.contains(line), "no '\(line)' in:\n\(r.stdout)")
        }
        let saved = try Self.savedProjection(dir)
        #expect((saved["production"] as? [String: Any])?["files"] as? Int == 300)
        #expect((saved["phases"] as? [[String: Any]])?.map { $0["name"] as? String } == ["snapshot", "copy", "verify"])
        // The hooks saw the rehearsal; staging's destination is as it was; production was not written.
        let hooks = (try? String(contentsOfFile: hookLog, encoding: .utf8)) ?? ""
        #expect(hooks == "cutover rehearsal=1\nrollback rehearsal=1\n", "\(hooks)")
        #expect(try Self.image(stagingDst) == before)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("production-dst")))
        #expect(!FileManager.default.fileExists(atPath: stagingDst + ".ferry-rehearsal-before"))
        #expect(!FileManager.default.fileExists(atPath: dir.sub("state/ledger.sqlite")), "production's job was created")
        // ferry report on the production plan has no ledger to read, but staging's report shows the projection.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".ferry-rehearsal") }
        #expect(leftovers.isEmpty, "\(leftovers)")

        // A second rehearsal clears the first one's staging job and runs again.
        let again = try Ferry.run(["rehearse", plan, "--set", "source.path=\(testdata)", "--set", "destination.path=\(stagingDst)"])
        #expect(again.status == 0, "\(again.all)")
        #expect(try Self.image(stagingDst) == before)

        // Staging that is production is refused before anything runs.
        let same = try Ferry.run(["rehearse", plan, "--set", "cutover.max_verify_age=2h"])
        #expect(same.status == 2 && same.stderr.contains("shares production's source"), "\(same.all)")
    }

    /// The projection is checked against the real run's time, so both must measure the projection, not the
    /// machine's noise. On tmpfs (no disk: this VM's sync latency alone moved the same copy between 3.1 and 6.0 s),
    /// and each side is the fastest of its tries, taken in turn (rehearsal, run, rehearsal, run, ...): other suites
    /// run beside this one and steal the CPU at random, and in bursts; two rehearsals first and two runs after
    /// once met the busy start of the suite on one side only (projected 4.4 s against 2.3 s).
    @Test func theProjectionMeetsALargerRunOfTheSameShapeWithin25Percent() throws {
        let shm = "/dev/shm"
        try #require(access(shm, W_OK) == 0, "this test needs a writable tmpfs at /dev/shm")
        let dir = TempDir("ferry-project", base: shm)
        var rng = SeededRandom("rehearseProjection")
        try Self.tree(dir.sub("staging"), count: 2000, rng: &rng)
        try Self.tree(dir.sub("production"), count: 8000, rng: &rng)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: projected
            source:      { kind: fs, path: production }
            destination: { kind: fs, path: production-dst }
            state: state
            """)
        var projections: [Double] = []
        var actuals: [Double] = []
        // Load only ever adds time, so the faster of each side approaches what the machine does unloaded; more
        // pairs are taken (up to seven) while the two minima are still apart, as a suite that loads the machine
        // in long bursts makes them (three pairs under load once gave 5.3 s projected against 2.75 s).
        func within(_ p: Double, _ a: Double) -> Bool { abs(p - a) <= 0.25 * a }
        for attempt in 0..<7 {
            if attempt >= 2, let p = projections.min(), let a = actuals.min(), within(p, a) { break }
            let r = try Ferry.run(["rehearse", plan, "--set", "source.path=staging", "--set", "destination.path=staging-dst"])
            #expect(r.status == 0, "\(r.all)")
            print(r.stdout)
            let saved = try Self.savedProjection(dir)
            let phases = try #require(saved["phases"] as? [[String: Any]])
            projections.append(phases.compactMap { $0["projectedSeconds"] as? Double }.reduce(0, +))
            #expect((saved["production"] as? [String: Any])?["files"] as? Int == 8000)

            // The real run from nothing, timed by the test's own clock.
            if attempt > 0 {
                try FileManager.default.removeItem(atPath: dir.sub("production-dst"))
                // A new job: the state dir keeps only the rehearsal's projection and staging job.
                for name in try FileManager.default.contentsOfDirectory(atPath: dir.sub("state")) where !name.hasPrefix("rehearsal") {
                    try FileManager.default.removeItem(atPath: dir.sub("state/" + name))
                }
            }
            let t0 = Date()
            let run = try Ferry.run(["run", plan])
            actuals.append(Date().timeIntervalSince(t0))
            #expect(run.status == 0, "\(run.all)")
        }
        let projected = try #require(projections.min())
        let actual = try #require(actuals.min())
        print("projected \(projections) s, actual \(actuals) s, ratio \(projected / actual)")
        #expect(within(projected, actual), "projected \(projected) s against \(actual) s")

        // ferry report shows the (last) projection.
        let html = dir.sub("report.html")
        #expect(try Ferry.run(["report", plan, "--html", html]).status == 0)
        let page = try String(contentsOfFile: html, encoding: .utf8)
        #expect(page.contains("id=\"projected-total\">\(String(format: "%.2f", projections.last ?? 0))<"), "the report's projection")
    }
}
