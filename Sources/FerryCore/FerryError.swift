/// The one error type that crosses module boundaries: a code an operator (and a test) can switch on, a message
/// that says what happened and what to do, and an optional cause. Modelled on NIOFS's `FileSystemError`.
public struct FerryError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// The plan file is malformed or inconsistent (exit 2).
        case invalidPlan
        /// The job's saved state does not fit the request (plan changed, wrong phase).
        case stateConflict
        /// The source could not be read.
        case sourceIO
        /// The destination could not be written (including a full disk).
        case destinationIO
        /// The destination ran out of space.
        case destinationFull
        /// The ledger (SQLite) failed.
        case ledger
        /// A cutover gate is not met (exit 4).
        case gateNotMet
        /// A hook command failed.
        case hookFailed
        /// An entry would leave the tree it belongs to.
        case unsafePath
        /// Anything else.
        case other
    }

    public var code: Code
    public var message: String
    public var cause: String?
    public var file: String
    public var line: Int

    public init(_ code: Code, _ message: String, cause: String? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.cause = cause
        self.file = file
        self.line = line
    }

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
