import FerryCore
import FerryTesting
import Foundation
import Testing

/// Follows a runbook of docs/runbooks/: its `sh` blocks in order, each in its own `bash -euo pipefail`, in one
/// working directory, with the site's variables (the runbook's section 0) in the environment and ferry on the
/// PATH. Blocks whose first line is `# example` are shown to the reader only. So the docs cannot drift from the
/// tool: a renamed flag, a changed output or a wrong step fails here.
struct Runbook {
    struct Block {
        var line: Int
        var text: String
        var firstCommand: String { text.split(separator: "\n").first.map(String.init) ?? "" }
    }

    let name: String
    let blocks: [Block]

    static var directory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/runbooks").path
    }

    init(_ name: String) throws {
        self.name = name
        let text = try String(contentsOfFile: Self.directory + "/" + name, encoding: .utf8)
        var blocks: [Block] = []
        var current: (line: Int, lines: [String])?
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let c = current {
                if line.hasPrefix("```") {
                    if c.lines.first?.trimmingCharacters(in: .whitespaces) != "# example" {
                        blocks.append(Block(line: c.line, text: c.lines.joined(separator: "\n")))
                    }
                    current = nil
                } else {
                    current?.lines.append(String(line))
                }
            } else if line == "```sh" {
                current = (i + 1, [])
            }
        }
        self.blocks = blocks
    }

    /// Runs every block; `before` is called ahead of each (to start what the page says happens meanwhile, such
    /// as collectors sending). Stops at the first block that fails, recording it with its output.
    func follow(
        in cwd: String, environment: [String: String], prefix: [String] = [], before: (Block) throws -> Void = { _ in }
    ) throws {
        #expect(!blocks.isEmpty, "\(name) has no block to follow")
        let ferryDir = (Ferry.binary as NSString).deletingLastPathComponent
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = ferryDir + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        env["FERRY_PROGRESS_INTERVAL"] = "60"
        for (k, v) in environment { env[k] = v }
        for block in blocks {
            try before(block)
            let log = cwd + "/.runbook-block-\(block.line).log"
            // bash's $0 is the working directory: it goes there first (posix_spawn has no portable chdir).
            let script = "cd -- \"$0\"\n" + block.text
            // posix_spawn and waitpid on the block's pid: a block that leaves a daemon behind (`nohup ... &`) made
            // Foundation's Process.waitUntilExit miss the block's own exit.
            let status = try runToExit(prefix + ["/bin/bash", "-euo", "pipefail", "-c", script, cwd], environment: env, output: log)
            let output = String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self)
            print("--- \(name):\(block.line): \(block.firstCommand)\n\(output)")
            guard status == 0 else {
                Issue.record("\(name) line \(block.line) failed (exit \(status)):\n\(block.text)\n--- output:\n\(output)")
                throw RunbookFailed()
            }
        }
    }

    struct RunbookFailed: Error {}

    /// Kills what a runbook left running from `dir` (a tap started with nohup, or detached by `ferry run`).
    static func killProcesses(under dir: String) {
        for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap({ Int32($0) }) ?? [] where pid != getpid() {
            if let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd"), cwd.hasPrefix(dir) {
                kill(pid, SIGKILL)
            }
        }
    }
}

extension Runbook {
    /// The blocks between two headings (`to` nil: to the end), as a runbook of their own.
    struct Part {
        let runbook: Runbook
        init(_ whole: Runbook, from: String, to: String?) {
            let text = (try? String(contentsOfFile: Runbook.directory + "/" + whole.name, encoding: .utf8)) ?? ""
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            let start = (lines.firstIndex { $0.hasPrefix(from) } ?? 0) + 1
            let end = to.flatMap { t in lines.firstIndex { $0.hasPrefix(t) } }.map { $0 + 1 } ?? Int.max
            runbook = Runbook(name: whole.name, blocks: whole.blocks.filter { $0.line > start && $0.line < end })
        }

        func follow(in cwd: String, environment: [String: String], before: (Block) throws -> Void = { _ in }) throws {
            try runbook.follow(in: cwd, environment: environment, before: before)
        }
    }

    init(name: String, blocks: [Block]) {
        self.name = name
        self.blocks = blocks
    }
}
