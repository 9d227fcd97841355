public import FerryCore

/// The one rule that decides what happens to each entry a source walk meets: it is copied, refused with a
/// reason (the run fails and the entry is named), or skipped by an explicit plan policy (listed, does not fail).
/// The snapshot, the catch-up, the dry run and verify's fresh walk all classify through it, so they can never
/// disagree about an entry.
public struct EntryFilter {
    public enum Verdict {
        case copy(Entry)
        case refuse(String)
        case skip(String)
    }

    let symlinks: CopySpec.SymlinkPolicy
    let symlinksDefaulted: Bool
    let specials: CopySpec.SpecialsPolicy?
    let excludes: [GlobPattern]
    let refusal: ((Entry) -> String?)?
    let textNames: Bool
    let links: Bool
    let specialsPossible: Bool
    let keepsDirectories: Bool
    /// The directory excluded last: everything below it is excluded with it. Walks list a directory's subtree
    /// right after it (depth first, or in key order), so one is enough.
    var excludedDirectory: String?
    /// First name of each multiply-linked file seen so far (by inode): bounded by the tree's hard links.
    var firstNames: [UInt64: String] = [:]

    /// The effective symlink policy for a destination: the plan's, or `copy` where links can be held, else `skip`.
    public static func symlinkPolicy(_ plan: Plan, destination: any Store) -> (CopySpec.SymlinkPolicy, defaulted: Bool) {
        if let p = plan.copy.symlinks { return (p, false) }
        return (destination.keepsPOSIXMetadata ? .copy : .skip, true)
    }

    public init(plan: Plan, destination: any Store) {
        (symlinks, symlinksDefaulted) = Self.symlinkPolicy(plan, destination: destination)
        specials = plan.copy.specials
        excludes = plan.copy.exclude.compactMap { try? GlobPattern($0) }
        refusal = destination.refusalChecker()
        textNames = destination.namesAreText
        links = destination is any HardLinking
        specialsPossible = destination is any SpecialMaking
        keepsDirectories = destination.keepsPOSIXMetadata
    }

    public mutating func classify(_ entry: Entry) -> Verdict {
        var e = entry
        if let dir = excludedDirectory {
            if e.path.hasPrefix(dir + "/") { return .skip("below the excluded directory \(RawName.display(dir))") }
            excludedDirectory = nil
        }
        if let p = excludes.first(where: { $0.matches(e.path, isDirectory: e.kind == .directory) }) {
            if e.kind == .directory { excludedDirectory = e.path }
            return .skip("excluded by the pattern \"\(p.text)\"" + (e.kind == .directory ? " (with everything below it)" : ""))
        }
        if textNames && !RawName.isText(e.path) {
            return .refuse("the name is not valid UTF-8 (shown with \\x escapes); the destination's keys must be UTF-8 text")
        }
        if e.kind == .symlink {
            switch symlinks {
            case .skip:
                return .skip("a symlink (copy.symlinks: skip\(symlinksDefaulted ? ", the default for this destination" : ""))")
            case .follow:
                // A store that follows lists targets in place of links; a link still seen here is a dangling one.
                return .refuse("a symlink that cannot be followed")
            case .copy:
                break
            }
        }
        if e.kind.isSpecial {
            switch specials {
            case nil:
                return .refuse(
                    "a \(e.kind.noun) (set copy.specials: skip to leave such entries out, or copy to recreate them, fs → fs)")
            case .skip:
                return .skip("a \(e.kind.noun) (copy.specials: skip)")
            case .copy:
                if !specialsPossible { return .refuse("a \(e.kind.noun): this destination cannot recreate it") }
            }
        }
        if e.kind == .file && e.links > 1 && links {
            // A path seen again (a mirror may look at one twice) is still the first name, never a link to itself.
            if let first = firstNames[e.inode], first != e.path {
                e.kind = .hardlink
                e.linkTarget = first
            } else {
                firstNames[e.inode] = e.path
            }
        }
        if let why = refusal?(e) { return .refuse(why) }
        return .copy(e)
    }
}
