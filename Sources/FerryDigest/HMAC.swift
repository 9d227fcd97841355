internal import CCrypto

/// HMAC-SHA256 over OpenSSL (what SigV4 signing chains four times per request).
public enum HMACSHA256 {
    public static func mac(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        let ok = key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                out.withUnsafeMutableBufferPointer { o in
                    ferry_hmac_sha256(k.baseAddress, k.count, d.baseAddress, d.count, o.baseAddress)
                }
            }
        }
        precondition(ok == 1, "OpenSSL HMAC-SHA256 failed")
        return out
    }
}

extension Digest256 {
    /// Lowercase hex of any byte string.
    public static func hex(_ bytes: [UInt8]) -> String { Digest256(bytes: bytes).hex }
}
