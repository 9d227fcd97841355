#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Path arithmetic on plain strings ('/'-separated), without touching the filesystem unless the name says so.
public enum PathUtil {
    public static func absolute(_ path: String, relativeTo base: String) -> String {
        path.hasPrefix("/") ? path : (base.hasSuffix("/") ? base + path : base + "/" + path)
    }

    public static func expandTilde(_ path: String) -> String {
        guard path == "~" || path.hasPrefix("~/") else { return path }
        let home = getenv("HOME").map { String(cString: $0) } ?? "/"
        return home + path.dropFirst()
    }

    /// Removes `.`, empty and `..` components lexically. `/a/b/../c` → `/a/c`.
    public static func normalize(_ path: String) -> String {
        var out: [Substring] = []
        for comp in path.split(separator: "/", omittingEmptySubsequences: true) {
            if comp == "." { continue }
            if comp == ".." {
                if !out.isEmpty { out.removeLast() }
                continue
            }
            out.append(comp)
        }
        return "/" + out.joined(separator: "/")
    }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = String(path[..<slash])
        return dir.isEmpty ? "/" : dir
    }

    public static func lastComponent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// The real path of the longest existing prefix, with the rest appended: works for paths not created yet.
    public static func canonical(_ path: String) -> String {
        var head = normalize(path)
        var tail: [String] = []
        while true {
            if let resolved = realpath(head, nil) {
                defer { free(resolved) }
                let base = String(cString: resolved)
                return tail.isEmpty ? base : normalize(base + "/" + tail.reversed().joined(separator: "/"))
            }
            if head == "/" { return normalize(path) }
            tail.append(lastComponent(head))
            head = directory(of: head)
        }
    }

    /// Whether `path` lies strictly below `ancestor` (both canonical).
    public static func isInside(_ path: String, _ ancestor: String) -> Bool {
        if ancestor == "/" { return path != "/" }
        return path.hasPrefix(ancestor + "/")
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Whether a relative entry path is safe to join under a root: no empty, `.` or `..` components, not absolute.
    public static func isSafeRelative(_ path: String) -> Bool {
        guard !path.isEmpty, !path.hasPrefix("/") else { return false }
        for comp in path.split(separator: "/", omittingEmptySubsequences: false) {
            if comp.isEmpty || comp == "." || comp == ".." { return false }
        }
        return !path.utf8.contains(0)
    }
}
