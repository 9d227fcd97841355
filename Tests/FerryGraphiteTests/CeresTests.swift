import FerryTesting
import Foundation
import Testing

@testable import FerryGraphite

/// Reads of the fixtures written by the reference Ceres implementation must equal the reference's own reads.
@Suite struct CeresReferenceTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("testdata/ceres").path

    /// A copy of the fixture tree with the `.ceres-tree/` marker git cannot keep.
    func tree() throws -> TempDir {
        let dir = TempDir("ceres")
        try FileManager.default.copyItem(atPath: Self.fixtures + "/tree", toPath: dir.sub("tree"))
        try FileManager.default.createDirectory(atPath: dir.sub("tree/.ceres-tree"), withIntermediateDirectories: true)
        return dir
    }

    func expected() throws -> [String: [String: Any]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/ceres-expected.json"))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return try #require(json["nodes"] as? [String: [String: Any]])
    }

    @Test func everyNodeReadsAsTheReferenceReadIt() throws {
        let dir = try tree()
        let nodes = try CeresTree.nodes(root: dir.sub("tree"))
        let want = try expected()
        #expect(Set(nodes.map(\.metric)) == Set(want.keys))
        for (metric, path) in nodes {
            let node = try CeresNode(path: path)
            let w = try #require(want[metric])
            let meta = try #require(w["metadata"] as? [String: Any])
            #expect(node.timeStep == meta["timeStep"] as? Int, "\(metric)")
            if let agg = meta["aggregationMethod"] as? String { #expect(node.aggregation.description == agg) }
            let slices = try #require(w["slices"] as? [[String: Int]])
            let mine: [[Int]] = node.slices.map { [$0.startTime, $0.endTime, $0.timeStep] }.sorted { $0[0] < $1[0] }
            let theirs: [[Int]] = slices.map { s -> [Int] in [s["startTime"] ?? -1, s["endTime"] ?? -1, s["timeStep"] ?? -1] }
                .sorted { $0[0] < $1[0] }
            #expect(mine == theirs, "\(metric) slices")
            let read = try #require(w["read"] as? [String: Any])
            let got = try node.read(from: read["fromTime"] as! Int, until: read["untilTime"] as! Int)
            #expect(got.start == read["startTime"] as? Int, "\(metric)")
            #expect(got.end == read["endTime"] as? Int, "\(metric)")
            #expect(got.step == read["timeStep"] as? Int, "\(metric)")
            let values = try #require(read["values"] as? [Any])
            #expect(got.values.count == values.count, "\(metric)")
            var differing = 0
            for (a, b) in zip(got.values, values) where a != (b as? Double) { differing += 1 }
            #expect(differing == 0, "\(metric): \(differing) values differ")
        }
    }

    @Test func aTreeWithoutItsMarkerAndBrokenMetadataAreClearErrors() throws {
        let dir = TempDir("ceres")
        try FileManager.default.copyItem(atPath: Self.fixtures + "/tree", toPath: dir.sub("tree"))
        #expect(throws: CeresError.self) { _ = try CeresTree.nodes(root: dir.sub("tree")) }
        let node = dir.sub("tree/servers/web1/cpu")
        try Data("{\"xFilesFactor\": 0.5}".utf8).write(to: URL(fileURLWithPath: node + "/.ceres-node"))
        do {
            _ = try CeresNode(path: node)
            Issue.record("metadata without timeStep accepted")
        } catch let e as CeresError {
            #expect(e.description.contains("timeStep"))
        }
    }
}

@Suite struct CeresWriteTests {
    @Test func writtenNodesReadBackLastWriteWins() throws {
        let dir = TempDir("ceres-write")
        var node = try CeresNode.create(
            path: dir.sub("a/b"), timeStep: 60, xFilesFactor: 0.5, aggregation: .average, retentions: [(60, 43200)])
        let t0 = 1_700_000_040
        var expected: [Int: Double] = [:]
        var rng = SeededRandom(#function)
        // Batches as carbon would send them, and history written after newer data, with small and large gaps.
        let batches: [[Int]] = [
            Array(stride(from: t0 + 500 * 60, to: t0 + 600 * 60, by: 60)),  // newer data first
            Array(stride(from: t0, to: t0 + 100 * 60, by: 60)),  // older history: an earlier slice
            Array(stride(from: t0 + 130 * 60, to: t0 + 160 * 60, by: 60)),  // gap of 30: NaN-padded
            Array(stride(from: t0 + 300 * 60, to: t0 + 320 * 60, by: 60)),  // gap over 80: a new slice
            Array(stride(from: t0 + 580 * 60, to: t0 + 700 * 60, by: 60)),  // overlaps and extends the newest
            Array(stride(from: t0 + 90 * 60, to: t0 + 520 * 60, by: 97 * 60)),  // straddles several slices
        ]
        for batch in batches {
            let points = batch.map { ($0 + Int.random(in: 0..<60, using: &rng), Double(Int.random(in: -50...50, using: &rng)) / 4) }
            try node.write(points)
            for (t, v) in points { expected[t - t % 60] = v }
        }
        let read = try CeresNode(path: dir.sub("a/b")).read(from: t0, until: t0 + 800 * 60)
        #expect(read.step == 60)
        var mismatches: [String] = []
        for (i, v) in read.values.enumerated() {
            let t = read.start + i * 60
            if v != expected[t] { mismatches.append("\(t): \(String(describing: v)) vs \(String(describing: expected[t]))") }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
        #expect(node.slices.count >= 3, "history before existing data and an over-80-point gap make slices")
    }
}

@Suite struct CarbonSchemaTests {
    @Test func firstMatchingSectionWinsAndCarbonsDefaultsApply() throws {
        let rules = try CarbonSchemas(
            schemasText: """
                [carbon]
                pattern = ^carbon\\.
                retentions = 60:90d
                [web]
                pattern = web
                retentions = 10s:6h,1m:7d,10m:5y
                [catchall]
                pattern = ^servers\\.
                retentions = 1h:1y
                """,
            aggregationText: """
                [counts]
                pattern = \\.count$
                xFilesFactor = 0
                aggregationMethod = sum
                """)
        let web = try #require(try rules.schema(for: "servers.web1.requests.count"))
        #expect(web.archives.map(\.secondsPerPoint) == [10, 60, 600])
        #expect(web.archives.map(\.points) == [2160, 10080, 262_800])
        #expect(web.aggregation == .sum)
        #expect(web.xFilesFactor == 0)
        let carbon = try #require(try rules.schema(for: "carbon.agents.a.cpu"))
        #expect(carbon.archives.map(\.points) == [129_600])
        #expect(carbon.aggregation == .average)
        #expect(carbon.xFilesFactor == 0.5)
        let other = try #require(try rules.schema(for: "apps.latency"))
        #expect(other.archives.map(\.secondsPerPoint) == [60], "carbon's built-in default: 60:7d")
        #expect(other.archives.map(\.points) == [10080])
        #expect(throws: (any Error).self) { _ = try CarbonSchemas(schemasText: "pattern = x\n", aggregationText: nil) }
    }
}
