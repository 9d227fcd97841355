/// An `exclude:` pattern, in rclone's filter syntax:
///
/// - `*` matches any run of characters but `/`; `**` matches anything, `/` included; `?` one character but `/`;
///   `[abc]`, `[a-z]` and `[!a-z]` one character of (not of) a class; `\` takes the next character literally.
/// - A pattern that starts with `/` is anchored at the root of the tree; any other pattern matches the end of a
///   path on a component boundary (`*.tmp` matches `a.tmp` and `x/y/a.tmp`; `cache/*.bin` matches `cache/a.bin`
///   and `x/cache/a.bin`).
/// - A pattern that ends with `/` matches directories only.
///
/// A matching directory excludes everything below it. Matching runs in time proportional to the pattern times
/// the path (no backtracking blow-up).
public struct GlobPattern: Sendable {
    public let text: String
    let tokens: [Token]
    let anchored: Bool
    let directoryOnly: Bool

    enum Token: Equatable {
        case literal(Character)
        case any  // ?
        case star  // *
        case globstar  // **
        case set([ClosedRange<Character>], negated: Bool)
    }

    /// Why `text` is not a usable pattern, or nil.
    public static func problem(_ text: String) -> String? {
        if text.isEmpty { return "an empty pattern" }
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error.description
        }
    }

    public init(_ text: String) throws {
        self.text = text
        var body = Substring(text)
        anchored = body.hasPrefix("/")
        if anchored { body = body.dropFirst() }
        directoryOnly = body.hasSuffix("/") && !body.hasSuffix("\\/")
        if directoryOnly { body = body.dropLast() }
        tokens = try Self.parse(String(body))
    }

    public struct SyntaxError: Error, CustomStringConvertible {
        public var description: String
    }

    static func parse(_ text: String) throws(SyntaxError) -> [Token] {
        var out: [Token] = []
        let chars = Array(text)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            switch c {
            case "\\":
                guard i + 1 < chars.count else { throw SyntaxError(description: "a pattern cannot end with \\") }
                out.append(.literal(chars[i + 1]))
                i += 2
                continue
            case "*":
                if i + 1 < chars.count && chars[i + 1] == "*" {
                    out.append(.globstar)
                    i += 2
                    while i < chars.count && chars[i] == "*" { i += 1 }
                    continue
                }
                out.append(.star)
            case "?":
                out.append(.any)
            case "[":
                var j = i + 1
                var negated = false
                if j < chars.count && (chars[j] == "!" || chars[j] == "^") {
                    negated = true
                    j += 1
                }
                var ranges: [ClosedRange<Character>] = []
                var first = true
                while j < chars.count && (chars[j] != "]" || first) {
                    first = false
                    var lo = chars[j]
                    if lo == "\\" && j + 1 < chars.count {
                        j += 1
                        lo = chars[j]
                    }
                    if j + 2 < chars.count && chars[j + 1] == "-" && chars[j + 2] != "]" {
                        let hi = chars[j + 2]
                        guard lo <= hi else { throw SyntaxError(description: "a character range runs backwards") }
                        ranges.append(lo...hi)
                        j += 3
                    } else {
                        ranges.append(lo...lo)
                        j += 1
                    }
                }
                guard j < chars.count else { throw SyntaxError(description: "an unclosed [ in the pattern") }
                out.append(.set(ranges, negated: negated))
                i = j + 1
                continue
            default:
                out.append(.literal(c))
            }
            i += 1
        }
        return out
    }

    /// Whether the pattern matches `path` (relative, '/'-separated) of an entry that is or is not a directory.
    public func matches(_ path: String, isDirectory: Bool) -> Bool {
        if directoryOnly && !isDirectory { return false }
        let name = Array(path)
        if anchored { return Self.match(tokens, name[...]) }
        // Unanchored: the pattern matches a suffix of the path that starts on a component boundary.
        if Self.match(tokens, name[...]) { return true }
        for (i, c) in name.enumerated() where c == "/" {
            if Self.match(tokens, name[(i + 1)...]) { return true }
        }
        return false
    }

    /// Dynamic programming over (token, character): reach[j] says whether tokens so far can consume name[..<j].
    static func match(_ tokens: [Token], _ name: ArraySlice<Character>) -> Bool {
        let n = Array(name)
        var reach = [Bool](repeating: false, count: n.count + 1)
        reach[0] = true
        for t in tokens {
            var next = [Bool](repeating: false, count: n.count + 1)
            switch t {
            case .star, .globstar:
                var on = false
                for j in 0...n.count {
                    if reach[j] { on = true }
                    next[j] = on
                    if j < n.count && t == .star && n[j] == "/" { on = false }
                }
            default:
                for j in 0..<n.count where reach[j] {
                    let c = n[j]
                    let ok: Bool
                    switch t {
                    case .literal(let l): ok = c == l
                    case .any: ok = c != "/"
                    case .set(let ranges, let negated): ok = c != "/" && (ranges.contains { $0.contains(c) } != negated)
                    default: ok = false
                    }
                    if ok { next[j + 1] = true }
                }
            }
            reach = next
            if !reach.contains(true) { return false }
        }
        return reach[n.count]
    }
}
