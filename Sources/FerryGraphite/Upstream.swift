import FerryCore
import FerryTap
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// One destination of the tap (a carbon line receiver). A thread of its own reads the journal from this
/// upstream's cursor and writes to it, so a down or slow upstream only grows its own backlog.
///
/// Carbon acknowledges nothing: bytes written to its socket may still die with it. So the cursor that is
/// persisted (and that the spool keeps data for) trails what was sent by `redeliver` seconds, and after a lost
/// connection the upstream re-sends from there. A datapoint may arrive twice; Whisper stores the same value at
/// the same timestamp, so a repeat is harmless, while a gap would not be.
final class Upstream: @unchecked Sendable {
    let name: String
    let address: HostPort
    let journal: Journal
    let cursorPath: String
    let redeliver: Double
    let replayRate: Double
    let fsync: FsyncPolicy
    let logger: Logger

    private let lock = NSLock()
    private var sent: UInt64
    /// (time sent, start offset of that batch), oldest first: what a reconnect re-sends.
    private var window: [(Date, UInt64)] = []
    private var persisted: UInt64
    private var isConnected = false
    private var forwardedLines: UInt64 = 0
    private var forwardedBytes: UInt64 = 0
    private var reconnects: UInt64 = 0
    private var lastError: String?
    private var attached = true
    private var stopping = false
    private var thread: Thread?
    private var fd: Int32 = -1
    private var cursorFD: Int32 = -1

    init(
        name: String, address: HostPort, journal: Journal, stateDirectory: String, redeliver: Double, replayRate: Double,
        fsync: FsyncPolicy, logger: Logger
    ) throws {
        self.name = name
        self.address = address
        self.journal = journal
        self.cursorPath = stateDirectory + "/cursor." + name
        self.redeliver = redeliver
        self.replayRate = replayRate
        self.fsync = fsync
        self.logger = logger
        let start = try Self.loadCursor(cursorPath) ?? journal.head
        // Never ahead of the head (the journal may have lost an unsynced tail), never behind what was released.
        let c = min(max(start, journal.tail), journal.head)
        sent = c
        persisted = c
        cursorFD = open(cursorPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard cursorFD >= 0 else { throw SystemCallError("open", errno: errno, path: cursorPath) }
        writeCursor(c)
    }

    deinit {
        if cursorFD >= 0 { close(cursorFD) }
        if fd >= 0 { close(fd) }
    }

    /// A cursor file holds the offset and its CRC, 12 bytes written in place.
    static func loadCursor(_ path: String) throws -> UInt64? { try CursorFile.load(path) }

    private func writeCursor(_ v: UInt64) {
        let b = CursorFile.encode(v)
        _ = b.withUnsafeBytes { pwrite(cursorFD, $0.baseAddress, 12, 0) }
        if fsync != .never { _ = fdatasync(cursorFD) }
    }

    /// The oldest offset this upstream may still need (what the spool must keep).
    var settled: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        while let f = window.first, now.timeIntervalSince(f.0) > redeliver { window.removeFirst() }
        return window.first?.1 ?? sent
    }

    var isAttached: Bool {
        lock.lock()
        defer { lock.unlock() }
        return attached
    }

    /// Detaches (single mode: this side gets nothing) or re-attaches at the head (what it missed is gone).
    func setAttached(_ on: Bool) {
        lock.lock()
        defer { lock.unlock() }
        if on && !attached {
            let h = journal.head
            if sent < h {
                logger.warning("upstream \(name) re-attached at the head; it did not receive \(h - sent) spooled bytes while detached")
            }
            sent = h
            window.removeAll()
        }
        attached = on
    }

    /// Persists the settled cursor (called by the tap's maintenance timer and at shutdown).
    func persist() {
        let s = settled
        lock.lock()
        let changed = s != persisted
        persisted = s
        lock.unlock()
        if changed { writeCursor(s) }
    }

    func status(role: String) -> TapUpstreamStatus {
        lock.lock()
        let c = sent, conn = isConnected, lines = forwardedLines, bytes = forwardedBytes, rc = reconnects, err = lastError
        let att = attached
        lock.unlock()
        let head = journal.head
        var lag = 0.0
        if att && c < head, let t = journal.appendedAt(c) {
            lag = max(0, Date().timeIntervalSince1970 - Double(t) / 1000)
        }
        return TapUpstreamStatus(
            name: name, address: address.description, role: att ? role : "detached", connected: conn,
            forwardedLines: lines, forwardedBytes: bytes, spoolBytes: att && head > c ? head - c : 0, lagSeconds: lag,
            cursor: c, reconnects: rc, lastError: err)
    }

    func start() {
        let t = Thread { [self] in self.loop() }
        t.name = "ferry-tap-\(name)"
        thread = t
        t.start()
    }

    func stop() {
        lock.lock()
        stopping = true
        lock.unlock()
    }

    private var isStopping: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    private func loop() {
        var backoff = 0.1
        var tokens = replayRate
        var lastRefill = Date()
        while !isStopping {
            if !isAttached {
                _ = journal.wait(beyond: journal.head, timeout: 0.5)
                continue
            }
            // Connected even while idle, so that health (and a down upstream) shows before data needs it.
            if fd < 0 {
                do {
                    try connect()
                    backoff = 0.1
                } catch {
                    setError("\(error)")
                    Thread.sleep(forTimeInterval: backoff)
                    backoff = min(backoff * 2, 2)
                    continue
                }
            } else if peerClosed() {
                disconnect("the upstream closed the connection")
                continue
            }
            lock.lock()
            let from = sent
            lock.unlock()
            if from >= journal.head {
                _ = journal.wait(beyond: from, timeout: 0.5)
                continue
            }
            let records: [JournalRecord]
            do {
                // Under a replay rate, batches of about a tenth of a second's worth (at ~50 bytes a line).
                let maxBytes = replayRate > 0 ? min(256 * 1024, max(4096, Int(replayRate * 5))) : 256 * 1024
                records = try journal.read(from: from, maxBytes: maxBytes) { offset, why in
                    logger.error("spool record at \(offset) is corrupt: \(why)")
                }
            } catch {
                setError("spool read failed: \(error)")
                Thread.sleep(forTimeInterval: 0.5)
                continue
            }
            guard let last = records.last else { continue }
            var payload: [UInt8] = []
            var lines = 0
            for r in records {
                payload.append(contentsOf: r.payload)
                lines += r.payload.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
            }
            // Replay of a backlog (records older than a second) is paced at replay_rate lines per second.
            if replayRate > 0, let first = records.first,
                Date().timeIntervalSince1970 - Double(first.appendedAtMs) / 1000 > 1
            {
                let now = Date()
                tokens = min(replayRate, tokens + now.timeIntervalSince(lastRefill) * replayRate)
                lastRefill = now
                if tokens < Double(lines) {
                    Thread.sleep(forTimeInterval: (Double(lines) - tokens) / replayRate)  // pacing, not synchronisation
                    tokens = 0
                    lastRefill = Date()
                } else {
                    tokens -= Double(lines)
                }
            }
            if let err = sendAll(payload) {
                disconnect(err)
                continue
            }
            lock.lock()
            let now = Date()
            window.append((now, from))
            while let f = window.first, now.timeIntervalSince(f.0) > redeliver { window.removeFirst() }
            sent = last.end
            forwardedLines += UInt64(lines)
            forwardedBytes += UInt64(payload.count)
            lock.unlock()
        }
        if fd >= 0 {
            close(fd)
            fd = -1
        }
    }

    private func setError(_ text: String) {
        lock.lock()
        let first = lastError != text
        lastError = text
        lock.unlock()
        if first { logger.warning("upstream \(name) (\(address)): \(text); spooling and retrying") }
    }

    private func disconnect(_ why: String) {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
        lock.lock()
        isConnected = false
        // Carbon acknowledges nothing: what went out in the last `redeliver` seconds is sent again.
        if let f = window.first { sent = f.1 }
        window.removeAll()
        reconnects += 1
        lock.unlock()
        setError(why)
    }

    /// True when the peer has closed its end (a read would return 0 or fail).
    private func peerClosed() -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 0) > 0 else { return false }
        if p.revents & Int16(POLLHUP | POLLERR) != 0 { return true }
        var scratch = [UInt8](repeating: 0, count: 4096)
        let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 4096, Int32(MSG_DONTWAIT)) }
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    private func connect() throws {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(address.host, String(address.port), &hints, &res)
        guard rc == 0, let first = res else {
            throw FerryError(.other, "cannot resolve \(address.host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(res) }
        var lastErr = ECONNREFUSED
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let s = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if s >= 0 {
                if Self.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen, timeout: 5) {
                    var tv = timeval(tv_sec: 10, tv_usec: 0)
                    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    var one: Int32 = 1
                    setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    fd = s
                    lock.lock()
                    let wasError = lastError != nil
                    isConnected = true
                    lastError = nil
                    lock.unlock()
                    if wasError { logger.notice("upstream \(name) (\(address)) connected; delivering its backlog") }
                    return
                }
                lastErr = errno
                close(s)
            }
            ai = a.pointee.ai_next
        }
        throw SystemCallError("connect", errno: lastErr, path: address.description)
    }

    private static func connect(_ s: Int32, _ addr: UnsafeMutablePointer<sockaddr>!, _ len: socklen_t, timeout: Double) -> Bool {
        let flags = fcntl(s, F_GETFL)
        _ = fcntl(s, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(s, F_SETFL, flags) }
        if Glibc.connect(s, addr, len) == 0 { return true }
        guard errno == EINPROGRESS else { return false }
        var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else {
            errno = ETIMEDOUT
            return false
        }
        var err: Int32 = 0
        var l = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l)
        if err != 0 { errno = err }
        return err == 0
    }

    /// Writes everything or returns why it could not.
    private func sendAll(_ bytes: [UInt8]) -> String? {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return errno == EAGAIN ? "send timed out (upstream not reading)" : String(cString: strerror(errno))
            }
            off += n
        }
        return nil
    }
}
