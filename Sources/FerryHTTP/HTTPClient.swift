internal import CCurl
import Foundation

/// One HTTP exchange's result.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [String: String]  // lowercased names
    public var body: [UInt8]
}

/// What a request sends: bytes in memory, or the first `size` bytes of a file read as they go (a large request
/// body a proxy has spooled to disk is never loaded whole).
public enum HTTPBody: Sendable {
    case bytes([UInt8])
    case file(path: String, size: Int)

    public static let empty = HTTPBody.bytes([])

    public var count: Int {
        switch self {
        case .bytes(let b): return b.count
        case .file(_, let size): return size
        }
    }
}

/// A transport-level failure (no HTTP status): connection refused, timeout, reset.
public struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    public var code: Int
    public var message: String
    public var description: String { "HTTP transport error \(code): \(message)" }
}

private let curlGlobal: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

/// A libcurl easy handle, reused across requests so the connection stays alive (HTTP/1.1 keep-alive). Not
/// thread-safe: one client per thread.
public final class HTTPClient {
    private let handle: UnsafeMutableRawPointer
    public var connectTimeout: Int = 10
    /// Abort a transfer slower than 1 KiB/s for this many seconds.
    public var lowSpeedTime: Int = 30
    /// A PEM file of the certificate authorities to trust instead of the system's (a private CA).
    public var caFile: String?
    /// Connect through this unix socket instead of TCP (the URL still names the host for the request).
    public var unixSocket: String?

    public init() {
        _ = curlGlobal
        guard let h = curl_easy_init() else { fatalError("curl_easy_init failed") }
        handle = h
    }

    deinit { curl_easy_cleanup(handle) }

    final class Exchange {
        var body: [UInt8] = []
        /// Where a streamed response's body goes, piece by piece, instead of `body` (false stops the transfer).
        var sink: ((UnsafeRawBufferPointer) -> Bool)?
        var status = 0
        var headers: [String: String] = [:]
        var upload: [UInt8] = []
        /// A file-backed upload: read with pread at `sent`.
        var fd: Int32 = -1
        var size = 0
        var sent = 0
        init(upload: HTTPBody) throws {
            switch upload {
            case .bytes(let b):
                self.upload = b
                size = b.count
            case .file(let path, let n):
                fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    throw HTTPTransportError(code: -1, message: "cannot open the request body \(path): \(String(cString: strerror(errno)))")
                }
                size = n
            }
        }
        deinit { if fd >= 0 { close(fd) } }

        /// Fills `dst` with up to `capacity` next bytes of the upload; CURL_READFUNC_ABORT on a read error.
        func read(into dst: UnsafeMutableRawPointer, capacity: Int) -> Int {
            let count = min(capacity, size - sent)
            guard count > 0 else { return 0 }
            if fd >= 0 {
                let n = pread(fd, dst, count, off_t(sent))
                guard n > 0 else { return Int(CURL_READFUNC_ABORT) }
                sent += n
                return n
            }
            upload.withUnsafeBytes { src in dst.copyMemory(from: src.baseAddress! + sent, byteCount: count) }
            sent += count
            return count
        }
    }

    public func perform(method: String, url: String, headers: [(String, String)], body: [UInt8] = []) throws -> HTTPResponse {
        try perform(method: method, url: url, headers: headers, upload: .bytes(body))
    }

    public func perform(method: String, url: String, headers: [(String, String)], upload body: HTTPBody) throws -> HTTPResponse {
        try perform(method: method, url: url, headers: headers, upload: body, sink: nil)
    }

    /// Performs a request whose response body is handed to `sink` as it arrives when the status is 2xx (the body
    /// of any other status is collected in the response, for its error message). `sink` returning false aborts.
    public func perform(
        method: String, url: String, headers: [(String, String)], upload body: HTTPBody,
        sink: ((UnsafeRawBufferPointer) -> Bool)?
    ) throws -> HTTPResponse {
        curl_easy_reset(handle)
        let ex = try Exchange(upload: body)
        ex.sink = sink
        let box = Unmanaged.passRetained(ex)
        defer { box.release() }
        var list: UnsafeMutablePointer<curl_slist>? = nil
        for (k, v) in headers + [("Expect", "")] { list = curl_slist_append(list, "\(k): \(v)") }
        defer { curl_slist_free_all(list) }
        ferry_setopt_str(handle, CURLOPT_URL, url)
        ferry_setopt_slist(handle, CURLOPT_HTTPHEADER, list)
        ferry_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        // The path goes as it was signed: libcurl must not remove `.`/`..` segments (keys are confined by their
        // callers, and a rewritten path would no longer match its signature).
        ferry_setopt_long(handle, CURLOPT_PATH_AS_IS, 1)
        ferry_setopt_long(handle, CURLOPT_CONNECTTIMEOUT, connectTimeout)
        ferry_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1024)
        ferry_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, lowSpeedTime)
        if let caFile { ferry_setopt_str(handle, CURLOPT_CAINFO, caFile) }
        if let unixSocket { ferry_setopt_str(handle, CURLOPT_UNIX_SOCKET_PATH, unixSocket) }
        ferry_setopt_ptr(handle, CURLOPT_WRITEDATA, box.toOpaque())
        ferry_setopt_cb(handle, CURLOPT_WRITEFUNCTION) { ptr, size, n, user in
            let ex = Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue()
            let count = size * n
            if let sink = ex.sink, (200..<300).contains(ex.status) {
                return sink(UnsafeRawBufferPointer(start: ptr, count: count)) ? count : 0
            }
            ptr!.withMemoryRebound(to: UInt8.self, capacity: count) { ex.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: count)) }
            return count
        }
        ferry_setopt_ptr(handle, CURLOPT_HEADERDATA, box.toOpaque())
        ferry_setopt_cb(handle, CURLOPT_HEADERFUNCTION) { ptr, size, n, user in
            let ex = Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue()
            let count = size * n
            let line = ptr!.withMemoryRebound(to: UInt8.self, capacity: count) {
                String(decoding: UnsafeBufferPointer(start: $0, count: count), as: UTF8.self)
            }
            if let colon = line.firstIndex(of: ":") {
                let name = line[..<colon].lowercased()
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
                ex.headers[name] = value
            } else if line.hasPrefix("HTTP/") {
                ex.headers = [:]  // a new response (after a redirect or 100): forget the previous headers
                let fields = line.split(separator: " ")
                ex.status = fields.count > 1 ? Int(fields[1]) ?? 0 : 0
            }
            return count
        }
        switch method {
        case "GET": ferry_setopt_long(handle, CURLOPT_HTTPGET, 1)
        case "HEAD": ferry_setopt_long(handle, CURLOPT_NOBODY, 1)
        case "PUT", "POST":
            ferry_setopt_long(handle, CURLOPT_UPLOAD, 1)
            ferry_setopt_off(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(body.count))
            ferry_setopt_ptr(handle, CURLOPT_READDATA, box.toOpaque())
            ferry_setopt_cb(handle, CURLOPT_READFUNCTION) { ptr, size, n, user in
                Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue().read(into: UnsafeMutableRawPointer(ptr!), capacity: size * n)
            }
            if method == "POST" { ferry_setopt_str(handle, CURLOPT_CUSTOMREQUEST, "POST") }
        default:
            ferry_setopt_str(handle, CURLOPT_CUSTOMREQUEST, method)
        }
        let rc = curl_easy_perform(handle)
        guard rc == CURLE_OK else {
            throw HTTPTransportError(code: Int(rc.rawValue), message: String(cString: curl_easy_strerror(rc)))
        }
        var status = 0
        ferry_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: ex.headers, body: ex.body)
    }
}
