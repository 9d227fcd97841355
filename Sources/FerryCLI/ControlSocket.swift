import FerryCore
import FerryEngine
import FerryTap
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// `ferry run`'s control socket, `STATE/ctl.sock` (mode 0600; a peer of another user is refused): one command
/// line in (`pause`, `throttle 20MiB/s`, ...), one answer out (`ok: ...` or `error: ...`), then closed. Commands
/// are carried out by `Job.control`, off the event loop (a pause waits for the copy threads to park).
final class JobControlServer {
    static func path(_ plan: Plan) -> String { plan.stateDirectory + "/ctl.sock" }
    /// The longest command line; a longer one is refused and the connection closed.
    static let maxLine = 1024
    /// Connections at once; more are refused with an answer. Only the job's own user can connect at all.
    static let maxConnections = 16
    /// A connection that sends no complete line within this is closed.
    static let idleTimeout: TimeAmount = .seconds(10)

    let group: MultiThreadedEventLoopGroup
    let channel: any Channel

    private init(group: MultiThreadedEventLoopGroup, channel: any Channel) {
        self.group = group
        self.channel = channel
    }

    /// Serves `job`'s control socket; nil (with a log line saying why) when another run on the job already
    /// serves it or the socket cannot be bound. Steering then still follows the ledger.
    static func start(_ job: Job, logger: Logger) -> JobControlServer? {
        let path = path(job.plan)
        do {
            if try unixExchange(path, Array("status\n".utf8), timeout: 5, what: "ferry ctl", untilNewline: false) != nil {
                logger.info("another ferry run on this job serves its control socket; this one follows the ledger's settings")
                return nil
            }
        } catch {
            logger.warning("the control socket is not served (ferry ctl still records settings in the ledger): \(error)")
            return nil
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let ledger = try job.openLedger(create: true)
            let connections = ConnectionCount()
            let controlled = ControlledJob(job)
            let channel = try listening(on: path, what: "the job's control socket (ferry ctl)") {
                try ServerBootstrap(group: group)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            let ops = channel.pipeline.syncOperations
                            try ops.addHandler(OwnerOnlyHandler())
                            try ops.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                            try ops.addHandler(ControlLineHandler(job: controlled, ledger: ledger, connections: connections))
                        }
                    }
                    .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
            }
            chmod(path, 0o600)
            return JobControlServer(group: group, channel: channel)
        } catch {
            logger.warning("the control socket is not served (ferry ctl still records settings in the ledger): \(error)")
            try? group.syncShutdownGracefully()
            return nil
        }
    }

    func stop() {
        let path = channel.localAddress?.pathname
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
        if let path { unlink(path) }
    }
}

/// The job as the control socket's threads see it. @unchecked: `Job.control` reads only its immutable plan and
/// its Sendable steering, progress and logger; the mutable `tap` is never touched from here.
final class ControlledJob: @unchecked Sendable {
    let job: Job
    init(_ job: Job) { self.job = job }
}

final class ConnectionCount: Sendable {
    private let count = Mutex(0)
    func enter() -> Bool {
        count.withLock { n in
            n < JobControlServer.maxConnections
                ? {
                    n += 1; return true
                }() : false
        }
    }
    func leave() { count.withLock { $0 -= 1 } }
}

/// One control connection: reads a command line, answers it, closes.
final class ControlLineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let job: ControlledJob
    let ledger: Ledger
    let connections: ConnectionCount
    private var pending: [UInt8] = []
    private var counted = false
    private var answered = false

    init(job: ControlledJob, ledger: Ledger, connections: ConnectionCount) {
        self.job = job
        self.ledger = ledger
        self.connections = connections
    }

    func channelActive(context: ChannelHandlerContext) {
        counted = connections.enter()
        if !counted { answer(context, "error: too many control connections at once; try again") }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted { connections.leave() }
        counted = false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        var buf = unwrapInboundIn(data)
        pending.append(contentsOf: buf.readBytes(length: buf.readableBytes) ?? [])
        guard let nl = pending.firstIndex(of: 0x0A) else {
            if pending.count > JobControlServer.maxLine {
                answer(context, "error: command longer than \(JobControlServer.maxLine) bytes; \(ControlCommand.usage)")
            }
            return
        }
        guard nl <= JobControlServer.maxLine, let line = String(validating: pending[..<nl], as: UTF8.self) else {
            answer(context, "error: a command is one line of UTF-8 text of at most \(JobControlServer.maxLine) bytes")
            return
        }
        answered = true
        let command: ControlCommand
        switch ControlCommand.parse(line) {
        case .success(let c): command = c
        case .failure(let e):
            answer(context, "error: \(e.message)")
            return
        }
        let who = OwnerOnlyHandler.peer(context.channel).map { "uid \($0.uid) pid \($0.pid)" } ?? "unknown peer"
        let (job, ledger) = (job, ledger)
        let loop = context.eventLoop
        let bound = NIOLoopBound(context, eventLoop: loop)
        let handler = NIOLoopBound(self, eventLoop: loop)
        DispatchQueue.global().async {
            let text: String
            do {
                text = "ok: " + (try job.job.control(command, ledger: ledger, live: true, by: who))
            } catch {
                text = "error: \(error)"
            }
            loop.execute { handler.value.answer(bound.value, text) }
        }
    }

    func answer(_ context: ChannelHandlerContext, _ text: String) {
        answered = true
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text + "\n"))).whenComplete { _ in bound.value.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent, !answered {
            answer(context, "error: no complete command line within \(JobControlServer.idleTimeout.nanoseconds / 1_000_000_000) s")
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
