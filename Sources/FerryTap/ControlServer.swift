import FerryCore
import Foundation
public import NIOCore
import NIOPosix

/// A `host:port` pair.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `HOST:PORT` (`[v6]:PORT`); with `allowAnyPort`, port 0 (the system picks a free one) is accepted.
    public static func parse(_ text: String, allowAnyPort: Bool = false) -> HostPort? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), port > (allowAnyPort ? -1 : 0),
            port < 65536
        else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return HostPort(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Binds a tap's control socket at `path` (mode 0600: the tap's user only), serving `server`'s requests on
/// `group`. A failure names the socket.
public func bindControlSocket(_ path: String, group: any EventLoopGroup, server: any TapServer & Sendable) throws -> any Channel {
    let channel = try listening(on: path, what: "the tap's control socket") {
        try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(OwnerOnlyHandler())
                    try channel.pipeline.syncOperations.addHandler(ControlHandler(handle: { server.handle($0) }))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
    }
    chmod(path, 0o600)
    return channel
}

/// First on a control socket's connection: the peer (SO_PEERCRED) must be this process's own user. Anyone
/// else is told so and disconnected before a byte of theirs is read. The socket's mode (0600) refuses them first;
/// this holds when a umask or a chmod has opened it.
public final class OwnerOnlyHandler: ChannelInboundHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer
    private var allowed = false

    public init() {}

    /// SO_PEERCRED's `struct ucred`, field for field (pid_t, uid_t, gid_t).
    public struct PeerCredentials: Sendable {
        public var pid: Int32 = 0
        public var uid: UInt32 = 0
        public var gid: UInt32 = 0
    }

    /// The peer's credentials, when the channel can tell. Call it on the channel's event loop.
    public static func peer(_ channel: any Channel) -> PeerCredentials? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        let out = NIOLoopBoundBox<PeerCredentials?>(nil, eventLoop: channel.eventLoop)
        // On the channel's own event loop the option is read at once: the future is complete on return.
        let future: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        future.whenSuccess { out.value = $0 }
        return out.value
    }

    public func channelActive(context: ChannelHandlerContext) {
        let me = geteuid()
        guard let cred = Self.peer(context.channel), cred.uid == me else {
            let who = Self.peer(context.channel).map { "uid \($0.uid)" } ?? "an unknown user"
            let text = "error: refused: \(who) is not the owner of this socket (uid \(me))\n"
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).whenComplete { _ in bound.value.close(promise: nil) }
            return
        }
        allowed = true
        context.fireChannelActive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if allowed { context.fireChannelRead(data) }
    }
}

/// The control socket: one JSON request per line, one JSON response per line.
public final class ControlHandler: ChannelInboundHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer
    let handle: (ControlRequest) -> ControlResponse
    var pending: [UInt8] = []

    public init(handle: @escaping (ControlRequest) -> ControlResponse) {
        self.handle = handle
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        pending.append(contentsOf: buf.readBytes(length: buf.readableBytes) ?? [])
        guard pending.count <= 65536 else {
            context.close(promise: nil)
            return
        }
        while let nl = pending.firstIndex(of: 0x0A) {
            let line = Array(pending[..<nl])
            pending.removeSubrange(...nl)
            let response: ControlResponse
            if let req = try? JSONDecoder().decode(ControlRequest.self, from: Data(line)) {
                response = handle(req)
            } else {
                response = ControlResponse(ok: false, error: "expected one JSON request per line")
            }
            var data = (try? JSONEncoder().encode(response)) ?? Data("{\"ok\":false}".utf8)
            data.append(0x0A)
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: data)), promise: nil)
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
