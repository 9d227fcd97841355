import FerryCore
import FerryEngine
import FerryLocal
import FerryTesting
import Foundation
import Logging
import Testing

/// The in-memory store is registered exactly like the real kinds: one line in a backend list. The engine runs a
/// whole job on it in-process (snapshot, copy, verify), no built binary and no filesystem tree.
@Suite struct MemoryBackendTests {
    static let backends = StoreKinds([LocalStore.kind, MemoryStore.kind])

    @Test func aJobRunsEndToEndOnTheInMemoryStore() throws {
        let dir = TempDir("memory-job")
        let tag = UUID().uuidString
        let src = MemoryStore.named("src-\(tag)")
        var rng = SeededRandom("memory job")
        var want: [String: [UInt8]] = [:]
        for i in 0..<40 {
            let path = "d\(i % 5)/f\(i).bin"
            let data = (0..<Int.random(in: 0...200_000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            src.put(path, data)
            want[path] = data
        }
        let loader = PlanLoader(storeKinds: Self.backends.schemas, pairs: Self.backends.pairs)
        let plan = try loader.parse(
            """
            version: 1
            name: mem
            source: { kind: memory, name: src-\(tag) }
            destination: { kind: memory, name: dst-\(tag) }
            copy: { chunk_size: 64KiB, concurrency: 3 }
            """, displayPath: "plan.yml", absolutePath: dir.sub("plan.yml"))
        let job = Job(
            plan: plan, source: try Self.backends.make(plan, .source), destination: try Self.backends.make(plan, .destination),
            logger: Logger(label: "test"), progress: ProgressTracker(output: .none))
        guard case .ready(let report) = try job.run(RunOptions()) else {
            Issue.record("the job did not end ready")
            return
        }
        #expect(report.ok, "\(report.problems)")
        let dst = MemoryStore.named("dst-\(tag)")
        for (path, data) in want { #expect(dst.contents(path) == data, "\(path)") }
        // A changed byte (same size and mtime) is found by verify's content check, and named.
        let victim = try #require(want.first { !$0.value.isEmpty }?.key)
        var changed = try #require(dst.contents(victim))
        changed[changed.count / 2] ^= 0xFF
        dst.put(victim, changed)
        let again = try job.verifyOnly()
        #expect(!again.ok, "verify misses a changed byte")
        #expect(again.problems.contains { $0.path == victim }, "\(again.problems)")
    }

    @Test func anUnknownKindAndAMissingNameArePreciseErrors() throws {
        let dir = TempDir("memory-plan")
        let loader = PlanLoader(storeKinds: Self.backends.schemas, pairs: Self.backends.pairs)
        #expect(throws: PlanError.self) {
            _ = try loader.parse(
                "version: 1\nname: m\nsource: { kind: memory }\ndestination: { kind: memory, name: b }\n", displayPath: "p.yml",
                absolutePath: dir.sub("p.yml"))
        }
        #expect(Self.backends.pairs.contains("memory>memory") && Self.backends.pairs.contains("fs>memory"))
        #expect(!Self.backends.pairs.contains("memory>fs"), "fs accepts fs and s3 sources only")
    }
}
