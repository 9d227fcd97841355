/// Lossless names. POSIX names are bytes, not text: a Latin-1 `caf\xe9.txt` from an old Samba share is a legal
/// file name that is not valid UTF-8. ferry carries every path as a Swift `String` (the ledger, the reports, the
/// plans), so names are mapped into strings by an injective code that never loses a byte:
///
/// - a valid UTF-8 name stays as it is, except that a character in U+F700...U+F7FF (a private-use block) is
///   written as U+F700 followed by that character;
/// - a byte that is not part of valid UTF-8 (0x80...0xFF) becomes the single character U+F700 + byte.
///
/// `bytes(_:)` reverses it exactly, so what a walk reads is what a syscall later gets, byte for byte. A store that
/// needs text (an S3 key must be UTF-8) asks `isText(_:)` and refuses the rest.
public enum RawName {
    static let escape: UInt32 = 0xF700

    /// The string for the bytes of a name (or of a '/'-joined path, or a symlink target).
    public static func decode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        if let s = String(validating: bytes, as: UTF8.self), !s.unicodeScalars.contains(where: isReserved) {
            return s
        }
        var out = String.UnicodeScalarView()
        var i = bytes.startIndex
        while i != bytes.endIndex {
            let (scalar, length) = decodeOne(bytes, at: i)
            if let scalar {
                if isReserved(scalar) { out.append(Unicode.Scalar(escape)!) }
                out.append(scalar)
            } else {
                out.append(Unicode.Scalar(escape + UInt32(bytes[i]))!)
            }
            i = bytes.index(i, offsetBy: length)
        }
        return String(out)
    }

    /// The bytes a name stands for (without a terminating NUL).
    public static func bytes(_ s: String) -> [UInt8] {
        guard mayHoldEscapes(s) else { return Array(s.utf8) }
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        var quoted = false
        for scalar in s.unicodeScalars {
            if quoted {
                quoted = false
                out.append(contentsOf: String(scalar).utf8)
            } else if scalar.value == escape {
                quoted = true
            } else if isReserved(scalar) {
                out.append(UInt8(truncatingIfNeeded: scalar.value - escape))
            } else {
                out.append(contentsOf: String(scalar).utf8)
            }
        }
        return out
    }

    /// The name as a NUL-terminated C string, for syscalls.
    public static func cString(_ s: String) -> [CChar] {
        var b = bytes(s).map { CChar(bitPattern: $0) }
        b.append(0)
        return b
    }

    /// Runs `body` with the name's bytes as a C string (no copy for names without escapes).
    public static func withCString<R>(_ s: String, _ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
        if !mayHoldEscapes(s) { return try s.withCString(body) }
        let c = cString(s)
        return try c.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }

    /// Whether the name is valid UTF-8 text (no raw bytes in it).
    public static func isText(_ s: String) -> Bool {
        guard mayHoldEscapes(s) else { return true }
        return String(validating: bytes(s), as: UTF8.self) != nil
    }

    /// The name for people: raw bytes and control characters as `\xNN`, a backslash doubled, so a table never
    /// breaks on a newline, a NUL or a terminal escape in a name.
    public static func display(_ s: String) -> String {
        let b = bytes(s)
        guard b.contains(where: { $0 < 0x20 || $0 == 0x7F || $0 == 0x5C || $0 >= 0x80 }) else { return s }
        var out = ""
        var i = 0
        while i < b.count {
            let (scalar, length) = decodeOne(b, at: i)
            if let scalar, scalar.value >= 0x20, scalar.value != 0x7F, !(0x80..<0xA0).contains(scalar.value) {
                out += scalar == "\\" ? "\\\\" : String(scalar)
            } else {
                for byte in b[i..<(i + length)] { out += "\\x" + hex(byte) }
            }
            i += length
        }
        return out
    }

    static func hex(_ b: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
    }

    static func isReserved(_ s: Unicode.Scalar) -> Bool { s.value >= escape && s.value <= escape + 0xFF }

    /// UTF-8 of U+F700...U+F7FF is EF 9C xx ... EF 9F xx: a quick test that a string needs no decoding.
    static func mayHoldEscapes(_ s: String) -> Bool {
        var lead = false
        for b in s.utf8 {
            if lead && b >= 0x9C && b <= 0x9F { return true }
            lead = b == 0xEF
        }
        return false
    }

    /// One scalar of well-formed UTF-8 at `i`, with its length; nil and length 1 for a byte that starts none.
    static func decodeOne<C: Collection>(_ b: C, at i: C.Index) -> (Unicode.Scalar?, Int) where C.Element == UInt8 {
        let first = b[i]
        if first < 0x80 { return (Unicode.Scalar(first), 1) }
        let need: Int
        let minimum: UInt32
        var value: UInt32
        switch first {
        case 0xC2...0xDF: (need, minimum, value) = (1, 0x80, UInt32(first & 0x1F))
        case 0xE0...0xEF: (need, minimum, value) = (2, 0x800, UInt32(first & 0x0F))
        case 0xF0...0xF4: (need, minimum, value) = (3, 0x10000, UInt32(first & 0x07))
        default: return (nil, 1)
        }
        var j = b.index(after: i)
        for _ in 0..<need {
            guard j != b.endIndex, b[j] & 0xC0 == 0x80 else { return (nil, 1) }
            value = value << 6 | UInt32(b[j] & 0x3F)
            j = b.index(after: j)
        }
        guard value >= minimum, let scalar = Unicode.Scalar(value) else { return (nil, 1) }
        return (scalar, need + 1)
    }
}
