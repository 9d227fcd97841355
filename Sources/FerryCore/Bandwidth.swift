public import Foundation

/// `copy.bandwidth`: one rate (`50MiB/s`, `off`), or a timetable in rclone's form, `"08:00,20MiB/s 23:00,off"`:
/// each entry starts at its local time of day and holds until the next; before the first entry of a day the
/// last one of the day before holds.
public struct BandwidthSchedule: Sendable, Equatable, CustomStringConvertible {
    public struct Slot: Sendable, Equatable {
        /// Minutes after local midnight.
        public var minute: Int
        /// Bytes per second; nil is unlimited.
        public var rate: Int64?
    }

    /// Sorted by `minute`; never empty.
    public private(set) var slots: [Slot]

    public static func constant(_ rate: Int64?) -> BandwidthSchedule { BandwidthSchedule(slots: [Slot(minute: 0, rate: rate)]) }

    /// A timetable (more than one rate over the day), as opposed to one rate.
    public var isTimetable: Bool { slots.count > 1 }

    /// The rate in force at `date` (local time).
    public func rate(at date: Date, calendar: Calendar = .current) -> Int64? { slot(at: date, calendar: calendar).rate }

    func slot(at date: Date, calendar: Calendar) -> Slot {
        let c = calendar.dateComponents([.hour, .minute], from: date)
        let minute = (c.hour ?? 0) * 60 + (c.minute ?? 0)
        return slots.last { $0.minute <= minute } ?? slots[slots.count - 1]
    }

    public var description: String {
        guard isTimetable else { return Self.rateText(slots[0].rate) }
        return slots.map { String(format: "%02d:%02d,", $0.minute / 60, $0.minute % 60) + Self.rateText($0.rate) }.joined(separator: " ")
    }

    static func rateText(_ r: Int64?) -> String { r.map { Units.formatBytes($0) + "/s" } ?? "off" }

    /// Parses one rate or a timetable; the error says which entry is wrong and why.
    public static func parse(_ text: String) -> Result<BandwidthSchedule, ScheduleError> {
        let s = text.trimmingSpaces()
        if !s.contains(",") {
            switch Units.parseRate(s) {
            case .success(let r): return .success(.constant(r))
            case .failure: return .failure(ScheduleError(message: "expected a rate such as 50MiB/s, or off, got \"\(s)\""))
            }
        }
        var slots: [Slot] = []
        for entry in s.split(whereSeparator: { $0 == " " || $0 == "\t" }) {
            let parts = entry.split(separator: ",", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                return .failure(ScheduleError(message: "timetable entry \"\(entry)\" is not HH:MM,RATE"))
            }
            let time = parts[0]
            if time.contains("-") {
                return .failure(ScheduleError(message: "timetable entry \"\(entry)\": day-of-week entries are not supported; use HH:MM,RATE"))
            }
            let hm = time.split(separator: ":", omittingEmptySubsequences: false)
            guard hm.count == 2, hm[0].count <= 2, hm[1].count == 2, let h = Int(hm[0]), let m = Int(hm[1]), (0..<24).contains(h),
                (0..<60).contains(m)
            else {
                return .failure(ScheduleError(message: "timetable entry \"\(entry)\": \"\(time)\" is not a time of day HH:MM"))
            }
            var rateText = String(parts[1])
            if rateText != "off" && rateText != "unlimited" && !rateText.hasSuffix("/s") { rateText += "/s" }
            guard case .success(let rate) = Units.parseRate(rateText) else {
                return .failure(ScheduleError(message: "timetable entry \"\(entry)\": \"\(parts[1])\" is not a rate such as 20MiB/s, or off"))
            }
            let minute = h * 60 + m
            if slots.contains(where: { $0.minute == minute }) {
                return .failure(ScheduleError(message: "timetable entry \"\(entry)\": \(time) is given twice"))
            }
            slots.append(Slot(minute: minute, rate: rate))
        }
        guard !slots.isEmpty else { return .failure(ScheduleError(message: "the timetable is empty")) }
        return .success(BandwidthSchedule(slots: slots.sorted { $0.minute < $1.minute }))
    }

    public struct ScheduleError: Error, Sendable {
        public var message: String
    }
}
