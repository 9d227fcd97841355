#ifndef FERRY_SYS_H
#define FERRY_SYS_H
#include <sys/stat.h>
#include <spawn.h>

/// syncfs(2): glibc declares it only under _GNU_SOURCE, which Swift's Glibc module does not set.
int ferry_syncfs(int fd);

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writing a range back without waiting (_GNU_SOURCE too).
int ferry_start_writeback(int fd, long long offset, long long length);

/// UTIME_OMIT and UTIME_NOW are macros Swift cannot import.
long ferry_utime_omit(void);

/// O_PATH, likewise hidden behind _GNU_SOURCE.
int ferry_o_path(void);

/// openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: opens `path` below `dirfd` in one call, refusing any
/// symlink on the way and any escape with "..". Returns -1 with errno ENOSYS where the kernel lacks openat2
/// (before Linux 5.6); callers then walk component by component.
int ferry_open_beneath(int dirfd, const char *path, int flags, unsigned int mode);
/// renameat2(2) with RENAME_NOREPLACE: fails with EEXIST instead of replacing an existing name (a file a live
/// daemon created meanwhile).
int ferry_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+, behind _GNU_SOURCE): the child closes every
/// descriptor from `from` up.
int ferry_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);
/// Extended attributes of the entry `name` in directory `dirfd`, never following a final symlink (through
/// /proc/self/fd, since Linux has no *xattrat calls before 6.13). Same results and errno as llistxattr(2),
/// lgetxattr(2) and lsetxattr(2).
long ferry_llistxattrat(int dirfd, const char *name, char *list, unsigned long size);
long ferry_lgetxattrat(int dirfd, const char *name, const char *attr, void *value, unsigned long size);
int ferry_lsetxattrat(int dirfd, const char *name, const char *attr, const void *value, unsigned long size);
/// fsetxattr(2) / flistxattr(2) / fgetxattr(2) on an open descriptor.
int ferry_fsetxattr(int fd, const char *attr, const void *value, unsigned long size);
/// SEEK_DATA and SEEK_HOLE, hidden behind _GNU_SOURCE.
int ferry_seek_data(void);
int ferry_seek_hole(void);
/// glibc's malloc: allocations up to `mmap_threshold` come from the heap (not fresh mmaps), and up to
/// `trim_threshold` freed bytes stay with the process instead of going back to the kernel.
void ferry_keep_freed_memory(unsigned long mmap_threshold, unsigned long trim_threshold);
/// inotify(7), for the fs-journal tap's watcher: the calls and the event bits it uses.
#include <stdint.h>
int ferry_inotify_init(void);
int ferry_inotify_add_watch(int fd, const char *path, uint32_t mask);
int ferry_inotify_rm_watch(int fd, int wd);
static const uint32_t FERRY_IN_MODIFY = 0x00000002;
static const uint32_t FERRY_IN_ATTRIB = 0x00000004;
static const uint32_t FERRY_IN_CLOSE_WRITE = 0x00000008;
static const uint32_t FERRY_IN_MOVED_FROM = 0x00000040;
static const uint32_t FERRY_IN_MOVED_TO = 0x00000080;
static const uint32_t FERRY_IN_CREATE = 0x00000100;
static const uint32_t FERRY_IN_DELETE = 0x00000200;
static const uint32_t FERRY_IN_DELETE_SELF = 0x00000400;
static const uint32_t FERRY_IN_MOVE_SELF = 0x00000800;
static const uint32_t FERRY_IN_Q_OVERFLOW = 0x00004000;
static const uint32_t FERRY_IN_IGNORED = 0x00008000;
static const uint32_t FERRY_IN_ONLYDIR = 0x01000000;
static const uint32_t FERRY_IN_DONT_FOLLOW = 0x02000000;
static const uint32_t FERRY_IN_EXCL_UNLINK = 0x04000000;
static const uint32_t FERRY_IN_ISDIR = 0x40000000;
/// fanotify(7) with FAN_REPORT_DFID_NAME, for the fs-journal tap's watcher: one mark per filesystem, each event
/// naming its directory by file handle plus the entry's name. `ferry_fanotify_init` returns -1 with errno EPERM
/// without CAP_SYS_ADMIN and EINVAL before Linux 5.9 (the caller then falls back to inotify).
int ferry_fanotify_init(void);
/// Marks the whole filesystem holding `path` for the events in `mask`.
int ferry_fanotify_mark_filesystem(int fd, const char *path, uint64_t mask);
/// The filesystem id fanotify reports for the filesystem of `fd` (statfs's f_fsid), or -1.
int ferry_fsid(int fd, uint64_t *fsid);
/// One event of a buffer read from a fanotify descriptor.
struct ferry_fan_event {
    uint64_t mask;
    /// statfs's f_fsid of the event's filesystem; 0 with `handle` NULL when the event carries no directory
    /// (a queue overflow).
    uint64_t fsid;
    /// The directory's `struct file_handle`, inside the buffer.
    const void *handle;
    /// The entry's name inside that directory (not terminated), or NULL with `name_len` 0 for "." (the
    /// directory itself).
    const char *name;
    unsigned long name_len;
};
/// Parses the event at `*offset` in `buf` (of `len` bytes) into `out` and moves `*offset` past it. Returns 1 for
/// an event, 0 at the end of the buffer, -1 for a malformed one (the rest of the buffer is skipped).
int ferry_fanotify_next(const unsigned char *buf, unsigned long len, unsigned long *offset, struct ferry_fan_event *out);
/// The path of the directory `handle` names now (open_by_handle_at through `mount_fd`, then /proc/self/fd), as
/// the bytes it holds in `out` (not terminated); -1 with errno (ESTALE: the directory is gone, or removed and
/// only still open somewhere).
long ferry_handle_path(int mount_fd, const void *handle, char *out, unsigned long size);
static const uint64_t FERRY_FAN_MODIFY = 0x00000002;
static const uint64_t FERRY_FAN_ATTRIB = 0x00000004;
static const uint64_t FERRY_FAN_CLOSE_WRITE = 0x00000008;
static const uint64_t FERRY_FAN_MOVED_FROM = 0x00000040;
static const uint64_t FERRY_FAN_MOVED_TO = 0x00000080;
static const uint64_t FERRY_FAN_CREATE = 0x00000100;
static const uint64_t FERRY_FAN_DELETE = 0x00000200;
static const uint64_t FERRY_FAN_DELETE_SELF = 0x00000400;
static const uint64_t FERRY_FAN_MOVE_SELF = 0x00000800;
static const uint64_t FERRY_FAN_Q_OVERFLOW = 0x00004000;
static const uint64_t FERRY_FAN_ONDIR = 0x40000000;
#endif
