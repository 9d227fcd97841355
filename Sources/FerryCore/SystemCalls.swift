#if canImport(Glibc)
import Glibc
#endif

/// System calls wrapped once, for every target: the start of the one system layer.
public enum SystemCalls {
    /// Writes all of `bytes` at `offset` (pwrite, retried on EINTR and after short writes). `what` names the
    /// file in the error.
    public static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, what: String) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("write", errno: errno, path: what)
            }
            done += n
        }
    }
}
