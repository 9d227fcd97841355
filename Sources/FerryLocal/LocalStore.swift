internal import CFerrySys
public import FerryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A directory tree on a local filesystem. Every path is resolved component by component from the root's
/// descriptor with `O_NOFOLLOW`, so no symbolic link in the tree, old or swapped in later, leads a read or a
/// write outside it.
public final class LocalStore: Store, ChangeStamping, HardLinking, SpecialMaking, SubtreeWalking, FenceChecking, ExistingCopyFinding, PartialsKept,
    @unchecked Sendable
{
    // @unchecked: the root path is immutable; the cached root descriptor is behind a Mutex.
    public let root: String
    public var displayName: String { "fs:\(root)" }
    private let cachedRoot = Mutex<Int32>(-1)

    /// When set, a file is published only if its name is still free; when something else created it meanwhile
    /// (a live daemon), this is called with the staged file's and the existing file's full paths instead of
    /// replacing it, and the staged file is removed afterwards.
    public let onExisting: (@Sendable (_ staged: String, _ existing: String) throws -> Void)?

    /// `copy.symlinks: follow`: the walk lists what a link points to (file or directory) in its place, and reads
    /// go through links. Off by default: a link is then an entry of its own and is never followed.
    public let followSymlinks: Bool

    public init(
        root: String, followSymlinks: Bool = false,
        onExisting: (@Sendable (_ staged: String, _ existing: String) throws -> Void)? = nil
    ) {
        self.root = root
        self.followSymlinks = followSymlinks
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
        let name = RawName.cString(path)
        // A path longer than PATH_MAX is legal (built with openat); the kernel takes it only a component at a time.
        if name.count >= Int(PATH_MAX) { return nil }
        let base = try rootFD()
        if followSymlinks { return retryEINTR { openat(base, name, flags & ~O_NOFOLLOW) } }
        let fd = ferry_open_beneath(base, name, flags, 0)
        if fd >= 0 { return fd }
        if errno == ENOSYS || errno == EPERM || errno == ENAMETOOLONG { return nil }  // EPERM: a seccomp filter
        return fd
    }

    /// Partial files are named `.ferry-TOKEN.part` beside their final name. The engine's tokens carry a random
    /// tag of the job, so a user's own `.ferry-notes.part` never collides with one; the walk lists both like any
    /// other name, and verify reports a partial left behind as an extra.
    public static let partialPrefix = ".ferry-"
    public static let partialSuffix = ".part"

    /// Names that cannot coexist in a directory tree (`TreeNaming.refusalChecker`).
    public func refusalChecker() -> ((Entry) -> String?)? { TreeNaming.refusalChecker() }

    /// A live tree's fence (the fs-journal tap) has landed when its file is here.
    public func hasFence(_ token: FenceToken) throws -> Bool { try FenceFile.landed(token, in: self) }

    public func isOwnTemporary(_ path: String) -> Bool {
        let name = PathUtil.lastComponent(path)
        return name.hasPrefix(Self.partialPrefix) && name.hasSuffix(Self.partialSuffix)
    }

    // MARK: - descriptors

    private func openRoot() throws -> Int32 {
        let fd = retryEINTR { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        if fd < 0 { throw SystemCallError("open", errno: errno, path: root) }
        return fd
    }

    /// Opens the directory holding `path` (relative) beneath the root, never through a symlink, optionally
    /// creating missing directories (mode 0700 until `finishDirectory` applies the real mode). Returns the
    /// descriptor (the caller closes it) and the last component; nil when a directory is missing.
    public func openParent(of path: String, create: Bool) throws -> (fd: Int32, name: String)? {
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
        let follow = followSymlinks ? 0 : O_NOFOLLOW
        for comp in comps {
            let c = RawName.cString(comp)
            var next = retryEINTR { openat(fd, c, O_RDONLY | O_DIRECTORY | follow | O_CLOEXEC) }
            if next < 0 && errno == ENOENT && create {
                if mkdirat(fd, c, 0o700) != 0 && errno != EEXIST {
                    let e = errno
                    close(fd)
                    throw SystemCallError("mkdir", errno: e, path: RawName.display(comp))
                }
                next = retryEINTR { openat(fd, c, O_RDONLY | O_DIRECTORY | follow | O_CLOEXEC) }
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
        var st = Glibc.stat()
        var ancestors: [(UInt64, UInt64)] = []
        if fstat(fd, &st) == 0 { ancestors.append((UInt64(st.st_dev), UInt64(st.st_ino))) }
        try walkDirectory(fd: fd, prefix: "", ancestors: ancestors, visit: visit, skipped: skipped)
    }

    /// One directory and everything beneath it (a rescan of part of the tree), reached without following a
    /// symlink on the way.
    public func walk(under path: String, _ visit: (Entry) throws -> Void, skipped: (SkippedEntry) -> Void) throws {
        if path.isEmpty { return try walk(visit, skipped: skipped) }
        guard let top = try stat(path), top.kind == .directory else { return }
        guard let fd = try openDescriptor(path, O_RDONLY | O_DIRECTORY) else { return }
        var st = Glibc.stat()
        let ancestors: [(UInt64, UInt64)] = fstat(fd, &st) == 0 ? [(UInt64(st.st_dev), UInt64(st.st_ino))] : []
        try visit(top)
        try walkDirectory(fd: fd, prefix: path, ancestors: ancestors, visit: visit, skipped: skipped)
    }

    /// A name read from a directory: its string form (lossless, see RawName) and its bytes for syscalls.
    struct Name {
        var text: String
        var c: [CChar]
    }

    /// Walks one directory (consuming `fd`), entries sorted by name bytes, subdirectories after their entry.
    /// Every name is kept byte for byte; nothing that readdir returns is dropped without a report.
    private func walkDirectory(
        fd: Int32, prefix: String, ancestors: [(UInt64, UInt64)], visit: (Entry) throws -> Void,
        skipped: (SkippedEntry) -> Void
    ) throws {
        guard let dir = fdopendir(fd) else {
            let e = errno
            close(fd)
            throw SystemCallError("opendir", errno: e, path: prefix.isEmpty ? root : RawName.display(prefix))
        }
        defer { closedir(dir) }
        var names: [Name] = []
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 {
                    skipped(SkippedEntry(path: prefix, reason: SystemCallError("readdir", errno: errno).description + " (listing incomplete)"))
                }
                break
            }
            let c: [CChar] = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { p in Array(UnsafeBufferPointer(start: p, count: strlen(p) + 1)) }
            }
            if c.count == 2 && c[0] == 46 { continue }  // "."
            if c.count == 3 && c[0] == 46 && c[1] == 46 { continue }  // ".."
            names.append(Name(text: RawName.decode(c.dropLast().map { UInt8(bitPattern: $0) }), c: c))
        }
        names.sort { a, b in a.c.lexicographicallyPrecedes(b.c) { UInt8(bitPattern: $0) < UInt8(bitPattern: $1) } }
        let dfd = dirfd(dir)
        for name in names {
            let rel = prefix.isEmpty ? name.text : prefix + "/" + name.text
            var st = Glibc.stat()
            if fstatat(dfd, name.c, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                if errno == ENOENT { continue }  // removed between readdir and stat: it no longer exists
                skipped(SkippedEntry(path: rel, reason: SystemCallError("stat", errno: errno).description))
                continue
            }
            if followSymlinks && st.st_mode & S_IFMT == S_IFLNK {
                let target = readLink(dfd, name.c) ?? "?"
                var followed = Glibc.stat()
                if fstatat(dfd, name.c, &followed, 0) != 0 {
                    skipped(
                        SkippedEntry(
                            path: rel,
                            reason: "symlink to \(RawName.display(target)) cannot be followed (copy.symlinks: follow): "
                                + String(cString: strerror(errno))))
                    continue
                }
                st = followed
            }
            guard var entry = Self.entry(rel, st) else {
                skipped(SkippedEntry(path: rel, reason: "an entry of unknown type \(String(st.st_mode & S_IFMT, radix: 8))"))
                continue
            }
            if entry.kind == .symlink {
                guard let target = readLink(dfd, name.c) else {
                    skipped(SkippedEntry(path: rel, reason: SystemCallError("readlink", errno: errno).description))
                    continue
                }
                entry.linkTarget = target
            }
            if !entry.kind.isSpecial { entry.xattrs = Self.readXattrs(dfd, name.c) }
            if entry.kind == .directory {
                let id = (UInt64(st.st_dev), UInt64(st.st_ino))
                if ancestors.contains(where: { $0 == id }) {
                    skipped(SkippedEntry(path: rel, reason: "a followed symlink loops back to a directory above it"))
                    continue
                }
                try visit(entry)
                let follow = followSymlinks ? 0 : O_NOFOLLOW
                let sub = retryEINTR { openat(dfd, name.c, O_RDONLY | O_DIRECTORY | follow | O_CLOEXEC) }
                if sub < 0 {
                    if errno == ENOENT { continue }
                    skipped(
                        SkippedEntry(
                            path: rel, reason: SystemCallError("open directory", errno: errno).description + " (its contents are not listed)"))
                    continue
                }
                try walkDirectory(fd: sub, prefix: rel, ancestors: ancestors + [id], visit: visit, skipped: skipped)
            } else {
                try visit(entry)
            }
        }
    }

    /// The link's target, byte for byte (any length the kernel returns).
    private func readLink(_ dfd: Int32, _ name: [CChar]) -> String? {
        var size = 256
        while true {
            var buf = [CChar](repeating: 0, count: size)
            let n = readlinkat(dfd, name, &buf, buf.count)
            guard n >= 0 else { return nil }
            if n < buf.count { return RawName.decode(buf[0..<n].map { UInt8(bitPattern: $0) }) }
            size *= 4
            if size > 1 << 20 { return nil }
        }
    }

    /// Every extended attribute of `name` in `dfd` (ACLs included), sorted by name; empty when there are none
    /// or the filesystem has no xattrs.
    static func readXattrs(_ dfd: Int32, _ name: [CChar]) -> [ExtendedAttribute] {
        let n = ferry_llistxattrat(dfd, name, nil, 0)
        guard n > 0 else { return [] }
        var list = [CChar](repeating: 0, count: n + 1)
        let got = ferry_llistxattrat(dfd, name, &list, UInt(list.count))
        guard got > 0 else { return [] }
        var out: [ExtendedAttribute] = []
        var start = 0
        for i in 0..<got where list[i] == 0 {
            let attr = Array(list[start...i])
            start = i + 1
            let size = ferry_lgetxattrat(dfd, name, attr, nil, 0)
            guard size >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: max(size, 1))
            let read = ferry_lgetxattrat(dfd, name, attr, &value, UInt(value.count))
            guard read >= 0 else { continue }
            out.append(
                ExtendedAttribute(name: String(decoding: attr.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self), value: Array(value[0..<read]))
            )
        }
        return out.sorted { $0.name < $1.name }
    }

    static func entry(_ path: String, _ st: stat) -> Entry? {
        let kind: EntryKind
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .file
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        case S_IFIFO: kind = .fifo
        case S_IFSOCK: kind = .socket
        case S_IFCHR: kind = .charDevice
        case S_IFBLK: kind = .blockDevice
        default: return nil
        }
        var e = Entry(
            path: path, kind: kind, size: kind == .file ? Int64(st.st_size) : 0,
            mtimeNs: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
            mode: UInt32(st.st_mode & 0o7777), inode: UInt64(st.st_ino), uid: st.st_uid, gid: st.st_gid)
        if kind == .charDevice || kind == .blockDevice { e.rdev = UInt64(st.st_rdev) }
        if kind == .file {
            e.links = UInt32(truncatingIfNeeded: st.st_nlink)
            e.allocated = Int64(st.st_blocks) * 512
        }
        return e
    }

    public func stat(_ path: String) throws -> Entry? {
        if path.isEmpty {
            var st = Glibc.stat()
            guard fstatat(AT_FDCWD, root, &st, 0) == 0 else { return nil }
            return Self.entry("", st)
        }
        guard PathUtil.isSafeRelative(path) else { throw FerryError(.unsafePath, "refusing unsafe path \"\(RawName.display(path))\"") }
        if let fd = try openBeneath(path, ferry_o_path() | O_NOFOLLOW | O_CLOEXEC) {
            if fd < 0 {
                switch errno {
                case ENOENT, ENOTDIR: return nil
                case ELOOP, EXDEV: return try statSlow(path)  // the parent path holds a symlink, or the entry is one
                default: throw SystemCallError("open", errno: errno, path: RawName.display(path))
                }
            }
            defer { close(fd) }
            var st = Glibc.stat()
            guard fstat(fd, &st) == 0 else { throw SystemCallError("fstat", errno: errno, path: RawName.display(path)) }
            guard var e = Self.entry(path, st) else { return nil }
            if e.kind == .symlink { e.linkTarget = readLink(fd, [0]) }
            return e
        }
        return try statSlow(path)
    }

    private func statSlow(_ path: String) throws -> Entry? {
        guard let (fd, name) = try openParent(of: path, create: false) else { return nil }
        defer { close(fd) }
        let c = RawName.cString(name)
        var st = Glibc.stat()
        if fstatat(fd, c, &st, followSymlinks ? 0 : AT_SYMLINK_NOFOLLOW) != 0 {
            if errno == ENOENT { return nil }
            throw SystemCallError("stat", errno: errno, path: RawName.display(path))
        }
        guard var e = Self.entry(path, st) else { return nil }
        if e.kind == .symlink { e.linkTarget = readLink(fd, c) }
        return e
    }

    // MARK: - reading

    public func identicalCandidate(for entry: Entry) throws -> (any ObjectReader)? {
        // A destination that takes over existing files its own way (a live tree's) decides at publish.
        guard onExisting == nil, entry.kind == .file else { return nil }
        guard let (dfd, name) = try openParent(of: entry.path, create: false) else { return nil }
        defer { close(dfd) }
        let c = RawName.cString(name)
        var st = Glibc.stat()
        guard fstatat(dfd, c, &st, AT_SYMLINK_NOFOLLOW) == 0, let e = Self.entry(entry.path, st), e.kind == .file, e.links == 1,
            e.size == entry.size, e.mtimeNs == entry.mtimeNs, e.mode == entry.mode,
            !isRoot || (e.uid == entry.uid && e.gid == entry.gid),
            Self.readXattrs(dfd, c).sorted(by: { $0.name < $1.name }) == entry.xattrs.sorted(by: { $0.name < $1.name })
        else { return nil }
        let fd = retryEINTR { openat(dfd, c, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        let reader = LocalReader(fd: fd, path: entry.path)
        // The very file that was checked (not one renamed into its place since).
        guard let now = try? reader.currentEntry(), now.inode == UInt64(st.st_ino) else {
            reader.close()
            return nil
        }
        return reader
    }

    public func openReader(_ path: String) throws -> (any ObjectReader)? {
        guard let fd = try openDescriptor(path, O_RDONLY) else { return nil }
        return LocalReader(fd: fd, path: path)
    }

    public func changeStamp(_ path: String) throws -> ChangeStamp? {
        guard let fd = try openDescriptor(path, ferry_o_path()) else { return nil }
        defer { close(fd) }
        return Self.changeStamp(fd)
    }

    /// The stamp of the regular file open as `fd`; nil for anything else.
    static func changeStamp(_ fd: Int32) -> ChangeStamp? {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        return ChangeStamp(
            device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size),
            mtimeNs: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
            changedNs: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
    }

    /// Opens an existing file below the root with `flags` (O_RDONLY, O_RDWR, ...; O_NOFOLLOW and O_CLOEXEC are
    /// added), refusing a symbolic link anywhere on the way (openat2 RESOLVE_BENEATH, else component by
    /// component). nil when there is no such file. The metric stores open their files only through this: a
    /// directory swapped for a symlink never leads a merge outside the tree.
    public func openDescriptor(_ path: String, _ flags: Int32) throws -> Int32? {
        guard PathUtil.isSafeRelative(path) else { throw FerryError(.unsafePath, "refusing unsafe path \"\(RawName.display(path))\"") }
        if let fd = try openBeneath(path, flags | O_NOFOLLOW | O_CLOEXEC) {
            if fd >= 0 { return fd }
            switch errno {
            case ENOENT, ENOTDIR: return nil
            case ELOOP, EXDEV: throw FerryError(.unsafePath, "\"\(RawName.display(path))\" is now a symlink or passes one; not followed")
            default: throw SystemCallError("open", errno: errno, path: RawName.display(path))
            }
        }
        guard let (dfd, name) = try openParent(of: path, create: false) else { return nil }
        defer { close(dfd) }
        let c = RawName.cString(name)
        let fd = retryEINTR { openat(dfd, c, flags | (followSymlinks ? 0 : O_NOFOLLOW) | O_CLOEXEC) }
        if fd < 0 {
            if errno == ENOENT { return nil }
            if errno == ELOOP { throw FerryError(.unsafePath, "\"\(RawName.display(path))\" is now a symlink; not followed") }
            throw SystemCallError("open", errno: errno, path: RawName.display(path))
        }
        return fd
    }

    // MARK: - writing

    static func partialName(_ token: String) -> String { partialPrefix + token + partialSuffix }

    public func openWriter(for entry: Entry, token: String, resume: Bool) throws -> (any ObjectWriter)? {
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return nil }
        let tmp = Self.partialName(token)
        let flags = O_RDWR | O_NOFOLLOW | O_CLOEXEC | (resume ? 0 : O_CREAT | O_TRUNC)
        let fd = retryEINTR { openat(dfd, tmp, flags, 0o600) }
        if fd < 0 {
            let e = errno
            close(dfd)
            if resume && e == ENOENT { return nil }
            throw SystemCallError("create", errno: e, path: RawName.display(PathUtil.directory(of: entry.path)) + "/" + tmp)
        }
        let w = LocalWriter(dirFD: dfd, fd: fd, tmpName: tmp, finalName: name, path: entry.path, size: resume ? nil : 0)
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
        let c = RawName.cString(name)
        if mkdirat(dfd, c, 0o700) != 0 {
            let e = errno
            guard e == EEXIST else { throw SystemCallError("mkdir", errno: e, path: RawName.display(entry.path)) }
            var st = Glibc.stat()
            guard fstatat(dfd, c, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw SystemCallError("stat", errno: errno, path: RawName.display(entry.path))
            }
            if st.st_mode & S_IFMT != S_IFDIR {
                // A file or link stands where the source has a directory: replace it.
                guard unlinkat(dfd, c, 0) == 0, mkdirat(dfd, c, 0o700) == 0 else {
                    throw SystemCallError("replace with directory", errno: errno, path: RawName.display(entry.path))
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
            fd = retryEINTR { openat(dfd, RawName.cString(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            close(dfd)
            if fd < 0 { throw SystemCallError("open directory", errno: errno, path: RawName.display(entry.path)) }
        }
        defer { close(fd) }
        try Self.applyMetadata(fd: fd, entry, path: entry.path)
    }

    public func makeSymlink(_ entry: Entry) throws {
        guard let target = entry.linkTarget else { throw FerryError(.other, "symlink \(RawName.display(entry.path)) has no target") }
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return }
        defer { close(dfd) }
        let tmp = Self.partialName("link-\(UInt64.random(in: 0...UInt64.max))")
        guard symlinkat(RawName.cString(target), dfd, tmp) == 0 else {
            throw SystemCallError("symlink", errno: errno, path: RawName.display(entry.path))
        }
        if isRoot { _ = fchownat(dfd, tmp, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) }
        for x in entry.xattrs { _ = ferry_lsetxattrat(dfd, tmp, x.name, x.value, UInt(x.value.count)) }
        var times = [timespec(tv_sec: 0, tv_nsec: ferry_utime_omit()), Self.timespecOf(entry.mtimeNs)]
        _ = utimensat(dfd, tmp, &times, AT_SYMLINK_NOFOLLOW)
        try Self.replace(dfd: dfd, tmp: tmp, name: name, path: entry.path)
    }

    /// A second name for a file copied already (`entry.linkTarget` is its first name): link, then rename into
    /// place, so an existing entry of that name is replaced atomically.
    public func makeHardLink(_ entry: Entry) throws {
        guard let first = entry.linkTarget else { throw FerryError(.other, "hard link \(RawName.display(entry.path)) has no target") }
        guard let (sfd, sname) = try openParent(of: first, create: false) else {
            throw FerryError(.destinationIO, "cannot link \(RawName.display(entry.path)): \(RawName.display(first)) is missing at the destination")
        }
        defer { close(sfd) }
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return }
        defer { close(dfd) }
        let tmp = Self.partialName("hardlink-\(UInt64.random(in: 0...UInt64.max))")
        guard linkat(sfd, RawName.cString(sname), dfd, tmp, 0) == 0 else {
            throw SystemCallError("link", errno: errno, path: RawName.display(entry.path))
        }
        try Self.replace(dfd: dfd, tmp: tmp, name: name, path: entry.path)
        // rename(2) of one name of a file onto another name of the same file does nothing: the temporary name
        // would stay (the link was already there).
        _ = unlinkat(dfd, tmp, 0)
    }

    /// Recreates a FIFO, socket or device node (mknod; a device needs root) with its owner, mode and mtime.
    public func makeSpecial(_ entry: Entry) throws {
        let type: mode_t
        switch entry.kind {
        case .fifo: type = S_IFIFO
        case .socket: type = S_IFSOCK
        case .charDevice: type = S_IFCHR
        case .blockDevice: type = S_IFBLK
        default: throw FerryError(.other, "\(RawName.display(entry.path)) is not a special file")
        }
        guard let (dfd, name) = try openParent(of: entry.path, create: true) else { return }
        defer { close(dfd) }
        let tmp = Self.partialName("special-\(UInt64.random(in: 0...UInt64.max))")
        guard mknodat(dfd, tmp, type | 0o600, dev_t(entry.rdev)) == 0 else {
            throw SystemCallError("mknod", errno: errno, path: RawName.display(entry.path))
        }
        if isRoot { _ = fchownat(dfd, tmp, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) }
        _ = fchmodat(dfd, tmp, mode_t(entry.mode), 0)
        var times = [timespec(tv_sec: 0, tv_nsec: ferry_utime_omit()), Self.timespecOf(entry.mtimeNs)]
        _ = utimensat(dfd, tmp, &times, AT_SYMLINK_NOFOLLOW)
        try Self.replace(dfd: dfd, tmp: tmp, name: name, path: entry.path)
    }

    public func remove(_ path: String, kind: EntryKind) throws {
        guard let (dfd, name) = try openParent(of: path, create: false) else { return }
        defer { close(dfd) }
        if unlinkat(dfd, RawName.cString(name), kind == .directory ? AT_REMOVEDIR : 0) != 0 && errno != ENOENT {
            throw SystemCallError("remove", errno: errno, path: RawName.display(path))
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

    /// Owner first (chown clears file capabilities), then extended attributes and ACLs, then mode (consistent with
    /// the ACL's mask, as at the source), then mtime.
    static func applyMetadata(fd: Int32, _ entry: Entry, path: String) throws {
        if isRoot, fchown(fd, entry.uid, entry.gid) != 0 {
            throw SystemCallError("chown", errno: errno, path: RawName.display(path))
        }
        // An attribute the destination filesystem cannot hold is not fatal here: verify compares them and
        // reports the difference.
        for x in entry.xattrs { _ = ferry_fsetxattr(fd, x.name, x.value, UInt(x.value.count)) }
        if fchmod(fd, mode_t(entry.mode)) != 0 { throw SystemCallError("chmod", errno: errno, path: RawName.display(path)) }
        var times = [timespec(tv_sec: 0, tv_nsec: ferry_utime_omit()), timespecOf(entry.mtimeNs)]
        if futimens(fd, &times) != 0 { throw SystemCallError("utimens", errno: errno, path: RawName.display(path)) }
    }

    /// Renames `tmp` over `name`; an empty directory in the way is removed first.
    static func replace(dfd: Int32, tmp: String, name: String, path: String) throws {
        let c = RawName.cString(name)
        if renameat(dfd, tmp, dfd, c) == 0 { return }
        let e = errno
        if e == EISDIR || e == ENOTEMPTY || e == EEXIST {
            if unlinkat(dfd, c, AT_REMOVEDIR) == 0, renameat(dfd, tmp, dfd, c) == 0 { return }
            _ = unlinkat(dfd, tmp, 0)
            throw FerryError(.destinationIO, "cannot replace \(RawName.display(path)): a non-empty directory is in the way")
        }
        _ = unlinkat(dfd, tmp, 0)
        throw SystemCallError("rename", errno: e, path: RawName.display(path))
    }
}

final class LocalReader: ChangeStampedReader {
    private var fd: Int32
    let path: String

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close() }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        try SystemCalls.preadFully(fd, into: buffer, at: offset, what: RawName.display(path))
    }

    func currentEntry() throws -> Entry {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, let e = LocalStore.entry(path, st) else {
            throw SystemCallError("fstat", errno: errno, path: RawName.display(path))
        }
        return e
    }

    func changeStamp() throws -> ChangeStamp {
        guard let stamp = LocalStore.changeStamp(fd) else {
            throw SystemCallError("fstat", errno: errno, path: RawName.display(path))
        }
        return stamp
    }

    func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }
}

final class LocalWriter: ObjectWriter, MetadataAccepting, SyncCoveredWriter, PartialReading {
    private let dirFD: Int32
    private var fd: Int32
    private let tmpName: String
    private let finalName: String
    private let path: String
    /// Everything at or beyond this offset of the partial file is known to be zeros (a hole): an all-zero
    /// buffer written there is left as a hole, so sparse files stay sparse.
    private var zeroFrom: Int64
    /// The mtime carried by a bucket source (`x-amz-meta-mtime`), applied instead of the listing's.
    private var carriedMtimeNs: Int64?
    /// The partial file's size as written so far (-1: unknown); publish truncates only when it is not the entry's.
    private var fileSize: Int64

    /// `size`: what the partial holds, when the caller knows it (0 for one it just created); else it is looked up.
    init(dirFD: Int32, fd: Int32, tmpName: String, finalName: String, path: String, size: Int64? = nil) {
        self.dirFD = dirFD
        self.fd = fd
        self.tmpName = tmpName
        self.finalName = finalName
        self.path = path
        var st = Glibc.stat()
        let known = size ?? (fstat(fd, &st) == 0 ? Int64(st.st_size) : nil)
        zeroFrom = known ?? Int64.max
        keptBytes = known ?? 0
        fileSize = known ?? -1
    }

    let keptBytes: Int64

    deinit {
        if fd >= 0 { Glibc.close(fd) }
        Glibc.close(dirFD)
    }

    var onExisting: (() throws -> Void)?

    func accept(metadata: [String: String]) {
        guard let v = metadata["x-amz-meta-mtime"] else { return }
        let parts = v.split(separator: ".", maxSplits: 1)
        guard let sec = Int64(parts.first ?? "") else { return }
        var ns: Int64 = 0
        if parts.count > 1 {
            let frac = String(parts[1].prefix(9))
            guard let f = Int64(frac) else { return }
            ns = f
            for _ in frac.count..<9 { ns *= 10 }
        }
        carriedMtimeNs = sec * 1_000_000_000 + ns
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        if offset >= zeroFrom {
            // Beyond what the partial file holds, zeros need no write: each all-zero 64 KiB block stays a hole
            // (publish sets the size), so a sparse file stays sparse even where a chunk holds some data.
            for run in Bytes.nonZeroRuns(bytes, offset: offset) {
                try SystemCalls.pwriteAll(
                    fd, UnsafeRawBufferPointer(rebasing: bytes[run]), at: offset + Int64(run.lowerBound), what: RawName.display(path))
                if fileSize >= 0 { fileSize = max(fileSize, offset + Int64(run.upperBound)) }
            }
        } else {
            try SystemCalls.pwriteAll(fd, bytes, at: offset, what: RawName.display(path))
            if fileSize >= 0 { fileSize = max(fileSize, offset + Int64(bytes.count)) }
        }
        zeroFrom = max(zeroFrom, offset + Int64(bytes.count))
    }

    func readPartial(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        try SystemCalls.preadFully(fd, into: buffer, at: offset, what: RawName.display(path) + " (partial file)")
    }

    func startWriteback(offset: Int64, length: Int64) {
        // Advisory: a filesystem without it leaves the writeback to the group sync.
        _ = ferry_start_writeback(fd, offset, length)
    }

    func makeDurable() throws {
        if fdatasync(fd) != 0 { throw SystemCallError("fdatasync", errno: errno, path: RawName.display(path)) }
    }

    func publish(_ entry: Entry) throws {
        if fileSize != entry.size, ftruncate(fd, off_t(entry.size)) != 0 {
            throw SystemCallError("truncate", errno: errno, path: RawName.display(path))
        }
        var entry = entry
        if let carriedMtimeNs { entry.mtimeNs = carriedMtimeNs }
        try LocalStore.applyMetadata(fd: fd, entry, path: path)
        Glibc.close(fd)
        fd = -1
        if let onExisting {
            if ferry_rename_noreplace(dirFD, tmpName, dirFD, RawName.cString(finalName)) == 0 { return }
            let e = errno
            guard e == EEXIST else {
                _ = unlinkat(dirFD, tmpName, 0)
                throw SystemCallError("rename", errno: e, path: RawName.display(path))
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
