import FerryCore
import FerryEngine
import FerryGraphite
import FerryLive
import FerryLocal
import FerryRemote
import FerryS3
import FerryTap
import Foundation
import Logging

/// The composition root: the one list of the store and tap kinds this build has. Everything else (the plan
/// loader's schemas and allowed pairs, building stores and taps from a plan) derives from it.
enum Backends {
    /// The kinds a far host's `ferry serve` offers: the directory kinds of this build.
    static let served = [LocalStore.kind, WhisperTreeStore.kind, CeresTreeStore.kind]
    static let stores = StoreKinds(served + [S3Store.kind, RemoteStore.kind(carrying: served)])
    static let taps: [TapKind] = [CarbonTap.kind, S3Tap.kind, FsJournalTap.kind(jobs: liveJob)]

    /// Kinds a plan may name that this build does not implement yet, with the reason shown.
    static let planned: [String: String] = [:]

    /// The job the fs-journal tap mirrors through: the plan's stores, no progress output.
    @Sendable static func liveJob(_ plan: Plan, _ logger: Logger) throws -> Job {
        Job(plan: plan, source: try source(plan), destination: try destination(plan), logger: logger, progress: ProgressTracker(output: .none))
    }

    static var loader: PlanLoader {
        PlanLoader(storeKinds: stores.schemas, tapKinds: taps.map(\.schema), plannedKinds: planned, pairs: stores.pairs)
    }

    /// What `ferry serve` opens for a request: a served kind on a directory already confined beneath its root.
    @Sendable static func serve(kind: String, directory: String, role: StoreRole) throws -> any Store {
        guard let k = served.first(where: { $0.name == kind }) else {
            throw FerryError(.invalidPlan, "ferry serve serves \(served.map(\.name).joined(separator: ", ")) stores, not \(kind)")
        }
        let spec = StoreSpec(kind: kind, path: directory)
        let plan = Plan(name: "serve", file: directory + "/serve.yml", source: spec, destination: spec, stateDirectory: directory)
        return try k.make(StoreContext(plan: plan, role: role))
    }

    /// The copy's source (at the snapshot path when the plan has one).
    static func source(_ plan: Plan) throws -> any Store { try stores.make(plan, .source) }

    static func destination(_ plan: Plan) throws -> any Store { try stores.make(plan, .destination) }

    /// The source at its live path, where a rollback's fence must land.
    static func liveSource(_ plan: Plan) throws -> any Store { try stores.make(plan, .liveSource) }

    static func tapKind(_ plan: Plan) throws -> TapKind? {
        guard let spec = plan.tap else { return nil }
        guard let kind = taps.first(where: { $0.name == spec.kind }) else {
            throw FerryError(.invalidPlan, "tap.kind: tap kind '\(spec.kind)' is not available in this build")
        }
        return kind
    }

    /// The handle on the plan's tap (nil without one). With `launch`, arming starts `ferry tap PLAN` detached
    /// when it is not running, logging to the tap's directory.
    static func tap(_ plan: Plan, launch: Bool) throws -> TapClient? {
        guard let kind = try tapKind(plan) else { return nil }
        let where_ = try kind.locate(plan)
        let (dir, socket) = (where_.directory, where_.controlSocket)
        let planFile = plan.file
        let log = dir + "/tap.log"
        let launcher: (@Sendable () throws -> Void)? =
            launch
            ? { @Sendable in
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
                let pid = try spawnDetached(executable: exe, arguments: ["tap", "run", planFile], log: log)
                // Said once, where the operator looks: the tap outlives this command.
                FileHandle.standardError.write(
                    Data("ferry: started the tap in the background: pid \(pid), log \(log); `ferry tap ctl \(planFile) status` shows it\n".utf8))
            } : nil
        return TapClient(socketPath: socket, launcher: launcher)
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
        attempt { _ = try destination(plan) }
        attempt { _ = try tap(plan, launch: false) }
        return out
    }
}
