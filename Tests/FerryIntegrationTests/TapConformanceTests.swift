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
        let rig = try S3TapTests.TapRig(S3TapTests(), start: false)
        let failures = TapConformance.run(control: rig.control, log: rig.dir.sub("tap.log")) { try rig.launch() }
        #expect(failures.isEmpty, "\(failures)")
    }
}
