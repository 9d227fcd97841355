#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>
#include "ferry_sys.h"

#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define FERRY_HAVE_OPENAT2 1
#endif

int ferry_syncfs(int fd) { return syncfs(fd); }

int ferry_inotify_init(void) { return inotify_init1(IN_CLOEXEC); }
int ferry_inotify_add_watch(int fd, const char *path, uint32_t mask) { return inotify_add_watch(fd, path, mask); }
int ferry_inotify_rm_watch(int fd, int wd) { return inotify_rm_watch(fd, wd); }

void ferry_keep_freed_memory(unsigned long mmap_threshold, unsigned long trim_threshold) {
    mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
    mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
}

long ferry_utime_omit(void) { return UTIME_OMIT; }

int ferry_open_beneath(int dirfd, const char *path, int flags, unsigned int mode) {
#if defined(FERRY_HAVE_OPENAT2) && defined(SYS_openat2)
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)flags;
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
    long r;
    do {
        r = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (r < 0 && (errno == EINTR || errno == EAGAIN));
    return (int)r;
#else
    (void)dirfd; (void)path; (void)flags; (void)mode;
    errno = ENOSYS;
    return -1;
#endif
}
int ferry_o_path(void) { return O_PATH; }

int ferry_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}

int ferry_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

static int ferry_proc_path(char *buf, size_t size, int dirfd, const char *name) {
    int n = snprintf(buf, size, "/proc/self/fd/%d/%s", dirfd, name);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

long ferry_llistxattrat(int dirfd, const char *name, char *list, unsigned long size) {
    char path[512];
    if (ferry_proc_path(path, sizeof path, dirfd, name) != 0) return -1;
    return llistxattr(path, list, size);
}

long ferry_lgetxattrat(int dirfd, const char *name, const char *attr, void *value, unsigned long size) {
    char path[512];
    if (ferry_proc_path(path, sizeof path, dirfd, name) != 0) return -1;
    return lgetxattr(path, attr, value, size);
}

int ferry_lsetxattrat(int dirfd, const char *name, const char *attr, const void *value, unsigned long size) {
    char path[512];
    if (ferry_proc_path(path, sizeof path, dirfd, name) != 0) return -1;
    return lsetxattr(path, attr, value, size, 0);
}

int ferry_fsetxattr(int fd, const char *attr, const void *value, unsigned long size) {
    return fsetxattr(fd, attr, value, size, 0);
}

int ferry_seek_data(void) { return SEEK_DATA; }
int ferry_seek_hole(void) { return SEEK_HOLE; }

/* The header's inotify bits are the kernel's: checked here, where both are visible. */
_Static_assert(FERRY_IN_MODIFY == IN_MODIFY && FERRY_IN_ATTRIB == IN_ATTRIB && FERRY_IN_CLOSE_WRITE == IN_CLOSE_WRITE
    && FERRY_IN_MOVED_FROM == IN_MOVED_FROM && FERRY_IN_MOVED_TO == IN_MOVED_TO && FERRY_IN_CREATE == IN_CREATE
    && FERRY_IN_DELETE == IN_DELETE && FERRY_IN_DELETE_SELF == IN_DELETE_SELF && FERRY_IN_MOVE_SELF == IN_MOVE_SELF
    && FERRY_IN_Q_OVERFLOW == IN_Q_OVERFLOW && FERRY_IN_IGNORED == IN_IGNORED && FERRY_IN_ONLYDIR == IN_ONLYDIR
    && FERRY_IN_DONT_FOLLOW == IN_DONT_FOLLOW && FERRY_IN_EXCL_UNLINK == IN_EXCL_UNLINK && FERRY_IN_ISDIR == IN_ISDIR,
    "inotify bits");
