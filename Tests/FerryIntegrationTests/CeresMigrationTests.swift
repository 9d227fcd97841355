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
