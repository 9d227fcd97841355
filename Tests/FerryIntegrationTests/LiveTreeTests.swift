import FerryCore
import FerryTap
import FerryTesting
import Foundation
import Testing

/// An application writing into a live tree (Python, its own process): creates, overwrites, appends, renames
/// (within and across directories), deletes, makes directories and fills them, and (with `links`) makes symlinks
/// and (with `hardlinks`) hard links to existing files. It updates a count of its operations as it goes, and stops when its stop file appears.
final class TreeWriter {
    let process: Process
    let countFile: String
    let stopFile: String
    let errorFile: String

    init(root: String, seed: UInt64, links: Bool, hardlinks: Bool = false, dir: TempDir, name: String = "writer") throws {
        countFile = dir.sub("\(name).count")
        stopFile = dir.sub("\(name).stop")
        let script = """
            import os, random, sys, time
            root, seed, links, count_file, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
            hardlinks = sys.argv[6] == "1"
            rng = random.Random(seed)
            def files():
                out = []
                for d, ds, fs in os.walk(root):
                    ds[:] = [x for x in ds if x != ".ferry-fence"]
                    out += [os.path.join(d, f) for f in fs]
                return out
            def dirs():
                out = [root]
                for d, ds, fs in os.walk(root):
                    ds[:] = [x for x in ds if x != ".ferry-fence"]
                    # a symlink to a directory is listed with the directories: not a place to write (it may lead out of the tree)
                    out += [os.path.join(d, x) for x in ds if not os.path.islink(os.path.join(d, x))]
                return out
            n = 0
            known, known_dirs = files(), dirs()
            while not os.path.exists(stop):
                op = rng.choice(["create", "create", "overwrite", "append", "rename", "move", "delete", "mkdir"] + (["symlink"] if links else []) + (["link"] if hardlinks else []))
                try:
                    if op == "create" or (op in ("overwrite", "append", "rename", "move", "delete", "link", "symlink") and not known):
                        p = os.path.join(rng.choice(known_dirs), "w%d-%d.bin" % (seed % 1000, n))
                        with open(p, "wb") as f:
                            f.write(os.urandom(rng.randrange(0, 40000)))
                        known.append(p)
                    elif op == "overwrite":
                        p = rng.choice(known)
                        if os.path.islink(p): continue
                        with open(p, "wb") as f:
                            f.write(os.urandom(rng.randrange(0, 30000)))
                    elif op == "append":
                        p = rng.choice(known)
                        if os.path.islink(p): continue
                        with open(p, "ab") as f:
                            f.write(b"appended %d\\n" % n)
                    elif op in ("rename", "move"):
                        p = rng.choice(known)
                        d = os.path.dirname(p) if op == "rename" else rng.choice(known_dirs)
                        q = os.path.join(d, "r%d-%d-%s" % (seed % 1000, n, os.path.basename(p)[-20:]))
                        os.rename(p, q)
                        known.remove(p)
                        known.append(q)
                    elif op == "delete":
                        p = rng.choice(known)
                        os.unlink(p)
                        known.remove(p)
                    elif op == "mkdir":
                        d = os.path.join(rng.choice(known_dirs), "d%d-%d" % (seed % 1000, n))
                        os.mkdir(d)
                        known_dirs.append(d)
                        for i in range(rng.randrange(1, 6)):
                            p = os.path.join(d, "f%d.txt" % i)
                            with open(p, "w") as f:
                                f.write("new directory file %d %d\\n" % (n, i))
                            known.append(p)
                    elif op == "link":
                        p = rng.choice(known)
                        if os.path.islink(p): continue
                        q = os.path.join(rng.choice(known_dirs), "h%d-%d" % (seed % 1000, n))
                        os.link(p, q)
                        known.append(q)
                    elif op == "symlink":
                        p = rng.choice(known)
                        q = os.path.join(os.path.dirname(p), "s%d-%d" % (seed % 1000, n))
                        os.symlink(os.path.basename(p), q)
                        known.append(q)
                except FileNotFoundError:
                    known, known_dirs = files(), dirs()
                n += 1
                if n % 20 == 0:
                    with open(count_file + ".tmp", "w") as f:
                        f.write(str(n))
                    os.replace(count_file + ".tmp", count_file)
                time.sleep(0.015)  # pacing of the load (about 50 operations a second), not synchronisation
            with open(count_file, "w") as f:
                f.write(str(n))
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, root, String(seed), links ? "1" : "0", countFile, stopFile, hardlinks ? "1" : "0"]
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        errorFile = dir.sub("\(name).err")
        _ = FileManager.default.createFile(atPath: errorFile, contents: nil)
        p.standardError = FileHandle(forWritingAtPath: errorFile)
        try p.run()
        process = p
    }

    /// What the writer printed on its standard error (a traceback, if it died).
    var errors: String { (try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? "" }

    var operations: Int { (try? String(contentsOfFile: countFile, encoding: .utf8)).flatMap { Int($0) } ?? 0 }

    /// Waits until `n` more operations were done.
    func waitOperations(_ n: Int) -> Bool {
        let target = operations + n
        let done = waitUntil(timeout: 120) { operations >= target || !process.isRunning }
        if !process.isRunning && operations < target { print("the writer stopped after \(operations) operations: \(errors.suffix(2000))") }
        return done && operations >= target
    }

    /// The freeze: the application stops writing.
    func stop() {
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        process.waitUntilExit()
    }
}

/// Every entry of a tree with its metadata, read by Python's os.lstat (independent of ferry): type, mode, size,
/// mtime (ns, files and directories), symlink target, SHA-256 of files, and the hard-link groups.
func treeMetadata(_ root: String) throws -> [String: Any] {
    let out = try pythonOutput(
        """
        import hashlib, json, os, stat
        root = \(String(reflecting: root))
        entries, groups = {}, {}
        for d, ds, fs in os.walk(root):
            for name in ds + fs:
                p = os.path.join(d, name)
                rel = os.path.relpath(p, root)
                st = os.lstat(p)
                e = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode)}
                if stat.S_ISREG(st.st_mode):
                    e["size"] = st.st_size
                    e["mtime"] = st.st_mtime_ns
                    e["sha"] = hashlib.sha256(open(p, "rb").read()).hexdigest()
                    if st.st_nlink > 1: groups.setdefault(st.st_ino, []).append(rel)
                elif stat.S_ISDIR(st.st_mode):
                    e["mtime"] = st.st_mtime_ns
                elif stat.S_ISLNK(st.st_mode):
                    e["target"] = os.readlink(p)
                entries[rel] = e
        # A group is two or more names in the tree (a name whose other links are outside it is a single file here).
        print(json.dumps({"entries": entries, "links": sorted(sorted(g) for g in groups.values() if len(g) > 1)}, sort_keys=True))
        """)
    return try #require(try JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
}

/// Live directory trees through the fs-journal tap: an application keeps writing while `ferry run` copies and
/// the tap mirrors; after the fenced cutover the destination is the source, checked by tools that are not ferry.
@Suite(.serialized) struct LiveTreeTests {
    func plan(_ dir: TempDir, destination: String, watch: String = "auto", extra: String = "") throws -> String {
        try writePlan(
            dir.path,
            """
            version: 1
            name: live
            source: { kind: fs, path: src }
            destination: \(destination)
            tap: { kind: fs-journal, watch: \(watch) }
            state: \(dir.sub("state"))
            cutover: { max_tap_lag: 30s }
            \(extra)
            """)
    }

    func tap(_ dir: TempDir) -> TapClient { TapClient(socketPath: dir.sub("state/tap/control.sock")) }

    func stopTap(_ dir: TempDir) {
        if let pid = try? tap(dir).status()?.pid { kill(pid, SIGKILL) }
    }

    /// Waits until the mirror has applied everything the tap journaled.
    func drained(_ dir: TempDir) throws -> Bool {
        try waitUntil(timeout: 120) {
            guard let s = try tap(dir).status(), let new = s.upstreams.first(where: { $0.name == "new" }) else { return false }
            return new.cursor == s.head && new.connected && new.lastError == nil
        }
    }

    /// The ledger's entries that are not settled (read with Python's sqlite3, not through ferry), for a message.
    func unsettled(_ dir: TempDir) throws -> String {
        String(
            decoding: try pythonOutput(
                "import sqlite3\ndb = sqlite3.connect(\(String(reflecting: dir.sub("state/ledger.sqlite"))))\n"
                    + "print(db.execute(\"SELECT path, kind, state, error FROM items WHERE state IN ('pending', 'failed', 'vanished') LIMIT 10\").fetchall())"
            ), as: UTF8.self)
    }

    func compareTrees(_ a: String, _ b: String) throws {
        let diff = try TwoHosts.run(["/usr/bin/diff", "-r", "--no-dereference", a, b])
        #expect(diff.0 == 0, "diff -r: \(diff.1.prefix(2000))")
        let (ma, mb) = (try treeMetadata(a), try treeMetadata(b))
        let ea = try #require(ma["entries"] as? [String: [String: Any]])
        let eb = try #require(mb["entries"] as? [String: [String: Any]])
        #expect(
            Set(ea.keys) == Set(eb.keys),
            "only in the source: \(Set(ea.keys).subtracting(eb.keys).sorted().prefix(10)); only in the destination: \(Set(eb.keys).subtracting(ea.keys).sorted().prefix(10))"
        )
        var differing: [String] = []
        for (k, v) in ea where (eb[k] as NSDictionary?) != (v as NSDictionary) { differing.append("\(k): \(v) vs \(eb[k] ?? [:])") }
        #expect(differing.isEmpty, "\(differing.count) entries differ, e.g. \(differing.prefix(3))")
        let (la, lb) = ((ma["links"] as? [[String]]) ?? [], (mb["links"] as? [[String]]) ?? [])
        #expect(
            la == lb,
            "hard-link groups differ: only in the source \(Set(la).subtracting(lb).prefix(5)), only in the destination \(Set(lb).subtracting(la).prefix(5))"
        )
    }

    /// fs → fs while the application writes, with renames across directories, symlinks and new hard links (to
    /// files of the tree, renamed and deleted later like any name), over a tree that holds hard-link groups; the tap is
    /// killed with -9 and started again on the way (the tree is rescanned), and then started with a tiny inotify
    /// queue so that a burst overflows it (rescanned again). After the freeze and the fenced cutover the trees are
    /// equal: `diff -r` and every entry's metadata.
    ///
    /// Run once per watcher: fanotify (one mark on the source's filesystem, a tmpfs of its own, so that the tiny
    /// queue overflows from this test's burst and not from the rest of the machine) and inotify.
    @Test(arguments: ["fanotify", "inotify"]) func aLiveTreeMovesToAnotherTreeWithNothingLost(watch: String) throws {
        let dir = TempDir("live-fs")
        var rng = SeededRandom("\(#function) \(watch)")
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        let mounted = try TwoHosts.run(["/usr/bin/mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", dir.sub("src")])
        try #require(mounted.0 == 0, "mount: \(mounted.1)")
        defer { _ = try? TwoHosts.run(["/usr/bin/umount", "-l", dir.sub("src")]) }
        try TreeGen.make(at: dir.sub("src"), files: 2000, maxSmall: 16 << 10, seed: rng.next())
        try FileManager.default.createDirectory(atPath: dir.sub("dst"), withIntermediateDirectories: true)
        let p = try plan(dir, destination: "{ kind: fs, path: dst }", watch: watch)
        defer { stopTap(dir) }
        let writer = try TreeWriter(root: dir.sub("src"), seed: rng.next(), links: true, hardlinks: true, dir: dir)
        defer { writer.stop() }
        #expect(writer.waitOperations(40))
        let run = try Ferry.run(["run", p])
        #expect(run.status == 0, "\(run.all)")
        #expect(writer.waitOperations(300))
        // The mirror keeps up: the tap's lag comes back under a second while the writer goes on.
        let caughtUp = try waitUntil(timeout: 60) { (try tap(dir).status()?.upstreams.first { $0.name == "new" }?.lagSeconds ?? 99) < 1 }
        let log = (try? String(contentsOfFile: dir.sub("state/tap/tap.log"), encoding: .utf8)) ?? ""
        let upstream = String(describing: try tap(dir).status()?.upstreams.last)
        #expect(caughtUp, "\(upstream); tap log: \(log.suffix(3000))")

        // kill -9 of the tap while the writer goes on; started again, it rescans the whole tree.
        let pid = try #require(try tap(dir).status()?.pid)
        kill(pid, SIGKILL)
        #expect(writer.waitOperations(100))
        let client = tap(dir)
        _ = try launchDaemon(Ferry.binary, ["tap", p], log: dir.sub("tap-2.log"), timeout: 20, what: "the tap") { (try? client.status()) != nil }
        #expect(writer.waitOperations(200))
        let log2 = try String(contentsOfFile: dir.sub("tap-2.log"), encoding: .utf8)
        #expect(log2.contains("did not stop cleanly"))
        #expect(log2.contains("(\(watch), "), "the tap does not say it watches with \(watch): \(log2.prefix(2000))")

        // A queue of 16 events for a new tap instance, and a burst of thousands: it overflows, and is rescanned.
        kill(try #require(try tap(dir).status()?.pid), SIGKILL)
        let limit = "/proc/sys/fs/\(watch)/max_queued_events"
        let saved = try String(contentsOfFile: limit, encoding: .utf8)
        try "16\n".write(toFile: limit, atomically: false, encoding: .utf8)
        let started = Result {
            try launchDaemon(Ferry.binary, ["tap", p], log: dir.sub("tap-3.log"), timeout: 20, what: "the tap") { (try? client.status()) != nil }
        }
        try saved.write(toFile: limit, atomically: false, encoding: .utf8)
        _ = try started.get()
        _ = try pythonOutput(
            "root = \(String(reflecting: dir.sub("src/burst")))\nos.mkdir(root)\nfor i in range(3000): open(root + '/b%d' % i, 'w').write('burst %d' % i)"
        )
        #expect(waitUntil(timeout: 60) { (try? String(contentsOfFile: dir.sub("tap-3.log"), encoding: .utf8))?.contains("overflowed") == true })
        #expect(writer.waitOperations(100))

        // The freeze, the journal drained (what the operator sees in `ferry status`: lag 0, nothing spooled),
        // then the fenced cutover: everything before the fence is at the destination.
        writer.stop()
        let isDrained = try drained(dir)
        let tapLog = (try? String(contentsOfFile: dir.sub("tap-3.log"), encoding: .utf8)) ?? ""
        #expect(isDrained, "the journal did not drain: \(tapLog.suffix(2000))")
        let cut = try Ferry.run(["cutover", p])
        #expect(cut.status == 0 && cut.stdout.contains("[ok] fence-new"), "\(cut.all)\nunsettled: \((try? unsettled(dir)) ?? "?")")
        print("writer: \(writer.operations) operations")
        try compareTrees(dir.sub("src"), dir.sub("dst"))

        // The rollback window: the application now writes into the new tree, and the tap mirrors that back to
        // the old one. The rollback fences through the mirror back; then the old tree is the new one again.
        let status = try #require(try tap(dir).status())
        #expect(status.mode == .reverse, "\(status.mode)")
        let back = try TreeWriter(root: dir.sub("dst"), seed: rng.next(), links: true, hardlinks: true, dir: dir, name: "back")
        defer { back.stop() }
        #expect(back.waitOperations(300))
        back.stop()
        let rollback = try Ferry.run(["rollback", p])
        #expect(rollback.status == 0, "\(rollback.all)\ntap log: \(tapLog.suffix(2000))")
        print("writer on the new tree: \(back.operations) operations")
        try compareTrees(dir.sub("src"), dir.sub("dst"))
        #expect(try tap(dir).status()?.mode == .mirror)
    }

    /// fs → a bucket (SeaweedFS, real S3) while the application writes; the bucket's server is stopped for a while
    /// (the changes wait in the journal, the tap says the destination is down) and started again. After the freeze
    /// and the fenced cutover, every file the writer left is an object with identical bytes and no deleted file
    /// remains: checked with boto3.
    @Test func aLiveTreeMovesToABucketThroughAnOutage() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed)
        let dir = TempDir("live-s3")
        var rng = SeededRandom(#function)
        try TreeGen.make(at: dir.sub("src"), files: 1500, maxSmall: 16 << 10, seed: rng.next())
        let p = try plan(
            dir, destination: "{ kind: s3, endpoint: \"\(weed.endpoint)\", region: us-east-1, bucket: media, credentials: \"env:MEDIA_\" }",
            extra: "copy: { symlinks: skip }")
        let env = ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey]
        defer { stopTap(dir) }
        let writer = try TreeWriter(root: dir.sub("src"), seed: rng.next(), links: false, dir: dir)
        defer { writer.stop() }
        #expect(writer.waitOperations(40))
        let run = try Ferry.run(["run", p], environment: env)
        #expect(run.status == 0, "\(run.all)")
        #expect(writer.waitOperations(200))

        // The bucket's server goes away: the tap reports the destination down and keeps the changes.
        weed.stop()
        let down = try waitUntil(timeout: 60) { try tap(dir).status()?.upstreams.first { $0.name == "new" }?.connected == false }
        #expect(down, "the tap never noticed the destination was down")
        #expect(writer.waitOperations(150))
        let spooled = try tap(dir).status()?.upstreams.first { $0.name == "new" }?.spoolBytes ?? 0
        #expect(spooled > 0, "nothing was kept for the destination while it was down")
        try weed.launch()

        writer.stop()
        #expect(try drained(dir), "the journal did not drain after the destination came back")
        let cut = try Ferry.run(["cutover", p], environment: env)
        #expect(cut.status == 0 && cut.stdout.contains("[ok] fence-new"), "\(cut.all)")
        print("writer: \(writer.operations) operations")

        // boto3 lists the bucket and hashes every object; Python hashes every file of the source.
        let out = try pythonOutput(
            """
            import boto3, hashlib, json, os
            from botocore.config import Config
            s3 = boto3.client("s3", endpoint_url=\(String(reflecting: weed.endpoint)), region_name="us-east-1",
                aws_access_key_id=\(String(reflecting: weed.accessKey)), aws_secret_access_key=\(String(reflecting: weed.secretKey)),
                config=Config(retries={"max_attempts": 8, "mode": "standard"}, s3={"addressing_style": "path"}))
            root = \(String(reflecting: dir.sub("src")))
            want = {}
            for d, ds, fs in os.walk(root):
                for f in fs:
                    p = os.path.join(d, f)
                    if os.path.islink(p): continue
                    want[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            got = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="media"):
                for o in page.get("Contents", []):
                    got[o["Key"]] = hashlib.sha256(s3.get_object(Bucket="media", Key=o["Key"])["Body"].read()).hexdigest()
            print(json.dumps({"missing": sorted(set(want) - set(got))[:10], "extra": sorted(set(got) - set(want))[:10],
                              "differ": sorted(k for k in want if k in got and got[k] != want[k])[:10], "files": len(want)}))
            """)
        let verdict = try #require(try JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
        #expect((verdict["missing"] as? [String])?.isEmpty == true, "missing in the bucket: \(verdict)")
        #expect((verdict["extra"] as? [String])?.isEmpty == true, "deleted files still in the bucket: \(verdict)")
        #expect((verdict["differ"] as? [String])?.isEmpty == true, "objects with other bytes: \(verdict)")
        #expect((verdict["files"] as? Int ?? 0) > 1500)
    }

    /// fs → another host (`kind: remote`, `ferry serve` in a second network namespace with a private tmpfs)
    /// while the application writes: the tap runs on the near host and mirrors through the far host's server.
    /// After the fenced cutover, Python on the far host hashes every file and finds the source's; the rollback is
    /// refused with its reason (the far tree cannot be watched from here).
    @Test func aLiveTreeMovesToAnotherHost() throws {
        let dir = TempDir("live-remote")
        var rng = SeededRandom(#function)
        try TreeGen.make(at: dir.sub("src"), files: 1000, maxSmall: 16 << 10, seed: rng.next())
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let tokenFile = dir.sub("token")
        try Data("tok-\(UUID().uuidString)".utf8).write(to: URL(fileURLWithPath: tokenFile))
        chmod(tokenFile, 0o600)
        let server = try RemoteHostsTests.FarServer(hosts, token: tokenFile, log: dir.sub("serve.log"), extra: ["--insecure"])
        defer { server.kill9() }
        let p = try plan(
            dir,
            destination:
                "{kind: remote, url: \"http://\(hosts.farAddress):8470\", token: \"file:token\", store: {kind: fs, path: \"\(hosts.farRoot)/dst\"}}")
        defer { stopTap(dir) }
        let writer = try TreeWriter(root: dir.sub("src"), seed: rng.next(), links: true, dir: dir)
        defer { writer.stop() }
        #expect(writer.waitOperations(40))
        // ferry run (and the tap it starts) on the near host: the far tree is reached over the link only.
        let run = try Ferry.run(["run", p], prefix: hosts.near)
        #expect(run.status == 0, "\(run.all)")
        #expect(writer.waitOperations(300))
        writer.stop()
        let isDrained = try drained(dir)
        let tapLog = (try? String(contentsOfFile: dir.sub("state/tap/tap.log"), encoding: .utf8)) ?? ""
        #expect(isDrained, "the journal did not drain: \(tapLog.suffix(2000))")
        let cut = try Ferry.run(["cutover", p], prefix: hosts.near)
        #expect(cut.status == 0 && cut.stdout.contains("[ok] fence-new"), "\(cut.all)")
        print("writer: \(writer.operations) operations")
        let want = try TwoHosts.digests(dir.sub("src"))
        let got = try hosts.farDigests(hosts.farRoot + "/dst")
        #expect(want.count > 1000)
        #expect(
            got == want,
            "only here: \(Set(want.keys).subtracting(got.keys).sorted().prefix(5)); only there: \(Set(got.keys).subtracting(want.keys).sorted().prefix(5)); differing: \(want.keys.filter { got[$0] != nil && got[$0] != want[$0] }.prefix(5))"
        )
        #expect(!FileManager.default.fileExists(atPath: dir.sub("far/dst")), "the far tree is visible here: it did not cross the link")
        let back = try Ferry.run(["rollback", p], prefix: hosts.near)
        #expect(back.status != 0 && back.all.contains("does not mirror a remote destination back"), "\(back.all)")
    }
}
