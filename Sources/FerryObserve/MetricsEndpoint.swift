import CoreMetrics
import FerryCore
import FerryTap
import Foundation
public import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization

/// The process's Prometheus registry. `bootstrap()` installs it as swift-metrics' backend once; every metric
/// the engine, the taps and `ferry serve` record goes there.
public enum Observe {
    private static let state = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Installs the registry (once per process) and returns it.
    @discardableResult
    static func bootstrap() -> PrometheusCollectorRegistry {
        state.withLock { r in
            if let r { return r }
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(FerryMetricsFactory(registry: registry))
            r = registry
            return registry
        }
    }
}

/// `GET /metrics` over plain HTTP/1.1, in Prometheus' text format. Unauthenticated, so bounded: 32
/// connections at most (a new one closes the oldest), 10 s to send a request, heads limited by the HTTP
/// decoder, bodies ignored, one answer per connection.
public final class MetricsEndpoint: Sendable {
    public let address: String
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    static let maxConnections = 32

    /// Binds `listen` (`host:port`; port 0 picks a free one) and serves the process's registry (installing it
    /// as swift-metrics' backend the first time).
    public init(listen: String, logger: Logger) throws {
        let registry = Observe.bootstrap()
        guard let hp = HostPort.parse(listen, allowAnyPort: true) else {
            throw FerryError(.invalidPlan, "metrics.listen: expected HOST:PORT, got \"\(listen)\"")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // The open connections, oldest first. At the limit the oldest is closed to admit the newest: a flood of
        // silent connections cannot lock a scrape out until their idle timeout (a scrape takes milliseconds).
        let open = Mutex<[any Channel]>([])
        do {
            channel = try listening(on: hp.description, what: "the metrics endpoint") {
                try ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 64)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            let evicted = open.withLock { list -> (any Channel)? in
                                list.append(channel)
                                return list.count > Self.maxConnections ? list.removeFirst() : nil
                            }
                            evicted?.close(promise: nil)
                            let id = ObjectIdentifier(channel)
                            channel.closeFuture.whenComplete { _ in open.withLock { $0.removeAll { ObjectIdentifier($0) == id } } }
                            try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(10)))
                            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                            try channel.pipeline.syncOperations.addHandler(MetricsHandler(registry: registry))
                        }
                    }
                    .bind(host: hp.host, port: hp.port).wait()
            }
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        self.group = group
        let port = channel.localAddress?.port ?? hp.port
        address = HostPort(host: hp.host, port: port).description
        logger.info("metrics on http://\(address)/metrics")
    }

    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let registry: PrometheusCollectorRegistry
    var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let h = head else { return }
            head = nil
            let path = h.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? h.uri
            if h.method != .GET && h.method != .HEAD {
                answer(context, .methodNotAllowed, "only GET is served\n")
            } else if path == "/metrics" {
                answer(context, .ok, registry.emitToBuffer(), type: "text/plain; version=0.0.4; charset=utf-8", head: h.method == .HEAD)
            } else {
                answer(context, .notFound, "ferry serves /metrics only\n")
            }
        }
    }

    private func answer(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ text: String) {
        answer(context, status, Array(text.utf8), type: "text/plain; charset=utf-8", head: false)
    }

    private func answer(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ body: [UInt8], type: String, head: Bool) {
        let headers = HTTPHeaders([("content-type", type), ("content-length", String(body.count)), ("connection", "close")])
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !head { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
