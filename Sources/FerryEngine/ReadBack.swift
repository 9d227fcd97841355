import FerryCore
import FerryDigest
import Foundation
import Logging

/// Reads back, while the copy goes on, the files the copy has just recorded, and keeps in the ledger what it
/// proved: the destination file's `ChangeStamp`, under which its bytes hashed to the ledger's chunk checksums.
/// The verify of the same `ferry run` takes such a file's content as checked when the destination shows the same
/// stamp then, instead of reading it again once the copy is over: the reading and hashing overlap the copy's
/// writeback, where the cores wait for the disk.
///
/// It only saves time. A file not read back (the queue was full, the copy ended first, it changed while read, its
/// stamp is too recent, its bytes did not match) is read by verify as before; a mismatch is left for verify to
/// report. Verify still walks both sides afresh and compares every entry's metadata.
final class ContentReadBack: @unchecked Sendable {
    // @unchecked: the queue and the flags are guarded by `condition`; the rest is set once.
    private let destination: any ChangeStamping
    private let ledger: Ledger
    private let logger: Logger
    private let condition = NSCondition()
    private var queue: [Int64] = []
    private var head = 0
    private var stopping = false
    private var running = false
    /// At most this many ids wait; more are left to verify (memory stays bounded, never by the tree).
    static let capacity = 16_384
    /// A stamp whose change time is less than this before the read began is not kept: a write in the same clock
    /// tick as the change before it may leave the change time as it was (ticks are 1-10 ms).
    static let marginNs: Int64 = 30_000_000
    private let bufferSize = 1 << 20

    init(destination: any ChangeStamping, ledger: Ledger, logger: Logger) {
        self.destination = destination
        self.ledger = ledger
        self.logger = logger
    }

    func start() {
        running = true
        let t = Thread { [self] in loop() }
        t.name = "ferry-read-back"
        t.start()
    }

    /// Queues files the copy has recorded; those beyond the capacity are left to verify.
    func offer(_ ids: [Int64]) {
        guard !ids.isEmpty else { return }
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return }
        if head > 0 && head * 2 >= queue.count {
            queue.removeFirst(head)
            head = 0
        }
        queue.append(contentsOf: ids.prefix(max(0, Self.capacity - (queue.count - head))))
        condition.broadcast()
    }

    /// Stops reading back (what is still queued, and the file being read, are left to verify) and waits until
    /// what was proven is recorded.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { condition.wait() }
        condition.unlock()
    }

    private func next(_ limit: Int) -> [Int64]? {
        condition.lock()
        defer { condition.unlock() }
        while head == queue.count && !stopping { condition.wait() }
        if stopping { return nil }
        let take = Array(queue[head..<min(queue.count, head + limit)])
        head += take.count
        return take
    }

    private func loop() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer {
            buffer.deallocate()
            condition.lock()
            running = false
            condition.broadcast()
            condition.unlock()
        }
        let hasher = SHA256Hasher()
        do {
            while let ids = next(64) {
                var proofs: [(item: Int64, stamp: String, chunkList: String)] = []
                for (item, chunks) in try ledger.itemsWithChunks(ids: ids).values.sorted(by: { $0.0.id < $1.0.id }) {
                    if isStopping { break }
                    if let proof = prove(item, chunks, buffer: buffer, hasher: hasher) { proofs.append(proof) }
                }
                try ledger.addReadBack(proofs)
            }
        } catch {
            // Only an optimisation: verify reads what was not proven.
            logger.debug("reading back at the destination stopped: \(error.operatorText)")
        }
    }

    private var isStopping: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopping
    }

    /// Reads the destination's file of `item` and hashes it chunk by chunk; returns its stamp and chunk-list
    /// digest when every chunk matches the ledger's and the file did not change while read.
    private func prove(
        _ item: ItemRecord, _ chunks: [ChunkRecord], buffer: UnsafeMutableRawBufferPointer, hasher: SHA256Hasher,
        waited: Bool = false
    ) -> (item: Int64, stamp: String, chunkList: String)? {
        let e = item.entry
        guard item.state == .done, e.kind == .file, e.size > 0, !chunks.isEmpty, Self.contiguous(chunks, size: e.size),
            let list = SHA256Hasher.chunkListDigest(chunks.map(\.sha256))
        else { return nil }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let began = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        guard let reader = try? destination.openReader(e.path) as? any ChangeStampedReader else { return nil }
        defer { reader.close() }
        guard let before = try? reader.changeStamp(), before.size == e.size else { return nil }
        let young = Self.marginNs - (began - before.changedNs)
        if young > 0 {
            // Changed a moment ago (published just before its round): read once the margin has passed.
            guard !waited, young <= Self.marginNs else { return nil }
            reader.close()
            usleep(UInt32(young / 1000))
            return prove(item, chunks, buffer: buffer, hasher: hasher, waited: true)
        }
        for c in chunks {
            if isStopping { return nil }  // verify is about to read it anyway
            var done: Int64 = 0
            while done < c.length {
                let want = Int(min(Int64(buffer.count), c.length - done))
                guard let n = try? reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: c.offset + done),
                    n == want
                else {
                    _ = hasher.finish()
                    return nil
                }
                hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                done += Int64(n)
            }
            if hasher.finish().hex != c.sha256 { return nil }
        }
        guard let after = try? reader.changeStamp(), after == before else { return nil }
        return (item.id, before.text, list.hex)
    }

    /// Whether the chunks cover the file from its first byte to its last, in order, without gaps.
    static func contiguous(_ chunks: [ChunkRecord], size: Int64) -> Bool {
        var at: Int64 = 0
        for (i, c) in chunks.enumerated() {
            guard c.index == i, c.offset == at, c.length > 0 else { return false }
            at += c.length
        }
        return at == size
    }
}
