/// The naming rules of a directory tree, for every store that is one (here or on another host).
public enum TreeNaming {
    /// Names that cannot coexist in a directory tree: a file and a directory of the same name, or a file with
    /// something below it (a bucket can hold `a` and `a/b`). The later one is refused. Sources list entries in
    /// name order with a directory's contents right after it, so a stack of the file names that may still prefix
    /// a later entry is enough (bounded by the nesting of such names, not by the tree).
    public static func refusalChecker() -> (Entry) -> String? {
        var files: [String] = []
        return { entry in
            while let top = files.last {
                if entry.path == top {
                    return "\"\(RawName.display(top))\" is already a file; a \(entry.kind.noun) cannot have the same name"
                }
                if entry.path.hasPrefix(top + "/") {
                    return "\"\(RawName.display(top))\" is a file, so nothing can be below it in a directory tree"
                }
                // A later name can still start with `top/` only while names share `top` and sort before `top/`.
                if entry.path.hasPrefix(top), let next = entry.path.utf8.dropFirst(top.utf8.count).first, next < UInt8(ascii: "/") {
                    break
                }
                files.removeLast()
            }
            if entry.kind != .directory { files.append(entry.path) }
            return nil
        }
    }
}
