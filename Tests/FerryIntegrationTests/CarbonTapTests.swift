import Foundation
import Testing
import FerryCore
import FerryTap
import FerryTesting

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

    init(extraTap: String = "", extraPlan: String = "") throws {
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
            destination: { kind: whisper, path: \(new.storage) }
            tap:
              kind: carbon
              listen: 127.0.0.1:\(listenPort)
              listen_pickle: 127.0.0.1:\(picklePort)
              old: \(old.lineAddress)
              new: \(new.lineAddress)
              control: \(control)
              replay_rate: 0
            \(extraTap)
            state: \(dir.sub("state"))
            \(extraPlan)
            """)
    }

    var client: TapClient { TapClient(socketPath: control) }

    func status() throws -> TapStatus { try #require(try client.status()) }

    func startTap() throws {
        let (p, _, _) = try Ferry.start(["tap", plan, "--log-level", "debug"])
        tap = p
        let up = try waitUntil(timeout: 20) { try client.status() != nil }
        try #require(up, "the tap did not come up")
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
        try #require(ok, "not delivered: received \(s.receivedLines)/\(lines), \(s.upstreams.map { "\($0.name) \($0.cursor)/\(s.head)" })")
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

@Suite(.serialized) struct CarbonTapTests {
    static let series = (0..<8).map { "live.host\($0).cpu" }

    @Test func aKilledUpstreamMissesNothingAndOrderPerSeriesHolds() throws {
        let h = try TapHarness()
        try h.startTap()
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
        let during = try h.status()
        #expect(during.upstreams.first { $0.name == "old" }!.cursor == during.head, "a down new slowed old")

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
        let evil = try python(
            "class E:\n    def __reduce__(self): return (os.system, ('touch \(marker)',))\n"
                + "sys.stdout.buffer.write(pickle.dumps([('evil.metric', (\(now), E()))], protocol=2))")
        let good = try python("sys.stdout.buffer.write(pickle.dumps([('pickled.ok', (\(now), 4.25))], protocol=2))")
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

    func python(_ code: String) throws -> [UInt8] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", "import pickle, sys, os\n" + code]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return [UInt8](data)
    }
}
