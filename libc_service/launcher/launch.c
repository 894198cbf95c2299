/*
 * The launcher: applies a prepared sandbox (and the seccomp transport's
 * filter) to itself, then executes the program.
 *
 * Why a program of its own: confining the child from Python needs a
 * preexec_fn, which makes the interpreter fork() (copying its page tables,
 * then running Python in the child) instead of vfork(). Executed with no
 * preexec_fn, the launcher costs one small exec, and the parent's copy of
 * the interpreter is never made. Everything that can fail in a way the
 * caller should see first (kernel support, the ruleset and its rules, the
 * filters, the program's path) is prepared by the parent; the launcher
 * only makes the system calls that apply it, in the order the steps are
 * given:
 *
 *   launch STEP... -- PATH ARGV0 ARG...
 *
 *   k=FD              mark every descriptor from 3 up close-on-exec but FD
 *                     (a loop that does not close the parent's descriptors)
 *   s                 setsid()
 *   n=UID:GID         fresh network and IPC namespaces (inside a user
 *                     namespace mapping UID and GID when unshare alone is
 *                     refused)
 *   N=NET:IPC         enter the (fresh, unused) network and IPC namespaces
 *                     whose descriptors are NET and IPC
 *   l=FD:FLAGS        no_new_privs, landlock_restrict_self(FD, FLAGS)
 *                     (FLAGS dropped when the kernel refuses them)
 *   c=LAST            empty every capability set (bounding 0..LAST)
 *   f=HEX             install the seccomp program HEX (struct sock_filter
 *                     array, host byte order) after no_new_privs
 *   h=FD:HEX          install HEX with a user-notification listener and
 *                     send the listener over the socket FD ("k", or "-"
 *                     when calls cannot be made killable-only)
 *   x=FD              close FD
 *   p=VALUE           set LD_PRELOAD to VALUE for the program (the
 *                     launcher itself runs without the shim)
 *
 * On any failure the step is written to stderr and the launcher exits
 * with status 127 without running the program.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

/* The largest program accepted (BPF_MAXINSNS). */
#define MAX_INSNS 4096

static void fail(const char *what) {
    int code = errno;
    char line[512];
    int n = snprintf(line, sizeof line, "libc-service: cannot apply the sandbox: %s: %s\n", what, strerror(code));
    if (n > 0) {
        ssize_t ignored = write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)ignored;
    }
    _exit(127);
}

static void bad_step(const char *step) {
    errno = EINVAL;
    fail(step);
}

static long number(const char **text, const char *step) {
    char *end;
    errno = 0;
    long value = strtol(*text, &end, 10);
    if (errno != 0 || end == *text)
        bad_step(step);
    *text = end;
    return value;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode HEX into a sock_filter array (static storage: one program at a time is installed). */
static struct sock_fprog program(const char *hex, const char *step) {
    static struct sock_filter insns[MAX_INSNS];
    size_t length = strlen(hex);
    if (length == 0 || length % (2 * sizeof(struct sock_filter)) != 0 ||
        length / 2 / sizeof(struct sock_filter) > MAX_INSNS)
        bad_step(step);
    unsigned char *bytes = (unsigned char *)insns;
    for (size_t i = 0; i < length / 2; i++) {
        int high = hex_digit(hex[2 * i]), low = hex_digit(hex[2 * i + 1]);
        if (high < 0 || low < 0)
            bad_step(step);
        bytes[i] = (unsigned char)(high << 4 | low);
    }
    struct sock_fprog prog = {(unsigned short)(length / 2 / sizeof(struct sock_filter)), insns};
    return prog;
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        fail(path);
    ssize_t length = (ssize_t)strlen(text);
    if (write(fd, text, (size_t)length) != length)
        fail(path);
    close(fd);
}

static void unshare_network(const char *arguments) {
    const char *text = arguments;
    long uid = number(&text, "n=");
    if (*text++ != ':')
        bad_step("n=");
    long gid = number(&text, "n=");
    if (unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0)
        return;
    /* Without CAP_SYS_ADMIN, a user namespace grants it for the new namespaces. */
    if (unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC) != 0)
        fail("unshare(network, ipc)");
    char map[64];
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%ld %ld 1", uid, uid);
    write_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%ld %ld 1", gid, gid);
    write_file("/proc/self/gid_map", map);
}

static void enter_namespaces(const char *arguments) {
    const char *text = arguments;
    long net = number(&text, "N=");
    if (*text++ != ':')
        bad_step("N=");
    long ipc = number(&text, "N=");
    if (setns((int)net, CLONE_NEWNET) != 0)
        fail("setns(network)");
    if (setns((int)ipc, CLONE_NEWIPC) != 0)
        fail("setns(ipc)");
}

static void restrict_self(const char *arguments) {
    const char *text = arguments;
    long fd = number(&text, "l=");
    if (*text++ != ':')
        bad_step("l=");
    long flags = number(&text, "l=");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("prctl(PR_SET_NO_NEW_PRIVS)");
    if (flags != 0 && syscall(SYS_landlock_restrict_self, (int)fd, (unsigned)flags) == 0)
        return;
    if (flags != 0 && errno != EINVAL)
        fail("landlock_restrict_self");
    if (syscall(SYS_landlock_restrict_self, (int)fd, 0U) != 0)
        fail("landlock_restrict_self");
}

static void drop_capabilities(const char *arguments) {
    const char *text = arguments;
    long last = number(&text, "c=");
    for (long cap = 0; cap <= last; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EPERM)
                break; /* no CAP_SETPCAP: nothing in the bounding set to fear under no_new_privs */
            if (errno != EINVAL)
                fail("prctl(PR_CAPBSET_DROP)");
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0)
        fail("capset");
}

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static void keep_only(const char *arguments) {
    const char *text = arguments;
    long keep = number(&text, "k=");
    if (keep < 3)
        bad_step("k=");
    if ((keep == 3 || syscall(SYS_close_range, 3U, (unsigned)keep - 1, CLOSE_RANGE_CLOEXEC) == 0) &&
        syscall(SYS_close_range, (unsigned)keep + 1, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return;
    /* Before Linux 5.11: one descriptor at a time. */
    long last = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < last && fd < 65536; fd++) {
        if (fd == keep)
            continue;
        int flags = fcntl((int)fd, F_GETFD);
        if (flags >= 0)
            fcntl((int)fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

static void install_filter(const char *hex) {
    struct sock_fprog prog = program(hex, "f=");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("prctl(PR_SET_NO_NEW_PRIVS)");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
        fail("prctl(PR_SET_SECCOMP)");
}

static void hand_off_listener(const char *arguments) {
    const char *text = arguments;
    long fd = number(&text, "h=");
    if (*text++ != ':')
        bad_step("h=");
    struct sock_fprog prog = program(text, "h=");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("prctl(PR_SET_NO_NEW_PRIVS)");
    char message = 'k';
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                            SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
    if (listener < 0 && errno == EINVAL) {
        /* Before Linux 5.19: no WAIT_KILLABLE_RECV; a signal may then restart a notified call. */
        message = '-';
        listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    }
    if (listener < 0)
        fail("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)");
    /* From here on a notified call waits for the master: only sendmsg and close follow before exec. */
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {&message, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                         .msg_controllen = sizeof control.buffer};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    int listener_fd = (int)listener;
    memcpy(CMSG_DATA(cmsg), &listener_fd, sizeof listener_fd);
    if (sendmsg((int)fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) != 1)
        fail("sendmsg(seccomp listener)");
    close(listener_fd);
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *step = argv[i];
        if (strncmp(step, "k=", 2) == 0) {
            keep_only(step + 2);
        } else if (strcmp(step, "s") == 0) {
            if (setsid() < 0)
                fail("setsid");
        } else if (strncmp(step, "n=", 2) == 0) {
            unshare_network(step + 2);
        } else if (strncmp(step, "N=", 2) == 0) {
            enter_namespaces(step + 2);
        } else if (strncmp(step, "l=", 2) == 0) {
            restrict_self(step + 2);
        } else if (strncmp(step, "c=", 2) == 0) {
            drop_capabilities(step + 2);
        } else if (strncmp(step, "f=", 2) == 0) {
            install_filter(step + 2);
        } else if (strncmp(step, "h=", 2) == 0) {
            hand_off_listener(step + 2);
        } else if (strncmp(step, "p=", 2) == 0) {
            if (setenv("LD_PRELOAD", step + 2, 1) != 0)
                fail("setenv(LD_PRELOAD)");
        } else if (strncmp(step, "x=", 2) == 0) {
            const char *text = step + 2;
            close((int)number(&text, "x="));
        } else {
            bad_step(step);
        }
    }
    if (i + 2 >= argc) {
        errno = EINVAL;
        fail("usage: launch STEP... -- PATH ARGV0 ARG...");
    }
    const char *path = argv[i + 1];
    extern char **environ;
    execve(path, argv + i + 2, environ);
    fail(path);
}
