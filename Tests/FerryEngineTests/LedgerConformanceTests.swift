import FerryCore
import FerryEngine
import FerryTesting
import Foundation
import Testing

/// One body of lease rules, run against the in-memory reference and the SQLite ledger.
@Suite struct LedgerConformanceTests {
    @Test func memory() {
        let failures = LedgerConformance.run { n in
            let ids = (1...Int64(n)).map { $0 * 7 }
            return (MemoryLeases(pending: ids), ids)
        }
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func sqlite() {
        var dirs: [TempDir] = []  // each ledger's directory lives until the suite is done
        let failures = LedgerConformance.run { n in
            let dir = TempDir("ledger-conformance")
            dirs.append(dir)
            let ledger = try Ledger(stateDirectory: dir.path, create: true)
            try ledger.createJob(name: "t", planIdentity: "id", chunkSize: 4)
            let w = ledger.manifestWriter()
            try w.add(Entry(path: "d", kind: .directory, size: 0, mtimeNs: 0, mode: 0o755, inode: 1))
            for i in 0..<n { try w.add(Entry(path: "d/f\(i)", kind: .file, size: 1, mtimeNs: 0, mode: 0o644, inode: UInt64(i + 2))) }
            try w.flush()
            try ledger.finishSnapshot(root: "/src", at: 100)
            var ids: [Int64] = []
            try ledger.forEachItem(kind: .file) { ids.append($0.id) }
            return (ledger, ids)
        }
        #expect(failures.isEmpty, "\(failures)")
        withExtendedLifetime(dirs) {}
    }
}
