#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/fanotify.h>
#include <sys/statfs.h>
#include <limits.h>
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

int ferry_start_writeback(int fd, long long offset, long long length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

int ferry_inotify_init(void) { return inotify_init1(IN_CLOEXEC); }
int ferry_inotify_add_watch(int fd, const char *path, uint32_t mask) { return inotify_add_watch(fd, path, mask); }
int ferry_inotify_rm_watch(int fd, int wd) { return inotify_rm_watch(fd, wd); }

int ferry_fanotify_init(void) {
    return fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
}

int ferry_fanotify_mark_filesystem(int fd, const char *path, uint64_t mask) {
    return fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, path);
}

int ferry_fsid(int fd, uint64_t *fsid) {
    struct statfs st;
    if (fstatfs(fd, &st) != 0) return -1;
    memcpy(fsid, &st.f_fsid, sizeof *fsid);
    return 0;
}

int ferry_fanotify_next(const unsigned char *buf, unsigned long len, unsigned long *offset, struct ferry_fan_event *out) {
    unsigned long at = *offset;
    if (at >= len) return 0;
    if (len - at < FAN_EVENT_METADATA_LEN) return -1;
    struct fanotify_event_metadata meta;
    memcpy(&meta, buf + at, sizeof meta);
    if (meta.vers != FANOTIFY_METADATA_VERSION || meta.event_len < meta.metadata_len || meta.metadata_len < sizeof meta
        || meta.event_len > len - at) {
        *offset = len;
        return -1;
    }
    *offset = at + meta.event_len;
    memset(out, 0, sizeof *out);
    out->mask = meta.mask;
    if (meta.fd >= 0) close(meta.fd); /* not asked for with FID reporting; closed should one come */
    unsigned long info = at + meta.metadata_len, end = at + meta.event_len;
    while (info + sizeof(struct fanotify_event_info_header) <= end) {
        struct fanotify_event_info_header hdr;
        memcpy(&hdr, buf + info, sizeof hdr);
        if (hdr.len < sizeof hdr || hdr.len > end - info) return -1;
        if (hdr.info_type == FAN_EVENT_INFO_TYPE_DFID_NAME || hdr.info_type == FAN_EVENT_INFO_TYPE_DFID) {
            unsigned long fixed = sizeof(struct fanotify_event_info_fid) + sizeof(struct file_handle);
            if (hdr.len < fixed) return -1;
            const struct fanotify_event_info_fid *fid = (const void *)(buf + info);
            memcpy(&out->fsid, &fid->fsid, sizeof out->fsid);
            struct file_handle fh;
            memcpy(&fh, fid->handle, sizeof fh);
            if (fh.handle_bytes > hdr.len - fixed) return -1;
            out->handle = fid->handle;
            if (hdr.info_type == FAN_EVENT_INFO_TYPE_DFID_NAME) {
                const char *name = (const char *)fid->handle + sizeof fh + fh.handle_bytes;
                unsigned long room = hdr.len - fixed - fh.handle_bytes;
                unsigned long n = strnlen(name, room);
                if (n == room) return -1;
                if (!(n == 1 && name[0] == '.')) {
                    out->name = name;
                    out->name_len = n;
                }
            }
        }
        info += hdr.len;
    }
    return 1;
}

long ferry_handle_path(int mount_fd, const void *handle, char *out, unsigned long size) {
    struct file_handle fh;
    memcpy(&fh, handle, sizeof fh);
    if (fh.handle_bytes > MAX_HANDLE_SZ) {
        errno = EINVAL;
        return -1;
    }
    union {
        struct file_handle h;
        unsigned char bytes[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    } copy;
    memcpy(&copy, handle, sizeof fh + fh.handle_bytes);
    int fd = open_by_handle_at(mount_fd, &copy.h, O_PATH | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_nlink == 0) {
        /* removed, though still referenced: its name is gone (readlink would append " (deleted)") */
        close(fd);
        errno = ESTALE;
        return -1;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    long n = readlink(proc, out, size);
    int saved = errno;
    close(fd);
    errno = saved;
    if (n >= 0 && (unsigned long)n == size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return n;
}

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

_Static_assert(FERRY_FAN_MODIFY == FAN_MODIFY && FERRY_FAN_ATTRIB == FAN_ATTRIB && FERRY_FAN_CLOSE_WRITE == FAN_CLOSE_WRITE
    && FERRY_FAN_MOVED_FROM == FAN_MOVED_FROM && FERRY_FAN_MOVED_TO == FAN_MOVED_TO && FERRY_FAN_CREATE == FAN_CREATE
    && FERRY_FAN_DELETE == FAN_DELETE && FERRY_FAN_DELETE_SELF == FAN_DELETE_SELF && FERRY_FAN_MOVE_SELF == FAN_MOVE_SELF
    && FERRY_FAN_Q_OVERFLOW == FAN_Q_OVERFLOW && FERRY_FAN_ONDIR == FAN_ONDIR,
    "fanotify bits");
