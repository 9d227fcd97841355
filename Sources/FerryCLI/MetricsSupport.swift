import ArgumentParser
import FerryCore
import FerryGraphite
import Foundation

/// Loads a Whisper file, turning corruption into a clear error and exit 3.
func loadWhisper(_ path: String) throws -> Whisper {
    do {
        return try Whisper(path: path)
    } catch {
        printError("\(error)")
        throw ExitCode(Exit.failure)
    }
}

func nowOrClock(_ now: Int?) -> Int { now ?? Int(Date().timeIntervalSince1970) }
