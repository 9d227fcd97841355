/// Parsing and formatting of the human units a plan uses: sizes (`8MiB`), rates (`50MiB/s`),
/// durations (`1h30m`) and fractions (`5%`).
public enum Units {
    private static let sizeUnits: [(String, Double)] = [
        ("TiB", 1_099_511_627_776), ("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024),
        ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("KB", 1e3), ("B", 1),
    ]

    /// Parses `8MiB`, `512KiB`, `1.5GiB`, `100MB`, `4096` (bytes). Returns nil for anything else.
    public static func parseSize(_ text: String) -> Int64? {
        let s = text.trimmingSpaces()
        guard !s.isEmpty else { return nil }
        var number = Substring(s)
        var multiplier: Double = 1
        for (suffix, factor) in sizeUnits where s.hasSuffix(suffix) {
            number = s.dropLast(suffix.count)
            multiplier = factor
            break
        }
        let digits = number.trimmingSpacesSub()
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            digits.filter({ $0 == "." }).count <= 1, digits.first != ".", digits.last != ".",
            let value = Double(digits)
        else { return nil }
        let bytes = value * multiplier
        guard bytes.isFinite, bytes >= 0, bytes < 9.2e18, bytes == bytes.rounded() else { return nil }
        return Int64(bytes)
    }

    /// Parses a rate: `50MiB/s`, or `off`/`unlimited` (nil rate). Returns `.failure` for a malformed text.
    public static func parseRate(_ text: String) -> Result<Int64?, RateError> {
        let s = text.trimmingSpaces()
        if s == "off" || s == "unlimited" || s == "none" { return .success(nil) }
        guard s.hasSuffix("/s"), let size = parseSize(String(s.dropLast(2))), size > 0 else {
            return .failure(RateError())
        }
        return .success(size)
    }

    public struct RateError: Error {}

    private static let durationUnits: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800]

    /// Parses `90s`, `30m`, `1h30m`, `7d`, `2w`. Returns seconds, or nil for anything else.
    public static func parseDuration(_ text: String) -> Double? {
        let s = text.trimmingSpaces()
        guard !s.isEmpty else { return nil }
        var total: Double = 0
        var digits = ""
        var sawUnit = false
        for ch in s {
            if ch.isASCII && (ch.isNumber || ch == ".") {
                digits.append(ch)
            } else if let unit = durationUnits[ch] {
                guard !digits.isEmpty, let v = Double(digits) else { return nil }
                total += v * unit
                digits = ""
                sawUnit = true
            } else {
                return nil
            }
        }
        guard digits.isEmpty, sawUnit else { return nil }
        return total
    }

    /// Parses `5%` or `0.05` into a fraction in (0, 1]; nil otherwise.
    public static func parseFraction(_ text: String) -> Double? {
        let s = text.trimmingSpaces()
        let value: Double?
        if s.hasSuffix("%") {
            value = Double(s.dropLast()).map { $0 / 100 }
        } else {
            value = Double(s)
        }
        guard let v = value, v.isFinite, v > 0, v <= 1 else { return nil }
        return v
    }

    /// `1.5 GiB`, `512 B`.
    public static func formatBytes(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var i = 0
        while abs(value) >= 1024 && i < units.count - 1 {
            value /= 1024
            i += 1
        }
        if i == 0 { return "\(bytes) B" }
        return "\(formatDecimal(value, places: value < 10 ? 2 : 1)) \(units[i])"
    }

    /// `1h02m03s`, `4m05s`, `12s`.
    /// How long something took: as `formatDuration`, with tenths under ten seconds (a fast verify said "in 0s").
    public static func formatElapsed(_ seconds: Double) -> String {
        seconds.isFinite && seconds >= 0 && seconds < 9.95 ? String(format: "%.1fs", seconds) : formatDuration(seconds)
    }

    public static func formatDuration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        var s = Int64(seconds.rounded())
        let d = s / 86400
        s %= 86400
        let h = s / 3600
        s %= 3600
        let m = s / 60
        s %= 60
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        if d > 0 { return "\(d)d\(two(h))h\(two(m))m" }
        if h > 0 { return "\(h)h\(two(m))m\(two(s))s" }
        if m > 0 { return "\(m)m\(two(s))s" }
        return "\(s)s"
    }

    public static func formatDecimal(_ value: Double, places: Int) -> String {
        var factor = 1.0
        for _ in 0..<places { factor *= 10 }
        let scaled = (value * factor).rounded()
        let intPart = Int64(scaled / factor)
        let frac = Int64(abs(scaled).truncatingRemainder(dividingBy: factor))
        if places == 0 { return "\(intPart)" }
        var fracText = String(frac)
        while fracText.count < places { fracText = "0" + fracText }
        let sign = value < 0 && intPart == 0 ? "-" : ""
        return "\(sign)\(intPart).\(fracText)"
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

extension Substring {
    func trimmingSpacesSub() -> String { String(self).trimmingSpaces() }
}
