public import FerryCore
internal import CFerrySys
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A directory tree on a local filesystem. Every path is resolved component by component from the root's
/// descriptor with `O_NOFOLLOW`, so no symbolic link in the tree, old or swapped in later, leads a read or a
/// write outside it.
public final class LocalStore: Store, @unchecked Sendable {
    // @unchecked: the root path is immutable; the cached root descriptor is behind a Mutex.
    public let root: String
    public var displayName: String { "fs:\(root)" }
    private let cachedRoot = Mutex<Int32>(-1)

    /// When set, a file is published only if its name is still free; when something else created it meanwhile
    /// (a live daemon), this is called with the staged file's and the existing file's full paths instead of
    /// replacing it, and the staged file is removed afterwards.
    public let onExisting: (@Sendable (_ staged: String, _ existing: String) throws -> Void)?

    public init(root: String, onExisting: (@Sendable (_ staged: String, _ existing: String) throws -> Void)? = nil) {
        self.root = root
        self.onExisting = onExisting
    }

    deinit {
        cachedRoot.withLock { if $0 >= 0 { Glibc.close($0) } }
    }

    /// The root's descriptor, opened once and shared by all threads (openat on one fd is thread-safe).
    private func rootFD() throws -> Int32 {
        try cachedRoot.withLock { fd in
            if fd >= 0 { return fd }
            let opened = retryEINTR { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            if opened < 0 { throw SystemCallError("open", errno: errno, path: root) }
            fd = opened
            return opened
        }
    }

    /// Opens `path` below the root in one call, refusing symlinks anywhere on the way. Returns nil when the
    /// kernel has no openat2 (the caller walks components instead).
    private func openBeneath(_ path: String, _ flags: Int32) throws -> Int32? {
        let fd = ferry_open_beneath(try rootFD(), path, flags, 0)
        if fd >= 0 { return fd }
        if errno == ENOSYS || errno == EPERM { return nil }  // EPERM: a seccomp filter refusing openat2
        return fd
    }

    /// Prefix of partial files; the walk never lists them.
    public static let partialPrefix = ".ferry-"
    public static let partialSuffix = ".part"

    // MARK: - descriptors

    private func openRoot() throws -> Int32 {
        let fd = retryEINTR { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        if fd < 0 { throw SystemCallError("open", errno: errno, path: root) }
        return fd
    }

    /// Opens the directory holding `path` (relative), optionally creating missing directories (mode 0700 until
    /// `finishDirectory` applies the real mode). Returns the descriptor and the last component.
    private func openParent(of path: String, create: Bool) throws -> (fd: Int32, name: String)? {
        guard PathUtil.isSafeRelative(path) else {
            throw FerryError(.unsafePath, "refusing unsafe path \"\(path)\"")
        }
        var comps = path.split(separator: "/").map(String.init)
        let name = comps.removeLast()
        if comps.isEmpty {
            let fd = dup(try rootFD())
            if fd < 0 { throw SystemCallError("dup", errno: errno, path: root) }
            return (fd, name)
        }
        if let fd = try openBeneath(comps.joined(separator: "/"), O_RDONLY | O_DIRECTORY | O_CLOEXEC) {
            if fd >= 0 { return (fd, name) }
            let e = errno
            if e == ELOOP || e == EXDEV {
                throw FerryError(.unsafePath, "\"\(path)\": a directory on the way is a symlink (a symlink is never followed)")
            }
            if e == ENOTDIR {
                throw FerryError(.unsafePath, "\"\(path)\": a component on the way is not a directory")
            }
            if e != ENOENT { throw SystemCallError("open", errno: e, path: comps.joined(separator: "/")) }
            if !create { return nil }
            // Missing directories: fall through and create them component by component.
        }
        var fd = try openRoot()
        for comp in comps {
            var next = retryEINTR { openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            if next < 0 && errno == ENOENT && create {
                if mkdirat(fd, comp, 0o700) != 0 && errno != EEXIST {
                    let e = errno
                    close(fd)
                    throw SystemCallError("mkdir", errno: e, path: comp)
                }
                next = retryEINTR { openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            }
            let e = errno
            close(fd)
            if next < 0 {
                if e == ENOENT && !create { return nil }
                if e == ELOOP || e == ENOTDIR {
                    throw FerryError(
                        .unsafePath, "\"\(path)\": component \"\(comp)\" is not a directory (a symlink is never followed)")
                }
                throw SystemCallError("open", errno: e, path: comps.joined(separator: "/"))
            }
            fd = next
        }
        return (fd, name)
    }

    public func prepareRoot() throws {
        var path = ""
        for comp in root.split(separator: "/") {
            path += "/" + comp
            if mkdir(path, 0o755) != 0 && errno != EEXIST {
                throw SystemCallError("mkdir", errno: errno, path: path)
            }
        }
        guard PathUtil.isDirectory(root) else { throw FerryError(.destinationIO, "\(root) is not a directory") }
    }

    // MARK: - listing

    public func walk(_ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        let fd = try openRoot()
        try walkDirectory(fd: fd, prefix: "", visit: visit, skipped: skipped)
    }

    /// Walks one directory (consuming `fd`), entries sorted by name, subdirectories after their entry.
    private func walkDirectory(
        fd: Int32, prefix: String, visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void
    ) throws {
        guard let dir = fdopendir(fd) else {
            let e = errno
            close(fd)
            throw SystemCallError("opendir", errno: e, path: prefix.isEmpty ? root : prefix)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 { throw SystemCallError("readdir", errno: errno, path: prefix) }
                break
            }
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            if name.hasPrefix(Self.partialPrefix) && name.hasSuffix(Self.partialSuffix) { continue }
            names.append(name)
        }
        names.sort { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let dfd = dirfd(dir)
        for name in names {
            let rel = prefix.isEmpty ? name : prefix + "/" + name
            var st = Glibc.stat()
            if fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                if errno == ENOENT { continue }  // vanished between readdir and stat
                skipped(SkippedEntry(path: rel, reason: SystemCallError("stat", errno: errno).description))
                continue
            }
            guard var entry = Self.entry(rel, st) else {
                skipped(SkippedEntry(path: rel, reason: "not a regular file, directory or symlink (device, fifo or socket)"))
                continue
            }
            if entry.kind == .symlink {
                guard let target = readLink(dfd, name) else {
                    skipped(SkippedEntry(path: rel, reason: SystemCallError("readlink", errno: errno).description))
                    continue
                }
                entry.linkTarget = target
            }
            try visit(entry)
            if entry.kind == .directory {
                let sub = retryEINTR { openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
                if sub < 0 {
                    if errno == ENOENT { continue }
                    skipped(SkippedEntry(path: rel, reason: SystemCallError("open directory", errno: errno).description))
                    continue
                }
                try walkDirectory(fd: sub, prefix: rel, visit: visit, skipped: skipped)
            }
        }
    }

    private func readLink(_ dfd: Int32, _ name: String) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlinkat(dfd, name, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func entry(_ path: String, _ st: stat) -> Entry? {
        let kind: EntryKind
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .file
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        default: return nil
        }
        return Entry(
            path: path, kind: kind, size: kind == .file ? Int64(st.st_size) : 0,
            mtimeNs: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
            mode: UInt32(st.st_mode & 0o7777), inode: UInt64(st.st_ino), uid: st.st_uid, gid: st.st_gid)
    }

    public func stat(_ path: String) throws -> Entry? {
        if path.isEmpty {
            var st = Glibc.stat()
            guard fstatat(AT_FDCWD, root, &st, 0) == 0 else { return nil }
            return Self.entry("", st)
        }
        guard PathUtil.isSafeRelative(path) else { throw FerryError(.unsafePath, "refusing unsafe path \"\(path)\"") }
        if let fd = try openBeneath(path, ferry_o_path() | O_NOFOLLOW | O_CLOEXEC) {
            if fd < 0 {
                switch errno {
                case ENOENT, ENOTDIR: return nil
                case ELOOP, EXDEV: return try statSlow(path)  // the parent path holds a symlink, or the entry is one
                default: throw SystemCallError("open", errno: errno, path: path)
                }
            }
            defer { close(fd) }
            var st = Glibc.stat()
            guard fstat(fd, &st) == 0 else { throw SystemCallError("fstat", errno: errno, path: path) }
            guard var e = Self.entry(path, st) else { return nil }
            if e.kind == .symlink { e.linkTarget = readLink(fd, "") }
            return e
        }
        return try statSlow(path)
    }

    private func statSlow(_ path: String) throws -> Entry? {
        guard let (fd, name) = try openParent(of: path, create: false) else { return nil }
        defer { close(fd) }
        var st = Glibc.stat()
        if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
            if errno == ENOENT { return nil }
            throw SystemCallError("stat", errno: errno, path: path)
        }
        guard var e = Self.entry(path, st) else { return nil }
        if e.kind == .symlink { e.linkTarget = readLink(fd, name) }
        return e
    }

    // MARK: - reading

    public func openReader(_ path: String) throws -> (any ObjectReader)? {
        guard PathUtil.isSafeRelative(path) else { throw FerryError(.unsafePath, "refusing unsafe path \"\(path)\"") }
        if let fd = try openBeneath(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) {
            if fd >= 0 { return LocalReader(fd: fd, path: path) }
            switch errno {
            case ENOENT, ENOTDIR: return nil
            case ELOOP, EXDEV: throw FerryError(.unsafePath, "\"\(path)\" is now a symlink or passes one; not followed")
            default: throw SystemCallError("open", errno: errno, path: path)
            }
        }
        guard let (dfd, name) = try openParent(of: path, create: false) else { return nil }
        defer { close(dfd) }
        let fd = retryEINTR { openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        if fd < 0 {
            if errno == ENOENT { return nil }
            if errno == ELOOP { throw FerryError(.unsafePath, "\"\(path)\" is now a symlink; not followed") }
            throw SystemCallError("open", errno: errno, path: path)
        }
        return LocalReader(fd: fd, path: path)
    }

    // MARK: - writing

    static func partialName(_ token: String) -> String { partialPrefix + token + partialSuffix }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return nil }
        let tmp = Self.partialName(token)
        let flags = O_WRONLY | O_NOFOLLOW | O_CLOEXEC | (resume ? 0 : O_CREAT | O_TRUNC)
        let fd = retryEINTR { openat(dfd, tmp, flags, 0o600) }
        if fd < 0 {
            let e = errno
            close(dfd)
            if resume && e == ENOENT { return nil }
            throw SystemCallError("create", errno: e, path: PathUtil.directory(of: entry.path) + "/" + tmp)
        }
        let w = LocalWriter(dirFD: dfd, fd: fd, tmpName: tmp, finalName: name, path: entry.path)
        if let onExisting {
            let dir = root + "/" + PathUtil.directory(of: entry.path)
            let existing = root + "/" + entry.path
            w.onExisting = { try onExisting(dir + "/" + tmp, existing) }
        }
        return w
    }

    public func makeDirectory(_ entry: Entry) throws {
        if entry.path.isEmpty { return }
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return }
        defer { close(dfd) }
        if mkdirat(dfd, name, 0o700) != 0 {
            let e = errno
            guard e == EEXIST else { throw SystemCallError("mkdir", errno: e, path: entry.path) }
            var st = Glibc.stat()
            guard fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw SystemCallError("stat", errno: errno, path: entry.path)
            }
            if st.st_mode & S_IFMT != S_IFDIR {
                // A file or link stands where the source has a directory: replace it.
                guard unlinkat(dfd, name, 0) == 0, mkdirat(dfd, name, 0o700) == 0 else {
                    throw SystemCallError("replace with directory", errno: errno, path: entry.path)
                }
            }
        }
    }

    public func finishDirectory(_ entry: Entry) throws {
        let fd: Int32
        if entry.path.isEmpty {
            fd = try openRoot()
        } else {
            guard let (dfd, name) = try openParent(of: entry.path, create: false) else { return }
            fd = retryEINTR { openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            close(dfd)
            if fd < 0 { throw SystemCallError("open directory", errno: errno, path: entry.path) }
        }
        defer { close(fd) }
        try Self.applyMetadata(fd: fd, entry, path: entry.path)
    }

    public func makeSymlink(_ entry: Entry) throws {
        guard let target = entry.linkTarget else { throw FerryError(.other, "symlink \(entry.path) has no target") }
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return }
        defer { close(dfd) }
        let tmp = Self.partialName("link-\(UInt32.random(in: 0...UInt32.max))")
        guard symlinkat(target, dfd, tmp) == 0 else { throw SystemCallError("symlink", errno: errno, path: entry.path) }
        if isRoot { _ = fchownat(dfd, tmp, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) }
        var times = [timespec(tv_sec: 0, tv_nsec: ferry_utime_omit()), Self.timespecOf(entry.mtimeNs)]
        _ = utimensat(dfd, tmp, &times, AT_SYMLINK_NOFOLLOW)
        try Self.replace(dfd: dfd, tmp: tmp, name: name, path: entry.path)
    }

    public func remove(_ path: String, kind: EntryKind) throws {
        guard let (dfd, name) = try openParent(of: path, create: false) else { return }
        defer { close(dfd) }
        if unlinkat(dfd, name, kind == .directory ? AT_REMOVEDIR : 0) != 0 && errno != ENOENT {
            throw SystemCallError("remove", errno: errno, path: path)
        }
    }

    public func syncAll() throws {
        let fd = try openRoot()
        defer { close(fd) }
        if ferry_syncfs(fd) != 0 { throw SystemCallError("syncfs", errno: errno, path: root) }
    }

    public func discardPartial(for path: String, token: String) throws {
        guard PathUtil.isSafeRelative(path), let (dfd, _) = try? openParent(of: path, create: false) else { return }
        defer { close(dfd) }
        _ = unlinkat(dfd, Self.partialName(token), 0)
    }

    // MARK: - helpers shared by writers

    static func timespecOf(_ ns: Int64) -> timespec {
        var sec = ns / 1_000_000_000
        var nsec = ns % 1_000_000_000
        if nsec < 0 {
            sec -= 1
            nsec += 1_000_000_000
        }
        return timespec(tv_sec: Int(sec), tv_nsec: Int(nsec))
    }

    static func applyMetadata(fd: Int32, _ entry: Entry, path: String) throws {
        if isRoot, fchown(fd, entry.uid, entry.gid) != 0 {
            throw SystemCallError("chown", errno: errno, path: path)
        }
        if fchmod(fd, mode_t(entry.mode)) != 0 { throw SystemCallError("chmod", errno: errno, path: path) }
        var times = [timespec(tv_sec: 0, tv_nsec: ferry_utime_omit()), timespecOf(entry.mtimeNs)]
        if futimens(fd, &times) != 0 { throw SystemCallError("utimens", errno: errno, path: path) }
    }

    /// Renames `tmp` over `name`; an empty directory in the way is removed first.
    static func replace(dfd: Int32, tmp: String, name: String, path: String) throws {
        if renameat(dfd, tmp, dfd, name) == 0 { return }
        let e = errno
        if e == EISDIR || e == ENOTEMPTY || e == EEXIST {
            if unlinkat(dfd, name, AT_REMOVEDIR) == 0, renameat(dfd, tmp, dfd, name) == 0 { return }
            _ = unlinkat(dfd, tmp, 0)
            throw FerryError(.destinationIO, "cannot replace \(path): a non-empty directory is in the way")
        }
        _ = unlinkat(dfd, tmp, 0)
        throw SystemCallError("rename", errno: e, path: path)
    }
}

final class LocalReader: ObjectReader {
    private var fd: Int32
    let path: String

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close() }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("read", errno: errno, path: path)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    func currentEntry() throws -> Entry {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, let e = LocalStore.entry(path, st) else {
            throw SystemCallError("fstat", errno: errno, path: path)
        }
        return e
    }

    func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }
}

final class LocalWriter: ObjectWriter {
    private let dirFD: Int32
    private var fd: Int32
    private let tmpName: String
    private let finalName: String
    private let path: String

    init(dirFD: Int32, fd: Int32, tmpName: String, finalName: String, path: String) {
        self.dirFD = dirFD
        self.fd = fd
        self.tmpName = tmpName
        self.finalName = finalName
        self.path = path
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
        Glibc.close(dirFD)
    }

    var onExisting: (() throws -> Void)?

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("write", errno: errno, path: path)
            }
            done += n
        }
    }

    func makeDurable() throws {
        if fdatasync(fd) != 0 { throw SystemCallError("fdatasync", errno: errno, path: path) }
    }

    func publish(_ entry: Entry) throws {
        if ftruncate(fd, off_t(entry.size)) != 0 { throw SystemCallError("truncate", errno: errno, path: path) }
        try LocalStore.applyMetadata(fd: fd, entry, path: path)
        Glibc.close(fd)
        fd = -1
        if let onExisting {
            if ferry_rename_noreplace(dirFD, tmpName, dirFD, finalName) == 0 { return }
            let e = errno
            guard e == EEXIST else {
                _ = unlinkat(dirFD, tmpName, 0)
                throw SystemCallError("rename", errno: e, path: path)
            }
            defer { _ = unlinkat(dirFD, tmpName, 0) }
            try onExisting()
            return
        }
        try LocalStore.replace(dfd: dirFD, tmp: tmpName, name: finalName, path: path)
    }

    func discard() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        _ = unlinkat(dirFD, tmpName, 0)
    }
}

/// Ownership is preserved only when running as root (anyone else cannot chown).
let isRoot = geteuid() == 0

@inline(__always)
func retryEINTR(_ body: () -> Int32) -> Int32 {
    while true {
        let r = body()
        if r >= 0 || errno != EINTR { return r }
    }
}
