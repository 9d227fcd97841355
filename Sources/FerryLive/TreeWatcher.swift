import CFerrySys
import FerryCore
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the watcher saw, as the tap journals it.
enum WatchEvent: Equatable {
    /// Look at this path again (created, written and closed, metadata changed, moved here).
    case changed(String)
    /// This path is gone (deleted, or moved away).
    case gone(String)
    /// Rescan this subtree whole (a directory that appeared or moved in: its contents were not watched yet; a
    /// directory whose watch could not be added).
    case subtree(String)
    /// Events were lost (the kernel's queue overflowed, or the root itself moved): rescan the whole tree.
    case lost(String)
}

/// How the tap watches the source tree: `auto` is fanotify where the kernel and the privileges allow it, else
/// inotify.
public enum WatchBackend: String, Sendable, CaseIterable {
    case auto, fanotify, inotify
}

/// A watcher of a directory tree: it reports what changed as `WatchEvent`s, from a thread of its own, in the
/// order the kernel saw the changes.
protocol TreeWatching: AnyObject, Sendable {
    /// What watches, for the log and the status ("fanotify, 1 filesystem", "inotify, 120 directories").
    var summary: String { get }
    /// Directories (inotify) or filesystems (fanotify) that could not be watched.
    var watchFailures: Int { get }
    /// Whether `path` is open for writing (written since it was last closed).
    func isBeingWritten(_ path: String) -> Bool
    func start() throws
    func stop()
}

/// Starts the watcher `backend` asks for. With `auto`, fanotify is tried first and inotify is the fallback; the
/// reason fanotify could not be used is returned with it, for the log.
func startWatcher(
    _ backend: WatchBackend, root: String, emit: @escaping @Sendable (WatchEvent) -> Void
) throws -> (watcher: any TreeWatching, fallback: String?) {
    if backend != .inotify {
        let f = FanotifyWatcher(root: root, emit: emit)
        do {
            try f.start()
            return (f, nil)
        } catch {
            if backend == .fanotify { throw error }
            let w = TreeWatcher(root: root, emit: emit)
            try w.start()
            return (w, "\(error)")
        }
    }
    let w = TreeWatcher(root: root, emit: emit)
    try w.start()
    return (w, nil)
}

/// Reads a kernel notification descriptor (inotify, fanotify) on a thread of its own until `stop`: the bytes of
/// each read go to `handle`, on that thread. A pipe wakes the thread for `stop`, which closes the descriptor.
final class EventReader: @unchecked Sendable {
    // @unchecked: `wake` and `thread` are set by `start` and read by `stop`, which the owner calls in turn.
    private let fd: Int32
    private var wake: [Int32] = [-1, -1]
    private let stopping = Mutex(false)
    private var thread: Thread?

    init(fd: Int32) { self.fd = fd }

    func start(_ handle: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) throws {
        guard pipe(&wake) == 0 else { throw SystemCallError("pipe", errno: errno) }
        let t = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 256 << 10)
            while !stopping.withLock({ $0 }) {
                var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake[0], events: Int16(POLLIN), revents: 0)]
                let ready = poll(&fds, 2, 1000)
                if ready <= 0 || fds[1].revents != 0 { continue }
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { continue }
                buffer.withUnsafeBytes { handle(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        }
        t.name = "ferry-watch"
        t.start()
        thread = t
    }

    func stop() {
        stopping.withLock { $0 = true }
        var one: UInt8 = 1
        _ = write(wake[1], &one, 1)
        while thread?.isFinished == false { usleep(10_000) }
        close(fd)
        close(wake[0])
        close(wake[1])
    }
}

/// Watches a directory tree with inotify: one watch per directory (recursive), added as directories appear.
/// The number of watches is bounded by `fs.inotify.max_user_watches` (one per directory); a directory that
/// cannot be watched is reported (`.subtree`, with `watchFailures` counted) so it is rescanned rather than
/// silently missed, and a queue overflow is reported as `.lost`.
///
/// A file is being written between its first IN_MODIFY and its IN_CLOSE_WRITE: `isBeingWritten` says so, and
/// the mirror leaves such a path for later.
final class TreeWatcher: TreeWatching, @unchecked Sendable {
    // @unchecked: `wds` and `paths` are used by the reading thread only (and by `start` before it runs);
    // `writing` and the counters are behind Mutexes.
    let root: String
    private let emit: @Sendable (WatchEvent) -> Void
    private var fd: Int32 = -1
    private var wds: [Int32: String] = [:]
    private var paths: [String: Int32] = [:]
    private let writing = Mutex<Set<String>>([])
    private let failures = Mutex<Int>(0)
    private var reader: EventReader?

    static let mask: UInt32 =
        FERRY_IN_MODIFY | FERRY_IN_ATTRIB | FERRY_IN_CLOSE_WRITE | FERRY_IN_MOVED_FROM | FERRY_IN_MOVED_TO | FERRY_IN_CREATE
        | FERRY_IN_DELETE | FERRY_IN_DELETE_SELF | FERRY_IN_MOVE_SELF | FERRY_IN_ONLYDIR | FERRY_IN_DONT_FOLLOW
        | FERRY_IN_EXCL_UNLINK

    init(root: String, emit: @escaping @Sendable (WatchEvent) -> Void) {
        self.root = root
        self.emit = emit
    }

    var watchFailures: Int { failures.withLock { $0 } }
    var watchedDirectories: Int { wds.count }
    var summary: String { "inotify, \(watchedDirectories) directories" }

    func isBeingWritten(_ path: String) -> Bool { writing.withLock { $0.contains(path) } }

    /// Watches every directory of the tree, then reads events on a thread of its own.
    func start() throws {
        fd = ferry_inotify_init()
        guard fd >= 0 else { throw SystemCallError("inotify_init1", errno: errno) }
        watch("")
        let r = EventReader(fd: fd)
        do {
            try r.start { [self] bytes in events(bytes) }
        } catch {
            close(fd)
            throw error
        }
        reader = r
    }

    func stop() { reader?.stop() }

    private func absolute(_ rel: String) -> String { rel.isEmpty ? root : root + "/" + rel }

    /// Adds watches on `rel` and every directory beneath it (not through symlinks).
    private func watch(_ rel: String) {
        let wd = ferry_inotify_add_watch(fd, RawName.cString(absolute(rel)), Self.mask)
        if wd < 0 {
            if errno == ENOENT || errno == ENOTDIR { return }  // gone already: its removal is its own event
            failures.withLock { $0 += 1 }
            emit(.subtree(rel))
            return
        }
        if let old = wds[wd], old != rel { paths[old] = nil }
        wds[wd] = rel
        paths[rel] = wd
        guard let dir = opendir(RawName.cString(absolute(rel))) else { return }
        defer { closedir(dir) }
        var subdirectories: [String] = []
        while let ent = readdir(dir) {
            let name: [UInt8] = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: UInt8.self, capacity: 256) {
                    Array(UnsafeBufferPointer(start: $0, count: strlen(UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))))
                }
            }
            if name == [46] || name == [46, 46] { continue }
            let child = rel.isEmpty ? RawName.decode(name) : rel + "/" + RawName.decode(name)
            var st = stat()
            if lstat(RawName.cString(absolute(child)), &st) == 0 && st.st_mode & S_IFMT == S_IFDIR { subdirectories.append(child) }
        }
        for s in subdirectories { watch(s) }
    }

    /// Forgets the watches on `rel` and beneath it (moved away or removed).
    private func unwatch(_ rel: String) {
        for (path, wd) in paths where path == rel || path.hasPrefix(rel + "/") {
            _ = ferry_inotify_rm_watch(fd, wd)
            paths[path] = nil
            wds[wd] = nil
        }
    }

    /// The inotify events of one read.
    private func events(_ buffer: UnsafeRawBufferPointer) {
        let n = buffer.count
        var at = 0
        while at + 16 <= n {
            let wd = buffer.load(fromByteOffset: at, as: Int32.self)
            let mask = buffer.load(fromByteOffset: at + 4, as: UInt32.self)
            let len = Int(buffer.load(fromByteOffset: at + 12, as: UInt32.self))
            let nameBytes = Array(buffer[(at + 16)..<min(n, at + 16 + len)].prefix { $0 != 0 })
            at += 16 + len
            handle(wd: wd, mask: mask, name: nameBytes)
        }
    }

    private func handle(wd: Int32, mask: UInt32, name: [UInt8]) {
        if mask & FERRY_IN_Q_OVERFLOW != 0 {
            // Closes may be among what was lost: no file is known to be open any more (the rescan reads them as
            // they are; a file still being written changes again and comes back).
            writing.withLock { $0.removeAll() }
            // Directories made while events were lost are not watched yet: every directory is watched again
            // (an existing watch is kept), then the whole tree is rescanned.
            watch("")
            emit(.lost("the kernel's inotify queue overflowed (fs.inotify.max_queued_events)"))
            return
        }
        guard let dir = wds[wd] else { return }
        if mask & FERRY_IN_IGNORED != 0 {
            wds[wd] = nil
            if paths[dir] == wd { paths[dir] = nil }
            return
        }
        if mask & FERRY_IN_MOVE_SELF != 0 && dir.isEmpty {
            emit(.lost("the watched root itself was moved"))
            return
        }
        guard !name.isEmpty else { return }  // an event on the watched directory itself
        let path = dir.isEmpty ? RawName.decode(name) : dir + "/" + RawName.decode(name)
        let isDirectory = mask & FERRY_IN_ISDIR != 0
        if mask & (FERRY_IN_CREATE | FERRY_IN_MOVED_TO) != 0 && isDirectory {
            watch(path)
            emit(.subtree(path))
            return
        }
        if mask & FERRY_IN_MOVED_FROM != 0 || mask & FERRY_IN_DELETE != 0 {
            if isDirectory { unwatch(path) }
            writing.withLock { _ = $0.remove(path) }
            emit(.gone(path))
            return
        }
        if mask & FERRY_IN_MODIFY != 0 {
            writing.withLock { _ = $0.insert(path) }
            return
        }
        if mask & FERRY_IN_CLOSE_WRITE != 0 { writing.withLock { _ = $0.remove(path) } }
        if mask & (FERRY_IN_CREATE | FERRY_IN_MOVED_TO | FERRY_IN_CLOSE_WRITE | FERRY_IN_ATTRIB) != 0 { emit(.changed(path)) }
    }
}
