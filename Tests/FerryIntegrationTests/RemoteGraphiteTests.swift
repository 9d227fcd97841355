import FerryCore
import FerryTap
import FerryTesting
import Foundation
import Testing

/// A steady live load from the near host (Python, in its network namespace): every 50 ms one point per series
/// at the current second, sent to `port` on the near host's loopback; each batch that went out is logged as its
/// second, so the test knows exactly what was sent. Stops when its stop file appears.
final class NearLoad {
    let log: String
    let stopFile: String
    let series: [String]
    let process: Process

    static func value(_ series: Int, _ t: Int) -> Double { Double(t % 100_000) + Double(series) / 16 }

    init(_ hosts: TwoHosts, port: Int, series: [String], dir: TempDir) throws {
        log = dir.sub("load.log")
        stopFile = dir.sub("load.stop")
        self.series = series
        let script = """
            import os, socket, sys, time
            port, log, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
            series = sys.argv[4:]
            out = open(log, "a", buffering=1)
            s = None
            while not os.path.exists(stop):
                if s is None:
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    except OSError:
                        s = None
                if s is not None:
                    t = int(time.time())
                    text = "".join("%s %r %d\\n" % (name, float(t % 100000) + i / 16, t) for i, name in enumerate(series))
                    try:
                        s.sendall(text.encode())
                        out.write("%d\\n" % t)
                    except OSError:
                        s = None
                time.sleep(0.05)  # pacing of the load, not synchronisation
            if s is not None:
                s.close()
            """
        let p = Process()
        let args = hosts.near + ["/usr/bin/env", "python3", "-c", script, String(port), log, stopFile] + series
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
    }

    var seconds: [Int] {
        (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").compactMap { Int($0) } ?? []
    }

    /// Waits until `n` more batches went out.
    func waitBatches(_ n: Int) -> Bool {
        let target = seconds.count + n
        return waitUntil(timeout: 60) { seconds.count >= target }
    }

    func stop() {
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        process.waitUntilExit()
    }

    /// Every point that went out, by series and second.
    var sent: [String: [Int: Double]] {
        let secs = Set(seconds)
        var out: [String: [Int: Double]] = [:]
        for (i, name) in series.enumerated() { out[name] = Dictionary(uniqueKeysWithValues: secs.map { ($0, Self.value(i, $0)) }) }
        return out
    }
}

extension RemoteHostsTests {
    /// The first seed story across two hosts: the tap runs on the old host in front of the old carbon (on its own
    /// port) and forwards to the new carbon over TCP; the history is merged into the new host's live files through
    /// `ferry serve` there; the fence is read back through it; cutover and rollback run on the old host. Every
    /// point the load sent is in both carbons (the reference whisper package reads each host's files on that
    /// host), and the history is on the new one.
    @Test func theGraphiteMoveAcrossTwoHosts() throws {
        let dir = TempDir("two-hosts-graphite")
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let farWhisper = hosts.farRoot + "/whisper"
        try hosts.onFar(["/bin/mkdir", "-p", farWhisper])
        let newCarbon = try CarbonCache(name: "carbon-new", retentions: "1s:2h", host: hosts.farAddress, prefix: hosts.far, dataDir: farWhisper)
        defer { newCarbon.kill() }
        let oldCarbon = try CarbonCache(name: "carbon-old", retentions: "1s:2h", prefix: hosts.near)
        defer { oldCarbon.kill() }
        let server = try FarServer(hosts, token: try token(dir), log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }

        let live = Self.liveSeries
        let history = try Self.oldHistory(oldCarbon, dir)
        let tapPort = freePorts(1)[0]
        let control = dir.sub("control.sock")
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: graphite-move
            source: { kind: whisper, path: \(oldCarbon.storage) }
            destination:
              kind: remote
              url: "http://\(hosts.farAddress):8470"
              token: "file:token"
              store: { kind: whisper, path: "\(farWhisper)" }
            tap:
              kind: carbon
              listen: 127.0.0.1:\(tapPort)
              old: 127.0.0.1:\(oldCarbon.linePort)
              new: \(newCarbon.lineAddress)
              control: \(control)
              replay_rate: 0
              fence_timeout: 30s
            state: \(dir.sub("state"))
            verify: { mode: full, window: 2h }
            cutover:
              max_verify_age: 1h
              max_tap_lag: 30s
              rollback_window: 1h
              hooks: [ "echo cutover >> \(dir.sub("hooks.log"))" ]
              rollback_hooks: [ "echo rollback >> \(dir.sub("hooks.log"))" ]
            """, name: "graphite-move.yml")
        let tap = TapClient(socketPath: control)
        func status() throws -> TapStatus { try #require(try tap.status()) }

        let load = try NearLoad(hosts, port: tapPort, series: live, dir: dir)
        defer { load.stop() }
        // `ferry run` on the old host starts the tap (detached) and arms it before the snapshot.
        let run = try Ferry.run(["run", plan], prefix: hosts.near)
        #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
        #expect(run.stderr.contains("merged="), "\(run.stderr)")
        #expect(try status().mode == .mirror)
        #expect(load.waitBatches(10), "the live load never got through the tap")

        let cut = try Ferry.run(["cutover", plan], prefix: hosts.near)
        #expect(cut.status == 0, "\(cut.all)")
        #expect(cut.stdout.contains("[ok] fence-new") && cut.stdout.contains("read back from"), "the fence, through ferry serve: \(cut.stdout)")
        #expect(try status().mode == .reverse)
        let secondsBeforeCutover = Set(load.seconds)
        // Points of at least two later seconds go out while the new side is primary.
        #expect(waitUntil(timeout: 30) { Set(load.seconds).subtracting(secondsBeforeCutover).count >= 2 })

        let back = try Ferry.run(["rollback", plan], prefix: hosts.near)
        #expect(back.status == 0, "\(back.all)")
        #expect(try status().mode == .mirror)
        #expect(load.waitBatches(5))
        load.stop()
        let sent = load.sent
        let delivered = try waitUntil(timeout: 60) {
            let s = try status()
            return s.upstreams.allSatisfy { $0.role == "detached" || ($0.cursor == s.head && $0.connected) }
        }
        let upstreams = try status().upstreams.map { "\($0.name) \($0.cursor) connected=\($0.connected)" }
        #expect(delivered, "the tap did not deliver everything: \(upstreams)")

        // Every point sent (before, during and after the cutover) is in both carbons; the history is on the new one.
        var expectNew = sent
        for (k, v) in history { expectNew[k, default: [:]].merge(v) { live, _ in live } }
        func settled(_ prefix: [String], _ root: String) throws -> [String: [Int: Double]] {
            try Self.settledPoints(expectNew, prefix: prefix, root: root)
        }
        let gotNew = try settled(hosts.far, farWhisper)
        let gotOld = try settled([], oldCarbon.storage)
        let gapsNew = missing(expectNew, in: gotNew)
        #expect(gapsNew.isEmpty, "the new host misses \(gapsNew.count) points, e.g. \(gapsNew.prefix(5))")
        let gapsOld = missing(expectNew, in: gotOld)
        #expect(gapsOld.isEmpty, "the old host misses \(gapsOld.count) points, e.g. \(gapsOld.prefix(5))")
        // Points were sent while the new side was primary, and the old side has them (the rollback window).
        #expect(Set(load.seconds).subtracting(secondsBeforeCutover).count >= 2)
        #expect(try String(contentsOfFile: dir.sub("hooks.log"), encoding: .utf8) == "cutover\nrollback\n")
    }
}

extension RemoteHostsTests {
    /// Whisper files copied to the far host travel in the point codec, and a full verify of them moves digests,
    /// not the files (counted on the far link); a point changed on the far host afterwards is still found, point
    /// by point.
    @Test func whisperFilesTravelInThePointCodecAndVerifyMovesDigests() throws {
        let dir = TempDir("two-hosts-codec")
        let now = Int(Date().timeIntervalSince1970)
        let files = 12
        let times = stride(from: now - now % 60 - 86400 * 2, through: now - now % 60 - 60, by: 60).map { $0 }
        for i in 0..<files {
            let f = dir.sub("old/servers/h\(i % 3)/m\(i).wsp")
            try FileManager.default.createDirectory(atPath: PathUtil.directory(of: f), withIntermediateDirectories: true)
            try WhisperOracle.run(["create", f, "60:43200,600:8640", "0.5", "average"])
            // A gauge with one decimal: regular timestamps, few changing bits.
            let pts = times.map { ($0, (Double(50 + i) + Double(($0 / 60) % 20) / 10 * 10).rounded() / 10) }
            try WhisperOracle.run(["update", f, String(now), try WhisperOracle.pointsFile(dir.sub("p.json"), pts)])
        }
        let logical = try TwoHosts.digests(dir.sub("old")).keys.reduce(Int64(0)) { total, name in
            total + Int64((try FileManager.default.attributesOfItem(atPath: dir.sub("old/" + name))[.size] as? Int) ?? 0)
        }
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let server = try FarServer(hosts, token: try token(dir), log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }
        func plan(_ name: String, codec: String) throws -> String {
            try remotePlan(
                dir, hosts, name: name, source: "{kind: whisper, path: old}",
                destination: """
                    {kind: remote, url: "http://\(hosts.farAddress):8470", token: "file:token", store: {kind: whisper, path: "\(hosts.farRoot)/\(name)"}}
                    """,
                copy: "copy: {point_codec: \(codec)}\nverify: {mode: full, window: 3d}")
        }
        var wire: [String: Int64] = [:]
        for (name, codec) in [("plain", "off"), ("points", "on")] {
            let before = try hosts.farReceivedBytes()
            let run = try Ferry.run(["run", try plan(name, codec: codec)], prefix: hosts.near)
            #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
            wire[name] = try hosts.farReceivedBytes() - before
            #expect(try hosts.farDigests(hosts.farRoot + "/" + name) == (try TwoHosts.digests(dir.sub("old"))), "\(name): the far copy differs")
        }
        print("received on the far link: zstd \(wire["plain"]!) bytes, point codec \(wire["points"]!) bytes, of \(logical) logical")
        #expect(wire["points"]! < wire["plain"]!, "the point codec sent more than zstd alone: \(wire)")

        // A full verify again: the far side hashes its own files; only digests cross.
        let p = try plan("points", codec: "on")
        let (rx0, tx0) = (try hosts.farReceivedBytes(), try hosts.farSentBytes())
        let verify = try Ferry.run(["verify", p], prefix: hosts.near)
        #expect(verify.status == 0, "\(verify.all)")
        let moved = try hosts.farReceivedBytes() - rx0 + hosts.farSentBytes() - tx0
        #expect(moved * 100 < logical, "verify moved \(moved) bytes for \(logical) bytes of files")

        // One point changed on the far host (by the reference package): that file differs, and verify says so.
        let victim = hosts.farRoot + "/points/servers/h1/m4.wsp"
        try hosts.onFar([
            "/usr/bin/env", "python3", "-c", "import sys, whisper; whisper.update(sys.argv[1], -1.0, int(sys.argv[2]))", victim,
            String(times[times.count / 2]),
        ])
        let found = try Ferry.run(["verify", p], prefix: hosts.near)
        #expect(found.status == 1, "\(found.all)")
        #expect(found.all.contains("servers/h1/m4.wsp"), "\(found.all)")
    }
}

extension RemoteHostsTests {
    /// `copy.bandwidth` limits the bytes on the link, not the logical ones: 16 MiB of compressible text and 1 MiB
    /// of random bytes at 1 MiB/s take about as long as their compressed size needs (paced at the logical bytes
    /// they would take at least 16 s), and no less than the random part alone needs.
    @Test func bandwidthLimitsTheBytesOnTheWire() throws {
        let dir = TempDir("two-hosts-bandwidth")
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        var text = ""
        for i in 0..<400_000 { text += "2026-12-02T03:00:\(i % 60) GET /media/\(i % 977).png 200 \(i % 13)\n" }
        let textBytes = Array(text.utf8.prefix(16 << 20))
        try Data(textBytes).write(to: URL(fileURLWithPath: dir.sub("src/access.log")))
        var rng = SeededRandom(#function)
        try Data((0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }).write(to: URL(fileURLWithPath: dir.sub("src/random.bin")))
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let server = try FarServer(hosts, token: try token(dir), log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }
        let plan = try remotePlan(
            dir, hosts, name: "paced", source: "{kind: fs, path: src}", destination: remoteStore(hosts, hosts.farRoot + "/dst"),
            copy: "copy: {bandwidth: 1MiB/s, chunk_size: 1MiB}")
        let before = try hosts.farReceivedBytes()
        let started = Date()
        let run = try Ferry.run(["run", plan], prefix: hosts.near)
        let elapsed = Date().timeIntervalSince(started)
        let received = try hosts.farReceivedBytes() - before
        #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
        print("paced run: \(elapsed) s, \(received) bytes received on the far link for \(textBytes.count + (1 << 20)) logical")
        #expect(received < 4 << 20, "the text did not travel compressed: \(received) bytes")
        #expect(elapsed < 10, "paced at the logical bytes (17 MiB at 1 MiB/s): \(elapsed) s")
        #expect(elapsed > 0.6, "not paced at all: 1 MiB of random bytes at 1 MiB/s took \(elapsed) s")
        #expect(try hosts.farDigests(hosts.farRoot + "/dst") == (try TwoHosts.digests(dir.sub("src"))))
    }
}

extension RemoteHostsTests {
    /// The live load's series: two with history on the old host, one new.
    static let liveSeries = ["live.host0.load", "live.host1.load", "live.fresh.load"]

    /// History on the old host, made by the reference whisper package: series that get live points too, and
    /// one with history only (600 points each, every 2 s up to now).
    static func oldHistory(_ oldCarbon: CarbonCache, _ dir: TempDir) throws -> [String: [Int: Double]] {
        let now = Int(Date().timeIntervalSince1970)
        var history: [String: [Int: Double]] = [:]
        for name in ["live.host0.load", "live.host1.load", "hist.only.a"] {
            let path = oldCarbon.storage + "/" + name.replacingOccurrences(of: ".", with: "/") + ".wsp"
            try FileManager.default.createDirectory(atPath: PathUtil.directory(of: path), withIntermediateDirectories: true)
            try WhisperOracle.run(["create", path, "1:7200", "0", "average"])
            let pts = (0..<600).map { (now - 3000 + $0 * 2, Double($0) * 1.5) }
            try WhisperOracle.run(["update", path, "\(now)", try WhisperOracle.pointsFile(dir.sub("pts.json"), pts)])
            history[name] = Dictionary(uniqueKeysWithValues: pts)
        }
        return history
    }

    /// A tree's points (read on its host through `prefix`) once they hold `expect`, or as they are after 60 s.
    static func settledPoints(_ expect: [String: [Int: Double]], prefix: [String], root: String) throws -> [String: [Int: Double]] {
        var seen: [String: [Int: Double]] = [:]
        _ = try waitUntil(timeout: 60) {
            seen = try WhisperOracle.treePoints(root, prefix: prefix)
            return expect.allSatisfy { name, pts in pts.allSatisfy { seen[name]?[$0.key] == $0.value } }
        }
        return seen
    }
}
