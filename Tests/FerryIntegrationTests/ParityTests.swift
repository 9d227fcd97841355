import FerryTesting
import Foundation
import Testing

/// The CLEAN rule on hostile trees: every entry is copied byte for byte, or refused by name (exit 1), or skipped by
/// an explicit policy and listed. Trees are built by Python (names as bytes) and checked by an independent oracle,
/// testdata/oracle/treecmp.py (what `rsync -aHAXS` keeps: names as bytes, holes, hard links, xattrs and ACLs).
struct ToolFailed: Error, CustomStringConvertible {
    var description: String
}

@Suite(.serialized) struct ParityTests {
    static var oracle: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("testdata/oracle/treecmp.py").path
    }

    /// What the oracle finds between two trees (empty: equal).
    func treeDifferences(_ a: String, _ b: String, _ extra: [String] = []) throws -> [String] {
        let out = try run("/usr/bin/env", ["python3", Self.oracle, a, b] + extra)
        return out.split(separator: "\n").map(String.init)
    }

    @discardableResult
    func run(_ tool: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw ToolFailed(description: "\(tool) \(args.prefix(3)) failed") }
        return String(decoding: data, as: UTF8.self)
    }

    /// A tree holding every hostile case of the reliability review, made with byte names by Python.
    func makeHostileTree(_ root: String) throws {
        _ = try pythonOutput(
            """
            import socket
            root = os.fsencode(\(String(reflecting: root)))
            def p(*parts): return os.path.join(root, *parts)
            latin = b"photos-\\xe9t\\xe9"
            os.makedirs(p(latin))
            for i in range(20):
                open(p(latin, b"img%d.jpg" % i), "wb").write(os.urandom(1000 + i))
            open(p(b"caf\\xe9.txt"), "wb").write(b"x")
            open(p(b"new\\nline"), "wb").write(b"line\\nbreak")
            open(p(b".ferry-user.part"), "wb").write(b"a user's own file")
            open(p(b".ferry-7.part"), "wb").write(b"another")
            os.symlink(b"target-\\xfe-x", p(b"badlink"))
            os.symlink(b"photos-\\xe9t\\xe9/img1.jpg", p(b"goodlink"))
            # A path longer than PATH_MAX (4096 bytes): 20 components of 250 bytes.
            fd = os.open(root, os.O_RDONLY)
            for i in range(20):
                name = (b"%02d" % i) + b"d" * 248
                os.mkdir(name, dir_fd=fd)
                fd = os.open(name, os.O_RDONLY, dir_fd=fd)
            f = os.open(b"bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"deep")
            # A sparse file: 64 MiB with 4 KiB of data at each end.
            with open(p(b"sparse.img"), "wb") as f:
                f.write(os.urandom(4096)); f.seek(64 << 20); f.write(os.urandom(4096))
            # Hard links: two names, and three names across directories.
            os.makedirs(p(b"links", b"sub"))
            open(p(b"links", b"h1"), "wb").write(os.urandom(5000))
            os.link(p(b"links", b"h1"), p(b"links", b"sub", b"h2"))
            open(p(b"links", b"t1"), "wb").write(os.urandom(7000))
            os.link(p(b"links", b"t1"), p(b"links", b"t2"))
            os.link(p(b"links", b"t1"), p(b"links", b"sub", b"t3"))
            # Extended attributes on a file and a directory; an ACL is set below with setfacl.
            os.setxattr(p(b"links", b"h1"), "user.comment", b"kept \\x00 bytes")
            os.setxattr(p(b"links"), "user.dir", b"d")
            open(p(b"acl.txt"), "wb").write(b"acl")
            # Special files: a FIFO and a unix socket.
            os.mkfifo(p(b"fifo"))
            s = socket.socket(socket.AF_UNIX); s.bind(p(b"sock")); s.close()
            """)
        try run("/usr/bin/setfacl", ["-m", "u:nobody:r", root + "/acl.txt"])
    }

    @Test func aHostileTreeIsCopiedByteExactOrRefusedByName() throws {
        let s = try Scenario()
        try makeHostileTree(s.source)

        // Without a policy for special files they are refused: the run fails and names each, everything else is
        // copied.
        let dry = try s.ferry("run", "PLAN", "--dry-run")
        #expect(dry.status == 0, "\(dry.all)")
        #expect(dry.stdout.contains("refused      2"), "\(dry.stdout)")
        let first = try s.ferry("run", "PLAN")
        #expect(first.status == 1, "\(first.all)")
        #expect(first.stdout.contains("2 problem(s): 2 refused"), "\(first.stdout)")
        #expect(first.stdout.contains("fifo") && first.stdout.contains("sock"))
        #expect(first.stdout.contains("copy.specials"), "the advice names the policy that fixes it")
        #expect(try treeDifferences(s.source, s.destination) == ["missing: fifo", "missing: sock"])

        // An explicit policy: listed as skipped, not a failure. The catch-up forgets the old refusals.
        try s.writePlan(copy: "specials: skip")
        let skipped = try s.ferry("run", "PLAN", "--catch-up")
        #expect(skipped.status == 0, "\(skipped.all)")
        #expect(skipped.stdout.contains("skipped by policy: 2"), "\(skipped.stdout)")
        #expect(skipped.stdout.contains("result: CLEAN"))

        // copy.specials: copy recreates them; then the oracle finds the trees identical.
        try s.writePlan(copy: "specials: copy")
        let copied = try s.ferry("run", "PLAN", "--catch-up")
        #expect(copied.status == 0, "\(copied.all)")
        #expect(try treeDifferences(s.source, s.destination) == [])
        let verify = try s.ferry("verify", "PLAN")
        #expect(verify.status == 0, "\(verify.all)")

        // Verify's own fresh walks see what the destination lost or gained behind ferry's back.
        _ = try pythonOutput(
            """
            d = os.fsencode(\(String(reflecting: s.destination)))
            os.unlink(os.path.join(d, b"photos-\\xe9t\\xe9", b"img3.jpg"))
            os.unlink(os.path.join(d, b"new\\nline"))
            open(os.path.join(d, b"stray.bin"), "wb").write(b"not from the source")
            os.setxattr(os.path.join(d, b"links", b"h1"), "user.comment", b"changed")
            """)
        let bad = try s.ferry("verify", "PLAN")
        #expect(bad.status == 1)
        #expect(bad.stdout.contains("photos-\\xe9t\\xe9/img3.jpg") && bad.stdout.contains("missing at the destination"), "\(bad.stdout)")
        #expect(bad.stdout.contains("stray.bin") && bad.stdout.contains("extra"))
        #expect(bad.stdout.contains("new\\x0aline"), "a newline in a name is escaped in the table")
        #expect(bad.stdout.contains("links/h1") && bad.stdout.contains("extended attributes differ"))
    }

    @Test func symlinkPoliciesSkipAndFollow() throws {
        let s = try Scenario(copy: "symlinks: skip")
        try TreeGen.write(s.source + "/real/a.txt", size: 1000, seed: 1)
        symlink("real", s.source + "/dirlink")
        symlink("real/a.txt", s.source + "/filelink")
        symlink("nowhere", s.source + "/dangling")
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(r.stdout.contains("skipped by policy: 3"), "\(r.stdout)")
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/filelink"))

        let f = try Scenario(copy: "symlinks: follow")
        try TreeGen.write(f.source + "/real/a.txt", size: 1000, seed: 1)
        symlink("real", f.source + "/dirlink")
        symlink("real/a.txt", f.source + "/filelink")
        let followed = try f.ferry("run", "PLAN")
        #expect(followed.status == 0, "\(followed.all)")
        var st = stat()
        #expect(lstat(f.destination + "/dirlink/a.txt", &st) == 0 && st.st_mode & S_IFMT == S_IFREG, "the target is copied in place")
        #expect(lstat(f.destination + "/filelink", &st) == 0 && st.st_mode & S_IFMT == S_IFREG)
        #expect(TreeCompare.fileDigest(f.destination + "/filelink") == TreeCompare.fileDigest(f.source + "/real/a.txt"))
        // A dangling link cannot be followed: refused by name.
        symlink("nowhere", f.source + "/dangling")
        let dangling = try f.ferry("run", "PLAN", "--catch-up")
        #expect(dangling.status == 1, "\(dangling.all)")
        #expect(dangling.stdout.contains("dangling") && dangling.stdout.contains("cannot be followed"), "\(dangling.stdout)")
    }

    @Test func excludePatternsAreListedAsSkipped() throws {
        let s = try Scenario(extra: "exclude: [\"*.tmp\", \"/cache/\"]")
        try TreeGen.write(s.source + "/keep.txt", size: 10, seed: 1)
        try TreeGen.write(s.source + "/x/y/scratch.tmp", size: 10, seed: 2)
        try TreeGen.write(s.source + "/cache/blob/1", size: 10, seed: 3)
        try TreeGen.write(s.source + "/x/cache/kept", size: 10, seed: 4)
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        #expect(r.stdout.contains("skipped by policy: 4"), "x/y/scratch.tmp, cache and the two entries below it: \(r.stdout)")
        #expect(FileManager.default.fileExists(atPath: s.destination + "/x/cache/kept"), "an anchored pattern matches at the root only")
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/cache"))
        #expect(!FileManager.default.fileExists(atPath: s.destination + "/x/y/scratch.tmp"))
    }

    @Test func aPartialFileLeftByKillNineIsCleanedUp() throws {
        let s = try Scenario(chunkSize: "1MiB", bandwidth: "8MiB/s")
        try TreeGen.write(s.source + "/big.bin", size: 48 << 20, seed: 9)
        try TreeGen.write(s.source + "/small.txt", size: 100, seed: 2)
        let (p, _, _) = try Ferry.start(["run", s.plan])
        // Killed once a partial file of the big one is at the destination (awaited, not timed).
        let partialSeen = waitUntil(timeout: 60) {
            ((try? FileManager.default.contentsOfDirectory(atPath: s.destination)) ?? []).contains {
                $0.hasPrefix(".ferry-") && $0.hasSuffix(".part")
            }
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(partialSeen)
        try FileManager.default.removeItem(atPath: s.source + "/big.bin")
        try s.writePlan(chunkSize: "1MiB")
        let r = try s.ferry("run", "PLAN")
        #expect(r.status == 0, "\(r.all)")
        let left = try FileManager.default.contentsOfDirectory(atPath: s.destination).filter { $0.hasPrefix(".ferry-") }
        #expect(left == [], "no partial file stays behind")
        // A partial file that is not this job's (another tool, an older job) is an extra, never silently ignored.
        try "x".write(toFile: s.destination + "/.ferry-99.part", atomically: false, encoding: .utf8)
        let v = try s.ferry("verify", "PLAN")
        #expect(v.status == 1)
        #expect(v.stdout.contains(".ferry-99.part") && v.stdout.contains("partial file"), "\(v.stdout)")
    }
}
