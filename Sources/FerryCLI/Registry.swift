import FerryCore
import FerryLocal

/// The composition root: the one place that knows every concrete store kind and builds it from a plan.
enum Registry {
    static let storeKinds: [StoreKindSchema] = [
        StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true)
    ]

    static let planned: [String: String] = [
        "whisper": "is planned (metric stores) but not implemented in this version of ferry; supported: fs",
        "ceres": "is planned (metric stores) but not implemented in this version of ferry; supported: fs",
        "s3": "is planned (buckets) but not implemented in this version of ferry; supported: fs",
        "remote": "is planned (ferry serve) but not implemented in this version of ferry; supported: fs",
        "tap:carbon": "is planned (Carbon dual-write tap) but not implemented in this version of ferry",
        "tap:s3": "is planned (S3 dual-write proxy) but not implemented in this version of ferry",
        "tap:fs-journal": "is planned (filesystem change journal) but not implemented in this version of ferry",
    ]

    static var loader: PlanLoader { PlanLoader(storeKinds: storeKinds, tapKinds: [], plannedKinds: planned) }

    /// The store a plan's side names. `readRoot` overrides the path (the snapshot path for the source).
    static func store(_ spec: StoreSpec, readRoot: String? = nil) throws -> any Store {
        switch spec.kind {
        case "fs":
            guard let path = readRoot ?? spec.path else { throw FerryError(.invalidPlan, "fs store without a path") }
            return LocalStore(root: path)
        default:
            throw FerryError(.invalidPlan, "store kind '\(spec.kind)' is not available in this build")
        }
    }
}
