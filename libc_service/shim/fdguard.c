/* Guarding the shim's own descriptors from the program.
 *
 * Programs close descriptors they did not open: Python's subprocess
 * (close_fds=True, the default) calls close_range(3, ~0U) in the child,
 * daemons and closefrom() do the same.  Unguarded, that closes the
 * registration socket, and every program exec'd after it runs without a
 * master; it also closes the channel (the process falls back).
 *
 * So the registration socket, the channel and the /proc/self/fd descriptor
 * (rules.c names directories through it) live at high numbers
 * (LCS_FD_BASE and up, out of the way of dup2() onto low numbers; see
 * ownfds.c) and:
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
 *   another high number first (ownfds.c, lcs_evict), then do what the
 *   program asked.
 *
 * All of it may run in a signal handler or in a vfork()ed child: no locks,
 * no allocation, no dlsym after the constructor (the real functions are
 * resolved there, through LCS_REAL), raw system calls (real.c) for the
 * shim's own work, errno kept on success.
 *
 * Depends on ownfds.c and real.c. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "shim.h"

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* Declared by glibc 2.34 and later only. */
LCS_EXPORT void closefrom(int lowfd);

/* The real functions, each behind one LCS_REAL cache: resolved once by the
 * constructor (lcs_fdguard_init); lazily only if a call comes earlier
 * (another library's constructor), when nothing async is running yet. */
static __typeof__(close) *real_close(void) { return LCS_REAL(close); }
static __typeof__(dup2) *real_dup2(void) { return LCS_REAL(dup2); }
static __typeof__(dup3) *real_dup3(void) { return LCS_REAL(dup3); }
static __typeof__(closefrom) *real_closefrom(void) { return LCS_REAL(closefrom); }

void lcs_fdguard_init(void)
{
	(void)real_close();
	(void)real_dup2();
	(void)real_dup3();
	(void)real_closefrom();
}

static int guarded(int fd)
{
	int fds[LCS_GUARDED_MAX], n = lcs_guarded_fds(fds);

	for (int i = 0; i < n; i++)
		if (fds[i] == fd)
			return 1;
	return 0;
}

static int open_fd(int fd)
{
	int saved = errno;
	int is_open = lcs_fcntl_raw(fd, F_GETFD, 0) >= 0;
	errno = saved;
	return is_open;
}

LCS_EXPORT int close(int fd)
{
	if (fd >= 0 && guarded(fd))
		return 0;
	return real_close()(fd);
}

LCS_EXPORT int close_range(unsigned first, unsigned last, int flags)
{
	int fds[LCS_GUARDED_MAX], n = lcs_guarded_fds(fds), error = 0, saved = errno;
	unsigned from = first;

	/* Bad arguments: the kernel says so, and closes nothing. */
	if (!n || first > last || flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC))
		return lcs_close_range_raw(first, last, flags);
	for (int i = 0; i < n; i++) {
		unsigned fd = fds[i];
		if (fd < from || fd > last)
			continue;
		if (fd > from && lcs_close_range_raw(from, fd - 1, flags) < 0 && !error)
			error = errno;
		from = fd + 1;
	}
	if (from <= last && lcs_close_range_raw(from, last, flags) < 0 && !error)
		error = errno;
	errno = error ? error : saved;
	return error ? -1 : 0;
}

LCS_EXPORT void closefrom(int lowfd)
{
	int fds[LCS_GUARDED_MAX], n = lcs_guarded_fds(fds), saved = errno;
	int from = lowfd < 0 ? 0 : lowfd;

	if (!n || fds[n - 1] < from) {
		real_closefrom()(lowfd);
		return;
	}
	/* The guarded close_range above, by its name on purpose: it skips the
	 * shim's descriptors. */
	if (close_range(from, ~0U, 0) == 0) {
		errno = saved;
		return;
	}
	/* No close_range (Linux < 5.9): one at a time up to the last guarded
	 * descriptor, then the real closefrom (which walks /proc/self/fd). */
	for (int i = 0; i < n; i++) {
		for (; from < fds[i]; from++)
			lcs_close_unguarded(from);
		if (from == fds[i])
			from++;
	}
	real_closefrom()(from);
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
	return real_dup2()(oldfd, newfd);
}

int lcs_dup3_guarded(int oldfd, int newfd, int flags)
{
	if (make_room(oldfd, newfd) < 0)
		return -1;
	return real_dup3()(oldfd, newfd, flags);
}

LCS_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	return lcs_dup3_guarded(oldfd, newfd, flags);
}
