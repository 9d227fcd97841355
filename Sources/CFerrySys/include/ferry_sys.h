#ifndef FERRY_SYS_H
#define FERRY_SYS_H
#include <sys/stat.h>

/// syncfs(2): glibc declares it only under _GNU_SOURCE, which Swift's Glibc module does not set.
int ferry_syncfs(int fd);

/// UTIME_OMIT and UTIME_NOW are macros Swift cannot import.
long ferry_utime_omit(void);
#endif
