#if canImport(Glibc)
import Glibc
#endif

/// System calls wrapped once, for every target: the start of the one system layer.
public enum SystemCalls {
    /// Writes all of `bytes` at `offset` (pwrite, retried on EINTR and after short writes). `what` names the
    /// file in the error.
    public static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, what: String) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("write", errno: errno, path: what)
            }
            done += n
        }
    }

    /// Reads up to `buffer.count` bytes at `offset` (pread, retried on EINTR and after short reads); fewer only at
    /// the end of the file. `what` names the file in the error.
    public static func preadFully(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, what: String) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("read", errno: errno, path: what)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
}

/// Runs `body`, which starts a child process, with no signal blocked in this thread. A child inherits the mask
/// of the thread that starts it, and the threads of an event loop or a worker pool block SIGTERM and SIGINT: a
/// child started from one (an ssh tunnel, a hook) could then not be stopped, and waiting for it would hang.
public func withDefaultSignalMask<T>(_ body: () throws -> T) rethrows -> T {
    var empty = sigset_t()
    sigemptyset(&empty)
    var old = sigset_t()
    pthread_sigmask(SIG_SETMASK, &empty, &old)
    defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
    return try body()
}

/// Runs `argv` (its first element an absolute path) to its end, with `environment` and stdin from /dev/null;
/// stdout and stderr go to the file `output` when given, else stdout joins this process's stderr. Returns the
/// exit status (128 + N when signal N ended it). posix_spawn, no signal blocked in the child, then waitpid on
/// that pid: Foundation's Process missed the exit of a short child (a hook) while a long-lived one (an ssh
/// tunnel) ran, and waited forever.
public func runToExit(_ argv: [String], environment: [String: String], output: String? = nil) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    if let output {
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    } else {
        posix_spawn_file_actions_adddup2(&actions, 2, 1)
    }
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attr, &defaults)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let args = argv.map { strdup($0) } + [nil]
    let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        args.forEach { free($0) }
        env.forEach { free($0) }
    }
    var pid = pid_t()
    let rc = posix_spawn(&pid, argv[0], &actions, &attr, args, env)
    guard rc == 0 else { throw SystemCallError("posix_spawn", errno: rc, path: argv[0]) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { throw SystemCallError("waitpid", errno: errno, path: argv[0]) }
    }
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
