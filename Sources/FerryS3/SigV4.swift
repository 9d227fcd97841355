import FerryDigest
public import Foundation

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
    public func sign(
        method: String, path: String, query: [(String, String)], headers: [(String, String)], payloadHash: String
    )
        -> Signed
    {
        sign(
            method: method, canonicalURI: Self.encode(path, encodeSlash: false), canonicalQuery: Self.canonicalQuery(query),
            headers: headers, payloadHash: payloadHash)
    }

    /// Signs with the canonical URI and query given as they are (a server checking a request uses the path as
    /// it arrived, already encoded once by the client).
    public func sign(
        method: String, canonicalURI: String, canonicalQuery: String, headers: [(String, String)], payloadHash: String
    )
        -> Signed
    {
        // Repeated headers are one canonical header, their values joined by commas.
        var merged: [String: [String]] = [:]
        for (k, v) in headers { merged[k.lowercased(), default: []].append(Self.trimAll(v)) }
        let canonicalHeaders = merged.map { ($0.key, $0.value.joined(separator: ",")) }.sorted { $0.0 < $1.0 }
        let signedHeaders = canonicalHeaders.map(\.0).joined(separator: ";")
        let canonicalRequest = [
            method,
            canonicalURI,
            canonicalQuery,
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

    /// `20130524T000000Z` for a date. Formatted by hand from `gmtime_r`: a DateFormatter per request cost more
    /// CPU (ICU) than hashing the payload.
    public static func amzDate(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tm.tm_year + 1900)\(two(tm.tm_mon + 1))\(two(tm.tm_mday))T\(two(tm.tm_hour))\(two(tm.tm_min))\(two(tm.tm_sec))Z"
    }

    /// The instant of an `x-amz-date` value, or nil when it is not `yyyyMMdd'T'HHmmss'Z'`.
    public static func parseAmzDate(_ s: String) -> Date? {
        let b = Array(s.utf8)
        guard b.count == 16, b[8] == UInt8(ascii: "T"), b[15] == UInt8(ascii: "Z") else { return nil }
        func num(_ r: Range<Int>) -> Int32? {
            var v: Int32 = 0
            for i in r {
                guard b[i] >= 0x30 && b[i] <= 0x39 else { return nil }
                v = v * 10 + Int32(b[i] - 0x30)
            }
            return v
        }
        guard let y = num(0..<4), let mo = num(4..<6), let d = num(6..<8), let h = num(9..<11), let mi = num(11..<13),
            let se = num(13..<15), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, se < 61
        else { return nil }
        var tm = tm()
        tm.tm_year = y - 1900
        tm.tm_mon = mo - 1
        tm.tm_mday = d
        tm.tm_hour = h
        tm.tm_min = mi
        tm.tm_sec = se
        return Date(timeIntervalSince1970: Double(timegm(&tm)))
    }
}

/// Checks requests signed with SigV4 (header form) against a set of known credentials: what a proxy in front of a
/// bucket needs so that it is never an open relay. The canonical URI is the path exactly as received (clients
/// encode it once); the query is decoded and re-encoded canonically; the payload hash in
/// `x-amz-content-sha256` must be signed and must match the body (unless the client declared
/// `UNSIGNED-PAYLOAD`). Messages never contain a secret.
public struct SigV4Verifier: Sendable {
    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        case missingAuthorization
        case malformed(String)
        case unknownAccessKey(String)
        case requestTimeTooSkewed
        case signatureMismatch
        case payloadHashMismatch
        case unsupported(String)

        /// The S3 error code a server answers with.
        public var code: String {
            switch self {
            case .missingAuthorization, .malformed: "AccessDenied"
            case .unknownAccessKey: "InvalidAccessKeyId"
            case .requestTimeTooSkewed: "RequestTimeTooSkewed"
            case .signatureMismatch: "SignatureDoesNotMatch"
            case .payloadHashMismatch: "XAmzContentSHA256Mismatch"
            case .unsupported: "NotImplemented"
            }
        }

        public var description: String {
            switch self {
            case .missingAuthorization: "the request is not signed"
            case .malformed(let why): "malformed authorization: \(why)"
            case .unknownAccessKey(let id): "unknown access key \(id)"
            case .requestTimeTooSkewed: "x-amz-date is more than 15 minutes from the tap's clock"
            case .signatureMismatch: "the signature does not match"
            case .payloadHashMismatch: "the body does not match x-amz-content-sha256"
            case .unsupported(let what): "\(what) is not supported"
            }
        }
    }

    public let credentials: [String: S3Credentials]
    public var maxSkew: Double = 900

    public init(credentials: [S3Credentials]) {
        self.credentials = Dictionary(credentials.map { ($0.accessKeyID, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Percent-decoding of one query component (`+` stays `+`: in S3 query strings a space is `%20`).
    static func decode(_ s: Substring) -> String {
        String(s).removingPercentEncoding ?? String(s)
    }

    /// The canonical query of a raw query string as it arrived.
    public static func canonicalQuery(raw: String?) -> String {
        guard let raw, !raw.isEmpty else { return "" }
        let pairs = raw.split(separator: "&", omittingEmptySubsequences: true).map { part -> (String, String) in
            if let eq = part.firstIndex(of: "=") {
                return (decode(part[..<eq]), decode(part[part.index(after: eq)...]))
            }
            return (decode(part), "")
        }
        return SigV4.canonicalQuery(pairs)
    }

    /// Verifies one request; returns the access key ID it was signed with.
    /// - rawPath: the path as on the request line (percent-encoded), without the query.
    /// - bodySHA256: the hex SHA-256 of the body as received.
    public func verify(
        method: String, rawPath: String, rawQuery: String?, headers: [(String, String)], bodySHA256: String,
        now: Date = Date()
    ) throws(Failure) -> String {
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
        if rawQuery?.contains("X-Amz-Signature=") == true { throw .unsupported("a presigned URL") }
        guard let auth = header("authorization") else { throw .missingAuthorization }
        let prefix = "AWS4-HMAC-SHA256 "
        guard auth.hasPrefix(prefix) else { throw .malformed("not AWS4-HMAC-SHA256") }
        var fields: [String: String] = [:]
        for part in auth.dropFirst(prefix.count).split(separator: ",") {
            let kv = part.trimmingCharacters(in: .whitespaces)
            guard let eq = kv.firstIndex(of: "=") else { throw .malformed("field without '='") }
            fields[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
        }
        guard let credential = fields["Credential"], let signedList = fields["SignedHeaders"], let signature = fields["Signature"]
        else { throw .malformed("Credential, SignedHeaders and Signature are required") }
        let scope = credential.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard scope.count == 5, scope[3] == "s3", scope[4] == "aws4_request" else { throw .malformed("credential scope") }
        guard let creds = credentials[scope[0]] else { throw .unknownAccessKey(scope[0]) }
        guard let amzDate = header("x-amz-date") else { throw .malformed("x-amz-date missing") }
        guard amzDate.hasPrefix(scope[1]) else { throw .malformed("x-amz-date and the credential scope disagree") }
        guard let when = SigV4.parseAmzDate(amzDate) else { throw .malformed("x-amz-date") }
        guard abs(when.timeIntervalSince(now)) <= maxSkew else { throw .requestTimeTooSkewed }
        let signedNames = signedList.split(separator: ";").map { String($0) }
        guard signedNames.contains("host") else { throw .malformed("host must be signed") }
        guard let declared = header("x-amz-content-sha256"), signedNames.contains("x-amz-content-sha256") else {
            throw .malformed("x-amz-content-sha256 must be sent and signed")
        }
        if declared.hasPrefix("STREAMING-") { throw .unsupported("aws-chunked streaming upload (\(declared))") }
        if declared != "UNSIGNED-PAYLOAD" && declared.lowercased() != bodySHA256 { throw .payloadHashMismatch }
        var signedHeaders: [(String, String)] = []
        for name in signedNames {
            let values = headers.filter { $0.0.lowercased() == name }
            guard !values.isEmpty else { throw .malformed("signed header \(name) missing") }
            signedHeaders += values.map { (name, $0.1) }
        }
        let signer = SigV4(credentials: creds, region: scope[2])
        let expected = signer.sign(
            method: method, canonicalURI: rawPath, canonicalQuery: Self.canonicalQuery(raw: rawQuery), headers: signedHeaders,
            payloadHash: declared)
        // Constant-time comparison: a timing side channel must not reveal the signature byte by byte.
        let a = Array(expected.signature.utf8), b = Array(signature.utf8)
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<min(a.count, b.count) { diff |= a[i] ^ b[i] }
        guard diff == 0 else { throw .signatureMismatch }
        return scope[0]
    }
}
