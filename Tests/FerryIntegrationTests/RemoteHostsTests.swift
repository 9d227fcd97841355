import FerryCore
import FerryGraphite
import FerryTesting
import Foundation
import Testing

/// Jobs between two hosts: `ferry serve` runs in one network namespace (with a private tmpfs the job cannot
/// see), `ferry run` in the other; they share nothing but the veth link. The oracles are Python's hashlib on
/// each host and the link's own byte counters.
@Suite(.serialized) struct RemoteHostsTests {
    /// A running `ferry serve` on the far host.
    final class FarServer {
        let process: Process
        let log: String

        init(_ hosts: TwoHosts, token: String, log: String, extra: [String] = []) throws {
            self.log = log
            let p = Process()
            let args =
                hosts.far + [Ferry.binary, "serve", "--listen", "\(hosts.farAddress):8470", "--root", hosts.farRoot, "--token-file", token] + extra
            p.executableURL = URL(fileURLWithPath: args[0])
            p.arguments = Array(args.dropFirst())
            let out = Pipe()
            p.standardOutput = out
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            p.standardInput = FileHandle.nullDevice
            try p.run()
            process = p
            // Its first line says it listens (or it exited, saying why, in the log).
            let line = String(decoding: out.fileHandleForReading.readData(ofLength: 9), as: UTF8.self)
            guard line == "listening" else {
                p.waitUntilExit()
                throw TwoHosts.Failed(
                    description: "ferry serve did not start: \(String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self))")
            }
        }

        func kill9() {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        deinit {
            if process.isRunning { kill9() }
        }
    }

    func token(_ dir: TempDir) throws -> String {
        let path = dir.sub("token")
        try Data("tok-\(UUID().uuidString)".utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o600)
        return path
    }

    func remotePlan(_ dir: TempDir, _ hosts: TwoHosts, name: String, source: String, destination: String, copy: String = "") throws -> String {
        try writePlan(
            dir.path,
            """
            version: 1
            name: \(name)
            source: \(source)
            destination: \(destination)
            \(copy)
            """, name: name + ".yml")
    }

    func remoteStore(_ hosts: TwoHosts, _ path: String) -> String {
        "{kind: remote, url: \"http://\(hosts.farAddress):8470\", token: \"file:token\", store: {kind: fs, path: \"\(path)\"}}"
    }

    @Test func pushToTheFarHostAndPullBack() throws {
        let dir = TempDir("two-hosts")
        let seed = UInt64.random(in: 1...1_000_000)
        print("seed \(seed)")
        try TreeGen.make(at: dir.sub("src"), files: 300, large: [12 << 20], seed: seed)
        try FileManager.default.createSymbolicLink(atPath: dir.sub("src/link"), withDestinationPath: "d1/e1")
        // Mostly a hole, as Whisper files are mostly zeros: it travels as its length.
        let sparse = open(dir.sub("src/sparse.bin"), O_CREAT | O_WRONLY, 0o644)
        ftruncate(sparse, 64 << 20)
        _ = pwrite(sparse, "tail", 4, (64 << 20) - 4)
        close(sparse)
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let tok = try token(dir)

        // Plain HTTP on an address other than loopback is refused without --insecure.
        let (status, refusal) = try TwoHosts.run(
            hosts.far + [Ferry.binary, "serve", "--listen", "\(hosts.farAddress):8470", "--root", hosts.farRoot, "--token-file", tok])
        #expect(status == 2 && refusal.contains("not a loopback address"), "\(status): \(refusal)")

        let server = try FarServer(hosts, token: tok, log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }
        let push = try remotePlan(
            dir, hosts, name: "push", source: "{kind: fs, path: src}", destination: remoteStore(hosts, hosts.farRoot + "/dst"),
            copy: "copy: {chunk_size: 1MiB}")
        let before = try hosts.farReceivedBytes()
        let run = try Ferry.run(["run", push], prefix: hosts.near)
        #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
        let received = try hosts.farReceivedBytes() - before
        // The ledger keeps the wire bytes beside the logical ones; the link's counter (which adds the TCP, IP and
        // HTTP headers) bounds them.
        let report = try Ferry.run(["status", push, "--json"])
        let j = try #require(try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as? [String: Any], "\(report.all)")
        let wire = (j["wire_bytes"] as? NSNumber)?.int64Value ?? -1
        let logical = (j["wire_logical"] as? NSNumber)?.int64Value ?? -1
        print("ledger: wire \(wire), logical \(logical); link received \(received)")
        let sent = try hosts.farSentBytes()
        #expect(wire > received * 8 / 10 && wire <= received + sent, "wire \(wire), link \(received)")
        #expect(logical >= 64 << 20, "the logical bytes include the sparse file's: \(logical)")

        let want = try TwoHosts.digests(dir.sub("src"))
        #expect(want.count > 300)
        #expect(try hosts.farDigests(hosts.farRoot + "/dst") == want, "the far tree differs from the source")
        // The near host cannot see the far host's files: they crossed the link.
        #expect(!FileManager.default.fileExists(atPath: dir.sub("far/dst")))
        let link = try hosts.onFar(["/usr/bin/readlink", hosts.farRoot + "/dst/link"])
        #expect(link.trimmingCharacters(in: .whitespacesAndNewlines) == "d1/e1")
        // The hole did not travel: everything received is about the dense bytes (the sparse file is 64 MiB).
        let dense = try FileManager.default.subpathsOfDirectory(atPath: dir.sub("src")).reduce(Int64(0)) { sum, p in
            p == "sparse.bin" ? sum : sum + ((try? FileManager.default.attributesOfItem(atPath: dir.sub("src/" + p))[.size] as? Int64) ?? 0)
        }
        print("dense \(dense) bytes, far received \(received) bytes")
        #expect(received < dense + dense / 4 + (4 << 20), "received \(received) for \(dense) dense bytes")

        // Pull the same tree back from the far host to a new local directory.
        let pull = try remotePlan(dir, hosts, name: "pull", source: remoteStore(hosts, hosts.farRoot + "/dst"), destination: "{kind: fs, path: back}")
        let back = try Ferry.run(["run", pull], prefix: hosts.near)
        #expect(back.status == 0 && back.stdout.contains("result: CLEAN"), "\(back.all)")
        #expect(try TwoHosts.digests(dir.sub("back")) == want)
    }

    @Test func killedServerAndClientResumeWithoutResendingCommittedChunks() throws {
        let dir = TempDir("two-hosts-kill")
        let seed = UInt64.random(in: 1...1_000_000)
        print("seed \(seed)")
        try TreeGen.make(at: dir.sub("src"), files: 20, large: [16 << 20, 16 << 20, 16 << 20, 16 << 20], seed: seed)
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let tok = try token(dir)
        var server = try FarServer(hosts, token: tok, log: dir.sub("serve-1.log"), extra: ["--insecure"])
        let plan = try remotePlan(
            dir, hosts, name: "kill", source: "{kind: fs, path: src}", destination: remoteStore(hosts, hosts.farRoot + "/dst"),
            copy: "copy: {chunk_size: 1MiB, concurrency: 2, bandwidth: 12MiB/s, compression: none}")
        let dataset = try FileManager.default.subpathsOfDirectory(atPath: dir.sub("src")).reduce(Int64(0)) { sum, p in
            sum + ((try? FileManager.default.attributesOfItem(atPath: dir.sub("src/" + p))[.size] as? Int64) ?? 0)
        }
        let start = try hosts.farReceivedBytes()

        // 1. The server is killed with about a third received, and started again: the same run rides through
        //    (its writers opened again on the partial files, the unsynced chunks sent again).
        let (first, _, _) = try Ferry.start(["run", plan], prefix: hosts.near)
        #expect(try waitUntil(timeout: 60) { try hosts.farReceivedBytes() - start > dataset / 3 })
        server.kill9()
        server = try FarServer(hosts, token: tok, log: dir.sub("serve-2.log"), extra: ["--insecure"])
        defer { server.kill9() }

        // 2. The client is killed with about two thirds received: still the first run.
        #expect(try waitUntil(timeout: 60) { try hosts.farReceivedBytes() - start > dataset * 2 / 3 })
        #expect(first.isRunning, "the run gave up when ferry serve restarted")
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()

        // 3. Resumed to the end.
        let last = try Ferry.run(["run", plan], prefix: hosts.near)
        #expect(last.status == 0 && last.stdout.contains("result: CLEAN"), "\(last.all)")
        #expect(try hosts.farDigests(hosts.farRoot + "/dst") == (try TwoHosts.digests(dir.sub("src"))))
        // Every byte crossed about once: at most the chunks in flight at each kill (2 workers x 1 MiB, and the
        // group not yet committed) were sent again, plus the headers of TCP, IP and HTTP.
        let received = try hosts.farReceivedBytes() - start
        print("dataset \(dataset) bytes, far received \(received) bytes over two runs and a server restart")
        #expect(received <= dataset + dataset / 16 + 2 * (4 << 20), "received \(received) for a dataset of \(dataset)")
    }
}

extension RemoteHostsTests {
    /// A CA and a server certificate for `ip`, made with the openssl CLI; returns (ca.pem, cert.pem, key.pem).
    func certificates(in dir: String, ip: String) throws -> (String, String, String) {
        func sub(_ name: String) -> String { dir + "/" + name }
        let (ca, caKey, cert, key, csr) = (sub("ca.pem"), sub("ca.key"), sub("cert.pem"), sub("key.pem"), sub("s.csr"))
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data("subjectAltName=IP:\(ip)\n".utf8).write(to: URL(fileURLWithPath: sub("ext.cnf")))
        for args in [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey, "-out", ca, "-days", "2", "-subj", "/CN=ferry test CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=\(ip)"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", sub("ext.cnf")],
        ] {
            let (status, out) = try TwoHosts.run(["/usr/bin/openssl"] + args)
            guard status == 0 else { throw TwoHosts.Failed(description: "openssl \(args[0]): \(out)") }
        }
        return (ca, cert, key)
    }

    @Test func tlsEndToEndWithAPrivateCA() throws {
        let dir = TempDir("two-hosts-tls")
        try TreeGen.make(at: dir.sub("src"), files: 40, large: [3 << 20], seed: 7)
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let (ca, cert, key) = try certificates(in: dir.sub("tls"), ip: hosts.farAddress)
        let tok = try token(dir)
        let server = try FarServer(hosts, token: tok, log: dir.sub("serve.log"), extra: ["--tls-cert", cert, "--tls-key", key])
        defer { server.kill9() }
        func store(ca: String?) -> String {
            "{kind: remote, url: \"https://\(hosts.farAddress):8470\", token: \"file:token\"\(ca.map { ", ca: \"\($0)\"" } ?? ""), "
                + "store: {kind: fs, path: \"\(hosts.farRoot)/dst\"}}"
        }
        // Without the CA the client does not trust the server: a clear error, nothing sent.
        let untrusted = try remotePlan(dir, hosts, name: "untrusted", source: "{kind: fs, path: src}", destination: store(ca: nil))
        let refused = try Ferry.run(["run", untrusted], prefix: hosts.near)
        #expect(refused.status != 0 && refused.all.contains("certificate is not trusted"), "\(refused.all)")
        #expect(try hosts.onFar(["/bin/ls", "-A", hosts.farRoot]).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        // Plain HTTP to the TLS port gets no answer (Python's client, from the near host).
        let (_, plain) = try TwoHosts.run(
            hosts.near + [
                "/usr/bin/env", "python3", "-c",
                """
                import http.client
                try:
                    c = http.client.HTTPConnection("\(hosts.farAddress)", 8470, timeout=10)
                    c.request("POST", "/v1/hello", body=b"{}")
                    print("answered", c.getresponse().status)
                except Exception as e:
                    print("refused", type(e).__name__)
                """,
            ])
        #expect(plain.hasPrefix("refused"), "\(plain)")
        // With the CA: the whole job over TLS.
        let trusted = try remotePlan(dir, hosts, name: "trusted", source: "{kind: fs, path: src}", destination: store(ca: ca))
        let run = try Ferry.run(["run", trusted], prefix: hosts.near)
        #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
        #expect(try hosts.farDigests(hosts.farRoot + "/dst") == (try TwoHosts.digests(dir.sub("src"))))
    }
}

extension RemoteHostsTests {
    /// Sends Graphite plaintext lines from the near host to `address` (Python's socket, not ferry).
    func sendFromNear(_ hosts: TwoHosts, _ address: String, port: Int, lines: [String]) throws {
        let (status, out) = try TwoHosts.run(
            hosts.near + [
                "/usr/bin/env", "python3", "-c",
                "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); s.sendall(sys.argv[3].encode()); s.close()",
                address, String(port), lines.joined(separator: "\n") + "\n",
            ])
        guard status == 0 else { throw TwoHosts.Failed(description: "sending to carbon: \(out)") }
    }

    /// History merged into live Whisper files that a real carbon-cache writes on the far host, through ferry
    /// serve (the merge runs there, under carbon's locks); the reference `whisper` package on the far host
    /// checks that every history point and every live point is in the files.
    @Test func whisperHistoryMergesIntoLiveFilesOnTheFarHost() throws {
        let dir = TempDir("two-hosts-whisper")
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let farWhisper = hosts.farRoot + "/whisper"
        try hosts.onFar(["/bin/mkdir", "-p", farWhisper])
        let carbon = try CarbonCache(
            name: "far-carbon", retentions: "60s:2d,600s:30d", host: hosts.farAddress, prefix: hosts.far, dataDir: farWhisper)
        defer { carbon.kill() }
        let now = Int(Date().timeIntervalSince1970)
        let series = 16
        func history(_ i: Int, _ t: Int) -> Double { Double(i * 1000 + (t / 60) % 97) }
        // A day of history on the old host, up to 10 minutes ago.
        for i in 0..<series {
            let f = dir.sub("old/whisper/servers/h\(i % 4)/m\(i).wsp")
            try FileManager.default.createDirectory(atPath: PathUtil_dir(f), withIntermediateDirectories: true)
            try WhisperOracle.run(["create", f, "60:2880,600:4320", "0.5", "average"])
            let pts = stride(from: now - 86400, through: now - 600, by: 60).map { ($0 - $0 % 60, history(i, $0 - $0 % 60)) }
            try WhisperOracle.run(["update", f, String(now), try WhisperOracle.pointsFile(dir.sub("p.json"), pts)])
        }
        // Half the series are already dual-written: their recent points are in the old files and in what carbon
        // writes on the new host.
        let live = stride(from: now - 540, through: now - 60, by: 60).map { $0 - $0 % 60 }
        var lines: [String] = []
        for i in stride(from: 0, to: series, by: 2) {
            for t in live { lines.append("servers.h\(i % 4).m\(i) \(-Double(i + 1)) \(t)") }
            let f = dir.sub("old/whisper/servers/h\(i % 4)/m\(i).wsp")
            try WhisperOracle.run(["update", f, String(now), try WhisperOracle.pointsFile(dir.sub("l.json"), live.map { ($0, -Double(i + 1)) })])
        }
        try sendFromNear(hosts, hosts.farAddress, port: carbon.linePort, lines: lines)
        let liveFiles = stride(from: 0, to: series, by: 2).map { "\(farWhisper)/servers/h\($0 % 4)/m\($0).wsp" }
        #expect(
            waitUntil(timeout: 60) {
                liveFiles.allSatisfy { (try? TwoHosts.run(hosts.far + ["/usr/bin/test", "-s", $0]))?.0 == 0 }
            }, "carbon did not create the live files")

        let tok = try token(dir)
        let server = try FarServer(hosts, token: tok, log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }
        let plan = try remotePlan(
            dir, hosts, name: "metrics", source: "{kind: whisper, path: old/whisper}",
            destination:
                "{kind: remote, url: \"http://\(hosts.farAddress):8470\", token: \"file:token\", store: {kind: whisper, path: \"\(farWhisper)\"}}",
            copy: "verify: {mode: full, window: 1d}")
        let run = try Ferry.run(["run", plan], prefix: hosts.near)
        #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
        #expect(run.stderr.contains("merged=\(series / 2)"), "\(run.stderr)")

        // The reference whisper package, on the far host: every history point, and every live point, is there.
        let check = try hosts.onFar([
            "/usr/bin/env", "python3", "-c",
            """
            import json, sys, whisper
            root, now, series = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
            live = json.loads(sys.argv[4])
            bad = []
            for i in range(series):
                path = "%s/servers/h%d/m%d.wsp" % (root, i % 4, i)
                (start, end, step), values = whisper.fetch(path, now - 86400 + 120, now)
                got = {start + k * step: v for k, v in enumerate(values) if v is not None}
                for t in range(now - 86400 + 120 - (now - 86400 + 120) % 60 + 60, now - 600, 60):
                    t -= t % 60
                    if got.get(t) != i * 1000 + (t // 60) % 97:
                        bad.append("%s@%d history: %r" % (path, t, got.get(t)))
                if i % 2 == 0:
                    for t in live:
                        if got.get(t) != -float(i + 1):
                            bad.append("%s@%d live: %r" % (path, t, got.get(t)))
            print(json.dumps({"bad": bad[:5], "count": len(bad)}))
            """,
            farWhisper, String(now), String(series), "[" + live.map(String.init).joined(separator: ",") + "]",
        ])
        let verdict = try #require(try JSONSerialization.jsonObject(with: Data(check.utf8)) as? [String: Any])
        #expect(verdict["count"] as? Int == 0, "\(verdict)")
    }
}

extension RemoteHostsTests {
    /// A real sshd on the far host (Debian's openssh-server, a host key and authorized_keys made here), and the
    /// ssh client config that reaches it as root with a key made here.
    func farSSHD(_ hosts: TwoHosts, _ dir: TempDir) throws -> (Int32, String) {
        let ssh = dir.sub("ssh")
        try FileManager.default.createDirectory(atPath: ssh, withIntermediateDirectories: true)
        for key in ["host", "id"] {
            let (status, out) = try TwoHosts.run(["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "\(ssh)/\(key)"])
            guard status == 0 else { throw TwoHosts.Failed(description: "ssh-keygen: \(out)") }
        }
        try FileManager.default.copyItem(atPath: "\(ssh)/id.pub", toPath: "\(ssh)/authorized_keys")
        try """
        Port 2222
        ListenAddress \(hosts.farAddress)
        HostKey \(ssh)/host
        AuthorizedKeysFile \(ssh)/authorized_keys
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        StrictModes no
        UsePAM no
        PidFile \(ssh)/sshd.pid
        AllowStreamLocalForwarding yes
        """.write(toFile: "\(ssh)/sshd_config", atomically: true, encoding: .utf8)
        try """
        Host *
          IdentityFile \(ssh)/id
          IdentitiesOnly yes
          StrictHostKeyChecking no
          UserKnownHostsFile /dev/null
          LogLevel ERROR
        """.write(toFile: "\(ssh)/ssh_config", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        // sshd detaches (it is not this process's child) and logs to a file; it is stopped through its pid file.
        let (status, out) = try TwoHosts.run(hosts.far + ["/usr/sbin/sshd", "-f", "\(ssh)/sshd_config", "-E", dir.sub("sshd.log")])
        guard status == 0 else { throw TwoHosts.Failed(description: "sshd: \(out)") }
        let ready = waitUntil(timeout: 30) {
            ((try? String(contentsOfFile: "\(ssh)/sshd.pid", encoding: .utf8)) ?? "").isEmpty == false
        }
        guard ready, let pid = Int32((try String(contentsOfFile: "\(ssh)/sshd.pid", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))
        else { throw TwoHosts.Failed(description: "sshd did not start") }
        return (pid, "\(ssh)/ssh_config")
    }

    /// `url: ssh://root@far:2222`: no open port of ferry's, no certificate, no token in the plan. ferry starts
    /// `ferry serve` on the far host through the system ssh client with a token minted for the connection, and
    /// that server ends with the job.
    @Test func sshEndToEnd() throws {
        let dir = TempDir("two-hosts-ssh")
        try TreeGen.make(at: dir.sub("src"), files: 60, large: [4 << 20], seed: 11)
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let (sshd, config) = try farSSHD(hosts, dir)
        defer { kill(sshd, SIGKILL) }
        let destination = """
            {kind: remote, url: "ssh://root@\(hosts.farAddress):2222", ssh: "ssh -F \(config)", ferry: "\(Ferry.binary)", \
            store: {kind: fs, path: "\(hosts.farRoot)/dst"}}
            """
        let plan = try remotePlan(dir, hosts, name: "ssh", source: "{kind: fs, path: src}", destination: destination)
        let run = try Ferry.run(["run", plan], prefix: hosts.near)
        #expect(
            run.status == 0 && run.stdout.contains("result: CLEAN"),
            "\(run.all)\n\(String(decoding: FileManager.default.contents(atPath: dir.sub("sshd.log")) ?? Data(), as: UTF8.self))")
        #expect(try hosts.farDigests(hosts.farRoot + "/dst") == (try TwoHosts.digests(dir.sub("src"))))
        // The far server lived as long as the job: nothing of it is left running.
        #expect(
            waitUntil(timeout: 20) { (try? TwoHosts.run(["/usr/bin/pgrep", "-f", "stdio-session"]))?.0 == 1 },
            "a ferry serve started over ssh outlived its job")
        // A wrong key is refused with ssh's own reason.
        try FileManager.default.removeItem(atPath: dir.sub("ssh/authorized_keys"))
        let denied = try remotePlan(dir, hosts, name: "denied", source: "{kind: fs, path: src}", destination: destination)
        let refused = try Ferry.run(["run", denied], prefix: hosts.near)
        #expect(refused.status != 0 && refused.all.contains("Permission denied"), "\(refused.all)")
    }
}

extension RemoteHostsTests {
    /// A Ceres tree on the near host becomes Whisper files on the far host: converted here into the schema the
    /// plan gives on the remote side, sent, and checked there by the reference `whisper` package.
    @Test func ceresBecomesWhisperOnTheFarHost() throws {
        let dir = TempDir("two-hosts-ceres")
        let now = Int(Date().timeIntervalSince1970)
        let step = now - now % 60
        try FileManager.default.createDirectory(atPath: dir.sub("ceres/.ceres-tree"), withIntermediateDirectories: true)
        let nodes = 6
        func value(_ i: Int, _ t: Int) -> Double { Double(i * 100 + (t / 60) % 50) }
        let times = stride(from: step - 6 * 3600, through: step - 120, by: 60).map { $0 }
        for i in 0..<nodes {
            var node = try CeresNode.create(
                path: dir.sub("ceres/app/n\(i)"), timeStep: 60, xFilesFactor: 0.5, aggregation: .average, retentions: [(60, 1440)])
            try node.write(times.map { ($0, value(i, $0)) })
        }
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let tok = try token(dir)
        let server = try FarServer(hosts, token: tok, log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }
        let plan = try remotePlan(
            dir, hosts, name: "ceres", source: "{kind: ceres, path: ceres}",
            destination: """
                {kind: remote, url: "http://\(hosts.farAddress):8470", token: "file:token", retentions: "60s:1d", \
                store: {kind: whisper, path: "\(hosts.farRoot)/whisper"}}
                """,
            copy: "verify: {mode: full, window: 12h}")
        let run = try Ferry.run(["run", plan], prefix: hosts.near)
        #expect(run.status == 0 && run.stdout.contains("result: CLEAN"), "\(run.all)")
        let check = try hosts.onFar([
            "/usr/bin/env", "python3", "-c",
            """
            import json, sys, whisper
            root, nodes, times = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
            bad = []
            for i in range(nodes):
                path = "%s/app/n%d.wsp" % (root, i)
                info = whisper.info(path)
                if [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] != [(60, 1440)]:
                    bad.append("%s schema %r" % (path, info["archives"]))
                (start, end, step), values = whisper.fetch(path, times[0] - 60, times[-1] + 60)
                got = {start + k * step: v for k, v in enumerate(values) if v is not None}
                for t in times:
                    if got.get(t) != i * 100 + (t // 60) % 50:
                        bad.append("%s@%d: %r" % (path, t, got.get(t)))
            print(json.dumps({"bad": bad[:5], "count": len(bad)}))
            """,
            hosts.farRoot + "/whisper", String(nodes), "[" + times.map(String.init).joined(separator: ",") + "]",
        ])
        let verdict = try #require(try JSONSerialization.jsonObject(with: Data(check.utf8)) as? [String: Any])
        #expect(verdict["count"] as? Int == 0, "\(verdict)")
    }
}
