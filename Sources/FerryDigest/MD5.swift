internal import CCrypto

/// MD5, for the one place S3 still asks for it: the `Content-MD5` of a request body the tap rewrites
/// (DeleteObjects under a side prefix). Not for integrity: ferry's own checks are SHA-256.
public enum MD5 {
    public static func digest(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        var len: UInt32 = 0
        let ok = bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                EVP_Digest(src.baseAddress, src.count, dst.baseAddress!.assumingMemoryBound(to: UInt8.self), &len, EVP_md5(), nil)
            }
        }
        precondition(ok == 1 && len == 16, "EVP_Digest(MD5) failed")
        return out
    }
}
