public import FerryCore
import Foundation

/// What `ferry run --dry-run` found: an inventory and an estimate. Computed without writing anything.
public struct Inventory: Codable, Sendable {
    public struct Largest: Codable, Sendable {
        public var path: String
        public var size: Int64
    }
    public struct TopLevel: Codable, Sendable {
        public var name: String
        public var files: Int64
        public var bytes: Int64
    }
    public var files: Int64 = 0
    public var bytes: Int64 = 0
    public var directories: Int64 = 0
    public var symlinks: Int64 = 0
    /// Hard links (second names of a file) and special files that will be recreated.
    public var hardLinks: Int64 = 0
    public var specials: Int64 = 0
    /// Entries that would be refused (unreadable, or unrepresentable at the destination; first 100), and how many.
    /// The run fails while there are any.
    public var refused: [String] = []
    public var refusedCount: Int64 = 0
    /// Entries an explicit plan policy leaves out (first 100), and how many.
    public var skippedByPolicy: [String] = []
    public var skippedByPolicyCount: Int64 = 0
    /// The symlink policy in force, and whether it is the destination's default.
    public var symlinkPolicy: String = "copy"
    /// What this destination cannot keep of entries it still receives (a bucket): reported, not refused.
    public var xattrsNotKept: Int64 = 0
    public var linksAsCopies: Int64 = 0
    /// (upper bound label, files, bytes) per size class.
    public var histogram: [Bucket] = []
    public struct Bucket: Codable, Sendable {
        public var label: String
        public var files: Int64
        public var bytes: Int64
    }
    public var largest: [Largest] = []
    public var topLevel: [TopLevel] = []
    public var probeBytesPerSecond: Double = 0
    public var probeSecondsPerFile: Double = 0
    /// The destination, probed read-only: seconds per metadata request (a stat, a HEAD), and the error when it
    /// cannot be reached (wrong credentials, a refused connection).
    public var destinationSecondsPerRequest: Double = 0
    public var destinationRequests: Int = 0
    public var destinationError: String?
    /// The destination's root does not exist yet (the run creates it): nothing there to probe or merge into.
    public var destinationMissing = false
    /// A destination that merges (metric trees): how many source files already exist there and will be merged,
    /// and the measured cost of one merge (reading both files, and writing the destination's back).
    public var merging: Bool = false
    public var toMerge: Int64 = 0
    public var mergeSecondsPerFile: Double = 0
    /// Files present on both sides whose layout (Whisper archives, aggregation) differs: compared on up to 200 of
    /// them; the first few are listed.
    public var schemasCompared: Int = 0
    public var schemaDifferences: Int = 0
    public var schemaExamples: [String] = []
    /// The parts of the estimate, in seconds: streaming the bytes, the per-file cost at the source, the
    /// destination's requests, the merges.
    public var estimateParts: [String: Double] = [:]
    public var estimatedSeconds: Double = 0
}

public enum DryRun {
    /// Walks the source, keeping only bounded aggregates (top 10 files, per top-level directory totals), then
    /// measures read throughput for about a second to estimate the copy time.
    static let classes: [(Int64, String)] = [
        (64 << 10, "< 64 KiB"), (1 << 20, "< 1 MiB"), (16 << 20, "< 16 MiB"), (256 << 20, "< 256 MiB"),
        (Int64.max, ">= 256 MiB"),
    ]

    public static func inventory(
        source: any Store, destination: any Store, plan: Plan, probeSeconds: Double = 1.0
    ) throws -> Inventory {
        let bandwidth = plan.copy.bandwidth
        let concurrency = plan.copy.concurrency
        var inv = Inventory()
        inv.histogram = classes.map { Inventory.Bucket(label: $0.1, files: 0, bytes: 0) }
        var filter = EntryFilter(plan: plan, destination: destination)
        let (policy, defaulted) = EntryFilter.symlinkPolicy(plan, destination: destination)
        inv.symlinkPolicy = policy.rawValue + (defaulted ? " (the default for this destination)" : "")
        var top: [String: (Int64, Int64)] = [:]
        var largest: [Inventory.Largest] = []
        var smallSample: [String] = []
        let merger = destination is any Merging
        inv.merging = merger
        var overlap: [String] = []
        try source.walk(
            { found in
                let e: Entry
                switch filter.classify(found) {
                case .copy(let c): e = c
                case .refuse(let why):
                    inv.refusedCount += 1
                    if inv.refused.count < 100 { inv.refused.append("\(RawName.display(found.path)): \(why)") }
                    return
                case .skip(let why):
                    inv.skippedByPolicyCount += 1
                    if inv.skippedByPolicy.count < 100 { inv.skippedByPolicy.append("\(RawName.display(found.path)): \(why)") }
                    return
                }
                if !destination.keepsPOSIXMetadata {
                    if !e.xattrs.isEmpty { inv.xattrsNotKept += 1 }
                    if e.kind == .file && e.links > 1 { inv.linksAsCopies += 1 }
                }
                switch e.kind {
                case .directory: inv.directories += 1
                case .symlink: inv.symlinks += 1
                case .hardlink: inv.hardLinks += 1
                case .fifo, .socket, .charDevice, .blockDevice: inv.specials += 1
                case .file:
                    inv.files += 1
                    inv.bytes += e.size
                    let c = classes.firstIndex { e.size < $0.0 } ?? classes.count - 1
                    inv.histogram[c].files += 1
                    inv.histogram[c].bytes += e.size
                    let first = e.path.split(separator: "/", maxSplits: 1).count > 1 ? String(e.path.split(separator: "/")[0]) + "/" : "."
                    top[first, default: (0, 0)].0 += 1
                    top[first, default: (0, 0)].1 += e.size
                    if largest.count < 10 || e.size > largest.last!.size {
                        largest.append(.init(path: e.path, size: e.size))
                        largest.sort { $0.size > $1.size }
                        if largest.count > 10 { largest.removeLast() }
                    }
                    if e.size < 1 << 20 && smallSample.count < 200 { smallSample.append(e.path) }
                    // A merging destination: every file is looked up there (a stat, read-only), to count merges.
                    if merger && inv.destinationError == nil && !inv.destinationMissing {
                        do {
                            if try destination.stat(e.path) != nil {
                                inv.toMerge += 1
                                if overlap.count < 200 { overlap.append(e.path) }
                            }
                        } catch let e as SystemCallError where e.errno == ENOENT {
                            inv.destinationMissing = true  // no destination yet: nothing to merge into
                        } catch {
                            inv.destinationError = "\(error)"
                        }
                    }
                }
            },
            skipped: { s in
                if s.category == .policy {
                    inv.skippedByPolicyCount += 1
                    if inv.skippedByPolicy.count < 100 { inv.skippedByPolicy.append("\(RawName.display(s.path)): \(s.reason)") }
                } else {
                    inv.refusedCount += 1
                    if inv.refused.count < 100 { inv.refused.append("\(RawName.display(s.path)): \(s.reason)") }
                }
            })
        inv.largest = largest
        inv.topLevel = top.map { .init(name: $0.key, files: $0.value.0, bytes: $0.value.1) }.sorted { $0.bytes > $1.bytes }
        let probe = measure(source: source, large: largest.map(\.path), small: smallSample, seconds: probeSeconds)
        inv.probeBytesPerSecond = probe.bytesPerSecond
        inv.probeSecondsPerFile = probe.secondsPerFile
        var rate = probe.bytesPerSecond * Double(max(1, min(concurrency, 2)))
        if let bw = bandwidth { rate = min(rate, Double(bw)) }
        let perFile = probe.secondsPerFile / Double(max(1, concurrency))
        let lanes = Double(max(1, concurrency))
        if inv.destinationError == nil && !inv.destinationMissing {
            let d = probeDestination(destination, paths: smallSample + largest.map(\.path), seconds: probeSeconds / 2)
            inv.destinationSecondsPerRequest = d.secondsPerRequest
            inv.destinationRequests = d.requests
            inv.destinationError = d.error
        }
        let copied = max(0, inv.files - inv.toMerge)
        var parts: [String: Double] = [
            "bytes": rate > 0 ? Double(inv.bytes) / rate : 0,
            "source per file": Double(inv.files) * perFile,
            // A copied file costs the destination about two requests (its creation, and publishing it).
            "destination per file": Double(copied) * 2 * inv.destinationSecondsPerRequest / lanes,
        ]
        if merger && inv.toMerge > 0 {
            inv.mergeSecondsPerFile = measureMerge(source: source, destination: destination, paths: overlap, seconds: probeSeconds / 2)
            parts["merges"] = Double(inv.toMerge) * inv.mergeSecondsPerFile / lanes
        }
        if let a = source as? any SchemaDescribing, let b = destination as? any SchemaDescribing {
            for path in overlap {
                guard let sa = try? a.schema(path), let sb = try? b.schema(path) else { continue }
                inv.schemasCompared += 1
                if sa != sb {
                    inv.schemaDifferences += 1
                    if inv.schemaExamples.count < 5 { inv.schemaExamples.append("\(RawName.display(path)): source \(sa), destination \(sb)") }
                }
            }
        }
        inv.estimateParts = parts
        inv.estimatedSeconds = parts.values.reduce(0, +)
        return inv
    }

    /// Times metadata requests at the destination (a stat each; a HEAD for a bucket): read-only, at most
    /// `seconds` long. The first failure is the destination's error (credentials, a refused connection).
    static func probeDestination(
        _ destination: any Store, paths: [String], seconds: Double
    ) -> (secondsPerRequest: Double, requests: Int, error: String?) {
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let start = now()
        var n = 0
        for path in paths.isEmpty ? [".ferry-probe"] : paths {
            do {
                _ = try destination.stat(path)
            } catch let e as SystemCallError where e.errno == ENOENT {
                return (0, n, nil)  // the destination's root does not exist yet: the run creates it
            } catch {
                return (0, n, "\(error)")
            }
            n += 1
            if now() - start >= seconds { break }
        }
        return (n > 0 ? (now() - start) / Double(n) : 0, n, nil)
    }

    /// The cost of one merge, measured on files present on both sides: reading the source's and the destination's
    /// copies whole, counted twice (a merge reads both and writes the destination's back). Read-only.
    static func measureMerge(source: any Store, destination: any Store, paths: [String], seconds: Double) -> Double {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        func readAll(_ store: any Store, _ path: String) {
            guard let r = try? store.openReader(path) else { return }
            defer { r.close() }
            var off: Int64 = 0
            while let n = try? r.read(into: buffer, at: off), n > 0 { off += Int64(n) }
        }
        let start = now()
        var files = 0
        for path in paths {
            readAll(source, path)
            readAll(destination, path)
            files += 1
            if now() - start >= seconds { break }
        }
        return files > 0 ? 2 * (now() - start) / Double(files) : 0
    }

    /// Reads the largest files for about half the budget (streaming rate) and small files for the rest
    /// (per-file cost). Reads only, at most `seconds` long.
    static func measure(source: any Store, large: [String], small: [String], seconds: Double) -> (bytesPerSecond: Double, secondsPerFile: Double) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        var bytes: Int64 = 0
        let start = now()
        outer: for path in large {
            guard let r = try? source.openReader(path) else { continue }
            defer { r.close() }
            var off: Int64 = 0
            while now() - start < seconds / 2 {
                guard let n = try? r.read(into: buffer, at: off), n > 0 else { break }
                off += Int64(n)
                bytes += Int64(n)
            }
            if now() - start >= seconds / 2 { break outer }
        }
        let streamTime = now() - start
        let rate = streamTime > 0 && bytes > 0 ? Double(bytes) / streamTime : 0
        var files = 0
        var smallBytes: Int64 = 0
        let smallStart = now()
        for path in small where now() - smallStart < seconds / 2 {
            guard let r = try? source.openReader(path) else { continue }
            if let n = try? r.read(into: buffer, at: 0) { smallBytes += Int64(n) }
            r.close()
            files += 1
        }
        let smallTime = now() - smallStart
        var perFile = 0.0
        if files > 0 {
            let transfer = rate > 0 ? Double(smallBytes) / rate : 0
            perFile = max(0, smallTime - transfer) / Double(files)
        }
        return (rate, perFile)
    }
}
