import FerryCore
import Foundation
import Testing

/// docs/metrics.md and docs/grafana-dashboard.json name only metrics ferry exports, and the page lists them all.
@Suite struct TelemetryDocsTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Every `ferry_…` word in `text`.
    static func names(_ text: String) -> Set<String> {
        let regex = try! NSRegularExpression(pattern: "ferry_[a-z_]+")
        let ns = text as NSString
        return Set(regex.matches(in: text, range: NSRange(location: 0, length: ns.length)).map { ns.substring(with: $0.range) })
    }

    @Test func theMetricsPageListsEveryMetricAndNoOther() throws {
        let page = try String(contentsOf: Self.root.appendingPathComponent("docs/metrics.md"), encoding: .utf8)
        let known = Set(Telemetry.catalog.map(\.name))
        #expect(known.count == Telemetry.catalog.count, "a metric is in the catalog twice")
        for m in Telemetry.catalog {
            let row = page.split(separator: "\n").first { $0.hasPrefix("| `\(m.name)` |") }
            #expect(row != nil, "docs/metrics.md has no row for \(m.name)")
            if let row { #expect(row.contains("| \(m.kind.rawValue) |"), "\(m.name) is a \(m.kind.rawValue): \(row)") }
        }
        let unknown = Self.names(page).subtracting(known)
        #expect(unknown.isEmpty, "docs/metrics.md names metrics ferry does not export: \(unknown.sorted())")
        for m in Telemetry.catalog {
            #expect(
                m.kind == .counter ? m.name.hasSuffix("_total") : !m.name.hasSuffix("_total"), "\(m.name): counters, and only counters, end in _total"
            )
        }
    }

    @Test func everyDashboardExpressionUsesOnlyExportedMetrics() throws {
        let data = try Data(contentsOf: Self.root.appendingPathComponent("docs/grafana-dashboard.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        let known = Set(Telemetry.catalog.map(\.name))
        var exprs: [String] = []
        for p in panels {
            for t in (p["targets"] as? [[String: Any]]) ?? [] { if let e = t["expr"] as? String { exprs.append(e) } }
        }
        #expect(exprs.count >= 10, "the dashboard has \(exprs.count) expressions")
        var used = Set<String>()
        for e in exprs {
            let names = Self.names(e)
            #expect(!names.isEmpty, "\(e) uses no ferry metric")
            #expect(names.isSubset(of: known), "\(e) uses \(names.subtracting(known).sorted()), which ferry does not export")
            used.formUnion(names)
        }
        let unused = known.subtracting(used)
        #expect(unused.isEmpty, "the dashboard shows nothing of \(unused.sorted())")
    }
}
