import FerryS3
import FerryTesting
import Foundation
import Testing

/// Buckets under the CLEAN rule, against a real SeaweedFS, with objects written and read by boto3 (an independent
/// client): what a bucket cannot hold is refused or skipped by a visible policy, hostile keys are refused alone,
/// and an S3 source shows no false drift.
@Suite(.serialized) struct BucketParityTests {
    /// Runs boto3 against the server with the test credentials; `s3` is a client, `B` the bucket name.
    func boto(_ weed: SeaweedFS, bucket: String, _ code: String) throws -> String {
        let out = try pythonOutput(
            """
            import boto3
            from botocore.config import Config
            s3 = boto3.client("s3", endpoint_url=\(String(reflecting: weed.endpoint)), region_name="us-east-1",
                aws_access_key_id=\(String(reflecting: weed.accessKey)), aws_secret_access_key=\(String(reflecting: weed.secretKey)),
                config=Config(retries={"max_attempts": 8, "mode": "standard"}, s3={"addressing_style": "path"}))
            B = \(String(reflecting: bucket))
            \(code)
            """)
        return String(decoding: out, as: UTF8.self)
    }

    @Test func copyHeadersAreSetOnEveryUploadedObject() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-headers")
        let src = dir.sub("src")
        try TreeGen.write(src + "/media_attachments/a.png", size: 3000, seed: 1)
        try TreeGen.write(src + "/cache/b.mp4", size: 6 * 1_048_576, seed: 2)  // multipart at a 5 MiB part size
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: up
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            copy:
              chunk_size: 5MiB
              headers: { Cache-Control: "public, max-age=315576000, immutable", X-Amz-Meta-Origin: "old-server" }
            """)
        let env = ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey]
        // The dry run probes the bucket (read-only): with a wrong secret it says so and fails, naming no secret.
        let wrongSecret = "wrong-secret-\(UInt32.random(in: 1000...9999))"
        let wrong = try Ferry.run(
            ["run", plan, "--dry-run"], environment: ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": wrongSecret])
        #expect(wrong.status == 3 && wrong.stdout.contains("destination  CANNOT BE REACHED"), "\(wrong.all)")
        #expect(!wrong.all.contains(wrongSecret))
        let dry = try Ferry.run(["run", plan, "--dry-run"], environment: env)
        #expect(dry.status == 0 && dry.stdout.contains("destination  probed read-only"), "\(dry.all)")
        let r = try Ferry.run(["run", plan], environment: env)
        #expect(r.status == 0, "\(r.all)")
        // Read back with boto3: the plan's headers on both objects, the type still from the extension.
        let out = try boto(
            weed, bucket: "media",
            """
            for k in ["media_attachments/a.png", "cache/b.mp4"]:
                h = s3.head_object(Bucket=B, Key=k)
                print(k, h.get("CacheControl"), h["Metadata"].get("origin"), h["ContentType"], sep="|")
            """)
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.contains("media_attachments/a.png|public, max-age=315576000, immutable|old-server|image/png"), "\(out)")
        #expect(lines.contains("cache/b.mp4|public, max-age=315576000, immutable|old-server|video/mp4"), "\(out)")

        // Headers a bucket store cannot take from a plan are refused where they stand.
        let bad = try writePlan(
            dir.path,
            """
            version: 1
            name: bad
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            copy:
              chunk_size: 5MiB
              headers: { Authorization: "x", X-Amz-Meta-Ferry-Sha256: "y" }
            """, name: "bad.yml")
        let refused = try Ferry.run(["plan", "check", bad], environment: env)
        #expect(refused.status == 2, "\(refused.all)")
        #expect(
            refused.stderr.contains("copy.headers.Authorization") && refused.stderr.contains("copy.headers.X-Amz-Meta-Ferry-Sha256"),
            "\(refused.stderr)")
    }

    @Test func aBucketDestinationSkipsSymlinksByDefaultAndRefusesRawNames() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed)
        let dir = TempDir("ferry-s3-parity")
        let src = dir.sub("src")
        try TreeGen.write(src + "/a/one.png", size: 3000, seed: 1)
        symlink("a/one.png", src + "/link.png")
        _ = try pythonOutput("open(os.fsencode(\(String(reflecting: src))) + b'/caf\\xe9.png', 'wb').write(b'latin-1 name')")
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: up
            source:      { kind: fs, path: src }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            copy:        { chunk_size: 5MiB }
            """)
        let env = ["MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey]
        let dry = try Ferry.run(["run", plan, "--dry-run"], environment: env)
        #expect(dry.stdout.contains("copy.symlinks: skip (the default for this destination)"), "\(dry.stdout)")
        let r = try Ferry.run(["run", plan], environment: env)
        #expect(r.status == 1, "\(r.all)")
        #expect(r.stdout.contains("caf\\xe9.png") && r.stdout.contains("not valid UTF-8"), "\(r.stdout)")
        #expect(r.stdout.contains("skipped by policy: 1") && r.stdout.contains("link.png"))
        #expect(
            try boto(weed, bucket: "media", "print(sorted(o['Key'] for o in s3.list_objects_v2(Bucket=B)['Contents']))")
                == "['a/one.png']\n")
        // Once the operator renames the file, a catch-up forgets the refusal and copies it.
        _ = try pythonOutput("os.unlink(os.fsencode(\(String(reflecting: src))) + b'/caf\\xe9.png')")
        try "renamed".write(toFile: src + "/café.png", atomically: false, encoding: .utf8)
        let fixed = try Ferry.run(["run", plan, "--catch-up"], environment: env)
        #expect(fixed.status == 0, "\(fixed.all)")
        #expect(try boto(weed, bucket: "media", "print(s3.get_object(Bucket=B, Key='café.png')['Body'].read().decode())") == "renamed\n")
    }

    @Test func hostileKeysAreRefusedAloneAndFolderMarkersBecomeDirectories() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed, name: "hostile")
        _ = try boto(
            weed, bucket: "hostile",
            """
            for k in ["conflict", "conflict/child", "ok/file.txt", "ok/deeper/x.bin"]:
                s3.put_object(Bucket=B, Key=k, Body=k.encode(), Metadata={"mtime": "1600000000.250000000"})
            s3.put_object(Bucket=B, Key="folder/", Body=b"")
            """)
        let dir = TempDir("ferry-s3-hostile")
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: down
            source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: hostile, credentials: "env:H_" }
            destination: { kind: fs, path: dst }
            copy:        { chunk_size: 5MiB }
            """)
        let env = ["H_ACCESS_KEY_ID": weed.accessKey, "H_SECRET_ACCESS_KEY": weed.secretKey]
        let dry = try Ferry.run(["run", plan, "--dry-run"], environment: env)
        #expect(dry.stdout.contains("refused      1") && dry.stdout.contains("conflict/child"), "\(dry.stdout)")
        let r = try Ferry.run(["run", plan], environment: env)
        #expect(r.status == 1, "only the conflicting key is refused, not the run: \(r.all)")
        #expect(r.stdout.contains("1 problem(s): 1 refused") && r.stdout.contains("conflict/child"), "\(r.stdout)")
        #expect(try String(contentsOfFile: dir.sub("dst/ok/deeper/x.bin"), encoding: .utf8) == "ok/deeper/x.bin")
        #expect(try String(contentsOfFile: dir.sub("dst/conflict"), encoding: .utf8) == "conflict")
        #expect(PathUtilCheck.isDirectory(dir.sub("dst/folder")), "a folder marker becomes a directory")
        var st = stat()
        #expect(
            stat(dir.sub("dst/ok/file.txt"), &st) == 0 && st.st_mtim.tv_sec == 1_600_000_000 && st.st_mtim.tv_nsec == 250_000_000,
            "the mtime carried in x-amz-meta-mtime is restored")
        // The operator removes the conflicting key; the catch-up forgets the refusal.
        _ = try boto(weed, bucket: "hostile", "s3.delete_object(Bucket=B, Key='conflict/child')")
        let fixed = try Ferry.run(["run", plan, "--catch-up"], environment: env)
        #expect(fixed.status == 0, "\(fixed.all)")
        // No false drift: objects carrying x-amz-meta-mtime are not "changed" on every verify, so the gate opens.
        let v = try Ferry.run(["verify", plan, "--json"], environment: env)
        #expect(v.status == 0, "\(v.all)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(v.stdout.utf8)) as? [String: Any])
        let drift = try #require(report["drift"] as? [String: Any])
        #expect(drift["changed"] as? Int == 0 && drift["added"] as? Int == 0 && drift["deleted"] as? Int == 0, "\(drift)")
        let cut = try Ferry.run(["cutover", plan], environment: env)
        #expect(cut.status == 0, "\(cut.all)")
    }
}

enum PathUtilCheck {
    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
    }
}
