#!/usr/bin/env python3
"""An independent oracle for the tests: compares two directory trees the way `rsync -aHAXS` would preserve them,
with names as bytes (never decoded), and prints every difference, one per line (nothing printed: equal).

Compared per entry: type; for files size, content (SHA-256), holes kept (a sparse source stays sparse), hard-link
groups; for links the target bytes; for specials the device number; for all: mode, mtime (ns; not for links'
parents), uid/gid, extended attributes (ACLs included).

usage: treecmp.py SRC DST [--ignore NAME ...] [--no-owner]
"""
import hashlib
import os
import stat
import sys


def record(fd, name):
    """Everything compared about one entry, read through its directory's descriptor (paths may exceed PATH_MAX)."""
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    proc = "/proc/self/fd/%d/%s" % (fd, os.fsdecode(name))
    try:
        xattrs = {n: os.getxattr(proc, n, follow_symlinks=False) for n in os.listxattr(proc, follow_symlinks=False)}
    except OSError:
        xattrs = {}
    r = {"st": st, "xattrs": xattrs}
    if stat.S_ISLNK(st.st_mode):
        r["target"] = os.readlink(name, dir_fd=fd)
    elif stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        f = os.open(name, os.O_RDONLY, dir_fd=fd)
        try:
            while True:
                b = os.read(f, 1 << 20)
                if not b:
                    break
                h.update(b)
        finally:
            os.close(f)
        r["sha256"] = h.hexdigest()
    return r


def listing(root):
    out = {}
    root = os.fsencode(root)
    for dirpath, dirnames, filenames, fd in os.fwalk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out[os.path.normpath(os.path.join(rel, name))] = record(fd, name)
    return out


def main():
    args = sys.argv[1:]
    owner = "--no-owner" not in args
    args = [a for a in args if a != "--no-owner"]
    ignore = set()
    while "--ignore" in args:
        i = args.index("--ignore")
        ignore.add(os.fsencode(args[i + 1]))
        del args[i : i + 2]
    a, b = listing(args[0]), listing(args[1])
    for k in list(a) + list(b):
        if k in ignore or os.path.basename(k) in ignore:
            a.pop(k, None)
            b.pop(k, None)
    diffs = []
    show = lambda p: p.decode("utf-8", "backslashreplace")
    for p in sorted(set(a) - set(b)):
        diffs.append("missing: " + show(p))
    for p in sorted(set(b) - set(a)):
        diffs.append("extra: " + show(p))
    groups_a, groups_b = {}, {}
    for p in sorted(set(a) & set(b)):
        sa, sb = a[p]["st"], b[p]["st"]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append("type: " + show(p))
            continue
        if sa.st_mode != sb.st_mode:
            diffs.append("mode: %s %o vs %o" % (show(p), sa.st_mode, sb.st_mode))
        if owner and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
            diffs.append("owner: " + show(p))
        if a[p]["xattrs"] != b[p]["xattrs"]:
            diffs.append("xattrs: " + show(p))
        if stat.S_ISLNK(sa.st_mode):
            if a[p]["target"] != b[p]["target"]:
                diffs.append("link target: " + show(p))
            continue
        if sa.st_mtime_ns != sb.st_mtime_ns:
            diffs.append("mtime: " + show(p))
        if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
            if sa.st_rdev != sb.st_rdev:
                diffs.append("rdev: " + show(p))
        if stat.S_ISREG(sa.st_mode):
            if sa.st_size != sb.st_size:
                diffs.append("size: " + show(p))
            elif a[p]["sha256"] != b[p]["sha256"]:
                diffs.append("content: " + show(p))
            if sa.st_blocks * 512 < sa.st_size and sb.st_blocks > sa.st_blocks + 2048:
                diffs.append("holes: %s %d vs %d blocks" % (show(p), sa.st_blocks, sb.st_blocks))
            if sa.st_nlink > 1:
                groups_a.setdefault(sa.st_ino, set()).add(p)
            if sb.st_nlink > 1:
                groups_b.setdefault(sb.st_ino, set()).add(p)
    if sorted(map(sorted, groups_a.values())) != sorted(map(sorted, groups_b.values())):
        diffs.append("hard links: %s vs %s" % (
            sorted(sorted(map(show, g)) for g in groups_a.values()),
            sorted(sorted(map(show, g)) for g in groups_b.values())))
    for d in diffs:
        print(d)


if __name__ == "__main__":
    main()
