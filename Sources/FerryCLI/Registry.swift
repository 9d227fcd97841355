import FerryCore
import FerryLocal
import FerryGraphite

/// The composition root: the one place that knows every concrete store kind and builds it from a plan.
enum Registry {
    static let storeKinds: [StoreKindSchema] = [
        StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true),
        StoreKindSchema(kind: "whisper", keys: ["path"], required: ["path"], pathIsLocal: true),
    ]

    /// Source → destination kinds this build can move.
    static let pairs: Set<String> = ["fs>fs", "whisper>whisper"]

    static let planned: [String: String] = [
        "ceres": "is planned (Ceres trees) but not implemented in this version of ferry; supported: fs, whisper",
        "s3": "is planned (buckets) but not implemented in this version of ferry; supported: fs",
        "remote": "is planned (ferry serve) but not implemented in this version of ferry; supported: fs",
        "tap:carbon": "is planned (Carbon dual-write tap) but not implemented in this version of ferry",
        "tap:s3": "is planned (S3 dual-write proxy) but not implemented in this version of ferry",
        "tap:fs-journal": "is planned (filesystem change journal) but not implemented in this version of ferry",
    ]

    static var loader: PlanLoader {
        PlanLoader(storeKinds: storeKinds, tapKinds: [], plannedKinds: planned, pairs: pairs)
    }

    /// The store a plan's side names. `readRoot` overrides the path (the snapshot path for the source).
    static func store(_ spec: StoreSpec, readRoot: String? = nil) throws -> any Store {
        switch spec.kind {
        case "fs":
            guard let path = readRoot ?? spec.path else { throw FerryError(.invalidPlan, "fs store without a path") }
            return LocalStore(root: path)
        case "whisper":
            guard let path = readRoot ?? spec.path else { throw FerryError(.invalidPlan, "whisper store without a path") }
            return WhisperTreeStore(root: path)
        default:
            throw FerryError(.invalidPlan, "store kind '\(spec.kind)' is not available in this build")
        }
    }
}
