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
            let status = try Self.spawnAndWait(prefix + ["/bin/bash", "-euo", "pipefail", "-c", script, cwd], env: env, log: log)
            let output = String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self)
            print("--- \(name):\(block.line): \(block.firstCommand)\n\(output)")
            guard status == 0 else {
                Issue.record("\(name) line \(block.line) failed (exit \(status)):\n\(block.text)\n--- output:\n\(output)")
                throw RunbookFailed()
            }
        }
    }

    struct RunbookFailed: Error {}

    /// posix_spawn and waitpid on that pid: a block that leaves a daemon behind (`nohup ... &`) made Foundation's
    /// Process.waitUntilExit miss the block's own exit.
    static func spawnAndWait(_ args: [String], env: [String: String], log: String) throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = args.map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid = pid_t()
        let rc = posix_spawn(&pid, args[0], &actions, &attr, argv, envp)
        guard rc == 0 else { throw TwoHosts.Failed(description: "cannot start \(args[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

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
