import ArgumentParser
import FerryCore
import FerryTap
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The tap's health as `ferry tap ctl status` and `ferry status` print it.
func printTap(_ s: TapStatus, indent: String = "") {
    out("\(indent)tap          \(s.kind), pid \(s.pid), mode \(s.mode.rawValue) (primary \(s.primary)), sequence \(s.head)")
    // Each kind counts what it carries: a live tree's tap paths (and the directories it could not watch), the S3
    // tap write requests (and the requests it refused), carbon lines and messages.
    let unit: String
    var line: String
    switch s.kind {
    case "fs-journal":
        unit = "paths"
        line = "\(indent)  journaled  \(s.receivedLines) paths, \(s.refusedMessages) directories that could not be watched (rescanned)"
    case "s3":
        unit = "writes"
        line = "\(indent)  received   \(s.receivedLines) write requests, \(s.refusedMessages) refused requests"
    default:
        unit = "lines"
        line = "\(indent)  received   \(s.receivedLines) lines, \(s.invalidLines) invalid, \(s.refusedMessages) refused messages"
    }
    if s.droppedLines > 0 { line += ", \(s.droppedLines) UDP lines DROPPED (spool full)" }
    out(line)
    out(
        "\(indent)  spool      \(Units.formatBytes(Int64(s.spoolBytes))) of \(Units.formatBytes(Int64(s.spoolLimit)))"
            + (s.backPressure ? "  FULL: senders held back" : "")
            + (s.spoolError.map { "  WRITE FAILING (\($0)): senders held back" } ?? ""))
    for u in s.upstreams {
        var l = "\(indent)  \(pad(u.name, 4))       \(u.address) \(u.role), \(u.connected ? "connected" : "DOWN"), "
        l +=
            "\(s.kind == "fs-journal" ? "applied" : s.kind == "s3" && u.role == "primary" ? "served" : "forwarded") \(u.forwardedLines) \(unit), spooled \(Units.formatBytes(Int64(u.spoolBytes))), lag \(Units.formatDecimal(u.lagSeconds, places: 1)) s"
        if let n = u.pendingRecords, n > 0 { l += ", \(n) \(unit) to apply" }
        if u.reconnects > 0 { l += ", \(u.reconnects) reconnects" }
        if let e = u.lastError, !u.connected { l += " (\(e))" }
        out(l)
    }
}
