/* Filesystem calls: open, stat, access, mkdir, rmdir, unlink, rename and
 * their *at, 64-bit, fortified and legacy (__xstat) spellings.
 *
 * Each entry point asks the master first.  When the shim is inactive, the
 * channel is unusable, the arguments cannot be expressed in the protocol, or
 * the master answers "forward", the original arguments go to the real libc
 * unchanged, so the real libc reports any error in them. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h> /* RENAME_NOREPLACE */
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "shim.h"

/* Legacy stat entry points: gone from the headers since glibc 2.33, still
 * called by binaries built against older glibc. */
int __xstat(int ver, const char *path, struct stat *buf);
int __lxstat(int ver, const char *path, struct stat *buf);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags);
int __xstat64(int ver, const char *path, struct stat64 *buf);
int __lxstat64(int ver, const char *path, struct stat64 *buf);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags);
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

#define STAT_VER_LINUX 1 /* x86_64's _STAT_VER: struct stat is the kernel's */

enum { FALLBACK = LCS_FALLBACK, ANSWERED = LCS_ANSWERED, FORWARDED = LCS_FORWARDED };

/* Mode bits for the protocol's file types 1..7. */
static const mode_t type_bits[8] = {
	0, S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK,
};

static int sendable_path(const char *path)
{
	return strnlen(path, LCS_PATH_MAX_BYTES + 1) <= LCS_PATH_MAX_BYTES;
}

/* Ask the master about a call on one or two paths.  Returns ANSWERED when
 * the master gave the result (reply filled, fds owned by the caller), or
 * FALLBACK when the real libc must do the call (FORWARDED: and report its
 * result, see LCS_ANSWERED_OR_REAL). */
static int ask(struct lcs_request *request, int dirfd1, const char *path1,
               int dirfd2, const char *path2, struct lcs_reply *reply)
{
	int owned1 = 0, owned2 = 0, answered = 0, forwarded = 0, error = 0;
	int rule;

	if (!sendable_path(path1) || (path2 && !sendable_path(path2)))
		return FALLBACK;
	request->string1 = path1;
	request->len1 = strlen(path1);
	if (path1[0] != '/')
		request->dirs[0] = dirfd1; /* named in a report */
	if (path2) {
		request->string2 = path2;
		request->len2 = strlen(path2);
		if (path2[0] != '/')
			request->dirs[1] = dirfd2;
	}
	/* The policy's constant answer, when the rules prove it. */
	rule = lcs_rules(request->function, request->flags, dirfd1, path1, dirfd2, path2, &error);
	if (rule == LCS_RULE_FORWARD)
		return lcs_report_later(request, LCS_REPORT_FORWARDED, 0);
	if (!lcs_enter())
		return FALLBACK;
	if (rule == LCS_RULE_DENY) {
		lcs_report(request, LCS_REPORT_DENIED, error);
		lcs_leave();
		reply->result = -1;
		reply->error = error;
		reply->action = LCS_ACTION_RESULT;
		reply->kind = LCS_KIND_NONE;
		reply->count = 0;
		reply->nfds = 0;
		reply->payload_len = 0;
		return ANSWERED;
	}
	if (lcs_path_dir(dirfd1, path1, &request->fds[0], &owned1) == 0 &&
	    (!path2 || lcs_path_dir(dirfd2, path2, &request->fds[1], &owned2) == 0) &&
	    lcs_call(request, reply) == 0) {
		answered = reply->action == LCS_ACTION_RESULT;
		forwarded = reply->action == LCS_ACTION_FORWARD;
	}
	if (owned1)
		lcs_close_raw(request->fds[0]);
	if (owned2)
		lcs_close_raw(request->fds[1]);
	lcs_leave();
	if (forwarded)
		return lcs_report_later(request, LCS_REPORT_RESULT, reply->id);
	return answered ? ANSWERED : FALLBACK;
}

/* Calls whose only answer is a number: unlink, rmdir, mkdir, access,
 * eaccess, rename.  Returns ANSWERED with *result set, or FALLBACK or
 * FORWARDED with errno restored. */
static int simple_call(uint16_t function, uint32_t flags, uint32_t arg, int dirfd1,
                       const char *path1, int dirfd2, const char *path2, int *result)
{
	int saved_errno = errno, how;
	struct lcs_request request;
	struct lcs_reply reply;

	if (!path1 || (function == LCS_RENAME && !path2))
		return FALLBACK;
	if (!*path1 || (path2 && !*path2)) {
		errno = ENOENT;
		*result = -1;
		return ANSWERED;
	}
	lcs_request_init(&request, function);
	request.flags = flags;
	request.arg = arg;
	how = ask(&request, dirfd1, path1, dirfd2, path2, &reply);
	if (how != ANSWERED) {
		errno = saved_errno;
		return how;
	}
	*result = lcs_finish(&reply, saved_errno);
	return ANSWERED;
}

/* ---- open ---- */

static int needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

/* O_LARGEFILE is 0 in 64-bit glibc headers (the kernel implies it there),
 * but a caller may still pass the kernel's bit. */
#if O_LARGEFILE
#define KERNEL_O_LARGEFILE O_LARGEFILE
#elif defined(__x86_64__) || defined(__i386__)
#define KERNEL_O_LARGEFILE 0100000
#else
#define KERNEL_O_LARGEFILE 0 /* not seen */
#endif

/* Open flags in the protocol's vocabulary: every flag the kernel acts on,
 * so that a master performing the call does what the slave asked.  -1
 * when the access mode is invalid (the real libc reports EINVAL). */
static int64_t open_bits(int flags)
{
	static const struct { int flag; uint32_t bit; } map[] = {
		{ O_APPEND, LCS_O_APPEND },       { O_CREAT, LCS_O_CREATE },
		{ O_EXCL, LCS_O_EXCLUSIVE },      { O_NOFOLLOW, LCS_O_NO_FOLLOW },
		{ O_PATH, LCS_O_PATH },           { O_TRUNC, LCS_O_TRUNCATE },
		{ O_NONBLOCK, LCS_O_NON_BLOCKING }, { O_NOCTTY, LCS_O_NO_CTTY },
		{ O_CLOEXEC, LCS_O_CLOSE_ON_EXEC }, { O_NOATIME, LCS_O_NO_ATIME },
		{ O_DIRECT, LCS_O_DIRECT },       { O_ASYNC, LCS_O_ASYNC_SIGNALS },
	};
	uint32_t bits;

	switch (flags & O_ACCMODE) {
	case O_RDONLY: bits = LCS_O_READ_ONLY; break;
	case O_WRONLY: bits = LCS_O_WRITE_ONLY; break;
	case O_RDWR: bits = LCS_O_READ_WRITE; break;
	default: return -1;
	}
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (flags & map[i].flag)
			bits |= map[i].bit;
	if (KERNEL_O_LARGEFILE && (flags & KERNEL_O_LARGEFILE))
		bits |= LCS_O_LARGE_FILE;
	/* O_SYNC is O_DSYNC and more: one name for each. */
	if ((flags & O_SYNC) == O_SYNC)
		bits |= LCS_O_SYNC_ALL_ON_WRITE;
	else if (flags & O_DSYNC)
		bits |= LCS_O_SYNC_DATA_ON_WRITE;
	if ((flags & O_TMPFILE) == O_TMPFILE)
		bits |= LCS_O_TEMPORARY;
	else if (flags & O_DIRECTORY)
		bits |= LCS_O_DIRECTORY;
	return bits;
}

/* A received descriptor arrives close-on-exec, and blocking if the master
 * opened it so; give it the flags the caller asked for. */
static int adopt_fd(int fd, int flags)
{
	if (!(flags & O_CLOEXEC) && fcntl(fd, F_SETFD, 0) < 0)
		return -1;
	if (flags & O_NONBLOCK) {
		int status = fcntl(fd, F_GETFL);
		if (status < 0 || fcntl(fd, F_SETFL, status | O_NONBLOCK) < 0)
			return -1;
	}
	return 0;
}

/* The received descriptor moved to the lowest free number, as open(2)
 * gives it (POSIX): it arrived while the working directory's descriptor
 * (for a relative path) still held a lower one, and a program that closed
 * 1 before opening its output file relies on getting 1.  Kept where it is
 * when nothing lower is free or the move fails. */
static int lowest_free(int fd)
{
	int low = lcs_fcntl_raw(fd, F_DUPFD_CLOEXEC, 0);

	if (low < 0)
		return fd;
	if (low > fd) {
		lcs_close_raw(low);
		return fd;
	}
	lcs_close_raw(fd);
	return low;
}

static int open_result(struct lcs_reply *reply, int flags, int saved_errno)
{
	int fd;

	if (reply->error || reply->nfds == 0)
		return lcs_finish(reply, saved_errno);
	fd = lowest_free(reply->fds[0]);
	if (adopt_fd(fd, flags) < 0) {
		int error = errno;
		lcs_close_raw(fd);
		errno = error;
		return -1;
	}
	errno = saved_errno;
	return fd;
}

/* A read-only open: no write access, no create, truncate, append or
 * temporary file (O_PATH opens are read-only too). */
static int reads_only(int flags)
{
	return (flags & O_ACCMODE) == O_RDONLY &&
	       !(flags & (O_CREAT | O_TRUNC | O_APPEND)) && (flags & O_TMPFILE) != O_TMPFILE;
}

static int open_call(uint16_t function, int dirfd, const char *path, int flags,
                     mode_t mode, int *result)
{
	int saved_errno = errno, how;
	int64_t bits = open_bits(flags);
	struct lcs_request request;
	struct lcs_reply reply;

	if (!path || bits < 0)
		return FALLBACK;
	if (reads_only(flags) && lcs_local(path))
		return FALLBACK; /* a static sandbox rule allows it: no round trip */
	if (!*path) {
		errno = ENOENT;
		*result = -1;
		return ANSWERED;
	}
	lcs_request_init(&request, function);
	request.flags = bits;
	request.arg = needs_mode(flags) ? mode & 07777 : 0;
	how = ask(&request, dirfd, path, AT_FDCWD, NULL, &reply);
	if (how != ANSWERED) {
		errno = saved_errno;
		return how;
	}
	*result = open_result(&reply, flags, saved_errno);
	return ANSWERED;
}

int lcs_open_call(int dirfd, const char *path, int flags, mode_t mode, int *result)
{
	return open_call(dirfd == AT_FDCWD ? LCS_OPEN : LCS_OPENAT, dirfd, path, flags, mode, result);
}

#define VARIADIC_MODE(flags, mode)                     \
	do {                                           \
		if (needs_mode(flags)) {               \
			va_list ap;                    \
			va_start(ap, flags);           \
			mode = va_arg(ap, mode_t);     \
			va_end(ap);                    \
		}                                      \
	} while (0)

LCS_EXPORT int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	int result, how;

	VARIADIC_MODE(flags, mode);
	how = open_call(LCS_OPEN, AT_FDCWD, path, flags, mode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(open)(path, flags, mode));
}

LCS_EXPORT int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	int result, how;

	VARIADIC_MODE(flags, mode);
	how = open_call(LCS_OPEN, AT_FDCWD, path, flags, mode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(open64)(path, flags, mode));
}

/* creat(path, mode) is open(path, O_CREAT|O_WRONLY|O_TRUNC, mode): asked as
 * that open (tar and other old-style programs create their output so). */
#define CREAT_FLAGS (O_CREAT | O_WRONLY | O_TRUNC)

LCS_EXPORT int creat(const char *path, mode_t mode)
{
	int result, how;

	how = open_call(LCS_OPEN, AT_FDCWD, path, CREAT_FLAGS, mode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(creat)(path, mode));
}

LCS_EXPORT int creat64(const char *path, mode_t mode)
{
	int result, how;

	how = open_call(LCS_OPEN, AT_FDCWD, path, CREAT_FLAGS, mode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(creat64)(path, mode));
}

LCS_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	int result, how;

	VARIADIC_MODE(flags, mode);
	how = open_call(LCS_OPENAT, dirfd, path, flags, mode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(openat)(dirfd, path, flags, mode));
}

LCS_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	int result, how;

	VARIADIC_MODE(flags, mode);
	how = open_call(LCS_OPENAT, dirfd, path, flags, mode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(openat64)(dirfd, path, flags, mode));
}

/* The _FORTIFY_SOURCE entry points take no mode; with O_CREAT the real
 * ones abort, which is theirs to do. */
LCS_EXPORT int __open_2(const char *path, int flags)
{
	int result, how;

	how = !needs_mode(flags) ? open_call(LCS_OPEN, AT_FDCWD, path, flags, 0, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(__open_2)(path, flags));
}

LCS_EXPORT int __open64_2(const char *path, int flags)
{
	int result, how;

	how = !needs_mode(flags) ? open_call(LCS_OPEN, AT_FDCWD, path, flags, 0, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(__open64_2)(path, flags));
}

LCS_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	int result, how;

	how = !needs_mode(flags) ? open_call(LCS_OPENAT, dirfd, path, flags, 0, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(__openat_2)(dirfd, path, flags));
}

LCS_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	int result, how;

	how = !needs_mode(flags) ? open_call(LCS_OPENAT, dirfd, path, flags, 0, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(__openat64_2)(dirfd, path, flags));
}

/* ---- stat ---- */

/* struct stat and struct stat64 have the same field names. */
#define FILL_STAT(st, s)                                        \
	do {                                                    \
		memset(st, 0, sizeof *(st));                    \
		(st)->st_dev = (s)->dev;                        \
		(st)->st_ino = (s)->ino;                        \
		(st)->st_nlink = (s)->nlink;                    \
		(st)->st_mode = type_bits[(s)->type] | (s)->mode; \
		(st)->st_uid = (s)->uid;                        \
		(st)->st_gid = (s)->gid;                        \
		(st)->st_rdev = (s)->rdev;                      \
		(st)->st_size = (s)->size;                      \
		(st)->st_blksize = (s)->blksize;                \
		(st)->st_blocks = (s)->blocks;                  \
		(st)->st_atim = (s)->atime;                     \
		(st)->st_mtim = (s)->mtime;                     \
		(st)->st_ctim = (s)->ctime;                     \
	} while (0)

static struct statx_timestamp statx_time(struct timespec ts)
{
	return (struct statx_timestamp){ .tv_sec = ts.tv_sec, .tv_nsec = ts.tv_nsec };
}

#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U
#endif

/* The kernel reports the birth time when asked for it (a filesystem may add
 * it unasked) and the mount id unless the unique one was asked for. */
static void fill_statx(struct statx *stx, const struct lcs_stat *s, unsigned mask)
{
	memset(stx, 0, sizeof *stx);
	stx->stx_mask = STATX_BASIC_STATS;
	stx->stx_blksize = s->blksize;
	stx->stx_nlink = s->nlink;
	stx->stx_uid = s->uid;
	stx->stx_gid = s->gid;
	stx->stx_mode = type_bits[s->type] | s->mode;
	stx->stx_ino = s->ino;
	stx->stx_size = s->size;
	stx->stx_blocks = s->blocks;
	stx->stx_attributes = s->attributes;
	stx->stx_attributes_mask = s->attributes_mask;
	stx->stx_atime = statx_time(s->atime);
	stx->stx_mtime = statx_time(s->mtime);
	stx->stx_ctime = statx_time(s->ctime);
	if ((s->present & LCS_STAT_BTIME) && (mask & STATX_BTIME)) {
		stx->stx_mask |= STATX_BTIME;
		stx->stx_btime = statx_time(s->btime);
	}
	if ((s->present & LCS_STAT_MNT_ID) && !(mask & STATX_MNT_ID_UNIQUE)) {
		stx->stx_mask |= STATX_MNT_ID;
		memcpy((char *)stx + 0x90, &s->mnt_id, sizeof s->mnt_id); /* stx_mnt_id */
	}
	stx->stx_rdev_major = major(s->rdev);
	stx->stx_rdev_minor = minor(s->rdev);
	stx->stx_dev_major = major(s->dev);
	stx->stx_dev_minor = minor(s->dev);
}

/* stat or lstat of a path.  Returns ANSWERED with *result set (and *out
 * filled on success), or FALLBACK or FORWARDED with errno restored.  An empty path
 * with AT_EMPTY_PATH means "the dirfd itself": not a path call. */
static int stat_call(int dirfd, const char *path, int at_flags, struct lcs_stat *out, int *result)
{
	int saved_errno = errno, how;
	uint16_t function = at_flags & AT_SYMLINK_NOFOLLOW ? LCS_LSTAT : LCS_STAT;
	struct lcs_request request;
	struct lcs_reply reply;

	if (!path || (!*path && (at_flags & AT_EMPTY_PATH)) || lcs_local(path))
		return FALLBACK;
	if (!*path) {
		errno = ENOENT;
		*result = -1;
		return ANSWERED;
	}
	lcs_request_init(&request, function);
	how = ask(&request, dirfd, path, AT_FDCWD, NULL, &reply);
	if (how != ANSWERED) {
		errno = saved_errno;
		return how;
	}
	if (reply.kind == LCS_KIND_STAT)
		lcs_stat_decode(reply.payload, out);
	*result = lcs_finish(&reply, saved_errno);
	return ANSWERED;
}

/* The stat families differ in their arguments and their struct; the
 * answer is one: the record in the caller's struct when the call succeeded. */
#define STAT_WRAPPER(name, type, at_flags)                                          \
	LCS_EXPORT int name(const char *path, type *buf)                            \
	{                                                                           \
		struct lcs_stat s;                                                  \
		int result, how = stat_call(AT_FDCWD, path, at_flags, &s, &result); \
		if (how == ANSWERED && result == 0)                                 \
			FILL_STAT(buf, &s);                                         \
		return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(name)(path, buf)); \
	}

STAT_WRAPPER(stat, struct stat, 0)
STAT_WRAPPER(stat64, struct stat64, 0)
STAT_WRAPPER(lstat, struct stat, AT_SYMLINK_NOFOLLOW)
STAT_WRAPPER(lstat64, struct stat64, AT_SYMLINK_NOFOLLOW)

#define FSTATAT_WRAPPER(name, type)                                                       \
	LCS_EXPORT int name(int dirfd, const char *path, type *buf, int flags)            \
	{                                                                                 \
		struct lcs_stat s;                                                        \
		int result, how = stat_call(dirfd, path, flags, &s, &result);             \
		if (how == ANSWERED && result == 0)                                       \
			FILL_STAT(buf, &s);                                               \
		return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(name)(dirfd, path, buf, flags)); \
	}

FSTATAT_WRAPPER(fstatat, struct stat)
FSTATAT_WRAPPER(fstatat64, struct stat64)

#define XSTAT_WRAPPER(name, type, at_flags)                                          \
	LCS_EXPORT int name(int ver, const char *path, type *buf)                    \
	{                                                                            \
		struct lcs_stat s;                                                   \
		int result, how = FALLBACK;                                          \
		if (ver == STAT_VER_LINUX)                                           \
			how = stat_call(AT_FDCWD, path, at_flags, &s, &result);      \
		if (how == ANSWERED && result == 0)                                  \
			FILL_STAT(buf, &s);                                          \
		return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(name)(ver, path, buf)); \
	}

XSTAT_WRAPPER(__xstat, struct stat, 0)
XSTAT_WRAPPER(__xstat64, struct stat64, 0)
XSTAT_WRAPPER(__lxstat, struct stat, AT_SYMLINK_NOFOLLOW)
XSTAT_WRAPPER(__lxstat64, struct stat64, AT_SYMLINK_NOFOLLOW)

#define FXSTATAT_WRAPPER(name, type)                                                           \
	LCS_EXPORT int name(int ver, int dirfd, const char *path, type *buf, int flags)        \
	{                                                                                      \
		struct lcs_stat s;                                                             \
		int result, how = FALLBACK;                                                    \
		if (ver == STAT_VER_LINUX)                                                     \
			how = stat_call(dirfd, path, flags, &s, &result);                      \
		if (how == ANSWERED && result == 0)                                            \
			FILL_STAT(buf, &s);                                                    \
		return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(name)(ver, dirfd, path, buf, flags)); \
	}

FXSTATAT_WRAPPER(__fxstatat, struct stat)
FXSTATAT_WRAPPER(__fxstatat64, struct stat64)

LCS_EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *buf)
{
	struct lcs_stat s;
	int result, how = stat_call(dirfd, path, flags, &s, &result);

	if (how == ANSWERED && result == 0)
		fill_statx(buf, &s, mask);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(statx)(dirfd, path, flags, mask, buf));
}

/* ---- access ---- */

static int access_call(uint16_t function, int dirfd, const char *path, int amode, int *result)
{
	if (amode & ~(R_OK | W_OK | X_OK))
		return FALLBACK;
	if (!(amode & W_OK) && path && lcs_local(path))
		return FALLBACK; /* a static sandbox rule allows reading it: no round trip */
	/* The protocol's amode bits are R_OK, W_OK, X_OK themselves. */
	return simple_call(function, amode, 0, dirfd, path, AT_FDCWD, NULL, result);
}

LCS_EXPORT int access(const char *path, int amode)
{
	int result, how;

	how = access_call(LCS_ACCESS, AT_FDCWD, path, amode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(access)(path, amode));
}

LCS_EXPORT int euidaccess(const char *path, int amode)
{
	int result, how;

	how = access_call(LCS_EACCESS, AT_FDCWD, path, amode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(euidaccess)(path, amode));
}

LCS_EXPORT int eaccess(const char *path, int amode)
{
	int result, how;

	how = access_call(LCS_EACCESS, AT_FDCWD, path, amode, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(eaccess)(path, amode));
}

/* AT_SYMLINK_NOFOLLOW and AT_EMPTY_PATH have no protocol form. */
LCS_EXPORT int faccessat(int dirfd, const char *path, int amode, int flags)
{
	uint16_t function = flags & AT_EACCESS ? LCS_EACCESS : LCS_ACCESS;
	int result, how;

	how = !(flags & ~AT_EACCESS) ? access_call(function, dirfd, path, amode, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(faccessat)(dirfd, path, amode, flags));
}

/* ---- mkdir, rmdir, unlink, rename ---- */

LCS_EXPORT int mkdir(const char *path, mode_t mode)
{
	int result, how;

	how = simple_call(LCS_MKDIR, 0, mode & 07777, AT_FDCWD, path, AT_FDCWD, NULL, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(mkdir)(path, mode));
}

LCS_EXPORT int mkdirat(int dirfd, const char *path, mode_t mode)
{
	int result, how;

	how = simple_call(LCS_MKDIR, 0, mode & 07777, dirfd, path, AT_FDCWD, NULL, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(mkdirat)(dirfd, path, mode));
}

LCS_EXPORT int rmdir(const char *path)
{
	int result, how;

	how = simple_call(LCS_RMDIR, 0, 0, AT_FDCWD, path, AT_FDCWD, NULL, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(rmdir)(path));
}

LCS_EXPORT int unlink(const char *path)
{
	int result, how;

	how = simple_call(LCS_UNLINK, 0, 0, AT_FDCWD, path, AT_FDCWD, NULL, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(unlink)(path));
}

LCS_EXPORT int unlinkat(int dirfd, const char *path, int flags)
{
	uint16_t function = flags == AT_REMOVEDIR ? LCS_RMDIR : LCS_UNLINK;
	int result, how;

	how = !(flags & ~AT_REMOVEDIR) ? simple_call(function, 0, 0, dirfd, path, AT_FDCWD, NULL, &result) : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(unlinkat)(dirfd, path, flags));
}

LCS_EXPORT int rename(const char *oldpath, const char *newpath)
{
	int result, how;

	how = simple_call(LCS_RENAME, 0, 0, AT_FDCWD, oldpath, AT_FDCWD, newpath, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(rename)(oldpath, newpath));
}

LCS_EXPORT int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
	int result, how;

	how = simple_call(LCS_RENAME, 0, 0, olddirfd, oldpath, newdirfd, newpath, &result);
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(renameat)(olddirfd, oldpath, newdirfd, newpath));
}

/* RENAME_NOREPLACE is the protocol's no_replace; RENAME_EXCHANGE and
 * RENAME_WHITEOUT have no protocol form and go straight to the real libc. */
LCS_EXPORT int renameat2(int olddirfd, const char *oldpath, int newdirfd,
                         const char *newpath, unsigned int flags)
{
	uint32_t bits = flags == RENAME_NOREPLACE ? LCS_RENAME_NO_REPLACE : 0;
	int result, how;

	how = !flags || bits ? simple_call(LCS_RENAME, bits, 0, olddirfd, oldpath, newdirfd, newpath, &result)
	                     : FALLBACK;
	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(renameat2)(olddirfd, oldpath, newdirfd, newpath, flags));
}
