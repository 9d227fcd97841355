import FerryTesting
import Foundation
import Testing

/// The metric-store story end to end through `ferry run`: history merged into live files, checked with the
/// reference `whisper` package.
@Suite(.serialized) struct MetricMigrationTests {
    @Test func aDryRunCountsTheMergesAndWarnsOfDifferentSchemas() throws {
        let dir = TempDir("ferry-metrics-dry")
        let src = dir.sub("old/whisper")
        let dst = dir.sub("new/whisper")
        // Files made by the reference whisper package: 30 on the old side; 9 of them exist on the new side, 2 of
        // those with other archives (finer retention) and 1 with another aggregation.
        let template = dir.sub("tpl.wsp")
        try WhisperOracle.run(["create", template, "60:1440,600:4320", "0.5", "average"])
        let finer = dir.sub("finer.wsp")
        try WhisperOracle.run(["create", finer, "10:8640,600:4320", "0.5", "average"])
        let summed = dir.sub("sum.wsp")
        try WhisperOracle.run(["create", summed, "60:1440,600:4320", "0.5", "sum"])
        let fm = FileManager.default
        for i in 0..<30 {
            let rel = "host\(i % 3)/m\(i).wsp"
            try fm.createDirectory(atPath: PathUtil_dir(src + "/" + rel), withIntermediateDirectories: true)
            try fm.copyItem(atPath: template, toPath: src + "/" + rel)
            if i < 9 {
                try fm.createDirectory(atPath: PathUtil_dir(dst + "/" + rel), withIntermediateDirectories: true)
                try fm.copyItem(atPath: i < 2 ? finer : i == 2 ? summed : template, toPath: dst + "/" + rel)
            }
        }
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: metrics
            source:      { kind: whisper, path: old/whisper }
            destination: { kind: whisper, path: new/whisper }
            """)
        let listing = { (try? fm.subpathsOfDirectory(atPath: dst).sorted()) ?? [] }
        let was = listing()
        let dry = try Ferry.run(["run", plan, "--dry-run"])
        #expect(dry.status == 0, "\(dry.all)")
        #expect(dry.stdout.contains("merges       9 of 30 files already exist at the destination and will be merged"), "\(dry.stdout)")
        #expect(dry.stdout.contains("WARNING      3 of 9 files compared differ in schema"), "\(dry.stdout)")
        #expect(
            dry.stdout.contains("host0/m0.wsp: source average xff=0.5 60s:1d,600s:30d, destination average xff=0.5 10s:1d,600s:30d"), "\(dry.stdout)")
        #expect(dry.stdout.contains("destination  probed read-only"), "\(dry.stdout)")
        // The estimate's parts, on the line after it, name the merges (not the merge count's own line).
        let lines = dry.stdout.split(separator: "\n").map(String.init)
        let estimate = lines.firstIndex { $0.hasPrefix("estimate     about ") }
        #expect(
            estimate.map { $0 + 1 < lines.count && lines[$0 + 1].hasPrefix("             ") && lines[$0 + 1].contains("merges ") } == true,
            "\(dry.stdout)")
        #expect(listing() == was, "a dry run wrote at the destination")
        #expect(!fm.fileExists(atPath: dir.sub(".ferry/metrics/ledger.sqlite")))
    }

    @Test func runMergesHistoryIntoLiveFilesAndVerifiesPointByPoint() throws {
        let dir = TempDir("ferry-metrics")
        let src = dir.sub("old/whisper")
        let dst = dir.sub("new/whisper")
        let now = Int(Date().timeIntervalSince1970)
        let aligned = now - now % 600
        let schema = "60:2880,600:4320"
        // Four source templates (different values), 3 days of history up to 10 minutes ago.
        var templates: [String] = []
        for v in 0..<4 {
            let t = dir.sub("tpl-\(v).wsp")
            try WhisperOracle.run(["create", t, schema, "0.5", "average"])
            let pts = stride(from: aligned - 3 * 86400, through: now - 600, by: 60).map { ($0, Double(($0 / 60 + v * 7) % 89)) }
            try WhisperOracle.run(["update", t, String(now), try WhisperOracle.pointsFile(dir.sub("p.json"), pts)])
            templates.append(t)
        }
        // The live side: the last 6 hours dual-written (same values) plus points newer than the snapshot.
        let live = dir.sub("live.wsp")
        try WhisperOracle.run(["create", live, schema, "0.5", "average"])
        // Dual-write starts in the middle of a 600 s interval: the destination's first coarse slot aggregates only
        // the live part until the fill completes the fine archive and it is recomputed.
        let liveStart = aligned - 6 * 3600 - 360  // 6 of the interval's 10 points: enough for xFilesFactor 0.5
        var livePts = stride(from: liveStart, through: now - 600, by: 60).map { ($0, Double(($0 / 60) % 89)) }
        livePts += stride(from: now + 600, through: now + 1800, by: 60).map { ($0, -1.0) }
        try WhisperOracle.run(["update", live, String(now + 1800), try WhisperOracle.pointsFile(dir.sub("l.json"), livePts)])

        let series = 240
        for i in 0..<series {
            let rel = "servers/host\(i % 12)/metric\(i).wsp"
            try FileManager.default.createDirectory(atPath: PathUtil_dir(src + "/" + rel), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: templates[i % 4 == 0 ? 0 : i % 4], toPath: src + "/" + rel)
            if i % 4 == 0 && i % 8 == 0 {  // every 8th series already receives live points at the destination
                try FileManager.default.createDirectory(atPath: PathUtil_dir(dst + "/" + rel), withIntermediateDirectories: true)
                try FileManager.default.copyItem(atPath: live, toPath: dst + "/" + rel)
            }
        }
        let before = dir.sub("before.wsp")
        try FileManager.default.copyItem(atPath: live, toPath: before)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: metrics
            source:      { kind: whisper, path: old/whisper }
            destination: { kind: whisper, path: new/whisper }
            verify:      { mode: full, window: 2d }
            """)
        let r = try Ferry.run(["run", plan])
        #expect(r.status == 0, "\(r.all)")
        #expect(r.stderr.contains("merged=30"), "30 live files merged, the rest copied whole")
        let status = try Ferry.run(["status", plan, "--json"])
        let st = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect(st["files_done"] as? Int == series)
        let snapIso = try #require(st["snapshot_at"] as? String)
        let snapshot = Int(try #require(ISO8601DateFormatter().date(from: snapIso)).timeIntervalSince1970)
        // The oracle's window is the fine archive's retention back from a moment after every merge: each merge
        // keeps what its own clock still holds, so the test's start would count a slot at the oldest edge that
        // aged out before the merge reached it (once: "missed" 1 at exactly two days back).
        let checkedAt = Int(Date().timeIntervalSince1970)

        for i in stride(from: 0, to: series, by: 8) {
            let rel = "servers/host\(i % 12)/metric\(i).wsp"
            let verdict = try #require(
                try JSONSerialization.jsonObject(
                    with: Data(
                        try WhisperOracle.run([
                            "check-fill", src + "/" + rel, before, dst + "/" + rel, String(snapshot), String(checkedAt),
                        ]).utf8)) as? [String: Any])
            #expect(verdict["clobbered"] as? Int == 0, "\(rel): \(verdict)")
            #expect(verdict["missed"] as? Int == 0, "\(rel): \(verdict)")
            #expect(verdict["invented"] as? Int == 0, "\(rel): \(verdict)")
            #expect((verdict["rederived"] as? Int ?? 0) >= 1, "the straddled coarse slot was recomputed: \(verdict)")
            // Points newer than the snapshot, written by the live side, are untouched.
            let archives = try #require(
                try JSONSerialization.jsonObject(with: Data(try WhisperOracle.run(["archives", dst + "/" + rel]).utf8))
                    as? [String: [String: Double]])
            let future = (now + 1200) - (now + 1200) % 60
            let keys = (archives["60"] ?? [:]).keys.compactMap { Int($0) }.filter { $0 > now }.sorted()
            #expect(archives["60"]?[String(future)] == -1.0, "\(rel): \(future) future keys \(keys.prefix(3)) count \(archives["60"]?.count ?? -1)")
        }
        // Files that did not exist at the destination are copied whole, byte for byte.
        #expect(
            TreeCompare.fileDigest(src + "/servers/host1/metric1.wsp")
                == TreeCompare.fileDigest(dst + "/servers/host1/metric1.wsp"))

        // Damage a merged file's history: point-level verify names it.
        let victim = dst + "/servers/host0/metric0.wsp"
        try WhisperOracle.run([
            "update", victim, String(now), try WhisperOracle.pointsFile(dir.sub("bad.json"), [(now - 7200 - now % 60, 12345.0)]),
        ])
        let v = try Ferry.run(["verify", plan])
        #expect(v.status == 1, "\(v.all)")
        #expect(v.stdout.contains("servers/host0/metric0.wsp"))
        #expect(v.stdout.contains("differing"))
    }

    @Test func mixingKindsIsAPlanError() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("a"), withIntermediateDirectories: true)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: mixed
            source:      { kind: whisper, path: a }
            destination: { kind: fs, path: b }
            """)
        let r = try Ferry.run(["plan", "check", plan])
        #expect(r.status == 2)
        #expect(r.stderr.contains("cannot move whisper to fs"))
    }
}

func PathUtil_dir(_ p: String) -> String { (p as NSString).deletingLastPathComponent }

@Suite struct MetricFaultTests {
    @Test func corruptDestinationFileIsReportedAndLeftUntouched() throws {
        let dir = TempDir("ferry-metrics")
        for side in ["old", "new"] {
            try FileManager.default.createDirectory(atPath: dir.sub("\(side)/a"), withIntermediateDirectories: true)
        }
        for name in ["good", "bad"] {
            // The setup is checked too: a failed create would make the rest of the test meaningless.
            let c = try Ferry.run(["metrics", "create", dir.sub("old/a/\(name).wsp"), "60s:1d"])
            #expect(c.status == 0, "\(c.all)")
        }
        let now = Int(Date().timeIntervalSince1970)
        let u = try Ferry.run(["metrics", "update", dir.sub("old/a/bad.wsp"), "\(now - 120):1", "\(now - 60):2"])
        #expect(u.status == 0, "\(u.all)")
        // The destination's copy of bad.wsp is truncated mid-archive.
        let full = try Data(contentsOf: URL(fileURLWithPath: dir.sub("old/a/bad.wsp")))
        try full.prefix(1000).write(to: URL(fileURLWithPath: dir.sub("new/a/bad.wsp")))
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: m
            source:      { kind: whisper, path: old }
            destination: { kind: whisper, path: new }
            """)
        let r = try Ferry.run(["run", plan])
        #expect(r.status == 1, "\(r.all)")
        #expect(r.stdout.contains("a/bad.wsp"))
        #expect(r.stdout.contains("corrupt Whisper file at byte 1000"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.sub("new/a/bad.wsp"))) == full.prefix(1000))
        #expect(FileManager.default.fileExists(atPath: dir.sub("new/a/good.wsp")))
    }
}
