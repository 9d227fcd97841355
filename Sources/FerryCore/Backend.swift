/// The seam every store kind plugs into: its plan schema, the source kinds it accepts as a destination, and how
/// it is built from a plan. Each wing (FerryLocal, FerryGraphite, FerryS3, ...) defines its kinds next to its
/// stores; the CLI's `Backends` holds the one list, from which the plan loader takes its schemas, the allowed
/// pairs and its messages. No kind name is spelled outside its wing.
public struct StoreKind: Sendable {
    public var schema: StoreKindSchema
    /// The source kinds a plan may move into this kind (`fs` accepts `fs` and `s3`, ...).
    public var sources: Set<String>
    public var make: @Sendable (StoreContext) throws -> any Store

    public var name: String { schema.kind }

    public init(schema: StoreKindSchema, sources: Set<String>, make: @escaping @Sendable (StoreContext) throws -> any Store) {
        self.schema = schema
        self.sources = sources
        self.make = make
    }
}

/// Which side of a plan a store is built for.
public enum StoreRole: Sendable, Equatable {
    /// The source as the copy reads it: at the snapshot path when the plan has one.
    case source
    case destination
    /// The source at its live path (where a rollback's fence lands), never the snapshot.
    case liveSource
}

/// What a kind's `make` gets: the plan, the side's section, and the role it is built for.
public struct StoreContext: Sendable {
    public var plan: Plan
    public var role: StoreRole

    public init(plan: Plan, role: StoreRole) {
        self.plan = plan
        self.role = role
    }

    public var spec: StoreSpec { role == .destination ? plan.destination : plan.source }
    /// The plan section, for messages: `source` or `destination`.
    public var section: String { role == .destination ? "destination" : "source" }
    /// The directory a local kind works on: the snapshot path for the source, else the section's `path`.
    public var path: String? { role == .source ? (plan.snapshot.path ?? spec.path) : spec.path }
    /// The plan file's directory, against which relative names (credential files) resolve.
    public var baseDirectory: String { PathUtil.directory(of: plan.file) }

    /// The section's `path`, or a plan error naming the kind.
    public func requirePath() throws -> String {
        guard let p = path else { throw FerryError(.invalidPlan, "\(section): a \(spec.kind) store needs a path") }
        return p
    }
}

/// The list of store kinds a build has, and what derives from it.
public struct StoreKinds: Sendable {
    public let all: [StoreKind]

    public init(_ kinds: [StoreKind]) {
        all = kinds
    }

    public subscript(name: String) -> StoreKind? { all.first { $0.name == name } }

    public var schemas: [StoreKindSchema] { all.map(\.schema) }

    /// Allowed "source>destination" pairs.
    public var pairs: Set<String> { Set(all.flatMap { d in d.sources.map { "\($0)>\(d.name)" } }) }

    /// The store a plan's side names, built for `role`.
    public func make(_ plan: Plan, _ role: StoreRole) throws -> any Store {
        let ctx = StoreContext(plan: plan, role: role)
        guard let kind = self[ctx.spec.kind] else {
            throw FerryError(.invalidPlan, "\(ctx.section).kind: store kind '\(ctx.spec.kind)' is not available in this build")
        }
        return try kind.make(ctx)
    }
}
