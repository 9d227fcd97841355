import FerryCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// When the spool forces its writes to disk.
public enum FsyncPolicy: Sendable, Equatable, CustomStringConvertible {
    /// After every append (a kill -9 and a power cut lose nothing that was read from a sender).
    case always
    /// At most this many seconds after an append (a kill -9 loses nothing; a power cut at most this window).
    case interval(Double)
    /// Never (a kill -9 loses nothing: the page cache survives the process; a power cut may lose the tail).
    case never

    public static func parse(_ text: String) -> FsyncPolicy? {
        switch text {
        case "always": return .always
        case "never": return .never
        default:
            if let d = Units.parseDuration(text), d > 0 { return .interval(d) }
            return nil
        }
    }

    public var description: String {
        switch self {
        case .always: "always"
        case .never: "never"
        case .interval(let d): Units.formatDuration(d)
        }
    }
}

/// One record read back from the journal.
public struct JournalRecord: Sendable {
    /// Logical offset of the record's first byte.
    public var offset: UInt64
    /// Logical offset just past the record: the cursor value once it has been delivered.
    public var end: UInt64
    /// When the tap accepted it (ms since the epoch).
    public var appendedAtMs: UInt64
    public var payload: [UInt8]
}

/// The tap's durable spool: an append-only log of accepted records in segment files, each record framed as
/// `magic u32 | length u32 | crc32c u32 | appended-at ms u64 | payload`, the CRC covering the time and payload.
/// Offsets are logical and contiguous across segments (a segment's file name is its first offset), so a
/// delivery cursor is one number. Every upstream reads the same log through its own cursor; a segment is
/// deleted only when every cursor that still needs it has passed it.
///
/// A record is written with one `write(2)` as it is accepted, so it survives a `kill -9` of the tap; `fsync`
/// decides when it also survives a power cut. On open, a torn or corrupt tail (a crash mid-write) is cut off
/// at the last whole record.
public final class Journal: @unchecked Sendable {
    public static let headerSize = 20
    static let magic: UInt32 = 0x4654_4A31  // "FTJ1"
    public static let maxRecord = 64 * 1_048_576

    public let directory: String
    public let segmentSize: UInt64
    public let fsync: FsyncPolicy

    private let lock = NSCondition()
    /// Segment start offsets, ascending; the last one is open for appends.
    private var segments: [UInt64] = []
    private var tailFD: Int32 = -1
    private var tailStart: UInt64 = 0
    private var headOffset: UInt64 = 0
    private var dirty = false
    private var lastSync = Date()
    private var closed = false
    /// Records cut off at open (torn tail), for the operator's log.
    public private(set) var recoveredTornBytes: UInt64 = 0

    public init(directory: String, segmentSize: UInt64 = 64 * 1_048_576, fsync: FsyncPolicy) throws {
        self.directory = directory
        self.segmentSize = segmentSize
        self.fsync = fsync
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        segments = names.compactMap { n in n.hasSuffix(".seg") ? UInt64(n.dropLast(4)) : nil }.sorted()
        if segments.isEmpty {
            try openTail(start: 0, create: true)
        } else {
            let last = segments.removeLast()
            try openTail(start: last, create: false)
            try recoverTail()
        }
    }

    deinit {
        if tailFD >= 0 { close(tailFD) }
    }

    func path(_ start: UInt64) -> String {
        directory + "/" + String(format: "%020llu.seg", start)
    }

    private func openTail(start: UInt64, create: Bool) throws {
        let p = path(start)
        let fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | (create ? O_EXCL : 0), 0o600)
        guard fd >= 0 else { throw SystemCallError("open", errno: errno, path: p) }
        if tailFD >= 0 { close(tailFD) }
        tailFD = fd
        tailStart = start
        segments.append(start)
        if create {
            headOffset = start
            // The new segment's name must survive a crash before anything points into it.
            let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 {
                fsync_(dfd)
                close(dfd)
            }
        }
    }

    private func fsync_(_ fd: Int32) { _ = Glibc.fsync(fd) }

    /// Scans the open segment and cuts off anything after the last whole, checksummed record.
    private func recoverTail() throws {
        var st = stat()
        guard fstat(tailFD, &st) == 0 else { throw SystemCallError("fstat", errno: errno, path: path(tailStart)) }
        let size = UInt64(st.st_size)
        var pos: UInt64 = 0
        while pos + UInt64(Self.headerSize) <= size {
            guard let (len, _) = try readHeader(fd: tailFD, at: pos, fileSize: size, verify: true) else { break }
            pos += UInt64(Self.headerSize) + UInt64(len)
        }
        if pos < size {
            recoveredTornBytes = size - pos
            guard ftruncate(tailFD, off_t(pos)) == 0 else { throw SystemCallError("ftruncate", errno: errno, path: path(tailStart)) }
            fsync_(tailFD)
        }
        headOffset = tailStart + pos
    }

    /// Reads and checks the record header at `pos`; nil when the record is torn or corrupt.
    private func readHeader(fd: Int32, at pos: UInt64, fileSize: UInt64, verify: Bool) throws -> (UInt32, UInt64)? {
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, Self.headerSize, off_t(pos)) }
        guard n == Self.headerSize else { return nil }
        let magic = Self.u32(header, 0), len = Self.u32(header, 4), crc = Self.u32(header, 8)
        let time = UInt64(Self.u32(header, 12)) | UInt64(Self.u32(header, 16)) << 32
        guard magic == Self.magic, Int(len) <= Self.maxRecord, pos + UInt64(Self.headerSize) + UInt64(len) <= fileSize else { return nil }
        if verify {
            var body = [UInt8](repeating: 0, count: 8 + Int(len))
            for i in 0..<8 { body[i] = header[12 + i] }
            let got = body.withUnsafeMutableBytes { b in pread(fd, b.baseAddress! + 8, Int(len), off_t(pos) + off_t(Self.headerSize)) }
            guard got == Int(len), CRC32C.checksum(body) == crc else { return nil }
        }
        return (len, time)
    }

    static func u32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
    }

    static func put32(_ v: UInt32, into b: inout [UInt8]) {
        b.append(UInt8(v & 0xFF))
        b.append(UInt8((v >> 8) & 0xFF))
        b.append(UInt8((v >> 16) & 0xFF))
        b.append(UInt8(v >> 24))
    }

    /// The logical offset just past the last record.
    public var head: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return headOffset
    }

    /// The oldest offset still on disk.
    public var tail: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return segments.first ?? headOffset
    }

    /// Bytes on disk between `offset` and the head.
    public func bytes(after offset: UInt64) -> UInt64 {
        let h = head
        return h > offset ? h - offset : 0
    }

    /// Appends one record; returns its end offset (the sequence number the tap reports).
    @discardableResult
    public func append(_ payload: [UInt8], at time: UInt64? = nil) throws -> UInt64 {
        let timeMs = time ?? UInt64(Date().timeIntervalSince1970 * 1000)
        precondition(payload.count <= Self.maxRecord)
        var frame = [UInt8]()
        frame.reserveCapacity(Self.headerSize + payload.count)
        var body = [UInt8]()
        body.reserveCapacity(8 + payload.count)
        Self.put32(UInt32(timeMs & 0xFFFF_FFFF), into: &body)
        Self.put32(UInt32(timeMs >> 32), into: &body)
        body.append(contentsOf: payload)
        Self.put32(Self.magic, into: &frame)
        Self.put32(UInt32(payload.count), into: &frame)
        Self.put32(CRC32C.checksum(body), into: &frame)
        frame.append(contentsOf: body)

        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw FerryError(.other, "the spool is closed") }
        if headOffset > tailStart && headOffset - tailStart + UInt64(frame.count) > segmentSize {
            try openTail(start: headOffset, create: true)
        }
        let pos = off_t(headOffset - tailStart)
        do {
            try frame.withUnsafeBytes { try SystemCalls.pwriteAll(tailFD, $0, at: Int64(pos), what: path(tailStart)) }
        } catch {
            // Leave no partial record behind: the next append must start on a record boundary.
            _ = ftruncate(tailFD, pos)
            throw error
        }
        headOffset += UInt64(frame.count)
        switch fsync {
        case .always: _ = fdatasync(tailFD)
        case .interval, .never: dirty = true
        }
        lock.broadcast()
        return headOffset
    }

    /// Forces appended records to disk when the policy's interval is due (called by the tap's timer).
    public func syncIfDue() {
        lock.lock()
        defer { lock.unlock() }
        guard dirty, case .interval(let d) = fsync, Date().timeIntervalSince(lastSync) >= d else { return }
        _ = fdatasync(tailFD)
        dirty = false
        lastSync = Date()
    }

    /// Reads whole records from `offset` (a record boundary) up to about `maxBytes`. A record that fails its
    /// checksum below the head (disk corruption) is reported through `corrupt` and skipped with the rest of its
    /// segment, never delivered.
    public func read(from offset: UInt64, maxBytes: Int, corrupt: (UInt64, String) -> Void = { _, _ in }) throws -> [JournalRecord] {
        lock.lock()
        let segs = segments
        let h = headOffset
        lock.unlock()
        guard offset < h else { return [] }
        guard let idx = segs.lastIndex(where: { $0 <= offset }) else {
            throw FerryError(.other, "spool offset \(offset) was already released (oldest is \(segs.first ?? h))")
        }
        let start = segs[idx]
        let end = idx + 1 < segs.count ? segs[idx + 1] : h
        let p = path(start)
        let fd = open(p, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError("open", errno: errno, path: p) }
        defer { close(fd) }
        let fileSize = end - start
        var pos = offset - start
        var out: [JournalRecord] = []
        var total = 0
        while pos < fileSize && (total == 0 || total < maxBytes) {
            // A bad record ends the batch; the next read starts at it, reports it once and skips the segment's rest.
            guard let (len, time) = try readHeader(fd: fd, at: pos, fileSize: fileSize, verify: false) else {
                if !out.isEmpty { return out }
                corrupt(start + pos, "record header unreadable; skipped \(fileSize - pos) bytes to the next segment")
                return [JournalRecord(offset: start + pos, end: end, appendedAtMs: 0, payload: [])]
            }
            var body = [UInt8](repeating: 0, count: 8 + Int(len))
            let got = body.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 8 + Int(len), off_t(pos) + 12) }
            var crcHeader = [UInt8](repeating: 0, count: 4)
            _ = crcHeader.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4, off_t(pos) + 8) }
            let recEnd = pos + UInt64(Self.headerSize) + UInt64(len)
            if got != 8 + Int(len) || CRC32C.checksum(body) != Self.u32(crcHeader, 0) {
                if !out.isEmpty { return out }
                corrupt(start + pos, "checksum mismatch; skipped \(fileSize - pos) bytes to the next segment")
                return [JournalRecord(offset: start + pos, end: end, appendedAtMs: 0, payload: [])]
            }
            out.append(JournalRecord(offset: start + pos, end: start + recEnd, appendedAtMs: time, payload: Array(body[8...])))
            total += Int(len)
            pos = recEnd
        }
        return out
    }

    /// The time a record at `offset` was accepted, or nil at the head.
    public func appendedAt(_ offset: UInt64) -> UInt64? {
        (try? read(from: offset, maxBytes: 1))?.first?.appendedAtMs
    }

    /// Waits until the head moves past `offset` or `timeout` passes; true when there is data.
    public func wait(beyond offset: UInt64, timeout: Double) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while headOffset <= offset && !closed {
            if !lock.wait(until: deadline) { break }
        }
        return headOffset > offset
    }

    /// Deletes the segments that lie wholly below `offset` (every cursor is past them).
    public func release(below offset: UInt64) {
        lock.lock()
        var doomed: [UInt64] = []
        while segments.count > 1 && segments[1] <= offset {
            doomed.append(segments.removeFirst())
        }
        lock.unlock()
        for s in doomed { unlink(path(s)) }
    }

    /// Wakes every waiter and refuses later appends.
    public func shutdown() {
        lock.lock()
        closed = true
        if dirty { _ = fdatasync(tailFD) }
        lock.broadcast()
        lock.unlock()
    }

    /// Forces everything to disk now.
    public func sync() {
        lock.lock()
        _ = fdatasync(tailFD)
        dirty = false
        lock.unlock()
    }
}

/// A tap's cursor file: an offset into the journal and its CRC-32C, 12 bytes written in place.
public enum CursorFile {
    public static func load(_ path: String) throws -> UInt64? {
        guard let data = FileManager.default.contents(atPath: path), data.count >= 12 else { return nil }
        let b = [UInt8](data)
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(b[i]) << (8 * UInt64(i)) }
        guard CRC32C.checksum(Array(b[0..<8])) == Journal.u32(b, 8) else {
            throw FerryError(.other, "tap cursor \(path) is corrupt; remove it to restart delivery from the oldest spooled record")
        }
        return v
    }

    public static func encode(_ v: UInt64) -> [UInt8] {
        var b = [UInt8]()
        for i in 0..<8 { b.append(UInt8((v >> (8 * UInt64(i))) & 0xFF)) }
        Journal.put32(CRC32C.checksum(b), into: &b)
        return b
    }
}
