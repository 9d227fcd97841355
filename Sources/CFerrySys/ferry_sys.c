#define _GNU_SOURCE
#include <unistd.h>
#include <sys/stat.h>
#include "ferry_sys.h"

int ferry_syncfs(int fd) { return syncfs(fd); }

long ferry_utime_omit(void) { return UTIME_OMIT; }
