import FerryCore
import FerryDigest
import FerryTesting
import Foundation
import Testing

@testable import FerryS3

/// The S3 client against a real SeaweedFS on loopback (one server for the suite).
@Suite(.serialized) final class S3ClientTests {
    let weed: SeaweedFS
    let client: S3Client

    init() throws {
        weed = try SeaweedFS()
        client = S3Client(
            endpoint: weed.endpoint, region: "us-east-1", bucket: "ferry-test",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey))
        client.maxAttempts = 8  // the server may still be joining its filer ring right after the port opens
        try client.createBucket()
    }

    @Test func hostileKeysRoundTripWithMetadataAndRanges() throws {
        let nfc = "unicode/caf\u{E9}.txt"
        let nfd = "unicode/cafe\u{301}.txt"
        // ~1,000 bytes; SeaweedFS limits each path segment to 255 bytes (AWS and R2 do not), so several segments.
        let long = "long/" + (0..<4).map { String(repeating: Character(String($0)), count: 240) }.joined(separator: "/")
        let keys = ["photos/a b+c%d&e=f.jpg", "media/日本語/ファイル.png", nfc, nfd, long, "empty/zero.bin", "tilde~star*(1).txt"]
        var sizes: [[UInt8]: Int64] = [:]
        for (i, key) in keys.enumerated() {
            let body = key.hasPrefix("empty") ? [] : TreeGen.bytes(count: 1000 + i * 37, seed: UInt64(i))
            sizes[Array(key.utf8)] = Int64(body.count)
            let etag = try client.putObject(
                key, body,
                headers: [
                    ("Content-Type", "image/png"), ("Cache-Control", "max-age=31536000"),
                    ("x-amz-meta-mtime", "1700000000.123456789"),
                    ("x-amz-meta-ferry-sha256", SHA256Hasher.digest(body).hex),
                ])
            #expect(!etag.isEmpty, "\(key)")
            #expect(try client.getObject(key) == body, "\(key)")
            let head = try #require(try client.headObject(key))
            #expect(head.size == Int64(body.count))
            #expect(head.headers["content-type"] == "image/png")
            #expect(head.headers["cache-control"] == "max-age=31536000")
            #expect(head.headers["x-amz-meta-mtime"] == "1700000000.123456789")
            if body.count > 100 {
                #expect(try client.getObject(key, range: 10...99) == Array(body[10...99]), "\(key) range")
            }
        }
        // Swift's String == treats NFC and NFD as equal: compare keys as bytes, as S3 does.
        var listed: [[UInt8]: Int64] = [:]
        try client.list(pageSize: 2) { listed[Array($0.key.utf8)] = $0.size }
        #expect(Set(listed.keys) == Set(keys.map { Array($0.utf8) }), "paged listing with encoding-type=url returns every key")
        #expect(listed[Array("empty/zero.bin".utf8)] == 0)
        #expect(listed == sizes, "every listed size belongs to its own key (SeaweedFS sends Size after ETag)")
        #expect(listed.count == keys.count, "the NFC and the NFD key are two objects here")
        try client.deleteObject(keys[0])
        #expect(try client.headObject(keys[0]) == nil)
        #expect(try client.getObject(keys[0]) == nil)
    }

    @Test func virtualHostedAddressingReachesTheSameBucket() throws {
        // {bucket}.localhost: curl resolves it to loopback, and the server is told its domain is localhost.
        let endpoint = "http://localhost:\(weed.s3Port)"
        #expect(S3Client.virtualHostable(bucket: "ferry-test", endpoint: endpoint) == nil)
        #expect(S3Client.virtualHostable(bucket: "Ferry_Test", endpoint: endpoint) != nil)
        #expect(S3Client.virtualHostable(bucket: "ferry-test", endpoint: weed.endpoint) != nil, "an IP endpoint")
        let vhost = S3Client(
            endpoint: endpoint, region: "us-east-1", bucket: "ferry-test",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey), addressing: .virtual)
        #expect(vhost.host == "ferry-test.localhost:\(weed.s3Port)")
        let body = TreeGen.bytes(count: 4000, seed: 7)
        _ = try vhost.putObject("vhost/a b+c.bin", body)
        #expect(try client.getObject("vhost/a b+c.bin") == body, "path-style sees what virtual-hosted wrote")
        #expect(try vhost.getObject("vhost/a b+c.bin", range: 5...9) == Array(body[5...9]))
        var keys: [String] = []
        try vhost.list(prefix: "vhost/") { keys.append($0.key) }
        #expect(keys == ["vhost/a b+c.bin"])
        try vhost.deleteObject("vhost/a b+c.bin")
        #expect(try client.headObject("vhost/a b+c.bin") == nil)
    }

    @Test func largerObjectKeepsItsBytes() throws {
        let body = TreeGen.bytes(count: 6 << 20, seed: 42)
        try client.putObject("big/video.mp4", body)
        let back = try #require(try client.getObject("big/video.mp4"))
        #expect(SHA256Hasher.digest(back) == SHA256Hasher.digest(body))
    }

    @Test func wrongCredentialsAreAClearErrorWithoutTheSecret() throws {
        let bad = S3Client(
            endpoint: weed.endpoint, region: "us-east-1", bucket: "ferry-test",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: "wrong-secret-value"))
        do {
            _ = try bad.getObject("anything")
            Issue.record("a wrongly signed request succeeded")
        } catch let e as S3Error {
            #expect(e.status == 403)
            #expect(e.description.contains("credentials"))
            #expect(!e.description.contains("wrong-secret-value"))
            #expect(!e.description.contains(weed.secretKey))
        }
    }

    @Test func aDeadServerFailsFastWithAClearError() throws {
        let other = try SeaweedFS()
        let c = S3Client(
            endpoint: other.endpoint, region: "us-east-1", bucket: "gone",
            credentials: S3Credentials(accessKeyID: other.accessKey, secretAccessKey: other.secretKey))
        other.stop()
        c.maxAttempts = 3
        c.baseDelay = 0.05
        let start = Date()
        do {
            _ = try c.getObject("x")
            Issue.record("a request to a stopped server succeeded")
        } catch let e as FerryError {
            #expect(e.description.contains("failed 3 times"))
            #expect(!e.description.contains(other.secretKey))
        }
        #expect(Date().timeIntervalSince(start) < 15)
    }
}

extension S3ClientTests {
    @Test func multipartUploadResumesFromListedParts() throws {
        let part = 5 << 20
        let body = TreeGen.bytes(count: 3 * part + 12345, seed: 9)
        let key = "video/large clip+1.mp4"
        let id = try client.createMultipartUpload(key, headers: [("Content-Type", "video/mp4")])
        _ = try client.uploadPart(key, uploadID: id, number: 1, Array(body[0..<part]))
        _ = try client.uploadPart(key, uploadID: id, number: 2, Array(body[part..<2 * part]))
        // "Crash": a new client finds the upload and its parts, and sends only what is missing.
        let resumed = S3Client(
            endpoint: weed.endpoint, region: "us-east-1", bucket: "ferry-test",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey))
        let uploads = try resumed.listMultipartUploads(prefix: "video/")
        #expect(uploads.contains { $0.key == key && $0.uploadID == id })
        var parts = try resumed.listParts(key, uploadID: id).map { (number: $0.number, etag: $0.etag) }
        #expect(parts.map(\.number) == [1, 2])
        let md5ish = parts.map(\.etag).allSatisfy { !$0.isEmpty }
        #expect(md5ish)
        parts.append((3, try resumed.uploadPart(key, uploadID: id, number: 3, Array(body[2 * part..<3 * part]))))
        parts.append((4, try resumed.uploadPart(key, uploadID: id, number: 4, Array(body[(3 * part)...]))))
        try resumed.completeMultipartUpload(key, uploadID: id, parts: parts)
        #expect(try resumed.getObject(key) == body)
        #expect(try resumed.headObject(key)?.headers["content-type"] == "video/mp4")
        // An abandoned upload can be aborted.
        let other = try resumed.createMultipartUpload("video/abandoned.mp4")
        try resumed.abortMultipartUpload("video/abandoned.mp4", uploadID: other)
        #expect(try !resumed.listMultipartUploads(prefix: "video/abandoned").contains { $0.uploadID == other })
    }
}

/// A listing cut short by the server must never pass as a whole one.
@Suite struct S3ListingTests {
    @Test func aTruncatedListingWithoutAContinuationTokenIsAnError() throws {
        // A stand-in S3 endpoint (Python's http.server, bound to port 0) whose ListObjectsV2 says IsTruncated
        // and gives no NextContinuationToken.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "python3", "-c",
            """
            import http.server, sys
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>'
                            b'<Contents><Key>one</Key><Size>1</Size><ETag>"x"</ETag></Contents>'
                            b'<IsTruncated>true</IsTruncated></ListBucketResult>')
                    self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *a): pass
            s = http.server.HTTPServer(("127.0.0.1", 0), H)
            print(s.server_address[1], flush=True)
            s.handle_request()
            """,
        ]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice  // never the test runner's own pipes
        p.standardInput = FileHandle.nullDevice
        try p.run()
        defer {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let port = try #require(Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
        let client = S3Client(
            endpoint: "http://127.0.0.1:\(port)", region: "us-east-1", bucket: "b",
            credentials: S3Credentials(accessKeyID: "k", secretAccessKey: "s"))
        client.maxAttempts = 1
        var listed: [String] = []
        #expect(throws: S3Error.self) { try client.list { listed.append($0.key) } }
        #expect(listed == ["one"], "what was listed before the cut is delivered, then the error")
    }
}
