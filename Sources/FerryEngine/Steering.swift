public import FerryCore
public import Foundation
import Synchronization

/// What `ferry ctl` has set on a job. It is kept in the ledger, so every worker on the job and the next run
/// follow it, and `ferry status` shows it.
public struct ControlSettings: Codable, Sendable, Equatable {
    public var paused = false
    /// Bytes per second set by `ferry ctl throttle`: 0 is unlimited (`throttle off`); nil follows `copy.bandwidth`.
    public var throttle: Int64? = nil
    /// Copy threads set by `ferry ctl concurrency`; nil follows `copy.concurrency`.
    public var concurrency: Int? = nil
    /// `ferry ctl postpone`: the job holds at ready; the cutover refuses until `unpostpone`.
    public var postponed = false
    public var postponedAt: Double? = nil
    public init() {}

    /// The rate in force at `date` under these settings: the throttle when set (0 is unlimited), else the
    /// plan's `schedule`. nil is unlimited.
    public func rate(_ schedule: BandwidthSchedule, at date: Date) -> Int64? {
        if let t = throttle { return t == 0 ? nil : t }
        return schedule.rate(at: date)
    }
}

/// A job's live controls inside one process: the copy threads ask it before every chunk (pause, rate) and
/// before every page of files (concurrency). `apply` changes them at once; the threads wake and follow.
public final class Steering: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `condition`.
    /// The most copy threads `ferry ctl concurrency` may ask for (the copy starts this many, parked beyond the setting).
    public static let maxConcurrency = 64
    public let schedule: BandwidthSchedule
    public let planConcurrency: Int
    private let condition = NSCondition()
    private var settings = ControlSettings()
    /// Threads inside a page of files, and how many of them wait in a pause.
    private var running = 0
    private var parked = 0
    /// Set when a copy thread found no file left to lease: threads parked beyond the concurrency then end.
    private var drained = false
    private var rateCache: (until: UInt64, rate: Int64?) = (0, nil)

    public init(schedule: BandwidthSchedule, concurrency: Int) {
        self.schedule = schedule
        self.planConcurrency = concurrency
    }

    public var current: ControlSettings { locked { settings } }

    public func apply(_ s: ControlSettings) {
        locked {
            settings = s
            rateCache.until = 0
        }
        condition.broadcast()
    }

    /// The copy threads that should be working now.
    public var effectiveConcurrency: Int { locked { settings.concurrency ?? planConcurrency } }

    /// The rate in force at `date`: `ferry ctl throttle` when set, else the plan's timetable. nil is unlimited.
    public func rate(at date: Date) -> Int64? { current.rate(schedule, at: date) }

    /// The rate now, looked up at most twice a second (the copy threads ask before every chunk).
    func rateNow() -> Int64? {
        let now = DispatchTime.now().uptimeNanoseconds
        if let cached = locked({ rateCache.until > now ? rateCache : nil }) { return cached.rate }
        let r = rate(at: Date())
        locked { rateCache = (now + 500_000_000, r) }
        return r
    }

    /// Copy threads working and waiting in a pause.
    public var threads: (running: Int, parked: Int) { locked { (running, parked) } }

    func beginCopy() { locked { (running, parked, drained) = (0, 0, false) } }

    /// Held by a copy thread between chunks and files while the job is paused (or until `stop` says so).
    func holdWhilePaused(_ stop: () -> Bool) {
        condition.lock()
        defer { condition.unlock() }
        guard settings.paused else { return }
        parked += 1
        condition.broadcast()
        while settings.paused && !stop() { _ = condition.wait(until: Date().addingTimeInterval(0.25)) }
        parked -= 1
    }

    /// Held by copy thread `index` before it takes a page of files, while it is beyond the concurrency.
    /// Returns false when the copy has no file left (another thread drained it) or `stop` says so; true once the
    /// thread may work, counted as running until `leave`.
    func enter(_ index: Int, _ stop: () -> Bool) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while index >= (settings.concurrency ?? planConcurrency) {
            if drained || stop() { return false }
            _ = condition.wait(until: Date().addingTimeInterval(0.25))
        }
        if drained || stop() { return false }
        running += 1
        return true
    }

    /// Wakes the waiters only when what they wait for changed: threads parked beyond the concurrency wait for
    /// the copy to drain (or `apply`), and `awaitParked` for the running count, which matters only in a pause.
    /// (A wake-up at every page woke all 60 parked threads each time: a tenth of a small-file copy's CPU.)
    func leave(drained noneLeft: Bool) {
        let wake = locked {
            running -= 1
            if noneLeft { drained = true }
            return noneLeft || settings.paused
        }
        if wake { condition.broadcast() }
    }

    /// Waits up to `timeout` until every working copy thread is parked in the pause: then no more bytes move.
    public func awaitParked(timeout: Double) -> (running: Int, parked: Int) {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while settings.paused && parked < running && Date() < deadline { _ = condition.wait(until: min(deadline, Date().addingTimeInterval(0.1))) }
        return (running, parked)
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        condition.lock()
        defer { condition.unlock() }
        return try body()
    }
}

/// The shared pace of a copy: `acquire(n)` holds while the job is paused, then blocks until `n` bytes may be
/// sent under the rate in force (a token bucket; the rate can change at any time).
final class Throttle: Sendable {
    let steering: Steering
    let stop: @Sendable () -> Bool
    private let state = Mutex<(tokens: Double, last: UInt64)>((0, DispatchTime.now().uptimeNanoseconds))

    init(steering: Steering, stop: @escaping @Sendable () -> Bool) {
        self.steering = steering
        self.stop = stop
    }

    func acquire(_ bytes: Int) {
        steering.holdWhilePaused(stop)
        guard let r = steering.rateNow() else {
            state.withLock { $0 = (0, DispatchTime.now().uptimeNanoseconds) }
            return
        }
        let rate = Double(r)
        let burst = max(rate / 4, 256 * 1024)
        // Reserve now (the balance may go negative), then wait out the debt: fair and lock-free while waiting.
        let wait: Double = state.withLock { s in
            let now = DispatchTime.now().uptimeNanoseconds
            s.tokens = min(burst, s.tokens + Double(now - s.last) / 1e9 * rate)
            s.last = now
            s.tokens -= Double(bytes)
            return s.tokens < 0 ? -s.tokens / rate : 0
        }
        if wait > 0 { Thread.sleep(forTimeInterval: wait) }
    }
}
