import FerryCore
import Foundation

/// What a copy thread finished and has not recorded yet: published files and durable-to-be chunks of files still
/// being written, with the bytes they hold.
struct CommitGroup {
    var done: [(id: Int64, chunks: [ChunkRecord], entry: Entry?)] = []
    /// Chunks of large files still being written: recorded after the sync, so a resumed run continues after them.
    var partialChunks: [(id: Int64, chunk: ChunkRecord)] = []
    /// Small files read and encoded for a destination that takes several in one round trip, not sent yet: sent
    /// (and moved to `done` if published) before the group is handed over.
    var puts: [(id: Int64, chunks: [ChunkRecord], object: WholeObject)] = []
    /// The encoded bytes of `puts`.
    var putBytes: Int64 = 0
    /// Files of hard-link groups (more than one link) written anew: their group's other names are linked again.
    var rewritten: [String] = []
    var bytes: Int64 = 0
    /// When the first entry went in (uptime nanoseconds), for closing a group that fills slowly.
    var openedAt: UInt64 = 0

    var isEmpty: Bool { done.isEmpty && partialChunks.isEmpty && puts.isEmpty }

    mutating func note(bytes n: Int64) {
        if openedAt == 0 { openedAt = DispatchTime.now().uptimeNanoseconds }
        bytes += n
    }
}

/// Makes the copy threads' finished work durable and records it, off the copy threads.
///
/// A copy thread hands a closed group over and goes on copying. The committer takes every group handed over
/// since its last round, makes them durable with one `round` (the destination's `syncAll`, then one ledger
/// transaction). A round starts once `roundBytes` wait, once the oldest group waited `roundSeconds`, or at once
/// when a thread asks (`flush`). The order "durable at the destination, then recorded in the ledger" holds for
/// every entry; the destination writes back while the threads copy, and one sync covers the groups of all threads.
///
/// Handing over waits while more than `budget` bytes are handed over and not yet recorded, so what a `kill -9`
/// costs stays bounded, never by the dataset (and a resumed run finds the small files of a lost round at the
/// destination, and records them without writing them again).
final class GroupCommitter: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `condition`.
    private let condition = NSCondition()
    private var queued: [CommitGroup] = []
    private var waitingBytes: Int64 = 0
    private var waitingFiles = 0
    /// A round starts once this many files wait; handing over waits beyond four times as many (memory stays
    /// bounded with empty files too).
    static let roundFiles = 5000
    private var busy = false
    private var closed = false
    private var failure: (any Error)?
    private var thread: Thread?
    private var urgent = 0
    /// Set by a group handed over with `startRound`: the next round starts without gathering.
    private var roundAsked = false
    private var firstQueuedAt: Date?
    private let budget: Int64
    private let roundBytes: Int64
    private let roundSeconds: Double
    private let round: ([CommitGroup]) throws -> Void

    /// `round` makes a batch of groups durable and records it; it runs on the committer's own thread.
    init(budget: Int64, roundBytes: Int64, roundSeconds: Double, round: @escaping ([CommitGroup]) throws -> Void) {
        self.budget = budget
        self.roundBytes = roundBytes
        self.roundSeconds = roundSeconds
        self.round = round
    }

    func start() {
        let t = Thread { [self] in loop() }
        t.name = "ferry-commit"
        t.start()
        thread = t
    }

    /// Hands `group` over (nothing when it is empty), then waits while the bytes waiting to be recorded exceed
    /// the budget. With `startRound`, a round starts at once (without gathering), and this thread does not wait
    /// for it. Throws the error that stopped the committer.
    func submit(_ group: CommitGroup, startRound: Bool = false) throws {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        guard !group.isEmpty else { return }
        if queued.isEmpty { firstQueuedAt = Date() }
        queued.append(group)
        waitingBytes += group.bytes
        waitingFiles += group.done.count
        if startRound { roundAsked = true }
        condition.broadcast()
        while (waitingBytes > budget || waitingFiles > 4 * Self.roundFiles) && failure == nil { condition.wait() }
        if let failure { throw failure }
    }

    /// Waits until everything handed over is recorded; throws the error that stopped the committer.
    func flush() throws {
        condition.lock()
        defer { condition.unlock() }
        urgent += 1
        defer { urgent -= 1 }
        condition.broadcast()
        while (!queued.isEmpty || busy) && failure == nil { condition.wait() }
        if let failure { throw failure }
    }

    /// Ends the committer thread once what is queued is done (or dropped after a failure: it is not recorded,
    /// so a resumed run copies it again).
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        while thread != nil && (busy || !queued.isEmpty) && failure == nil { condition.wait() }
        condition.unlock()
    }

    private func loop() {
        condition.lock()
        while true {
            while queued.isEmpty && !closed { condition.wait() }
            if queued.isEmpty { break }
            // Gather: a round is worth its sync once enough waits, or something waited long enough.
            let due = (firstQueuedAt ?? Date()).addingTimeInterval(roundSeconds)
            while waitingBytes < roundBytes && waitingFiles < Self.roundFiles && urgent == 0 && !roundAsked && !closed
                && Date() < due
            {
                _ = condition.wait(until: due)
            }
            let batch = queued
            queued = []
            roundAsked = false
            busy = true
            let failed = failure != nil
            condition.unlock()
            var error: (any Error)?
            if !failed {
                do { try round(batch) } catch let e { error = e }
            }
            condition.lock()
            busy = false
            if let error, failure == nil { failure = error }
            waitingBytes -= batch.reduce(0) { $0 + $1.bytes }
            waitingFiles -= batch.reduce(0) { $0 + $1.done.count }
            condition.broadcast()
        }
        thread = nil
        condition.broadcast()
        condition.unlock()
    }
}
