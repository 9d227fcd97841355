import FerryCore
import FerryDigest
import FerryEngine
import FerryLocal
import FerryS3
import FerryTesting
import Foundation
import Logging
import Testing

/// A bucket (default `media`) on a fresh SeaweedFS, and a client for it (patient while the server finishes
/// starting).
func mediaBucket(_ weed: SeaweedFS, name: String = "media") throws -> S3Client {
    let c = S3Client(
        endpoint: weed.endpoint, region: "us-east-1", bucket: name,
        credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey))
    c.maxAttempts = 8
    try c.createBucket()
    return c
}

/// fs → s3 → fs through `ferry run` against a real SeaweedFS.
@Suite(.serialized) struct BucketTests {
    @Test func treeGoesToABucketAndComesBackByteForByte() throws {
        let weed = try SeaweedFS()
        let setup = try mediaBucket(weed)
        let dir = TempDir("ferry-s3")
        let src = dir.sub("system")
        try TreeGen.make(at: src, files: 120, maxSmall: 200_000, large: [200 << 20])
        // Symlinks cannot live in a bucket; this tree has none (Mastodon's media has none).
        for link in ["link-in-tree", "link-outside-absolute", "d1/link-outside-relative", "link-dangling", "link-to-dir-outside"] {
            try FileManager.default.removeItem(atPath: src + "/" + link)
        }
        try TreeGen.write(src + "/media_attachments/files/110/a b+c%d.png", size: 777, seed: 1)
        let env = ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey]
        let up = try writePlan(
            dir.path,
            """
            version: 1
            name: up
            source:      { kind: fs, path: system }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, prefix: system, credentials: "env:MEDIA_" }
            copy:        { chunk_size: 5MiB, concurrency: 4 }
            """, name: "up.yml")
        let r = try Ferry.run(["run", up], environment: env)
        #expect(r.status == 0, "\(r.all)")
        #expect(!r.all.contains(weed.secretKey), "the secret never appears in output")
        let status = try Ferry.run(["status", up, "--json"], environment: env)
        #expect(!status.all.contains(weed.secretKey))
        let ledger = try Data(contentsOf: URL(fileURLWithPath: dir.sub(".ferry/up/ledger.sqlite")))
        #expect(ledger.range(of: Data(weed.secretKey.utf8)) == nil, "the secret never reaches the ledger")
        let head = try #require(try setup.headObject("system/media_attachments/files/110/a b+c%d.png"))
        #expect(head.headers["content-type"] == "image/png")
        #expect(head.headers["x-amz-meta-ferry-sha256"] == TreeCompare.fileDigest(src + "/media_attachments/files/110/a b+c%d.png"))

        let down = try writePlan(
            dir.path,
            """
            version: 1
            name: down
            source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, prefix: system, credentials: "env:MEDIA_" }
            destination: { kind: fs, path: back }
            copy:        { chunk_size: 5MiB }
            """, name: "down.yml")
        let d = try Ferry.run(["run", down], environment: env)
        #expect(d.status == 0, "\(d.all)")
        // Content parity (a bucket keeps no modes or empty directories).
        let fm = FileManager.default
        var files = 0
        for p in (fm.enumerator(atPath: src)?.allObjects as? [String]) ?? [] {
            var st = stat()
            guard lstat(src + "/" + p, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
            files += 1
            #expect(TreeCompare.fileDigest(src + "/" + p) == TreeCompare.fileDigest(dir.sub("back/" + p)), "\(p)")
        }
        #expect(files > 120)
    }

    @Test func bucketToBucketCarriesHeadersAndUserMetadata() throws {
        let weed = try SeaweedFS()
        let old = try mediaBucket(weed)
        let meta: [(String, String)] = [
            ("Content-Type", "video/mp4"), ("Cache-Control", "public, max-age=315576000, immutable"),
            ("Content-Disposition", "inline; filename=\"clip.mp4\""), ("Content-Encoding", "identity"),
            ("Content-Language", "de"), ("Expires", "Thu, 01 Dec 2033 16:00:00 GMT"), ("x-amz-meta-uploader", "mastodon"),
        ]
        let small = TreeGen.bytes(count: 300_000, seed: 3)
        let big = TreeGen.bytes(count: 12 << 20, seed: 4)
        _ = try old.putObject("cache/a.mp4", small, headers: meta)
        let id = try old.createMultipartUpload("cache/big.mp4", headers: meta)
        var parts: [(number: Int, etag: String)] = []
        for (i, off) in stride(from: 0, to: big.count, by: 5 << 20).enumerated() {
            parts.append((i + 1, try old.uploadPart("cache/big.mp4", uploadID: id, number: i + 1, Array(big[off..<min(big.count, off + (5 << 20))]))))
        }
        try old.completeMultipartUpload("cache/big.mp4", uploadID: id, parts: parts)

        let dir = TempDir("ferry-s3s3")
        let env = [
            "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
            "OTHER_ACCESS_KEY_ID": weed.accessKey, "OTHER_SECRET_ACCESS_KEY": weed.secretKey,
        ].merging(try WriteCounter.environment(log: dir.sub("writes.log"))) { $1 }
        // Same endpoint, same credentials: CopyObject, no byte passes through ferry. Through another endpoint
        // name (as between two providers) the bytes stream through ferry and get ferry's hashes.
        for (name, dest, creds) in [("same", "media-r2", "MEDIA_"), ("streamed", "media-other", "OTHER_")] {
            let endpoint = name == "same" ? weed.endpoint : "http://localhost:\(weed.s3Port)"
            let target = try mediaBucket(weed, name: dest)
            let plan = try writePlan(
                dir.path,
                """
                version: 1
                name: \(name)
                source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
                destination: { kind: s3, endpoint: "\(endpoint)", region: us-east-1, bucket: \(dest), credentials: "env:\(creds)" }
                copy:        { chunk_size: 5MiB }
                verify:      { mode: full }
                """, name: name + ".yml")
            try? FileManager.default.removeItem(atPath: dir.sub("writes.log"))
            let r = try Ferry.run(["run", plan], environment: env)
            #expect(r.status == 0, "\(r.all)")
            // Bytes ferry sent to the server, requests and headers included, counted outside ferry.
            let sent = Int(WriteCounter.netBytes(dir.sub("writes.log")))
            let payload = small.count + big.count
            if name == "same" {
                #expect(sent < 256 << 10, "a server-side copy sends requests, no object bytes (\(sent) bytes sent)")
            } else {
                #expect(sent >= payload && sent < payload + payload / 50 + (256 << 10), "\(sent) bytes sent for \(payload)")
            }
            for (key, body) in [("cache/a.mp4", small), ("cache/big.mp4", big)] {
                #expect(try target.getObject(key) == body, "\(name) \(key)")
                let h = try #require(try target.headObject(key))
                for (header, value) in meta {
                    #expect(h.headers[header.lowercased()] == value, "\(name) \(key) \(header)")
                }
                if name == "streamed" && body.count <= 5 << 20 {
                    #expect(h.headers["x-amz-meta-ferry-sha256"] == SHA256Hasher.digest(body).hex, "\(key)")
                } else if name == "streamed" {
                    // A multipart object carries the hash of its 5 MiB parts' digests instead, computed here by
                    // Python from the documented definition (SHA-256 over the parts' raw 32-byte digests, in order).
                    let file = dir.sub("body.bin")
                    try Data(body).write(to: URL(fileURLWithPath: file))
                    let list = String(
                        decoding: try pythonOutput(
                            """
                            import hashlib
                            data = open(\(String(reflecting: file)), "rb").read()
                            size = 5 << 20
                            parts = b"".join(hashlib.sha256(data[i:i + size]).digest() for i in range(0, len(data), size))
                            sys.stdout.write("%d:%s" % (size, hashlib.sha256(parts).hexdigest()))
                            """), as: UTF8.self)
                    #expect(h.headers["x-amz-meta-ferry-sha256-chunks"] == list, "\(key)")
                }
            }
        }
        // A server-side copy is verified by reading both sides: a changed destination object is caught.
        let r2 = try mediaBucket(weed, name: "media-r2")
        var tampered = small
        tampered[100] ^= 0xFF
        _ = try r2.putObject("cache/a.mp4", tampered, headers: meta)
        let v = try Ferry.run(["verify", dir.sub("same.yml")], environment: env)
        #expect(v.status == 1, "\(v.all)")
        #expect(v.stdout.contains("cache/a.mp4") && v.stdout.contains("content differs"), "\(v.stdout)")
    }

    @Test func anObjectOverThePartLimitGoesInLargerEqualParts() throws {
        let weed = try SeaweedFS()
        let c = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-parts")
        try TreeGen.write(dir.sub("src/video/long.mp4"), size: 40 << 20, seed: 5)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: parts
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            copy:        { chunk_size: 5MiB }
            verify:      { mode: full }
            """)
        // With at most 3 parts per object (injected into the store: production has no switch for it), 40 MiB
        // goes as 3 parts of 14 MiB (the last one shorter). The engine runs in process.
        let loader = PlanLoader(storeKinds: [
            StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true),
            StoreKindSchema(kind: "s3", keys: ["endpoint", "region", "bucket", "credentials"], required: ["bucket"], pathIsLocal: false),
        ])
        let loaded = try loader.load(file: plan)
        let store = S3Store(
            endpoint: weed.endpoint, region: "us-east-1", bucket: "media", prefix: "",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey), partSize: 5 << 20,
            maxParts: 3)
        let job = Job(
            plan: loaded, source: LocalStore(root: dir.sub("src")), destination: store, logger: Logger(label: "test"),
            progress: ProgressTracker(output: .none))
        guard case .ready = try job.run(RunOptions()) else {
            Issue.record("the run did not end ready")
            return
        }
        let body = try #require(try c.getObject("video/long.mp4"))
        #expect(SHA256Hasher.digest(body).hex == TreeCompare.fileDigest(dir.sub("src/video/long.mp4")))
        let head = try #require(try c.headObject("video/long.mp4"))
        #expect(head.etag.hasSuffix("-3\""), "three parts: \(head.etag)")
        #expect(head.headers["x-amz-meta-ferry-sha256-chunks"]?.hasPrefix("\(14 << 20):") == true)
        #expect(try job.verifyOnly().ok)
    }

    @Test func missingCredentialsAreAPlanError() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("system"), withIntermediateDirectories: true)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: c
            source:      { kind: fs, path: system }
            destination: { kind: s3, endpoint: "http://127.0.0.1:1", bucket: media, credentials: "env:NOPE_" }
            """)
        let r = try Ferry.run(["plan", "check", plan])
        #expect(r.status == 2)
        #expect(r.stderr.contains("NOPE_ACCESS_KEY_ID"))
    }
}

@Suite(.serialized) struct BucketFaultTests {
    func plan(_ dir: TempDir, _ weed: SeaweedFS, bandwidth: String) throws -> String {
        try writePlan(
            dir.path,
            """
            version: 1
            name: up
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            copy:        { chunk_size: 5MiB, concurrency: 2, bandwidth: \(bandwidth) }
            """)
    }

    @Test func killNineDuringAMultipartUploadResumesFromItsParts() throws {
        let weed = try SeaweedFS()
        let client = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-kill")
        try TreeGen.write(dir.sub("src/videos/long.mp4"), size: 40 << 20, seed: 11)
        let p = try plan(dir, weed, bandwidth: "25MiB/s")
        let env = [
            "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
        ].merging(try WriteCounter.environment(log: dir.sub("writes.log"))) { $1 }
        func written() -> Int64 { WriteCounter.netBytes(dir.sub("writes.log")) }
        let (run, _, _) = try Ferry.start(["run", p], environment: env)
        #expect(waitUntil { written() >= 20 << 20 || !run.isRunning })
        #expect(run.isRunning)
        kill(run.processIdentifier, SIGKILL)
        run.waitUntilExit()
        let before = written()
        #expect(try client.listMultipartUploads(prefix: "videos/").count == 1, "an unfinished upload is left")
        let again = try Ferry.run(["run", p], environment: env)
        #expect(again.status == 0, "\(again.all)")
        let resent = written() - before
        #expect(
            resent <= (40 << 20) - before + 2 * 2 * (5 << 20) + (1 << 20), "the resumed run sent \(resent) bytes; \(before) were sent before the kill"
        )
        #expect(resent < 40 << 20, "the parts S3 had were not sent again")
        let object = try #require(try client.getObject("videos/long.mp4"))
        #expect(object.count == 40 << 20)
        #expect(TreeCompare.fileDigest(dir.sub("src/videos/long.mp4")) == SHA256Hasher.digest(object).hex)
        #expect(try client.listMultipartUploads(prefix: "videos/").isEmpty)
    }

    @Test func aServerThatGoesAwayFailsClearlyAndTheRunResumesWhenItReturns() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-down")
        try TreeGen.make(at: dir.sub("src"), files: 200, maxSmall: 100_000, large: [12 << 20])
        for link in ["link-in-tree", "link-outside-absolute", "d1/link-outside-relative", "link-dangling", "link-to-dir-outside"] {
            try FileManager.default.removeItem(atPath: dir.sub("src/" + link))
        }
        let p = try plan(dir, weed, bandwidth: "8MiB/s")
        let env = [
            "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
        ].merging(try WriteCounter.environment(log: dir.sub("writes.log"))) { $1 }
        let (run, _, errPipe) = try Ferry.start(["run", p], environment: env)
        #expect(waitUntil { WriteCounter.netBytes(dir.sub("writes.log")) > 1 << 20 || !run.isRunning })
        weed.stop()
        let stopped = Date()
        run.waitUntilExit()
        let err = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(run.terminationStatus == 3, "\(err)")
        #expect(Date().timeIntervalSince(stopped) < 60, "a dead endpoint is reported within a bounded time")
        #expect(err.contains("failed 5 times"))
        #expect(!err.contains(weed.secretKey))
        let st = try Ferry.run(["status", p, "--json"], environment: env)
        #expect(st.status == 0)
        try weed.launch()
        let again = try Ferry.run(["run", p], environment: env)
        #expect(again.status == 0, "\(again.all)")
    }
}

@Suite(.serialized) struct BucketKeyTests {
    @Test func keysTheBucketCannotHoldAreRefusedBeforeTheCopy() throws {
        let weed = try SeaweedFS()
        let c = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-keys")
        try TreeGen.write(dir.sub("src/ok.png"), size: 100, seed: 1)
        try TreeGen.write(dir.sub("src/names/caf\u{E9}.png"), size: 10, seed: 2)  // NFC
        try TreeGen.write(dir.sub("src/names/cafe\u{301}.png"), size: 20, seed: 3)  // NFD: the same name to R2
        let long = (0..<5).map { String(repeating: Character(String($0)), count: 220) }.joined(separator: "/")
        try TreeGen.write(dir.sub("src/" + long + ".bin"), size: 5, seed: 4)
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: keys
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            """)
        let env = ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey]
        let dry = try Ferry.run(["run", plan, "--dry-run"], environment: env)
        #expect(dry.status == 0, "\(dry.all)")
        #expect(dry.stdout.contains("refused      2"))
        #expect(dry.stdout.contains("Unicode normalisation"))
        #expect(dry.stdout.contains("1,024"))
        #expect(dry.stdout.contains("size classes:"))
        let r = try Ferry.run(["run", plan], environment: env)
        #expect(r.status == 1, "verify fails for what was refused: \(r.all)")
        #expect(r.stdout.contains("2 problem(s): 2 refused"), "\(r.stdout)")
        #expect(try c.headObject("ok.png") != nil, "the rest was copied")
        #expect(try c.headObject(long + ".bin") == nil)
    }
}

@Suite(.serialized) struct BucketVerifyTests {
    @Test func sampledVerifyProvesTheRestByStoredHashAndCatchesAWrongOne() throws {
        let weed = try SeaweedFS()
        let c = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-verify")
        for i in 0..<60 { try TreeGen.write(dir.sub("src/img/\(i).png"), size: 1000 + i, seed: UInt64(i)) }
        // Two multipart objects (3 parts of 5 MiB): proven by the stored hash of their parts' digests.
        for i in 0..<2 { try TreeGen.write(dir.sub("src/video/\(i).mp4"), size: 12 << 20, seed: UInt64(100 + i)) }
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: v
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            copy:        { chunk_size: 5MiB }
            verify:      { mode: sample, sample: 10% }
            """)
        let env = ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey]
        let r = try Ferry.run(["run", plan], environment: env)
        #expect(r.status == 0, "\(r.all)")
        let first = try #require(
            try JSONSerialization.jsonObject(with: Data(try Ferry.run(["verify", plan, "--json"], environment: env).stdout.utf8)) as? [String: Any])
        let hashed = first["files_content_checked"] as? Int ?? -1
        let byHash = first["files_checked_by_stored_hash"] as? Int ?? -1
        #expect(hashed + byHash == 62, "every object proven one way or the other: \(first)")
        #expect(first["files_unverified"] as? Int ?? -1 == 0, "\(first)")
        #expect(byHash > 30)
        // An object outside the next round's sample whose stored hash is wrong is caught without reading it.
        let nextRound = (first["round"] as? Int ?? 0) + 1
        let victim = try #require((0..<60).map { "img/\($0).png" }.first { !Sampling.isSelected($0, round: nextRound, rate: 0.1) })
        let body = try #require(try c.getObject(victim))
        try c.putObject(victim, body, headers: [("x-amz-meta-ferry-sha256", String(repeating: "0", count: 64))])
        let v = try Ferry.run(["verify", plan], environment: env)
        #expect(v.status == 1, "\(v.all)")
        #expect(v.stdout.contains(victim))
        #expect(v.stdout.contains("stored SHA-256 differs"))
        // Likewise a multipart object whose chunk-list hash was tampered with.
        let video = try #require((0..<2).map { "video/\($0).mp4" }.first { !Sampling.isSelected($0, round: nextRound + 1, rate: 0.1) })
        try c.copyObject(from: video, to: video, replacing: [("x-amz-meta-ferry-sha256-chunks", "\(5 << 20):" + String(repeating: "0", count: 64))])
        try c.putObject(victim, body, headers: [("x-amz-meta-ferry-sha256", SHA256Hasher.digest(body).hex)])
        let w = try Ferry.run(["verify", plan], environment: env)
        #expect(w.status == 1, "\(w.all)")
        #expect(w.stdout.contains(video))
        #expect(w.stdout.contains("chunk list differs"))
    }
}
