import Foundation

/// Validation of Graphite's plaintext protocol (`metric.path value timestamp\n`) and normalization to the form
/// the tap forwards. Works on bytes: the tap validates every line it accepts, so this is on the hot path.
public enum CarbonLine {
    public enum Problem: Equatable, Sendable, CustomStringConvertible {
        case fieldCount(Int)
        case badPath
        case badValue
        case badTimestamp
        case tooLong(Int)

        public var description: String {
            switch self {
            case .fieldCount(let n): "expected 3 fields (path value timestamp), got \(n)"
            case .badPath: "invalid metric path (empty segment, '/', control or non-UTF-8 bytes)"
            case .badValue: "value is not a finite number"
            case .badTimestamp: "timestamp is not a finite non-negative number Whisper can store (at most 4294967295)"
            case .tooLong(let n): "line of \(n)+ bytes exceeds max_line_length"
            }
        }
    }

    @inline(__always) static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D }

    /// Whisper stores timestamps as unsigned 32-bit seconds.
    public static let maxTimestamp: Double = 4_294_967_295

    /// The value of a decimal `token` (the syntax Python's `float()` and carbon accept, without `nan`, `inf`,
    /// hex or `_`) by strtod's rules, or nil when it is malformed or not finite: `1e-300`, `1e300` and
    /// `1.7976931348623157e308` are values; a 1 followed by 400 zeros or `99999999999999999999e299` overflow to
    /// infinity and are refused (carbon would store them as inf).
    static func number(_ t: UnsafeRawBufferPointer, allowNegative: Bool) -> Double? {
        guard isDecimal(t, allowNegative: allowNegative) else { return nil }
        var c = [CChar](repeating: 0, count: t.count + 1)
        for i in 0..<t.count { c[i] = CChar(bitPattern: t[i]) }
        let v = strtod(c, nil)
        return v.isFinite ? v : nil
    }

    /// The decimal syntax alone: sign, digits with an optional point, an optional exponent.
    static func isDecimal(_ t: UnsafeRawBufferPointer, allowNegative: Bool) -> Bool {
        var i = 0
        let n = t.count
        if i < n && (t[i] == UInt8(ascii: "+") || t[i] == UInt8(ascii: "-")) {
            if t[i] == UInt8(ascii: "-") && !allowNegative { return false }
            i += 1
        }
        var digits = 0
        while i < n && t[i] >= 0x30 && t[i] <= 0x39 { i += 1; digits += 1 }
        if i < n && t[i] == UInt8(ascii: ".") {
            i += 1
            while i < n && t[i] >= 0x30 && t[i] <= 0x39 { i += 1; digits += 1 }
        }
        guard digits > 0 else { return false }
        if i < n && (t[i] == UInt8(ascii: "e") || t[i] == UInt8(ascii: "E")) {
            i += 1
            if i < n && (t[i] == UInt8(ascii: "+") || t[i] == UInt8(ascii: "-")) { i += 1 }
            var expDigits = 0
            while i < n && t[i] >= 0x30 && t[i] <= 0x39 {
                i += 1
                expDigits += 1
            }
            guard expDigits > 0 else { return false }
        }
        return i == n
    }

    /// Whether the bytes make a metric path carbon can store: dot-separated non-empty segments of printable
    /// UTF-8 without '/', so a name can never climb out of the storage directory.
    static func isPath(_ t: UnsafeRawBufferPointer) -> Bool {
        guard !t.isEmpty, t.count <= 1024 else { return false }
        var prevDot = true
        for b in t {
            if b < 0x21 || b == 0x7F || b == UInt8(ascii: "/") || b == UInt8(ascii: "\\") { return false }
            if b == UInt8(ascii: ".") {
                if prevDot { return false }
                prevDot = true
            } else {
                prevDot = false
            }
        }
        if prevDot { return false }
        return String(validating: t, as: UTF8.self) != nil
    }

    /// Validates one line (without its newline) and appends its normalized form (`path value timestamp\n`) to
    /// `out`. Returns the problem instead when the line is invalid; blank lines are skipped (nil, nothing appended).
    public static func normalize(_ line: UnsafeRawBufferPointer, into out: inout [UInt8]) -> Problem? {
        var fields: [Range<Int>] = []
        fields.reserveCapacity(3)
        var i = 0
        let n = line.count
        while i < n {
            while i < n && isSpace(line[i]) { i += 1 }
            if i >= n { break }
            let s = i
            while i < n && !isSpace(line[i]) { i += 1 }
            if fields.count == 3 { return .fieldCount(4) }
            fields.append(s..<i)
        }
        if fields.isEmpty { return nil }
        guard fields.count == 3 else { return .fieldCount(fields.count) }
        let path = UnsafeRawBufferPointer(rebasing: line[fields[0]])
        let value = UnsafeRawBufferPointer(rebasing: line[fields[1]])
        let ts = UnsafeRawBufferPointer(rebasing: line[fields[2]])
        guard isPath(path) else { return .badPath }
        guard number(value, allowNegative: true) != nil else { return .badValue }
        guard let t = number(ts, allowNegative: false), t <= maxTimestamp else { return .badTimestamp }
        out.append(contentsOf: path)
        out.append(0x20)
        out.append(contentsOf: value)
        out.append(0x20)
        out.append(contentsOf: ts)
        out.append(0x0A)
        return nil
    }

    /// Appends `path value timestamp\n` for a decoded pickle datapoint, validated like a plaintext line.
    public static func normalize(path: String, value: Double, timestamp: Double, into out: inout [UInt8]) -> Problem? {
        guard value.isFinite else { return .badValue }
        guard timestamp.isFinite, timestamp >= 0, timestamp <= maxTimestamp else { return .badTimestamp }
        var p = path
        let ok = p.withUTF8 { isPath(UnsafeRawBufferPointer($0)) }
        guard ok else { return .badPath }
        out.append(contentsOf: p.utf8)
        out.append(0x20)
        out.append(contentsOf: Self.format(value).utf8)
        out.append(0x20)
        out.append(contentsOf: Self.format(timestamp).utf8)
        out.append(0x0A)
        return nil
    }

    static func format(_ d: Double) -> String {
        if d == d.rounded() && abs(d) < 1e15 { return String(Int64(d)) }
        return "\(d)"
    }
}

/// Incremental splitter of a plaintext stream into lines, bounded by `maxLineLength`: a longer line is
/// refused as a whole (its remainder skipped up to the next newline), never forwarded in pieces.
public struct LineAssembler: Sendable {
    public let maxLineLength: Int
    private var partial: [UInt8] = []
    private var discarding = false

    public init(maxLineLength: Int) {
        self.maxLineLength = maxLineLength
    }

    /// Feeds bytes; calls `line` for each complete line and `problem` for each line too long.
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer, line: (UnsafeRawBufferPointer) -> Void, tooLong: (Int) -> Void
    ) {
        var start = 0
        let n = bytes.count
        while start < n {
            guard let nl = bytes[start...].firstIndex(of: 0x0A) else {
                // No newline in the rest: keep it for the next read, within the bound.
                if discarding { return }
                if partial.count + (n - start) > maxLineLength {
                    tooLong(partial.count + (n - start))
                    partial.removeAll(keepingCapacity: false)
                    discarding = true
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<n]))
                }
                return
            }
            if discarding {
                discarding = false
            } else if partial.isEmpty {
                if nl - start > maxLineLength {
                    tooLong(nl - start)
                } else {
                    line(UnsafeRawBufferPointer(rebasing: bytes[start..<nl]))
                }
            } else {
                let total = partial.count + (nl - start)
                if total > maxLineLength {
                    tooLong(total)
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<nl]))
                    partial.withUnsafeBytes { line($0) }
                }
                partial.removeAll(keepingCapacity: true)
            }
            start = nl + 1
        }
    }

    /// Bytes of an unfinished line held back (a sender that closed mid-line leaves this).
    public var pendingBytes: Int { partial.count }
}
