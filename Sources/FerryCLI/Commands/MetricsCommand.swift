import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

/// Operator helpers for single Whisper files (like whisper-info, whisper-diff, whisper-fill, whisper-create and
/// whisper-update), built on the same code the metric migration uses.
struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics", abstract: "Inspect, compare and merge Whisper files.",
        subcommands: [MetricsInfo.self, MetricsDiff.self, MetricsFill.self, MetricsCreate.self, MetricsUpdate.self])
}
