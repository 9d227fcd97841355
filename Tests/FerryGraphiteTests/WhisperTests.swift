import FerryTesting
import Foundation
import Testing

@testable import FerryGraphite

func oracle(_ args: [String]) throws -> String { try WhisperOracle.run(args) }

func writePoints(_ dir: TempDir, _ points: [(Int, Double)], name: String = "points.json") throws -> String {
    try WhisperOracle.pointsFile(dir.sub(name), points)
}

@Suite struct WhisperReferenceTests {
    let now = 1_700_000_000

    @Test(arguments: Aggregation.allCases)
    func createAndUpdateManyMatchTheReferenceByteForByte(_ method: Aggregation) throws {
        let dir = TempDir()
        let ref = dir.sub("ref.wsp")
        _ = try oracle(["create", ref, "60:1440,300:2016,3600:1000", "0.3", method.description])
        var mine = try Whisper(
            retentions: [(60, 1440), (300, 2016), (3600, 1000)], xFilesFactor: 0.3, aggregation: method)
        #expect(mine.bytes == [UInt8](try Data(contentsOf: URL(fileURLWithPath: ref))))
        var rng = SeededRandom(#function)
        for batch in 0..<5 {
            var points: [(Int, Double)] = (0..<Int.random(in: 1...400, using: &rng)).map { _ in
                let t = now - Int.random(in: 0...(40 * 86400), using: &rng)
                let v: Double = [0.0, Double.random(in: -100...100, using: &rng), Double(Int.random(in: -5...5, using: &rng))]
                    .randomElement(using: &rng)!
                return (t, v)
            }
            if batch == 2 { points.append((points[0].0, 42.5)) }  // a duplicate timestamp
            _ = try oracle(["update", ref, String(now), try writePoints(dir, points)])
            mine.updateMany(points.map { (timestamp: $0.0, value: $0.1) }, now: now)
            let theirs = [UInt8](try Data(contentsOf: URL(fileURLWithPath: ref)))
            let firstDiff = theirs.indices.first { theirs[$0] != mine.bytes[$0] }
            #expect(firstDiff == nil, "\(method) batch \(batch): first differing byte \(firstDiff ?? -1)")
        }
    }

    @Test func fetchMatchesTheReference() throws {
        let dir = TempDir()
        let path = dir.sub("f.wsp")
        _ = try oracle(["create", path, "60:1440,600:1000", "0.5", "average"])
        let points = (0..<3000).filter { $0 % 7 != 0 }.map { (now - $0 * 60, Double($0 % 13)) }
        _ = try oracle(["update", path, String(now), try writePoints(dir, points)])
        let db = try Whisper(path: path)
        for (from, until) in [(now - 3600, now), (now - 86400 * 3, now - 86400), (now - 100, now - 100), (now + 10, now + 20)] {
            let ref = try oracle(["fetch", path, String(from), String(until), String(now)])
            let mine = db.fetch(from: from, until: until, now: now)
            guard let parsed = try JSONSerialization.jsonObject(with: Data(ref.utf8), options: .fragmentsAllowed) as? [Any] else {
                #expect(mine == nil, "reference returned null for \(from)...\(until)")
                continue
            }
            let info = try #require(parsed[0] as? [Int])
            let values = try #require(parsed[1] as? [Any])
            let m = try #require(mine)
            #expect([m.from, m.until, m.step] == info)
            #expect(m.values.count == values.count)
            for (a, b) in zip(m.values, values) { #expect(a == (b as? Double)) }
        }
    }

    @Test func corruptAndTruncatedFilesNameTheOffset() throws {
        let good = try Whisper(retentions: [(60, 100), (600, 100)]).bytes
        #expect(throws: WhisperError.self) { try Whisper(bytes: Array(good[0..<10]), path: "t") }
        do {
            _ = try Whisper(bytes: Array(good[0..<(good.count - 5)]), path: "short.wsp")
            Issue.record("a truncated file parsed")
        } catch {
            #expect(error.description.contains("short.wsp"))
            #expect(error.offset == good.count - 5)
        }
        var bad = good
        bad[3] = 99
        #expect(throws: WhisperError.self) { try Whisper(bytes: bad, path: "agg") }
        var badXFF = good
        badXFF.replaceSubrange(8..<12, with: [0x40, 0x00, 0x00, 0x00])  // 2.0
        do {
            _ = try Whisper(bytes: badXFF, path: "x")
            Issue.record("xff 2.0 accepted")
        } catch {
            #expect(error.offset == 8)
        }
        var badOffset = good
        badOffset[16 + 3] = 0x77
        #expect(throws: WhisperError.self) { try Whisper(bytes: badOffset, path: "o") }
    }
}

@Suite struct WhisperFillTests {
    let now = 1_700_006_400  // aligned to 600 s
    let schema = "60:2880,600:4320"  // 60s:2d, 600s:30d: the migration shape, smaller

    /// Source: 30 days of history written as carbon would have (newest first, so every archive fills).
    func makeSource(_ dir: TempDir, xff: String = "0.5") throws -> (String, [(Int, Double)]) {
        let src = dir.sub("src.wsp")
        _ = try oracle(["create", src, schema, xff, "average"])
        var points: [(Int, Double)] = []
        var t = now - 30 * 86400
        while t <= now - 3600 {
            points.append((t, Double((t / 60) % 97) - 20))
            t += 60
        }
        // Write as carbon received it: in time order, in day-sized batches, `now` moving along.
        var i = 0
        while i < points.count {
            let batch = Array(points[i..<min(i + 1440, points.count)])
            _ = try oracle(["update", src, String(batch.last!.0 + 30), try writePoints(dir, batch, name: "b.json")])
            i += 1440
        }
        return (src, points)
    }

    @Test func migrationFillsHistoryAndNeverTouchesLivePoints() throws {
        let dir = TempDir()
        let (src, _) = try makeSource(dir)
        let snapshot = now - 3600 - 600
        let dst = dir.sub("dst.wsp")
        _ = try oracle(["create", dst, schema, "0.5", "average"])
        // Live points of the last 36 h with the edge cases of the notes: a 0.0 value, a one-slot gap, a single
        // valued slot right after a gap, a multi-slot gap, and a trailing gap before the snapshot time.
        var live: [(Int, Double)] = []
        var t = now - 36 * 3600
        while t <= now {
            let k = (t - (now - 36 * 3600)) / 60
            let inMultiGap = k >= 100 && k < 140
            let oneSlotGap = k == 200
            let trailingGap = t > snapshot - 1800 && t <= snapshot
            if !(inMultiGap || oneSlotGap || trailingGap) { live.append((t, k == 300 ? 0.0 : 1000 + Double(k))) }
            t += 60
        }
        live.append((now - 36 * 3600 + 141 * 60 - 60 * 2, 5.0))  // lone value inside the gap
        _ = try oracle(["update", dst, String(now), try writePoints(dir, live)])
        let before = dir.sub("dst-before.wsp")
        try FileManager.default.copyItem(atPath: dst, toPath: before)

        let source = try Whisper(path: src)
        var merged: Whisper
        let report: FillReport
        do {
            let file = try WhisperFile(path: dst)  // the lock is held until `file` goes away
            let original = try file.read()
            merged = original
            report = merged.fill(from: source, until: snapshot, now: now)
            // Written back as a merge does: only the span the fill says it wrote (the oracle reads the file).
            try file.write(merged, range: report.changed)
            // Every byte that differs lies in that span.
            let differing = zip(original.bytes, merged.bytes).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            let span = try #require(report.changed)
            #expect(!differing.isEmpty && span.contains(differing.first!) && span.contains(differing.last!), "\(span)")
        }
        #expect(report.skipped == [])
        #expect(report.filled[0] > 0 && report.filled[1] > 0)

        let verdict = try #require(
            try JSONSerialization.jsonObject(
                with: Data(try oracle(["check-fill", src, before, dst, String(snapshot), String(now)]).utf8))
                as? [String: Any])
        #expect(verdict["clobbered"] as? Int == 0, "\(verdict)")
        #expect(verdict["missed"] as? Int == 0, "\(verdict)")
        #expect(verdict["invented"] as? Int == 0, "\(verdict)")
        #expect((verdict["filled"] as? Int ?? 0) == report.total)
        // The specific slots: 0.0 kept, the lone value kept, the one-slot gap and trailing gap filled.
        let a0 = merged.archives[0]
        let base = now - 36 * 3600
        #expect(merged.value(a0, at: base + 300 * 60) == 0.0)
        #expect(merged.value(a0, at: base + 139 * 60) == 5.0)
        #expect(merged.value(a0, at: base + 200 * 60) == source.value(source.archives[0], at: base + 200 * 60))
        #expect(merged.value(a0, at: snapshot - 60) == source.value(source.archives[0], at: snapshot - 60))
        #expect(merged.value(a0, at: snapshot - 60) != nil)

        // A second fill changes nothing (idempotent).
        let again = try WhisperFile(path: dst)
        let o2 = try again.read()
        var m2 = o2
        let second = m2.fill(from: source, until: snapshot, now: now)
        #expect(second.total == 0 && second.changed == nil)
    }

    @Test func coarserArchivesComeFromTheSourceCoarseArchiveNeverIntoFineSlots() throws {
        let dir = TempDir()
        let (src, _) = try makeSource(dir)
        let dst = dir.sub("dst.wsp")
        _ = try oracle(["create", dst, schema, "0.5", "average"])
        var db = try Whisper(path: dst)
        let source = try Whisper(path: src)
        _ = db.fill(from: source, until: now, now: now)
        let fine = db.archives[0]
        // Beyond the fine archive's 2 days nothing lands in 60 s slots; the 600 s archive equals the source's.
        let old = now - 10 * 86400
        #expect(db.value(fine, at: old - old % 60) == nil)
        let coarse = db.archives[1]
        var t = now - 29 * 86400
        t -= t % 600
        var compared = 0
        while t < now - 3600 {
            #expect(db.value(coarse, at: t) == source.value(source.archives[1], at: t))
            compared += 1
            t += 600
        }
        #expect(compared > 4000)
    }

    @Test func differingSchemaIsResampledWithTheDestinationsRules() throws {
        let dir = TempDir()
        let (src, _) = try makeSource(dir)
        let dst = dir.sub("dst.wsp")
        _ = try oracle(["create", dst, "60:1440,300:2016,3600:720", "0.8", "max"])
        var db = try Whisper(path: dst)
        let source = try Whisper(path: src)
        let report = db.fill(from: source, until: now, now: now)
        #expect(report.skipped == [])
        // 300 s slots: the max of the source's 60 s points in the interval, where ≥ 80% are known.
        let a300 = db.archives[1]
        var t = now - 86400
        t -= t % 300
        var checked = 0
        while t < now - 7200 {
            let vals = (0..<5).compactMap { source.value(source.archives[0], at: t + $0 * 60) }
            let expected: Double? = Double(vals.count) / 5 >= 0.8 ? vals.max() : nil
            #expect(db.value(a300, at: t) == expected, "at \(t)")
            checked += 1
            t += 300
        }
        #expect(checked > 200)
        // 3600 s slots come from the source's 600 s archive, never from nothing.
        #expect(report.filled[2] > 0)
    }

    @Test func aLockedFileIsNotUpdatedUntilTheLockIsReleased() throws {
        let dir = TempDir()
        let path = dir.sub("locked.wsp")
        try Whisper(retentions: [(60, 100)]).write(to: path)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = [
            "python3", "-c",
            "import fcntl, sys\nf = open(sys.argv[1], 'rb+')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.readline()\n",
            path,
        ]
        let out = Pipe()
        let inp = Pipe()
        holder.standardOutput = out
        holder.standardInput = inp
        try holder.run()
        let line = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        #expect(line.hasPrefix("locked"))
        #expect(throws: (any Error).self) { _ = try WhisperFile(path: path, wait: false) }
        inp.fileHandleForWriting.write(Data("go\n".utf8))
        holder.waitUntilExit()
        let file = try WhisperFile(path: path, wait: false)
        #expect(try file.read().archives.count == 1)
    }

    /// The merge's own path: `wait: true` blocks in flock while carbon (here Python) holds the lock, then updates.
    @Test func aWaitingUpdateBlocksOnTheLockAndLandsAfterIt() throws {
        let dir = TempDir()
        let path = dir.sub("wait.wsp")
        try Whisper(retentions: [(60, 100)]).write(to: path)
        let now = Int(Date().timeIntervalSince1970)
        let (tA, tB) = (now - now % 60 - 120, now - now % 60 - 60)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = [
            "python3", "-c",
            "import fcntl, sys, whisper\nf = open(sys.argv[1], 'rb+')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\n"
                + "sys.stdin.readline()\nwhisper.update(sys.argv[1], 2.0, \(tB))\n",
            path,
        ]
        let out = Pipe()
        let inp = Pipe()
        holder.standardOutput = out
        holder.standardInput = inp
        try holder.run()
        #expect(String(decoding: out.fileHandleForReading.availableData, as: UTF8.self).hasPrefix("locked"))
        let finished = NSLock.Protected(false)
        let done = DispatchSemaphore(value: 0)
        Thread {
            do {
                let file = try WhisperFile(path: path, wait: true)
                let before = try file.read()
                var db = before
                let a = db.archives[0]
                db.setPoint(at: db.slotOffset(a, base: db.baseInterval(a) == 0 ? tA : db.baseInterval(a), interval: tA), tA, 1.0)
                try file.write(db, original: before)
            } catch {
                Issue.record("update failed: \(error)")
            }
            finished.withLock { $0 = true }
            done.signal()
        }.start()
        // The kernel lists a blocked flock request with "->" in /proc/locks: await that, not a delay.
        let blocked = waitUntil(timeout: 30) {
            ((try? String(contentsOfFile: "/proc/locks", encoding: .utf8)) ?? "").split(separator: "\n")
                .contains { $0.contains("-> FLOCK") && $0.contains(" \(getpid()) ") }
        }
        #expect(blocked, "the update waits in flock")
        #expect(!finished.withLock { $0 }, "nothing was written while the lock was held")
        inp.fileHandleForWriting.write(Data("go\n".utf8))
        holder.waitUntilExit()
        #expect(holder.terminationStatus == 0)
        done.wait()
        // Both writes are there: the holder's, then ours after it (read by the reference whisper).
        let json = try WhisperOracle.run(["archives", path])
        let points = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: [String: Double]])
        #expect(points["60"]?[String(tA)] == 1.0 && points["60"]?[String(tB)] == 2.0, "\(points)")
    }
}

/// The Whisper store opens its files beneath its root only: a directory of the live tree swapped for a symlink
/// to somewhere else is refused, and the file it points at is never merged into (Python's whisper made both).
@Suite struct WhisperConfinementTests {
    @Test func aMergeThroughASymlinkedDirectoryIsRefusedAndTouchesNothingOutside() throws {
        let dir = TempDir("whisper-confine")
        for d in ["src/servers", "outside", "dst"] { try FileManager.default.createDirectory(atPath: dir.sub(d), withIntermediateDirectories: true) }
        _ = try pythonOutput(
            """
            import whisper, time
            now = int(time.time())
            # The source has points the outside file lacks: a merge that reached it would change its bytes.
            for p, v, n in [("\(dir.sub("src/servers/a.wsp"))", 1.0, 100), ("\(dir.sub("outside/a.wsp"))", 2.0, 10)]:
                whisper.create(p, [(60, 1440)])
                whisper.update_many(p, [(now - 60 * i, v) for i in range(1, n)])
            """)
        try FileManager.default.createSymbolicLink(atPath: dir.sub("dst/servers"), withDestinationPath: dir.sub("outside"))
        let before = try Data(contentsOf: URL(fileURLWithPath: dir.sub("outside/a.wsp")))
        let dst = WhisperTreeStore(root: dir.sub("dst"))
        let now = Int(Date().timeIntervalSince1970)
        #expect(throws: (any Error).self) {
            _ = try dst.merge("servers/a.wsp", from: WhisperTreeStore(root: dir.sub("src")), until: now, now: now)
        }
        let after = try Data(contentsOf: URL(fileURLWithPath: dir.sub("outside/a.wsp")))
        #expect(after == before, "the file outside the tree was merged into")
    }
}
