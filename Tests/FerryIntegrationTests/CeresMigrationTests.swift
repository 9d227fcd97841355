import Foundation
import Testing
import FerryTesting
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
        let plan = try writePlan(dir.path, """
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
            let archives = try #require(
                try JSONSerialization.jsonObject(with: Data(try WhisperOracle.run(["archives", wsp]).utf8))
                    as? [String: [String: Double]])
            let node = try CeresNode(path: root + "/" + metric.replacingOccurrences(of: ".", with: "/"))
            let read = try node.read(from: t0, until: now)
            var checked = 0
            for step in steps {
                let got = archives[String(step)] ?? [:]
                let factor = step / 60
                let retention = try #require(info.archives.first { $0.secondsPerPoint == step }).retention
                let oldest = now - retention
                let firstAligned = t0 % step == 0 ? t0 : t0 - t0 % step + step
                var t = max(firstAligned, oldest - oldest % step + step)  // older points are beyond the retention
                while t + step <= now - now % step {
                    let i = (t - read.start) / 60
                    let group = (0..<factor).map { i + $0 < read.values.count ? read.values[i + $0] : nil }
                    let known = group.compactMap { $0 }
                    var want: Double? = nil
                    if !known.isEmpty && (factor == 1 || Double(known.count) / Double(factor) >= Double(xff)) {
                        want = factor == 1 ? known[0] : method.aggregate(known: known, neighbors: group)
                    }
                    #expect(got[String(t)] == want, "\(metric) \(step)s at \(t)")
                    checked += 1
                    t += step
                }
            }
            #expect(checked > 100)
        }
        let v = try Ferry.run(["verify", plan])
        #expect(v.status == 0, "\(v.all)")
    }

    @Test func ceresSourceWithoutASchemaIsAPlanError() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("ceres/.ceres-tree"), withIntermediateDirectories: true)
        let plan = try writePlan(dir.path, """
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

        let plan = try writePlan(dir.path, """
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
        #expect(oldCompared > 500, "read \(old.start)...\(old.end) step \(old.step): \(old.values.count) values, \(old.values.compactMap { $0 }.count) known; slices \(cpu.slices.map { "\($0.startTime)@\($0.timeStep) \($0.size)" })")
        let v = try Ferry.run(["verify", plan])
        #expect(v.status == 0, "\(v.all)")
    }
}
