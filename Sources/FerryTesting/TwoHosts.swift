import Foundation

/// Two test hosts on one machine: two network namespaces joined by a veth pair (`ip netns`, root), torn down
/// when this is released. The far host also has a mount namespace of its own with a private tmpfs at
/// `farRoot`: what it writes there is invisible to the near host, so nothing can secretly travel through a
/// shared path. A holder process keeps the far namespaces alive across restarts of what runs in them.
public final class TwoHosts: @unchecked Sendable {
    // @unchecked: immutable after init.
    public let nearNamespace: String
    public let farNamespace: String
    public let nearAddress: String
    public let farAddress: String
    public let farRoot: String
    private let holder: Process

    public struct Failed: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// `farRoot` must be an (empty) directory; it is mounted over inside the far host only.
    public init(farRoot: String, tmpfsSize: String = "2g") throws {
        let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
        let subnet = Int.random(in: 1...250)
        nearNamespace = "fyn\(tag)"
        farNamespace = "fyf\(tag)"
        nearAddress = "10.213.\(subnet).1"
        farAddress = "10.213.\(subnet).2"
        self.farRoot = farRoot
        try FileManager.default.createDirectory(atPath: farRoot, withIntermediateDirectories: true)
        let (vn, vf) = ("vn\(tag)", "vf\(tag)")
        for args in [
            ["netns", "add", nearNamespace], ["netns", "add", farNamespace],
            ["link", "add", vn, "type", "veth", "peer", "name", vf],
            ["link", "set", vn, "netns", nearNamespace], ["link", "set", vf, "netns", farNamespace],
            ["-n", nearNamespace, "addr", "add", "\(nearAddress)/24", "dev", vn],
            ["-n", farNamespace, "addr", "add", "\(farAddress)/24", "dev", vf],
            ["-n", nearNamespace, "link", "set", vn, "up"], ["-n", farNamespace, "link", "set", vf, "up"],
            ["-n", nearNamespace, "link", "set", "lo", "up"], ["-n", farNamespace, "link", "set", "lo", "up"],
        ] {
            let (status, out) = try Self.run(["/usr/sbin/ip"] + args)
            if status != 0 {
                Self.teardown([nearNamespace, farNamespace])
                throw Failed(description: "ip \(args.joined(separator: " ")): \(out)")
            }
        }
        let h = Process()
        h.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        h.arguments = [
            "netns", "exec", farNamespace, "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
            "mount -t tmpfs -o size=\(tmpfsSize) ferry-far '\(farRoot)' && echo ready && exec sleep 100000",
        ]
        let pipe = Pipe()
        h.standardOutput = pipe
        h.standardError = FileHandle.nullDevice
        h.standardInput = FileHandle.nullDevice
        try h.run()
        holder = h
        let line = pipe.fileHandleForReading.readData(ofLength: 6)
        guard String(decoding: line, as: UTF8.self).hasPrefix("ready") else {
            h.terminate()
            Self.teardown([nearNamespace, farNamespace])
            throw Failed(description: "the far host's private tmpfs could not be mounted at \(farRoot)")
        }
    }

    deinit {
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        Self.teardown([nearNamespace, farNamespace])
    }

    static func teardown(_ namespaces: [String]) {
        for n in namespaces {
            // Whatever still runs inside is killed first, or the namespace (and its veth) would linger.
            _ = try? run(["/usr/sbin/ip", "netns", "pids", n]).1.split(separator: "\n").forEach { pid in
                if let p = Int32(pid.trimmingCharacters(in: .whitespaces)) { kill(p, SIGKILL) }
            }
            _ = try? run(["/usr/sbin/ip", "netns", "del", n])
        }
    }

    /// The command prefix that runs a program on the far host (its network and its mounts).
    public var far: [String] { ["/usr/bin/nsenter", "-t", String(holder.processIdentifier), "-m", "-n", "--"] }
    /// The command prefix that runs a program on the near host.
    public var near: [String] { ["/usr/sbin/ip", "netns", "exec", nearNamespace] }

    /// Runs a program to completion, output (stdout and stderr) to a file rather than a pipe.
    @discardableResult
    public static func run(_ args: [String]) throws -> (Int32, String) {
        let dir = TempDir("twohosts-run")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        _ = FileManager.default.createFile(atPath: dir.sub("out"), contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.sub("out")))
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try? out.close()
        return (p.terminationStatus, String(decoding: FileManager.default.contents(atPath: dir.sub("out")) ?? Data(), as: UTF8.self))
    }

    /// Runs on the far host; throws when it fails.
    @discardableResult
    public func onFar(_ args: [String]) throws -> String {
        let (status, out) = try Self.run(far + args)
        guard status == 0 else { throw Failed(description: "on the far host, \(args.joined(separator: " ")) failed (\(status)): \(out)") }
        return out
    }

    /// Bytes the far host's end of the link has received (its veth's RX counter): the wire, measured outside ferry.
    public func farReceivedBytes() throws -> Int64 { try farLinkBytes("rx") }

    /// Bytes the far host has sent over the link.
    public func farSentBytes() throws -> Int64 { try farLinkBytes("tx") }

    private func farLinkBytes(_ direction: String) throws -> Int64 {
        let out = try onFar(["/usr/sbin/ip", "-s", "-j", "link", "show"])
        guard let data = out.data(using: .utf8), let links = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
            throw Failed(description: "ip -s -j link: \(out)")
        }
        var total: Int64 = 0
        for l in links where (l["ifname"] as? String)?.hasPrefix("vf") == true {
            if let stats = l["stats64"] as? [String: Any], let d = stats[direction] as? [String: Any], let b = d["bytes"] as? NSNumber {
                total += b.int64Value
            }
        }
        return total
    }

    /// Python that prints the SHA-256 of every regular file below argv[1] as JSON (path → hex).
    static let digestScript = """
        import hashlib, json, os, sys
        root = sys.argv[1]
        out = {}
        for d, _, fs in os.walk(root):
            for f in fs:
                p = os.path.join(d, f)
                if os.path.isfile(p) and not os.path.islink(p):
                    out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        print(json.dumps(out))
        """

    /// SHA-256 of every file below `dir` on the far host, by Python there.
    public func farDigests(_ dir: String) throws -> [String: String] {
        let out = try onFar(["/usr/bin/env", "python3", "-c", Self.digestScript, dir])
        return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String]) ?? [:]
    }

    /// The same, on this (the near) host.
    public static func digests(_ dir: String) throws -> [String: String] {
        let (status, out) = try run(["/usr/bin/env", "python3", "-c", digestScript, dir])
        guard status == 0 else { throw Failed(description: "digests of \(dir): \(out)") }
        return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String]) ?? [:]
    }
}
