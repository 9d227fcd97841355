import FerryCore
import Foundation

/// What a live tree's tap saw change since the last application: paths to look at again, and subtrees to
/// rescan whole (a directory that appeared or moved in, a watch that failed, a queue that overflowed; "" is the
/// whole tree).
public struct LiveChanges: Sendable, Equatable {
    public var paths: Set<String> = []
    public var subtrees: Set<String> = []

    public init(paths: Set<String> = [], subtrees: Set<String> = []) {
        self.paths = paths
        self.subtrees = subtrees
    }

    public var isEmpty: Bool { paths.isEmpty && subtrees.isEmpty }

    /// Whether `path` lies in one of the subtrees (it is covered by that rescan).
    func covered(_ path: String) -> Bool {
        subtrees.contains { $0.isEmpty || path == $0 || path.hasPrefix($0 + "/") }
    }
}

/// What applying a set of changes did.
public struct MirrorSummary: Sendable, Equatable {
    public var added = 0
    public var changed = 0
    public var removed = 0
    public var copiedBytes: Int64 = 0
    /// Entries the ledger still holds as not settled (pending, failed, vanished) after this application: what
    /// the tap reports as behind until a later application settles them.
    public var unsettled: Int64 = 0
    public init() {}

    /// Whether the application changed anything at the destination.
    public var changedAnything: Bool { added + changed + removed > 0 || copiedBytes > 0 }
}

extension Job {
    /// Applies live changes to the destination through the engine's own copy: each path is looked at again in the
    /// source (by metadata, confined beneath the root), new and changed entries are queued in the ledger as a
    /// catch-up queues them, what left the source is removed at the destination, and the copy phase copies what
    /// is queued (chunked, hashed, ledgered). Idempotent: applying the same changes again finds nothing to do.
    public func mirror(_ changes: LiveChanges, ledger: Ledger) throws -> MirrorSummary {
        var summary = MirrorSummary()
        do {
            // The whole tree ("") is a rescan like any subtree: by metadata, hard-link groups kept.
            let context = MirrorContext(filter: EntryFilter(plan: plan, destination: destination), ledger: ledger)
            let roots = changes.subtrees.filter { root in !changes.subtrees.contains { $0 != root && root.hasPrefix($0 + "/") } }
            for root in roots.sorted() { try rescan(root, context) }
            // A directory's entries changed, so did its own metadata (mtime): it is looked at too, after them.
            let parents = Set(changes.paths.union(roots).map { PathUtil.directory(of: $0) == "." ? "" : PathUtil.directory(of: $0) })
            for path in changes.paths.union(parents).sorted() where !changes.covered(path) { try look(path, context) }
            try context.writer?.flush()
            summary.added = context.summary.added
            summary.changed = context.summary.changed
            summary.removed = context.summary.removed
        }
        var copied = try copy(ledger)
        // What changed again while it was copied is looked at once more now, so that as little as possible stays
        // unsettled behind the tap: a vanished entry is removed or queued as it is now, a file whose copy failed
        // (it kept changing) is queued as it is now, and a hard link whose first name moved, went or is not at the
        // destination has its group's first name chosen anew. What still cannot be settled stays unsettled (the
        // tap reports it, retries it at its next settling look, and the cutover's gate refuses until it is). It
        // is never settled some other way: a second name copied as a file of its own would split the group at
        // the destination, and nothing would link it again once the application stops writing.
        for pass in 0..<3 {
            var again: [ItemRecord] = []
            try ledger.forEachItem(states: [.vanished]) { again.append($0) }
            try ledger.forEachItem(states: [.failed]) { item in
                // Not a refusal that stands (an unsafe name, an unreadable file): those wait for their next change.
                // A file that kept changing is read again once per application (each try reads it up to three
                // times): a file that is always being written is not read nine times every two seconds.
                let keptChanging = item.error?.hasPrefix(CopyPhase.keptChanging) == true
                if item.entry.kind == .hardlink || (keptChanging && pass == 0) { again.append(item) }
            }
            let unsettled = try ledger.unsettledCount()
            if again.isEmpty && unsettled == 0 { break }
            let context = MirrorContext(filter: EntryFilter(plan: plan, destination: destination), ledger: ledger)
            for item in again { try look(item.entry.path, context) }
            try context.writer?.flush()
            copied.bytesCopied += try copy(ledger).bytesCopied
        }
        let unsettled = try ledger.unsettledCount()
        if unsettled > 0 { logger.warning("entries left unsettled after applying the changes", metadata: ["count": "\(unsettled)"]) }
        summary.copiedBytes = copied.bytesCopied
        summary.unsettled = unsettled
        return summary
    }

    /// Makes this job the mirror back of a live tree's fenced cutover (fs → fs): it goes from the new tree to the
    /// old one, and its ledger comes from a walk of the new tree by metadata, moving no bytes. An entry the
    /// forward ledger holds as copied with the same metadata is recorded as copied (the fence proved both trees
    /// equal when the application was switched); anything else (written since) is queued, and what the forward
    /// ledger holds that the new tree no longer has is removed from the old tree. Then the job is ready, and
    /// `mirror` applies the changes the new tree's watcher journaled meanwhile. A seed cut short (a crash) is
    /// started again.
    public func seedReverse(from forward: Ledger) throws -> (entries: Int, queued: Int, removed: Int) {
        let ledger = try openLedger(create: true)
        if let job = try ledger.job(), job.phase == .ready { return (0, 0, 0) }
        if try ledger.job() == nil {
            try ledger.createJob(name: plan.name, planIdentity: plan.identity, chunkSize: plan.copy.chunkSize)
        }
        try ledger.clearManifest()
        let writer = ledger.manifestWriter()
        var filter = EntryFilter(plan: plan, destination: destination)
        var entries = 0
        var queued = 0
        func add(_ e: Entry) throws {
            let before = try forward.item(path: e.path)
            let same =
                before.map { f in
                    f.state == .done && f.entry.kind == e.kind && f.entry.mode == e.mode && f.entry.linkTarget == e.linkTarget
                        && (e.kind == .directory || (f.entry.size == e.size && f.entry.mtimeNs == e.mtimeNs))
                } ?? false
            entries += 1
            if !same { queued += 1 }
            try writer.add(e, state: same ? .done : .pending)
        }
        if let top = try source.stat("") { try add(top) }
        try source.walk(
            { e in
                switch filter.classify(e) {
                case .copy(let kept): try add(kept)
                case .refuse(let why): try ledger.recordSkipped(SkippedEntry(path: e.path, reason: why, category: .refused))
                case .skip(let why): try ledger.recordSkipped(SkippedEntry(path: e.path, reason: why, category: .policy))
                }
            }, skipped: { s in try? ledger.recordSkipped(s) })
        // What the old tree still holds that went from the new one after the switch: known here as copied, so
        // that it can be removed like any entry that left this job's source.
        try writer.flush()
        var gone: [Entry] = []
        try forward.forEachItem(states: [.done]) { item in
            if try ledger.item(path: item.entry.path) == nil { gone.append(item.entry) }
        }
        for e in gone { try writer.add(e, state: .done) }
        try writer.flush()
        var removed = 0
        for e in gone.sorted(by: { $0.path.count > $1.path.count }) where try ledger.item(path: e.path)?.state == .done {
            removed += try removeGone(e.path, ledger: ledger)
        }
        try ledger.finishSnapshot(root: source.displayName, at: Date().timeIntervalSince1970)
        try ledger.setPhase(.ready, note: "seeded from the new tree after the cutover: \(entries) entries, \(queued) to copy back")
        return (entries, queued, removed)
    }

    /// The state of one application: the entry filter (its hard-link names), the manifest writer of new entries
    /// (one scan number for all), and the counts.
    final class MirrorContext {
        var filter: EntryFilter
        let ledger: Ledger
        var writer: Ledger.ManifestWriter?
        var summary = MirrorSummary()

        init(filter: EntryFilter, ledger: Ledger) {
            self.filter = filter
            self.ledger = ledger
        }

        func add(_ e: Entry) throws {
            if writer == nil { writer = ledger.manifestWriter(scan: try ledger.beginScan()) }
            try writer?.add(e)
            // Flushed at once: a later look at the same path (a hard link's first name) must find it.
            try writer?.flush()
        }
    }

    /// One path, looked at again: queued when new or changed, removed (with everything under it) when gone.
    private func look(_ path: String, _ c: MirrorContext) throws {
        guard let found = try source.stat(path) else {
            c.summary.removed += try removeGone(path, ledger: c.ledger)
            return
        }
        let item = try c.ledger.item(path: path)
        if found.kind == .directory, item == nil || item?.state == .deleted || item?.entry.kind != .directory {
            // A directory that appeared: its contents may never have been seen one by one.
            return try rescan(path, c)
        }
        if let item, item.entry.kind == .directory, found.kind != .directory {
            // A directory replaced by something else: what was beneath it is gone.
            c.summary.removed += try removeGone(path, ledger: c.ledger, keepTop: true)
        }
        try queue(found, c)
    }

    /// A subtree listed again: everything in it queued when new or changed, and what the ledger holds beneath
    /// it that the listing no longer shows removed.
    private func rescan(_ root: String, _ c: MirrorContext) throws {
        var seen: Set<String> = []
        func visit(_ e: Entry) throws {
            seen.insert(e.path)
            try queue(e, c)
        }
        // The whole tree's walk lists what is beneath the root, not the root itself.
        if root.isEmpty, let top = try source.stat("") { try visit(top) }
        if let walker = source as? any SubtreeWalking {
            try walker.walk(under: root, visit, skipped: { s in try? c.ledger.recordSkipped(s) })
        } else {
            try source.walk({ e in if root.isEmpty || e.path == root || e.path.hasPrefix(root + "/") { try visit(e) } }, skipped: { _ in })
        }
        for item in try c.ledger.items(under: root) where !seen.contains(item.entry.path) {
            if item.state == .deleted || item.state == .vanished { continue }
            c.summary.removed += try removeGone(item.entry.path, ledger: c.ledger)
        }
    }

    /// Queues one entry found in the source when the ledger does not hold it as it is now.
    private func queue(_ found: Entry, _ c: MirrorContext) throws {
        let ledger = c.ledger
        if found.kind == .file && found.links > 1, c.filter.firstNames[found.inode] == nil {
            // A new name of a file the tree already holds: a hard link to it, as the snapshot would have found. Its
            // first name is the group's file if the ledger has one, else a name already linked at the destination
            // (the file's own name may have moved or gone, leaving only links).
            let names = try ledger.names(inode: found.inode, notAt: found.path)
            let candidates = names.filter { $0.entry.kind == .file } + names.filter { $0.entry.kind == .hardlink && $0.state == .done }
            if let first = candidates.first(where: { (try? source.stat($0.entry.path))??.inode == found.inode }) {
                c.filter.firstNames[found.inode] = first.entry.path
            }
        }
        let e: Entry
        switch c.filter.classify(found) {
        case .copy(let kept): e = kept
        case .refuse(let why):
            try ledger.recordSkipped(SkippedEntry(path: found.path, reason: why, category: .refused))
            return
        case .skip(let why):
            try ledger.recordSkipped(SkippedEntry(path: found.path, reason: why, category: .policy))
            return
        }
        if let item = try ledger.item(path: e.path) {
            let old = item.entry
            guard
                item.state == .vanished || item.state == .deleted || item.state == .failed || e.changed(comparedTo: old)
                    || e.mode != old.mode || e.uid != old.uid || e.gid != old.gid || e.kind != old.kind || e.linkTarget != old.linkTarget
                    || e.xattrs != old.xattrs
            else { return }
            try ledger.requeue(item.id, entry: e)
            c.summary.changed += 1
        } else {
            try c.add(e)
            c.summary.added += 1
        }
        if found.kind == .file && found.links > 1 { try regroup(found, except: e.path, c) }
    }

    /// A change through one name of a hard-link group (or a new name of it) is a change of all: the destination
    /// writes a changed file as a new file, so the group's file is copied again where the source's bytes moved
    /// on, and its other names are linked again.
    ///
    /// The group is made whole again around its first name (`firstNames`, as `queue` chose it): that name is the
    /// file (copied again when its bytes moved on, or when it was a link before), and every other name still in
    /// the group is a link to it, whatever it pointed at before (a first name that moved or went leaves links to
    /// a name the group no longer has). A name no longer of this inode is left to its own event.
    private func regroup(_ found: Entry, except path: String, _ c: MirrorContext) throws {
        let first = c.filter.firstNames[found.inode] ?? path
        for other in try c.ledger.names(inode: found.inode, notAt: path) {
            guard var now = try source.stat(other.entry.path), now.inode == found.inode, now.kind == .file else { continue }
            if other.entry.path == first {
                if other.entry.kind == .file {
                    guard now.changed(comparedTo: other.entry) else { continue }
                    now.links = other.entry.links
                }
                try c.ledger.requeue(other.id, entry: now)
            } else {
                now.kind = .hardlink
                now.linkTarget = first
                try c.ledger.requeue(other.id, entry: now)
            }
        }
    }

    /// Removes `path` and everything the ledger holds beneath it at the destination, children first; returns
    /// how many entries went.
    private func removeGone(_ path: String, ledger: Ledger, keepTop: Bool = false) throws -> Int {
        let tag = try ledger.partialTag()
        var removed: [Int64] = []
        for item in try ledger.items(under: path) where item.state != .deleted {
            if keepTop && item.entry.path == path { continue }
            if item.entry.kind == .file { try? destination.discardPartial(for: item.entry.path, token: "\(tag).\(item.id)") }
            try destination.remove(item.entry.path, kind: item.entry.kind == .hardlink ? .file : item.entry.kind)
            removed.append(item.id)
        }
        try ledger.setState(removed, .deleted, error: "removed from the source")
        return removed.count
    }
}
