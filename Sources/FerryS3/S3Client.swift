import FerryCore
import FerryDigest
public import FerryHTTP
import Foundation

#if canImport(FoundationXML)
import FoundationXML
#endif

/// An S3 error response, or a failure after every retry; never contains a secret.
public struct S3Error: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var code: String
    public var message: String
    public var operation: String
    public var description: String {
        let hint: String
        switch (status, code) {
        case (403, "SignatureDoesNotMatch"), (403, "InvalidAccessKeyId"):
            hint = " (check the credentials the plan names)"
        case (403, _): hint = " (access denied: check the credentials and their permissions)"
        default: hint = ""
        }
        return "\(operation): HTTP \(status) \(code): \(message)\(hint)"
    }
}

/// One listed object.
public struct S3Object: Sendable, Equatable {
    public var key: String
    public var size: Int64
    public var etag: String
}

/// How requests name the bucket: in the path (`endpoint/bucket/key`, what R2, MinIO and SeaweedFS take by
/// default) or in the host name (`bucket.endpoint/key`, AWS's preferred form).
public enum S3Addressing: String, Sendable {
    case path
    case virtual
}

/// A small S3 client over libcurl: path-style or virtual-hosted addressing, SigV4 on every request with the real payload hash,
/// keep-alive (one handle per client), retries of 429/500/503 and transport errors with jittered exponential
/// backoff, and a clear error when every attempt fails. Not thread-safe: one client per worker.
// @unchecked Sendable: a client is used by one thread at a time (S3Store hands them out from a pool).
public final class S3Client: @unchecked Sendable {
    public let endpoint: String  // http(s)://host[:port], no trailing slash
    public let bucket: String
    let signer: SigV4
    let http = HTTPClient()
    public var maxAttempts = 5
    public var baseDelay = 0.1
    var host: String
    /// scheme://host[:port] that requests go to (with the bucket in the host name when virtual-hosted).
    let base: String
    /// What comes before the key in the path: "/bucket" path-style, "" virtual-hosted.
    let bucketPath: String

    public init(
        endpoint: String, region: String, bucket: String, credentials: S3Credentials, addressing: S3Addressing = .path
    ) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.bucket = bucket
        signer = SigV4(credentials: credentials, region: region)
        let url = URL(string: self.endpoint)
        let endpointHost = url.map { u in u.port.map { "\(u.host ?? ""):\($0)" } ?? (u.host ?? "") } ?? ""
        switch addressing {
        case .path:
            host = endpointHost
            base = self.endpoint
            bucketPath = "/" + bucket
        case .virtual:
            host = bucket + "." + endpointHost
            base = (url?.scheme ?? "https") + "://" + host
            bucketPath = ""
        }
    }

    /// Whether `bucket` can be a DNS label under `endpoint` (virtual-hosted addressing).
    public static func virtualHostable(bucket: String, endpoint: String) -> String? {
        guard bucket.count >= 3, bucket.count <= 63,
            bucket.allSatisfy({ ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" }),
            bucket.first != "-", bucket.last != "-"
        else {
            return "bucket '\(bucket)' is not a DNS label (lowercase letters, digits, '-'); use addressing: path"
        }
        if let host = URL(string: endpoint)?.host, host.allSatisfy({ $0.isNumber || $0 == "." || $0 == ":" }) {
            return "endpoint \(endpoint) is an IP address, which cannot carry the bucket as a host name; use addressing: path"
        }
        return nil
    }

    /// Sends one signed request, retrying what is worth retrying.
    func send(
        _ method: String, key: String?, query: [(String, String)] = [], headers extra: [(String, String)] = [],
        body: [UInt8] = [], payloadHash known: String? = nil, operation: String
    ) throws -> HTTPResponse {
        try send(method, key: key, query: query, headers: extra, upload: .bytes(body), payloadHash: known, operation: operation)
    }

    /// `send` with a body that may be a file (`payloadHash` is then required: the file is not read twice).
    func send(
        _ method: String, key: String?, query: [(String, String)] = [], headers extra: [(String, String)] = [],
        upload body: HTTPBody, payloadHash known: String? = nil, operation: String
    ) throws -> HTTPResponse {
        var path = bucketPath + (key.map { "/" + $0 } ?? "")
        if path.isEmpty { path = "/" }
        let payloadHash: String
        switch (known, body) {
        case (let k?, _): payloadHash = k
        case (nil, .bytes(let b)): payloadHash = b.isEmpty ? SigV4.emptyPayloadHash : SHA256Hasher.digest(b).hex
        case (nil, .file): throw FerryError(.other, "\(operation): a file-backed body needs its SHA-256 from the caller")
        }
        var lastError: (any Error)?
        for attempt in 0..<maxAttempts {
            if attempt > 0 {
                let delay = baseDelay * pow(2, Double(attempt - 1)) * Double.random(in: 0.5...1.5)
                Thread.sleep(forTimeInterval: delay)  // backoff before a retry, not synchronisation
            }
            var headers =
                extra + [
                    ("host", host), ("x-amz-date", SigV4.amzDate(Date())), ("x-amz-content-sha256", payloadHash),
                ]
            let signed = signer.sign(method: method, path: path, query: query, headers: headers, payloadHash: payloadHash)
            headers.append(("Authorization", signed.authorization))
            let qs = SigV4.canonicalQuery(query)
            let url = base + SigV4.encode(path, encodeSlash: false) + (qs.isEmpty ? "" : "?" + qs)
            do {
                let r = try http.perform(method: method, url: url, headers: headers.filter { $0.0 != "host" }, upload: body)
                if r.status == 429 || r.status == 500 || r.status == 502 || r.status == 503 || r.status == 504 {
                    lastError = Self.error(r, operation: operation)
                    continue
                }
                return r
            } catch let e as HTTPTransportError {
                lastError = e
            }
        }
        throw FerryError(
            .other, "\(operation) failed \(maxAttempts) times against \(endpoint)", cause: lastError.map { "\($0)" })
    }

    static func error(_ r: HTTPResponse, operation: String) -> S3Error {
        let fields = XMLFields.parse(r.body, wanted: ["Code", "Message"])
        return S3Error(
            status: r.status, code: fields.first { $0.0 == "Code" }?.1 ?? "HTTP\(r.status)",
            message: fields.first { $0.0 == "Message" }?.1 ?? "", operation: operation)
    }

    func check(_ r: HTTPResponse, _ operation: String, ok: Set<Int> = [200]) throws {
        if !ok.contains(r.status) { throw Self.error(r, operation: operation) }
    }

    public func createBucket() throws {
        let r = try send("PUT", key: nil, operation: "CreateBucket \(bucket)")
        if r.status == 409 { return }  // already exists (and is ours)
        try check(r, "CreateBucket \(bucket)")
    }

    /// PUT with metadata (`x-amz-meta-*` and the standard headers); returns the ETag.
    @discardableResult
    /// `payloadHash`: the body's SHA-256 when the caller has it already (it is not computed again).
    public func putObject(_ key: String, _ body: [UInt8], headers: [(String, String)] = [], payloadHash: String? = nil) throws -> String {
        let r = try send("PUT", key: key, headers: headers, body: body, payloadHash: payloadHash, operation: "PutObject \(key)")
        try check(r, "PutObject \(key)")
        return r.headers["etag"] ?? ""
    }

    /// The object's bytes (a range `from...to` when given), or nil when there is no such key.
    public func getObject(_ key: String, range: ClosedRange<Int64>? = nil) throws -> [UInt8]? {
        let h = range.map { [("range", "bytes=\($0.lowerBound)-\($0.upperBound)")] } ?? []
        let r = try send("GET", key: key, headers: h, operation: "GetObject \(key)")
        if r.status == 404 { return nil }
        try check(r, "GetObject \(key)", ok: [200, 206])
        return r.body
    }

    /// Size, ETag and headers of an object, or nil when there is none.
    public func headObject(_ key: String) throws -> (size: Int64, etag: String, headers: [String: String])? {
        let r = try send("HEAD", key: key, operation: "HeadObject \(key)")
        if r.status == 404 { return nil }
        try check(r, "HeadObject \(key)")
        return (Int64(r.headers["content-length"] ?? "") ?? 0, r.headers["etag"] ?? "", r.headers)
    }

    public func deleteObject(_ key: String) throws {
        let r = try send("DELETE", key: key, operation: "DeleteObject \(key)")
        try check(r, "DeleteObject \(key)", ok: [200, 204])
    }

    /// Every object under `prefix`, paging through ListObjectsV2 with `encoding-type=url` (keys decoded here).
    public func list(prefix: String = "", pageSize: Int = 1000, _ body: (S3Object) throws -> Void) throws {
        var token: String? = nil
        repeat {
            var q = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", String(pageSize)), ("prefix", prefix)]
            if let token { q.append(("continuation-token", token)) }
            let r = try send("GET", key: nil, query: q, operation: "ListObjectsV2 \(bucket)")
            try check(r, "ListObjectsV2 \(bucket)")
            let fields = XMLFields.parse(
                r.body, wanted: ["Key", "Size", "ETag", "IsTruncated", "NextContinuationToken"], ends: ["Contents"])
            // One object per <Contents>, whatever order its fields come in (SeaweedFS puts Size after ETag).
            var key: String?
            var size: Int64 = 0
            var etag = ""
            var truncated = false
            token = nil
            for (name, value) in fields {
                switch name {
                // encoding-type=url is form encoding: a space arrives as "+", a literal "+" as %2B.
                case "Key": key = value.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? value
                case "Size": size = Int64(value) ?? 0
                case "ETag": etag = value
                case "Contents":
                    if let k = key { try body(S3Object(key: k, size: size, etag: etag)) }
                    (key, size, etag) = (nil, 0, "")
                case "IsTruncated": truncated = value == "true"
                case "NextContinuationToken": token = value
                default: break
                }
            }
            if !truncated {
                token = nil
            } else if token == nil || token?.isEmpty == true {
                // A partial listing would become a silent partial copy.
                throw S3Error(
                    status: r.status, code: "TruncatedListing",
                    message: "IsTruncated without a NextContinuationToken; the listing is incomplete",
                    operation: "ListObjectsV2 \(bucket)")
            }
        } while token != nil
    }
}

/// Pulls the text of selected elements out of an S3 XML response, in document order.
final class XMLFields: NSObject, XMLParserDelegate {
    let wanted: Set<String>
    /// Elements whose end is reported as (name, ""): the boundary of a record such as `Contents`.
    let ends: Set<String>
    var out: [(String, String)] = []
    var current: String?
    var text = ""

    init(wanted: Set<String>, ends: Set<String>) {
        self.wanted = wanted
        self.ends = ends
    }

    static func parse(_ body: [UInt8], wanted: Set<String>, ends: Set<String> = []) -> [(String, String)] {
        let p = XMLParser(data: Data(body))
        let d = XMLFields(wanted: wanted, ends: ends)
        p.delegate = d
        _ = p.parse()
        return d.out
    }

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:])
    {
        if wanted.contains(name) {
            current = name
            text = ""
        }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if current != nil { text += string }
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == current {
            out.append((name, text))
            current = nil
        }
        if ends.contains(name) { out.append((name, "")) }
    }
}

// MARK: - multipart

extension S3Client {
    /// Starts a multipart upload; returns its upload id.
    public func createMultipartUpload(_ key: String, headers: [(String, String)] = []) throws -> String {
        let r = try send("POST", key: key, query: [("uploads", "")], headers: headers, operation: "CreateMultipartUpload \(key)")
        try check(r, "CreateMultipartUpload \(key)")
        guard let id = XMLFields.parse(r.body, wanted: ["UploadId"]).first?.1 else {
            throw S3Error(status: r.status, code: "NoUploadId", message: "no UploadId in the answer", operation: "CreateMultipartUpload \(key)")
        }
        return id
    }

    /// Uploads part `number` (1-based); returns its ETag.
    public func uploadPart(_ key: String, uploadID: String, number: Int, _ body: [UInt8], payloadHash: String? = nil) throws -> String {
        let r = try send(
            "PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], body: body,
            payloadHash: payloadHash, operation: "UploadPart \(key) #\(number)")
        try check(r, "UploadPart \(key) #\(number)")
        return r.headers["etag"] ?? ""
    }

    /// Sends a request as given (a proxy's forward): retried like any other, the answer returned whatever its
    /// status. `payloadHash`: the body's SHA-256 when the caller has it already.
    public func forward(
        method: String, key: String?, query: [(String, String)], headers: [(String, String)], body: [UInt8], payloadHash: String? = nil
    ) throws -> HTTPResponse {
        try send(method, key: key, query: query, headers: headers, body: body, payloadHash: payloadHash, operation: "\(method) \(key ?? "/")")
    }

    /// `forward` with a body that may be spooled to a file; `payloadHash` is its SHA-256.
    public func forward(
        method: String, key: String?, query: [(String, String)], headers: [(String, String)], upload: HTTPBody, payloadHash: String
    ) throws -> HTTPResponse {
        try send(method, key: key, query: query, headers: headers, upload: upload, payloadHash: payloadHash, operation: "\(method) \(key ?? "/")")
    }

    /// Server-side copy within this bucket (`x-amz-copy-source`); with `headers`, the metadata is replaced by
    /// them. Objects up to 5 GiB.
    public func copyObject(from source: String, to key: String, replacing headers: [(String, String)]? = nil) throws {
        try copyObject(fromBucket: bucket, key: source, to: key, replacing: headers)
    }

    /// Server-side copy from `sourceBucket` on the same endpoint into this bucket.
    public func copyObject(fromBucket sourceBucket: String, key source: String, to key: String, replacing headers: [(String, String)]? = nil) throws {
        var h = [("x-amz-copy-source", SigV4.encode("/" + sourceBucket + "/" + source, encodeSlash: false))]
        if let headers { h += [("x-amz-metadata-directive", "REPLACE")] + headers }
        let r = try send("PUT", key: key, headers: h, operation: "CopyObject \(key)")
        try check(r, "CopyObject \(key)")
        // S3 may answer 200 and still report an error in the body.
        if XMLFields.parse(r.body, wanted: ["Code"]).contains(where: { $0.0 == "Code" }) {
            throw Self.error(r, operation: "CopyObject \(key)")
        }
    }

    public func completeMultipartUpload(_ key: String, uploadID: String, parts: [(number: Int, etag: String)]) throws {
        var xml = "<CompleteMultipartUpload>"
        for p in parts.sorted(by: { $0.number < $1.number }) {
            xml += "<Part><PartNumber>\(p.number)</PartNumber><ETag>\(p.etag)</ETag></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        let r = try send(
            "POST", key: key, query: [("uploadId", uploadID)], headers: [("Content-Type", "application/xml")],
            body: Array(xml.utf8), operation: "CompleteMultipartUpload \(key)")
        try check(r, "CompleteMultipartUpload \(key)")
        // A 200 can still carry an error document.
        if XMLFields.parse(r.body, wanted: ["Code"]).first != nil { throw Self.error(r, operation: "CompleteMultipartUpload \(key)") }
    }

    public func abortMultipartUpload(_ key: String, uploadID: String) throws {
        let r = try send("DELETE", key: key, query: [("uploadId", uploadID)], operation: "AbortMultipartUpload \(key)")
        try check(r, "AbortMultipartUpload \(key)", ok: [200, 204, 404])
    }

    /// Parts already uploaded (number, ETag, size): what a resumed upload need not send again.
    public func listParts(_ key: String, uploadID: String) throws -> [(number: Int, etag: String, size: Int64)] {
        var out: [(Int, String, Int64)] = []
        var marker = "0"
        while true {
            let r = try send(
                "GET", key: key, query: [("uploadId", uploadID), ("part-number-marker", marker)], operation: "ListParts \(key)")
            try check(r, "ListParts \(key)")
            let f = XMLFields.parse(r.body, wanted: ["PartNumber", "ETag", "Size", "IsTruncated", "NextPartNumberMarker"])
            var number = 0
            var etag = ""
            var truncated = false
            for (name, value) in f {
                switch name {
                case "PartNumber": number = Int(value) ?? 0
                case "ETag": etag = value
                case "Size": out.append((number, etag, Int64(value) ?? 0))
                case "IsTruncated": truncated = value == "true"
                case "NextPartNumberMarker": marker = value
                default: break
                }
            }
            if !truncated { return out }
        }
    }

    /// Unfinished uploads for keys under `prefix`: (key, upload id), oldest first.
    public func listMultipartUploads(prefix: String) throws -> [(key: String, uploadID: String)] {
        let r = try send("GET", key: nil, query: [("uploads", ""), ("prefix", prefix)], operation: "ListMultipartUploads")
        try check(r, "ListMultipartUploads")
        var out: [(String, String)] = []
        var key = ""
        for (name, value) in XMLFields.parse(r.body, wanted: ["Key", "UploadId"]) {
            if name == "Key" { key = value } else { out.append((key, value)) }
        }
        return out
    }
}
