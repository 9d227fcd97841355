import FerryTesting
import Foundation
import Testing

/// A job in a temporary directory: a source tree, a destination path, a plan file and helpers to run ferry.
final class Scenario: @unchecked Sendable {
    let dir = TempDir("ferry-it")
    var source: String { dir.sub("source") }
    var destination: String { dir.sub("destination") }
    var state: String { dir.sub("state") }
    var auditLog: String { dir.sub("writes.log") }
    var plan: String = ""

    init(chunkSize: String = "1MiB", concurrency: Int = 4, bandwidth: String = "off", copy: String = "", extra: String = "") throws {
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        try writePlan(chunkSize: chunkSize, concurrency: concurrency, bandwidth: bandwidth, copy: copy, extra: extra)
    }

    /// `copy` adds keys to the plan's copy section (e.g. "specials: skip").
    func writePlan(
        chunkSize: String = "1MiB", concurrency: Int = 4, bandwidth: String = "off", copy: String = "", extra: String = ""
    ) throws {
        plan = try FerryTesting.writePlan(
            dir.path,
            """
            version: 1
            name: it
            source:      { kind: fs, path: source }
            destination: { kind: fs, path: destination }
            state: state
            copy:        { chunk_size: \(chunkSize), concurrency: \(concurrency), bandwidth: \(bandwidth)\(copy.isEmpty ? "" : ", " + copy) }
            \(extra)
            """)
    }

    @discardableResult
    func ferry(_ args: String..., env: [String: String] = [:], prefix: [String] = []) throws -> Ferry.Result {
        var environment = try WriteCounter.environment(log: auditLog)
        for (k, v) in env { environment[k] = v }
        return try Ferry.run(args.map { $0 == "PLAN" ? plan : $0 }, environment: environment, prefix: prefix)
    }

    /// Sum of payload bytes ferry wrote into partial files, counted by the LD_PRELOAD shim (outside ferry).
    func bytesWritten() -> Int64 { WriteCounter.fileBytes(auditLog) }

    func resetAudit() { try? FileManager.default.removeItem(atPath: auditLog) }

    func treeBytes() -> Int64 { regularFileBytes(under: source) }

    func parity() -> [String] { TreeCompare.differences(source, destination) }

    func json(_ r: Ferry.Result) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    }
}

/// Runs a command, returning its stdout (and its status).
func sh(_ args: [String], input: Data? = nil) throws -> (status: Int32, out: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let o = Pipe()
    p.standardOutput = o
    p.standardError = o
    let i = Pipe()
    p.standardInput = input == nil ? FileHandle.nullDevice : i
    try p.run()
    if let input {
        i.fileHandleForWriting.write(input)
        try? i.fileHandleForWriting.close()
    }
    let data = o.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The bytes of the regular files under `dir` (lstat: links are not followed), counted by the test itself.
func regularFileBytes(under dir: String) -> Int64 {
    var total: Int64 = 0
    for p in (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String]) ?? [] {
        var st = stat()
        if lstat(dir + "/" + p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG { total += Int64(st.st_size) }
    }
    return total
}

/// Waits (polling, bounded) until `condition` holds; returns whether it did.
func waitUntil(timeout: Double = 60, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// The keys docs/status-json.md documents (the backticked names in its tables' first column).
enum StatusSchema {
    static func documented() -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let page = (try? String(contentsOf: root.appendingPathComponent("docs/status-json.md"), encoding: .utf8)) ?? ""
        var keys = Set<String>()
        for line in page.split(separator: "\n") where line.hasPrefix("| `") {
            let first = line.split(separator: "|").first ?? ""
            for part in first.split(separator: "`", omittingEmptySubsequences: false).enumerated() where part.offset % 2 == 1 {
                keys.insert(String(part.element))
            }
        }
        return keys
    }

    /// Keys of `json` (recursively, through objects and lists) that the page does not list.
    static func undocumentedKeys(_ json: Any) -> [String] {
        let known = documented()
        var missing = Set<String>()
        func visit(_ v: Any) {
            if let o = v as? [String: Any] {
                for (k, x) in o {
                    if !known.contains(k) { missing.insert(k) }
                    visit(x)
                }
            } else if let a = v as? [Any] {
                a.forEach(visit)
            }
        }
        visit(json)
        return missing.sorted()
    }
}
