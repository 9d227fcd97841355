import FerryCore
import FerryTap
import FerryTesting
import Foundation
import Testing

extension RemoteHostsTests {
    /// docs/runbooks/graphite-two-hosts.md, followed command by command on the old host (one namespace) against
    /// the new host (the other, with its own carbon-cache and sshd): the tap in front of the old carbon, the
    /// merge through ssh, cutover, rollback, cutover again, complete. Every point the collectors sent is in both
    /// carbons (the reference whisper package reads each host's files on that host), the history on the new one.
    @Test func theGraphiteRunbook() throws {
        let runbook = try Runbook("graphite-two-hosts.md")
        let dir = TempDir("runbook-graphite")
        defer { Runbook.killProcesses(under: dir.path) }
        let hosts = try TwoHosts(farRoot: dir.sub("far"))
        let (sshd, config) = try farSSHD(hosts, dir)
        defer { kill(sshd, SIGKILL) }
        // The new host's sshd listens on 2222: the ssh config says so, as an operator's ~/.ssh/config would.
        try (try String(contentsOfFile: config, encoding: .utf8) + "\n  Port 2222\n").write(toFile: config, atomically: true, encoding: .utf8)
        let farWhisper = hosts.farRoot + "/whisper"
        try hosts.onFar(["/bin/mkdir", "-p", farWhisper])
        let newCarbon = try CarbonCache(name: "carbon-new", retentions: "1s:2h", host: hosts.farAddress, prefix: hosts.far, dataDir: farWhisper)
        defer { newCarbon.kill() }
        let oldCarbon = try CarbonCache(name: "carbon-old", retentions: "1s:2h", prefix: hosts.near)
        defer { oldCarbon.kill() }

        let live = Self.liveSeries
        let history = try Self.oldHistory(oldCarbon, dir)
        let tapPort = freePorts(1)[0]
        let hooks = dir.sub("hooks.log")
        let site = [
            "PLAN": dir.sub("etc/graphite.yml"), "STATE": dir.sub("state"), "OLD_WHISPER": oldCarbon.storage,
            "OLD_CARBON": "127.0.0.1:\(oldCarbon.linePort)", "TAP_LISTEN": "127.0.0.1:\(tapPort)", "NEW_SSH": "root@\(hosts.farAddress)",
            "SSH": "ssh -F \(config)", "NEW_FERRY": Ferry.binary, "NEW_WHISPER": farWhisper, "NEW_CARBON": newCarbon.lineAddress,
            "CUTOVER_HOOK": "echo cutover >> \(hooks)", "ROLLBACK_HOOK": "echo rollback >> \(hooks)",
        ]
        let tap = TapClient(socketPath: dir.sub("state/tap/control.sock"))
        var load: NearLoad?
        defer { load?.stop() }
        var cutovers = 0
        var secondsBeforeCutover: Set<Int> = []
        try runbook.follow(in: dir.path, environment: site, prefix: hosts.near) { block in
            if block.firstCommand == "ferry run \"$PLAN\"" {
                // The collectors now send to the tap (the page's step 3 moved them).
                load = try NearLoad(hosts, port: tapPort, series: live, dir: dir)
                #expect(load?.waitBatches(10) == true, "the live load never got through the tap")
            }
            if block.firstCommand == "ferry rollback \"$PLAN\"" {
                // Points of at least two seconds go out while the new side is primary.
                cutovers += 1
                secondsBeforeCutover = Set(load?.seconds ?? [])
                #expect(waitUntil(timeout: 30) { Set(load?.seconds ?? []).subtracting(secondsBeforeCutover).count >= 2 })
            }
            if block.firstCommand == "ferry complete \"$PLAN\"" {
                // Before the tap stops feeding the old carbon: the load ends and the tap delivers all of it.
                #expect(load?.waitBatches(5) == true)
                load?.stop()
                let delivered = try waitUntil(timeout: 60) {
                    guard let s = try tap.status() else { return false }
                    return s.upstreams.allSatisfy { $0.role == "detached" || ($0.cursor == s.head && $0.connected) }
                }
                #expect(delivered, "the tap did not deliver everything")
            }
        }
        #expect(cutovers == 1)
        let sent = try #require(load?.sent)
        var expectNew = sent
        for (k, v) in history { expectNew[k, default: [:]].merge(v) { live, _ in live } }
        func settled(_ prefix: [String], _ root: String) throws -> [String: [Int: Double]] {
            try Self.settledPoints(expectNew, prefix: prefix, root: root)
        }
        let gapsNew = missing(expectNew, in: try settled(hosts.far, farWhisper))
        #expect(gapsNew.isEmpty, "the new host misses \(gapsNew.count) points, e.g. \(gapsNew.prefix(5))")
        let gapsOld = missing(sent, in: try settled([], oldCarbon.storage))
        #expect(gapsOld.isEmpty, "the old host misses \(gapsOld.count) points, e.g. \(gapsOld.prefix(5))")
        #expect((try? String(contentsOfFile: hooks, encoding: .utf8)) == "cutover\nrollback\ncutover\n")
        // The fence was read back through ssh, and the gate line names the host as the plan does.
        let cutoverLog = try String(
            contentsOfFile: dir.sub(".runbook-block-\(try #require(runbook.blocks.first { $0.firstCommand.hasPrefix("ferry cutover") }).line).log"),
            encoding: .utf8)
        #expect(cutoverLog.contains("read back from remote:ssh://root@\(hosts.farAddress)/whisper:"), "\(cutoverLog)")
        #expect(FileManager.default.fileExists(atPath: dir.sub("state.report.html")))
    }
}

/// Python and boto3 (an independent S3 client, retrying as Mastodon's SDK does: the tap answers SlowDown while it
/// switches sides) as the users of a Mastodon: PUTs through `endpoint` until the
/// stop file appears, logging each upload that succeeded as `key sha256`.
final class Uploader {
    let log: String
    let stopFile: String
    let process: Process

    init(endpoint: String, bucket: String, key: String, secret: String, prefix: String, dir: TempDir) throws {
        log = dir.sub("uploads-\(prefix).log")
        stopFile = dir.sub("uploads-\(prefix).stop")
        let script = """
            import boto3, hashlib, os, sys, time
            from botocore.config import Config
            endpoint, bucket, key, secret, prefix, log, stop = sys.argv[1:8]
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="auto", aws_access_key_id=key,
                aws_secret_access_key=secret, config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}))
            out = open(log, "a", buffering=1)
            n = 0
            while not os.path.exists(stop):
                body = hashlib.sha256(("%s-%d" % (prefix, n)).encode()).digest() * (20 + n % 50)
                k = "media_attachments/files/%s/%d.png" % (prefix, n)
                try:
                    s3.put_object(Bucket=bucket, Key=k, Body=body, ContentType="image/png")
                    out.write("%s %s\\n" % (k, hashlib.sha256(body).hexdigest()))
                except Exception as e:
                    out.write("FAILED %s %s\\n" % (k, e))
                n += 1
                time.sleep(0.05)  # the users' pace, not synchronisation
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, endpoint, bucket, key, secret, prefix, log, stopFile]
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
    }

    var lines: [String] { (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").map(String.init) ?? [] }
    var uploaded: [String: String] {
        Dictionary(
            lines.filter { !$0.hasPrefix("FAILED") }.compactMap { l in
                let p = l.split(separator: " ")
                return p.count == 2 ? (String(p[0]), String(p[1])) : nil
            }
        ) { a, _ in a }
    }
    var failures: [String] { lines.filter { $0.hasPrefix("FAILED") } }

    func waitUploads(_ n: Int) -> Bool {
        let target = uploaded.count + n
        return waitUntil(timeout: 60) { uploaded.count >= target }
    }

    func stop() {
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        process.waitUntilExit()
    }
}

@Suite(.serialized) struct RunbookTests {
    /// Every object of `bucket` as boto3 reads it: key → (sha256, Cache-Control).
    static func objects(_ weed: SeaweedFS, _ bucket: String) throws -> [String: [String]] {
        let script = """
            import boto3, hashlib, json, sys
            from botocore.config import Config
            s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id=sys.argv[2],
                aws_secret_access_key=sys.argv[3], config=Config(s3={"addressing_style": "path"}))
            out = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[4]):
                for o in page.get("Contents", []):
                    r = s3.get_object(Bucket=sys.argv[4], Key=o["Key"])
                    out[o["Key"]] = [hashlib.sha256(r["Body"].read()).hexdigest(), r.get("CacheControl", "")]
            print(json.dumps(out))
            """
        let r = try sh(["python3", "-c", script, weed.endpoint, weed.accessKey, weed.secretKey, bucket])
        try #require(r.status == 0, "boto3 listing failed: \(r.out)")
        return try #require(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: [String]])
    }

    /// docs/runbooks/mastodon-media-to-r2.md, both parts, against SeaweedFS, with users uploading all along.
    @Test func theMastodonMediaRunbook() throws {
        let runbook = try Runbook("mastodon-media-to-r2.md")
        let weed = try SeaweedFS()
        for b in ["r2-disk", "old-media", "r2-bucket"] { _ = try mediaBucket(weed, name: b) }
        let dir = TempDir("runbook-media")
        defer { Runbook.killProcesses(under: dir.path) }
        var rng = SeededRandom("mediaRunbook")
        // Part A's store: a Mastodon-shaped tree. Part B's: a bucket already holding media.
        let media = dir.sub("public/system")
        for i in 0..<120 {
            let kind = ["media_attachments/files", "accounts/avatars", "cache/preview_cards"][i % 3]
            try TreeGen.write("\(media)/\(kind)/\(i / 40)/\(i).png", size: 500 + Int(rng.next() % 60_000), seed: rng.next())
        }
        let old = try mediaBucket(weed, name: "old-media")
        for i in 0..<80 {
            _ = try old.putObject(
                "media_attachments/files/old/\(i).png", TreeGen.bytes(count: 300 + i * 211, seed: rng.next()),
                headers: [("Content-Type", "image/png"), ("Cache-Control", "public, max-age=315576000, immutable")])
        }
        let tapPort = freePorts(1)[0]
        var site = [
            "STATE": dir.sub("state"), "R2_ENDPOINT": weed.endpoint, "R2_BUCKET": "r2-disk", "R2_ACCESS_KEY_ID": weed.accessKey,
            "R2_SECRET_ACCESS_KEY": weed.secretKey, "MEDIA": media, "OLD_ENDPOINT": weed.endpoint, "OLD_REGION": "us-east-1",
            "OLD_BUCKET": "old-media", "OLD_ACCESS_KEY_ID": weed.accessKey, "OLD_SECRET_ACCESS_KEY": weed.secretKey,
            "TAP_LISTEN": "127.0.0.1:\(tapPort)", "TAP_ACCESS_KEY_ID": "mastodon-app", "TAP_SECRET_ACCESS_KEY": "tap-secret-for-the-runbook",
        ]
        // Part B copies into another bucket than part A (the page uses one R2_BUCKET per part's session).
        var partB = false
        var uploader: Uploader?
        defer { uploader?.stop() }
        var diskUploads: [String] = []
        let blocksA = Runbook.Part(runbook, from: "## Part A", to: "## Part B")
        let blocksB = Runbook.Part(runbook, from: "## Part B", to: nil)
        try blocksA.follow(in: dir.path, environment: site) { block in
            if block.firstCommand.hasPrefix("ferry run \"$STATE/media-disk.yml\"") || block.firstCommand.hasPrefix("ferry cutover") {
                // Users upload to the disk during the copy and up to the freeze.
                for i in 0..<10 {
                    let path = "media_attachments/files/new/\(diskUploads.count)-\(i).png"
                    try TreeGen.write(media + "/" + path, size: 900 + i, seed: rng.next())
                    diskUploads.append(path)
                }
            }
        }
        // Part A: every file of the tree (uploads included) is in the bucket, same bytes, with the header.
        let disk = try Self.objects(weed, "r2-disk")
        var want: [String: String] = [:]
        for p in (FileManager.default.enumerator(atPath: media)?.allObjects as? [String]) ?? [] {
            var st = stat()
            guard lstat(media + "/" + p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, !p.hasPrefix(".ferry-fence") else { continue }
            want[p] = TreeCompare.fileDigest(media + "/" + p)
        }
        #expect(diskUploads.allSatisfy { want[$0] != nil })
        let gotDisk = disk.filter { !$0.key.hasPrefix(".ferry-fence") }
        #expect(Set(gotDisk.keys) == Set(want.keys), "\(Set(want.keys).symmetricDifference(gotDisk.keys).prefix(5))")
        for (k, v) in want { #expect(gotDisk[k]?[0] == v, "\(k)") }
        #expect(gotDisk.values.allSatisfy { $0[1] == "public, max-age=315576000, immutable" }, "Cache-Control from copy.headers")

        partB = true
        site["R2_BUCKET"] = "r2-bucket"
        try blocksB.follow(in: dir.path, environment: site) { block in
            if block.firstCommand == "ferry run \"$STATE/media-bucket.yml\"" {
                uploader = try Uploader(
                    endpoint: "http://127.0.0.1:\(tapPort)", bucket: "old-media", key: "mastodon-app", secret: "tap-secret-for-the-runbook",
                    prefix: "live", dir: dir)
                #expect(uploader?.waitUploads(5) == true, "no upload went through the tap")
            }
            if block.firstCommand.hasPrefix("ferry rollback") || block.firstCommand.hasPrefix("ferry complete") {
                #expect(uploader?.waitUploads(5) == true)
            }
            if block.firstCommand.hasPrefix("ferry complete") {
                // The users stop right before it: `ferry complete` itself waits until the old bucket has every
                // write the tap took.
                uploader?.stop()
            }
        }
        #expect(partB)
        let up = try #require(uploader)
        #expect(up.failures.isEmpty, "\(up.failures.prefix(3))")
        // After `ferry complete`, at once: both buckets hold every object, every upload included.
        let a = try Self.objects(weed, "old-media").filter { !$0.key.hasPrefix(".ferry-fence") }
        let b = try Self.objects(weed, "r2-bucket").filter { !$0.key.hasPrefix(".ferry-fence") }
        #expect(a.count == 80 + up.uploaded.count, "old bucket: \(a.count) objects, \(up.uploaded.count) uploads")
        #expect(a.mapValues { $0[0] } == b.mapValues { $0[0] }, "the two buckets differ")
        for (k, sha) in up.uploaded { #expect(b[k]?[0] == sha, "\(k) on R2") }
        let logs = ((try? String(contentsOfFile: dir.sub("state/media-bucket-tap.log"), encoding: .utf8)) ?? "")
        #expect(!logs.contains(weed.secretKey) && !logs.contains("tap-secret-for-the-runbook"), "a secret in the tap's log")
    }

    /// docs/runbooks/rehearse-staging.md, on testdata.
    @Test func theRehearsalRunbook() throws {
        let runbook = try Runbook("rehearse-staging.md")
        let dir = TempDir("runbook-rehearse")
        defer { Runbook.killProcesses(under: dir.path) }
        var rng = SeededRandom("rehearseRunbook")
        for i in 0..<200 { try TreeGen.write(dir.sub("production/data/\(i % 7)/\(i).bin"), size: 100 + Int(rng.next() % 30_000), seed: rng.next()) }
        let testdata = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("testdata/demo/source").path
        let site = [
            "PLAN": dir.sub("plans/job.yml"), "STAGING_PLAN": dir.sub("plans/job.staging.yml"), "PROD_SRC": dir.sub("production/data"),
            "PROD_DST": dir.sub("production/new"),
            "STAGING_SRC": testdata, "STAGING_DST": dir.sub("staging/new"), "STATE": dir.sub("state"),
        ]
        try runbook.follow(in: dir.path, environment: site)
        let saved = try #require(
            JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: dir.sub("state/job/rehearsal.json")))) as? [String: Any])
        #expect((saved["production"] as? [String: Any])?["files"] as? Int == 200)
        #expect(saved["restored"] as? Bool == true)
        // Staging's destination did not exist before: the test's own look finds it gone again.
        #expect(!FileManager.default.fileExists(atPath: dir.sub("staging/new")), "the staging destination was not put back")
        #expect(!FileManager.default.fileExists(atPath: dir.sub("production/new")), "the rehearsal wrote to production")
        let page = try String(contentsOfFile: dir.sub("state/job-rehearsal.html"), encoding: .utf8)
        #expect(page.contains("id=\"projected-total\""))
    }
}
