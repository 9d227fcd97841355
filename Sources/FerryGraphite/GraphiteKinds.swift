public import FerryCore

extension WhisperTreeStore {
    /// `kind: whisper`: a tree of Whisper files (carbon-cache's storage/whisper).
    public static let kind = StoreKind(
        schema: StoreKindSchema(
            kind: "whisper", keys: ["path", "retentions", "aggregation", "xFilesFactor", "carbon_conf"], required: ["path"],
            pathIsLocal: true),
        sources: ["whisper", "ceres"]
    ) { ctx in WhisperTreeStore(root: try ctx.requirePath()) }

    /// The Whisper schema a Ceres source converts to: the destination's `retentions` (+ `aggregation`,
    /// `xFilesFactor`), or carbon's own conf files under `carbon_conf`, applied per metric as carbon does.
    public static func schemaSource(_ plan: Plan) throws -> @Sendable (String) throws -> WhisperSchema? {
        let o = plan.destination.options
        if let ret = o["retentions"] {
            // Every problem at once, each starting with its field (located by the CLI).
            var problems: [String] = []
            let method = o["aggregation"] ?? "average"
            let agg = Aggregation(name: method)
            if agg == nil { problems.append("destination.aggregation: unknown method '\(method)'") }
            let xffText = o["xFilesFactor"] ?? "0.5"
            let xff = Float(xffText).flatMap { $0 >= 0 && $0 <= 1 ? $0 : nil }
            if xff == nil { problems.append("destination.xFilesFactor: expected a number in [0, 1], got \(xffText)") }
            var archives: [(secondsPerPoint: Int, points: Int)]?
            do {
                archives = try Retentions.parse(ret)
            } catch let e as FerryError {
                problems.append(e.message.hasPrefix("destination.") ? e.message : "destination.retentions: \(e.message)")
            }
            guard problems.isEmpty, let agg, let xff, let archives else {
                throw FerryError(.invalidPlan, problems.joined(separator: "; "))
            }
            let schema = WhisperSchema(retentions: archives, xFilesFactor: xff, aggregation: agg)
            _ = try Whisper(retentions: schema.archives)  // validates the archive list as whisper.create does
            return { _ in schema }
        }
        if let conf = o["carbon_conf"] {
            let dir = PathUtil.normalize(PathUtil.absolute(PathUtil.expandTilde(conf), relativeTo: PathUtil.directory(of: plan.file)))
            let schemas = try CarbonSchemas(directory: dir)
            return { try schemas.schema(for: $0) }
        }
        throw FerryError(
            .invalidPlan, "destination: a Ceres source needs the Whisper schema: set retentions (e.g. 60s:30d,600s:1y) or carbon_conf")
    }
}

extension CeresTreeStore {
    /// `kind: ceres`: a Ceres tree. As the copy's source it reads each node converted to Whisper (with the
    /// destination's schema); as a destination (or the live source) it writes and reads Ceres nodes.
    public static let kind = StoreKind(
        schema: StoreKindSchema(kind: "ceres", keys: ["path"], required: ["path"], pathIsLocal: true),
        sources: ["whisper"]
    ) { ctx in
        let root = try ctx.requirePath()
        if ctx.role == .source { return CeresTreeStore(root: root, schemaFor: try WhisperTreeStore.schemaSource(ctx.plan)) }
        return CeresDestinationStore(root: root)
    }
}
