import CoreMetrics
import FerryCore
import Foundation
import NIOCore
import NIOHTTP1

/// One request as the operations see it: the operation name, the headers and the whole body.
struct ServerRequest: Sendable {
    var operation: String
    var headers: [String: String]
    var body: [UInt8]
}

/// What an operation answers: bytes, or nothing more when it streamed its answer itself (a walk).
enum ServerReply: Sendable {
    case bytes(status: Int, headers: [(String, String)], body: [UInt8])
    case streamed

    /// The header of an answer that is JSON.
    static let jsonType = ("content-type", "application/json")

    static func json<T: Encodable>(_ value: T) -> ServerReply {
        .bytes(status: 200, headers: [jsonType], body: Wire.encode(value))
    }

    static func failure(_ status: Int, _ code: String, _ message: String) -> ServerReply {
        .bytes(status: status, headers: [jsonType], body: Wire.encode(Wire.Failure(code: code, message: message)))
    }
}

/// Parses, bounds and authenticates on the event loop; hands the request to the server's thread pool.
/// Nothing of a request is kept before its head is authenticated, and no body grows past its operation's
/// bound or the server's memory bound.
final class RemoteRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: RemoteServer
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var limit = 0
    var held = 0
    var rejected = false
    /// A request is being served: the idle timeout waits for its answer.
    var busy = false

    init(server: RemoteServer) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            rejected = false
            limit = server.bodyLimit(h.uri)
            guard server.config.token.accepts(h.headers.first(name: "authorization")) else {
                refuse(context, 401, "unauthorized", "a valid bearer token is required")
                return
            }
            guard h.method == .POST else {
                refuse(context, 405, "method", "only POST is served")
                return
            }
            if let n = h.headers.first(name: "content-length").flatMap(Int.init), n > limit {
                refuse(context, 413, "tooLarge", "the body of \(n) bytes exceeds the \(limit) this operation accepts")
                return
            }
            if h.headers.first(name: "expect")?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .continue))), promise: nil)
            }
        case .body(let b):
            if rejected { return }
            let n = b.readableBytes
            guard body.count + n <= limit else {
                refuse(context, 413, "tooLarge", "the body exceeds the \(limit) bytes this operation accepts")
                return
            }
            guard server.reserve(n) else {
                refuse(context, 503, "busy", "the server holds too many request bodies; retry")
                return
            }
            held += n
            body += b.readableBytesView
        case .end:
            guard let h = head, !rejected else { return }
            var headers: [String: String] = [:]
            for (k, v) in h.headers { headers[k.lowercased()] = v }
            let request = ServerRequest(operation: RemoteServer.operation(h.uri), headers: headers, body: body)
            ServeMetrics.request(request.operation, bodyBytes: body.count)
            body = []
            let release = held
            held = 0
            busy = true
            let keepAlive = h.isKeepAlive
            let channel = context.channel
            let server = self.server
            let loop = context.eventLoop
            let future = server.pool.runIfActive(eventLoop: loop) { () -> ServerReply in
                server.serve(request, channel: channel)
            }
            let bound = NIOLoopBound(self, eventLoop: loop)
            future.whenComplete { result in
                server.release(release)
                let handler = bound.value
                handler.busy = false
                switch result {
                case .success(.bytes(let status, let headers, let body)):
                    handler.send(channel: channel, status: status, headers: headers, body: body, keepAlive: keepAlive)
                case .success(.streamed):
                    if !keepAlive { channel.close(promise: nil) }
                case .failure:
                    channel.close(promise: nil)  // the pool is shutting down
                }
            }
        }
    }

    func send(channel: any Channel, status: Int, headers: [(String, String)], body: [UInt8], keepAlive: Bool) {
        var h = HTTPHeaders(headers)
        h.replaceOrAdd(name: "content-length", value: String(body.count))
        if !keepAlive { h.replaceOrAdd(name: "connection", value: "close") }
        channel.write(
            HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: h)), promise: nil
        )
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
        let done = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
        if !keepAlive { done.whenComplete { _ in channel.close(promise: nil) } }
    }

    /// Answers and closes: nothing more of this connection is read.
    func refuse(_ context: ChannelHandlerContext, _ status: Int, _ code: String, _ message: String) {
        rejected = true
        body = []
        ServeMetrics.refused.increment()
        server.release(held)
        held = 0
        server.logRefusal(message, context.channel.remoteAddress.map { "\($0)" } ?? "?")
        let reply = Wire.encode(Wire.Failure(code: code, message: message))
        var h = HTTPHeaders([("content-type", "application/json"), ("connection", "close")])
        h.replaceOrAdd(name: "content-length", value: String(reply.count))
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: h))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: reply)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            if !busy { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        server.release(held)
        held = 0
        body = []
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// `ferry serve`'s metrics (no-ops unless `--metrics-listen` installed a backend).
enum ServeMetrics {
    static let operations: Set<String> = [
        "hello", "walk", "stat", "read", "hash", "op", "writer/open", "writer/write", "writer/put", "writer/durable",
        "writer/publish", "writer/discard", "merge", "compare", "fence", "remove", "points", "batch",
    ]
    static let refused = Counter(label: Telemetry.errors, dimensions: [("kind", "request")])
    static let bytesIn = Counter(label: Telemetry.serveBytesIn)

    /// Counts an answered request under its operation; any name a client made up counts as "other" (a label
    /// per made-up name would let a client grow the registry without bound).
    static func request(_ operation: String, bodyBytes: Int) {
        let name = operations.contains(operation) ? operation : "other"
        Counter(label: Telemetry.serveRequests, dimensions: [("operation", name)]).increment()
        if bodyBytes > 0 { bytesIn.increment(by: bodyBytes) }
    }
}
