import FerryCore
import FerryTesting
import Foundation
import Testing

/// Prometheus, for real: Debian's prometheus scrapes a paced `ferry run` on loopback, and the test asks its
/// HTTP API what it saw. The expected totals come from the test's own walk of the tree it wrote.
@Suite(.serialized) struct MetricsTests {
    static func get(_ url: String) -> String? {
        guard let r = try? sh(["curl", "-sf", "--max-time", "5", url]), r.status == 0 else { return nil }
        return r.out
    }

    /// The first `key=value` address a log line names after `marker`.
    static func address(in log: String, after marker: String, prefix: String) -> String? {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.contains(marker) {
            guard let r = line.range(of: prefix) else { continue }
            let rest = line[r.upperBound...].prefix { !$0.isWhitespace && $0 != "/" && $0 != "\"" }
            if rest.contains(":") { return String(rest) }
        }
        return nil
    }

    /// Starts `process` with its stderr in `log` (created empty), and waits for the address the log names on a
    /// line with `marker` after `prefix`; nil when none came within 30 s.
    static func launch(_ process: Process, log: String, marker: String, prefix: String) throws -> String? {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try process.run()
        var at: String?
        _ = waitUntil(timeout: 30) {
            at = address(in: log, after: marker, prefix: prefix)
            return at != nil
        }
        return at
    }

    /// One Prometheus instant query's values, by the series' labels (rendered `k=v,...`).
    static func query(_ prom: String, _ expr: String) throws -> [String: Double] {
        let q = expr.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expr
        guard let body = get("http://\(prom)/api/v1/query?query=\(q)"),
            let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let data = json["data"] as? [String: Any], let result = data["result"] as? [[String: Any]]
        else { return [:] }
        var out: [String: Double] = [:]
        for r in result {
            let metric = (r["metric"] as? [String: String]) ?? [:]
            let key = metric.filter { $0.key != "__name__" && $0.key != "job" && $0.key != "instance" }.sorted { $0.key < $1.key }
                .map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            if let v = r["value"] as? [Any], v.count == 2, let s = v[1] as? String, let d = Double(s) { out[key] = d }
        }
        return out
    }

    @Test func prometheusScrapesARealRunAndTheCountersEndAtTheInventoryTotals() throws {
        var rng = SeededRandom("prometheusScrapes")
        let s = try Scenario(
            chunkSize: "1MiB", bandwidth: "1MiB/s",
            extra: "metrics: { listen: \"127.0.0.1:0\", linger: 4s }")
        // 60 small files and three that span several chunks: about 11 MiB, eleven seconds at 1 MiB/s (Prometheus
        // applies new targets at most every five seconds, so its first scrape comes a few seconds in).
        var sizes: [Int] = []
        for i in 0..<60 {
            let n = Int(rng.next() % 65_536) + 1
            sizes.append(n)
            try TreeGen.write(s.source + "/small/\(i).bin", size: n, seed: rng.next())
        }
        for i in 0..<3 {
            let n = 3 * 1_048_576 + Int(rng.next() % 100_000)
            sizes.append(n)
            try TreeGen.write(s.source + "/large/\(i).bin", size: n, seed: rng.next())
        }
        let totalBytes = s.treeBytes()
        #expect(totalBytes == Int64(sizes.reduce(0, +)))

        // Prometheus on loopback, its own port chosen by the system, ready before ferry starts; it learns ferry's
        // address from a file_sd file written once ferry says it (and scrapes it twice a second).
        let promDir = s.dir.sub("prometheus")
        try FileManager.default.createDirectory(atPath: promDir, withIntermediateDirectories: true)
        try """
        global: { scrape_interval: 500ms, scrape_timeout: 400ms }
        scrape_configs:
          - job_name: ferry
            file_sd_configs: [ { files: ["\(promDir)/targets.json"] } ]
        """.write(toFile: promDir + "/prometheus.yml", atomically: true, encoding: .utf8)
        let prom = Process()
        prom.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
        prom.arguments = [
            "--config.file=\(promDir)/prometheus.yml", "--storage.tsdb.path=\(promDir)/data", "--web.listen-address=127.0.0.1:0",
        ]
        defer {
            if prom.isRunning {
                prom.terminate()
                prom.waitUntilExit()
            }
        }
        let promAt = try Self.launch(prom, log: promDir + "/log", marker: "Listening on", prefix: "address=")
        let api = try #require(promAt)

        #expect(waitUntil(timeout: 30) { Self.get("http://\(api)/-/ready") != nil })

        let log = s.dir.sub("run.log")
        let p = Ferry.process(["run", s.plan])
        defer { if p.isRunning { p.terminate() } }
        let target = try Self.launch(p, log: log, marker: "metrics on", prefix: "http://")
        let ferryAt = try #require(target)

        let targets = "[{\"targets\": [\"\(ferryAt)\"]}]"
        try targets.write(toFile: promDir + "/targets.json.tmp", atomically: false, encoding: .utf8)
        #expect(rename(promDir + "/targets.json.tmp", promDir + "/targets.json") == 0)

        // While the copy runs, one of our own scrapes passes promtool's lint.
        var scrape = ""
        #expect(
            waitUntil(timeout: 30) {
                scrape = Self.get("http://\(ferryAt)/metrics") ?? ""
                return scrape.contains("ferry_bytes_processed_total{phase=\"copy\"}")
            })
        let lint = try sh(["promtool", "check", "metrics"], input: Data(scrape.utf8))
        #expect(lint.status == 0, "promtool check metrics: \(lint.out)")
        // Every metric of a run is there from the start, but the verify's result (no verify has run yet).
        for m in Telemetry.catalog where m.exportedBy.contains("run") && m.name != Telemetry.verifyMismatches {
            #expect(scrape.contains("# HELP \(m.name) "), "\(m.name) has no help text in the scrape")
        }

        // Prometheus sees the copy move: several distinct values of bytes done during the copy phase.
        var seen = Set<Double>()
        #expect(
            waitUntil(timeout: 60) {
                if let v = (try? Self.query(api, "ferry_bytes_processed_total{phase=\"copy\"}"))?.values.first { seen.insert(v) }
                return seen.count >= 3 || !p.isRunning
            })
        #expect(seen.count >= 3, "prometheus saw the copy's bytes at \(seen.sorted()) only")
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "ferry run: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")

        // The last values, as Prometheus stored them (the endpoint lingers four seconds after the job).
        func last(_ expr: String) throws -> [String: Double] { try Self.query(api, "last_over_time(\(expr)[1m])") }
        let copied = try last("ferry_bytes_processed_total")
        let files = try last("ferry_files_processed_total")
        let phase = try last("ferry_phase")
        #expect(copied["phase=copy"] == Double(totalBytes), "bytes copied \(copied), inventory \(totalBytes)")
        #expect(files["phase=copy"] == Double(sizes.count), "files copied \(files), inventory \(sizes.count)")
        #expect(copied["phase=verify"] == Double(totalBytes), "bytes verified \(copied)")
        #expect(phase["phase=ready"] == 1 && phase["phase=copy"] == 0, "phase \(phase)")
        #expect(try last("ferry_bytes_pending").values.first == 0)
        #expect(try last("ferry_verify_mismatches").values.first == 0)
        // Three files of three chunks (and a bit) each: at least 9 chunks recorded.
        #expect((try last("ferry_chunks_committed_total").values.first ?? 0) >= 9)
        let stamp = try last("ferry_last_progress_timestamp_seconds").values.first ?? 0
        #expect(abs(stamp - Date().timeIntervalSince1970) < 120, "last progress at \(stamp)")
        #expect(s.parity().isEmpty)
    }

    @Test func theMetricsEndpointRefusesWhatIsNotAScrapeAndSurvivesAFlood() throws {
        let dir = TempDir("ferry-metrics")
        try FileManager.default.createDirectory(atPath: dir.sub("root"), withIntermediateDirectories: true)
        try "0123456789abcdef0123456789".write(toFile: dir.sub("token"), atomically: true, encoding: .utf8)
        let p = Ferry.process([
            "serve", "--listen", "127.0.0.1:0", "--root", dir.sub("root"), "--token-file", dir.sub("token"), "--metrics-listen",
            "127.0.0.1:0",
        ])
        defer {
            if p.isRunning {
                p.terminate()
                p.waitUntilExit()
            }
        }
        let at = try Self.launch(p, log: dir.sub("serve.log"), marker: "metrics on", prefix: "http://")
        let addr = try #require(at)
        let notFound = try sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(addr)/other"])
        #expect(notFound.out == "404")
        let post = try sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "x", "http://\(addr)/metrics"])
        #expect(post.out == "405")
        // A header far past any scrape's (and past the HTTP decoder's 80 KiB), and 200 connections that send nothing: the endpoint still answers.
        let huge = String(repeating: "a", count: 100_000)
        let big = try sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Big: \(huge)", "http://\(addr)/metrics"])
        #expect(big.out == "400", "a 100 KB header was answered with \(big.out)")
        // 200 connections that send nothing, held open while a scrape is made: the scrape is answered (the
        // oldest silent connections make room), and the endpoint still answers once they are gone.
        let flood = Process()
        flood.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        flood.arguments = [
            "python3", "-c",
            """
            import socket, sys
            host, port = sys.argv[1].rsplit(':', 1)
            socks = []
            for _ in range(200):
                try:
                    socks.append(socket.create_connection((host, int(port)), timeout=2))
                except OSError:
                    pass
            print(len(socks), flush=True)
            sys.stdin.read()
            """,
            addr,
        ]
        let floodOut = Pipe()
        let floodIn = Pipe()
        flood.standardOutput = floodOut
        flood.standardInput = floodIn
        try flood.run()
        let opened = String(decoding: floodOut.fileHandleForReading.availableData, as: UTF8.self)
        #expect(!opened.isEmpty, "the flood did not start")
        let during = Self.get("http://\(addr)/metrics") ?? ""
        #expect(during.contains("# TYPE"), "a scrape during the flood (\(opened) connections open) was not answered")
        try floodIn.fileHandleForWriting.close()
        flood.waitUntilExit()
        #expect(flood.terminationStatus == 0)
        let after = Self.get("http://\(addr)/metrics") ?? ""
        #expect(after.contains("# TYPE"), "the endpoint stopped answering after the flood: \(after.prefix(200))")
        #expect(p.isRunning)
    }
}
