public import FerryCore
public import FerryTap
import Foundation
public import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The Carbon dual-write tap: accepts the Graphite plaintext (TCP, UDP) and pickle protocols, validates every
/// datapoint, appends it to the durable journal, and lets one forwarder per upstream (`old`, `new`) deliver the
/// journal in order. The journal is the spool: an upstream that is down or slow falls behind on its own cursor
/// and catches up when it returns; nothing is dropped. When the spool reaches its limit the tap stops reading
/// from TCP senders (back-pressure) and says so; only UDP, which has no way to push back, can lose datagrams,
/// and those are counted and logged.
public final class CarbonTap: TapServer, @unchecked Sendable {
    public let config: CarbonTapConfig
    let logger: Logger
    let journal: Journal
    let old: Upstream
    let new: Upstream
    let group: MultiThreadedEventLoopGroup

    private let lock = NSLock()
    private var channels: [any Channel] = []
    private var parked: [any Channel] = []
    private var pressure = false
    /// Whether the SPOOL FULL error was logged for the current episode (pressure can start at an append).
    private var announced = false
    private var received: UInt64 = 0
    private var invalid: UInt64 = 0
    private var refused: UInt64 = 0
    private var dropped: UInt64 = 0
    private var invalidLogged = 0
    private var spoolError: String?
    /// The lowest settled offset the maintenance thread last saw: an append judges the spool's use against it,
    /// so the limit holds senders back at once, not a quarter second (and megabytes) later.
    private var settledLow: UInt64 = 0
    /// Data read from senders that are gone (or from UDP) while the spool could not write: retried in order by
    /// the maintenance thread, never dropped while it stays under `maxAdopted`.
    private var adopted: [([UInt8], Int)] = []
    private var adoptedBytes = 0
    static let maxAdopted = 256 * 1_048_576
    private var mode: TapMode = .mirror
    private var primary = "old"
    private var running = true
    private var maintenance: Thread?
    private let modePath: String

    public init(config: CarbonTapConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        try FileManager.default.createDirectory(atPath: config.directory, withIntermediateDirectories: true)
        journal = try Journal(directory: config.directory + "/spool", segmentSize: config.segmentSize, fsync: config.fsync)
        if journal.recoveredTornBytes > 0 {
            logger.warning("spool: cut \(journal.recoveredTornBytes) bytes of a record torn by a crash (it was never delivered)")
        }
        old = try Upstream(
            name: "old", address: config.old, journal: journal, stateDirectory: config.directory, redeliver: config.redeliver,
            replayRate: config.replayRate, fsync: config.fsync, logger: logger)
        new = try Upstream(
            name: "new", address: config.new, journal: journal, stateDirectory: config.directory, redeliver: config.redeliver,
            replayRate: config.replayRate, fsync: config.fsync, logger: logger)
        modePath = config.directory + "/mode"
        if let saved = ModeFile.load(modePath) {
            mode = saved.mode
            primary = saved.primary ?? (saved.mode == .reverse ? "new" : "old")
        }
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, min(4, System.coreCount)))
        applyAttachment()
        settledLow = [old, new].filter(\.isAttached).map(\.settled).min() ?? journal.head
    }

    // MARK: - lifecycle

    public func start() throws {
        let backlogged = journal.head - min(old.settled, new.settled)
        logger.info(
            "tap starting", metadata: ["mode": "\(mode.rawValue)", "primary": "\(primary)", "spooled_bytes": "\(backlogged)"])
        old.start()
        new.start()
        let t = Thread { [self] in self.maintain() }
        t.name = "ferry-tap-maintenance"
        maintenance = t
        t.start()
        do {
            try bind()
        } catch {
            stop()
            throw FerryError(.other, "the tap cannot listen", underlying: error)
        }
    }

    private func bind() throws {
        let maxLine = config.maxLineLength
        let tcp = try listening(on: "tcp \(config.listen)", what: "carbon plaintext, tap.listen") {
            try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(PlaintextHandler(tap: self, maxLine: maxLine))
                    }
                }
                .bind(host: config.listen.host, port: config.listen.port).wait()
        }
        add(tcp)
        logger.info("listening for plaintext on tcp \(config.listen)")
        if config.udp {
            let udp = try listening(on: "udp \(config.listen)", what: "carbon plaintext over UDP, tap.listen") {
                try DatagramBootstrap(group: group)
                    .channelOption(.socketOption(.so_reuseaddr), value: 1)
                    .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65536))
                    .channelInitializer { [self] channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(DatagramHandler(tap: self))
                        }
                    }
                    .bind(host: config.listen.host, port: config.listen.port).wait()
            }
            add(udp)
            logger.info("listening for plaintext on udp \(config.listen)")
        }
        if let p = config.listenPickle {
            let maxMessage = config.maxPickleMessage
            let pickle = try listening(on: "tcp \(p)", what: "carbon pickle, tap.listen_pickle") {
                try ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 256)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { [self] channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                ByteToMessageHandler(PickleFrameDecoder(maxMessage: maxMessage)))
                            try channel.pipeline.syncOperations.addHandler(PickleHandler(tap: self))
                        }
                    }
                    .bind(host: p.host, port: p.port).wait()
            }
            add(pickle)
            logger.info("listening for pickle on tcp \(p)")
        }
        add(try bindControlSocket(config.controlSocket, group: group, server: self))
        logger.info("control socket \(config.controlSocket)")
    }

    private func add(_ c: any Channel) {
        lock.lock()
        channels.append(c)
        lock.unlock()
    }

    /// Stops listening, lets the forwarders finish their current write, and persists cursors and the spool.
    public func stop() {
        lock.lock()
        let cs = channels
        channels.removeAll()
        running = false
        lock.unlock()
        for c in cs { try? c.close().wait() }
        old.stop()
        new.stop()
        journal.shutdown()
        old.persist()
        new.persist()
        try? group.syncShutdownGracefully()
        logger.info("tap stopped; spool and cursors are on disk")
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    /// Every quarter second: sync the spool when due, persist cursors, release delivered segments, and
    /// switch back-pressure on or off.
    private func maintain() {
        while isRunning {
            Thread.sleep(forTimeInterval: 0.25)
            drainAdopted()
            journal.syncIfDue()
            old.persist()
            new.persist()
            let fed = [old, new].filter(\.isAttached)
            let low = fed.map(\.settled).min() ?? journal.head
            journal.release(below: low)
            let used = journal.head - low
            lock.lock()
            settledLow = low
            let was = pressure
            let now = used >= config.spoolLimit ? true : (used < config.spoolLimit / 10 * 9 ? false : was)
            pressure = now
            let announce = now && !announced
            announced = now
            let wake = was && !now ? parked : []
            if !now { parked.removeAll() }
            lock.unlock()
            if announce {
                let behind = fed.filter { $0.settled == low }.map(\.name).joined(separator: ", ")
                logger.error(
                    "SPOOL FULL: \(Units.formatBytes(Int64(used))) spooled for \(behind) (spool_limit \(Units.formatBytes(Int64(config.spoolLimit)))); senders are held back until it drains, UDP datagrams are dropped and counted"
                )
            } else if was && !now {
                logger.notice("spool below its limit again; accepting from senders")
            }
            for c in wake { c.pipeline.fireUserInboundEventTriggered(Resume()) }
        }
    }

    // MARK: - data path

    struct Resume: Sendable {}

    var underPressure: Bool {
        lock.lock()
        defer { lock.unlock() }
        return pressure
    }

    /// Parks a sender's channel until the spool drains; false when it is not full any more (read on).
    func park(_ c: any Channel) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard pressure else { return false }
        parked.append(c)
        return true
    }

    /// Appends normalized lines to the journal. Throws when the spool cannot take them (disk full).
    func accept(_ bytes: [UInt8], lines: Int) throws {
        guard lines > 0 else { return }
        do {
            try journal.append(bytes)
        } catch {
            lock.lock()
            let first = spoolError == nil
            spoolError = "\(error)"
            lock.unlock()
            if first { logger.error("SPOOL WRITE FAILED (\(error)): senders are held back until it can write again") }
            throw error
        }
        let head = journal.head
        lock.lock()
        received += UInt64(lines)
        if head - min(settledLow, head) >= config.spoolLimit { pressure = true }
        let recovered = spoolError != nil
        spoolError = nil
        lock.unlock()
        if recovered { logger.notice("spool writes again; accepting from senders") }
    }

    /// Takes over data a connection could not spool before it went away. False when memory for it ran out.
    @discardableResult
    func adopt(_ items: [([UInt8], Int)]) -> Bool {
        let bytes = items.reduce(0) { $0 + $1.0.count }
        lock.lock()
        defer { lock.unlock() }
        guard adoptedBytes + bytes <= Self.maxAdopted else { return false }
        adopted.append(contentsOf: items)
        adoptedBytes += bytes
        return true
    }

    /// Appends adopted data, oldest first, until the spool refuses again.
    private func drainAdopted() {
        while true {
            lock.lock()
            guard let first = adopted.first else {
                lock.unlock()
                return
            }
            lock.unlock()
            do {
                try accept(first.0, lines: first.1)
            } catch {
                return
            }
            lock.lock()
            adopted.removeFirst()
            adoptedBytes -= first.0.count
            lock.unlock()
        }
    }

    func countDropped(_ n: Int) {
        lock.lock()
        dropped += UInt64(n)
        let first = dropped == UInt64(n) || dropped % 10_000 < UInt64(n)
        lock.unlock()
        if first { logger.error("spool full: dropped \(n) UDP lines (total \(dropped)); UDP senders cannot be held back") }
    }

    func reportInvalid(peer: String, problem: String, sample: String) {
        lock.lock()
        invalid += 1
        invalidLogged += 1
        let n = UInt64(invalidLogged), total = invalid
        lock.unlock()
        if LogLimit.allows(n) {
            logger.warning("invalid line from \(peer) refused (\(problem)): \(sample)", metadata: ["invalid_total": "\(total)"])
        }
    }

    /// Refused pickle messages are logged as invalid lines are (`LogLimit`): a flood of tiny hostile frames must
    /// not fill the disk the spool lives on.
    func reportRefused(peer: String, reason: String) {
        lock.lock()
        refused += 1
        let n = refused
        lock.unlock()
        if LogLimit.allows(n) {
            logger.warning("pickle message from \(peer) refused: \(reason)", metadata: ["refused_total": "\(n)"])
        }
    }

    // MARK: - control

    public func status() -> TapStatus {
        lock.lock()
        let m = mode, p = primary, r = received, i = invalid, rf = refused, d = dropped, bp = pressure
        let se = spoolError.map { adoptedBytes > 0 ? "\($0) (\(adoptedBytes) bytes held in memory)" : $0 }
        lock.unlock()
        let head = journal.head
        let fed = [old, new].filter(\.isAttached)
        let low = fed.map(\.settled).min() ?? head
        return TapStatus(
            kind: "carbon", pid: getpid(), mode: m, primary: p, head: head, receivedLines: r, invalidLines: i,
            refusedMessages: rf, droppedLines: d, backPressure: bp, spoolBytes: head - low, spoolLimit: config.spoolLimit,
            spoolError: se,
            upstreams: [
                old.status(role: p == "old" ? "primary" : "mirror"), new.status(role: p == "new" ? "primary" : "mirror"),
            ])
    }

    /// Switches the mode, persisting it first so a restarted tap keeps routing the same way.
    public func setMode(_ m: TapMode) throws -> TapStatus {
        lock.lock()
        let before = mode
        switch m {
        case .mirror, .cutover: primary = "old"
        case .reverse: primary = "new"
        case .single: break
        }
        mode = m
        let p = primary
        lock.unlock()
        try ModeFile.store(modePath, mode: m, primary: p)
        applyAttachment()
        if before != m { logger.notice("mode \(before.rawValue) -> \(m.rawValue) (primary \(primary))") }
        return status()
    }

    private func applyAttachment() {
        lock.lock()
        let m = mode, p = primary
        lock.unlock()
        old.setAttached(m != .single || p == "old")
        new.setAttached(m != .single || p == "new")
    }

    /// Appends the fence as a datapoint (`name serial issuedAt`) and returns its sequence number.
    public func fence(_ token: FenceToken) throws -> UInt64 {
        var out: [UInt8] = []
        let path = token.name
        if let problem = CarbonLine.normalize(path: path, value: Double(token.serial), timestamp: Double(token.issuedAt), into: &out) {
            throw FerryError(.other, "fence marker refused: \(problem)")
        }
        let seq = try journal.append(out)
        lock.lock()
        received += 1
        lock.unlock()
        logger.info("fence \(path) at sequence \(seq)")
        return seq
    }
}

// MARK: - channel handlers

/// Keeps a connection's data in order when the spool cannot take it: what could not be appended is held (and
/// the channel stops reading) and retried every second; everything read later queues behind it. If the sender
/// goes away meanwhile, the tap adopts what is held.
struct HoldQueue {
    var items: [([UInt8], Int)] = []

    var isEmpty: Bool { items.isEmpty }

    /// Appends `out` (after anything held); returns false when it had to be held.
    mutating func submit(_ out: [UInt8], lines: Int, tap: CarbonTap, context: ChannelHandlerContext) -> Bool {
        guard lines > 0 else { return true }
        if items.isEmpty {
            do {
                try tap.accept(out, lines: lines)
                return true
            } catch {}
        }
        items.append((out, lines))
        if items.count == 1 { Self.retryLater(context) }
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        return false
    }

    /// Submits, then parks the channel while the spool is at its limit (back-pressure).
    mutating func store(_ out: [UInt8], lines: Int, tap: CarbonTap, context: ChannelHandlerContext) {
        guard submit(out, lines: lines, tap: tap, context: context), tap.underPressure else { return }
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        if !tap.park(context.channel) {
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        }
    }

    /// A `Resume` event: retries what is held, then reads on. False for any other event (pass it on).
    mutating func resume(_ event: Any, tap: CarbonTap, context: ChannelHandlerContext) -> Bool {
        guard event is CarbonTap.Resume else { return false }
        guard drain(tap: tap, context: context) else { return true }
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.read()
        return true
    }

    /// Retries in order; true when nothing is held any more.
    mutating func drain(tap: CarbonTap, context: ChannelHandlerContext) -> Bool {
        while let first = items.first {
            do {
                try tap.accept(first.0, lines: first.1)
            } catch {
                Self.retryLater(context)
                return false
            }
            items.removeFirst()
        }
        return true
    }

    static func retryLater(_ context: ChannelHandlerContext) {
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(1)) { channel.pipeline.fireUserInboundEventTriggered(CarbonTap.Resume()) }
    }

    /// The connection is gone: the tap takes what is still held.
    mutating func handOver(tap: CarbonTap, peer: String) {
        guard !items.isEmpty else { return }
        let lines = items.reduce(0) { $0 + $1.1 }
        if !tap.adopt(items) {
            tap.countDropped(lines)
            tap.logger.error("\(peer) closed with \(lines) lines the spool could not take and no memory left to hold them")
        }
        items.removeAll()
    }
}

/// Plaintext over TCP: lines validated, normalized and appended; back-pressure parks the channel.
final class PlaintextHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let tap: CarbonTap
    var assembler: LineAssembler
    var peer = "?"
    var hold = HoldQueue()

    init(tap: CarbonTap, maxLine: Int) {
        self.tap = tap
        self.assembler = LineAssembler(maxLineLength: maxLine)
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.remoteAddress.map { "\($0)" } ?? "?"
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buf = unwrapInboundIn(data)
        var out: [UInt8] = []
        out.reserveCapacity(buf.readableBytes)
        var lines = 0
        let tap = self.tap, peer = self.peer
        buf.withUnsafeReadableBytes { raw in
            assembler.feed(
                raw,
                line: { line in
                    let before = out.count
                    if let p = CarbonLine.normalize(line, into: &out) {
                        tap.reportInvalid(peer: peer, problem: "\(p)", sample: Self.sample(line))
                    } else if out.count > before {
                        lines += 1
                    }
                },
                tooLong: { n in tap.reportInvalid(peer: peer, problem: "\(CarbonLine.Problem.tooLong(n))", sample: "") })
        }
        hold.store(out, lines: lines, tap: tap, context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !hold.resume(event, tap: tap, context: context) { context.fireUserInboundEventTriggered(event) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if assembler.pendingBytes > 0 {
            tap.reportInvalid(peer: peer, problem: "connection closed in the middle of a line", sample: "")
        }
        hold.handOver(tap: tap, peer: peer)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    static func sample(_ line: UnsafeRawBufferPointer) -> String {
        let s = String(decoding: line.prefix(120), as: UTF8.self)
        return s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : String($0) }.joined()
    }
}

/// Plaintext over UDP: one datagram holds whole lines.
final class DatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let tap: CarbonTap

    init(tap: CarbonTap) {
        self.tap = tap
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let env = unwrapInboundIn(data)
        let peer = "udp:\(env.remoteAddress)"
        var out: [UInt8] = []
        var lines = 0
        let tap = self.tap
        env.data.withUnsafeReadableBytes { raw in
            var start = 0
            while start < raw.count {
                let end = raw[start...].firstIndex(of: 0x0A) ?? raw.count
                let line = UnsafeRawBufferPointer(rebasing: raw[start..<end])
                let before = out.count
                if let p = CarbonLine.normalize(line, into: &out) {
                    tap.reportInvalid(peer: peer, problem: "\(p)", sample: PlaintextHandler.sample(line))
                } else if out.count > before {
                    lines += 1
                }
                start = end + 1
            }
        }
        if tap.underPressure {
            tap.countDropped(lines)
            return
        }
        do {
            try tap.accept(out, lines: lines)
        } catch {
            if !tap.adopt([(out, lines)]) { tap.countDropped(lines) }
        }
    }
}

/// Carbon's pickle framing: a 4-byte big-endian length, then the pickle.
struct PickleFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let maxMessage: Int

    struct TooLarge: Error, CustomStringConvertible {
        var size: UInt32
        var max: Int
        var description: String { "message of \(size) bytes exceeds max_pickle_message (\(max)); connection closed" }
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let len = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else { return .needMoreData }
        guard Int(len) <= maxMessage else { throw TooLarge(size: len, max: maxMessage) }
        guard buffer.readableBytes >= 4 + Int(len) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        context.fireChannelRead(Self.wrapInboundOut(buffer.readSlice(length: Int(len))!))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 { throw TruncatedMessage(bytes: buffer.readableBytes) }
        return .needMoreData
    }

    struct TruncatedMessage: Error, CustomStringConvertible {
        var bytes: Int
        var description: String { "connection closed inside a message (\(bytes) bytes of it received)" }
    }
}

/// Decodes each pickle message with the data-only decoder and spools its datapoints.
final class PickleHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let tap: CarbonTap
    var peer = "?"
    var hold = HoldQueue()

    init(tap: CarbonTap) {
        self.tap = tap
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.remoteAddress.map { "\($0)" } ?? "?"
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        let bytes = buf.readBytes(length: buf.readableBytes) ?? []
        let points: [PickleDecoder.Datapoint]
        do {
            points = try PickleDecoder.decode(bytes)
        } catch {
            tap.reportRefused(peer: peer, reason: error.reason)
            return
        }
        var out: [UInt8] = []
        var lines = 0
        for p in points {
            if let problem = CarbonLine.normalize(path: p.path, value: p.value, timestamp: p.timestamp, into: &out) {
                tap.reportInvalid(peer: peer, problem: "\(problem)", sample: String(p.path.prefix(120)))
            } else {
                lines += 1
            }
        }
        hold.store(out, lines: lines, tap: tap, context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !hold.resume(event, tap: tap, context: context) { context.fireUserInboundEventTriggered(event) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        hold.handOver(tap: tap, peer: peer)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        tap.reportRefused(peer: peer, reason: "\(error)")
        context.close(promise: nil)
    }
}

extension CarbonTap: TapService {
    /// `tap: {kind: carbon}`: the Carbon dual-write relay.
    public static let kind = TapKind(
        schema: TapKindSchema(kind: "carbon", keys: CarbonTapConfig.keys, required: CarbonTapConfig.required),
        locate: { plan in
            let c = try CarbonTapConfig(plan: plan)
            return TapLocation(directory: c.directory, controlSocket: c.controlSocket)
        },
        make: { plan, logger in try CarbonTap(config: try CarbonTapConfig(plan: plan), logger: logger) })
}
