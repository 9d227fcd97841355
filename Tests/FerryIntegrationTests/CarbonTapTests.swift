import FerryCore
import FerryTap
import FerryTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Two real carbon-cache daemons (old and new) and a `ferry tap` process in front of them.
final class TapHarness: @unchecked Sendable {
    let dir = TempDir("tap")
    let old: CarbonCache
    let new: CarbonCache
    let listenPort: Int
    let picklePort: Int
    let plan: String
    let control: String
    var tap: Process?

    init(destination: String? = nil, extraTap: String = "", extraPlan: String = "") throws {
        old = try CarbonCache(name: "carbon-old")
        new = try CarbonCache(name: "carbon-new")
        let ports = freePorts(2)
        listenPort = ports[0]
        picklePort = ports[1]
        control = dir.sub("control.sock")
        plan = try writePlan(
            dir.path,
            """
            version: 1
            name: live-metrics
            source: { kind: whisper, path: \(old.storage) }
            destination: { kind: whisper, path: \(destination ?? new.storage) }
            tap:
              kind: carbon
              listen: 127.0.0.1:\(listenPort)
              listen_pickle: 127.0.0.1:\(picklePort)
              old: \(old.lineAddress)
              new: \(new.lineAddress)
              control: \(control)
            \(extraTap.contains("replay_rate") ? "" : "  replay_rate: 0")
            \(extraTap)
            state: \(dir.sub("state"))
            \(extraPlan)
            """)
    }

    var client: TapClient { TapClient(socketPath: control) }

    func status() throws -> TapStatus { try #require(try client.status()) }

    /// Starts `ferry tap` with its log in a file (a pipe nobody reads would stall it once full).
    func startTap() throws {
        let client = self.client
        tap = try launchDaemon(Ferry.binary, ["tap", plan], log: dir.sub("tap.log"), timeout: 20, what: "the tap") {
            (try? client.status()) != nil
        }
    }

    func killTap() {
        guard let p = tap, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// Waits until the tap has accepted `lines` lines and every fed upstream has all of them.
    func waitDelivered(received lines: UInt64, timeout: Double = 60) throws {
        let ok = try waitUntil(timeout: timeout) {
            let s = try status()
            return s.receivedLines >= lines && s.upstreams.allSatisfy { $0.role == "detached" || ($0.cursor == s.head && $0.connected) }
        }
        let s = try status()
        let log = (try? String(contentsOfFile: dir.sub("tap.log"), encoding: .utf8)) ?? ""
        try #require(
            ok,
            "not delivered: received \(s.receivedLines)/\(lines), \(s.upstreams.map { "\($0.name) \($0.cursor)/\(s.head)" }); tap log ends: \(log.split(separator: "\n").suffix(30).joined(separator: "\n"))"
        )
    }

    /// Waits until carbon has written every expected point, then returns what the reference reader sees.
    func points(in cache: CarbonCache, expect: [String: [Int: Double]], timeout: Double = 60) throws -> [String: [Int: Double]] {
        var seen: [String: [Int: Double]] = [:]
        _ = try waitUntil(timeout: timeout) {
            seen = try WhisperOracle.treePoints(cache.storage)
            return expect.allSatisfy { name, pts in pts.allSatisfy { seen[name]?[$0.key] == $0.value } }
        }
        return seen
    }

    deinit {
        killTap()
        old.kill()
        new.kill()
    }
}

/// The datapoints a test sends, by series and timestamp (last value sent wins, as in Whisper).
struct Sent {
    var points: [String: [Int: Double]] = [:]
    var lines: UInt64 = 0

    mutating func batch(series: [String], times: Range<Int>, salt: Double = 0) -> String {
        var text = ""
        for t in times {
            for (i, s) in series.enumerated() {
                let v = Double(t % 10_000) + Double(i) / 8 + salt
                text += "\(s) \(v) \(t)\n"
                points[s, default: [:]][t] = v
                lines += 1
            }
        }
        return text
    }

    mutating func line(_ s: String, _ v: Double, _ t: Int) -> String {
        points[s, default: [:]][t] = v
        lines += 1
        return "\(s) \(v) \(t)\n"
    }
}

func missing(_ want: [String: [Int: Double]], in got: [String: [Int: Double]]) -> [String] {
    var out: [String] = []
    for (s, pts) in want.sorted(by: { $0.key < $1.key }) {
        for (t, v) in pts.sorted(by: { $0.key < $1.key }) where got[s]?[t] != v {
            out.append("\(s)@\(t)=\(v) (got \(got[s]?[t].map { "\($0)" } ?? "nothing"))")
        }
    }
    return out
}

@Suite struct TapPlanTests {
    @Test func badTapSettingsArePreciseErrorsAndADryRunStartsNothing() throws {
        let dir = TempDir("tap-plan")
        try FileManager.default.createDirectory(atPath: dir.sub("old"), withIntermediateDirectories: true)
        func check(_ tap: String) throws -> Ferry.Result {
            let plan = try writePlan(
                dir.path,
                "version: 1\nname: t\nsource: { kind: whisper, path: old }\ndestination: { kind: whisper, path: new }\n" + tap)
            return try Ferry.run(["plan", "check", plan])
        }
        let typo = try check("tap: { kind: carbon, listen: 127.0.0.1:2003, old: 127.0.0.1:2103, new: 10.0.0.2:2003, spool_limt: 1GiB }\n")
        #expect(typo.status == 2)
        #expect(typo.stderr.contains("plan.yml:5:") && typo.stderr.contains("did you mean 'spool_limit'"), "\(typo.stderr)")
        let missing = try check("tap: { kind: carbon, listen: 127.0.0.1:2003, old: 127.0.0.1:2103 }\n")
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("tap.new"), "\(missing.stderr)")
        let badValues = try check(
            "tap: { kind: carbon, listen: nowhere, old: 127.0.0.1:2103, new: 10.0.0.2:99999, fsync: sometimes, spool_limit: 1KiB }\n")
        #expect(badValues.status == 2)
        for field in ["tap.listen", "tap.new", "tap.fsync", "tap.spool_limit"] {
            #expect(badValues.stderr.contains(field), "\(field): \(badValues.stderr)")
        }
        let loop = try check("tap: { kind: carbon, listen: 127.0.0.1:2003, old: 127.0.0.1:2003, new: 10.0.0.2:2003 }\n")
        #expect(loop.status == 2 && loop.stderr.contains("its own upstream"), "\(loop.stderr)")
        let journalOnMetrics = try check("tap: { kind: fs-journal }\n")
        #expect(
            journalOnMetrics.status == 2 && journalOnMetrics.stderr.contains("tap.kind: fs-journal watches a directory tree"),
            "\(journalOnMetrics.stderr)")

        let port = freePorts(1)[0]
        let ok = try writePlan(
            dir.path,
            """
            version: 1
            name: t
            source: { kind: whisper, path: old }
            destination: { kind: whisper, path: new }
            tap: { kind: carbon, listen: 127.0.0.1:\(port), old: 127.0.0.1:1, new: 127.0.0.1:2, control: \(dir.sub("c.sock")) }
            """)
        #expect(try Ferry.run(["plan", "check", ok]).status == 0)
        let dry = try Ferry.run(["run", ok, "--dry-run"])
        #expect(dry.status == 0, "\(dry.all)")
        // Starting the tap creates its directory and log before the detached process is spawned, so their
        // absence right after the dry run proves no start was attempted (a bind check alone would race).
        #expect(!FileManager.default.fileExists(atPath: dir.sub(".ferry/t/tap")), "a dry run must not start the tap")
        #expect(!FileManager.default.fileExists(atPath: dir.sub(".ferry/t")), "a dry run writes no state")
        #expect(!tcpListening(port))
    }
}

@Suite(.serialized) struct CarbonTapTests {
    static let series = (0..<8).map { "live.host\($0).cpu" }

    @Test func aKilledUpstreamMissesNothingAndOrderPerSeriesHolds() throws {
        let h = try TapHarness()
        try h.startTap()
        // The tap's health shows in `ferry status` even before the job starts.
        let st = try Ferry.run(["status", h.plan])
        #expect(st.stdout.contains("has not started") && st.stdout.contains("mode mirror"), "\(st.stdout)")
        let base = Int(Date().timeIntervalSince1970) - 1800
        var sent = Sent()
        let sender = try LineSender(port: h.listenPort)
        try sender.send(sent.batch(series: Self.series, times: base..<(base + 100)))
        try h.waitDelivered(received: sent.lines)

        h.new.kill()  // SIGKILL: whatever carbon held in memory dies with it
        var text = sent.batch(series: Self.series, times: (base + 100)..<(base + 200))
        // Two values for the same series and second, in order: the later one must win on both sides.
        text += sent.line("live.order", 1, base + 150)
        text += sent.line("live.order", 2, base + 150)
        try sender.send(text)
        let spooled = try waitUntil(timeout: 30) {
            let s = try h.status()
            let n = s.upstreams.first { $0.name == "new" }!
            return s.receivedLines >= sent.lines && !n.connected && n.spoolBytes > 0 && n.lagSeconds >= 0
        }
        #expect(spooled, "the tap never noticed that new was down")
        // Old keeps up on its own while new is down.
        let oldKeptUp = try waitUntil(timeout: 30) {
            let s = try h.status()
            return s.upstreams.first { $0.name == "old" }!.cursor == s.head && !s.upstreams.first { $0.name == "new" }!.connected
        }
        #expect(oldKeptUp, "a down new slowed old")

        try h.new.launch()
        try sender.send(sent.batch(series: Self.series, times: (base + 200)..<(base + 300)))
        try h.waitDelivered(received: sent.lines)
        let after = try h.status()
        #expect(after.upstreams.first { $0.name == "new" }!.reconnects >= 1)
        #expect(after.invalidLines == 0 && after.droppedLines == 0)

        for cache in [h.old, h.new] {
            let got = try h.points(in: cache, expect: sent.points)
            let gaps = missing(sent.points, in: got)
            #expect(gaps.count == 0, "\(cache === h.old ? "old" : "new") misses \(gaps.count) points, e.g. \(gaps.prefix(5))")
            #expect(got["live.order"]?[base + 150] == 2)
        }
    }

    @Test func aKill9OfTheTapWithABacklogLosesNothing() throws {
        let h = try TapHarness()
        try h.startTap()
        let base = Int(Date().timeIntervalSince1970) - 1200
        var sent = Sent()
        h.new.kill()
        do {
            let sender = try LineSender(port: h.listenPort)
            try sender.send(sent.batch(series: Self.series, times: base..<(base + 200)))
        }
        let accepted = try waitUntil(timeout: 30) { try h.status().receivedLines >= sent.lines }
        try #require(accepted)
        let spoolBefore = try h.status().upstreams.first { $0.name == "new" }!.spoolBytes
        #expect(spoolBefore > 0)
        h.killTap()  // kill -9 with the backlog for new only in the spool

        try h.startTap()
        // The mode survives the restart too; switch it through `ferry tap ctl` and back.
        let ctl = try Ferry.run(["tap", "ctl", h.plan, "mode", "reverse", "--json"])
        #expect(ctl.status == 0 && ctl.stdout.contains("\"primary\" : \"new\""), "\(ctl.all)")
        #expect(try Ferry.run(["tap", "ctl", h.plan, "mode", "sideways"]).status != 0)
        h.killTap()
        try h.startTap()
        #expect(try h.status().mode == .reverse)
        #expect(try Ferry.run(["tap", "ctl", h.plan, "mode", "mirror"]).status == 0)
        let restarted = try h.status()
        #expect(restarted.upstreams.first { $0.name == "new" }!.spoolBytes >= spoolBefore, "the backlog did not survive kill -9")
        try h.new.launch()
        let sender = try LineSender(port: h.listenPort)
        try sender.send(sent.batch(series: Self.series, times: (base + 200)..<(base + 250)))
        let total = restarted.receivedLines + 50 * UInt64(Self.series.count)
        try h.waitDelivered(received: total)
        for cache in [h.old, h.new] {
            let gaps = missing(sent.points, in: try h.points(in: cache, expect: sent.points))
            #expect(gaps.count == 0, "\(cache === h.old ? "old" : "new") misses \(gaps.count) points, e.g. \(gaps.prefix(5))")
        }
    }

    @Test func badInputIsCountedAndRefusedAndTheTapStaysUp() throws {
        let h = try TapHarness(extraTap: "  max_line_length: 1KiB")
        try h.startTap()
        let now = Int(Date().timeIntervalSince1970) - 60
        var sent = Sent()
        let marker = h.dir.sub("pwned")
        let evil = try pythonOutput(
            "class E:\n    def __reduce__(self): return (os.system, ('touch \(marker)',))\n"
                + "sys.stdout.buffer.write(pickle.dumps([('evil.metric', (\(now), E()))], protocol=2))")
        let good = try pythonOutput("sys.stdout.buffer.write(pickle.dumps([('pickled.ok', (\(now), 4.25))], protocol=2))")
        sent.points["pickled.ok"] = [now: 4.25]

        let sender = try LineSender(port: h.listenPort)
        var text = sent.line("before.garbage", 1, now)
        text += "this is garbage\n"
        text += "bad.value notanumber \(now)\n"
        text += "bad.nan nan \(now)\n"
        text += "../../escape 1 \(now)\n"
        text += String(repeating: "h", count: 100_000) + " 1 \(now)\n"
        text += sent.line("after.garbage", 2, now)
        try sender.send(text)
        let pickler = try LineSender(port: h.picklePort)
        try pickler.sendPickle(evil)
        try pickler.sendPickle(Array("not a pickle at all".utf8))
        try pickler.sendPickle(good)
        sendDatagram("udp.ok 7 \(now)\nudp garbage\n", port: h.listenPort)
        sent.points["udp.ok"] = [now: 7]

        let counted = try waitUntil(timeout: 30) {
            let s = try h.status()
            return s.invalidLines >= 6 && s.refusedMessages >= 2 && s.receivedLines >= 4
        }
        let s = try h.status()
        #expect(counted, "status: \(s.receivedLines) received, \(s.invalidLines) invalid, \(s.refusedMessages) refused")
        #expect(s.invalidLines == 6)  // 4 bad lines, 1 huge line, 1 bad UDP line
        #expect(s.refusedMessages == 2)
        #expect(s.receivedLines == 4)
        try h.waitDelivered(received: 4)
        for cache in [h.old, h.new] {
            let got = try h.points(in: cache, expect: sent.points)
            #expect(missing(sent.points, in: got).count == 0)
            #expect(got.keys.allSatisfy { !$0.contains("evil") && !$0.contains("bad") && !$0.contains("escape") }, "\(got.keys.sorted())")
        }
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(h.tap?.isRunning == true)
    }

    /// The review's hostile pickles against the running tap, sent with Python's own pickle module and a plain
    /// socket: a 100,000-deep nesting (it crashed the tap), memo-heavy 1 MB messages (each stalled an event loop
    /// for minutes) while the control socket must keep answering, and 50,000 tiny refused frames (they grew the
    /// log without bound). The tap survives, answers, logs a bounded amount, and still delivers good points.
    @Test func hostilePicklesNeitherCrashNorStallTheTap() throws {
        let h = try TapHarness()
        try h.startTap()
        let now = Int(Date().timeIntervalSince1970) - 60
        let logBefore = (try? FileManager.default.attributesOfItem(atPath: h.dir.sub("tap.log"))[.size] as? Int) ?? 0
        let script = """
            import socket, struct, pickle, sys, time
            port = int(sys.argv[1])
            def frame(b): return struct.pack("!L", len(b)) + b
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(frame(b"\\x80\\x02" + b"(" * 100000 + b"l" * 100000 + b"."))
            q = b"]q\\x00" + b"K\\x01aq\\x00" * 200000 + b"."
            for _ in range(3):
                s.sendall(frame(q))
            s.sendall(b"".join(frame(b"\\x80\\x02N.") for _ in range(50000)))
            s.sendall(frame(pickle.dumps([("pickled.after.hostile", (\(now), 5.5))], protocol=2)))
            s.close()
            """
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        sender.arguments = ["python3", "-c", script, String(h.picklePort)]
        try sender.run()
        // While the hostile messages are decoded, the control socket keeps answering (before, one such message
        // held it for minutes; a 1 MiB message now costs well under a second even in a debug build).
        var slowest = 0.0
        var answered = 0
        while sender.isRunning || answered < 5 {
            let t = Date()
            _ = try h.status()
            slowest = max(slowest, Date().timeIntervalSince(t))
            answered += 1
            if answered > 2000 { break }
        }
        sender.waitUntilExit()
        #expect(sender.terminationStatus == 0)
        print("tap status answered \(answered) times under hostile pickles, slowest \(slowest) s")
        #expect(slowest < 3.0, "the control socket stalled for \(slowest) s")
        let refused = try waitUntil(timeout: 60) { try h.status().refusedMessages >= 50_004 }
        let refusedCount = try h.status().refusedMessages
        #expect(refused, "refused \(refusedCount)")
        #expect(h.tap?.isRunning == true, "the tap survived")
        try h.waitDelivered(received: 1)
        var sent = Sent()
        sent.points["pickled.after.hostile"] = [now: 5.5]
        for cache in [h.old, h.new] {
            #expect(missing(sent.points, in: try h.points(in: cache, expect: sent.points)).count == 0)
        }
        let logAfter = (try? FileManager.default.attributesOfItem(atPath: h.dir.sub("tap.log"))[.size] as? Int) ?? 0
        #expect(logAfter - logBefore < 64 << 10, "the log grew by \(logAfter - logBefore) bytes for 50,004 refused messages")
    }

    @Test func theTapsPrometheusEndpointCountsWhatItAcceptedAndDelivered() throws {
        let h = try TapHarness(extraPlan: "metrics: { tap_listen: \"127.0.0.1:0\" }")
        try h.startTap()
        var at: String?
        #expect(
            waitUntil(timeout: 20) {
                at = MetricsTests.address(in: h.dir.sub("tap.log"), after: "metrics on", prefix: "http://")
                return at != nil
            })
        let addr = try #require(at)
        let base = Int(Date().timeIntervalSince1970) - 600
        var sent = Sent()
        let sender = try LineSender(port: h.listenPort)
        try sender.send(sent.batch(series: (0..<7).map { "prom.s\($0)" }, times: base..<(base + 43)) + "not a carbon line\n")
        try h.waitDelivered(received: sent.lines)
        // The sampler looks once a second: await the scrape that shows every line, then check the rest of it.
        func value(_ scrape: String, _ series: String) -> Double? {
            scrape.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        var scrape = ""
        #expect(
            waitUntil(timeout: 20) {
                scrape = MetricsTests.get("http://\(addr)/metrics") ?? ""
                return value(scrape, "ferry_tap_received_total") == Double(sent.lines)
            })
        #expect(value(scrape, "ferry_tap_received_total") == Double(sent.lines), "\(scrape)")
        #expect(value(scrape, "ferry_tap_forwarded_total{upstream=\"old\"}") == Double(sent.lines))
        #expect(value(scrape, "ferry_tap_forwarded_total{upstream=\"new\"}") == Double(sent.lines))
        #expect(value(scrape, "ferry_errors_total{kind=\"invalid\"}") == 1)
        #expect(value(scrape, "ferry_tap_lag_seconds{upstream=\"new\"}") == 0)
        #expect(value(scrape, "ferry_tap_mode{mode=\"mirror\"}") == 1)
        #expect(
            value(
                scrape,
                "ferry_build_info{version=\"\(try Ferry.run(["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines))\",process=\"tap\"}"
            ) == 1)
        let lint = try sh(["promtool", "check", "metrics"], input: Data(scrape.utf8))
        #expect(lint.status == 0, "promtool check metrics: \(lint.out)")
        for m in Telemetry.catalog where m.exportedBy.contains("tap") {
            #expect(scrape.contains("# HELP \(m.name) "), "\(m.name) is not in the tap's scrape")
        }
    }

    @Test func aReturningUpstreamIsReplayedAtReplayRate() throws {
        let h = try TapHarness(extraTap: "  replay_rate: 1000/s")
        try h.startTap()
        h.new.kill()
        let base = Int(Date().timeIntervalSince1970) - 2400
        var sent = Sent()
        let sender = try LineSender(port: h.listenPort)
        try sender.send(sent.batch(series: (0..<10).map { "rr.s\($0)" }, times: base..<(base + 300)))
        let accepted = try waitUntil(timeout: 30) { try h.status().receivedLines >= sent.lines }
        try #require(accepted)
        // Make the backlog at least a second old, so that it counts as replay (a restart's backlog always is).
        let aged = try waitUntil(timeout: 10) { try h.status().upstreams.first { $0.name == "new" }!.lagSeconds > 1.2 }
        try #require(aged)
        try h.new.launch()
        // The replay rate is measured over a window past the first second's budget: lines forwarded to new
        // between two samples, against replay_rate.
        func forwarded() throws -> UInt64 { try h.status().upstreams.first { $0.name == "new" }!.forwardedLines }
        var f1: UInt64 = 0, f2: UInt64 = 0
        var t1 = Date(), t2 = Date()
        #expect(
            try waitUntil(timeout: 30) {
                f1 = try forwarded(); t1 = Date(); return f1 >= 1200
            })
        #expect(
            try waitUntil(timeout: 30) {
                f2 = try forwarded(); t2 = Date(); return f2 >= 2700
            })
        try h.waitDelivered(received: sent.lines)
        let rate = Double(f2 - f1) / t2.timeIntervalSince(t1)
        print("replay test: measured \(rate) lines/s against replay_rate 1000/s")
        #expect(rate > 800 && rate < 1200, "replayed at \(rate) lines/s despite replay_rate 1000/s")
        let gaps = missing(sent.points, in: try h.points(in: h.new, expect: sent.points))
        #expect(gaps.count == 0, "new misses \(gaps.count) points")
    }

    @Test func aFullSpoolHoldsSendersBackAndDropsNothing() throws {
        let h = try TapHarness(extraTap: "  spool_limit: 1MiB\n  segment_size: 64KiB")
        try h.startTap()
        h.new.kill()
        let series = (0..<40).map { "bp.host\($0).bytes" }
        let base = Int(Date().timeIntervalSince1970) - 3600
        var sent = Sent()
        var chunks: [String] = []
        for start in stride(from: 0, to: 1800, by: 100) {
            chunks.append(sent.batch(series: series, times: (base + start)..<(base + start + 100)))
        }
        let total = sent.lines
        let bytes = chunks.reduce(0) { $0 + $1.utf8.count }
        #expect(bytes > 2 * 1_048_576)
        let done = sendInBackground(chunks, port: h.listenPort)
        let held = try waitUntil(timeout: 30) { try h.status().backPressure }
        #expect(held, "the spool never reported back-pressure")
        let during = try h.status()
        #expect(during.receivedLines < total, "nothing was held back")
        #expect(during.spoolBytes >= 1_048_576)
        try h.new.launch()
        done.wait()
        try h.waitDelivered(received: total, timeout: 120)
        // Back-pressure is released once the drained backlog ages out of the redelivery window: awaited.
        let released = try waitUntil(timeout: 60) { try !h.status().backPressure }
        let s = try h.status()
        #expect(released, "back-pressure stayed on after the backlog drained")
        #expect(s.droppedLines == 0)
        #expect(s.receivedLines == total)
        for cache in [h.old, h.new] {
            let gaps = missing(sent.points, in: try h.points(in: cache, expect: sent.points, timeout: 120))
            #expect(gaps.count == 0, "\(cache === h.old ? "old" : "new") misses \(gaps.count) points, e.g. \(gaps.prefix(5))")
        }
    }

    @Test func aFullDiskUnderTheSpoolHoldsSendersBackAndLosesNothing() throws {
        let mnt = try TmpfsMount(size: "1m")
        let h = try TapHarness(extraTap: "  spool_dir: \(mnt.path)/spool\n  segment_size: 64KiB")
        try h.startTap()
        h.new.kill()
        let series = (0..<40).map { "df.host\($0).bytes" }
        let base = Int(Date().timeIntervalSince1970) - 3600
        var sent = Sent()
        var chunks: [String] = []
        for start in stride(from: 0, to: 1500, by: 100) {
            chunks.append(sent.batch(series: series, times: (base + start)..<(base + start + 100)))
        }
        let total = sent.lines
        let done = sendInBackground(chunks, port: h.listenPort)
        let failing = try waitUntil(timeout: 30) { try h.status().spoolError != nil }
        #expect(failing, "the spool never reported the full disk")
        let during = try h.status()
        #expect(during.receivedLines < total)
        #expect(h.tap?.isRunning == true)
        let ctl = try Ferry.run(["tap", "ctl", h.plan, "status"])
        #expect(ctl.stdout.contains("WRITE FAILING"), "\(ctl.stdout)")
        // New returns: its backlog drains, delivered segments are deleted, the spool writes again.
        try h.new.launch()
        done.wait()
        try h.waitDelivered(received: total, timeout: 120)
        let s = try h.status()
        #expect(s.spoolError == nil && s.droppedLines == 0 && s.receivedLines == total)
        for cache in [h.old, h.new] {
            let gaps = missing(sent.points, in: try h.points(in: cache, expect: sent.points, timeout: 120))
            #expect(gaps.count == 0, "\(cache === h.old ? "old" : "new") misses \(gaps.count) points, e.g. \(gaps.prefix(5))")
        }
    }

}

/// A steady live load: every 50 ms, one point per series at the current second (the value depends only on the
/// series and the second, so repeats are idempotent). Reconnects when the tap is not there (yet).
final class LiveLoad: @unchecked Sendable {
    let port: Int
    let series: [String]
    private let state = NSLock.Protected<(sent: [String: [Int: Double]], batches: Int, stop: Bool)>(([:], 0, false))
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)

    init(port: Int, series: [String]) {
        self.port = port
        self.series = series
    }

    static func value(_ series: Int, _ t: Int) -> Double { Double(t % 100_000) + Double(series) / 16 }

    func start() {
        let t = Thread { [self] in
            var sender: LineSender?
            while !state.withLock({ $0.stop }) {
                if sender == nil { sender = try? LineSender(port: port) }
                if let s = sender {
                    let t = Int(Date().timeIntervalSince1970)
                    var text = ""
                    for (i, name) in series.enumerated() { text += "\(name) \(Self.value(i, t)) \(t)\n" }
                    do {
                        try s.send(text)
                        state.withLock { st in
                            for (i, name) in series.enumerated() { st.sent[name, default: [:]][t] = Self.value(i, t) }
                            st.batches += 1
                        }
                    } catch {
                        sender = nil
                    }
                }
                usleep(50_000)  // pacing of the load, not synchronisation
            }
            done.signal()
        }
        thread = t
        t.start()
    }

    var batches: Int { state.withLock { $0.batches } }

    /// Waits until points for a later second than any sent so far went out.
    func waitNextSecond() -> Bool {
        let latest = state.withLock { $0.sent.values.flatMap(\.keys).max() ?? 0 }
        return waitUntil(timeout: 30) { state.withLock { $0.sent.values.flatMap(\.keys).max() ?? 0 } > latest }
    }
    var sent: [String: [Int: Double]] { state.withLock { $0.sent } }

    /// Waits until `n` more batches went out.
    func waitBatches(_ n: Int) -> Bool {
        let target = batches + n
        return waitUntil(timeout: 30) { batches >= target }
    }

    func stop() {
        let first = state.withLock { st in
            defer { st.stop = true }
            return !st.stop
        }
        if first && thread != nil { done.wait() }
    }
}

@Suite(.serialized) struct LiveMigrationTests {
    @Test func cutoverRefusesWhileNewIsDownAndAbortsWhenTheFenceDoesNotLand() throws {
        // The destination is a tree the new carbon-cache does not write: the fence reaches carbon but never shows.
        let elsewhere = TempDir("elsewhere")
        let h = try TapHarness(destination: elsewhere.path, extraTap: "  fence_timeout: 2s")
        defer { if let pid = try? h.client.status()?.pid { kill(pid, SIGKILL) } }
        let run = try Ferry.run(["run", h.plan])
        #expect(run.status == 0, "\(run.all)")

        h.new.kill()
        let down = try waitUntil(timeout: 30) { try h.status().upstreams.first { $0.name == "new" }?.connected == false }
        #expect(down)
        let refused = try Ferry.run(["cutover", h.plan])
        #expect(refused.status == 4, "\(refused.all)")
        #expect(refused.stdout.contains("[FAIL] tap-lag-new"), "\(refused.stdout)")
        #expect(try h.status().mode == .mirror)

        try h.new.launch()
        let up = try waitUntil(timeout: 30) { try h.status().upstreams.allSatisfy(\.connected) }
        #expect(up)
        let aborted = try Ferry.run(["cutover", h.plan])
        #expect(aborted.status == 4, "\(aborted.all)")
        // The gate table is printed, the fence's line failing with its reason.
        #expect(aborted.stdout.contains("[FAIL] fence-new") && aborted.stdout.contains("fence marker"), "\(aborted.all)")
        #expect(aborted.stdout.contains("[ok] verify-clean"), "\(aborted.stdout)")
        #expect(try h.status().mode == .mirror, "an aborted cutover must leave the tap mirroring")
        let status = try Ferry.run(["status", h.plan, "--json"])
        #expect(status.stdout.contains("\"phase\" : \"ready\""), "\(status.stdout)")
        // The JSON names its schema, carries the tap's section, and every key it prints is documented.
        let json = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect(json["schema_version"] as? Int == 1)
        let tap = try #require(json["tap"] as? [String: Any], "\(status.stdout)")
        #expect((tap["upstreams"] as? [[String: Any]])?.count == 2)
        let undocumented = StatusSchema.undocumentedKeys(json)
        #expect(undocumented.isEmpty, "docs/status-json.md does not list \(undocumented)")
        #expect(status.stdout.contains("\"cutover_at\"") == false || status.stdout.contains("\"cutover_at\" : null"))
    }

    @Test func tapSnapshotMergeVerifyCutoverRollbackComplete() throws {
        let hooks = TempDir("hooks")
        let h = try TapHarness(
            extraTap: "  fence_timeout: 30s",
            extraPlan: """
                verify: { mode: full, window: 2h }
                cutover:
                  max_verify_age: 1h
                  max_tap_lag: 30s
                  rollback_window: 1h
                  fence_namespace: ops.migration
                  hooks: [ "echo cutover >> \(hooks.sub("log"))" ]
                  rollback_hooks: [ "echo rollback >> \(hooks.sub("log"))" ]
                """)
        // History on the old server: series that get live points too, and series that only have history.
        let now = Int(Date().timeIntervalSince1970)
        let live = ["live.host0.load", "live.host1.load", "live.host2.load", "live.fresh.load"]
        var history: [String: [Int: Double]] = [:]
        for name in ["live.host0.load", "live.host1.load", "live.host2.load", "hist.only.a", "hist.only.b"] {
            let path = h.old.storage + "/" + name.replacingOccurrences(of: ".", with: "/") + ".wsp"
            try FileManager.default.createDirectory(atPath: PathUtil.directory(of: path), withIntermediateDirectories: true)
            try WhisperOracle.run(["create", path, "1:7200", "0", "average"])
            let pts = (0..<600).map { (now - 3000 + $0 * 2, Double($0) * 1.5) }
            try WhisperOracle.run(["update", path, "\(now)", try WhisperOracle.pointsFile(hooks.sub("pts.json"), pts)])
            history[name] = Dictionary(uniqueKeysWithValues: pts)
        }
        #expect(try h.client.status() == nil, "the tap must not be running before `ferry run`")

        let load = LiveLoad(port: h.listenPort, series: live)
        load.start()
        defer {
            load.stop()
            if let pid = try? h.client.status()?.pid { kill(pid, SIGKILL) }
        }
        // `ferry run` starts the tap itself (detached) and arms it before the snapshot.
        let run = try Ferry.run(["run", h.plan])
        #expect(run.status == 0, "\(run.all)")
        let armed = try h.status()
        #expect(armed.mode == .mirror)
        #expect(load.waitBatches(10), "the live load never got through the tap")
        let status = try Ferry.run(["status", h.plan])
        #expect(status.stdout.contains("mode mirror (primary old)"), "\(status.all)")
        #expect(status.stdout.contains("new ") && status.stdout.contains("connected"), "\(status.all)")

        let cut = try Ferry.run(["cutover", h.plan])
        #expect(cut.status == 0, "\(cut.all)")
        #expect(cut.stdout.contains("tap-lag-new"), "\(cut.stdout)")
        #expect(cut.stdout.contains("[ok] fence-new") && cut.stdout.contains("read back from"), "the fence is a gate line: \(cut.stdout)")
        #expect(try h.status().mode == .reverse)
        let sentBeforeCutover = load.sent
        #expect(load.waitNextSecond())

        let back = try Ferry.run(["rollback", h.plan])
        #expect(back.status == 0, "\(back.all)")
        #expect(try h.status().mode == .mirror)
        #expect(load.waitBatches(5))
        load.stop()
        let sent = load.sent
        try h.waitDelivered(received: 0)

        // Every point sent, before and after the cutover, is on both servers; the history is on the new one.
        var expectNew = sent
        for (k, v) in history { expectNew[k, default: [:]].merge(v) { live, _ in live } }
        var gotNew = try h.points(in: h.new, expect: expectNew)
        var gotOld = try h.points(in: h.old, expect: expectNew)
        let gapsNew = missing(expectNew, in: gotNew)
        #expect(gapsNew.count == 0, "new misses \(gapsNew.count) points, e.g. \(gapsNew.prefix(5))")
        let gapsOld = missing(expectNew, in: gotOld)
        #expect(gapsOld.count == 0, "old misses \(gapsOld.count) points, e.g. \(gapsOld.prefix(5))")
        // The old server got what was written while the new one was primary (the rollback window).
        let afterCutover = sent.mapValues { pts in pts.filter { t, _ in !(sentBeforeCutover.values.contains { $0[t] != nil }) } }
        #expect(afterCutover.values.contains { !$0.isEmpty })
        #expect(missing(afterCutover, in: gotOld).count == 0)
        // Every series in new equals old over the window, point for point (fence markers included). The markers'
        // values are ferry's, not in `expectNew`: awaited until carbon has written them on both sides (bounded).
        _ = try waitUntil(timeout: 30) {
            gotNew = try WhisperOracle.treePoints(h.new.storage)
            gotOld = try WhisperOracle.treePoints(h.old.storage)
            return gotNew == gotOld
        }
        let differing = gotOld.keys.filter { gotNew[$0] != gotOld[$0] }.sorted()
        #expect(differing.isEmpty, "series differing between old and new: \(differing)")
        #expect(Set(gotOld.keys) == Set(gotNew.keys))
        #expect(try String(contentsOfFile: hooks.sub("log"), encoding: .utf8) == "cutover\nrollback\n")
        // The fence markers live under the plan's namespace, nowhere else.
        for storage in [h.new.storage, h.old.storage] {
            #expect(FileManager.default.fileExists(atPath: storage + "/ops/migration/live-metrics.wsp"), "no marker in \(storage)")
            #expect(!FileManager.default.fileExists(atPath: storage + "/ferry"), "a marker outside the namespace in \(storage)")
        }

        // Cut over again and finish: the tap then feeds the new side only.
        let again = try Ferry.run(["cutover", h.plan])
        #expect(again.status == 0, "\(again.all)")
        // A side that is down holds `ferry complete` back (exit 4, naming it: the tap still holds writes for it);
        // --force ends the job without them, recorded in the ledger.
        h.old.kill()
        let late = try LineSender(port: h.listenPort)
        try late.send("late.point 1 \(Int(Date().timeIntervalSince1970))\n")
        #expect(
            waitUntil(timeout: 20) {
                guard let s = try? h.status(), let old = s.upstreams.first(where: { $0.name == "old" }) else { return false }
                return old.cursor < s.head && !old.connected
            }, "the old side never fell behind")
        let held = try Ferry.run(["complete", h.plan])
        #expect(held.status == 4 && held.stderr.contains("not every write the tap took has reached old"), "\(held.all)")
        #expect(try h.status().mode == .reverse, "a refused complete changed the tap")
        let complete = try Ferry.run(["complete", h.plan, "--force"])
        #expect(complete.status == 0, "\(complete.all)")
        let final = try h.status()
        #expect(final.mode == .single && final.primary == "new")
        #expect(final.upstreams.first { $0.name == "old" }?.role == "detached")

        // ferry events shows the ledger's event log as it is: compared with the table read by Python's sqlite3.
        let events = try Ferry.run(["events", h.plan, "--json"])
        #expect(events.status == 0, "\(events.all)")
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(events.stdout.utf8)) as? [String: Any])
        let list = (parsed["events"] as? [[String: Any]]) ?? []
        let shown = list.map { "\($0["kind"] as? String ?? "")|\($0["message"] as? String ?? "")" }
        let oracle = try sh([
            "python3", "-c",
            "import sqlite3, sys\nfor k, m in sqlite3.connect(sys.argv[1]).execute('SELECT kind, message FROM events ORDER BY id'): print(k + '|' + m)",
            h.dir.sub("state/ledger.sqlite"),
        ])
        #expect(shown == oracle.out.split(separator: "\n").map(String.init), "ferry events: \(shown)")
        for kind in ["tap", "snapshot", "fence", "cutover", "cutover-hook", "rollback", "rollback-hook", "complete"] {
            #expect(list.contains { $0["kind"] as? String == kind }, "no \(kind) event in \(shown)")
        }
        #expect(shown.contains { $0.hasPrefix("complete|forced: writes the tap still held for old") }, "\(shown)")
        let table = try Ferry.run(["events", h.plan, "--kind", "rollback"])
        #expect(table.stdout.contains("rolled back to the old side"), "\(table.all)")
    }
}
