public import Foundation
import FerryDigest

/// Credentials for signing; `description` never shows the secret.
public struct S3Credentials: Sendable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public init(accessKeyID: String, secretAccessKey: String) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
    }
    public var description: String { "S3Credentials(\(accessKeyID), secret redacted)" }
}

/// AWS Signature Version 4 for S3, header-based: canonical request, string to sign, the derived key, and the
/// Authorization header. Payloads are always hashed (`x-amz-content-sha256` carries the real SHA-256): R2 rejects
/// the streaming `aws-chunked` form.
public struct SigV4: Sendable {
    public var credentials: S3Credentials
    public var region: String
    public var service: String = "s3"

    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    public init(credentials: S3Credentials, region: String) {
        self.credentials = credentials
        self.region = region
    }

    /// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, everything else %XX (uppercase), a
    /// space as %20 and `+` as %2B; `/` kept in paths when `slash` is false.
    private static let hexDigits = Array("0123456789ABCDEF")

    public static func encode(_ s: String, encodeSlash: Bool = true) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(b))
            case UInt8(ascii: "/") where !encodeSlash:
                out.append("/")
            default:
                out.append("%")
                out.append(hexDigits[Int(b >> 4)])
                out.append(hexDigits[Int(b & 0xF)])
            }
        }
        return out
    }

    /// The canonical query string: each name and value encoded, sorted by name then value.
    public static func canonicalQuery(_ query: [(String, String)]) -> String {
        query.map { (encode($0.0), encode($0.1)) }
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }

    public struct Signed: Sendable {
        public var authorization: String
        public var signedHeaders: String
        public var canonicalRequest: String
        public var stringToSign: String
        public var signature: String
    }

    /// Signs a request. `path` is the raw (decoded) object path such as `/bucket/my key+1.jpg`; `headers` must
    /// include `host` and `x-amz-date` (`yyyyMMdd'T'HHmmss'Z'`) and `x-amz-content-sha256`.
    public func sign(method: String, path: String, query: [(String, String)], headers: [(String, String)], payloadHash: String)
        -> Signed
    {
        let canonicalHeaders = headers.map { ($0.0.lowercased(), Self.trimAll($0.1)) }.sorted { $0.0 < $1.0 }
        let signedHeaders = canonicalHeaders.map(\.0).joined(separator: ";")
        let canonicalRequest = [
            method,
            Self.encode(path, encodeSlash: false),
            Self.canonicalQuery(query),
            canonicalHeaders.map { "\($0.0):\($0.1)\n" }.joined(),
            signedHeaders,
            payloadHash,
        ].joined(separator: "\n")
        let amzDate = canonicalHeaders.first { $0.0 == "x-amz-date" }?.1 ?? ""
        let day = String(amzDate.prefix(8))
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = [
            "AWS4-HMAC-SHA256", amzDate, scope,
            SHA256Hasher.digest(Array(canonicalRequest.utf8)).hex,
        ].joined(separator: "\n")
        var key = HMACSHA256.mac(key: Array("AWS4\(credentials.secretAccessKey)".utf8), data: Array(day.utf8))
        for part in [region, service, "aws4_request"] { key = HMACSHA256.mac(key: key, data: Array(part.utf8)) }
        let signature = Digest256.hex(HMACSHA256.mac(key: key, data: Array(stringToSign.utf8)))
        let auth = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return Signed(
            authorization: auth, signedHeaders: signedHeaders, canonicalRequest: canonicalRequest,
            stringToSign: stringToSign, signature: signature)
    }

    /// Header values: leading/trailing spaces removed, inner runs of spaces folded to one.
    static func trimAll(_ v: String) -> String {
        v.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }

    /// `20130524T000000Z` for a date.
    public static func amzDate(_ date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f.string(from: date)
    }
}
