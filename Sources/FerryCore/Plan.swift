import Foundation

/// A validated migration plan. Paths are absolute: the loader resolves them against the plan file's directory.
public struct Plan: Sendable {
    public var version: Int
    public var name: String
    /// Absolute path of the plan file.
    public var file: String
    public var source: StoreSpec
    public var destination: StoreSpec
    public var snapshot: SnapshotSpec
    public var tap: TapSpec?
    public var copy: CopySpec
    public var verify: VerifySpec
    public var cutover: CutoverSpec
    /// Where the Prometheus endpoints listen (none by default).
    public var metrics = MetricsSpec()
    /// Absolute path of the state directory (ledger, reports).
    public var stateDirectory: String
    /// Where each field's value stands in the plan file ("destination.credentials" → line, column), so that the
    /// stores' and taps' own checks report file:line:column too.
    public var locations: [String: PlanLocation] = [:]

    public init(
        version: Int = 1, name: String, file: String, source: StoreSpec, destination: StoreSpec, snapshot: SnapshotSpec = SnapshotSpec(),
        tap: TapSpec? = nil, copy: CopySpec = CopySpec(), verify: VerifySpec = VerifySpec(), cutover: CutoverSpec = CutoverSpec(),
        stateDirectory: String
    ) {
        self.version = version
        self.name = name
        self.file = file
        self.source = source
        self.destination = destination
        self.snapshot = snapshot
        self.tap = tap
        self.copy = copy
        self.verify = verify
        self.cutover = cutover
        self.stateDirectory = stateDirectory
    }

    /// The part of the plan that the snapshot and the committed chunks depend on. When it changes, a saved job
    /// cannot be resumed: the manifest describes another source or the chunks another layout.
    public var identity: String {
        var parts = ["v\(version)", "source=\(source.identity)", "destination=\(destination.identity)"]
        parts.append("snapshot.path=\(snapshot.path ?? "")")
        parts.append("chunk_size=\(copy.chunkSize)")
        return parts.joined(separator: "\n")
    }
}

public struct PlanLocation: Sendable {
    public var line: Int
    public var column: Int
}

/// Where data comes from or goes to. `kind` picks the store; the remaining keys belong to that kind.
public struct StoreSpec: Sendable {
    public var kind: String
    /// Absolute path for the filesystem-backed kinds.
    public var path: String?
    /// Kind-specific settings other than `kind` and `path`, as plain strings.
    public var options: [String: String]

    public init(kind: String, path: String?, options: [String: String] = [:]) {
        self.kind = kind
        self.path = path
        self.options = options
    }

    public var identity: String {
        let opts = options.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return "\(kind):\(path ?? ""):\(opts)"
    }

    public var displayName: String {
        if let path { return "\(kind):\(path)" }
        if let url = options["url"] { return "\(kind):\(url) \(options["store.kind"] ?? "?"):\(options["store.path"] ?? "?")" }
        if let bucket = options["bucket"] { return "\(kind)://\(bucket)/\(options["prefix"] ?? "")" }
        return kind
    }
}

public struct SnapshotSpec: Sendable {
    /// A shell command run before the manifest is taken (e.g. `btrfs subvolume snapshot -r`).
    public var hook: String?
    /// Where to read the source from instead of its live path (e.g. the read-only snapshot).
    public var path: String?
    public init(hook: String? = nil, path: String? = nil) {
        self.hook = hook
        self.path = path
    }
}

public struct TapSpec: Sendable {
    public var kind: String
    public var options: [String: String]
}

public struct CopySpec: Sendable {
    /// What happens to symbolic links (after rclone's `--links`/`-L` and rsync's `-l`/`-L`).
    public enum SymlinkPolicy: String, Sendable, CaseIterable {
        /// Copied as links (the target text, never followed). The default where the destination holds links.
        case copy
        /// Left out and listed as skipped by policy. The default for a bucket destination.
        case skip
        /// Followed: the file or directory the link points to is copied in its place.
        case follow
    }
    /// What happens to FIFOs, sockets and device nodes. Without a policy they are refused (the run fails).
    public enum SpecialsPolicy: String, Sendable, CaseIterable {
        case skip
        /// Recreated at the destination (fs → fs; device nodes need root).
        case copy
    }
    /// nil: the destination's default (`copy` where links can be held, else `skip`).
    public var symlinks: SymlinkPolicy? = nil
    /// nil: refuse them.
    public var specials: SpecialsPolicy? = nil
    /// Glob patterns (rsync/rclone style) of entries left out; each is listed as skipped by policy.
    public var exclude: [String] = []
    public var chunkSize: Int64 = 8 * 1_048_576
    public var concurrency: Int = 4
    /// `copy.bandwidth`: one rate, or a timetable of rates by time of day.
    public var bandwidthSchedule: BandwidthSchedule = .constant(nil)
    /// Bytes per second in force now, or nil for unlimited. Setting it sets one rate for the whole day.
    public var bandwidth: Int64? {
        get { bandwidthSchedule.rate(at: Date()) }
        set { bandwidthSchedule = .constant(newValue) }
    }
    /// How chunks travel between hosts (a remote store): `zstd` or `none`.
    public var compression: String = "zstd"
    /// The zstd level for `compression: zstd`.
    public var compressionLevel: Int = 3
    /// With `compression: zstd`, Whisper files also try the point codec, archive by archive, where it is smaller.
    public var pointCodec: Bool = true
    /// How long a worker's lease on a page of files holds without renewal (a worker killed with kill -9 has its
    /// files taken over by the others after this).
    public var leaseTTL: Double = 30
    /// Headers set on every object uploaded to an S3 destination (`copy.headers`), names lower-cased, in plan
    /// order. They win over what ferry would set (the type from the extension) and over carried S3 metadata.
    public var headers: [(name: String, value: String)] = []
    public init() {}
}

public struct VerifySpec: Sendable {
    public enum Mode: String, Sendable { case full, sample }
    public var mode: Mode = .full
    /// Fraction of files whose content is hashed in `sample` mode.
    public var sample: Double = 1.0
    /// For metric stores: how far back point-level verify looks (seconds).
    public var window: Double? = nil
    public init() {}
}

public struct CutoverSpec: Sendable {
    public var maxVerifyAge: Double = 3600
    public var maxTapLag: Double? = nil
    public var hooks: [String] = []
    /// Run by `ferry rollback`, in order, before the tap switches back to the old side.
    public var rollbackHooks: [String] = []
    public var rollbackWindow: Double? = nil
    /// The dotted prefix of the fence marker's name (`<namespace>.<job>`: a metric, a bucket key's last part, a
    /// fence file's name).
    public var fenceNamespace: String = FenceToken.defaultNamespace
    public init() {}
}

/// `metrics:`: Prometheus endpoints of `ferry run` and of the plan's tap.
public struct MetricsSpec: Sendable {
    /// `host:port` of `ferry run`'s endpoint.
    public var listen: String?
    /// `host:port` of the tap's endpoint (`ferry tap run`): the tap is its own process.
    public var tapListen: String?
    /// How long `ferry run` keeps serving after the job's last phase, so a last scrape sees the totals.
    public var linger: Double = 0

    public init(listen: String? = nil, tapListen: String? = nil, linger: Double = 0) {
        self.listen = listen
        self.tapListen = tapListen
        self.linger = linger
    }
}
