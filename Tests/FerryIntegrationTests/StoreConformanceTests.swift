import FerryCore
import FerryGraphite
import FerryLocal
import FerryRemote
import FerryS3
import FerryTesting
import Foundation
import Logging
import Testing

/// One body, every store kind: `StoreConformance.run` against each (the in-memory store first, as the
/// reference).
@Suite struct StoreConformanceTests {
    @Test func memory() {
        let failures = StoreConformance.run(MemoryStore(name: "conformance"), .bytes("memory conformance"))
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func local() {
        let dir = TempDir("conf-local")
        let failures = StoreConformance.run(LocalStore(root: dir.sub("root")), .bytes("local conformance"))
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func s3() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed, name: "conformance")
        let store = S3Store(
            endpoint: weed.endpoint, region: "us-east-1", bucket: "conformance", prefix: "p/",
            credentials: S3Credentials(accessKeyID: weed.accessKey, secretAccessKey: weed.secretKey), partSize: 5 << 20)
        var options = StoreConformance.Options.bytes("s3 conformance")
        options.holdsDirectories = false
        options.holdsSymlinks = false
        options.keepsMtime = false  // a bucket's entries carry no mtime (the change token is the ETag)
        let failures = StoreConformance.run(store, options)
        #expect(failures.isEmpty, "\(failures)")
    }

    /// Whisper objects are Whisper files: the content is one made by the reference `whisper` package.
    static func whisperOptions(_ dir: TempDir) -> StoreConformance.Options {
        var options = StoreConformance.Options { seed, _ in
            let file = dir.sub("fixture-\(seed).wsp")
            _ = try pythonOutput(
                """
                import whisper, random
                random.seed(\(seed))
                whisper.create("\(file)", [(60, 1440), (600, 1000)])
                import time; now = int(time.time())
                whisper.update_many("\(file)", [(now - 60 * i, random.random() * 100) for i in range(1, 200)])
                """)
            return [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        }
        options.name = { $0 + ".wsp" }
        options.publishReplaces = false  // merged into the live file, never clobbered
        return options
    }

    @Test func whisper() throws {
        let dir = TempDir("conf-whisper")
        let failures = StoreConformance.run(WhisperTreeStore(root: dir.sub("root")), Self.whisperOptions(dir))
        #expect(failures.isEmpty, "\(failures)")
    }

    /// A Whisper tree on another host: the same body, each operation one request to `ferry serve`.
    @Test func remoteWhisper() throws {
        let rig = try RemoteRig()
        defer { rig.stop() }
        let store = RemoteStore.make(endpoint: rig.endpoint, kind: "whisper", path: "whisper", role: .destination, compressionLevel: 3)
        #expect(store is any Merging && store is any PointComparing && store is any FenceChecking)
        let failures = StoreConformance.run(store, Self.whisperOptions(rig.dir))
        #expect(failures.isEmpty, "\(failures)")
    }

    /// A remote store through a real `ferry serve` server (in process, on loopback) over a local tree.
    @Test func remoteTree() throws {
        let rig = try RemoteRig()
        defer { rig.stop() }
        let store = RemoteStore.make(endpoint: rig.endpoint, kind: "fs", path: "tree", role: .destination, compressionLevel: 3)
        let failures = StoreConformance.run(store, .bytes("remote conformance"))
        #expect(failures.isEmpty, "\(failures)")
        #expect(store.wireTotals.sent > 0 && store.wireTotals.logical > 0)
    }
}

/// `ferry serve`'s server in this process on 127.0.0.1:0, over a temporary root, serving local trees.
final class RemoteRig {
    let dir = TempDir("remote-rig")
    let server: RemoteServer
    let port: Int
    let token = RemoteToken.random()
    var endpoint: RemoteEndpoint { RemoteEndpoint(baseURL: "http://127.0.0.1:\(port)", token: token) }
    var root: String { dir.sub("root") }

    init(configure: (inout RemoteServerConfig) -> Void = { _ in }) throws {
        try FileManager.default.createDirectory(atPath: dir.sub("root"), withIntermediateDirectories: true)
        var config = RemoteServerConfig(root: dir.sub("root"), token: token)
        configure(&config)
        server = try RemoteServer(
            config: config,
            opener: { kind, directory, _ in
                switch kind {
                case "fs": return LocalStore(root: directory)
                case "whisper": return WhisperTreeStore(root: directory)
                default: throw FerryError(.invalidPlan, "not served here: \(kind)")
                }
            }, logger: Logger(label: "remote-rig"))
        port = try server.start(host: "127.0.0.1", port: 0)
    }

    func stop() { server.stop() }
}
