internal import CCrypto

/// A 32-byte SHA-256 digest.
public struct Digest256: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 32, "a SHA-256 digest is 32 bytes")
        self.bytes = bytes
    }

    /// Parses a 64-character lowercase or uppercase hex string.
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 {
            guard let hi = Self.nibble(utf8[2 * i]), let lo = Self.nibble(utf8[2 * i + 1]) else { return nil }
            out[i] = hi << 4 | lo
        }
        self.bytes = out
    }

    public var hex: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { hex }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// The one fetched SHA-256 implementation; fetching per hasher costs a lock and a lookup in OpenSSL 3.
// OpenSSL documents a fetched EVP_MD as immutable and safe to share between threads.
nonisolated(unsafe) private let sha256Method: OpaquePointer = {
    guard let md = EVP_MD_fetch(nil, "SHA256", nil) else {
        fatalError("OpenSSL libcrypto has no SHA256 implementation")
    }
    return md
}()

/// Incremental SHA-256 over OpenSSL's EVP interface. Not thread-safe: one hasher per stream.
public final class SHA256Hasher {
    private let ctx: OpaquePointer

    public init() {
        guard let ctx = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new failed: out of memory") }
        self.ctx = ctx
        reset()
    }

    deinit { EVP_MD_CTX_free(ctx) }

    /// Starts a new digest, forgetting everything fed so far.
    public func reset() {
        guard EVP_DigestInit_ex2(ctx, sha256Method, nil) == 1 else { fatalError("EVP_DigestInit_ex2 failed") }
    }

    public func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        guard EVP_DigestUpdate(ctx, base, buffer.count) == 1 else { fatalError("EVP_DigestUpdate failed") }
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Returns the digest and resets the hasher for the next stream.
    public func finish() -> Digest256 {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        out.withUnsafeMutableBufferPointer { buf in
            guard EVP_DigestFinal_ex(ctx, buf.baseAddress, &len) == 1, len == 32 else {
                fatalError("EVP_DigestFinal_ex failed")
            }
        }
        reset()
        return Digest256(bytes: out)
    }

    /// One-shot digest of a buffer.
    /// ferry's hash of an object sent in chunks: the SHA-256 of its chunks' SHA-256 digests (32 raw bytes each,
    /// in order). It proves the same content as a whole-object hash for a given chunk size, and costs no second
    /// pass over the bytes. Nil when a digest is not 64 hex characters.
    public static func chunkListDigest(_ hexDigests: [String]) -> Digest256? {
        var all: [UInt8] = []
        all.reserveCapacity(32 * hexDigests.count)
        for h in hexDigests {
            guard let d = Digest256(hex: h) else { return nil }
            all += d.bytes
        }
        return digest(all)
    }

    public static func digest(_ bytes: [UInt8]) -> Digest256 {
        let h = SHA256Hasher()
        h.update(bytes)
        return h.finish()
    }
}
