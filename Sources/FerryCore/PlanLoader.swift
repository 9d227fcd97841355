import Foundation
internal import Yams

/// One precise complaint about a plan: where (file, line, column), which field, and what was expected.
public struct PlanDiagnostic: Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var column: Int?
    public var field: String
    public var message: String

    public var description: String {
        var loc = file
        if let line {
            loc += ":\(line)"
            if let column { loc += ":\(column)" }
        }
        return field.isEmpty ? "\(loc): \(message)" : "\(loc): \(field): \(message)"
    }
}

/// Thrown when a plan has one or more problems; carries all of them, not only the first.
public struct PlanError: Error, CustomStringConvertible, Sendable {
    public var diagnostics: [PlanDiagnostic]
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// What a store kind accepts in a plan, supplied by the composition root (the CLI's registry), so that the core
/// validates keys without knowing any concrete store.
public struct StoreKindSchema: Sendable {
    public var kind: String
    /// Keys other than `kind` that the kind accepts.
    public var keys: Set<String>
    /// Keys that must be present.
    public var required: Set<String>
    /// Whether `path` names a local directory (resolved against the plan's directory and checked).
    public var pathIsLocal: Bool
    /// Whether, as a destination, it holds symbolic links (a bucket does not).
    public var holdsLinks: Bool
    /// Whether, as a destination, it can recreate FIFOs, sockets and device nodes.
    public var holdsSpecials: Bool
    /// Keys whose value is a mapping, with the keys it must hold; each lands in the spec's options as
    /// `key.subkey` (`store: {kind: whisper, path: /x}` → `store.kind`, `store.path`).
    public var nested: [String: Set<String>]
    /// A kind that carries another (a store on another host): the nested key naming the carried store. Which
    /// sources may move into it, and what it can hold, are then those of the carried kind.
    public var carries: String?

    public init(
        kind: String, keys: Set<String>, required: Set<String>, pathIsLocal: Bool, holdsLinks: Bool? = nil,
        holdsSpecials: Bool = false, nested: [String: Set<String>] = [:], carries: String? = nil
    ) {
        self.nested = nested
        self.carries = carries
        self.kind = kind
        self.keys = keys
        self.required = required
        self.pathIsLocal = pathIsLocal
        self.holdsLinks = holdsLinks ?? pathIsLocal
        self.holdsSpecials = holdsSpecials
    }
}

/// What a tap kind accepts in a plan (keys other than `kind`), supplied by the composition root.
public struct TapKindSchema: Sendable {
    public var kind: String
    public var keys: Set<String>
    public var required: Set<String>

    public init(kind: String, keys: Set<String>, required: Set<String>) {
        self.kind = kind
        self.keys = keys
        self.required = required
    }
}

/// Reads and validates YAML plans.
public struct PlanLoader: Sendable {
    public var storeKinds: [String: StoreKindSchema]
    public var tapKinds: [String: TapKindSchema]
    /// Kinds a plan may name that this build does not implement yet, with the reason shown to the operator.
    public var plannedKinds: [String: String]
    /// Allowed "source>destination" kind pairs; nil allows any.
    public var pairs: Set<String>?

    public init(
        storeKinds: [StoreKindSchema], tapKinds: [TapKindSchema] = [], plannedKinds: [String: String] = [:],
        pairs: Set<String>? = nil
    ) {
        self.storeKinds = Dictionary(uniqueKeysWithValues: storeKinds.map { ($0.kind, $0) })
        self.tapKinds = Dictionary(uniqueKeysWithValues: tapKinds.map { ($0.kind, $0) })
        self.plannedKinds = plannedKinds
        self.pairs = pairs
    }

    public func load(file path: String) throws(PlanError) -> Plan {
        let absolute = PathUtil.absolute(path, relativeTo: FileManager.default.currentDirectoryPath)
        guard let data = FileManager.default.contents(atPath: absolute) else {
            let reason = FileManager.default.fileExists(atPath: absolute) ? "cannot be read" : "does not exist"
            throw PlanError(diagnostics: [
                PlanDiagnostic(file: path, line: nil, column: nil, field: "", message: "plan file \(reason)")
            ])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw PlanError(diagnostics: [
                PlanDiagnostic(file: path, line: nil, column: nil, field: "", message: "plan file is not UTF-8 text")
            ])
        }
        return try parse(text, displayPath: path, absolutePath: absolute)
    }

    public func parse(_ text: String, displayPath: String, absolutePath: String) throws(PlanError) -> Plan {
        var ctx = Context(file: displayPath, baseDirectory: PathUtil.directory(of: absolutePath))
        if let bad = Self.aliasAsKey(text) {
            // Yams hashes a key node whole: an alias to nested aliases as a key costs exponential time.
            throw PlanError(diagnostics: [
                PlanDiagnostic(
                    file: displayPath, line: bad.line, column: bad.column, field: "",
                    message: "a YAML alias (*name) used as a mapping key is not allowed in a plan")
            ])
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw PlanError(diagnostics: [Self.diagnostic(for: error, file: displayPath)])
        } catch {
            throw PlanError(diagnostics: [
                PlanDiagnostic(file: displayPath, line: nil, column: nil, field: "", message: "\(error)")
            ])
        }
        guard let root, let top = root.mapping else {
            ctx.fail(root, "", "a plan is a YAML mapping with keys version, name, source, destination, ...")
            throw PlanError(diagnostics: ctx.diagnostics)
        }
        let fields = ctx.fields(
            top,
            at: "",
            allowed: [
                "version", "name", "source", "destination", "snapshot", "tap", "copy", "verify", "cutover", "state", "exclude",
                "metrics",
            ],
            required: ["version", "name", "source", "destination"]
        )

        var version = 1
        if let v = fields["version"] {
            if let n = ctx.int(v, "version") {
                if n != 1 { ctx.fail(v, "version", "only version 1 exists, got \(n)") }
                version = n
            }
        }
        var name = "unnamed"
        if let n = fields["name"], let s = ctx.string(n, "name") {
            if s.isEmpty || s.count > 100 || !s.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) })
                || s.hasPrefix(".")
            {
                ctx.fail(n, "name", "expected letters, digits, '.', '_' or '-' (it names the state directory), got \"\(s)\"")
            } else {
                name = s
            }
        }

        let source = fields["source"].flatMap { storeSpec($0, field: "source", ctx: &ctx, mustExist: true) }
        let destination = fields["destination"].flatMap { storeSpec($0, field: "destination", ctx: &ctx, mustExist: false) }

        var snapshot = SnapshotSpec()
        if let node = fields["snapshot"], let map = ctx.mapping(node, "snapshot") {
            let f = ctx.fields(map, at: "snapshot", allowed: ["hook", "path"], required: [])
            if let h = f["hook"], let s = ctx.nonEmptyString(h, "snapshot.hook") { snapshot.hook = s }
            if let p = f["path"], let s = ctx.nonEmptyString(p, "snapshot.path") {
                let resolved = ctx.resolve(s)
                snapshot.path = resolved
                if snapshot.hook == nil && !PathUtil.isDirectory(resolved) {
                    ctx.fail(p, "snapshot.path", "\(resolved) is not a directory (and no snapshot.hook creates it)")
                }
            }
        }

        var tap: TapSpec?
        if let node = fields["tap"], let map = ctx.mapping(node, "tap") {
            let kindNode = map["kind"]
            if let kindNode, let kind = ctx.string(kindNode, "tap.kind") {
                if let schema = tapKinds[kind] {
                    let f = ctx.fields(map, at: "tap", allowed: schema.keys.union(["kind"]), required: schema.required)
                    var options: [String: String] = [:]
                    for (key, v) in f where key != "kind" {
                        if let s = ctx.string(v, "tap.\(key)") { options[key] = s }
                    }
                    tap = TapSpec(kind: kind, options: options)
                } else if let why = plannedKinds["tap:" + kind] {
                    ctx.fail(kindNode, "tap.kind", "'\(kind)' \(why)")
                } else {
                    ctx.fail(kindNode, "tap.kind", "unknown tap kind '\(kind)' (known: carbon, s3, fs-journal)")
                }
            } else if kindNode == nil {
                ctx.fail(node, "tap", "missing required key 'kind'")
            }
        }

        var copy = CopySpec()
        if let node = fields["copy"], let map = ctx.mapping(node, "copy") {
            let f = ctx.fields(
                map, at: "copy",
                allowed: [
                    "chunk_size", "concurrency", "bandwidth", "compression", "compression_level", "point_codec", "symlinks", "specials", "lease_ttl",
                    "headers",
                ],
                required: [])
            if let v = f["headers"] {
                if let m = v.mapping {
                    for (k, value) in m {
                        let key = k.string ?? ""
                        let name = key.lowercased()
                        let field = "copy.headers.\(key)"
                        guard let text = value.string, !text.isEmpty, text.allSatisfy({ $0.isASCII && $0 >= " " && $0 != "\u{7f}" }) else {
                            ctx.fail(value, field, "expected a non-empty value of printable ASCII characters")
                            continue
                        }
                        guard
                            Self.settableHeaders.contains(name)
                                || (name.hasPrefix("x-amz-meta-") && name.count > 11 && !name.hasPrefix("x-amz-meta-ferry-")
                                    && name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }))
                        else {
                            ctx.fail(
                                k, field,
                                "cannot set header '\(key)': allowed are \(Self.settableHeaders.sorted().joined(separator: ", ")) and x-amz-meta-NAME (not x-amz-meta-ferry-*, which is ferry's own)"
                            )
                            continue
                        }
                        if copy.headers.contains(where: { $0.name == name }) {
                            ctx.fail(k, field, "header '\(name)' is given twice (names are case-insensitive)")
                            continue
                        }
                        copy.headers.append((name, text))
                    }
                } else {
                    ctx.fail(
                        v, "copy.headers",
                        "expected a mapping of header names to values, e.g. { Cache-Control: \"public, max-age=315576000, immutable\" }")
                }
            }
            if let v = f["symlinks"], let s = ctx.string(v, "copy.symlinks") {
                if let policy = CopySpec.SymlinkPolicy(rawValue: s) {
                    copy.symlinks = policy
                } else {
                    ctx.fail(v, "copy.symlinks", "expected copy, skip or follow, got \"\(s)\"")
                }
            }
            if let v = f["specials"], let s = ctx.string(v, "copy.specials") {
                if let policy = CopySpec.SpecialsPolicy(rawValue: s) {
                    copy.specials = policy
                } else {
                    ctx.fail(v, "copy.specials", "expected skip or copy, got \"\(s)\"")
                }
            }
            if let v = f["chunk_size"], let s = ctx.string(v, "copy.chunk_size") {
                if let size = Units.parseSize(s) {
                    if size < 64 * 1024 || size > 1024 * 1_048_576 {
                        ctx.fail(v, "copy.chunk_size", "must be between 64KiB and 1GiB, got \(s)")
                    } else {
                        copy.chunkSize = size
                    }
                } else {
                    ctx.fail(v, "copy.chunk_size", "expected a size such as 8MiB, 512KiB or 1GiB, got \"\(s)\"")
                }
            }
            if let v = f["concurrency"], let n = ctx.int(v, "copy.concurrency") {
                if n < 1 || n > 256 {
                    ctx.fail(v, "copy.concurrency", "must be between 1 and 256, got \(n)")
                } else {
                    copy.concurrency = n
                }
            }
            if let v = f["bandwidth"], let s = ctx.string(v, "copy.bandwidth") {
                switch BandwidthSchedule.parse(s) {
                case .success(let schedule): copy.bandwidthSchedule = schedule
                case .failure(let e): ctx.fail(v, "copy.bandwidth", e.message + " (a timetable is \"08:00,20MiB/s 23:00,off\")")
                }
            }
            if let v = f["lease_ttl"], let s = ctx.string(v, "copy.lease_ttl") {
                if let d = Units.parseDuration(s), d >= 1 {
                    copy.leaseTTL = d
                } else {
                    ctx.fail(v, "copy.lease_ttl", "expected a duration of at least 1s, such as 30s, got \"\(s)\"")
                }
            }
            if let v = f["compression"], let s = ctx.string(v, "copy.compression") {
                // Applies where bytes cross a network (a remote store through ferry serve); a local pair reads
                // and writes directly.
                switch s {
                case "zstd": copy.compression = "zstd"
                case "none", "off": copy.compression = "none"
                default: ctx.fail(v, "copy.compression", "expected zstd or none, got \"\(s)\"")
                }
            }
            if let v = f["point_codec"], let s = ctx.string(v, "copy.point_codec") {
                switch s {
                case "on", "true", "yes": copy.pointCodec = true
                case "off", "false", "no": copy.pointCodec = false
                default: ctx.fail(v, "copy.point_codec", "expected on or off, got \"\(s)\"")
                }
            }
            if let v = f["compression_level"], let s = ctx.string(v, "copy.compression_level") {
                if let n = Int(s), (1...19).contains(n) {
                    copy.compressionLevel = n
                } else {
                    ctx.fail(v, "copy.compression_level", "expected a zstd level from 1 to 19, got \"\(s)\"")
                }
            }
        }

        if let node = fields["exclude"] {
            if let list = node.sequence {
                for item in list {
                    guard let pattern = ctx.nonEmptyString(item, "exclude") else { continue }
                    if let why = GlobPattern.problem(pattern) {
                        ctx.fail(item, "exclude", "\(why): \"\(pattern)\"")
                    } else {
                        copy.exclude.append(pattern)
                    }
                }
            } else {
                ctx.fail(node, "exclude", "expected a list of glob patterns, e.g. [ \"*.tmp\", \"cache/**\" ]")
            }
        }

        var verify = VerifySpec()
        if let node = fields["verify"], let map = ctx.mapping(node, "verify") {
            let f = ctx.fields(map, at: "verify", allowed: ["mode", "sample", "window"], required: [])
            if let v = f["mode"], let s = ctx.string(v, "verify.mode") {
                if let m = VerifySpec.Mode(rawValue: s) {
                    verify.mode = m
                } else {
                    ctx.fail(v, "verify.mode", "expected full or sample, got \"\(s)\"")
                }
            }
            if let v = f["sample"], let s = ctx.string(v, "verify.sample") {
                if let fraction = Units.parseFraction(s) {
                    verify.sample = fraction
                    if verify.mode == .full {
                        ctx.fail(v, "verify.sample", "only applies with mode: sample (mode is full)")
                    }
                } else {
                    ctx.fail(v, "verify.sample", "expected a percentage in (0%, 100%] such as 5%, got \"\(s)\"")
                }
            } else if verify.mode == .sample {
                ctx.fail(f["mode"], "verify.sample", "mode: sample needs a sample rate such as sample: 5%")
            }
            if let v = f["window"], let s = ctx.string(v, "verify.window") {
                if let d = Units.parseDuration(s), d > 0 {
                    verify.window = d
                } else {
                    ctx.fail(v, "verify.window", "expected a duration such as 30d or 12h, got \"\(s)\"")
                }
            }
        }

        var cutover = CutoverSpec()
        if let node = fields["cutover"], let map = ctx.mapping(node, "cutover") {
            let f = ctx.fields(
                map, at: "cutover", allowed: ["max_verify_age", "max_tap_lag", "hooks", "rollback_hooks", "rollback_window", "fence_namespace"],
                required: [])
            if let v = f["fence_namespace"], let s = ctx.nonEmptyString(v, "cutover.fence_namespace") {
                let parts = s.split(separator: ".", omittingEmptySubsequences: false)
                if s.count > 100
                    || parts.contains(where: { $0.isEmpty || !$0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") } }
                    )
                {
                    ctx.fail(
                        v, "cutover.fence_namespace",
                        "expected dotted words of letters, digits, '_' or '-' (a metric name prefix such as ops.ferry), got \"\(s)\"")
                } else {
                    cutover.fenceNamespace = s
                }
            }
            if let v = f["max_verify_age"], let d = ctx.duration(v, "cutover.max_verify_age") { cutover.maxVerifyAge = d }
            if let v = f["max_tap_lag"], let d = ctx.duration(v, "cutover.max_tap_lag") { cutover.maxTapLag = d }
            if let v = f["rollback_window"], let d = ctx.duration(v, "cutover.rollback_window") {
                cutover.rollbackWindow = d
            }
            for key in ["hooks", "rollback_hooks"] {
                guard let v = f[key] else { continue }
                if let seq = v.sequence {
                    for (i, item) in seq.enumerated() {
                        guard let s = ctx.nonEmptyString(item, "cutover.\(key)[\(i)]") else { continue }
                        if key == "hooks" { cutover.hooks.append(s) } else { cutover.rollbackHooks.append(s) }
                    }
                } else {
                    ctx.fail(v, "cutover.\(key)", "expected a list of shell commands, e.g. [ \"systemctl reload nginx\" ]")
                }
            }
        }

        var metrics = MetricsSpec()
        if let node = fields["metrics"], let map = ctx.mapping(node, "metrics") {
            let f = ctx.fields(map, at: "metrics", allowed: ["listen", "tap_listen", "linger"], required: [])
            for key in ["listen", "tap_listen"] {
                guard let v = f[key], let s = ctx.nonEmptyString(v, "metrics.\(key)") else { continue }
                guard Self.isHostPort(s) else {
                    ctx.fail(v, "metrics.\(key)", "expected HOST:PORT such as 127.0.0.1:9108 (port 0 picks a free one), got \"\(s)\"")
                    continue
                }
                if key == "listen" { metrics.listen = s } else { metrics.tapListen = s }
            }
            if let l = metrics.listen, l == metrics.tapListen, !l.hasSuffix(":0") {
                ctx.fail(f["tap_listen"], "metrics.tap_listen", "the tap is its own process: it cannot listen on \(l) too")
            }
            if let v = f["linger"], let d = ctx.duration(v, "metrics.linger") { metrics.linger = d }
        }

        var stateDirectory = ctx.resolve(".ferry/\(name)")
        if let v = fields["state"], let s = ctx.nonEmptyString(v, "state") { stateDirectory = ctx.resolve(s) }

        if let source, let destination, let pairs, !pairs.contains("\(carried(source))>\(carried(destination))") {
            func name(_ spec: StoreSpec) -> String { spec.kind == carried(spec) ? spec.kind : "\(spec.kind) (\(carried(spec)))" }
            ctx.fail(
                fields["destination"], "destination.kind",
                "cannot move \(name(source)) to \(name(destination)); supported: "
                    + pairs.sorted().map { $0.replacingOccurrences(of: ">", with: " → ") }.joined(separator: ", "))
        }
        let localSource = source.flatMap { s in storeKinds[s.kind]?.pathIsLocal == true ? s.path : nil }.map(PathUtil.canonical)
        let localDestination = destination.flatMap { d in storeKinds[d.kind]?.pathIsLocal == true ? d.path : nil }
            .map(PathUtil.canonical)
        if let s = localSource, let d = localDestination {
            if s == d {
                ctx.fail(fields["destination"], "destination.path", "is the source itself (\(d))")
            } else if PathUtil.isInside(d, s) {
                ctx.fail(fields["destination"], "destination.path", "\(d) is inside the source \(s); ferry would copy its own output")
            } else if PathUtil.isInside(s, d) {
                ctx.fail(fields["destination"], "destination.path", "\(d) contains the source \(s)")
            }
            if let snap = snapshot.path {
                let c = PathUtil.canonical(snap)
                if c == d || PathUtil.isInside(c, d) || PathUtil.isInside(d, c) {
                    ctx.fail(fields["snapshot"], "snapshot.path", "\(c) overlaps the destination \(d)")
                }
            }
        }
        // The state directory holds the ledger: inside the source it would be copied (and never settle), inside
        // the destination it would be verified as an extra or overwritten. Checked for every kind pair.
        let state = PathUtil.canonical(stateDirectory)
        let stateNode = fields["state"] ?? fields["destination"]
        for (side, root) in [("source", localSource), ("snapshot", snapshot.path.map(PathUtil.canonical)), ("destination", localDestination)] {
            guard let root else { continue }
            if state == root || PathUtil.isInside(state, root) {
                ctx.fail(stateNode, "state", "the state directory \(state) must not be the \(side) \(root) or inside it")
            }
        }
        if let destination, !copy.headers.isEmpty, destination.kind != "s3" {
            ctx.fail(
                fields["copy"], "copy.headers",
                "only an s3 destination keeps headers on its objects (this one is \(destination.kind)); remove copy.headers")
        }
        if let destination, let schema = storeKinds[carried(destination)] ?? storeKinds[destination.kind] {
            if copy.symlinks == .copy && !schema.holdsLinks {
                ctx.fail(
                    fields["copy"], "copy.symlinks",
                    "a \(destination.kind) destination cannot hold symbolic links: use skip (the default here) or follow")
            }
            if copy.specials == .copy && !schema.holdsSpecials {
                ctx.fail(
                    fields["copy"], "copy.specials",
                    "a \(destination.kind) destination cannot hold FIFOs, sockets or devices: use skip")
            }
        }

        guard ctx.diagnostics.isEmpty, let source, let destination else {
            if ctx.diagnostics.isEmpty {
                ctx.fail(root, "", "plan is incomplete")
            }
            throw PlanError(diagnostics: ctx.diagnostics)
        }
        var plan = Plan(
            version: version, name: name, file: absolutePath, source: source, destination: destination,
            snapshot: snapshot, tap: tap, copy: copy, verify: verify, cutover: cutover,
            stateDirectory: stateDirectory)
        plan.metrics = metrics
        plan.locations = ctx.locations
        return plan
    }

    /// The standard headers `copy.headers` may set on uploaded objects (besides x-amz-meta-*).
    static let settableHeaders: Set<String> = [
        "cache-control", "content-type", "content-disposition", "content-encoding", "content-language", "expires",
    ]

    /// `HOST:PORT` (`[v6]:PORT`), port 0 to 65535.
    static func isHostPort(_ s: String) -> Bool {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0..<65536).contains(port) else { return false }
        let host = s[..<colon]
        return !host.isEmpty && !host.contains(" ")
    }

    /// The kind a side really holds: the carried kind for a store on another host, else its own.
    public func carried(_ spec: StoreSpec) -> String {
        guard let key = storeKinds[spec.kind]?.carries, let inner = spec.options[key + ".kind"] else { return spec.kind }
        return inner
    }

    private func storeSpec(_ node: Node, field: String, ctx: inout Context, mustExist: Bool) -> StoreSpec? {
        guard let map = ctx.mapping(node, field) else { return nil }
        guard let kindNode = map["kind"] else {
            ctx.fail(node, field, "missing required key 'kind' (one of: \(storeKinds.keys.sorted().joined(separator: ", ")))")
            return nil
        }
        guard let kind = ctx.string(kindNode, "\(field).kind") else { return nil }
        guard let schema = storeKinds[kind] else {
            if let why = plannedKinds[kind] {
                ctx.fail(kindNode, "\(field).kind", "'\(kind)' \(why)")
            } else {
                ctx.fail(
                    kindNode, "\(field).kind",
                    "unknown kind '\(kind)' (known: \(storeKinds.keys.sorted().joined(separator: ", ")))")
            }
            return nil
        }
        let f = ctx.fields(map, at: field, allowed: schema.keys.union(["kind"]), required: schema.required)
        var path: String?
        var options: [String: String] = [:]
        for (key, value) in f where key != "kind" {
            if let subkeys = schema.nested[key] {
                guard let sub = ctx.mapping(value, "\(field).\(key)") else { continue }
                let g = ctx.fields(sub, at: "\(field).\(key)", allowed: subkeys, required: subkeys)
                for (k, v) in g {
                    if let s = ctx.nonEmptyString(v, "\(field).\(key).\(k)") { options["\(key).\(k)"] = s }
                }
                continue
            }
            guard let s = ctx.nonEmptyString(value, "\(field).\(key)") else { continue }
            if key == "path" {
                path = schema.pathIsLocal ? ctx.resolve(s) : s
            } else {
                options[key] = s
            }
        }
        if schema.pathIsLocal, let p = path {
            if mustExist {
                if !PathUtil.exists(p) {
                    ctx.fail(f["path"], "\(field).path", "\(p) does not exist")
                } else if !PathUtil.isDirectory(p) {
                    ctx.fail(f["path"], "\(field).path", "\(p) is not a directory")
                }
            } else if PathUtil.exists(p) && !PathUtil.isDirectory(p) {
                ctx.fail(f["path"], "\(field).path", "\(p) exists and is not a directory")
            }
        }
        return StoreSpec(kind: kind, path: path, options: options)
    }

    /// A problem found after loading (by a store's or a tap's own checks), located by the field its message
    /// starts with ("tap.listen: expected host:port ..."), or at the file when it names none.
    public static func diagnostic(_ message: String, plan: Plan, displayPath: String) -> PlanDiagnostic {
        var best: (String, PlanLocation)?
        for (field, loc) in plan.locations where message.hasPrefix(field) {
            let rest = message.dropFirst(field.count)
            guard rest.isEmpty || rest.first == ":" || rest.first == " " else { continue }
            if best == nil || field.count > best!.0.count { best = (field, loc) }
        }
        guard let (field, loc) = best else {
            return PlanDiagnostic(file: displayPath, line: nil, column: nil, field: "", message: message)
        }
        var text = String(message.dropFirst(field.count))
        while text.first == ":" || text.first == " " { text.removeFirst() }
        return PlanDiagnostic(file: displayPath, line: loc.line, column: loc.column, field: field, message: text)
    }

    /// Where an alias is used as a mapping key (`? *a` or `*a: value`, in block or flow style), if anywhere.
    /// Scanned on the text, before Yams composes anything; quoted strings and comments are passed over.
    static func aliasAsKey(_ text: String) -> (line: Int, column: Int)? {
        var line = 1
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            defer { line += 1 }
            guard raw.contains("*") else { continue }
            let chars = Array(raw.utf8)
            var i = 0
            var quote: UInt8? = nil
            var explicitKey = false
            while i < chars.count {
                let c = chars[i]
                if let q = quote {
                    if c == q { quote = nil }
                    i += 1
                    continue
                }
                if c == UInt8(ascii: "#") && (i == 0 || chars[i - 1] == 32 || chars[i - 1] == 9) { break }
                if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") {
                    quote = c
                } else if c == UInt8(ascii: "?") && (i + 1 == chars.count || chars[i + 1] == 32) {
                    explicitKey = true
                } else if c == UInt8(ascii: "*") && (i == 0 || [32, 9, 91, 123, 44, 63].contains(chars[i - 1])) {
                    if explicitKey { return (line, i + 1) }
                    var j = i + 1
                    while j < chars.count, ![32, 9, 44, 91, 93, 123, 125].contains(chars[j]) {
                        if chars[j] == UInt8(ascii: ":") && (j + 1 == chars.count || chars[j + 1] == 32) { return (line, i + 1) }
                        j += 1
                    }
                    while j < chars.count, chars[j] == 32 || chars[j] == 9 { j += 1 }
                    if j < chars.count, chars[j] == UInt8(ascii: ":") { return (line, i + 1) }
                    i = j
                    continue
                }
                i += 1
            }
            // A flow collection holding an alias, used as an implicit key: `[*a, *a]: 1`.
            if let close = raw.range(of: #"[\]\}]\s*:(\s|$)"#, options: .regularExpression),
                raw[..<close.lowerBound].contains("*")
            {
                return (line, 1)
            }
        }
        return nil
    }

    static func diagnostic(for error: YamlError, file: String) -> PlanDiagnostic {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let what = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " ")
            return PlanDiagnostic(
                file: file, line: mark.line, column: mark.column, field: "", message: "malformed YAML: \(what)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return PlanDiagnostic(
                file: file, line: context.mark.line, column: context.mark.column, field: "",
                message: "duplicate key(s) \(duplicates.joined(separator: ", "))")
        default:
            return PlanDiagnostic(file: file, line: nil, column: nil, field: "", message: "malformed YAML: \(error)")
        }
    }

    /// Collects diagnostics while walking the YAML tree.
    struct Context {
        var file: String
        var baseDirectory: String
        var diagnostics: [PlanDiagnostic] = []
        var locations: [String: PlanLocation] = [:]

        mutating func fail(_ node: Node?, _ field: String, _ message: String) {
            diagnostics.append(
                PlanDiagnostic(file: file, line: node?.mark?.line, column: node?.mark?.column, field: field, message: message))
        }

        func resolve(_ path: String) -> String {
            PathUtil.normalize(PathUtil.absolute(PathUtil.expandTilde(path), relativeTo: baseDirectory))
        }

        /// Checks keys against the allowed set, reporting unknown and missing ones, and returns the known ones.
        mutating func fields(_ map: Node.Mapping, at prefix: String, allowed: Set<String>, required: Set<String>) -> [String: Node] {
            var out: [String: Node] = [:]
            for (k, v) in map {
                let where_ = prefix.isEmpty ? "" : prefix
                guard let key = k.scalar?.string else {
                    fail(k, where_, "keys must be plain strings")
                    continue
                }
                let full = prefix.isEmpty ? key : "\(prefix).\(key)"
                if allowed.contains(key) {
                    out[key] = v
                    if let m = v.mark ?? k.mark { locations[full] = PlanLocation(line: m.line, column: m.column) }
                } else {
                    var msg = "unknown key '\(key)'"
                    if let guess = Self.closest(key, in: allowed) { msg += " (did you mean '\(guess)'?)" }
                    msg += "; allowed here: \(allowed.sorted().joined(separator: ", "))"
                    fail(k, full, msg)
                }
            }
            for key in required.sorted() where out[key] == nil {
                let full = prefix.isEmpty ? key : "\(prefix).\(key)"
                if !map.keys.contains(where: { $0.scalar?.string == key }) {
                    fail(map.mark.map { _ in Node.mapping(map) }, full, "missing required key '\(key)'")
                }
            }
            return out
        }

        mutating func mapping(_ node: Node, _ field: String) -> Node.Mapping? {
            if let m = node.mapping { return m }
            fail(node, field, "expected a mapping (key: value pairs), got \(Self.describe(node))")
            return nil
        }

        mutating func string(_ node: Node, _ field: String) -> String? {
            if let s = node.scalar {
                if s.tag.description.hasSuffix(":null") || (s.style == .plain && (s.string == "~" || s.string == "null" || s.string.isEmpty)) {
                    fail(node, field, "expected a value, got null")
                    return nil
                }
                return s.string
            }
            fail(node, field, "expected a single value, got \(Self.describe(node))")
            return nil
        }

        mutating func nonEmptyString(_ node: Node, _ field: String) -> String? {
            guard let s = string(node, field) else { return nil }
            if s.trimmingSpaces().isEmpty {
                fail(node, field, "must not be empty")
                return nil
            }
            return s
        }

        mutating func int(_ node: Node, _ field: String) -> Int? {
            guard let s = string(node, field) else { return nil }
            if let n = Int(s) { return n }
            fail(node, field, "expected a whole number, got \"\(s)\"")
            return nil
        }

        mutating func duration(_ node: Node, _ field: String) -> Double? {
            guard let s = string(node, field) else { return nil }
            if let d = Units.parseDuration(s), d > 0 { return d }
            fail(node, field, "expected a duration such as 30s, 15m, 1h or 7d, got \"\(s)\"")
            return nil
        }

        static func describe(_ node: Node) -> String {
            switch node {
            case .scalar(let s): return "\"\(s.string)\""
            case .mapping: return "a mapping"
            case .sequence: return "a list"
            case .alias: return "an alias"
            }
        }

        static func closest(_ word: String, in candidates: Set<String>) -> String? {
            var best: (String, Int)?
            for c in candidates {
                let d = editDistance(word, c)
                if d <= max(2, c.count / 3), best == nil || d < best!.1 { best = (c, d) }
            }
            return best?.0
        }

        static func editDistance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            if a.isEmpty { return b.count }
            if b.isEmpty { return a.count }
            var prev = Array(0...b.count)
            for i in 1...a.count {
                var cur = [i] + Array(repeating: 0, count: b.count)
                for j in 1...b.count {
                    cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
                }
                prev = cur
            }
            return prev[b.count]
        }
    }
}

extension PlanLoader {
    /// The plan's text with `key.path=value` overrides applied (`ferry rehearse --set`): each dotted path names a
    /// mapping key (created when missing), and the value is read as YAML (`2`, `/staging/dst`, `{kind: fs}`).
    public static func applyOverrides(_ text: String, _ sets: [String]) throws(PlanError) -> String {
        func fail(_ why: String) -> PlanError {
            PlanError(diagnostics: [PlanDiagnostic(file: "--set", line: nil, column: nil, field: "", message: why)])
        }
        let composed: Node?
        do { composed = try Yams.compose(yaml: text) } catch { throw fail("the plan is not YAML: \(error)") }
        guard var root = composed, root.mapping != nil else { throw fail("the plan is not a YAML mapping") }
        for set in sets {
            guard let eq = set.firstIndex(of: "=") else { throw fail("\"\(set)\" is not key.path=value") }
            let path = set[..<eq].split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !path.isEmpty, !path.contains(where: \.isEmpty) else { throw fail("\"\(set)\": the key path is empty or has an empty part") }
            let valueText = String(set[set.index(after: eq)...])
            let value: Node
            do { value = try Yams.compose(yaml: valueText) ?? Node("") } catch { throw fail("\"\(set)\": the value is not YAML: \(error)") }
            func put(_ node: Node, _ keys: ArraySlice<String>) throws(PlanError) -> Node {
                guard let key = keys.first else { return value }
                guard var mapping = node.mapping else {
                    throw fail("\"\(set)\": \(path.prefix(path.count - keys.count).joined(separator: ".")) is not a mapping")
                }
                let child = mapping[Node(key)] ?? Node.mapping(Node.Mapping([]))
                mapping[Node(key)] = try put(child, keys.dropFirst())
                return Node.mapping(mapping)
            }
            root = try put(root, path[...])
        }
        do { return try Yams.serialize(node: root) } catch { throw fail("cannot write the plan with its overrides: \(error)") }
    }
}
