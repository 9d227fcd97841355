import FerryCore
import Foundation

/// The shape of a Whisper file: archives, xFilesFactor, aggregation method.
public struct WhisperSchema: Sendable, Equatable {
    public var retentions: [Int]  // flattened (secondsPerPoint, points) pairs, for Equatable
    public var xFilesFactor: Float
    public var aggregation: Aggregation

    public init(retentions: [(secondsPerPoint: Int, points: Int)], xFilesFactor: Float, aggregation: Aggregation) {
        self.retentions = retentions.flatMap { [$0.secondsPerPoint, $0.points] }
        self.xFilesFactor = xFilesFactor
        self.aggregation = aggregation
    }

    public var archives: [(secondsPerPoint: Int, points: Int)] {
        stride(from: 0, to: retentions.count, by: 2).map { (retentions[$0], retentions[$0 + 1]) }
    }
}

/// carbon's `storage-schemas.conf` and `storage-aggregation.conf`, applied per metric as carbon applies them:
/// sections in file order, the first whose `pattern` regex is found in the metric name wins.
public struct CarbonSchemas: Sendable {
    struct Rule: Sendable {
        var name: String
        /// Compiled once at parse time: schema lookups run once per metric (a million times in a migration).
        /// A section without a pattern matches nothing.
        var pattern: NSRegularExpression?
        var values: [String: String]
    }
    var schemas: [Rule]
    var aggregations: [Rule]

    public init(directory: String) throws {
        schemas = try Self.parse(directory + "/storage-schemas.conf", required: true)
        aggregations = try Self.parse(directory + "/storage-aggregation.conf", required: false)
    }

    public init(schemasText: String, aggregationText: String?) throws {
        schemas = try Self.parse(text: schemasText, file: "storage-schemas.conf")
        aggregations = try aggregationText.map { try Self.parse(text: $0, file: "storage-aggregation.conf") } ?? []
    }

    static func parse(_ path: String, required: Bool) throws -> [Rule] {
        guard let data = FileManager.default.contents(atPath: path) else {
            if required { throw FerryError(.invalidPlan, "cannot read \(path)") }
            return []
        }
        return try parse(text: String(decoding: data, as: UTF8.self), file: path)
    }

    static func parse(text: String, file: String) throws -> [Rule] {
        var rules: [Rule] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                rules.append(Rule(name: String(line.dropFirst().dropLast()), pattern: nil, values: [:]))
                continue
            }
            guard let eq = line.firstIndex(where: { $0 == "=" || $0 == ":" }), !rules.isEmpty else {
                throw FerryError(.invalidPlan, "\(file):\(n + 1): expected [section] or key = value")
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if key == "pattern" {
                guard let re = try? NSRegularExpression(pattern: value) else {
                    throw FerryError(.invalidPlan, "\(file):\(n + 1): bad pattern \(value)")
                }
                rules[rules.count - 1].pattern = re
            } else {
                rules[rules.count - 1].values[key] = value
            }
        }
        return rules
    }

    static func first(_ rules: [Rule], matching metric: String) -> Rule? {
        rules.first { $0.pattern?.firstMatch(in: metric, range: NSRange(metric.startIndex..., in: metric)) != nil }
    }

    /// carbon's own fallback when no section matches: `defaultSchema`, 7 days of minutely data.
    public static let defaultRetentions = "60:10080"

    /// The schema carbon would create `metric` with (its built-in default when no section matches).
    public func schema(for metric: String) throws -> WhisperSchema? {
        let ret = Self.first(schemas, matching: metric)?.values["retentions"] ?? Self.defaultRetentions
        let agg = Self.first(aggregations, matching: metric)
        let xff = agg?.values["xFilesFactor"].flatMap(Float.init) ?? 0.5
        let method =
            try agg?.values["aggregationMethod"].map { name -> Aggregation in
                guard let m = Aggregation(name: name) else { throw FerryError(.invalidPlan, "unknown aggregationMethod \(name)") }
                return m
            } ?? .average
        return WhisperSchema(retentions: try Retentions.parse(ret), xFilesFactor: xff, aggregation: method)
    }
}

extension Whisper {
    /// A Whisper file in `schema` holding a Ceres node's data as of `now`. Every archive is filled from the
    /// finest data covering it: the node's slices are grouped by step (ceres-maintenance rolls old data up into
    /// coarser slices beside the fine ones), and each archive slot takes the finest step that divides the
    /// archive's step and has enough known points for the schema's xFilesFactor, aggregated with the schema's
    /// method (what carbon would have propagated). Steps that do not divide an archive's step, or are coarser
    /// than it, do not fill it (nothing is invented).
    public static func convert(_ node: CeresNode, schema: WhisperSchema, now: Int) throws -> Whisper {
        var db = try Whisper(retentions: schema.archives, xFilesFactor: schema.xFilesFactor, aggregation: schema.aggregation)
        let steps = node.steps
        for a in db.archives {
            let step = a.secondsPerPoint
            let oldest = now - a.retention
            let first = oldest - mod(oldest, step) + step
            let last = now - mod(now, step)
            guard first <= last else { continue }
            let slots = (last - first) / step + 1
            var filled = [Double?](repeating: nil, count: slots)
            var open = slots
            for s in steps where step % s == 0 && open > 0 {
                let factor = step / s
                let values = try node.read(step: s, from: first, count: slots * factor)
                for k in 0..<slots where filled[k] == nil {
                    let group = Array(values[(k * factor)..<((k + 1) * factor)])
                    let known = group.compactMap { $0 }
                    guard !known.isEmpty, factor == 1 || Double(known.count) / Double(factor) >= Double(schema.xFilesFactor)
                    else { continue }
                    filled[k] = factor == 1 ? known[0] : schema.aggregation.aggregate(known: known, neighbors: group)
                    open -= 1
                }
            }
            var base = 0
            for (k, v) in filled.enumerated() {
                guard let v else { continue }
                let t = first + k * step
                if base == 0 { base = t }
                db.setPoint(at: db.slotOffset(a, base: base, interval: t), t, v)
            }
        }
        return db
    }
}
