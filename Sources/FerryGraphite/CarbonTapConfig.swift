public import FerryCore
public import FerryTap
import Foundation

/// The settings of `tap: {kind: carbon, ...}`, validated.
public struct CarbonTapConfig: Sendable {
    /// Plaintext protocol on TCP and UDP.
    public var listen: HostPort
    public var listenPickle: HostPort?
    public var udp: Bool = true
    public var old: HostPort
    public var new: HostPort
    /// Where the journal, cursors and mode live.
    public var directory: String
    /// The control socket (`ferry tap ctl`).
    public var controlSocket: String
    public var spoolLimit: UInt64 = 10 * 1_073_741_824
    public var segmentSize: UInt64 = 64 * 1_048_576
    public var fsync: FsyncPolicy = .interval(1)
    /// Lines per second when a backlog is replayed (0: unlimited).
    public var replayRate: Double = 100_000
    public var maxLineLength: Int = 4096
    public var maxPickleMessage: Int = 1_048_576
    public var redeliver: Double = 5
    public var fenceTimeout: Double = 60

    /// Keys a carbon tap accepts in a plan, for the loader's checks.
    public static let keys: Set<String> = [
        "listen", "listen_pickle", "udp", "old", "new", "spool_dir", "control", "spool_limit", "segment_size", "fsync",
        "replay_rate", "max_line_length", "max_pickle_message", "redeliver", "fence_timeout",
    ]
    public static let required: Set<String> = ["listen", "old", "new"]

    public init(listen: HostPort, old: HostPort, new: HostPort, directory: String) {
        self.listen = listen
        self.old = old
        self.new = new
        self.directory = directory
        self.controlSocket = directory + "/control.sock"
    }

    /// Builds the config from a plan, with every problem in one error.
    public init(plan: Plan) throws {
        guard let tap = plan.tap, tap.kind == "carbon" else { throw FerryError(.invalidPlan, "the plan has no carbon tap") }
        let o = tap.options
        var problems: [String] = []
        func hostPort(_ key: String) -> HostPort? {
            guard let v = o[key] else { return nil }
            guard let hp = HostPort.parse(v) else {
                problems.append("tap.\(key): expected host:port, got '\(v)'")
                return nil
            }
            return hp
        }
        let listen = hostPort("listen"), old = hostPort("old"), new = hostPort("new")
        for k in Self.required where o[k] == nil { problems.append("tap.\(k): missing") }
        let dir =
            o["spool_dir"].map { PathUtil.absolute(PathUtil.expandTilde($0), relativeTo: PathUtil.directory(of: plan.file)) }
            ?? plan.stateDirectory + "/tap"
        var c = CarbonTapConfig(
            listen: listen ?? HostPort(host: "127.0.0.1", port: 2003), old: old ?? HostPort(host: "-", port: 1),
            new: new ?? HostPort(host: "-", port: 1), directory: dir)
        c.listenPickle = hostPort("listen_pickle")
        if let v = o["control"] { c.controlSocket = PathUtil.absolute(PathUtil.expandTilde(v), relativeTo: PathUtil.directory(of: plan.file)) }
        if let v = o["udp"] {
            switch v {
            case "true", "yes", "on": c.udp = true
            case "false", "no", "off": c.udp = false
            default: problems.append("tap.udp: expected true or false, got '\(v)'")
            }
        }
        func size(_ key: String, min: Int64) -> UInt64? {
            guard let v = o[key] else { return nil }
            guard let s = Units.parseSize(v), s >= min else {
                problems.append("tap.\(key): expected a size of at least \(Units.formatBytes(min)) (e.g. 10GiB), got '\(v)'")
                return nil
            }
            return UInt64(s)
        }
        func seconds(_ key: String) -> Double? {
            guard let v = o[key] else { return nil }
            guard let d = Units.parseDuration(v), d >= 0 else {
                problems.append("tap.\(key): expected a duration (e.g. 5s, 1m), got '\(v)'")
                return nil
            }
            return d
        }
        if let v = size("spool_limit", min: 1_048_576) { c.spoolLimit = v }
        if let v = size("segment_size", min: 65536) { c.segmentSize = v }
        if let v = size("max_line_length", min: 64) { c.maxLineLength = Int(v) }
        if let v = size("max_pickle_message", min: 1024) { c.maxPickleMessage = Int(v) }
        if let v = o["fsync"] {
            if let p = FsyncPolicy.parse(v) {
                c.fsync = p
            } else {
                problems.append("tap.fsync: expected always, never or an interval (e.g. 1s), got '\(v)'")
            }
        }
        if let v = o["replay_rate"] {
            let digits = v.hasSuffix("/s") ? String(v.dropLast(2)) : v
            if let r = Double(digits), r >= 0 {
                c.replayRate = r
            } else {
                problems.append("tap.replay_rate: expected lines per second (e.g. 50000/s, 0 for unlimited), got '\(v)'")
            }
        }
        if let v = seconds("redeliver") { c.redeliver = v }
        if let v = seconds("fence_timeout") { c.fenceTimeout = v }
        if let l = listen, let o = old, l == o { problems.append("tap.listen: the tap cannot listen on its own upstream 'old' (\(o))") }
        if let l = listen, let n = new, l == n { problems.append("tap.listen: the tap cannot listen on its own upstream 'new' (\(n))") }
        if c.segmentSize > c.spoolLimit { problems.append("tap.segment_size: larger than spool_limit") }
        guard problems.isEmpty else { throw FerryError(.invalidPlan, problems.joined(separator: "; ")) }
        self = c
    }
}
