public import FerryCore
import FerryDigest
import Foundation

/// The behaviour every store kind must have, run as one body against each (after rclone's `fstests.Run`):
/// an empty store lists nothing and answers nil for what is not there; an object is invisible until published,
/// then stat, walk and ranged reads agree with what was written; a transfer resumes or restarts after its writer
/// is abandoned; discarded and abandoned partials never show as entries; a publish replaces; remove is
/// idempotent; links and directories where the kind holds them. Returns the failures, each naming its check
/// (empty when the store conforms); `#expect(failures.isEmpty)` in the kind's test.
public enum StoreConformance {
    public struct Options: Sendable {
        /// The bytes of a test object of about `size` bytes (a kind that holds structured files, such as
        /// Whisper, gives a valid one).
        public var content: @Sendable (_ seed: Int, _ size: Int) throws -> [UInt8]
        /// A legal name for a test object (a Whisper store's objects end in `.wsp`).
        public var name: @Sendable (String) -> String = { $0 }
        public var holdsDirectories = true
        public var holdsSymlinks = true
        /// Whether `publish` keeps the entry's mtime (to the second).
        public var keepsMtime = true
        /// Whether a publish onto an existing object replaces it (a live metric store merges instead: it never
        /// clobbers what carbon wrote; the object must then still read as a whole file of its kind).
        public var publishReplaces = true

        public init(content: @escaping @Sendable (_ seed: Int, _ size: Int) throws -> [UInt8]) {
            self.content = content
        }

        /// Seeded pseudo-random bytes: any store of opaque objects.
        public static func bytes(_ label: String) -> Options {
            let base = SeededRandom(label).seed
            return Options { seed, size in
                var rng = SeededRandom(seed: base &+ UInt64(seed))
                return (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
        }
    }

    public static func run(_ store: any Store, _ options: Options) -> [String] {
        let checks = ConformanceChecks()
        let check = checks.check
        func listed() throws -> [Entry] {
            var out: [Entry] = []
            try store.walk({ e in if !store.isOwnTemporary(e.path) { out.append(e) } }, skipped: { _ in })
            return out
        }
        func write(_ entry: Entry, _ data: [UInt8], token: String, chunk: Int = 64 << 10) throws {
            guard let w = try store.openWriter(for: entry, token: token, resume: false) else { throw ConformanceFailure("openWriter gave nil") }
            var off = 0
            while off < data.count {
                let n = min(chunk, data.count - off)
                try data[off..<(off + n)].withUnsafeBytes { try w.write($0, at: Int64(off)) }
                off += n
            }
            try w.makeDurable()
            try w.publish(entry)
        }
        func readAll(_ path: String, at offset: Int64 = 0, count: Int? = nil) throws -> [UInt8] {
            guard let r = try store.openReader(path) else { throw ConformanceFailure("openReader(\(path)) gave nil") }
            defer { r.close() }
            var out: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 37_000)
            var at = offset
            while count.map({ out.count < $0 }) ?? true {
                let want = min(buf.count, (count ?? Int.max) - out.count)
                let n = try buf.withUnsafeMutableBytes { try r.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), at: at) }
                if n == 0 { break }
                out += buf[0..<n]
                at += Int64(n)
            }
            return out
        }
        let mtime: Int64 = 1_700_000_123_000_000_000
        func fileEntry(_ path: String, _ size: Int) -> Entry {
            Entry(path: path, kind: .file, size: Int64(size), mtimeNs: mtime, mode: 0o640, inode: 0)
        }

        check("prepare and empty") {
            try store.prepareRoot()
            let all = try listed()
            try expect(all.isEmpty, "a new store lists \(all.map(\.path))")
            try expect(try store.stat(options.name("missing")) == nil, "stat of a missing object is not nil")
            try expect(try store.openReader(options.name("missing")) == nil, "openReader of a missing object is not nil")
        }
        let dir = options.holdsDirectories ? "dir" : ""
        let path = (dir.isEmpty ? "" : dir + "/") + options.name("object")
        var data: [UInt8] = []
        check("write, publish, stat, walk and read") {
            data = try options.content(1, 300_000)
            if options.holdsDirectories {
                try store.makeDirectory(Entry(path: dir, kind: .directory, size: 0, mtimeNs: mtime, mode: 0o750, inode: 0))
            }
            guard let w = try store.openWriter(for: fileEntry(path, data.count), token: "conf1", resume: false) else {
                throw ConformanceFailure("openWriter gave nil")
            }
            let half = data.count / 2
            try data[0..<half].withUnsafeBytes { try w.write($0, at: 0) }
            try data[half...].withUnsafeBytes { try w.write($0, at: Int64(half)) }
            try w.makeDurable()
            try expect(try store.stat(path) == nil, "the object is visible before publish")
            try expect(try !listed().contains { $0.path == path }, "walk lists the object before publish")
            try w.publish(fileEntry(path, data.count))
            if options.holdsDirectories {
                try store.finishDirectory(Entry(path: dir, kind: .directory, size: 0, mtimeNs: mtime, mode: 0o750, inode: 0))
            }
            let e = try store.stat(path)
            try expect(e?.kind == .file && e?.size == Int64(data.count), "stat after publish: \(String(describing: e))")
            if options.keepsMtime {
                try expect(e.map { $0.mtimeNs / 1_000_000_000 } == mtime / 1_000_000_000, "mtime not kept: \(String(describing: e))")
            }
            let all = try listed()
            try expect(all.contains { $0.path == path && $0.size == Int64(data.count) }, "walk does not list \(path): \(all.map(\.path))")
            if options.holdsDirectories {
                let d = all.firstIndex { $0.path == dir }, f = all.firstIndex { $0.path == path }
                try expect(d != nil && f != nil && d! < f!, "walk lists a parent after its child: \(all.map(\.path))")
            }
            try expect(try readAll(path) == data, "the bytes read back differ from those written")
            let (from, to) = (data.count / 7, data.count / 7 + data.count / 3)
            try expect(try readAll(path, at: Int64(from), count: to - from) == Array(data[from..<to]), "a ranged read differs")
            try expect(try readAll(path, at: Int64(data.count)) == [], "a read at the end returns bytes")
        }
        check("resume or restart after an abandoned writer") {
            let p = options.name("resumed")
            let d = try options.content(2, 200_000)
            guard let w = try store.openWriter(for: fileEntry(p, d.count), token: "conf2", resume: false) else {
                throw ConformanceFailure("openWriter gave nil")
            }
            let half = d.count / 2
            try d[0..<half].withUnsafeBytes { try w.write($0, at: 0) }
            try w.makeDurable()
            // The writer is abandoned here, as by a kill -9: neither published nor discarded.
            if let again = try store.openWriter(for: fileEntry(p, d.count), token: "conf2", resume: true) {
                try d[half...].withUnsafeBytes { try again.write($0, at: Int64(half)) }
                try again.makeDurable()
                try again.publish(fileEntry(p, d.count))
            } else {
                try write(fileEntry(p, d.count), d, token: "conf2")
            }
            try expect(try readAll(p) == d, "the resumed object's bytes differ")
        }
        check("discarded and abandoned partials are never entries") {
            let p = options.name("discarded")
            let d = try options.content(3, 70_000)
            guard let w = try store.openWriter(for: fileEntry(p, d.count), token: "conf3", resume: false) else {
                throw ConformanceFailure("openWriter gave nil")
            }
            try d.withUnsafeBytes { try w.write($0, at: 0) }
            w.discard()
            let q = options.name("abandoned")
            guard let w2 = try store.openWriter(for: fileEntry(q, d.count), token: "conf4", resume: false) else {
                throw ConformanceFailure("openWriter gave nil")
            }
            try d.withUnsafeBytes { try w2.write($0, at: 0) }
            try w2.makeDurable()
            try store.discardPartial(for: q, token: "conf4")
            let all = try listed().map(\.path)
            try expect(!all.contains(p) && !all.contains(q), "a partial shows as an entry: \(all)")
            try expect(try store.stat(p) == nil && store.stat(q) == nil, "stat finds a partial")
            var leftovers: [String] = []
            try store.walk({ e in if store.isOwnTemporary(e.path) { leftovers.append(e.path) } }, skipped: { _ in })
            try expect(leftovers.isEmpty, "partials left after discard: \(leftovers)")
        }
        check(options.publishReplaces ? "publish replaces" : "publish onto an existing object keeps it whole") {
            let d = try options.content(4, 120_000)
            try write(fileEntry(path, d.count), d, token: "conf5")
            let size = try store.stat(path)?.size
            if options.publishReplaces {
                try expect(size == Int64(d.count), "the size after a replace")
                try expect(try readAll(path) == d, "the bytes after a replace")
            } else {
                try expect(
                    size.map { Int($0) } == (try readAll(path)).count, "the object after a merge reads as a whole: stat \(String(describing: size))")
            }
        }
        if options.holdsSymlinks {
            check("symlinks") {
                let e = Entry(path: "link", kind: .symlink, size: 0, mtimeNs: mtime, mode: 0o777, inode: 0, linkTarget: "dir/../elsewhere")
                try store.makeSymlink(e)
                let s = try store.stat("link")
                try expect(s?.kind == .symlink && s?.linkTarget == "dir/../elsewhere", "stat of a symlink: \(String(describing: s))")
                try store.remove("link", kind: .symlink)
            }
        }
        if let batcher = store as? any ObjectBatching {
            check("several whole objects in one round trip, each refused alone") {
                let names = [options.name("whole-a"), "../" + options.name("escaped"), options.name("whole-b")]
                let contents = [try options.content(5, 20_000), try options.content(6, 3_000), try options.content(7, 4096)]
                let objects = zip(names, contents).enumerated().map { i, pair in
                    pair.1.withUnsafeBytes { b in
                        batcher.encodeWhole(
                            fileEntry(pair.0, pair.1.count), token: "whole\(i)", bytes: b, sha256Hex: SHA256Hasher.digest(pair.1).hex, pointRuns: [])
                    }
                }
                let answers = try batcher.putEach(objects)
                try expect(answers.count == 3, "\(answers.count) answers to 3 objects")
                try expect(answers[0] == nil && answers[2] == nil, "published objects failed: \(answers)")
                try expect(
                    (answers[1] as? FerryError)?.code == .unsafePath, "an unsafe name was not refused for its path: \(String(describing: answers[1]))"
                )
                for i in [0, 2] {
                    try expect(try store.stat(names[i])?.size == Int64(contents[i].count), "stat of \(names[i]) after putEach")
                    try expect(try readAll(names[i]) == contents[i], "the bytes of \(names[i]) after putEach")
                    try store.remove(names[i], kind: .file)
                }
            }
        }
        check("remove is idempotent") {
            try store.remove(path, kind: .file)
            try expect(try store.stat(path) == nil, "stat after remove")
            try store.remove(path, kind: .file)
            try store.remove(options.name("resumed"), kind: .file)
            if options.holdsDirectories {
                try store.remove(dir, kind: .directory)
                try expect(try store.stat(dir) == nil, "stat of a removed directory")
            }
            try store.syncAll()
            let all = try listed()
            try expect(all.isEmpty, "entries left after removing all: \(all.map(\.path))")
        }
        return checks.failures
    }

}
