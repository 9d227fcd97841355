internal import CZstd

/// A zstd frame that cannot be decoded, or that would decode to more bytes than the caller allows.
public struct ZstdError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// Compresses with one reusable libzstd context (not thread-safe: one per thread or per connection).
public final class ZstdCompressor {
    private let context: OpaquePointer
    public let level: Int32

    public init(level: Int32 = 3) {
        guard let c = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx failed: out of memory") }
        context = c
        self.level = level
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        // The frame records its content size, so the receiver can bound what it allocates before decoding.
        ZSTD_CCtx_setParameter(context, ZSTD_c_contentSizeFlag, 1)
    }

    deinit { ZSTD_freeCCtx(context) }

    /// One complete zstd frame holding `source`.
    public func compress(_ source: UnsafeRawBufferPointer) -> [UInt8] {
        let bound = ZSTD_compressBound(source.count)
        // Not zero-filled first: zstd writes what it returns, and only that much is kept.
        return [UInt8](unsafeUninitializedCapacity: bound) { dst, count in
            let n = ZSTD_compress2(context, dst.baseAddress, dst.count, source.baseAddress, source.count)
            // With a buffer of compressBound bytes, compression cannot fail for lack of room.
            precondition(ZSTD_isError(n) == 0, "ZSTD_compress2: \(String(cString: ZSTD_getErrorName(n)))")
            count = n
        }
    }

    public func compress(_ source: [UInt8]) -> [UInt8] { source.withUnsafeBytes { compress($0) } }
}

/// Decompresses with one reusable libzstd context (not thread-safe).
public final class ZstdDecompressor {
    private let context: OpaquePointer

    public init() {
        guard let d = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx failed: out of memory") }
        context = d
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Decodes one frame into a fresh buffer. The frame must state its content size and it must not exceed
    /// `limit`: a hostile frame cannot make the receiver allocate more than it would accept uncompressed.
    public func decompress(_ frame: UnsafeRawBufferPointer, limit: Int) throws -> [UInt8] {
        let size = ZSTD_getFrameContentSize(frame.baseAddress, frame.count)
        if size == ZSTD_CONTENTSIZE_ERROR { throw ZstdError(description: "not a zstd frame") }
        if size == ZSTD_CONTENTSIZE_UNKNOWN { throw ZstdError(description: "the zstd frame does not state its size") }
        guard size <= UInt64(limit) else { throw ZstdError(description: "the zstd frame holds \(size) bytes, more than the \(limit) allowed") }
        var n = 0
        // Not zero-filled first: only the bytes zstd wrote are kept.
        let out = [UInt8](unsafeUninitializedCapacity: Int(size)) { dst, count in
            n = ZSTD_decompressDCtx(context, dst.baseAddress, dst.count, frame.baseAddress, frame.count)
            count = ZSTD_isError(n) != 0 ? 0 : n
        }
        if ZSTD_isError(n) != 0 { throw ZstdError(description: "corrupt zstd frame: \(String(cString: ZSTD_getErrorName(n)))") }
        guard n == Int(size) else { throw ZstdError(description: "the zstd frame decoded to \(n) bytes, not the \(size) it states") }
        return out
    }

    public func decompress(_ frame: [UInt8], limit: Int) throws -> [UInt8] { try frame.withUnsafeBytes { try decompress($0, limit: limit) } }
}
