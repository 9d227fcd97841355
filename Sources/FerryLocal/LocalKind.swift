public import FerryCore

extension LocalStore {
    /// `kind: fs`: a directory tree on this host.
    public static let kind = StoreKind(
        schema: StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true, holdsSpecials: true),
        sources: ["fs", "s3"]
    ) { ctx in
        // Links are followed only at the source as the copy reads it, and only when the plan says so.
        LocalStore(root: try ctx.requirePath(), followSymlinks: ctx.role == .source && ctx.plan.copy.symlinks == .follow)
    }
}
