import CFerrySys
import FerryCore
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Watches a directory tree with fanotify (`FAN_REPORT_DFID_NAME`): one mark per filesystem, so there is no
/// per-directory watch and no watch limit, and a directory that appears is covered at once (no window before
/// its watch is added). Each event names its directory by file handle plus the entry's name; the handle is
/// turned into the directory's path as it is now (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH), and
/// events outside the tree (a filesystem mark sees the whole filesystem) are dropped.
///
/// Needs CAP_SYS_ADMIN and Linux 5.9; `start` throws otherwise (the tap then uses inotify). Filesystems mounted
/// beneath the root are marked too. The queue holds `fs.fanotify.max_queued_events` events; an overflow is
/// reported as `.lost`, like inotify's.
final class FanotifyWatcher: TreeWatching, @unchecked Sendable {
    // @unchecked: `mounts` and `paths` are set by `start` and then used by the reading thread only; `writing`
    // and the counters are behind Mutexes.
    let root: String
    private let emit: @Sendable (WatchEvent) -> Void
    private var fd: Int32 = -1
    /// The root's path as the kernel spells it (what /proc/self/fd shows), and a descriptor on it.
    private var realRoot: [UInt8] = []
    private var rootFd: Int32 = -1
    /// A descriptor on each marked filesystem beneath the root (by fanotify's fsid), to open handles through.
    private var mounts: [UInt64: Int32] = [:]
    /// Directory handles already turned into paths; forgotten when any directory moves or goes.
    private var paths: [[UInt8]: [UInt8]] = [:]
    private let writing = Mutex<Set<String>>([])
    private var reader: EventReader?

    static let mask: UInt64 =
        FERRY_FAN_MODIFY | FERRY_FAN_ATTRIB | FERRY_FAN_CLOSE_WRITE | FERRY_FAN_MOVED_FROM | FERRY_FAN_MOVED_TO | FERRY_FAN_CREATE
        | FERRY_FAN_DELETE | FERRY_FAN_MOVE_SELF | FERRY_FAN_ONDIR

    init(root: String, emit: @escaping @Sendable (WatchEvent) -> Void) {
        self.root = root
        self.emit = emit
    }

    var summary: String { "fanotify, \(mounts.count) filesystem\(mounts.count == 1 ? "" : "s")" }
    var watchFailures: Int { 0 }

    func isBeingWritten(_ path: String) -> Bool { writing.withLock { $0.contains(path) } }

    func start() throws {
        fd = ferry_fanotify_init()
        guard fd >= 0 else {
            let e = errno
            throw FerryError(
                .other,
                e == EPERM
                    ? "fanotify needs CAP_SYS_ADMIN (run the tap as root)"
                    : "fanotify with FAN_REPORT_DFID_NAME is not available (Linux 5.9 or later): \(String(cString: strerror(e)))")
        }
        do {
            rootFd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard rootFd >= 0 else { throw SystemCallError("open", errno: errno, path: root) }
            realRoot = try Self.path(of: rootFd)
            try mark(RawName.decode(realRoot), fd: rootFd)
            // Filesystems mounted beneath the root are other filesystems: each needs its own mark.
            for point in Self.mountPoints(beneath: RawName.decode(realRoot)) {
                let m = open(point, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                guard m >= 0 else { throw SystemCallError("open", errno: errno, path: point) }
                try mark(point, fd: m)
            }
            let r = EventReader(fd: fd)
            try r.start { [self] bytes in events(bytes) }
            reader = r
        } catch {
            close(fd)
            for m in mounts.values where m != rootFd { close(m) }
            if rootFd >= 0 { close(rootFd) }
            throw error
        }
    }

    func stop() {
        reader?.stop()
        for m in Set(mounts.values).union([rootFd]) { close(m) }
    }

    private func mark(_ path: String, fd dirFd: Int32) throws {
        var fsid: UInt64 = 0
        guard ferry_fsid(dirFd, &fsid) == 0 else { throw SystemCallError("fstatfs", errno: errno, path: path) }
        if mounts[fsid] != nil {
            // Another mount of a filesystem already marked (a bind mount): the one mark covers it.
            if dirFd != rootFd { close(dirFd) }
            return
        }
        guard ferry_fanotify_mark_filesystem(fd, path, Self.mask) == 0 else {
            let e = errno
            if dirFd != rootFd { close(dirFd) }
            throw FerryError(
                .other,
                "fanotify cannot mark the filesystem of \(path): \(String(cString: strerror(e)))"
                    + (e == EXDEV || e == ENODEV ? " (it reports no filesystem id)" : ""))
        }
        mounts[fsid] = dirFd
    }

    /// The path a descriptor's directory has now, as /proc/self/fd shows it (bytes).
    private static func path(of fd: Int32) throws -> [UInt8] {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count)
        guard n > 0 else { throw SystemCallError("readlink", errno: errno, path: "/proc/self/fd/\(fd)") }
        return buffer[0..<n].map { UInt8(bitPattern: $0) }
    }

    /// Mount points strictly beneath `root`, from /proc/self/mountinfo (field 5, with its octal escapes).
    static func mountPoints(beneath root: String) -> [String] {
        guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var points: [String] = []
        for line in info.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 4 else { continue }
            let point = unescape(String(fields[4]))
            if point.hasPrefix(root == "/" ? "/" : root + "/") && point != root { points.append(point) }
        }
        return points
    }

    /// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
    static func unescape(_ s: String) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 92, i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return RawName.decode(out)
    }

    /// The fanotify events of one read.
    private func events(_ buffer: UnsafeRawBufferPointer) {
        let base = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var offset: UInt = 0
        var event = ferry_fan_event()
        while true {
            let r = ferry_fanotify_next(base, UInt(buffer.count), &offset, &event)
            if r == 0 { break }
            if r < 0 {
                // Not what this kernel should send: what the buffer held is treated as lost.
                writing.withLock { $0.removeAll() }
                emit(.lost("an fanotify event could not be read"))
                continue
            }
            handle(event)
        }
    }

    private func handle(_ e: ferry_fan_event) {
        if e.mask & FERRY_FAN_Q_OVERFLOW != 0 {
            // As with inotify: closes may be among what was lost, so no file is known to be open any more.
            writing.withLock { $0.removeAll() }
            emit(.lost("the kernel's fanotify queue overflowed (fs.fanotify.max_queued_events)"))
            return
        }
        guard let handle = e.handle, let mountFd = mounts[e.fsid] else { return }
        let isDirectory = e.mask & FERRY_FAN_ONDIR != 0
        if isDirectory && e.mask & (FERRY_FAN_MOVED_FROM | FERRY_FAN_DELETE | FERRY_FAN_MOVED_TO | FERRY_FAN_MOVE_SELF) != 0 {
            // A directory moved or went: a handle known as a path may now have another.
            paths.removeAll(keepingCapacity: true)
        }
        guard let name = e.name else {
            // An event on a directory itself: only the root's own move matters (its path is no longer the tree's).
            if e.mask & FERRY_FAN_MOVE_SELF != 0, (try? Self.path(of: rootFd)) != realRoot { emit(.lost("the watched root itself was moved")) }
            return
        }
        guard let directory = relative(handle, mountFd: mountFd) else { return }
        let entry = RawName.decode(Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(name), count: Int(e.name_len))))
        let path = directory.isEmpty ? entry : directory + "/" + entry
        if isDirectory {
            // A directory that appeared or moved in: rescanned whole (it may hold what was never seen one by one).
            if e.mask & (FERRY_FAN_CREATE | FERRY_FAN_MOVED_TO) != 0 {
                emit(.subtree(path))
            } else if e.mask & (FERRY_FAN_DELETE | FERRY_FAN_MOVED_FROM) != 0 {
                emit(.gone(path))
            } else if e.mask & FERRY_FAN_ATTRIB != 0 {
                emit(.changed(path))
            }
            return
        }
        // fanotify merges the events of one entry that wait in its queue, so one mask can hold several changes:
        // any of them is a look at the entry again (the look finds it gone, or as it is now).
        if e.mask & (FERRY_FAN_DELETE | FERRY_FAN_MOVED_FROM) != 0 && e.mask & (FERRY_FAN_CREATE | FERRY_FAN_MOVED_TO) == 0 {
            writing.withLock { _ = $0.remove(path) }
            emit(.gone(path))
            return
        }
        if e.mask & FERRY_FAN_CLOSE_WRITE != 0 {
            writing.withLock { _ = $0.remove(path) }
        } else if e.mask & FERRY_FAN_MODIFY != 0 {
            writing.withLock { _ = $0.insert(path) }
        }
        if e.mask & (FERRY_FAN_CREATE | FERRY_FAN_MOVED_TO | FERRY_FAN_CLOSE_WRITE | FERRY_FAN_ATTRIB | FERRY_FAN_DELETE | FERRY_FAN_MOVED_FROM) != 0
        {
            emit(.changed(path))
        }
    }

    /// The tree-relative path of the directory `handle` names, or nil when it is outside the tree or gone (a
    /// directory that went is its own event, in its parent). Compared as bytes: names need not be UTF-8.
    private func relative(_ handle: UnsafeRawPointer, mountFd: Int32) -> String? {
        let length = 8 + Int(handle.loadUnaligned(as: UInt32.self))
        let key = Array(UnsafeRawBufferPointer(start: handle, count: length))
        let absolute: [UInt8]
        if let known = paths[key] {
            absolute = known
        } else {
            var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = buffer.withUnsafeMutableBytes {
                ferry_handle_path(mountFd, handle, $0.baseAddress!.assumingMemoryBound(to: CChar.self), UInt($0.count))
            }
            guard n > 0 else { return nil }
            absolute = Array(buffer[0..<n])
            if paths.count > 65_536 { paths.removeAll(keepingCapacity: true) }
            paths[key] = absolute
        }
        if absolute == realRoot { return "" }
        let prefix = realRoot == [47] ? realRoot : realRoot + [47]
        guard absolute.starts(with: prefix) else { return nil }
        return RawName.decode(Array(absolute[prefix.count...]))
    }
}
