// A test-only LD_PRELOAD shim: counts the bytes a process (ferry) writes, from outside ferry's code, so the tests
// can prove "nothing committed is sent again" with an independent measurement. It appends one line per write
// to the file named by FERRY_WRITECOUNT_LOG:
//   "N"      N payload bytes written to a partial file (a name .ferry-*.part), what ferry copies into a tree;
//   "net N"  N bytes sent on a TCP socket (requests to an S3 server, headers included).
// Nothing else is counted. Built by the tests with `cc -shared -fPIC`; never linked into ferry.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int log_fd = -2;

static void note(const char *kind, long n) {
    if (n <= 0) return;
    if (log_fd == -2) {
        const char *path = getenv("FERRY_WRITECOUNT_LOG");
        log_fd = path ? (int)syscall(SYS_open, path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : -1;
    }
    if (log_fd < 0) return;
    char line[64];
    int len = snprintf(line, sizeof line, "%s%ld\n", kind, n);
    syscall(SYS_write, log_fd, line, len);
}

// 1: a partial file, 2: a TCP socket, 0: anything else.
static int classify(int fd) {
    int saved = errno;
    int what = 0;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        if (S_ISSOCK(st.st_mode)) {
            struct sockaddr_storage addr;
            socklen_t len = sizeof addr;
            if (getsockname(fd, (struct sockaddr *)&addr, &len) == 0 && (addr.ss_family == AF_INET || addr.ss_family == AF_INET6)) what = 2;
        } else if (S_ISREG(st.st_mode)) {
            char link[64], target[4096];
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n > 0) {
                target[n] = 0;
                const char *base = strrchr(target, '/');
                base = base ? base + 1 : target;
                size_t bl = strlen(base);
                if (strncmp(base, ".ferry-", 7) == 0 && bl > 5 && strcmp(base + bl - 5, ".part") == 0) what = 1;
            }
        }
    }
    errno = saved;
    return what;
}

static void count(int fd, long n) {
    if (n <= 0) return;
    switch (classify(fd)) {
    case 1: note("", n); break;
    case 2: note("net ", n); break;
    default: break;
    }
}

#define REAL(name) static __typeof__(&name) real_##name; if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    ssize_t r = real_write(fd, buf, n);
    count(fd, r);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite);
    ssize_t r = real_pwrite(fd, buf, n, off);
    count(fd, r);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite64);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    count(fd, r);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev);
    ssize_t r = real_writev(fd, iov, cnt);
    count(fd, r);
    return r;
}

ssize_t send(int fd, const void *buf, size_t n, int flags) {
    REAL(send);
    ssize_t r = real_send(fd, buf, n, flags);
    count(fd, r);
    return r;
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to, socklen_t len) {
    REAL(sendto);
    ssize_t r = real_sendto(fd, buf, n, flags, to, len);
    count(fd, r);
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    REAL(sendmsg);
    ssize_t r = real_sendmsg(fd, msg, flags);
    count(fd, r);
    return r;
}
