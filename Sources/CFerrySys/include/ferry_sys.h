#ifndef FERRY_SYS_H
#define FERRY_SYS_H
#include <sys/stat.h>
#include <spawn.h>

/// syncfs(2): glibc declares it only under _GNU_SOURCE, which Swift's Glibc module does not set.
int ferry_syncfs(int fd);

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
#endif
