import Foundation
import Testing

@testable import FerryCore

/// `copy.bandwidth` timetables (rclone's form): the rate in force at a time of day, and the errors.
@Suite struct BandwidthTests {
    static var utc: Calendar {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }

    /// 2026-12-02 at HH:MM UTC.
    static func at(_ h: Int, _ m: Int) -> Date {
        Date(timeIntervalSince1970: 1_796_169_600 + Double(h * 3600 + m * 60))
    }

    @Test func aTimetableHoldsEachRateUntilTheNextAndWrapsOverMidnight() throws {
        let s = try BandwidthSchedule.parse("08:00,20MiB/s 23:00,off 12:30,512KiB").get()
        #expect(s.isTimetable)
        let mib: Int64 = 1_048_576
        // Expected values worked out by hand from the timetable (not from the code under test).
        let cases: [(Int, Int, Int64?)] = [
            (0, 0, nil), (7, 59, nil), (8, 0, 20 * mib), (12, 29, 20 * mib), (12, 30, 524_288), (22, 59, 524_288), (23, 0, nil),
            (23, 59, nil),
        ]
        for (h, m, want) in cases {
            #expect(s.rate(at: Self.at(h, m), calendar: Self.utc) == want, "at \(h):\(m)")
        }
        #expect(s.description == "08:00,20.0 MiB/s 12:30,512.0 KiB/s 23:00,off")
    }

    @Test func oneRateIsNotATimetable() throws {
        let s = try BandwidthSchedule.parse("50MiB/s").get()
        #expect(!s.isTimetable)
        #expect(s.rate(at: Self.at(3, 0), calendar: Self.utc) == Int64(52_428_800))
        #expect(try BandwidthSchedule.parse("off").get().rate(at: Self.at(3, 0), calendar: Self.utc) == nil)
    }

    @Test(arguments: [
        ("25:00,1MiB/s", "is not a time of day"), ("08:60,1MiB/s", "is not a time of day"), ("Mon-08:00,1MiB/s", "day-of-week"),
        ("08:00,fast", "is not a rate"), ("08:00,1MiB/s 08:00,off", "given twice"), ("08:00", "expected a rate"),
        ("08:00,1MiB/s,2", "is not HH:MM,RATE"), ("8,1MiB/s", "is not a time of day"),
    ])
    func malformedTimetablesSayWhichEntryIsWrong(_ text: String, _ why: String) {
        switch BandwidthSchedule.parse(text) {
        case .success(let s): Issue.record("\(text) parsed as \(s)")
        case .failure(let e): #expect(e.message.contains(why), "\(text): \(e.message)")
        }
    }
}
