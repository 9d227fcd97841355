import FerryDigest
import Foundation
import Testing

@testable import FerryS3

/// The server side of SigV4: the AWS documentation's signed requests verify, our own signer's requests for
/// hostile keys verify, and every kind of tampering is refused with the right S3 error code.
@Suite struct SigV4VerifierTests {
    static let aws = S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    let verifier = SigV4Verifier(credentials: [Self.aws])
    let vectorTime = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z
    let host = ("host", "examplebucket.s3.amazonaws.com")
    let date = ("x-amz-date", "20130524T000000Z")

    func auth(_ signed: String, _ signature: String) -> (String, String) {
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=\(signed),Signature=\(signature)"
        )
    }

    @Test func theDocumentedRequestsVerify() throws {
        let get = [
            host, ("Range", "bytes=0-9"), ("x-amz-content-sha256", SigV4.emptyPayloadHash), date,
            auth("host;range;x-amz-content-sha256;x-amz-date", "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        ]
        #expect(
            try verifier.verify(method: "GET", rawPath: "/test.txt", rawQuery: nil, headers: get, bodySHA256: SigV4.emptyPayloadHash, now: vectorTime)
                == "AKIAIOSFODNN7EXAMPLE")
        let body = SHA256Hasher.digest(Array("Welcome to Amazon S3.".utf8)).hex
        let put = [
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"), host, ("x-amz-content-sha256", body), date,
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            auth("date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class", "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
        ]
        _ = try verifier.verify(method: "PUT", rawPath: "/test%24file.text", rawQuery: nil, headers: put, bodySHA256: body, now: vectorTime)
        let list = [
            host, ("x-amz-content-sha256", SigV4.emptyPayloadHash), date,
            auth("host;x-amz-content-sha256;x-amz-date", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
        ]
        _ = try verifier.verify(
            method: "GET", rawPath: "/", rawQuery: "max-keys=2&prefix=J", headers: list, bodySHA256: SigV4.emptyPayloadHash, now: vectorTime)
    }

    /// A request as S3Client sends it: the path encoded once, the query in canonical form.
    func request(
        key: String, query: [(String, String)] = [], body: [UInt8] = [], secret: String = aws.secretAccessKey, at: Date = Date()
    )
        -> (path: String, query: String, headers: [(String, String)], body: String)
    {
        let hash = SHA256Hasher.digest(body).hex
        var headers = [("host", "127.0.0.1:9000"), ("x-amz-date", SigV4.amzDate(at)), ("x-amz-content-sha256", hash), ("content-type", "image/png")]
        let signer = SigV4(credentials: S3Credentials(accessKeyID: Self.aws.accessKeyID, secretAccessKey: secret), region: "auto")
        let path = "/media/" + key
        headers.append(("Authorization", signer.sign(method: "PUT", path: path, query: query, headers: headers, payloadHash: hash).authorization))
        return (SigV4.encode(path, encodeSlash: false), SigV4.canonicalQuery(query), headers, hash)
    }

    @Test func botocoreSignedRequestsForHostileKeysVerify() throws {
        // Signed by botocore (an independent signer), sent as its prepared request would go on the wire.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "python3", "-c",
            """
            import hashlib, json, urllib.parse
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
            out = []
            for key in ["photos/a b+c%d&e=f.jpg", "media/日本語/ファイル.png", "unicode/cafe\\u0301.txt", "tilde~star*(1).txt",
                        "semi;colon,comma=eq@at$dollar'quote!", "plus+space here/+/x"]:
                url = ("http://127.0.0.1:9000/media/" + urllib.parse.quote(key, safe="/~")
                       + "?partNumber=3&uploadId=" + urllib.parse.quote("a/b+c= d", safe=""))
                req = AWSRequest(method="PUT", url=url, data=key.encode(), headers={"content-type": "image/png"})
                S3SigV4Auth(Credentials("\(Self.aws.accessKeyID)", "\(Self.aws.secretAccessKey)"), "s3", "auto").add_auth(req)
                prepared = req.prepare()
                u = urllib.parse.urlsplit(prepared.url)
                headers = [["host", u.netloc]] + [[k, v] for k, v in prepared.headers.items()]
                out.append({"key": key, "path": u.path, "query": u.query, "headers": headers,
                            "body": hashlib.sha256(key.encode()).hexdigest()})
            print(json.dumps(out))
            """,
        ]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "botocore is installed")
        let requests = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(requests.count == 6)
        for r in requests {
            let headers = (r["headers"] as? [[String]] ?? []).map { ($0[0], $0[1]) }
            let path = r["path"] as? String ?? "", query = r["query"] as? String ?? "", body = r["body"] as? String ?? ""
            #expect(throws: Never.self, "\(r["key"] ?? "")") {
                _ = try verifier.verify(method: "PUT", rawPath: path, rawQuery: query, headers: headers, bodySHA256: body)
            }
            // The same request with its body swapped is refused: the check above can fail.
            #expect(throws: (any Error).self) {
                _ = try verifier.verify(method: "PUT", rawPath: path + "x", rawQuery: query, headers: headers, bodySHA256: body)
            }
        }
    }

    /// nil when the request verifies, else why not.
    func failure(
        _ v: SigV4Verifier, _ method: String, _ path: String, _ query: String?, _ headers: [(String, String)], _ body: String
    ) -> SigV4Verifier.Failure? {
        do {
            _ = try v.verify(method: method, rawPath: path, rawQuery: query, headers: headers, bodySHA256: body)
            return nil
        } catch {
            return error
        }
    }

    @Test func tamperingIsRefusedWithTheRightCode() {
        let r = request(key: "a.png", body: [1, 2, 3])
        let v = verifier
        #expect(failure(v, "PUT", r.path, nil, r.headers, r.body) == nil)
        let wrongSecret = request(key: "a.png", body: [1, 2, 3], secret: "not-the-secret")
        #expect(failure(v, "PUT", wrongSecret.path, nil, wrongSecret.headers, wrongSecret.body) == .signatureMismatch)
        #expect(failure(v, "PUT", "/media/b.png", nil, r.headers, r.body) == .signatureMismatch)
        #expect(failure(v, "DELETE", r.path, nil, r.headers, r.body) == .signatureMismatch)
        #expect(failure(v, "PUT", r.path, "acl=", r.headers, r.body) == .signatureMismatch)
        let changedType = r.headers.map { $0.0 == "content-type" ? ($0.0, "text/html") : $0 }
        #expect(failure(v, "PUT", r.path, nil, changedType, r.body) == .signatureMismatch)
        let otherBody = SHA256Hasher.digest([9]).hex
        #expect(failure(v, "PUT", r.path, nil, r.headers, otherBody) == .payloadHashMismatch)
        let old = request(key: "a.png", at: Date().addingTimeInterval(-3600))
        #expect(failure(v, "PUT", old.path, nil, old.headers, old.body) == .requestTimeTooSkewed)
        let unsigned = r.headers.filter { $0.0 != "Authorization" }
        #expect(failure(v, "PUT", r.path, nil, unsigned, r.body) == .missingAuthorization)
        let stranger = SigV4Verifier(credentials: [S3Credentials(accessKeyID: "SOMEONE", secretAccessKey: "x")])
        #expect(failure(stranger, "PUT", r.path, nil, r.headers, r.body) == .unknownAccessKey("AKIAIOSFODNN7EXAMPLE"))
        let streaming = r.headers.map { $0.0 == "x-amz-content-sha256" ? ($0.0, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD") : $0 }
        #expect(failure(v, "PUT", r.path, nil, streaming, r.body)?.code == "NotImplemented")
        #expect(failure(v, "GET", r.path, "X-Amz-Signature=abc", [], r.body)?.code == "NotImplemented")
        for f in [SigV4Verifier.Failure.signatureMismatch, .payloadHashMismatch, .unknownAccessKey("AKIAIOSFODNN7EXAMPLE")] {
            #expect(!"\(f)".contains(Self.aws.secretAccessKey))
        }
    }
}
