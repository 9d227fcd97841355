import FerryCore
import FerryDigest
import Foundation
import Testing

@testable import FerryS3

/// The signing examples published in Amazon S3's documentation ("Signature Calculations for the Authorization
/// Header"), written here as constants.
@Suite struct SigV4Tests {
    let signer = SigV4(
        credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1")
    let host = ("host", "examplebucket.s3.amazonaws.com")
    let date = ("x-amz-date", "20130524T000000Z")

    @Test func getObjectWithRange() {
        let s = signer.sign(
            method: "GET", path: "/test.txt", query: [],
            headers: [host, ("range", "bytes=0-9"), ("x-amz-content-sha256", SigV4.emptyPayloadHash), date],
            payloadHash: SigV4.emptyPayloadHash)
        #expect(s.stringToSign.hasSuffix("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"))
        #expect(s.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(s.signedHeaders == "host;range;x-amz-content-sha256;x-amz-date")
    }

    @Test func putObjectWithDollarInKeyAndRealPayloadHash() {
        let payload = SHA256Hasher.digest(Array("Welcome to Amazon S3.".utf8)).hex
        #expect(payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let s = signer.sign(
            method: "PUT", path: "/test$file.text", query: [],
            headers: [
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"), host, ("x-amz-content-sha256", payload), date,
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ], payloadHash: payload)
        #expect(s.canonicalRequest.split(separator: "\n")[1] == "/test%24file.text")
        #expect(s.signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    @Test func queryWithoutValueAndSortedQuery() {
        let h = [host, ("x-amz-content-sha256", SigV4.emptyPayloadHash), date]
        #expect(
            signer.sign(method: "GET", path: "/", query: [("lifecycle", "")], headers: h, payloadHash: SigV4.emptyPayloadHash)
                .signature == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
        #expect(
            signer.sign(
                method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")], headers: h,
                payloadHash: SigV4.emptyPayloadHash
            ).signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    @Test func encodingOfHostileKeys() {
        #expect(SigV4.encode("a b+c%d", encodeSlash: false) == "a%20b%2Bc%25d")
        #expect(SigV4.encode("dir/é?#*~", encodeSlash: false) == "dir/%C3%A9%3F%23%2A~")
        #expect(SigV4.encode("a/b") == "a%2Fb")
        #expect(
            SigV4.canonicalQuery([("prefix", "a b"), ("list-type", "2"), ("encoding-type", "url")])
                == "encoding-type=url&list-type=2&prefix=a%20b")
    }

    @Test func amzDatesFormatAndParseWithoutAFormatter() {
        #expect(SigV4.amzDate(Date(timeIntervalSince1970: 1_369_353_600)) == "20130524T000000Z")
        #expect(SigV4.amzDate(Date(timeIntervalSince1970: 1_795_615_199.9)) == "20261125T135959Z")
        #expect(SigV4.parseAmzDate("20130524T000000Z") == Date(timeIntervalSince1970: 1_369_353_600))
        #expect(SigV4.parseAmzDate("20261125T135959Z") == Date(timeIntervalSince1970: 1_795_615_199))
        for bad in ["", "20130524T000000", "2013-05-24T00:00:00Z", "20131324T000000Z", "2013052xT000000Z"] {
            #expect(SigV4.parseAmzDate(bad) == nil, "\(bad)")
        }
    }

    @Test func secretsNeverPrint() {
        #expect(!"\(signer.credentials)".contains("EXAMPLEKEY"))
    }
}

@Suite struct S3RefusalTests {
    @Test func whatABucketCannotHoldIsNamed() throws {
        let store = S3Store(
            endpoint: "http://127.0.0.1:1", region: "auto", bucket: "b", prefix: "p",
            credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "s"), partSize: 5 << 20)
        let check = try #require(store.refusalChecker())
        func file(_ path: String, _ size: Int64 = 1) -> Entry {
            Entry(path: path, kind: .file, size: size, mtimeNs: 0, mode: 0o644, inode: 0)
        }
        #expect(check(file("ok.png")) == nil)
        #expect(check(file("caf\u{E9}.png")) == nil)
        #expect(check(file("cafe\u{301}.png"))?.contains("normalisation") == true)
        #expect(check(file(String(repeating: "x", count: 1024)))?.contains("1,024") == true, "with the prefix it is over")
        // Over 10,000 parts of chunk_size: larger parts, not a refusal; only what S3 cannot hold at all is refused.
        #expect(check(file("huge.bin", 10_001 * (5 << 20))) == nil)
        #expect(check(file("enormous.bin", (5 << 40) + 1))?.contains("5 TiB") == true)
    }

    @Test func partSizeGrowsSoThatNoObjectNeedsMoreThan10000Parts() {
        let store = S3Store(
            endpoint: "http://127.0.0.1:1", region: "auto", bucket: "b", prefix: "",
            credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "s"), partSize: 5 << 20)
        let mib: Int64 = 1 << 20
        #expect(store.chunkSize(forSize: 10_000 * 5 * mib, planned: 5 * mib) == 5 * mib)
        let grown = store.chunkSize(forSize: 10_001 * 5 * mib, planned: 5 * mib)
        #expect(grown == 6 * mib, "whole MiB, just enough")
        for size in [Int64(80) << 30, Int64(1) << 40, (Int64(5) << 40) - 1] {
            let part = store.chunkSize(forSize: size, planned: 16 * mib)
            #expect((size + part - 1) / part <= 10_000, "\(size)")
            #expect(part % mib == 0 && part <= 5 << 30)
        }
    }
}
