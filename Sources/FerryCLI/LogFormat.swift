import Foundation
import Logging

/// How ferry writes its log lines to stderr.
enum LogFormat: String, CaseIterable {
    /// `message  key=value ...  [level time]`: the message first, so an operator reads (and greps) it first.
    case text
    /// One JSON object per line: time, level, message, module, and the metadata as strings.
    case json
}

/// A swift-log handler for both formats. Writes whole lines with one `write` each (lines of concurrent
/// threads never interleave).
struct FerryLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    let format: LogFormat

    init(format: LogFormat) {
        self.format = format
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let time = Self.timestamp()
        let line: String
        switch format {
        case .text:
            let meta = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            line = "\(event.message)\(meta.isEmpty ? "" : "  " + meta)  [\(event.level) \(time)]\n"
        case .json:
            var object: [String: String] = [
                "time": time, "level": event.level.rawValue, "message": "\(event.message)", "module": event.source,
            ]
            for (k, v) in all where object[k] == nil { object[k] = "\(v)" }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            line = String(decoding: data, as: UTF8.self) + "\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    static func timestamp() -> String {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        var tm = tm()
        var secs = t.tv_sec
        gmtime_r(&secs, &tm)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday), Int(tm.tm_hour),
            Int(tm.tm_min), Int(tm.tm_sec), Int(t.tv_nsec / 1_000_000))
    }
}
