/// The one error type that crosses module boundaries: a code an operator (and a test) can switch on, a message
/// that says what happened and what to do, and an optional cause. Modelled on NIOFS's `FileSystemError`.
public struct FerryError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. A struct, not an enum (as NIOFS's `FileSystemError.Code`): a wing adds its
    /// own codes without breaking every `switch` in the others.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The plan file is malformed or inconsistent (exit 2).
        public static let invalidPlan = Code("invalidPlan")
        /// The job's saved state does not fit the request (plan changed, wrong phase).
        public static let stateConflict = Code("stateConflict")
        /// The source could not be read.
        public static let sourceIO = Code("sourceIO")
        /// The destination could not be written (including a full disk).
        public static let destinationIO = Code("destinationIO")
        /// The destination ran out of space.
        public static let destinationFull = Code("destinationFull")
        /// The ledger (SQLite) failed.
        public static let ledger = Code("ledger")
        /// A cutover gate is not met (exit 4).
        public static let gateNotMet = Code("gateNotMet")
        /// A hook command failed.
        public static let hookFailed = Code("hookFailed")
        /// An entry would leave the tree it belongs to.
        public static let unsafePath = Code("unsafePath")
        /// Anything else.
        public static let other = Code("other")
    }

    public var code: Code
    public var message: String
    /// The error underneath, kept as a value (a caller can ask whether it was, say, SQLite's busy or a
    /// serialization failure, and retry), shown after the message.
    public var underlying: (any Error & Sendable)?
    /// A cause given as text only (an errno string, a tool's output).
    public var causeText: String?
    public var file: String
    public var line: Int

    public init(_ code: Code, _ message: String, cause: String? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        causeText = cause
        self.file = file
        self.line = line
    }

    public init(_ code: Code, _ message: String, underlying: any Error & Sendable, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.underlying = underlying
        self.file = file
        self.line = line
    }

    /// The cause as an operator reads it.
    public var cause: String? { underlying.map { "\($0)" } ?? causeText }

    /// Where the error was raised (`Module/File.swift:line`), for logs and bug reports.
    public var location: String { "\(file):\(line)" }

    public var description: String {
        if let cause { return "\(message): \(cause)" }
        return message
    }
}

/// An errno turned into a readable cause, with the call that failed.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public let path: String?

    public init(_ call: String, errno: Int32, path: String? = nil) {
        self.call = call
        self.errno = errno
        self.path = path
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        if let path { return "\(call) \(path): \(reason)" }
        return "\(call): \(reason)"
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
