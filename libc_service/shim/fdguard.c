/* Guarding the shim's own descriptors from the program.
 *
 * Programs close descriptors they did not open: Python's subprocess
 * (close_fds=True, the default) calls close_range(3, ~0U) in the child,
 * daemons and closefrom() do the same.  Unguarded, that closes the
 * registration socket, and every program exec'd after it runs without a
 * master; it also closes the channel (the process falls back).
 *
 * So the registration socket and the channel live at high numbers
 * (LCS_FD_BASE and up, out of the way of dup2() onto low numbers; see
 * channel.c) and:
 *
 * - close() of a guarded descriptor does nothing and returns 0, as if it
 *   had closed it.  The program means "I need nothing that is there", and
 *   that holds: the descriptor is invisible to it (its number is never
 *   handed out).  Failing with EBADF instead would make careful programs
 *   report an error about a descriptor they never had.
 * - close_range() is split around the guarded descriptors (its
 *   CLOSE_RANGE_CLOEXEC form too: the registration socket must survive exec).
 * - closefrom() likewise.
 * - dup2()/dup3() onto a guarded number move the shim's descriptor to
 *   another high number first (channel.c, lcs_evict), then do what the
 *   program asked.
 *
 * All of it may run in a signal handler or in a vfork()ed child: no locks,
 * no allocation, no dlsym after the constructor (the real functions are
 * resolved there), raw system calls for the shim's own work, errno kept on
 * success. */
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

typedef int close_fn(int);
typedef int dup2_fn(int, int);
typedef int dup3_fn(int, int, int);
typedef void closefrom_fn(int);

static close_fn *real_close;
static dup2_fn *real_dup2;
static dup3_fn *real_dup3;
static closefrom_fn *real_closefrom;

/* Resolved once by the constructor; lazily only if a call comes earlier
 * (another library's constructor), when nothing async is running yet. */
#define REAL(name)                                                              \
	({                                                                      \
		name##_fn *fn = __atomic_load_n(&real_##name, __ATOMIC_RELAXED);  \
		if (!fn) {                                                      \
			fn = (name##_fn *)lcs_real(#name);                      \
			__atomic_store_n(&real_##name, fn, __ATOMIC_RELAXED);   \
		}                                                               \
		fn;                                                             \
	})

void lcs_fdguard_init(void)
{
	(void)REAL(close);
	(void)REAL(dup2);
	(void)REAL(dup3);
	(void)REAL(closefrom);
}

void lcs_close_raw(int fd)
{
	int saved = errno;
	syscall(SYS_close, fd);
	errno = saved;
}

/* The lowest descriptor the shim's own may live at. */
static long high_base(void)
{
	struct rlimit limit;

	/* A low descriptor limit: the top of what it allows, if that is high. */
	if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
	    limit.rlim_cur < LCS_FD_BASE + 64)
		return limit.rlim_cur >= 128 ? (long)limit.rlim_cur - 64 : -1;
	return LCS_FD_BASE;
}

int lcs_dup_high(int fd, int cloexec)
{
	long base = high_base();
	long moved;

	if (base < 0)
		return fd;
	moved = syscall(SYS_fcntl, fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, base);
	if (moved < 0)
		return errno == EMFILE || errno == EINVAL ? fd : -1;
	return moved;
}

int lcs_move_high(int fd, int cloexec)
{
	long base = high_base();

	if (base < 0 || fd >= base)
		return fd;
	return lcs_dup_high(fd, cloexec);
}

static int guarded(int fd)
{
	int fds[2], n = lcs_guarded_fds(fds);

	for (int i = 0; i < n; i++)
		if (fds[i] == fd)
			return 1;
	return 0;
}

static int open_fd(int fd)
{
	int saved = errno;
	int is_open = syscall(SYS_fcntl, fd, F_GETFD) >= 0;
	errno = saved;
	return is_open;
}

LCS_EXPORT int close(int fd)
{
	if (fd >= 0 && guarded(fd))
		return 0;
	return REAL(close)(fd);
}

static int raw_close_range(unsigned first, unsigned last, int flags)
{
	return syscall(SYS_close_range, first, last, flags);
}

LCS_EXPORT int close_range(unsigned first, unsigned last, int flags)
{
	int fds[2], n = lcs_guarded_fds(fds), error = 0, saved = errno;
	unsigned from = first;

	/* Bad arguments: the kernel says so, and closes nothing. */
	if (!n || first > last || flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC))
		return raw_close_range(first, last, flags);
	for (int i = 0; i < n; i++) {
		unsigned fd = fds[i];
		if (fd < from || fd > last)
			continue;
		if (fd > from && raw_close_range(from, fd - 1, flags) < 0 && !error)
			error = errno;
		from = fd + 1;
	}
	if (from <= last && raw_close_range(from, last, flags) < 0 && !error)
		error = errno;
	errno = error ? error : saved;
	return error ? -1 : 0;
}

LCS_EXPORT void closefrom(int lowfd)
{
	int fds[2], n = lcs_guarded_fds(fds), saved = errno;
	int from = lowfd < 0 ? 0 : lowfd;

	if (!n || fds[n - 1] < from) {
		REAL(closefrom)(lowfd);
		return;
	}
	if (close_range(from, ~0U, 0) == 0) {
		errno = saved;
		return;
	}
	/* No close_range (Linux < 5.9): one at a time up to the last guarded
	 * descriptor, then the real closefrom (which walks /proc/self/fd). */
	for (int i = 0; i < n; i++) {
		for (; from < fds[i]; from++)
			syscall(SYS_close, from);
		if (from == fds[i])
			from++;
	}
	REAL(closefrom)(from);
	errno = saved;
}

/* Only when oldfd is open: otherwise dup2 fails with EBADF and leaves
 * newfd alone, so there is nothing to move. */
static int make_room(int oldfd, int newfd)
{
	if (oldfd == newfd || newfd < 0 || !guarded(newfd) || !open_fd(oldfd))
		return 0;
	return lcs_evict(newfd);
}

LCS_EXPORT int dup2(int oldfd, int newfd)
{
	if (make_room(oldfd, newfd) < 0)
		return -1;
	return REAL(dup2)(oldfd, newfd);
}

LCS_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	if (make_room(oldfd, newfd) < 0)
		return -1;
	return REAL(dup3)(oldfd, newfd, flags);
}
