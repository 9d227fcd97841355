public import FerryCore

/// A bucket as a plan names it, parsed once for the S3 store and the S3 tap's sides alike: endpoint, region,
/// bucket, key prefix (always ending in `/` when set), credentials and addressing style.
public struct S3Settings: Sendable {
    public var endpoint: String
    public var region: String
    public var bucket: String
    public var prefix: String
    public var credentials: S3Credentials
    public var addressing: S3Addressing

    public static let keys: Set<String> = ["endpoint", "region", "bucket", "prefix", "credentials", "addressing"]
    public static let required: Set<String> = ["endpoint", "bucket", "credentials"]

    /// Every problem at once, each message starting with `section.key` so that the CLI can locate it.
    public init(_ o: [String: String], section: String, baseDirectory: String) throws {
        guard let endpoint = o["endpoint"], let bucket = o["bucket"], let creds = o["credentials"] else {
            throw FerryError(.invalidPlan, "\(section): an s3 store needs endpoint, bucket and credentials")
        }
        var problems: [String] = []
        let addressingName = o["addressing"] ?? "path"
        let addressing = S3Addressing(rawValue: addressingName)
        if addressing == nil {
            problems.append("\(section).addressing: expected path or virtual, got '\(addressingName)'")
        } else if addressing == .virtual, let why = S3Client.virtualHostable(bucket: bucket, endpoint: endpoint) {
            problems.append("\(section).addressing: \(why)")
        }
        var resolved: S3Credentials?
        do {
            resolved = try CredentialSource.resolve(creds, baseDirectory: baseDirectory)
        } catch let e as FerryError {
            problems.append("\(section).credentials: \(e.message)")
        }
        guard problems.isEmpty, let addressing, let credentials = resolved else {
            throw FerryError(.invalidPlan, problems.joined(separator: "; "))
        }
        let prefix = o["prefix"] ?? ""
        self.endpoint = endpoint
        region = o["region"] ?? "auto"
        self.bucket = bucket
        self.prefix = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.credentials = credentials
        self.addressing = addressing
    }
}

extension S3Store {
    public convenience init(_ s: S3Settings, partSize: Int64, headers: [(name: String, value: String)] = []) {
        self.init(
            endpoint: s.endpoint, region: s.region, bucket: s.bucket, prefix: s.prefix, credentials: s.credentials, partSize: partSize,
            addressing: s.addressing, headers: headers)
    }

    /// `kind: s3`: a bucket (and key prefix) on an S3-compatible endpoint.
    public static let kind = StoreKind(
        schema: StoreKindSchema(kind: "s3", keys: S3Settings.keys, required: S3Settings.required, pathIsLocal: false),
        sources: ["fs", "s3"]
    ) { ctx in
        var problems: [String] = []
        if ctx.plan.copy.chunkSize < 5 * 1_048_576 {
            problems.append("copy.chunk_size: is the multipart part size for S3: at least 5MiB")
        }
        var settings: S3Settings?
        do {
            settings = try S3Settings(ctx.spec.options, section: ctx.section, baseDirectory: ctx.baseDirectory)
        } catch let e as FerryError {
            problems.append(e.message)
        }
        guard problems.isEmpty, let settings else { throw FerryError(.invalidPlan, problems.joined(separator: "; ")) }
        return S3Store(settings, partSize: ctx.plan.copy.chunkSize, headers: ctx.role == .destination ? ctx.plan.copy.headers : [])
    }
}
