public import FerryEngine
import Foundation

/// The lease rules every ledger must keep, one body for each (the in-memory `MemoryLeases` and the SQLite
/// ledger; a shared PostgreSQL ledger will run the same): two workers lease disjoint pages that together cover
/// the job; a commit counts only for the holder; renewal keeps a lease; an expired lease is taken over and the old
/// holder's commit is refused; released leases are free at once; nothing is committed twice. `make` gets a
/// count and returns a ledger holding that many pending files, with their ids. Time is driven by the suite.
public enum LedgerConformance {
    public static func run(_ make: (Int) throws -> (any WorkLeasing, [Int64])) -> [String] {
        let checks = ConformanceChecks()
        let check = checks.check
        let t0 = 1_800_000_000.0
        check("two workers lease disjoint pages covering the job") {
            let (l, ids) = try make(10)
            try l.registerWorker("a", pid: 1, now: t0)
            try l.registerWorker("b", pid: 2, now: t0)
            let a = try l.lease(limit: 4, worker: "a", ttl: 30, now: t0).map(\.id)
            let b = try l.lease(limit: 100, worker: "b", ttl: 30, now: t0).map(\.id)
            try expect(a.count == 4 && b.count == 6, "page sizes \(a.count), \(b.count)")
            try expect(Set(a).isDisjoint(with: b), "a file leased twice: \(Set(a).intersection(b))")
            try expect(Set(a + b) == Set(ids), "the leases miss files")
            try expect(try l.lease(limit: 10, worker: "a", ttl: 30, now: t0 + 1).isEmpty, "a live lease was leased again")
            try expect(try l.liveLeases(excluding: "a", now: t0 + 1) == 6, "a sees b's 6 live leases")
            try expect(try l.commit(b.map { ($0, [], nil) }, worker: "a") == b, "a committed files b holds")
            try expect(try l.commit(a.map { ($0, [], nil) }, worker: "a").isEmpty, "a's own commit was refused")
            let left = try l.pendingFiles()
            try expect(left == 6, "pending after a's commit: \(left)")
            try expect(try l.commit(b.map { ($0, [], nil) }, worker: "b").isEmpty, "b's commit was refused")
            try expect(try l.pendingFiles() == 0, "pending after both commits")
            try expect(try l.lease(limit: 10, worker: "b", ttl: 30, now: t0 + 2).isEmpty, "a committed file was leased again")
        }
        check("renewal keeps a lease; expiry hands it over; the old holder's commit is refused") {
            let (l, ids) = try make(3)
            let a = try l.lease(limit: 10, worker: "a", ttl: 10, now: t0).map(\.id)
            try expect(Set(a) == Set(ids), "a leased \(a)")
            try expect(try l.renew(worker: "a", ttl: 10, now: t0 + 8) == 3, "a renews its 3 leases")
            try expect(try l.lease(limit: 10, worker: "b", ttl: 10, now: t0 + 15).isEmpty, "b took a renewed lease")
            let b = try l.lease(limit: 10, worker: "b", ttl: 10, now: t0 + 19).map(\.id)
            try expect(Set(b) == Set(ids), "b takes the expired leases over: \(b)")
            try expect(try l.liveLeases(excluding: "a", now: t0 + 19) == 3, "b's leases are live")
            try expect(Set(try l.commit(a.map { ($0, [], nil) }, worker: "a")) == Set(ids), "the old holder's commit counted")
            try expect(try l.commit(b.map { ($0, [], nil) }, worker: "b").isEmpty, "the new holder's commit was refused")
            try expect(try l.pendingFiles() == 0, "pending after the takeover's commit")
        }
        check("released leases are free at once") {
            let (l, ids) = try make(5)
            _ = try l.lease(limit: 5, worker: "a", ttl: 3600, now: t0)
            try l.release(worker: "a")
            try expect(try l.liveLeases(excluding: "b", now: t0) == 0, "released leases still live")
            try expect(Set(try l.lease(limit: 5, worker: "b", ttl: 30, now: t0).map(\.id)) == Set(ids), "b cannot lease released files")
        }
        return checks.failures
    }

}
