/// Zero detection, for keeping holes: Whisper files and disk images are mostly zeros.
public enum Bytes {
    /// Whether every byte is zero (a word at a time).
    public static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let n = bytes.count
        while i + 8 <= n {
            if bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < n {
            if bytes[i] != 0 { return false }
            i += 1
        }
        return true
    }

    /// The runs of `bytes` that are not all zeros, as ranges of indices, at a granularity of `block` bytes
    /// counted from `offset` (its position in the file), so that holes line up with the file's blocks.
    public static func nonZeroRuns(_ bytes: UnsafeRawBufferPointer, offset: Int64, block: Int = 64 << 10) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var start = 0
        var runStart: Int?
        while start < bytes.count {
            let toBoundary = block - Int(((offset + Int64(start)) % Int64(block)))
            let end = min(bytes.count, start + toBoundary)
            let zero = isZero(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            if zero, let s = runStart {
                runs.append(s..<start)
                runStart = nil
            } else if !zero && runStart == nil {
                runStart = start
            }
            start = end
        }
        if let s = runStart { runs.append(s..<bytes.count) }
        return runs
    }
}
