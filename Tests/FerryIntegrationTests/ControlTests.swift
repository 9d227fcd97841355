import FerryTesting
import Foundation
import Testing

/// `ferry ctl` against a real `ferry run`: the bytes the test itself sees arrive at the destination (its own walk
/// of the tree, partial files included) are the oracle for pause, resume and throttle.
@Suite struct ControlTests {
    /// Bytes under `dir` as the filesystem reports them (partial files included).
    static func bytesOnDisk(_ dir: String) -> Int64 { regularFileBytes(under: dir) }

    static func ctl(_ s: Scenario, _ words: String...) throws -> Ferry.Result { try Ferry.run(["ctl", s.plan] + words) }

    /// A paced run of three large files and some small ones, one copy thread in the plan.
    static func pacedScenario(_ name: String, large: Int, rate: String) throws -> Scenario {
        var rng = SeededRandom(name)
        let s = try Scenario(chunkSize: "256KiB", concurrency: 1, bandwidth: rate)
        for i in 0..<3 { try TreeGen.write(s.source + "/large/\(i).bin", size: large + Int(rng.next() % 4096), seed: rng.next()) }
        for i in 0..<10 { try TreeGen.write(s.source + "/small/\(i).bin", size: Int(rng.next() % 50_000) + 1, seed: rng.next()) }
        return s
    }

    @Test func pauseHoldsEveryByteResumeReleasesThemThrottleHoldsTheRateAndConcurrencyRises() throws {
        let s = try Self.pacedScenario("ctlPause", large: 28 * 1_048_576, rate: "4MiB/s")
        let (run, _, _) = try Ferry.start(["run", s.plan])
        defer { if run.isRunning { run.terminate() } }
        #expect(waitUntil(timeout: 60) { ((try? Self.ctl(s, "status"))?.stdout ?? "").contains("running in pid \(run.processIdentifier)") })

        // concurrency: from the plan's 1 to 3 live; three large files let three threads work.
        let c = try Self.ctl(s, "concurrency", "3")
        #expect(c.status == 0 && c.stdout.contains("concurrency now 3"), "\(c.all)")
        #expect(waitUntil(timeout: 20) { ((try? Self.ctl(s, "status"))?.stdout ?? "").contains("copy threads 3 working") })

        // pause: once ferry says every thread is parked, not one byte moves for 2 s.
        let p = try Self.ctl(s, "pause")
        // Every thread still working is parked (some may have run out of files meanwhile).
        let parked = p.stdout.firstMatch(of: /paused: (\d+) of (\d+) copy threads parked/)
        #expect(p.status == 0 && parked != nil && parked?.1 == parked?.2, "\(p.all)")
        let held = Self.bytesOnDisk(s.destination)
        Thread.sleep(forTimeInterval: 2)  // the measurement window the pause must hold over, not synchronisation
        #expect(Self.bytesOnDisk(s.destination) == held, "bytes moved while paused")
        #expect(try s.ferry("status", "PLAN").stdout.contains("PAUSED"))

        // resume: bytes move again.
        #expect(try Self.ctl(s, "resume").status == 0)
        #expect(waitUntil(timeout: 20) { Self.bytesOnDisk(s.destination) > held + 512 * 1024 }, "nothing moved after resume")

        // throttle: over a 4 s window the rate the test measures is within 20% of the limit.
        let limit = 8.0 * 1_048_576
        let t = try Self.ctl(s, "throttle", "8MiB/s")
        #expect(t.status == 0 && t.stdout.contains("8.00 MiB/s (ferry ctl throttle)"), "\(t.all)")
        Thread.sleep(forTimeInterval: 1)  // let the bucket settle at the new rate before the window opens
        let b0 = Self.bytesOnDisk(s.destination)
        let t0 = Date()
        Thread.sleep(forTimeInterval: 4)  // the measurement window
        let rate = Double(Self.bytesOnDisk(s.destination) - b0) / Date().timeIntervalSince(t0)
        print("throttle 8 MiB/s: measured \(rate / 1_048_576) MiB/s")
        #expect(abs(rate - limit) <= 0.2 * limit, "measured \(rate / 1_048_576) MiB/s against 8 MiB/s")

        // Lift the limit; the run finishes clean and the ledger's event log holds every command.
        #expect(try Self.ctl(s, "throttle", "off").status == 0)
        run.waitUntilExit()
        #expect(run.terminationStatus == 0)
        #expect(s.parity().isEmpty, "\(s.parity().prefix(5))")
        let events = try s.ferry("events", "PLAN").stdout
        for e in ["concurrency 3", "paused", "resumed", "throttle 8.00 MiB/s", "throttle off"] {
            #expect(events.contains(e), "no '\(e)' event in:\n\(events)")
        }
    }

    @Test func theSocketRefusesOtherUsersAndMalformedCommandsAndOutlivesThem() throws {
        guard geteuid() == 0 else {
            Issue.record("this test needs root, to connect as another user (nobody)")
            return
        }
        let s = try Self.pacedScenario("ctlRefuse", large: 8 * 1_048_576, rate: "1MiB/s")
        let (run, _, _) = try Ferry.start(["run", s.plan])
        defer { if run.isRunning { run.terminate() } }
        let sock = s.state + "/ctl.sock"
        #expect(waitUntil(timeout: 60) { ((try? Self.ctl(s, "status"))?.stdout ?? "").contains("running in pid") })
        var st = stat()
        #expect(stat(sock, &st) == 0 && st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")

        // Python as the client: it prints what the server answered, or the connect error.
        let client = """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX); s.settimeout(20)
            try:
                s.connect(sys.argv[1])
            except OSError as e:
                print("connect:", e.__class__.__name__); sys.exit(0)
            data = bytes.fromhex(sys.stdin.read())
            out = b""
            try:
                if data: s.sendall(data)
            except OSError:
                pass  # the server may close before it has read everything; its answer is still there
            try:
                while True:
                    b = s.recv(65536)
                    if not b: break
                    out += b
            except socket.timeout:
                print("TIMEOUT"); sys.exit(0)
            except OSError as e:
                out += b" [" + e.__class__.__name__.encode() + b"]"
            print(out.decode(errors="replace").strip())
            """
        func send(_ bytes: [UInt8], as user: String? = nil) throws -> String {
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            let prefix = user.map { ["/usr/bin/setpriv", "--reuid=\($0)", "--regid=\($0)", "--clear-groups"] } ?? []
            return try sh(prefix + ["/usr/bin/python3", "-c", client, sock], input: Data(hex.utf8)).out
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // Another user, with every directory on the way open to it: the socket's own mode refuses the connection.
        var dir = (sock as NSString).deletingLastPathComponent
        while dir.count > 1 {
            chmod(dir, 0o755)
            dir = (dir as NSString).deletingLastPathComponent
        }
        #expect(try send(Array("pause\n".utf8), as: "65534") == "connect: PermissionError")
        // Opened by mistake (a chmod, a umask): the server itself still refuses a peer that is not its owner.
        chmod(sock, 0o666)
        let refused = try send(Array("pause\n".utf8), as: "65534")
        #expect(refused.hasPrefix("error: refused: uid 65534 is not the owner of this socket (uid 0)"), "\(refused)")
        #expect(!(try Self.ctl(s, "status").stdout.contains("paused yes")), "the refused pause took effect")

        // Malformed commands: each gets an error and changes nothing.
        #expect(try send(Array("bogus\n".utf8)).hasPrefix("error: unknown command \"bogus\""))
        #expect(try send(Array("throttle fast\n".utf8)).hasPrefix("error: `throttle` expected a rate"))
        #expect(try send(Array("concurrency 100000\n".utf8)).hasPrefix("error: `concurrency` expected a number from 1 to 64"))
        #expect(try send([0xFF, 0xFE, 0x0A]).hasPrefix("error: a command is one line of UTF-8"))
        #expect(try send([UInt8](repeating: 0x61, count: 200_000)).hasPrefix("error: command longer than 1024 bytes"))
        #expect(try send([]).hasPrefix("error: no complete command line within 10 s"))
        // The server outlived them all and the run finishes clean.
        let status = try Self.ctl(s, "status")
        #expect(status.status == 0 && status.stdout.contains("paused no"), "\(status.all)")
        #expect(try Self.ctl(s, "throttle", "off").status == 0)
        run.waitUntilExit()
        #expect(run.terminationStatus == 0)
        #expect(s.parity().isEmpty)
    }

    @Test func postponeHoldsTheJobAtReadyUntilUnpostponed() throws {
        let s = try Scenario()
        try TreeGen.write(s.source + "/a.bin", size: 100_000, seed: 7)
        // Before any run there is no job to steer.
        let none = try Self.ctl(s, "postpone")
        #expect(none.status != 0 && none.stderr.contains("no job yet"), "\(none.all)")
        #expect(try s.ferry("run", "PLAN").status == 0)
        // No run is active now: the flag goes straight into the ledger.
        let p = try Self.ctl(s, "postpone")
        #expect(p.status == 0 && p.stdout.contains("postponed"), "\(p.all)")
        let json = try s.json(try s.ferry("status", "PLAN", "--json"))
        #expect((json["control"] as? [String: Any])?["postponed"] as? Bool == true)
        #expect(try s.ferry("status", "PLAN").stdout.contains("cutover POSTPONED"))
        let refused = try s.ferry("cutover", "PLAN")
        #expect(refused.status == 4, "\(refused.all)")
        #expect(refused.stdout.contains("[FAIL] not-postponed"), "\(refused.stdout)")
        #expect(try s.ferry("status", "PLAN").stdout.contains("phase        ready"))
        #expect(try Self.ctl(s, "unpostpone").status == 0)
        let done = try s.ferry("cutover", "PLAN")
        #expect(done.status == 0 && done.stdout.contains("[ok] not-postponed"), "\(done.all)")
        // Usage errors exit 2 and say what is allowed.
        let bad = try Self.ctl(s, "throttle")
        #expect(bad.status == 2 && bad.stderr.contains("commands: pause | resume"), "\(bad.all)")
    }
}
