/// What the conformance suites share: a named check records the failure it throws, and `expect` throws one.
struct ConformanceFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Runs each named check, collecting what failed (the suites return `failures`; the kind's test expects none).
final class ConformanceChecks {
    private(set) var failures: [String] = []

    func check(_ name: String, _ body: () throws -> Void) {
        do { try body() } catch { failures.append("\(name): \(error)") }
    }
}

func expect(_ ok: Bool, _ what: @autoclosure () -> String) throws {
    if !ok { throw ConformanceFailure(what()) }
}
