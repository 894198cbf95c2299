/* Metadata changes: chmod, chown and utimensat and their *at, l*, f* and
 * legacy (utimes, utime) spellings.
 *
 * Each entry point applies the policy's rule table, then asks the master,
 * like fs.c: a path form sends the path with its directory, a descriptor
 * form (fchmod, fchown, futimens) sends the slave's descriptor itself.  When the shim is inactive, the
 * channel is unusable, the arguments cannot be expressed in the protocol,
 * or the master answers "forward", the original arguments go to the real
 * libc unchanged (under the sandbox's default seccomp filter that refuses
 * the system call with EPERM). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <utime.h>

#include "le.h"
#include "shim.h"

enum { FALLBACK = LCS_FALLBACK, ANSWERED = LCS_ANSWERED, FORWARDED = LCS_FORWARDED };

/* The arguments of one metadata change, as they travel. */
struct change {
	uint16_t function;
	uint32_t flags;
	uint32_t mode;
	unsigned char address[16];
};

static void request_of(struct lcs_request *request, const struct change *change)
{
	lcs_request_init(request, change->function);
	request->flags = change->flags;
	request->arg = change->mode;
	memcpy(request->address, change->address, 16);
}

/* The policy's constant answer, when the rule table proves it (rules.c;
 * path NULL for a descriptor): FORWARDED or FALLBACK (forwarded: the real
 * call is made, its result reported when reports are on), ANSWERED (a
 * failure, *result -1 and errno set, reported now), or ASK_MASTER with
 * errno restored. */
enum { ASK_MASTER = -1 };
static int ruled(const struct lcs_request *request, int dirfd, const char *path, int *result)
{
	int saved_errno = errno, error = 0;
	int rule = lcs_rules(request->function, request->flags, dirfd, path, -1, NULL, &error);

	errno = saved_errno;
	if (rule == LCS_RULE_FORWARD)
		return lcs_report_later(request, LCS_REPORT_FORWARDED, 0);
	if (rule != LCS_RULE_DENY)
		return ASK_MASTER;
	if (!lcs_enter())
		return FALLBACK;
	lcs_report(request, LCS_REPORT_DENIED, error);
	lcs_leave();
	errno = error;
	*result = -1;
	return ANSWERED;
}

/* Ask the master about a change of path (relative to dirfd).  Returns
 * ANSWERED with *result set, or FALLBACK or FORWARDED (the master said
 * "forward": report the real call's result, LCS_ANSWERED_OR_REAL) with errno
 * restored. */
static int ask_path(const struct change *change, int dirfd, const char *path, int *result)
{
	int saved_errno = errno;
	int owned = 0, answered = 0, forwarded = 0, how;
	struct lcs_request request;
	struct lcs_reply reply;

	if (!path || strnlen(path, LCS_PATH_MAX_BYTES + 1) > LCS_PATH_MAX_BYTES)
		return FALLBACK;
	if (!*path) {
		errno = ENOENT;
		*result = -1;
		return ANSWERED;
	}
	request_of(&request, change);
	request.string1 = path;
	request.len1 = strlen(path);
	if (path[0] != '/')
		request.dirs[0] = dirfd; /* named in a report */
	how = ruled(&request, dirfd, path, result);
	if (how != ASK_MASTER)
		return how;
	if (!lcs_enter())
		return FALLBACK;
	if (lcs_path_dir(dirfd, path, &request.fds[0], &owned) == 0 && lcs_call(&request, &reply) == 0) {
		answered = reply.action == LCS_ACTION_RESULT;
		forwarded = reply.action == LCS_ACTION_FORWARD;
	}
	if (owned)
		lcs_close_raw(request.fds[0]);
	lcs_leave();
	if (!answered) {
		errno = saved_errno;
		return forwarded ? lcs_report_later(&request, LCS_REPORT_RESULT, reply.id) : FALLBACK;
	}
	*result = lcs_finish(&reply, saved_errno);
	return ANSWERED;
}

/* Ask the master about a change of the file open as fd, sent along. */
static int ask_fd(const struct change *change, int fd, int *result)
{
	int saved_errno = errno;
	int answered = 0, forwarded = 0, how;
	struct lcs_request request;
	struct lcs_reply reply;

	if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
		errno = saved_errno;
		return FALLBACK; /* the real libc reports EBADF */
	}
	request_of(&request, change);
	request.fds[0] = fd;
	how = ruled(&request, fd, NULL, result);
	if (how != ASK_MASTER)
		return how;
	if (!lcs_enter())
		return FALLBACK;
	if (lcs_call(&request, &reply) == 0) {
		answered = reply.action == LCS_ACTION_RESULT;
		forwarded = reply.action == LCS_ACTION_FORWARD;
	}
	lcs_leave();
	if (!answered) {
		errno = saved_errno;
		return forwarded ? lcs_report_later(&request, LCS_REPORT_RESULT, reply.id) : FALLBACK;
	}
	*result = lcs_finish(&reply, saved_errno);
	return ANSWERED;
}

/* ---- chmod ---- */

static void chmod_change(struct change *change, uint16_t function, mode_t mode, int no_follow)
{
	memset(change, 0, sizeof *change);
	change->function = function;
	change->mode = mode & 07777;
	change->flags = no_follow ? LCS_META_NO_FOLLOW : 0;
}

LCS_EXPORT int chmod(const char *path, mode_t mode)
{
	struct change change;
	int result, how;

	chmod_change(&change, LCS_CHMOD, mode, 0);
	how = ask_path(&change, AT_FDCWD, path, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(chmod)(path, mode));
}

LCS_EXPORT int lchmod(const char *path, mode_t mode)
{
	struct change change;
	int result, how;

	chmod_change(&change, LCS_CHMOD, mode, 1);
	how = ask_path(&change, AT_FDCWD, path, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(lchmod)(path, mode));
}

/* AT_SYMLINK_NOFOLLOW is no_follow; any other flag has no protocol form. */
LCS_EXPORT int fchmodat(int dirfd, const char *path, mode_t mode, int flags)
{
	struct change change;
	int result, how;

	chmod_change(&change, LCS_CHMOD, mode, flags & AT_SYMLINK_NOFOLLOW);
	how = !(flags & ~AT_SYMLINK_NOFOLLOW) ? ask_path(&change, dirfd, path, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(fchmodat)(dirfd, path, mode, flags));
}

LCS_EXPORT int fchmod(int fd, mode_t mode)
{
	struct change change;
	int result, how;

	chmod_change(&change, LCS_FCHMOD, mode, 0);
	how = ask_fd(&change, fd, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(fchmod)(fd, mode));
}

/* ---- chown ---- */

static void chown_change(struct change *change, uint16_t function, uid_t owner, gid_t group,
                         int no_follow)
{
	memset(change, 0, sizeof *change);
	change->function = function;
	change->flags = no_follow ? LCS_META_NO_FOLLOW : 0;
	if (owner != (uid_t)-1) {
		change->flags |= LCS_CHOWN_OWNER;
		lcs_put32(change->address, owner);
	}
	if (group != (gid_t)-1) {
		change->flags |= LCS_CHOWN_GROUP;
		lcs_put32(change->address + 4, group);
	}
}

LCS_EXPORT int chown(const char *path, uid_t owner, gid_t group)
{
	struct change change;
	int result, how;

	chown_change(&change, LCS_CHOWN, owner, group, 0);
	how = ask_path(&change, AT_FDCWD, path, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(chown)(path, owner, group));
}

LCS_EXPORT int lchown(const char *path, uid_t owner, gid_t group)
{
	struct change change;
	int result, how;

	chown_change(&change, LCS_CHOWN, owner, group, 1);
	how = ask_path(&change, AT_FDCWD, path, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(lchown)(path, owner, group));
}

LCS_EXPORT int fchown(int fd, uid_t owner, gid_t group)
{
	struct change change;
	int result, how;

	chown_change(&change, LCS_FCHOWN, owner, group, 0);
	how = ask_fd(&change, fd, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(fchown)(fd, owner, group));
}

/* An empty path with AT_EMPTY_PATH is fchown of dirfd. */
static int chownat_call(int dirfd, const char *path, uid_t owner, gid_t group, int flags, int *result)
{
	struct change change;

	if (flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) || !path)
		return FALLBACK;
	if (!*path && (flags & AT_EMPTY_PATH)) {
		chown_change(&change, LCS_FCHOWN, owner, group, 0);
		return dirfd != AT_FDCWD ? ask_fd(&change, dirfd, result) : FALLBACK;
	}
	chown_change(&change, LCS_CHOWN, owner, group, flags & AT_SYMLINK_NOFOLLOW);
	return ask_path(&change, dirfd, path, result);
}

LCS_EXPORT int fchownat(int dirfd, const char *path, uid_t owner, gid_t group, int flags)
{
	int result, how;

	how = chownat_call(dirfd, path, owner, group, flags, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(fchownat)(dirfd, path, owner, group, flags));
}

/* ---- utimensat ---- */

/* One time into the change; 0 when it has no protocol form (a bad
 * tv_nsec, a time beyond int64 ns): the real libc reports it. */
static int put_time(struct change *change, int index, const struct timespec *ts)
{
	int64_t ns;

	if (!ts || ts->tv_nsec == UTIME_NOW) {
		change->flags |= index ? LCS_MTIME_NOW : LCS_ATIME_NOW;
		return 1;
	}
	if (ts->tv_nsec == UTIME_OMIT) {
		change->flags |= index ? LCS_MTIME_OMIT : LCS_ATIME_OMIT;
		return 1;
	}
	if (ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000L)
		return 0;
	if (__builtin_mul_overflow((int64_t)ts->tv_sec, (int64_t)1000000000, &ns) ||
	    __builtin_add_overflow(ns, (int64_t)ts->tv_nsec, &ns))
		return 0;
	lcs_put64(change->address + 8 * index, (uint64_t)ns);
	return 1;
}

static int times_change(struct change *change, uint16_t function, const struct timespec times[2],
                        int no_follow)
{
	memset(change, 0, sizeof *change);
	change->function = function;
	change->flags = no_follow ? LCS_META_NO_FOLLOW : 0;
	return put_time(change, 0, times ? &times[0] : NULL) &&
	       put_time(change, 1, times ? &times[1] : NULL);
}

/* A NULL path (the kernel's form of futimens) and an empty one with
 * AT_EMPTY_PATH change dirfd itself. */
static int utimens_call(int dirfd, const char *path, const struct timespec times[2], int flags,
                        int *result)
{
	struct change change;
	int on_fd = !path || (!*path && (flags & AT_EMPTY_PATH));

	if (flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) || (on_fd && (flags & AT_SYMLINK_NOFOLLOW)))
		return FALLBACK;
	if (on_fd) {
		if (dirfd == AT_FDCWD || !times_change(&change, LCS_FUTIMENS, times, 0))
			return FALLBACK;
		return ask_fd(&change, dirfd, result);
	}
	if (!times_change(&change, LCS_UTIMENS, times, flags & AT_SYMLINK_NOFOLLOW))
		return FALLBACK;
	return ask_path(&change, dirfd, path, result);
}

LCS_EXPORT int utimensat(int dirfd, const char *path, const struct timespec times[2], int flags)
{
	int result, how;

	how = utimens_call(dirfd, path, times, flags, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(utimensat)(dirfd, path, times, flags));
}

LCS_EXPORT int futimens(int fd, const struct timespec times[2])
{
	struct change change;
	int result, how;

	how = times_change(&change, LCS_FUTIMENS, times, 0) ? ask_fd(&change, fd, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(futimens)(fd, times));
}

/* ---- the legacy spellings, as utimensat ---- */

/* timeval times as timespec; 0 when a tv_usec is out of range. */
static int timespecs_of(const struct timeval tv[2], struct timespec ts[2])
{
	for (int i = 0; i < 2; i++) {
		if (tv[i].tv_usec < 0 || tv[i].tv_usec >= 1000000)
			return 0;
		ts[i].tv_sec = tv[i].tv_sec;
		ts[i].tv_nsec = tv[i].tv_usec * 1000;
	}
	return 1;
}

LCS_EXPORT int utimes(const char *path, const struct timeval tv[2])
{
	struct timespec ts[2];
	int result, how;

	how = (!tv || timespecs_of(tv, ts)) ? utimens_call(AT_FDCWD, path, tv ? ts : NULL, 0, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(utimes)(path, tv));
}

LCS_EXPORT int lutimes(const char *path, const struct timeval tv[2])
{
	struct timespec ts[2];
	int result, how;

	how = (!tv || timespecs_of(tv, ts)) ? utimens_call(AT_FDCWD, path, tv ? ts : NULL, AT_SYMLINK_NOFOLLOW, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(lutimes)(path, tv));
}

LCS_EXPORT int futimes(int fd, const struct timeval tv[2])
{
	struct timespec ts[2];
	int result, how;

	how = (!tv || timespecs_of(tv, ts)) ? utimens_call(fd, NULL, tv ? ts : NULL, 0, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(futimes)(fd, tv));
}

LCS_EXPORT int utime(const char *path, const struct utimbuf *times)
{
	struct timespec ts[2];
	int result, how;

	if (times) {
		ts[0] = (struct timespec){ .tv_sec = times->actime };
		ts[1] = (struct timespec){ .tv_sec = times->modtime };
	}
	how = utimens_call(AT_FDCWD, path, times ? ts : NULL, 0, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(utime)(path, times));
}
