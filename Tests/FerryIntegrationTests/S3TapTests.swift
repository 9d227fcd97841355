import FerryCore
import FerryDigest
import FerryS3
import FerryTap
import FerryTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The Mastodon story: media moves from one bucket to another while users keep uploading through ferry's S3 tap.
@Suite(.serialized) struct S3TapTests {
    @Test func mediaMovesWhileUsersUploadThroughTheTap() throws {
        let weed = try SeaweedFS()
        let old = try mediaBucket(weed)
        let new = try mediaBucket(weed, name: "media-r2")
        let meta = [("Content-Type", "image/png"), ("Cache-Control", "public, max-age=315576000, immutable"), ("x-amz-meta-account", "42")]
        for i in 0..<60 {
            _ = try old.putObject("media_attachments/files/\(i).png", TreeGen.bytes(count: 2000 + i * 97, seed: UInt64(i)), headers: meta)
        }
        let dir = TempDir("s3tap")
        let port = freePorts(1)[0]
        let app = S3Credentials(accessKeyID: "mastodon-app", secretAccessKey: "tap-secret-never-logged")
        let env = [
            "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
            "TAP_ACCESS_KEY_ID": app.accessKeyID, "TAP_SECRET_ACCESS_KEY": app.secretAccessKey,
        ]
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: media
            source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media-r2, credentials: "env:MEDIA_" }
            tap:         { kind: s3, listen: "127.0.0.1:\(port)", credentials: "env:TAP_", control: "\(dir.sub("c.sock"))", fence_timeout: 30s }
            verify:      { mode: full }
            cutover:     { max_tap_lag: 30s }
            """)
        let tapProcess = try startTap(plan, env, dir)
        defer {
            kill(tapProcess.processIdentifier, SIGKILL)
            tapProcess.waitUntilExit()
        }
        let control = TapClient(socketPath: dir.sub("c.sock"))

        // The application, signing with the tap's credentials.
        let endpoint = "http://127.0.0.1:\(port)"
        let user = S3Client(endpoint: endpoint, region: "auto", bucket: "media", credentials: app)
        // Anyone else is refused: the tap is never an open relay.
        let stranger = S3Client(
            endpoint: endpoint, region: "auto", bucket: "media", credentials: S3Credentials(accessKeyID: "mastodon-app", secretAccessKey: "guess"))
        stranger.maxAttempts = 1
        do {
            _ = try stranger.putObject("evil.png", [1, 2, 3])
            Issue.record("a wrongly signed PUT was accepted")
        } catch let e as S3Error {
            #expect(e.status == 403 && e.code == "SignatureDoesNotMatch")
        }
        #expect(try old.headObject("evil.png") == nil)

        let uploads = NSLock.Protected<[String: [UInt8]]>([:])
        let failures = NSLock.Protected<[String]>([])
        let stop = NSLock.Protected(false)
        let done = DispatchSemaphore(value: 0)
        Thread {
            var n = 0
            while !stop.withLock({ $0 }) {
                let key = "media_attachments/files/new-\(n).png"
                let body = TreeGen.bytes(count: 500 + n * 13, seed: UInt64(1000 + n))
                do {
                    _ = try user.putObject(key, body, headers: meta)
                    uploads.withLock { $0[key] = body }
                } catch {
                    failures.withLock { $0.append("\(key): \(error)") }
                }
                n += 1
                usleep(20_000)  // the users' pace, not synchronisation
            }
            done.signal()
        }.start()
        #expect(waitUntil(timeout: 30) { uploads.withLock { $0.count } >= 5 }, "users upload before the copy")
        // A user deletes a post's media through the tap.
        try user.deleteObject("media_attachments/files/7.png")

        let run = try Ferry.run(["run", plan], environment: env)
        #expect(run.status == 0, "\(run.all)")
        let before = uploads.withLock { $0.count }
        #expect(waitUntil(timeout: 30) { uploads.withLock { $0.count } >= before + 10 }, "users upload after the copy")
        let cut = try Ferry.run(["cutover", plan], environment: env)
        #expect(cut.status == 0, "\(cut.all)")
        #expect(try control.status()?.mode == .reverse)
        let afterCut = uploads.withLock { $0.count }
        #expect(waitUntil(timeout: 30) { uploads.withLock { $0.count } >= afterCut + 5 }, "users upload after the cutover")
        stop.withLock { $0 = true }
        done.wait()
        #expect(failures.withLock { $0 } == [], "no upload through the tap failed")
        #expect(uploads.withLock { $0.count } >= 20)
        let drained = try waitUntil(timeout: 60) {
            guard let s = try control.status() else { return false }
            return s.upstreams.allSatisfy { $0.role != "mirror" || $0.cursor == s.head }
        }
        #expect(drained)

        // Every object on the old side, from before and during the copy, is on the new side: same bytes, same
        // metadata; what was written after the cutover went to the new side and was mirrored back.
        var oldKeys: [String] = []
        try old.list { oldKeys.append($0.key) }
        var newKeys: [String] = []
        try new.list { newKeys.append($0.key) }
        #expect(Set(oldKeys) == Set(newKeys), "old \(oldKeys.count) vs new \(newKeys.count) objects")
        #expect(!newKeys.contains("media_attachments/files/7.png"))
        #expect(!oldKeys.contains("media_attachments/files/7.png"))
        for (key, body) in uploads.withLock({ $0 }) {
            #expect(try new.getObject(key) == body, "\(key) on new")
            #expect(try old.getObject(key) == body, "\(key) on old")
        }
        for key in oldKeys where !key.hasPrefix(".ferry-fence") {
            let a = try #require(try old.headObject(key)), b = try #require(try new.headObject(key))
            for h in ["content-type", "cache-control", "x-amz-meta-account"] { #expect(a.headers[h] == b.headers[h], "\(key) \(h)") }
            #expect(try old.getObject(key) == (try new.getObject(key)), "\(key)")
        }
        let logText = (try? String(contentsOfFile: dir.sub("tap.log"), encoding: .utf8)) ?? ""
        #expect(!logText.contains(app.secretAccessKey) && !logText.contains(weed.secretKey))
        #expect(logText.contains("refused PUT"), "the refused request is logged")
    }

    /// Mastodon's batch delete and the other writes the review found applied to one side only, sent by boto3 (an
    /// independent client) through the tap: DeleteObjects is mirrored key by key, bucket-level writes are refused
    /// on both sides, object tags reach the primary, dot segments are refused by the tap itself, and reflected
    /// text is escaped in error XML.
    @Test func batchDeletesAndHeadersReachBothSidesAndEverythingElseIsRefused() throws {
        let rig = try TapRig(self)
        defer { withExtendedLifetime(rig) {} }  // the tap runs until the test ends
        let (weed, dir, port) = (rig.weed, rig.dir, rig.port)
        let out = String(
            decoding: try pythonOutput(
                """
                import boto3, json, time, urllib.request, urllib.error
                import xml.etree.ElementTree as ET
                from botocore.config import Config
                from botocore.exceptions import ClientError
                cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
                tap = boto3.client("s3", endpoint_url="http://127.0.0.1:\(port)", region_name="auto",
                    aws_access_key_id="mastodon-app", aws_secret_access_key="tap-secret-never-logged", config=cfg)
                direct = boto3.client("s3", endpoint_url="\(weed.endpoint)", region_name="us-east-1",
                    aws_access_key_id="\(weed.accessKey)", aws_secret_access_key="\(weed.secretKey)", config=cfg)
                result = {}
                for k in ["del/one.png", "del/two.png", "keep/three.png"]:
                    tap.put_object(Bucket="media", Key=k, Body=k.encode())
                tap.put_object(Bucket="media", Key="tagged.png", Body=b"t", Tagging="owner=alice&class=private")
                # The object headers an application sets: what SeaweedFS keeps of them when sent to it directly is
                # the oracle for what the tap must deliver to the primary and the mirror to the secondary.
                extra = dict(StorageClass="STANDARD_IA", WebsiteRedirectLocation="/elsewhere.png",
                    CacheControl="max-age=60", ContentDisposition="inline", Metadata={"app": "mastodon"}, ACL="public-read")
                direct.put_object(Bucket="media", Key="direct-headers.png", Body=b"h", **extra)
                tap.put_object(Bucket="media", Key="headers.png", Body=b"h", **extra)
                fields = ["StorageClass", "WebsiteRedirectLocation", "CacheControl", "ContentDisposition", "Metadata"]
                def shown(b, k):
                    for _ in range(600):  # the mirror's copy (awaited on its arrival, bounded)
                        try:
                            h = direct.head_object(Bucket=b, Key=k); break
                        except ClientError:
                            time.sleep(0.05)
                    grants = sorted(g["Permission"] + ":" + g["Grantee"].get("URI", g["Grantee"].get("ID", "")) for g in direct.get_object_acl(Bucket=b, Key=k)["Grants"])
                    h["Metadata"].pop("ferry-sha256", None)  # the mirror's own content hash, for verify
                    return {f: h.get(f) for f in fields} | {"grants": grants}
                # An object ACL as XML or as grant headers cannot be mirrored, so it is refused; a canned one is mirrored.
                refused = {}
                for name, call in [
                    ("acl_xml", lambda: tap.put_object_acl(Bucket="media", Key="keep/three.png", AccessControlPolicy={
                        "Grants": [], "Owner": {"ID": "test"}})),
                    ("grant_header", lambda: tap.put_object(Bucket="media", Key="granted.png", Body=b"g",
                        GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"')),
                    ("canned_acl", lambda: tap.put_object_acl(Bucket="media", Key="keep/three.png", ACL="public-read")),
                ]:
                    try:
                        call(); refused[name] = "accepted"
                    except ClientError as e:
                        refused[name] = e.response["Error"]["Code"]
                result["refused"] = refused
                try:
                    tap.put_object(Bucket="media", Key="sse-c.png", Body=b"s", SSECustomerAlgorithm="AES256", SSECustomerKey="k" * 32)
                    result["sse_c"] = "accepted"
                except ClientError as e:
                    result["sse_c"] = e.response["Error"]["Code"]
                result["headers"] = [shown("media", "direct-headers.png"), shown("media", "headers.png"), shown("media-r2", "headers.png")]
                r = tap.delete_objects(Bucket="media", Delete={"Objects": [{"Key": "del/one.png"}, {"Key": "del/two.png"}]})
                result["deleted"] = sorted(d["Key"] for d in r.get("Deleted", []))
                try:
                    tap.put_bucket_tagging(Bucket="media", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
                    result["bucket_tagging"] = "accepted"
                except ClientError as e:
                    result["bucket_tagging"] = e.response["Error"]["Code"]
                try:
                    tap.get_object(Bucket="media", Key="../media-r2/keep/three.png")
                    result["dots"] = "served"
                except ClientError as e:
                    result["dots"] = str(e.response["ResponseMetadata"]["HTTPStatusCode"])
                result["tags_primary"] = sorted(t["Key"] + "=" + t["Value"] for t in direct.get_object_tagging(Bucket="media", Key="tagged.png")["TagSet"])
                for _ in range(600):  # the mirror's copy of the tagged object (awaited on its arrival, bounded)
                    try:
                        direct.head_object(Bucket="media-r2", Key="tagged.png"); break
                    except ClientError:
                        time.sleep(0.05)
                result["tags_secondary"] = sorted(t["Key"] + "=" + t["Value"] for t in direct.get_object_tagging(Bucket="media-r2", Key="tagged.png")["TagSet"])
                # Tags removed afterwards (an object write, never a delete of the object: checked once drained).
                tap.delete_object_tagging(Bucket="media", Key="tagged.png")
                tags = []
                for b in ["media", "media-r2"]:
                    try:
                        tags.append(len(direct.get_bucket_tagging(Bucket=b)["TagSet"]))
                    except ClientError:
                        tags.append(0)
                result["bucket_tags"] = tags
                req = urllib.request.Request("http://127.0.0.1:\(port)/media/x", headers={
                    "Authorization": "AWS4-HMAC-SHA256 Credential=<x>&'\\"stranger/20260101/auto/s3/aws4_request, SignedHeaders=host, Signature=00",
                    "x-amz-date": "20260101T000000Z", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
                try:
                    urllib.request.urlopen(req)
                except urllib.error.HTTPError as e:
                    ET.fromstring(e.read())
                    result["escaped"] = e.code
                sys.stdout.write(json.dumps(result))
                """), as: UTF8.self)
        let r = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(r["deleted"] as? [String] == ["del/one.png", "del/two.png"], "\(r)")
        #expect(r["bucket_tagging"] as? String == "NotImplemented", "\(r)")
        #expect(r["dots"] as? String == "400", "\(r)")
        #expect(r["tags_primary"] as? [String] == ["class=private", "owner=alice"], "\(r)")
        #expect(r["tags_secondary"] as? [String] == ["class=private", "owner=alice"], "tags are mirrored too: \(r)")
        #expect(r["bucket_tags"] as? [Int] == [0, 0], "a refused bucket-level write reached neither side: \(r)")
        #expect(r["sse_c"] as? String == "NotImplemented", "an SSE-C write cannot be mirrored, so it is refused: \(r)")
        #expect(
            r["refused"] as? [String: String] == ["acl_xml": "NotImplemented", "grant_header": "NotImplemented", "canned_acl": "accepted"],
            "\(r)")
        let shown = try #require(r["headers"] as? [[String: Any]])
        print("object headers as SeaweedFS keeps them: \(shown[0])")
        #expect(shown[0]["CacheControl"] as? String == "max-age=60", "the oracle saw the headers: \(shown[0])")
        #expect(NSDictionary(dictionary: shown[1]) == NSDictionary(dictionary: shown[0]), "primary through the tap vs direct: \(shown)")
        #expect(NSDictionary(dictionary: shown[2]) == NSDictionary(dictionary: shown[0]), "secondary (mirrored) vs direct: \(shown)")
        #expect(r["escaped"] as? Int == 403, "the error XML parses: \(r)")
        // Once the queue has drained, the deleted keys are gone from the new side too.
        let control = TapClient(socketPath: dir.sub("c.sock"))
        let drained = try waitUntil(timeout: 60) {
            guard let s = try control.status() else { return false }
            return s.upstreams.allSatisfy { $0.role != "mirror" || $0.cursor == s.head }
        }
        #expect(drained)
        let new = S3Client(
            endpoint: weed.endpoint, region: "us-east-1", bucket: "media-r2",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey))
        var keys: [String] = []
        try new.list { keys.append($0.key) }
        #expect(Set(keys) == ["headers.png", "keep/three.png", "tagged.png"], "removing tags kept the object on the new side: \(keys)")
        let tags = try new.forward(method: "GET", key: "tagged.png", query: [("tagging", "")], headers: [], body: [])
        #expect(!String(decoding: tags.body, as: UTF8.self).contains("<Tag>"), "the tags are gone on the new side too")
    }

    /// Unauthenticated clients cost the tap nothing: a declared size over max_body gets 413 and an unsigned head
    /// 403, both before any body byte is sent; half a head is closed after header_timeout; connections past
    /// max_connections are closed at accept. Signed requests are served all along. Python's socket and boto3.
    @Test func unauthenticatedClientsAreRefusedFromTheHeadTimedOutAndLimited() throws {
        let rig = try TapRig(self, tap: ", max_body: 8MiB, header_timeout: 3s, max_connections: 20")
        defer { withExtendedLifetime(rig) {} }  // the tap runs until the test ends
        let port = rig.port
        let out = String(
            decoding: try pythonOutput(
                """
                import socket, time, json, boto3
                from botocore.config import Config
                port = \(port)
                def status_of(head, timeout=10):
                    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(timeout)
                    s.sendall(head.encode())
                    t = time.time(); data = s.recv(200); s.close()
                    return data.split(b"\\r\\n")[0].decode(), time.time() - t
                r = {}
                r["huge"] = status_of("PUT /media/x HTTP/1.1\\r\\nHost: h\\r\\nContent-Length: 1099511627776\\r\\n\\r\\n")
                r["unsigned"] = status_of("PUT /media/x HTTP/1.1\\r\\nHost: h\\r\\nContent-Length: 4194304\\r\\n\\r\\n")
                s = socket.create_connection(("127.0.0.1", port)); s.settimeout(20)
                s.sendall(b"GET /media/x HTTP/1.1\\r\\nHost: h\\r\\nX-Slow: ")
                t = time.time(); closed = s.recv(100) == b""; r["half"] = [closed, time.time() - t]; s.close()
                # 25 connections at once, 20 allowed: which ones are refused depends on accept order across event
                # loops, so the count is checked: 5 are closed well before header_timeout (3 s), 20 are still open.
                conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(25)]
                closed, still_open = 0, 0
                t = time.time()
                for c in conns:
                    c.settimeout(max(0.05, 1.5 - (time.time() - t)))
                    try:
                        closed += c.recv(100) == b""
                    except socket.timeout:
                        still_open += 1
                r["over_limit"] = [closed, still_open]
                for c in conns: c.close()
                time.sleep(0.2)  # the closes reach the tap (its count drops); not synchronisation of the assertions
                cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3})
                tap = boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % port, region_name="auto",
                    aws_access_key_id="mastodon-app", aws_secret_access_key="tap-secret-never-logged", config=cfg)
                tap.put_object(Bucket="media", Key="ok.png", Body=b"fine")
                r["served"] = tap.get_object(Bucket="media", Key="ok.png")["Body"].read().decode()
                sys.stdout.write(json.dumps(r))
                """), as: UTF8.self)
        let r = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let huge = try #require(r["huge"] as? [Any]), unsigned = try #require(r["unsigned"] as? [Any])
        #expect((huge[0] as? String)?.contains("413") == true && (huge[1] as? Double ?? 99) < 5, "\(r)")
        #expect((unsigned[0] as? String)?.contains("403") == true && (unsigned[1] as? Double ?? 99) < 5, "\(r)")
        let half = try #require(r["half"] as? [Any])
        #expect(half[0] as? Bool == true && (half[1] as? Double ?? 99) < 15, "half a head is closed after header_timeout: \(r)")
        let over = try #require(r["over_limit"] as? [Int])
        #expect(over == [5, 20], "5 of 25 connections are closed at accept, 20 served (closed, open): \(r)")
        #expect(r["served"] as? String == "fine")
    }

    /// With a side prefix, the application sees its own keys only, and every key it lists can be read (boto3).
    @Test func aSidePrefixIsAddedOnTheWayInAndStrippedOnTheWayOut() throws {
        let rig = try TapRig(self, old: "pfx", new: "pfx-new", prefix: "app/")
        defer { withExtendedLifetime(rig) {} }  // the tap runs until the test ends
        let port = rig.port
        let pfx = S3Client(
            endpoint: rig.weed.endpoint, region: "us-east-1", bucket: "pfx",
            credentials: S3Credentials(accessKeyID: rig.weed.accessKey, secretAccessKey: rig.weed.secretKey))
        _ = try pfx.putObject("app/a.png", Array("a".utf8))
        _ = try pfx.putObject("app/sub/b.png", Array("b".utf8))
        _ = try pfx.putObject("other/secret.txt", Array("secret".utf8))
        let out = String(
            decoding: try pythonOutput(
                """
                import boto3, json
                from botocore.config import Config
                tap = boto3.client("s3", endpoint_url="http://127.0.0.1:\(port)", region_name="auto",
                    aws_access_key_id="mastodon-app", aws_secret_access_key="tap-secret-never-logged",
                    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
                keys = sorted(o["Key"] for o in tap.list_objects_v2(Bucket="media").get("Contents", []))
                sub = sorted(o["Key"] for o in tap.list_objects_v2(Bucket="media", Prefix="sub/").get("Contents", []))
                read = [tap.get_object(Bucket="media", Key=k)["Body"].read().decode() for k in keys]
                # A batch delete under the prefix: the keys are the application's, the primary's are prefixed.
                tap.put_object(Bucket="media", Key="c.png", Body=b"c")
                d = tap.delete_objects(Bucket="media", Delete={"Objects": [{"Key": "a.png"}, {"Key": "c.png"}]})
                deleted = sorted(x["Key"] for x in d.get("Deleted", []))
                sys.stdout.write(json.dumps({"keys": keys, "sub": sub, "read": read, "deleted": deleted}))
                """), as: UTF8.self)
        let r = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: [String]])
        #expect(r["keys"] == ["a.png", "sub/b.png"], "never a key outside the prefix: \(r)")
        #expect(r["sub"] == ["sub/b.png"])
        #expect(r["read"] == ["a", "b"], "every listed key reads back through the tap")
        #expect(r["deleted"] == ["a.png", "c.png"], "the answer names the application's keys: \(r)")
        let control = TapClient(socketPath: rig.dir.sub("c.sock"))
        let drained = try waitUntil(timeout: 60) {
            guard let s = try control.status() else { return false }
            return s.upstreams.allSatisfy { $0.role != "mirror" || $0.cursor == s.head }
        }
        #expect(drained)
        func keys(_ bucket: String) throws -> Set<String> {
            let c = S3Client(
                endpoint: rig.weed.endpoint, region: "us-east-1", bucket: bucket,
                credentials: S3Credentials(accessKeyID: rig.weed.accessKey, secretAccessKey: rig.weed.secretKey))
            var out: Set<String> = []
            try c.list { out.insert($0.key) }
            return out
        }
        #expect(try keys("pfx") == ["app/sub/b.png", "other/secret.txt"], "deleted under the prefix on the primary, nothing else")
        #expect(try !keys("pfx-new").contains("app/c.png"), "the batch delete reached the secondary too")
    }

    /// Large uploads go to disk, not memory: eight boto3 clients PUT 24 MiB each at once, the tap's peak RSS
    /// stays far below the bytes in flight, every object lands byte-exact on both sides, and no spooled body is
    /// left behind.
    @Test func largeUploadsAreSpooledToDiskAndMemoryStaysBounded() throws {
        let rig = try TapRig(self)
        defer { withExtendedLifetime(rig) {} }  // the tap runs until the test ends
        let (weed, port) = (rig.weed, rig.port)
        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        print("largeUploads seed \(seed)")
        let out = String(
            decoding: try pythonOutput(
                """
                import boto3, hashlib, json, random, threading, time
                from botocore.config import Config
                from botocore.exceptions import ClientError
                cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})
                def client(url, key, secret, region):
                    return boto3.client("s3", endpoint_url=url, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret, config=cfg)
                rng = random.Random(\(seed))
                bodies = {"big/%d.bin" % i: rng.randbytes(24 << 20) for i in range(8)}
                errors = []
                def put(k):
                    try:
                        client("http://127.0.0.1:\(port)", "mastodon-app", "tap-secret-never-logged", "auto").put_object(
                            Bucket="media", Key=k, Body=bodies[k])
                    except Exception as e:
                        errors.append(repr(e))
                threads = [threading.Thread(target=put, args=(k,)) for k in bodies]
                for t in threads: t.start()
                for t in threads: t.join()
                direct = client("\(weed.endpoint)", "\(weed.accessKey)", "\(weed.secretKey)", "us-east-1")
                want = {k: hashlib.sha256(v).hexdigest() for k, v in bodies.items()}
                got = {}
                for b in ["media", "media-r2"]:
                    got[b] = {}
                    for k in bodies:
                        for _ in range(1200):  # the mirror's copy, awaited on its arrival (bounded)
                            try:
                                got[b][k] = hashlib.sha256(direct.get_object(Bucket=b, Key=k)["Body"].read()).hexdigest(); break
                            except ClientError:
                                time.sleep(0.05)
                sys.stdout.write(json.dumps({"errors": errors, "match": [got[b] == want for b in got]}))
                """), as: UTF8.self)
        let r = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect((r["errors"] as? [String])?.isEmpty == true, "\(r)")
        #expect(r["match"] as? [Bool] == [true, true], "every object byte-exact on both sides: \(r)")
        // Peak RSS from the kernel: 192 MiB of bodies were in flight at once.
        let status = try String(contentsOfFile: "/proc/\(rig.process.processIdentifier)/status", encoding: .utf8)
        let hwm = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") })
        let kib = try #require(Int(hwm.split(separator: " ", omittingEmptySubsequences: true)[1]))
        print("s3 tap peak RSS with 8 x 24 MiB uploads in flight: \(kib / 1024) MiB")
        #expect(kib < 140 * 1024, "peak RSS \(kib / 1024) MiB: bodies are spooled, not held")
        let left = try FileManager.default.contentsOfDirectory(atPath: rig.dir.path + "/.ferry/media/tap/bodies")
        #expect(left.isEmpty, "no spooled body outlives its request: \(left)")
    }

    /// A running S3 tap in front of two buckets on a fresh SeaweedFS, for the tests that drive it with boto3.
    final class TapRig {
        let weed: SeaweedFS
        let dir: TempDir
        let port: Int
        let plan: String
        let env: [String: String]
        var process: Process!

        /// With `start: false` the tap is not started (`launch` starts it, as often as a test needs).
        init(
            _ test: S3TapTests, old: String = "media", new: String = "media-r2", prefix: String = "", tap extra: String = "", start: Bool = true
        ) throws {
            weed = try SeaweedFS()
            _ = try mediaBucket(weed, name: old)
            _ = try mediaBucket(weed, name: new)
            dir = TempDir("s3tap-rig")
            port = freePorts(1)[0]
            env = [
                "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
                "TAP_ACCESS_KEY_ID": "mastodon-app", "TAP_SECRET_ACCESS_KEY": "tap-secret-never-logged",
            ]
            let p = prefix.isEmpty ? "" : ", prefix: \(prefix)"
            plan = try writePlan(
                dir.path,
                """
                version: 1
                name: media
                source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: \(old)\(p), credentials: "env:MEDIA_" }
                destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: \(new)\(p), credentials: "env:MEDIA_" }
                tap:         { kind: s3, listen: "127.0.0.1:\(port)", credentials: "env:TAP_", bucket: media, control: "\(dir.sub("c.sock"))"\(extra) }
                """)
            if start { process = try test.startTap(plan, env, dir) }
        }

        /// Starts the tap (again) and returns its process.
        func launch() throws -> Process {
            process = try S3TapTests().startTap(plan, env, dir)
            return process
        }

        var control: TapClient { TapClient(socketPath: dir.sub("c.sock")) }

        deinit {
            if let process, process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
    }

    /// Starts `ferry tap PLAN` with its log in `dir/tap.log` and waits for its control socket (`dir/c.sock`).
    func startTap(_ plan: String, _ env: [String: String], _ dir: TempDir) throws -> Process {
        let control = TapClient(socketPath: dir.sub("c.sock"))
        return try launchDaemon(
            Ferry.binary, ["tap", plan], environment: ProcessInfo.processInfo.environment.merging(env) { $1 },
            log: dir.sub("tap.log"), timeout: 20, what: "the s3 tap"
        ) { (try? control.status()) != nil }
    }

    /// A raw HTTP request without any signature, as an open relay would take it.
    func rawStatus(port: Int, _ request: String) throws -> String {
        let sender = try LineSender(port: port)
        try sender.send(request)
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(sender.fd, $0.baseAddress, 512, 0) }
        return String(decoding: buf.prefix(max(0, n)), as: UTF8.self).split(separator: "\r\n").first.map(String.init) ?? ""
    }

    @Test func aFailingSecondaryLosesNothingAndMultipartAndCopyAreMirrored() throws {
        let weed = try SeaweedFS()
        let old = try mediaBucket(weed)
        let dir = TempDir("s3tap-down")
        let port = freePorts(1)[0]
        let app = S3Credentials(accessKeyID: "app", secretAccessKey: "tap-secret")
        let env = [
            "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
            "TAP_ACCESS_KEY_ID": app.accessKeyID, "TAP_SECRET_ACCESS_KEY": app.secretAccessKey,
        ]
        // The secondary is another server, down while the application writes.
        let weed2 = try SeaweedFS()
        let later = try mediaBucket(weed2, name: "later")
        weed2.stop()
        let env2 = ["LATER_ACCESS_KEY_ID": weed2.accessKey, "LATER_SECRET_ACCESS_KEY": weed2.secretKey]
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: down
            source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            destination: { kind: s3, endpoint: "\(weed2.endpoint)", region: us-east-1, bucket: later, credentials: "env:LATER_" }
            tap:         { kind: s3, listen: "127.0.0.1:\(port)", credentials: "env:TAP_", control: "\(dir.sub("c.sock"))" }
            """)
        let tapProcess = try startTap(plan, env.merging(env2) { a, _ in a }, dir)
        defer {
            kill(tapProcess.processIdentifier, SIGKILL)
            tapProcess.waitUntilExit()
        }
        let control = TapClient(socketPath: dir.sub("c.sock"))
        #expect(try rawStatus(port: port, "GET /media/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").contains("403"))

        let user = S3Client(endpoint: "http://127.0.0.1:\(port)", region: "auto", bucket: "media", credentials: app)
        var want: [String: [UInt8]] = [:]
        for i in 0..<5 {
            let body = TreeGen.bytes(count: 1000 + i, seed: UInt64(i))
            _ = try user.putObject("small/\(i).png", body, headers: [("Content-Type", "image/png")])
            want["small/\(i).png"] = body
        }
        // The same key written again at once: the secondary ends with the last version.
        let last = TreeGen.bytes(count: 777, seed: 99)
        _ = try user.putObject("small/0.png", last, headers: [("Content-Type", "image/png")])
        want["small/0.png"] = last
        // A multipart upload through the tap (parts of 5 MiB and a tail; mirrored in 16 MiB parts).
        let big = TreeGen.bytes(count: (20 << 20) + 1234, seed: 7)
        let id = try user.createMultipartUpload("video/clip.mp4", headers: [("Content-Type", "video/mp4")])
        var parts: [(number: Int, etag: String)] = []
        for (i, off) in stride(from: 0, to: big.count, by: 5 << 20).enumerated() {
            parts.append(
                (i + 1, try user.uploadPart("video/clip.mp4", uploadID: id, number: i + 1, Array(big[off..<min(big.count, off + (5 << 20))]))))
        }
        try user.completeMultipartUpload("video/clip.mp4", uploadID: id, parts: parts)
        want["video/clip.mp4"] = big
        // A server-side copy through the tap.
        try user.copyObject(from: "small/1.png", to: "small/copy.png")
        want["small/copy.png"] = want["small/1.png"]

        let failing = try waitUntil(timeout: 30) {
            guard let n = try control.status()?.upstreams.first(where: { $0.name == "new" }) else { return false }
            return n.lastError != nil && n.spoolBytes > 0
        }
        #expect(failing, "the failing secondary shows in the tap's status")
        for (k, v) in want { #expect(try old.getObject(k) == v, "\(k) on the primary") }

        try weed2.launch()
        let drained = try waitUntil(timeout: 60) {
            guard let s = try control.status(), let n = s.upstreams.first(where: { $0.name == "new" }) else { return false }
            return n.cursor == s.head
        }
        #expect(drained)
        for (k, v) in want {
            #expect(try later.getObject(k) == v, "\(k) mirrored")
        }
        #expect(try later.headObject("video/clip.mp4")?.headers["content-type"] == "video/mp4")
    }
}
