import FerryTesting
import Foundation
import Testing

@testable import FerryTap

@Suite struct JournalTests {
    func payload(_ i: Int) -> [UInt8] { Array("series.\(i) \(i) \(1_700_000_000 + i)\n".utf8) }

    func readAll(_ j: Journal, from: UInt64 = 0) throws -> [JournalRecord] {
        var out: [JournalRecord] = []
        var at = from
        while at < j.head {
            let batch = try j.read(from: at, maxBytes: 4096)
            #expect(!batch.isEmpty)
            out += batch
            at = batch.last!.end
        }
        return out
    }

    @Test func recordsComeBackInOrderAcrossSegments() throws {
        let dir = TempDir("journal")
        let j = try Journal(directory: dir.path, segmentSize: 1024, fsync: .never)
        var ends: [UInt64] = []
        for i in 0..<500 { ends.append(try j.append(payload(i))) }
        let segments = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".seg") }
        #expect(segments.count > 10)
        let back = try readAll(j)
        #expect(back.map(\.payload) == (0..<500).map(payload))
        #expect(back.map(\.end) == ends)
        // Reopening finds the same head and the same records.
        j.shutdown()
        let again = try Journal(directory: dir.path, segmentSize: 1024, fsync: .never)
        #expect(again.head == ends.last)
        #expect(try readAll(again).map(\.payload) == (0..<500).map(payload))
    }

    @Test func aTornTailIsCutAtTheLastWholeRecord() throws {
        let dir = TempDir("journal")
        let j = try Journal(directory: dir.path, fsync: .always)
        for i in 0..<10 { try j.append(payload(i)) }
        let head = j.head
        j.shutdown()
        // A crash mid-write: half a header and garbage after the last record.
        let seg = dir.sub(try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix(".seg") }))
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: seg))
        try h.seekToEnd()
        try h.write(contentsOf: Data([0x31, 0x4A, 0x54, 0x46, 0xFF, 0x00, 0x00]))
        try h.close()
        let again = try Journal(directory: dir.path, fsync: .always)
        #expect(again.head == head)
        #expect(again.recoveredTornBytes == 7)
        #expect(try readAll(again).count == 10)
        // Appends continue on a record boundary.
        try again.append(payload(10))
        #expect(try readAll(again).map(\.payload) == (0...10).map(payload))
    }

    @Test func aCorruptRecordIsReportedAndNeverDelivered() throws {
        let dir = TempDir("journal")
        let j = try Journal(directory: dir.path, segmentSize: 4096, fsync: .never)
        for i in 0..<300 { try j.append(payload(i)) }
        let first = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".seg") }.sorted().first)
        // Flip one payload byte of the third record of the first segment.
        let recs = try j.read(from: 0, maxBytes: 100)
        let third = try j.read(from: recs.last!.end, maxBytes: 1)
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: dir.sub(first)))
        let target = third[0].end + UInt64(Journal.headerSize) + 3
        try h.seek(toOffset: target)
        try h.write(contentsOf: Data([0x7F]))
        try h.close()
        var reports: [UInt64] = []
        var delivered: [[UInt8]] = []
        var at: UInt64 = 0
        while at < j.head {
            let batch = try j.read(from: at, maxBytes: 4096) { offset, _ in reports.append(offset) }
            delivered += batch.map(\.payload).filter { !$0.isEmpty }
            at = batch.last!.end
        }
        #expect(reports.count == 1)
        #expect(delivered.allSatisfy { String(decoding: $0, as: UTF8.self).hasPrefix("series.") })
        #expect(!delivered.contains(payload(recs.count + 1)))
        #expect(delivered.contains(payload(299)))
    }

    @Test func releasedSegmentsAreDeletedAndCursorsSurviveRestarts() throws {
        let dir = TempDir("journal")
        let j = try Journal(directory: dir.path, segmentSize: 1024, fsync: .never)
        for i in 0..<200 { try j.append(payload(i)) }
        let mid = try j.read(from: 0, maxBytes: 3000).last!.end
        let before = try FileManager.default.contentsOfDirectory(atPath: dir.path).count
        j.release(below: mid)
        let after = try FileManager.default.contentsOfDirectory(atPath: dir.path).count
        #expect(after < before)
        #expect(j.tail <= mid)
        #expect(try readAll(j, from: mid).count > 0)
        #expect(throws: (any Error).self) { try j.read(from: 0, maxBytes: 10) }
    }

    @Test func crc32cMatchesTheStandardCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        let long = [UInt8](repeating: 0xA5, count: 1000)
        var c: UInt32 = 0
        long.withUnsafeBytes { c = CRC32C.update(0, $0) }
        #expect(c == CRC32C.checksum(long))
    }
}
