import FerryCore
import FerryEngine
import Foundation

/// Everything the HTML report shows, read from the plan and the ledger.
struct ReportData {
    var plan: Plan
    var job: JobRecord
    var counts: StateCounts
    var directories: Int64
    var symlinks: Int64
    var refused: Int64
    var skippedByPolicy: Int64
    var events: [(at: Double, kind: String, message: String)]
    var verifies: [VerifyRunRecord]
    var samples: [ProgressSample]
    var generatedAt: Date
    /// The last `ferry rehearse` of this plan, when there is one.
    var rehearsal: Rehearsal? = nil
}

/// One self-contained HTML page (inline CSS, inline SVG, no scripts, no external assets).
enum ReportHTML {
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.count)
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    static func phaseDurations(_ d: ReportData) -> [(phase: String, seconds: Double, open: Bool)] { PhaseTimeline.durations(d.events) }

    /// A line chart: `series` as (x, y) in data units, drawn into a fixed viewBox with labelled axes.
    static func chart(title: String, unit: (Double) -> String, series: [(label: String, color: String, points: [(Double, Double)])]) -> String {
        let all = series.flatMap(\.points)
        guard all.count >= 2, let x0 = all.map(\.0).min(), let x1 = all.map(\.0).max(), x1 > x0 else {
            return "<p class=\"muted\">\(escape(title)): not enough samples to draw (the ledger keeps one every few seconds).</p>"
        }
        let yMax = max(all.map(\.1).max() ?? 1, 1e-9) * 1.1
        let (w, h, left, bottom, top, right) = (720.0, 240.0, 80.0, 30.0, 20.0, 20.0)
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * (w - left - right) }
        func py(_ y: Double) -> Double { h - bottom - y / yMax * (h - bottom - top) }
        var svg = "<figure><figcaption>\(escape(title))</figcaption>"
        svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(w)) \(Int(h))\" width=\"\(Int(w))\" height=\"\(Int(h))\" role=\"img\">"
        svg += "<rect x=\"0\" y=\"0\" width=\"\(Int(w))\" height=\"\(Int(h))\" fill=\"#ffffff\"/>"
        for i in 0...4 {
            let y = yMax * Double(i) / 4
            svg += "<line x1=\"\(left)\" y1=\"\(py(y))\" x2=\"\(w - right)\" y2=\"\(py(y))\" stroke=\"#dddddd\"/>"
            svg += "<text x=\"\(left - 6)\" y=\"\(py(y) + 4)\" text-anchor=\"end\" font-size=\"11\">\(escape(unit(y)))</text>"
        }
        svg += "<text x=\"\(left)\" y=\"\(h - 8)\" font-size=\"11\">0 s</text>"
        svg += "<text x=\"\(w - right)\" y=\"\(h - 8)\" text-anchor=\"end\" font-size=\"11\">\(escape(Units.formatDuration(x1 - x0)))</text>"
        for (i, s) in series.enumerated() where s.points.count >= 1 {
            let pts = s.points.map { "\(String(format: "%.1f", px($0.0))),\(String(format: "%.1f", py($0.1)))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\" points=\"\(pts)\"/>"
            svg += "<text x=\"\(left + 10 + Double(i) * 200)\" y=\"\(top)\" font-size=\"12\" fill=\"\(s.color)\">\(escape(s.label))</text>"
        }
        svg += "</svg></figure>"
        return svg
    }

    /// Bytes per second between consecutive samples of the same phase, at the later sample's time.
    static func rates(_ samples: [ProgressSample], phase: String, start: Double) -> [(Double, Double)] {
        var out: [(Double, Double)] = []
        let s = samples.filter { $0.phase == phase }
        for (a, b) in zip(s, s.dropFirst()) where b.at > a.at && b.bytesDone >= a.bytesDone {
            out.append((b.at - start, Double(b.bytesDone - a.bytesDone) / (b.at - a.at)))
        }
        return out
    }

    static func render(_ d: ReportData) -> String {
        let p = d.plan
        let iso = ISO8601DateFormatter()
        func time(_ t: Double) -> String { iso.string(from: Date(timeIntervalSince1970: t)) }
        var h = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>ferry report: \(escape(p.name))</title>
            <style>
            body { font-family: sans-serif; margin: 2em; color: #222; background: #fafafa; }
            table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
            th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
            th { background: #eee; }
            td.num { text-align: right; font-variant-numeric: tabular-nums; }
            .ok { color: #1a7f37; font-weight: bold; } .bad { color: #c62828; font-weight: bold; } .muted { color: #777; }
            figure { margin: 0 0 1.5em; } figcaption { font-weight: bold; margin-bottom: 4px; }
            </style></head><body>
            <h1>ferry report: \(escape(p.name))</h1>
            <p>Generated \(escape(time(d.generatedAt.timeIntervalSince1970))) from the ledger in \(escape(p.stateDirectory)).
            Phase now: <b id="phase">\(escape(d.job.phase.rawValue))</b>.</p>

            """
        // The plan, as ferry understood it (no credentials: stores are shown by name).
        h += "<h2>Plan</h2><table id=\"plan\">"
        var rows: [(String, String)] = [
            ("plan file", p.file), ("source", p.source.displayName), ("destination", p.destination.displayName),
            ("chunk size", Units.formatBytes(p.copy.chunkSize)), ("concurrency", "\(p.copy.concurrency)"),
            ("bandwidth", p.copy.bandwidth.map { Units.formatBytes($0) + "/s" } ?? "unlimited"),
            ("compression", p.copy.compression), ("verify", p.verify.mode == .full ? "full" : "sample \(p.verify.sample * 100)%"),
        ]
        if let tap = p.tap { rows.append(("tap", tap.kind)) }
        if !p.cutover.hooks.isEmpty { rows.append(("cutover hooks", "\(p.cutover.hooks.count)")) }
        for (k, v) in rows { h += "<tr><th>\(escape(k))</th><td>\(escape(v))</td></tr>" }
        h += "</table>"

        // The inventory, from the manifest.
        h += "<h2>Inventory</h2><table id=\"inventory\">"
        let inv: [(String, String, String)] = [
            ("files", "files", "\(d.counts.totalFiles)"), ("bytes", "bytes", "\(d.counts.totalBytes)"),
            ("files done", "files-done", "\(d.counts.files["done"] ?? 0)"), ("bytes done", "bytes-done", "\(d.counts.doneBytes)"),
            ("directories", "directories", "\(d.directories)"), ("symlinks", "symlinks", "\(d.symlinks)"),
            ("refused", "refused", "\(d.refused)"), ("skipped by policy", "skipped", "\(d.skippedByPolicy)"),
        ]
        for (k, id, v) in inv { h += "<tr><th>\(escape(k))</th><td class=\"num\" id=\"inv-\(id)\">\(escape(v))</td></tr>" }
        h += "</table><p class=\"muted\">\(escape(Units.formatBytes(d.counts.totalBytes))) in \(d.counts.totalFiles) files.</p>"

        // Per-phase durations.
        h += "<h2>Phases</h2><table id=\"phases\"><tr><th>phase</th><th>duration</th><th>seconds</th></tr>"
        for ph in phaseDurations(d) {
            h += "<tr><td>\(escape(ph.phase))</td><td>\(ph.open ? "current" : escape(Units.formatDuration(ph.seconds)))</td>"
            h += "<td class=\"num\">\(ph.open ? "" : String(format: "%.1f", ph.seconds))</td></tr>"
        }
        h += "</table>"

        // Throughput over time, from the ledger's samples.
        h += "<h2>Throughput</h2>"
        let start = d.samples.first?.at ?? 0
        let bps: (Double) -> String = { Units.formatBytes(Int64($0)) + "/s" }
        h += chart(
            title: "bytes per second", unit: bps,
            series: [
                ("copy", "#1565c0", rates(d.samples, phase: "copy", start: start)),
                ("verify", "#2e7d32", rates(d.samples, phase: "verify", start: start)),
            ])
        h += chart(
            title: "bytes done in the phase", unit: { Units.formatBytes(Int64($0)) },
            series: [
                ("copy", "#1565c0", d.samples.filter { $0.phase == "copy" }.map { ($0.at - start, Double($0.bytesDone)) }),
                ("verify", "#2e7d32", d.samples.filter { $0.phase == "verify" }.map { ($0.at - start, Double($0.bytesDone)) }),
            ])
        h += "<p class=\"muted\" id=\"samples\">\(d.samples.count) samples.</p>"

        // Verify rounds.
        h += "<h2>Verify</h2><table id=\"verify\"><tr><th>round</th><th>finished</th><th>mode</th><th>files hashed</th>"
        h += "<th>bytes hashed</th><th>mismatches</th><th>drift</th><th>result</th></tr>"
        for v in d.verifies {
            h += "<tr><td class=\"num\">\(v.id)</td><td>\(escape(v.finishedAt.map(time) ?? "-"))</td><td>\(escape(v.mode))</td>"
            h += "<td class=\"num\">\(v.filesChecked)</td><td class=\"num\">\(v.bytesChecked)</td><td class=\"num\">\(v.mismatches)</td>"
            h += "<td class=\"num\">\(v.drift)</td><td class=\"\(v.ok ? "ok" : "bad")\">\(v.ok ? "CLEAN" : "MISMATCH")</td></tr>"
        }
        if d.verifies.isEmpty { h += "<tr><td colspan=\"8\" class=\"muted\">no verify has finished</td></tr>" }
        h += "</table>"

        // The tap's spool and lag.
        if p.tap != nil {
            h += "<h2>Tap</h2>"
            let tapped = d.samples.filter { $0.tapSpoolBytes != nil }
            h += chart(
                title: "spool bytes", unit: { Units.formatBytes(Int64($0)) },
                series: [("spool", "#6a1b9a", tapped.map { ($0.at - start, Double($0.tapSpoolBytes ?? 0)) })])
            h += chart(
                title: "largest upstream lag (seconds)", unit: { String(format: "%.1f s", $0) },
                series: [("lag", "#ef6c00", tapped.compactMap { s in s.tapLagSeconds.map { (s.at - start, $0) } })])
        }

        // The event log: cutover, rollback, fences, hooks and phases.
        h += "<h2>Events</h2><table id=\"events\"><tr><th>time</th><th>kind</th><th>message</th></tr>"
        for e in d.events {
            h += "<tr><td>\(escape(time(e.at)))</td><td>\(escape(e.kind))</td><td>\(escape(e.message))</td></tr>"
        }
        h += "</table>"
        h += "<h2>Rehearsal</h2>"
        if let r = d.rehearsal {
            h += "<p>Rehearsed on staging \(escape(time(r.at))): \(r.staging.files) files, \(escape(Units.formatBytes(r.staging.bytes))); "
            h += "production \(r.production.files) files, \(escape(Units.formatBytes(r.production.bytes))) (a dry run).</p>"
            h += "<table id=\"rehearsal\"><tr><th>phase</th><th>staging s</th><th>projected s</th><th>basis</th></tr>"
            for p in r.phases {
                h += "<tr><td>\(escape(p.name))</td><td class=\"num\">\(String(format: "%.2f", p.stagingSeconds))</td>"
                h +=
                    "<td class=\"num\" id=\"projected-\(escape(p.name))\">\(String(format: "%.2f", p.projectedSeconds))</td><td>\(escape(p.basis))</td></tr>"
            }
            h +=
                "<tr><th>total</th><td></td><td class=\"num\" id=\"projected-total\">\(String(format: "%.2f", r.projectedSeconds))</td><td></td></tr></table>"
            var notes: [String] = []
            if let w = r.cutoverWindowSeconds { notes.append("cutover window (freeze → switch) \(String(format: "%.2f", w)) s") }
            if let i = r.ingestRecordsPerSecond { notes.append("tap ingest \(String(format: "%.1f", i)) records/s") }
            if let n = r.spoolNeededBytes { notes.append("tap spool needed \(Units.formatBytes(Int64(n)))") }
            if !notes.isEmpty { h += "<p>\(escape(notes.joined(separator: "; ")))</p>" }
        } else {
            h += "<p class=\"muted\">No rehearsal projection is recorded for this job (`ferry rehearse` records one).</p>"
        }
        h += "</body></html>\n"
        return h
    }
}
