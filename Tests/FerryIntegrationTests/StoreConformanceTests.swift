import FerryCore
import FerryGraphite
import FerryLocal
import FerryS3
import FerryTesting
import Foundation
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
    @Test func whisper() throws {
        let dir = TempDir("conf-whisper")
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
        let failures = StoreConformance.run(WhisperTreeStore(root: dir.sub("root")), options)
        #expect(failures.isEmpty, "\(failures)")
    }
}
