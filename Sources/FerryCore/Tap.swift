/// How a tap routes live writes. Every tap kind has the same modes.
public enum TapMode: String, Sendable, Codable, CaseIterable {
    /// The old side is primary; every write is mirrored to the new side.
    case mirror
    /// The switch in progress: both sides still receive everything while the fence travels.
    case cutover
    /// The new side is primary; every write is mirrored back to the old side (the rollback window).
    case reverse
    /// Only the primary receives writes (after `ferry complete`).
    case single
}

/// One upstream of a tap, as its status reports it.
public struct TapUpstreamStatus: Sendable, Codable {
    public var name: String
    public var address: String
    /// primary, mirror or detached (not fed in `single` mode).
    public var role: String
    public var connected: Bool
    public var forwardedLines: UInt64
    public var forwardedBytes: UInt64
    /// Accepted but not yet delivered to this upstream.
    public var spoolBytes: UInt64
    /// Age of the oldest record this upstream has not received (0 when caught up).
    public var lagSeconds: Double
    /// Journal offset delivered up to.
    public var cursor: UInt64
    public var reconnects: UInt64
    public var lastError: String?
    /// Records accepted but not yet delivered to this upstream (a live tree's tap: paths to look at), where the
    /// tap counts them.
    public var pendingRecords: UInt64?

    public init(
        name: String, address: String, role: String, connected: Bool, forwardedLines: UInt64, forwardedBytes: UInt64,
        spoolBytes: UInt64, lagSeconds: Double, cursor: UInt64, reconnects: UInt64, lastError: String?, pendingRecords: UInt64? = nil
    ) {
        self.name = name
        self.address = address
        self.role = role
        self.connected = connected
        self.forwardedLines = forwardedLines
        self.forwardedBytes = forwardedBytes
        self.spoolBytes = spoolBytes
        self.lagSeconds = lagSeconds
        self.cursor = cursor
        self.reconnects = reconnects
        self.lastError = lastError
        self.pendingRecords = pendingRecords
    }
}

/// A running tap's health, as `ferry tap ctl status` and `ferry status` show it.
public struct TapStatus: Sendable, Codable {
    public var kind: String
    public var pid: Int32
    public var mode: TapMode
    public var primary: String
    /// The journal's head: the sequence number of the newest accepted record.
    public var head: UInt64
    public var receivedLines: UInt64
    public var invalidLines: UInt64
    public var refusedMessages: UInt64
    /// Datagrams that could not be taken while the spool was full (UDP has no back-pressure).
    public var droppedLines: UInt64
    /// True while the spool is at its limit and senders are held back.
    public var backPressure: Bool
    public var spoolBytes: UInt64
    public var spoolLimit: UInt64
    /// Why the spool cannot take data right now (a full disk), while senders are held back.
    public var spoolError: String?
    public var upstreams: [TapUpstreamStatus]

    public init(
        kind: String, pid: Int32, mode: TapMode, primary: String, head: UInt64, receivedLines: UInt64,
        invalidLines: UInt64, refusedMessages: UInt64, droppedLines: UInt64, backPressure: Bool, spoolBytes: UInt64,
        spoolLimit: UInt64, spoolError: String? = nil, upstreams: [TapUpstreamStatus]
    ) {
        self.spoolError = spoolError
        self.kind = kind
        self.pid = pid
        self.mode = mode
        self.primary = primary
        self.head = head
        self.receivedLines = receivedLines
        self.invalidLines = invalidLines
        self.refusedMessages = refusedMessages
        self.droppedLines = droppedLines
        self.backPressure = backPressure
        self.spoolBytes = spoolBytes
        self.spoolLimit = spoolLimit
        self.upstreams = upstreams
    }
}

/// How the engine drives a plan's tap. The CLI builds the concrete one (the engine never imports a tap).
public protocol TapControl: Sendable {
    /// Makes sure the tap is running and mirroring (starting it when needed); returns the journal head, the
    /// sequence number that the snapshot is taken after.
    func arm() throws -> UInt64
    /// The running tap's status, or nil when it is not running.
    func status() throws -> TapStatus?
    @discardableResult func setMode(_ mode: TapMode) throws -> TapStatus
    /// Sends the fence through the tap to every fed upstream, after everything it accepted before; returns its
    /// sequence number.
    func fence(_ token: FenceToken) throws -> UInt64
}

/// The cutover fence: a marker a tap writes through to every fed upstream after everything it accepted before.
/// Neutral: each tap kind writes it in its own form (a Carbon datapoint `name serial issuedAt`, a bucket object
/// `.ferry-fence/name` holding the serial), and each store kind that can read it back says whether it landed.
public struct FenceToken: Sendable, Codable, Equatable {
    /// A dotted name, the job's.
    public var name: String
    /// A value unique to this fence attempt.
    public var serial: Int
    /// When it was issued (unix seconds).
    public var issuedAt: Int

    public init(name: String, serial: Int, issuedAt: Int) {
        self.name = name
        self.serial = serial
        self.issuedAt = issuedAt
    }

    /// The default `cutover.fence_namespace`.
    public static let defaultNamespace = "ferry.fence"

    /// A new fence for a job's cutover or rollback, named `<namespace>.<job>`.
    public static func forJob(_ job: String, now: Int, namespace: String = defaultNamespace) -> FenceToken {
        FenceToken(
            name: namespace + "." + job.replacingOccurrences(of: ".", with: "_"), serial: Int.random(in: 1...999_999_999), issuedAt: now)
    }
}

/// A store that can tell whether a fence has landed.
public protocol FenceChecking {
    func hasFence(_ token: FenceToken) throws -> Bool
}
