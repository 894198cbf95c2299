/* What a hostile slave tries against its master and its host, one raw
 * system call per attempt. Prints "NAME=OK" or "NAME=ERRNONAME" for each
 * attempt named on the command line; "fs_setflags" takes the next argument
 * as a file to open read-only first. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long result)
{
    if (result < 0)
        printf("%s=%s\n", name, strerrorname_np(errno));
    else
        printf("%s=OK\n", name);
}

static long attempt(const char *name, const char *arg)
{
    pid_t parent = getppid();
    struct rlimit64 tiny = {4, 4};
    struct rlimit64 old;
    char c = 'x';

    if (!strcmp(name, "tiocsti"))
        return syscall(SYS_ioctl, 0, (unsigned long)TIOCSTI, &c);
    if (!strcmp(name, "tiocsti_high_bits"))
        return syscall(SYS_ioctl, 0, 0x100000000UL | TIOCSTI, &c);
    if (!strcmp(name, "tioclinux")) {
        char sub = 2; /* TIOCL_SETSEL */
        return syscall(SYS_ioctl, 0, (unsigned long)TIOCLINUX, &sub);
    }
    if (!strcmp(name, "prlimit_parent"))
        return syscall(SYS_prlimit64, parent, RLIMIT_NOFILE, &tiny, NULL);
    if (!strcmp(name, "prlimit_parent_read"))
        return syscall(SYS_prlimit64, parent, RLIMIT_NOFILE, NULL, &old);
    if (!strcmp(name, "prlimit_self")) {
        struct rlimit64 same;
        if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &same) < 0)
            return -1;
        return syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &same, NULL);
    }
    if (!strcmp(name, "setpriority_user"))
        return syscall(SYS_setpriority, PRIO_USER, 0, 19);
    if (!strcmp(name, "setpriority_parent"))
        return syscall(SYS_setpriority, PRIO_PROCESS, parent, 19);
    if (!strcmp(name, "setpriority_self")) {
        /* One step nicer than now (the raw call returns 20 - nice): what any
         * process may do to itself, whatever nice level it started at. */
        long current = syscall(SYS_getpriority, PRIO_PROCESS, 0);
        if (current < 0)
            return -1;
        long nicer = 20 - current + 1;
        return syscall(SYS_setpriority, PRIO_PROCESS, 0, nicer > 19 ? 19 : nicer);
    }
    if (!strcmp(name, "setaffinity_parent")) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        return syscall(SYS_sched_setaffinity, parent, sizeof set, &set);
    }
    if (!strcmp(name, "keyctl"))
        return syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    if (!strcmp(name, "add_key"))
        return syscall(SYS_add_key, "user", "stolen", "x", 1, -3);
    if (!strcmp(name, "request_key"))
        return syscall(SYS_request_key, "user", "stolen", NULL, 0);
    if (!strcmp(name, "file_setattr"))
        return syscall(469, AT_FDCWD, ".", NULL, 0, 0);
    if (!strcmp(name, "unknown_470"))
        return syscall(470, 0, 0, 0);
    if (!strcmp(name, "unknown_1000"))
        return syscall(1000, 0, 0, 0);
    if (!strcmp(name, "fs_setflags") || !strcmp(name, "fs_fssetxattr")) {
        int fd = open(arg, O_RDONLY | O_CLOEXEC);
        long result;
        if (fd < 0)
            return -1;
        if (!strcmp(name, "fs_setflags")) {
            /* The file's own flags written back unchanged: a change no file
             * system refuses its owner (clearing ext4's extents flag is EPERM). */
            int flags = 0;
            if (syscall(SYS_ioctl, fd, (unsigned long)FS_IOC_GETFLAGS, &flags) < 0)
                flags = 0;
            result = syscall(SYS_ioctl, fd, (unsigned long)FS_IOC_SETFLAGS, &flags);
        } else {
            struct fsxattr attr;
            memset(&attr, 0, sizeof attr);
            result = syscall(SYS_ioctl, fd, (unsigned long)FS_IOC_FSSETXATTR, &attr);
        }
        int saved = errno;
        close(fd);
        errno = saved;
        return result;
    }
    errno = EINVAL;
    return -1;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = i + 1 < argc ? argv[i + 1] : "";
        errno = 0;
        report(argv[i], attempt(argv[i], arg));
        if (!strcmp(argv[i], "fs_setflags") || !strcmp(argv[i], "fs_fssetxattr"))
            i++;
    }
    fflush(stdout);
    return 0;
}
