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
                kind: "remote", keys: carriedKeys.union(["url", "token", "ca", "store"]), required: ["url", "token", "store"],
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
            let endpoint = try RemoteStore.endpoint(ctx)
            let level = ctx.plan.copy.compression == "zstd" ? ctx.plan.copy.compressionLevel : nil
            return RemoteStore.make(
                endpoint: endpoint, kind: inner, path: path, role: ctx.role == .destination ? .destination : .source, compressionLevel: level)
        }
    }

    /// The `url`, `token` and `ca` of a side, checked.
    static func endpoint(_ ctx: StoreContext) throws -> RemoteEndpoint {
        let o = ctx.spec.options
        let field = ctx.section
        let url = o["url"] ?? ""
        var problems: [String] = []
        var base: String?
        if url.hasPrefix("ssh://") {
            problems.append(
                "\(field).url: ssh:// is not implemented in this version of ferry yet: start ferry serve on the far host and use https://")
        } else if let u = URLComponents(string: url), let scheme = u.scheme, ["http", "https"].contains(scheme), let host = u.host, !host.isEmpty,
            u.path.isEmpty || u.path == "/", u.query == nil, u.user == nil
        {
            let port = u.port ?? 8470
            base = "\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(port)"
        } else {
            problems.append("\(field).url: expected https://HOST:PORT or http://HOST:PORT (nothing after the port), got \"\(url)\"")
        }
        var token: RemoteToken?
        do {
            token = try RemoteToken.load(o["token"] ?? "", base: ctx.baseDirectory, field: "\(field).token")
        } catch let e as FerryError {
            problems.append(e.message)
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
