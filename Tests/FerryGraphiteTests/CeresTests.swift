import Foundation
import Testing
import FerryTesting
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
