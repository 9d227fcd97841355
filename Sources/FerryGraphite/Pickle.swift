import Foundation

/// A decoder for the pickle subset carbon clients send (`[(path, (timestamp, value)), ...]`, protocols 0-2,
/// and the framing opcodes of 4 that newer Pythons emit for small payloads). It is a data-only reader: any
/// opcode that would import, call or build an object (GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, ...) is refused
/// before anything is executed; sizes and nesting are bounded.
public enum PickleDecoder {
    public struct Refused: Error, Sendable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public struct Datapoint: Sendable, Equatable {
        public var path: String
        public var timestamp: Double
        public var value: Double
    }

    /// Decoded objects live in one flat arena and refer to each other by index: a list is mutated in place as
    /// Python does (an APPEND after a memo write costs O(1), not a copy of the list), and freeing a message never
    /// recurses, however deep its nesting.
    enum Value {
        case str(String)
        case int(Int64)
        case float(Double)
        case list([Int])
        case tuple([Int])
        case none
        case bool(Bool)
    }

    /// The most objects one message may create; each opcode reads at least one byte, so decoding is linear in
    /// the message's size.
    static let maxObjects = 1_000_000
    /// Carbon's payload nests three deep (list, item tuple, point tuple); anything much deeper is refused.
    public static let maxDepth = 32
    static let markIndex = -1

    static let refusedNames: [UInt8: String] = [
        UInt8(ascii: "c"): "GLOBAL", UInt8(ascii: "R"): "REDUCE", UInt8(ascii: "b"): "BUILD", UInt8(ascii: "i"): "INST",
        UInt8(ascii: "o"): "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL", UInt8(ascii: "P"): "PERSID",
        UInt8(ascii: "Q"): "BINPERSID", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", UInt8(ascii: "}"): "EMPTY_DICT",
        UInt8(ascii: "d"): "DICT", UInt8(ascii: "s"): "SETITEM", UInt8(ascii: "u"): "SETITEMS", 0x8F: "EMPTY_SET",
        0x90: "ADDITEMS", 0x91: "FROZENSET", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
    ]

    /// Decodes one pickle message (the payload after carbon's 4-byte length prefix).
    public static func decode(_ data: [UInt8]) throws(Refused) -> [Datapoint] {
        var r = Reader(data: data)
        var arena: [Value] = []
        var depth: [Int] = []  // nesting depth of each arena object (1 for scalars)
        var stack: [Int] = []  // arena indices; markIndex for MARK
        var memo: [Int: Int] = [:]

        func push(_ v: Value, depth d: Int = 1) throws(Refused) {
            guard arena.count < maxObjects else { throw Refused(reason: "pickle too large (more than \(maxObjects) objects)") }
            guard d <= maxDepth else { throw Refused(reason: "pickle nested deeper than \(maxDepth) levels") }
            arena.append(v)
            depth.append(d)
            stack.append(arena.count - 1)
        }
        func pop() throws(Refused) -> Int {
            guard let v = stack.popLast(), v != markIndex else { throw Refused(reason: "stack underflow") }
            return v
        }
        func popToMark() throws(Refused) -> [Int] {
            guard let m = stack.lastIndex(of: markIndex) else { throw Refused(reason: "no MARK on the stack") }
            let items = Array(stack[(m + 1)...])
            stack.removeSubrange(m...)
            return items
        }
        func top() throws(Refused) -> Int {
            guard let t = stack.last, t != markIndex else { throw Refused(reason: "memo of an empty stack") }
            return t
        }
        func container(_ items: [Int], tuple: Bool) throws(Refused) {
            let d = 1 + (items.map { depth[$0] }.max() ?? 0)
            try push(tuple ? .tuple(items) : .list(items), depth: d)
        }
        func appendTo(_ items: [Int]) throws(Refused) {
            let target = try pop()
            guard case .list(var l) = arena[target] else { throw Refused(reason: "APPEND to something that is not a list") }
            let d = 1 + (items.map { depth[$0] }.max() ?? 0)
            guard d <= maxDepth else { throw Refused(reason: "pickle nested deeper than \(maxDepth) levels") }
            arena[target] = .none  // hand the array over uniquely, so appending does not copy it
            l.append(contentsOf: items)
            arena[target] = .list(l)
            depth[target] = max(depth[target], d)
            stack.append(target)
        }

        while true {
            let op = try r.byte()
            if let name = refusedNames[op] {
                throw Refused(
                    reason: "refused pickle opcode \(name) (0x\(String(op, radix: 16))): the tap decodes data only, it never imports or calls")
            }
            switch op {
            case 0x80:  // PROTO
                let v = try r.byte()
                guard v <= 5 else { throw Refused(reason: "unsupported pickle protocol \(v)") }
            case 0x95: _ = try r.bytes(8)  // FRAME: length prefix, contents follow inline
            case UInt8(ascii: "."):  // STOP
                return try datapoints(try pop(), arena)
            case UInt8(ascii: "("): stack.append(markIndex)
            case UInt8(ascii: "]"): try push(.list([]))
            case UInt8(ascii: "l"): try container(try popToMark(), tuple: false)
            case UInt8(ascii: ")"): try push(.tuple([]))
            case UInt8(ascii: "t"): try container(try popToMark(), tuple: true)
            case 0x85: try container([try pop()], tuple: true)
            case 0x86:
                let b = try pop(), a = try pop()
                try container([a, b], tuple: true)
            case 0x87:
                let c = try pop(), b = try pop(), a = try pop()
                try container([a, b, c], tuple: true)
            case UInt8(ascii: "a"): try appendTo([try pop()])
            case UInt8(ascii: "e"):
                let items = try popToMark()
                try appendTo(items)
            case UInt8(ascii: "0"):  // POP (a MARK too)
                guard stack.popLast() != nil else { throw Refused(reason: "stack underflow") }
            case UInt8(ascii: "1"): _ = try popToMark()  // POP_MARK
            case UInt8(ascii: "2"):  // DUP: the same object again
                guard let top = stack.last, top != markIndex else { throw Refused(reason: "stack underflow") }
                stack.append(top)
            case UInt8(ascii: "N"): try push(.none)
            case 0x88: try push(.bool(true))
            case 0x89: try push(.bool(false))
            case UInt8(ascii: "I"):  // INT (text); "I01"/"I00" are True/False
                let s = try r.line()
                if s == "01" {
                    try push(.bool(true))
                } else if s == "00" {
                    try push(.bool(false))
                } else {
                    guard let v = Int64(s) else { throw Refused(reason: "bad INT '\(s.prefix(40))'") }
                    try push(.int(v))
                }
            case UInt8(ascii: "L"):  // LONG (text, trailing L)
                var s = try r.line()
                if s.hasSuffix("L") { s.removeLast() }
                guard let v = Int64(s) else { throw Refused(reason: "bad LONG '\(s.prefix(40))'") }
                try push(.int(v))
            case UInt8(ascii: "J"): try push(.int(Int64(Int32(bitPattern: try r.le32()))))
            case UInt8(ascii: "K"): try push(.int(Int64(try r.byte())))
            case UInt8(ascii: "M"): try push(.int(Int64(try r.le16())))
            case 0x8A:  // LONG1
                let n = Int(try r.byte())
                guard n <= 8 else { throw Refused(reason: "integer too large") }
                let b = Array(try r.bytes(n))
                var v: Int64 = 0
                for (i, x) in b.enumerated() { v |= Int64(x) << (8 * Int64(i)) }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 { v -= Int64(1) << (8 * Int64(n)) }
                try push(.int(v))
            case UInt8(ascii: "F"):
                let s = try r.line()
                guard let v = Double(s) else { throw Refused(reason: "bad FLOAT '\(s.prefix(40))'") }
                try push(.float(v))
            case UInt8(ascii: "G"):
                let b = try r.bytes(8)
                var bits: UInt64 = 0
                for x in b { bits = bits << 8 | UInt64(x) }
                try push(.float(Double(bitPattern: bits)))
            case UInt8(ascii: "S"):  // STRING: a quoted Python 2 literal
                let s = try r.line()
                guard s.count >= 2, let q = s.first, q == s.last, q == "'" || q == "\"" else {
                    throw Refused(reason: "bad STRING literal")
                }
                try push(.str(try unescape(String(s.dropFirst().dropLast()))))
            case UInt8(ascii: "V"): try push(.str(try unescapeRaw(try r.latin1Line())))
            case UInt8(ascii: "U"), UInt8(ascii: "C"), 0x8C:  // SHORT_BINSTRING, SHORT_BINBYTES, SHORT_BINUNICODE
                try push(.str(try r.utf8(Int(try r.byte()))))
            case UInt8(ascii: "T"), UInt8(ascii: "X"), UInt8(ascii: "B"):  // BINSTRING, BINUNICODE, BINBYTES
                try push(.str(try r.utf8(Int(try r.le32()))))
            case UInt8(ascii: "p"): memo[try r.intLine()] = try top()
            case UInt8(ascii: "q"): memo[Int(try r.byte())] = try top()
            case UInt8(ascii: "r"): memo[Int(try r.le32())] = try top()
            case 0x94: memo[memo.count] = try top()  // MEMOIZE
            case UInt8(ascii: "g"), UInt8(ascii: "h"), UInt8(ascii: "j"):
                let k: Int
                switch op {
                case UInt8(ascii: "g"): k = try r.intLine()
                case UInt8(ascii: "h"): k = Int(try r.byte())
                default: k = Int(try r.le32())
                }
                guard let v = memo[k] else { throw Refused(reason: "memo key \(k) not defined") }
                stack.append(v)  // the same object, as Python's memo gives it
            default:
                throw Refused(reason: "unsupported pickle opcode 0x\(String(op, radix: 16))")
            }
        }
    }

    static func number(_ v: Value) -> Double? {
        switch v {
        case .int(let i): Double(i)
        case .float(let d): d
        case .str(let s): Double(s)
        default: nil
        }
    }

    /// Carbon's shape: a list (or tuple) of `(path, (timestamp, value))`, three levels read by index.
    static func datapoints(_ root: Int, _ arena: [Value]) throws(Refused) -> [Datapoint] {
        let items: [Int]
        switch arena[root] {
        case .list(let l), .tuple(let l): items = l
        default: throw Refused(reason: "expected a list of (path, (timestamp, value)) tuples")
        }
        var out: [Datapoint] = []
        out.reserveCapacity(items.count)
        for item in items {
            guard case .tuple(let pair) = arena[item], pair.count == 2, case .str(let path) = arena[pair[0]] else {
                throw Refused(reason: "expected (path, (timestamp, value)) items")
            }
            let point: [Int]
            switch arena[pair[1]] {
            case .tuple(let p), .list(let p): point = p
            default: throw Refused(reason: "expected (timestamp, value) for \(path.prefix(100))")
            }
            guard point.count == 2, let ts = number(arena[point[0]]), let value = number(arena[point[1]]) else {
                throw Refused(reason: "expected numeric (timestamp, value) for \(path.prefix(100))")
            }
            out.append(Datapoint(path: path, timestamp: ts, value: value))
        }
        return out
    }

    /// Python 2 string-literal escapes used by protocol 0 `STRING`.
    static func unescape(_ s: String) throws(Refused) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            guard c == UInt8(ascii: "\\"), let e = it.popFirst() else { bytes.append(c); continue }
            switch e {
            case UInt8(ascii: "n"): bytes.append(0x0A)
            case UInt8(ascii: "t"): bytes.append(0x09)
            case UInt8(ascii: "r"): bytes.append(0x0D)
            case UInt8(ascii: "x"):
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else {
                    throw Refused(reason: "bad \\x escape")
                }
                bytes.append(v)
                it = it.dropFirst(2)
            default: bytes.append(e)
            }
        }
        guard let out = String(validating: bytes, as: UTF8.self) else { throw Refused(reason: "string is not UTF-8") }
        return out
    }

    /// `raw-unicode-escape` as protocol 0 `UNICODE` writes it (`\uXXXX`, `\UXXXXXXXX`).
    static func unescapeRaw(_ s: String) throws(Refused) -> String {
        guard s.contains("\\u") || s.contains("\\U") else { return s }
        var out = ""
        var chars = Array(s.unicodeScalars)[...]
        while let c = chars.popFirst() {
            if c == "\\", let k = chars.first, k == "u" || k == "U" {
                let n = k == "u" ? 4 : 8
                let hex = String(String.UnicodeScalarView(chars.dropFirst().prefix(n)))
                guard hex.count == n, let v = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(v) else {
                    throw Refused(reason: "bad \\u escape")
                }
                out.unicodeScalars.append(scalar)
                chars = chars.dropFirst(1 + n)
            } else {
                out.unicodeScalars.append(c)
            }
        }
        return out
    }

    struct Reader {
        let data: [UInt8]
        var pos = 0

        mutating func byte() throws(Refused) -> UInt8 {
            guard pos < data.count else { throw Refused(reason: "truncated pickle (no STOP)") }
            defer { pos += 1 }
            return data[pos]
        }

        mutating func bytes(_ n: Int) throws(Refused) -> ArraySlice<UInt8> {
            guard n >= 0, data.count - pos >= n else { throw Refused(reason: "truncated pickle") }
            defer { pos += n }
            return data[pos..<(pos + n)]
        }

        mutating func le16() throws(Refused) -> UInt16 {
            let b = try bytes(2)
            return UInt16(b[b.startIndex]) | UInt16(b[b.startIndex + 1]) << 8
        }

        mutating func le32() throws(Refused) -> UInt32 {
            let b = try bytes(4)
            var v: UInt32 = 0
            for (i, x) in b.enumerated() { v |= UInt32(x) << (8 * UInt32(i)) }
            return v
        }

        mutating func line() throws(Refused) -> String {
            guard let nl = data[pos...].firstIndex(of: 0x0A), nl - pos <= 65536 else { throw Refused(reason: "truncated pickle line") }
            defer { pos = nl + 1 }
            guard let s = String(validating: data[pos..<nl], as: UTF8.self) else { throw Refused(reason: "pickle text is not UTF-8") }
            return s
        }

        /// `raw-unicode-escape` writes characters below 256 as single (Latin-1) bytes.
        mutating func latin1Line() throws(Refused) -> String {
            guard let nl = data[pos...].firstIndex(of: 0x0A), nl - pos <= 65536 else { throw Refused(reason: "truncated pickle line") }
            defer { pos = nl + 1 }
            var s = ""
            s.unicodeScalars.append(contentsOf: data[pos..<nl].map { Unicode.Scalar($0) })
            return s
        }

        mutating func intLine() throws(Refused) -> Int {
            let s = try line()
            guard let v = Int(s), v >= 0 else { throw Refused(reason: "bad memo index") }
            return v
        }

        mutating func utf8(_ n: Int) throws(Refused) -> String {
            let b = try bytes(n)
            guard let s = String(validating: b, as: UTF8.self) else { throw Refused(reason: "pickle string is not UTF-8") }
            return s
        }
    }
}
