public import FerryCore
public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The lifecycle every tap kind must keep, one body for each (the Carbon and S3 taps): it answers on its control
/// socket in `mirror`; a mode change is persisted before it is answered and survives a kill -9; a fence is
/// journaled (its sequence is at or past the head before it); SIGTERM stops it gracefully (exit 0, its log says
/// so) and a restart keeps the mode. `start` launches the tap process and returns once its control socket
/// answers; `log` is the file its output goes to. Returns the failures (empty when the tap conforms).
public enum TapConformance {
    public static func run(control: any TapControl, log: String, start: () throws -> Process) -> [String] {
        let checks = ConformanceChecks()
        let check = checks.check
        var process: Process?
        check("starts in mirror") {
            process = try start()
            let s = try control.status()
            try expect(s?.mode == .mirror, "mode \(String(describing: s?.mode))")
        }
        check("a mode change survives kill -9") {
            let s = try control.setMode(.cutover)
            try expect(s.mode == .cutover, "setMode answered \(s.mode)")
            if let p = process {
                kill(p.processIdentifier, SIGKILL)
                p.waitUntilExit()
            }
            try expect(try control.status() == nil, "a killed tap still answers")
            process = try start()
            try expect(try control.status()?.mode == .cutover, "the restarted tap lost the mode")
            try control.setMode(.mirror)
        }
        check("a fence is journaled") {
            let before = try control.status()?.head ?? 0
            let seq = try control.fence(FenceToken(name: "ferry.conformance.fence", serial: 1, issuedAt: Int(Date().timeIntervalSince1970)))
            try expect(seq >= before, "fence sequence \(seq) before the head \(before)")
            let after = try control.status()?.head ?? 0
            try expect(after > before, "the fence added nothing to the journal (head \(before) -> \(after))")
        }
        check("SIGTERM stops it gracefully and a restart keeps the mode") {
            try control.setMode(.reverse)
            guard let p = process else { throw ConformanceFailure("no tap process") }
            kill(p.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(20)
            while p.isRunning && Date() < deadline { usleep(20_000) }  // awaiting the exit, bounded
            try expect(!p.isRunning, "the tap did not stop within 20 s of SIGTERM")
            p.waitUntilExit()
            try expect(p.terminationReason == .exit && p.terminationStatus == 0, "exit \(p.terminationStatus) (\(p.terminationReason))")
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            try expect(text.contains("shutting down"), "the log does not say it shut down")
            process = try start()
            try expect(try control.status()?.mode == .reverse, "the mode after a graceful restart")
            try control.setMode(.mirror)
        }
        if let p = process, p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        return checks.failures
    }

}
