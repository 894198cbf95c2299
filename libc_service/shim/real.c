/* The one way to the real libc.
 *
 * The shim interposes libc functions (open, close, stat, ...); inside the
 * shim, calling such a function by its name would come back into the shim.
 * So:
 *
 * - the real definition of an interposed function is reached only through
 *   LCS_REAL(name) (shim.h), which resolves it here, once, with
 *   dlsym(RTLD_NEXT): the next definition after the shim's, the libc's;
 * - the few places where even the real libc function must not be used
 *   (the shim's own descriptors must never go through a guarded or the
 *   program's own close, a cancellation point, or a value glibc or the
 *   program caches) make the raw system call, through the helpers below,
 *   each saying why.  No other file calls dlsym() or syscall()
 *   (tests/test_shim_layout.py checks it).
 *
 * This file depends on no other file of the shim. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static int missing_function(void)
{
	errno = ENOSYS;
	return -1;
}

void *lcs_real(const char *name)
{
	void *fn = dlsym(RTLD_NEXT, name);
	return fn ? fn : (void *)missing_function;
}

/* ---- raw system calls ---- */

/* The shim's own descriptors: never the guarded close (fdguard.c), never a
 * cancellation point, async-signal-safe; errno kept. */
void lcs_close_raw(int fd)
{
	int saved = errno;
	syscall(SYS_close, fd);
	errno = saved;
}

/* A descriptor the program closes around the guarded ones (closefrom's
 * fallback): not the guarded close, not a cancellation point. */
int lcs_close_unguarded(int fd)
{
	return syscall(SYS_close, fd);
}

/* close_range(2) itself: glibc may lack it, and the interposed one is the
 * guard's. */
int lcs_close_range_raw(unsigned first, unsigned last, int flags)
{
	return syscall(SYS_close_range, first, last, flags);
}

/* fcntl(2) on the shim's own or the program's descriptors from the guard
 * (signal handlers, vfork()ed children): the kernel's call, not a program's
 * fcntl or a cancellation point. */
int lcs_fcntl_raw(int fd, int command, long arg)
{
	return syscall(SYS_fcntl, fd, command, arg);
}

/* The shim's own opens (the working directory, /proc/self/status) must
 * not come back into the interposed open. */
int lcs_openat_raw(int dirfd, const char *path, int flags)
{
	return syscall(SYS_openat, dirfd, path, flags);
}

/* The constructor's read of /proc/self/status: the descriptor is the
 * shim's own; not a cancellation point. */
long lcs_read_raw(int fd, void *buf, size_t len)
{
	return syscall(SYS_read, fd, buf, len);
}

/* The kernel's answer, never a cached one: a vfork()ed or raw clone()d
 * child shares the parent's memory (and any cache in it). */
int lcs_getpid_raw(void)
{
	return syscall(SYS_getpid);
}

/* gettid(): older glibc has no wrapper. */
int lcs_gettid_raw(void)
{
	return syscall(SYS_gettid);
}

/* The constructor reads the umask by setting it: not through the
 * interposed umask (creds.c), whose cache it is filling. */
mode_t lcs_umask_raw(mode_t mask)
{
	return syscall(SYS_umask, mask);
}

/* The calling thread's groups and filesystem ids, as the kernel has them:
 * a program may define getgroups/setfsuid itself, and its definition would
 * win over the libc's. */
int lcs_getgroups_raw(int size, gid_t *list)
{
	return syscall(SYS_getgroups, size, list);
}

long lcs_setfsuid_raw(long id)
{
	return syscall(SYS_setfsuid, id);
}

long lcs_setfsgid_raw(long id)
{
	return syscall(SYS_setfsgid, id);
}
