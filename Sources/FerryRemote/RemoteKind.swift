public import FerryCore
import Foundation

extension RemoteStore {
    /// `kind: remote`: a store on another host, through its `ferry serve`. `carrying` are the kinds a far
    /// host can serve (the local directory kinds of this build); the plan names one under `store`, and may set
    /// that kind's own keys beside `url` (the Whisper schema of a Ceres source's conversion, say):
    ///
    ///     destination:
    ///       kind: remote
    ///       url: https://new-host:8470        # or http:// on loopback
    ///       token: file:/etc/ferry/token      # or env:NAME; never the token itself
    ///       ca: /etc/ferry/ca.pem             # a private CA (optional)
    ///       store: {kind: whisper, path: /var/lib/graphite/whisper}
    public static func kind(carrying kinds: [StoreKind]) -> StoreKind {
        let names = Set(kinds.map(\.name))
        let carriedKeys = kinds.reduce(into: Set<String>()) { $0.formUnion($1.schema.keys) }.subtracting(["path"])
        return StoreKind(
            schema: StoreKindSchema(
                kind: "remote", keys: carriedKeys.union(["url", "token", "ca", "store", "ssh", "ferry"]), required: ["url", "store"],
                pathIsLocal: false, holdsLinks: true, holdsSpecials: true, nested: ["store": ["kind", "path"]], carries: "store"),
            sources: []
        ) { ctx in
            let o = ctx.spec.options
            let field = ctx.section
            guard let inner = o["store.kind"], names.contains(inner) else {
                throw FerryError(
                    .invalidPlan,
                    "\(field).store.kind: ferry serve serves \(names.sorted().joined(separator: ", ")) stores, not \(o["store.kind"] ?? "nothing")")
            }
            guard let path = o["store.path"] else { throw FerryError(.invalidPlan, "\(field).store.path: required") }
            let endpoint = try RemoteStore.endpoint(ctx, storePath: path)
            let level = ctx.plan.copy.compression == "zstd" ? ctx.plan.copy.compressionLevel : nil
            return RemoteStore.make(
                endpoint: endpoint, kind: inner, path: path, role: ctx.role == .destination ? .destination : .source, compressionLevel: level,
                pointCodec: ctx.plan.copy.pointCodec)
        }
    }

    /// The `url`, `token` and `ca` of a side (or, for `ssh://`, the ssh command and the far ferry), checked.
    static func endpoint(_ ctx: StoreContext, storePath: String) throws -> RemoteEndpoint {
        let o = ctx.spec.options
        let field = ctx.section
        let url = o["url"] ?? ""
        var problems: [String] = []
        if url.hasPrefix("ssh://") {
            // ssh://[user@]host[:port]: ferry serve is started for the job over the operator's own SSH.
            let rest = String(url.dropFirst(6))
            var destination = rest
            var port: Int?
            if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
                destination = String(rest[..<colon])
                port = Int(rest[rest.index(after: colon)...])
                if port == nil { problems.append("\(field).url: the port in \(url) is not a number") }
            }
            if destination.isEmpty || destination.contains("/") || destination.hasPrefix("-") {
                problems.append("\(field).url: expected ssh://[USER@]HOST[:PORT] (nothing after it), got \"\(url)\"")
            }
            if o["token"] != nil { problems.append("\(field).token: not used with ssh:// (a token is minted for each connection)") }
            if o["ca"] != nil { problems.append("\(field).ca: not used with ssh:// (ssh authenticates the host)") }
            guard storePath.hasPrefix("/") else { throw FerryError(.invalidPlan, "\(field).store.path: must be absolute with ssh://") }
            guard problems.isEmpty else { throw FerryError(.invalidPlan, problems.joined(separator: "; ")) }
            let command = (o["ssh"] ?? "ssh").split(separator: " ").map(String.init)
            let target = SSHTarget(destination: destination, port: port, command: command, ferry: o["ferry"] ?? "ferry")
            return RemoteEndpoint(ssh: target, root: storePath)
        }
        var base: String?
        if let u = URLComponents(string: url), let scheme = u.scheme, ["http", "https"].contains(scheme), let host = u.host, !host.isEmpty,
            u.path.isEmpty || u.path == "/", u.query == nil, u.user == nil
        {
            let port = u.port ?? 8470
            base = "\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(port)"
        } else {
            problems.append("\(field).url: expected https://HOST:PORT, http://HOST:PORT or ssh://[USER@]HOST[:PORT], got \"\(url)\"")
        }
        for key in ["ssh", "ferry"] where o[key] != nil { problems.append("\(field).\(key): only used with ssh://") }
        var token: RemoteToken?
        if let reference = o["token"] {
            do {
                token = try RemoteToken.load(reference, base: ctx.baseDirectory, field: "\(field).token")
            } catch let e as FerryError {
                problems.append(e.message)
            }
        } else {
            problems.append("\(field).token: required for \(url.prefix { $0 != ":" }):// (env:NAME or file:PATH, the token ferry serve was given)")
        }
        var ca: String?
        if let c = o["ca"] {
            let p = PathUtil.normalize(PathUtil.absolute(PathUtil.expandTilde(c), relativeTo: ctx.baseDirectory))
            if PathUtil.exists(p) { ca = p } else { problems.append("\(field).ca: \(p) does not exist") }
        }
        guard problems.isEmpty, let base, let token else { throw FerryError(.invalidPlan, problems.joined(separator: "; ")) }
        return RemoteEndpoint(baseURL: base, token: token, caFile: ca)
    }
}
