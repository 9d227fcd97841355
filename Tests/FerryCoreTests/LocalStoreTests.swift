import FerryLocal
import FerryTesting
import Foundation
import Testing

@testable import FerryCore

/// The store contract, run against the local store.
@Suite struct LocalStoreTests {
    @Test func walkListsParentsFirstAndNeverFollowsLinks() throws {
        let dir = TempDir()
        try TreeGen.make(at: dir.sub("t"), files: 40)
        let store = LocalStore(root: dir.sub("t"))
        var seen: [Entry] = []
        try store.walk({ seen.append($0) }, skipped: { Issue.record("skipped \($0.path): \($0.reason)") })
        let paths = seen.map(\.path)
        for (i, e) in seen.enumerated() where e.path.contains("/") {
            let parent = PathUtil.directory(of: e.path)
            #expect(paths.firstIndex(of: parent).map { $0 < i } == true, "parent of \(e.path) listed first")
        }
        let outward = try #require(seen.first { $0.path == "link-to-dir-outside" })
        #expect(outward.kind == .symlink)
        #expect(outward.linkTarget == "/etc")
        #expect(!paths.contains { $0.hasPrefix("link-to-dir-outside/") })
        #expect(seen.first { $0.path == "d1/link-outside-relative" }?.linkTarget == "../../../../outside")
        #expect(paths.contains("unicode/café – naïve ☃.txt"))
        #expect(seen.first { $0.path == "empty/dir" }?.kind == .directory)
    }

    @Test func notFoundIsNil() throws {
        let dir = TempDir()
        let store = LocalStore(root: dir.path)
        #expect(try store.stat("missing") == nil)
        #expect(try store.openReader("missing/file") == nil)
    }

    @Test func readsRefuseSymlinkedDirectoryComponents() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("root"), withIntermediateDirectories: true)
        try TreeGen.write(dir.sub("outside/secret"), size: 10, seed: 1)
        symlink(dir.sub("outside"), dir.sub("root/escape"))
        let store = LocalStore(root: dir.sub("root"))
        #expect(throws: FerryError.self) { _ = try store.openReader("escape/secret") }
        #expect(throws: FerryError.self) { _ = try store.openReader("../outside/secret") }
    }

    @Test func writesNeverFollowSymlinksAtTheDestination() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("dst"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.sub("outside"), withIntermediateDirectories: true)
        symlink(dir.sub("outside"), dir.sub("dst/sub"))
        let store = LocalStore(root: dir.sub("dst"))
        let e = Entry(path: "sub/file", kind: .file, size: 3, mtimeNs: 0, mode: 0o644, inode: 0)
        #expect(throws: FerryError.self) { _ = try store.openWriter(for: e, token: "1", resume: false) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.sub("outside")).isEmpty)
    }

    @Test func writerPublishesAtomicallyWithMetadata() throws {
        let dir = TempDir()
        let store = LocalStore(root: dir.path)
        let e = Entry(path: "a/b/c.txt", kind: .file, size: 5, mtimeNs: 1_600_000_000_123_456_789, mode: 0o640, inode: 0)
        let w = try #require(try store.openWriter(for: e, token: "7", resume: false))
        try [UInt8]("hello".utf8).withUnsafeBytes { try w.write($0, at: 0) }
        #expect(try store.stat("a/b/c.txt") == nil, "nothing visible before publish")
        // A resumed writer continues the same partial.
        let again = try store.openWriter(for: e, token: "7", resume: true)
        #expect(again != nil)
        try w.makeDurable()
        try w.publish(e)
        let s = try #require(try store.stat("a/b/c.txt"))
        #expect(s.size == 5)
        #expect(s.mode == 0o640)
        #expect(s.mtimeNs == 1_600_000_000_123_456_789)
        #expect(try store.openWriter(for: e, token: "8", resume: true) == nil, "no partial to resume")
    }
}
