public import FerryCore
public import Logging

/// A running tap, as its host starts and stops it.
public protocol TapService: AnyObject, Sendable {
    func start() throws
    func stop()
    /// What the log says when the graceful shutdown begins.
    var shutdownNotice: String { get }
}

extension TapService {
    public var shutdownNotice: String { "shutting down: the tap stops accepting, then closes its journal" }
}

/// Where a tap keeps its queue and answers its control socket.
public struct TapLocation: Sendable {
    public var directory: String
    public var controlSocket: String

    public init(directory: String, controlSocket: String) {
        self.directory = directory
        self.controlSocket = controlSocket
    }
}

/// The seam every tap kind plugs into, like `StoreKind` for stores: its plan schema, where it lives (from a
/// checked plan), and how it is built.
public struct TapKind: Sendable {
    public var schema: TapKindSchema
    public var locate: @Sendable (Plan) throws -> TapLocation
    public var make: @Sendable (Plan, Logger) throws -> any TapService

    public var name: String { schema.kind }

    public init(
        schema: TapKindSchema, locate: @escaping @Sendable (Plan) throws -> TapLocation,
        make: @escaping @Sendable (Plan, Logger) throws -> any TapService
    ) {
        self.schema = schema
        self.locate = locate
        self.make = make
    }
}
