import Foundation
import FerryCore
import FerryLocal
import FerryGraphite
import FerryS3
import FerryTap

/// The composition root: the one place that knows every concrete store kind and builds it from a plan.
enum Registry {
    static let storeKinds: [StoreKindSchema] = [
        StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true, holdsSpecials: true),
        StoreKindSchema(
            kind: "whisper", keys: ["path", "retentions", "aggregation", "xFilesFactor", "carbon_conf"],
            required: ["path"], pathIsLocal: true),
        StoreKindSchema(kind: "ceres", keys: ["path"], required: ["path"], pathIsLocal: true),
        StoreKindSchema(
            kind: "s3", keys: ["endpoint", "region", "bucket", "prefix", "credentials", "addressing"],
            required: ["endpoint", "bucket", "credentials"], pathIsLocal: false),
    ]

    static let tapKinds: [TapKindSchema] = [
        TapKindSchema(kind: "carbon", keys: CarbonTapConfig.keys, required: CarbonTapConfig.required),
        TapKindSchema(kind: "s3", keys: S3TapConfig.keys, required: S3TapConfig.required),
    ]

    /// The handle on the plan's tap (nil without one). With `launch`, arming starts `ferry tap PLAN` detached
    /// when it is not running, logging to the tap's directory.
    static func tap(_ plan: Plan, launch: Bool) throws -> TapClient? {
        guard let spec = plan.tap else { return nil }
        let (dir, socket): (String, String)
        switch spec.kind {
        case "carbon":
            let config = try CarbonTapConfig(plan: plan)
            (dir, socket) = (config.directory, config.controlSocket)
        case "s3":
            let config = try S3TapConfig(plan: plan)
            (dir, socket) = (config.directory, config.controlSocket)
        default:
            throw FerryError(.invalidPlan, "tap kind '\(spec.kind)' is not available in this build")
        }
        let planFile = plan.file
        let log = dir + "/tap.log"
        let launcher: (@Sendable () throws -> Void)? =
            launch
            ? { @Sendable in
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
                _ = try spawnDetached(executable: exe, arguments: ["tap", "run", planFile], log: log)
            } : nil
        return TapClient(socketPath: socket, launcher: launcher)
    }

    /// Source → destination kinds this build can move.
    static let pairs: Set<String> = ["fs>fs", "whisper>whisper", "ceres>whisper", "whisper>ceres", "fs>s3", "s3>fs", "s3>s3"]

    static let planned: [String: String] = [
        "remote": "is planned (ferry serve) but not implemented in this version of ferry; supported: fs",
        "tap:fs-journal": "is planned (filesystem change journal) but not implemented in this version of ferry",
    ]

    static var loader: PlanLoader {
        PlanLoader(storeKinds: storeKinds, tapKinds: tapKinds, plannedKinds: planned, pairs: pairs)
    }

    /// The Whisper schema a Ceres source converts to: the destination's `retentions` (+ `aggregation`,
    /// `xFilesFactor`), or carbon's own conf files under `carbon_conf`, applied per metric as carbon does.
    static func schemaSource(_ plan: Plan) throws -> @Sendable (String) throws -> WhisperSchema? {
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

    static func source(_ plan: Plan) throws -> any Store {
        if plan.source.kind == "ceres" {
            guard let path = plan.snapshot.path ?? plan.source.path else { throw FerryError(.invalidPlan, "ceres store without a path") }
            return CeresTreeStore(root: path, schemaFor: try schemaSource(plan))
        }
        return try store(plan.source, readRoot: plan.snapshot.path ?? plan.source.path, plan: plan)
    }

    /// Every problem the stores and the tap find in a plan the loader accepted, each message starting with the
    /// field it is about, so that it can be located.
    static func problems(_ plan: Plan) -> [String] {
        var out: [String] = []
        func attempt(_ body: () throws -> Void) {
            do {
                try body()
            } catch let e as FerryError {
                for m in e.message.components(separatedBy: "; ") where !out.contains(m) { out.append(m) }
            } catch {
                out.append("\(error)")
            }
        }
        attempt { _ = try source(plan) }
        attempt { _ = try store(plan.destination, plan: plan) }
        attempt { _ = try tap(plan, launch: false) }
        return out
    }

    /// The store a plan's side names. `readRoot` overrides the path (the snapshot path for the source).
    static func store(_ spec: StoreSpec, readRoot: String? = nil, plan: Plan) throws -> any Store {
        let side = readRoot != nil || spec.identity == plan.source.identity && spec.identity != plan.destination.identity
            ? "source" : "destination"
        switch spec.kind {
        case "s3":
            let o = spec.options
            var problems: [String] = []
            guard let endpoint = o["endpoint"], let bucket = o["bucket"], let creds = o["credentials"] else {
                throw FerryError(.invalidPlan, "\(side): an s3 store needs endpoint, bucket and credentials")
            }
            if plan.copy.chunkSize < 5 * 1_048_576 {
                problems.append("copy.chunk_size: is the multipart part size for S3: at least 5MiB")
            }
            let addressingName = o["addressing"] ?? "path"
            let addressing = S3Addressing(rawValue: addressingName)
            if addressing == nil {
                problems.append("\(side).addressing: expected path or virtual, got '\(addressingName)'")
            } else if addressing == .virtual, let why = S3Client.virtualHostable(bucket: bucket, endpoint: endpoint) {
                problems.append("\(side).addressing: \(why)")
            }
            var resolved: S3Credentials?
            do {
                resolved = try CredentialSource.resolve(creds, baseDirectory: PathUtil.directory(of: plan.file))
            } catch let e as FerryError {
                problems.append("\(side).credentials: \(e.message)")
            }
            guard problems.isEmpty, let addressing, let credentials = resolved else {
                throw FerryError(.invalidPlan, problems.joined(separator: "; "))
            }
            return S3Store(
                endpoint: endpoint, region: o["region"] ?? "auto", bucket: bucket, prefix: o["prefix"] ?? "",
                credentials: credentials, partSize: plan.copy.chunkSize, addressing: addressing)
        case "fs":
            guard let path = readRoot ?? spec.path else { throw FerryError(.invalidPlan, "fs store without a path") }
            // Links are followed only at the source, and only when the plan says so.
            return LocalStore(root: path, followSymlinks: readRoot != nil && plan.copy.symlinks == .follow)
        case "whisper":
            guard let path = readRoot ?? spec.path else { throw FerryError(.invalidPlan, "whisper store without a path") }
            return WhisperTreeStore(root: path)
        case "ceres":
            guard let path = spec.path else { throw FerryError(.invalidPlan, "ceres store without a path") }
            return CeresDestinationStore(root: path)
        default:
            throw FerryError(.invalidPlan, "store kind '\(spec.kind)' is not available in this build")
        }
    }
}
