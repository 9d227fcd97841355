import FerryCore
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

        // 1. The server is killed with about a third received; the client gives up on it.
        let (first, _, _) = try Ferry.start(["run", plan], prefix: hosts.near)
        #expect(try waitUntil(timeout: 60) { try hosts.farReceivedBytes() - start > dataset / 3 })
        server.kill9()
        first.waitUntilExit()
        #expect(first.terminationStatus != 0)

        // 2. A new server; the client is killed with about two thirds received.
        server = try FarServer(hosts, token: tok, log: dir.sub("serve-2.log"), extra: ["--insecure"])
        defer { server.kill9() }
        let (second, _, _) = try Ferry.start(["run", plan], prefix: hosts.near)
        #expect(try waitUntil(timeout: 60) { try hosts.farReceivedBytes() - start > dataset * 2 / 3 })
        kill(second.processIdentifier, SIGKILL)
        second.waitUntilExit()

        // 3. Resumed to the end.
        let last = try Ferry.run(["run", plan], prefix: hosts.near)
        #expect(last.status == 0 && last.stdout.contains("result: CLEAN"), "\(last.all)")
        #expect(try hosts.farDigests(hosts.farRoot + "/dst") == (try TwoHosts.digests(dir.sub("src"))))
        // Every byte crossed about once: at most the chunks in flight at each kill (2 workers x 1 MiB, and the
        // group not yet committed) were sent again, plus the headers of TCP, IP and HTTP.
        let received = try hosts.farReceivedBytes() - start
        print("dataset \(dataset) bytes, far received \(received) bytes over three runs")
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
