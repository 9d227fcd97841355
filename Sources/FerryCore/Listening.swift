import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs a bind, turning its failure into an error that names the address (SwiftNIO's says only
/// "bind(descriptor:ptr:bytes:): Address already in use (errno: 98)").
public func listening<T>(on address: String, what: String, _ bind: () throws -> T) throws -> T {
    do {
        return try bind()
    } catch let e as FerryError {
        throw e
    } catch {
        let text = "\(error)"
        // The errno, in words, when the error carries one; the error as it is otherwise.
        var reason = text
        if let r = text.range(of: "errno: "), let n = Int32(text[r.upperBound...].prefix { $0.isNumber }) {
            reason = String(cString: strerror(n))
        }
        throw FerryError(.other, "cannot listen on \(address) (\(what)): \(reason)")
    }
}
