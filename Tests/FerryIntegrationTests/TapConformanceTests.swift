import FerryCore
import FerryTap
import FerryTesting
import Foundation
import Testing

/// One lifecycle body, both tap kinds, each in front of its real peers.
@Suite(.serialized) struct TapConformanceTests {
    @Test func carbon() throws {
        let h = try TapHarness()
        defer { h.killTap() }
        let failures = TapConformance.run(control: h.client, log: h.dir.sub("tap.log")) {
            try h.startTap()
            return try #require(h.tap)
        }
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func s3() throws {
        let weed = try SeaweedFS()
        _ = try mediaBucket(weed, name: "media")
        _ = try mediaBucket(weed, name: "media-r2")
        let dir = TempDir("tap-conformance-s3")
        let port = freePorts(1)[0]
        let env = [
            "MEDIA_ACCESS_KEY_ID": weed.accessKey, "MEDIA_SECRET_ACCESS_KEY": weed.secretKey,
            "TAP_ACCESS_KEY_ID": "app", "TAP_SECRET_ACCESS_KEY": "tap-secret",
        ]
        let plan = try writePlan(
            dir.path,
            """
            version: 1
            name: media
            source:      { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media, credentials: "env:MEDIA_" }
            destination: { kind: s3, endpoint: "\(weed.endpoint)", region: us-east-1, bucket: media-r2, credentials: "env:MEDIA_" }
            tap:         { kind: s3, listen: "127.0.0.1:\(port)", credentials: "env:TAP_", bucket: media, control: "\(dir.sub("c.sock"))" }
            """)
        let control = TapClient(socketPath: dir.sub("c.sock"))
        var last: Process?
        let failures = TapConformance.run(control: control, log: dir.sub("tap.log")) {
            let p = try launchDaemon(
                Ferry.binary, ["tap", plan], environment: ProcessInfo.processInfo.environment.merging(env) { $1 }, log: dir.sub("tap.log"),
                timeout: 20, what: "the s3 tap"
            ) { (try? control.status()) != nil }
            last = p
            return p
        }
        if let p = last, p.isRunning { kill(p.processIdentifier, SIGKILL) }
        #expect(failures.isEmpty, "\(failures)")
    }
}
