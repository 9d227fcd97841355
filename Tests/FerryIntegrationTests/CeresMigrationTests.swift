import FerryTesting
import Foundation
import Testing

@testable import FerryGraphite

/// Ceres → Whisper through `ferry run`, with carbon's own schema rules, checked with the reference `whisper`.
@Suite(.serialized) struct CeresMigrationTests {
    /// Writes a slice file: big-endian doubles, NaN for no value.
    func slice(_ node: String, start: Int, step: Int, _ values: [Double?]) throws {
        var bytes: [UInt8] = []
        for v in values {
            let bits = (v ?? .nan).bitPattern
            for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: bits >> (56 - 8 * k))) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: "\(node)/\(start)@\(step).slice"))
    }

    func node(_ root: String, _ metric: String, meta: String) throws -> String {
        let dir = root + "/" + metric.replacingOccurrences(of: ".", with: "/")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(meta.utf8).write(to: URL(fileURLWithPath: dir + "/.ceres-node"))
        return dir
    }

    @Test func ceresTreeBecomesWhisperWithCarbonsSchemaRules() throws {
        let dir = TempDir("ferry-ceres")
        let root = dir.sub("ceres")
        try FileManager.default.createDirectory(atPath: root + "/.ceres-tree", withIntermediateDirectories: true)
        let now = Int(Date().timeIntervalSince1970)
        let t0 = now - now % 600 - 36 * 3600
        let full = "{\"timeStep\": 60, \"xFilesFactor\": 0.5, \"aggregationMethod\": \"average\", \"retentions\": [[60, 43200]]}"
        // servers.web1.cpu: a gap inside the slice, a gap over 80 points (second slice), a NaN run.
        let cpu = try node(root, "servers.web1.cpu", meta: full)
        try slice(cpu, start: t0, step: 60, (0..<600).map { $0 % 37 == 5 ? nil : Double($0 % 50) * 1.5 })
        try slice(cpu, start: t0 + 800 * 60, step: 60, (0..<400).map { $0 < 20 ? nil : Double($0) - 100 })
        // servers.web1.load.max: an older slice shadowed by a newer one that starts inside it.
        let load = try node(root, "servers.web1.load.max", meta: "{\"timeStep\": 60}")
        try slice(load, start: t0, step: 60, (0..<300).map { Double($0 % 7) })
        try slice(load, start: t0 + 200 * 60, step: 60, (0..<300).map { $0 % 4 == 0 ? 0.0 : -Double($0) })
        let other = try node(root, "apps.api.latency", meta: full)
        try slice(other, start: t0, step: 60, (0..<1800).map { Double($0 % 11) / 4 })

        let conf = dir.sub("carbon")
        try FileManager.default.createDirectory(atPath: conf, withIntermediateDirectories: true)
        try """
        # as in /etc/carbon/storage-schemas.conf
        [carbon]
        pattern = ^carbon\\.
        retentions = 60:90d

        [servers]
        pattern = ^servers\\.
        retentions = 60s:2d,600s:30d

        [default]
        pattern = .*
        retentions = 60s:1d,3600s:30d
        """.write(toFile: conf + "/storage-schemas.conf", atomically: true, encoding: .utf8)
        try """
        [max]
        pattern = \\.max$
        xFilesFactor = 0.1
        aggregationMethod = max

        [default_average]
        pattern = .*
        xFilesFactor = 0.5
        aggregationMethod = average
        """.write(toFile: conf + "/storage-aggregation.conf", atomically: true, encoding: .utf8)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: ceres
            source:      { kind: ceres, path: ceres }
            destination: { kind: whisper, path: whisper, carbon_conf: carbon }
            """)
        #expect(try Ferry.run(["plan", "check", plan]).status == 0)
        let r = try Ferry.run(["run", plan])
        #expect(r.status == 0, "\(r.all)")

        let cases: [(String, [Int], Aggregation, Float)] = [
            ("servers.web1.cpu", [60, 600], .average, 0.5),
            ("servers.web1.load.max", [60, 600], .max, 0.1),
            ("apps.api.latency", [60, 3600], .average, 0.5),
        ]
        for (metric, steps, method, xff) in cases {
            let wsp = dir.sub("whisper/" + metric.replacingOccurrences(of: ".", with: "/") + ".wsp")
            let info = try Whisper(path: wsp)
            #expect(info.archives.map(\.secondsPerPoint) == steps, "\(metric)")
            #expect(info.aggregation == method, "\(metric)")
            #expect(info.xFilesFactor == xff, "\(metric)")
            // Expected values from the independent oracle (its own slice reader and whisper's aggregation).
            let retentions = info.archives.map { ($0.secondsPerPoint, $0.points) }
            let want = try expected(
                root + "/" + metric.replacingOccurrences(of: ".", with: "/"), now: now,
                retentions: retentions.map { "\($0.0):\($0.1)" }.joined(separator: ","), xff: xff, method: method.description)
            let compared = try compareArchives(wsp, want, now: now, retentions: retentions)
            let checked = compared.values.reduce(0, +)
            #expect(checked > 100)
        }
        let v = try Ferry.run(["verify", plan])
        #expect(v.status == 0, "\(v.all)")
    }

    /// The archives the conversion must produce, from testdata/oracle/ceres_expect.py (independent of ferry).
    func expected(_ node: String, now: Int, retentions: String, xff: Float, method: String) throws -> [String: [String: Double]] {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("testdata/oracle/ceres_expect.py").path
        let out = try pythonOutput(
            "import subprocess; sys.stdout.write(subprocess.run(['python3', \(String(reflecting: script)), "
                + "\(String(reflecting: node)), '\(now)', '\(retentions)', '\(xff)', '\(method)'], check=True, "
                + "capture_output=True, text=True).stdout)")
        return try #require(try JSONSerialization.jsonObject(with: Data(out)) as? [String: [String: Double]])
    }

    /// Compares what the reference `whisper` reads from `wsp` with the oracle's expectation, slot by slot, away
    /// from the retention window's edges (the two sides may see a minute turn); returns the slots compared per step.
    func compareArchives(_ wsp: String, _ want: [String: [String: Double]], now: Int, retentions: [(Int, Int)]) throws -> [Int: Int] {
        let got = try #require(
            try JSONSerialization.jsonObject(with: Data(try WhisperOracle.run(["archives", wsp]).utf8)) as? [String: [String: Double]])
        var compared: [Int: Int] = [:]
        for (step, points) in retentions {
            let oldest = now - step * points + 3 * step
            let newest = now - 3 * step
            let g = got[String(step)] ?? [:]
            let w = want[String(step)] ?? [:]
            var t = oldest - oldest % step
            while t <= newest {
                #expect(
                    g[String(t)] == w[String(t)],
                    "\(wsp) \(step)s at \(t): got \(String(describing: g[String(t)])), want \(String(describing: w[String(t)]))")
                if w[String(t)] != nil { compared[step, default: 0] += 1 }
                t += step
            }
        }
        return compared
    }

    @Test func rolledUpOverlappingAndOldOnlyNodesFillEveryArchiveFromTheFinestData() throws {
        let dir = TempDir("ferry-ceres-rollup")
        let root = dir.sub("ceres")
        try FileManager.default.createDirectory(atPath: root + "/.ceres-tree", withIntermediateDirectories: true)
        let now = Int(Date().timeIntervalSince1970)
        let h = now - now % 3600
        let meta = "{\"timeStep\": 60, \"xFilesFactor\": 0.5, \"aggregationMethod\": \"average\"}"
        // Fine data for the last 12 hours, and ceres-maintenance's 600 s rollup of days 2 to 20 beside it.
        let both = try node(root, "roll.both", meta: meta)
        try slice(both, start: h - 12 * 3600, step: 60, (0..<720).map { $0 % 29 == 3 ? nil : Double($0 % 17) })
        let rolled: [Double?] = (0..<(18 * 144)).map { (i: Int) -> Double? in i % 13 == 0 ? nil : Double(i % 23) / 2 }
        try slice(both, start: h - 20 * 86400, step: 600, rolled)
        // Overlaps: a newer fine slice starts inside an older one; a rollup covers part of the fine data too.
        let overlap = try node(root, "roll.overlap", meta: meta)
        try slice(overlap, start: h - 10 * 3600, step: 60, (0..<480).map { Double($0 % 9) })
        let newer: [Double?] = (0..<300).map { (i: Int) -> Double? in i % 5 == 0 ? nil : -Double(i % 7) }
        try slice(overlap, start: h - 6 * 3600, step: 60, newer)
        try slice(overlap, start: h - 15 * 3600, step: 600, (0..<60).map { Double($0) * 10 })
        // Old data only, rolled up: the 60 s archive stays empty, the 600 s one is filled.
        let old = try node(root, "roll.old", meta: meta)
        try slice(old, start: h - 25 * 86400, step: 600, (0..<(20 * 144)).map { Double($0 % 31) })
        let retentions = "60s:1d,600s:30d"
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: rollup
            source:      { kind: ceres, path: ceres }
            destination: { kind: whisper, path: whisper, retentions: "\(retentions)", aggregation: average, xFilesFactor: 0.5 }
            """)
        let r = try Ferry.run(["run", plan])
        #expect(r.status == 0, "verify compares with the source read independently, not with the conversion: \(r.all)")
        let archives = [(60, 1440), (600, 4320)]
        for (metric, node) in [("roll/both", both), ("roll/overlap", overlap), ("roll/old", old)] {
            let want = try expected(node, now: now, retentions: "60:1440,600:4320", xff: 0.5, method: "average")
            let compared = try compareArchives(dir.sub("whisper/\(metric).wsp"), want, now: now, retentions: archives)
            #expect((compared[600] ?? 0) > 20, "\(metric): the 600 s archive is filled (\(compared))")
            if metric == "roll/old" { #expect(compared[60] == nil) } else { #expect((compared[60] ?? 0) > 100, "\(metric)") }
            if metric == "roll/both" { #expect((compared[600] ?? 0) > 2000, "rolled-up history reaches the 600 s archive") }
        }
        // A point changed at the destination is caught by the independent comparison.
        let wsp = dir.sub("whisper/roll/both.wsp")
        let t = now - 3 * 86400 - (now - 3 * 86400) % 600
        try WhisperOracle.run(["update", wsp, String(now), try WhisperOracle.pointsFile(dir.sub("p.json"), [(t, 12345.0)])])
        let v = try Ferry.run(["verify", plan])
        #expect(v.status == 1, "\(v.all)")
        #expect(v.stdout.contains("roll/both.wsp") && v.stdout.contains("differing"), "\(v.stdout)")
    }

    @Test func ceresSourceWithoutASchemaIsAPlanError() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("ceres/.ceres-tree"), withIntermediateDirectories: true)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: c
            source:      { kind: ceres, path: ceres }
            destination: { kind: whisper, path: whisper }
            """)
        let r = try Ferry.run(["plan", "check", plan])
        #expect(r.status == 2)
        #expect(r.stderr.contains("retentions"))
    }
}

@Suite(.serialized) struct WhisperToCeresTests {
    @Test func whisperTreeBecomesCeresKeepingEveryArchivesPrecision() throws {
        let dir = TempDir("ferry-w2c")
        let now = Int(Date().timeIntervalSince1970)
        let src = dir.sub("whisper/servers/web1")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        for name in ["cpu", "mem"] {
            let f = src + "/\(name).wsp"
            try WhisperOracle.run(["create", f, "60:2880,600:4320", "0.5", "average"])
            let pts = stride(from: now - 20 * 86400, through: now - 120, by: 60).map { ($0, Double(($0 / 60) % 53) - (name == "cpu" ? 0 : 9)) }
            var i = 0
            while i < pts.count {  // as carbon received them, a day at a time
                let batch = Array(pts[i..<min(i + 1440, pts.count)])
                try WhisperOracle.run(["update", f, String(batch.last!.0 + 30), try WhisperOracle.pointsFile(dir.sub("p.json"), batch)])
                i += 1440
            }
        }
        // mem already lives at the destination: the last 3 hours dual-written (same values), with a 10-point hole,
        // and points newer than the snapshot that only the live side has.
        let liveNode = dir.sub("ceres/servers/web1/mem")
        var node = try CeresNode.create(path: liveNode, timeStep: 60, xFilesFactor: 0.5, aggregation: .average, retentions: [(60, 2880)])
        let liveStart = now - now % 60 - 3 * 3600
        let hole = (liveStart + 3600)..<(liveStart + 4200)
        try node.write(stride(from: liveStart, to: now - 120, by: 60).filter { !hole.contains($0) }.map { ($0, Double(($0 / 60) % 53) - 9) })
        let future = now - now % 60 + 600
        try node.write(stride(from: future, to: future + 600, by: 60).map { ($0, -7.0) })
        try FileManager.default.createDirectory(atPath: dir.sub("ceres/.ceres-tree"), withIntermediateDirectories: true)

        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: w2c
            source:      { kind: whisper, path: whisper }
            destination: { kind: ceres, path: ceres }
            """)
        let r = try Ferry.run(["run", plan])
        #expect(r.status == 0, "\(r.all)")

        for name in ["cpu", "mem"] {
            let db = try Whisper(path: src + "/\(name).wsp")
            let n = try CeresNode(path: dir.sub("ceres/servers/web1/\(name)"))
            #expect(n.timeStep == 60)
            #expect(n.aggregation == .average)
            // The fine window: every 60 s value of the source (the live points of mem win where they exist).
            let fineFrom = now - 2880 * 60 + 600
            let fine = try n.read(from: fineFrom, until: now - 600)
            #expect(fine.step == 60)
            var diffs = 0
            var compared = 0
            for (k, v) in fine.values.enumerated() {
                let t = fine.start + k * 60
                let want = db.value(db.archives[0], at: t)
                if let want {
                    compared += 1
                    if v != want { diffs += 1 }
                }
            }
            #expect(compared > 2000 && diffs == 0, "\(name): \(diffs) of \(compared) fine values differ")
        }
        let mem = try CeresNode(path: liveNode).read(from: future, until: future + 600)
        #expect(mem.values.allSatisfy { $0 == -7.0 }, "points newer than the snapshot are untouched")
        // Older history survives only at 600 s: it is kept at 600 s, not dropped (new node cpu).
        let cpu = try CeresNode(path: dir.sub("ceres/servers/web1/cpu"))
        #expect(cpu.slices.contains { $0.timeStep == 600 })
        let db = try Whisper(path: src + "/cpu.wsp")
        let oldFrom = now - 15 * 86400 - (now - 15 * 86400) % 600  // Ceres aligns requests to the node's step only
        let old = try cpu.read(from: oldFrom, until: oldFrom + 5 * 86400)
        #expect(old.step == 600)
        var oldCompared = 0
        for (k, v) in old.values.enumerated() {
            let t = old.start + k * 600
            if let want = db.value(db.archives[1], at: t) {
                oldCompared += 1
                #expect(v == want, "600 s value at \(t)")
            }
        }
        #expect(
            oldCompared > 500,
            "read \(old.start)...\(old.end) step \(old.step): \(old.values.count) values, \(old.values.compactMap { $0 }.count) known; slices \(cpu.slices.map { "\($0.startTime)@\($0.timeStep) \($0.size)" })"
        )
        let v = try Ferry.run(["verify", plan])
        #expect(v.status == 0, "\(v.all)")
    }
}

/// The Ceres destination reaches its nodes beneath its root only: a directory of the live tree swapped for a
/// symlink is refused, and the node it points at is never merged into.
@Suite struct CeresConfinementTests {
    @Test func aMergeThroughASymlinkedDirectoryIsRefusedAndTouchesNothingOutside() throws {
        let dir = TempDir("ceres-confine")
        let now = Int(Date().timeIntervalSince1970)
        try FileManager.default.createDirectory(atPath: dir.sub("src/servers"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.sub("dst/.ceres-tree"), withIntermediateDirectories: true)
        let f = dir.sub("src/servers/a.wsp")
        try WhisperOracle.run(["create", f, "60:1440", "0.5", "average"])
        let pts = stride(from: now - 6000, through: now - 120, by: 60).map { ($0, 5.0) }
        try WhisperOracle.run(["update", f, String(now), try WhisperOracle.pointsFile(dir.sub("p.json"), pts)])
        // The node outside the tree holds a few points only: a merge that reached it would add slices or bytes.
        var outside = try CeresNode.create(
            path: dir.sub("outside/a"), timeStep: 60, xFilesFactor: 0.5, aggregation: .average, retentions: [(60, 1440)])
        try outside.write([(now - now % 60 - 600, 1.0)])
        try FileManager.default.createSymbolicLink(atPath: dir.sub("dst/servers"), withDestinationPath: dir.sub("outside"))
        func snapshot() throws -> [String: Data] {
            var out: [String: Data] = [:]
            for name in try FileManager.default.contentsOfDirectory(atPath: dir.sub("outside/a")) {
                out[name] = try Data(contentsOf: URL(fileURLWithPath: dir.sub("outside/a/" + name)))
            }
            return out
        }
        let before = try snapshot()
        #expect(throws: (any Error).self) {
            _ = try CeresDestinationStore(root: dir.sub("dst")).merge(
                "servers/a.wsp", from: WhisperTreeStore(root: dir.sub("src")), until: now, now: now)
        }
        #expect(try snapshot() == before, "the node outside the tree was written")
    }

    /// The Ceres source reads only beneath its root: a node directory reached through a symlinked directory,
    /// and a slice that is a symlink, are refused rather than read (either could name any file on the host).
    @Test func theCeresSourceReadsNothingThroughASymlink() throws {
        let dir = TempDir("ceres-src-confine")
        let now = Int(Date().timeIntervalSince1970)
        let step = now - now % 60
        try FileManager.default.createDirectory(atPath: dir.sub("src/.ceres-tree"), withIntermediateDirectories: true)
        var outside = try CeresNode.create(
            path: dir.sub("outside/a"), timeStep: 60, xFilesFactor: 0.5, aggregation: .average, retentions: [(60, 1440)])
        try outside.write([(step - 600, 1.0)])
        try FileManager.default.createSymbolicLink(atPath: dir.sub("src/servers"), withDestinationPath: dir.sub("outside"))
        // A real node whose only slice is a symlink to a slice outside the tree.
        _ = try CeresNode.create(
            path: dir.sub("src/local/b"), timeStep: 60, xFilesFactor: 0.5, aggregation: .average, retentions: [(60, 1440)])
        let outsideSlice = try FileManager.default.contentsOfDirectory(atPath: dir.sub("outside/a")).first { $0.hasSuffix(".slice") }
        let sliceName = try #require(outsideSlice)
        try FileManager.default.createSymbolicLink(
            atPath: dir.sub("src/local/b/" + sliceName), withDestinationPath: dir.sub("outside/a/" + sliceName))
        let schema = WhisperSchema(retentions: [(60, 1440)], xFilesFactor: 0.5, aggregation: .average)
        let store = CeresTreeStore(root: dir.sub("src")) { _ in schema }
        #expect(throws: (any Error).self) { _ = try store.stat("servers/a.wsp") }
        #expect(throws: (any Error).self) { _ = try store.openReader("servers/a.wsp") }
        var listed: [String] = []
        try store.walk({ listed.append($0.path) }, skipped: { _ in })
        #expect(!listed.contains("servers/a.wsp"), "the walk listed a node behind a symlinked directory: \(listed)")
        #expect(listed.contains("local/b.wsp"))
        let error = #expect(throws: CeresError.self) { _ = try store.openReader("local/b.wsp") }
        #expect(error?.reason.hasPrefix("cannot open slice") == true, "\(String(describing: error))")
    }
}
