import FerryTesting
import Foundation
import Testing

/// `ferry report --html` after a real run: the numbers in the page against the test's own walk of the tree, a
/// page with no external asset, and Debian's headless Chromium rendering it to a PNG that is not blank.
@Suite struct ReportTests {
    @Test func theReportOfAFinishedRunHoldsItsNumbersAndChromiumRendersIt() throws {
        var rng = SeededRandom("reportTest")
        // About 12 MiB at 2 MiB/s: a copy of six seconds, so the ledger keeps samples inside it.
        let s = try Scenario(chunkSize: "1MiB", bandwidth: "2MiB/s")
        var count = 0
        for i in 0..<40 {
            try TreeGen.write(s.source + "/small/\(i).bin", size: Int(rng.next() % 100_000) + 1, seed: rng.next())
            count += 1
        }
        for i in 0..<3 {
            try TreeGen.write(s.source + "/large/\(i).bin", size: 3 * 1_048_576 + Int(rng.next() % 9999), seed: rng.next())
            count += 1
        }
        let bytes = s.treeBytes()
        let run = try s.ferry("run", "PLAN")
        #expect(run.status == 0, "\(run.all)")
        let out = s.dir.sub("report.html")
        let r = try s.ferry("report", "PLAN", "--html", out)
        #expect(r.status == 0, "\(r.all)")
        let page = try String(contentsOfFile: out, encoding: .utf8)

        func cell(_ id: String) -> String? {
            guard let a = page.range(of: "id=\"\(id)\">"), let b = page[a.upperBound...].range(of: "<") else { return nil }
            return String(page[a.upperBound..<b.lowerBound])
        }
        #expect(cell("inv-files") == "\(count)")
        #expect(cell("inv-bytes") == "\(bytes)")
        #expect(cell("inv-files-done") == "\(count)")
        #expect(cell("inv-bytes-done") == "\(bytes)")
        #expect(cell("phase") == "ready")
        // The verify round: every file hashed, clean.
        #expect(page.contains("<td class=\"num\">\(count)</td><td class=\"num\">\(bytes)</td><td class=\"num\">0</td>"), "verify row")
        #expect(page.contains(">CLEAN<"))
        // Phases and events from the ledger, a drawn throughput chart, samples kept.
        for phase in ["<td>snapshot</td>", "<td>copy</td>", "<td>verify</td>", "<td>ready</td>"] {
            #expect(page.contains(phase), "no \(phase) in the phase table")
        }
        #expect(page.contains("manifest of"), "the snapshot event")
        #expect(page.contains("<polyline"), "no chart was drawn")
        let samples = Int(cell("samples")?.split(separator: " ").first ?? "") ?? 0
        #expect(samples >= 3, "\(samples) samples")
        // Self-contained: nothing fetched from elsewhere.
        for external in ["<script", "src=", "href=", "url(", "@import"] {
            #expect(!page.contains(external), "the page refers to an external asset (\(external))")
        }

        // Chromium renders it; the PNG is decoded with Python's zlib (no image library) and must not be one colour.
        let png = s.dir.sub("report.png")
        let chromium = Process()
        chromium.executableURL = URL(fileURLWithPath: "/usr/bin/chromium")
        chromium.arguments = [
            "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,2400", "--screenshot=\(png)",
            "file://\(out)",
        ]
        chromium.standardOutput = FileHandle.nullDevice
        chromium.standardError = FileHandle.nullDevice
        chromium.environment = ["HOME": s.dir.path, "PATH": "/usr/bin:/bin"]
        try chromium.run()
        chromium.waitUntilExit()
        #expect(chromium.terminationStatus == 0)
        let check = try sh([
            "python3", "-c",
            """
            import struct, sys, zlib
            data = open(sys.argv[1], 'rb').read()
            assert data[:8] == b'\\x89PNG\\r\\n\\x1a\\n', 'not a PNG'
            i, idat, w, h = 8, b'', 0, 0
            while i < len(data):
                n, kind = struct.unpack('>I4s', data[i:i + 8])
                if kind == b'IHDR': w, h = struct.unpack('>II', data[i + 8:i + 16])
                if kind == b'IDAT': idat += data[i + 8:i + 8 + n]
                i += 12 + n
            raw = zlib.decompress(idat)
            print(w, h, len(set(raw)))
            """,
            png,
        ])
        #expect(check.status == 0, "\(check.out)")
        let parts = check.out.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(parts.count == 3 && parts[0] == 1000 && parts[2] > 16, "PNG \(check.out): blank or not rendered")
    }
}
