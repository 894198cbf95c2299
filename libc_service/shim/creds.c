/* What the kernel would use for the caller's call besides its arguments:
 * the umask and the filesystem credentials (docs/protocol.md, "Context").
 * Every request carries them, so they must be cheap to find.
 *
 * - umask: per process.  No system call reads it without changing it, and
 *   umask(0); umask(old) races with other threads' file creation, so it is
 *   cached: read once from /proc/self/status ("Umask:") at start-up, then
 *   kept current by the interposed umask().  Where /proc cannot be read
 *   (Landlock: /proc/self is not among the readable trees) the constructor
 *   sets and restores it instead: it runs before main, single-threaded,
 *   so no other thread creates a file meanwhile.
 * - fsuid, fsgid: per thread, and changed by the whole set*id family (by
 *   setfsuid() for one thread only, by raw system calls, by capabilities).
 *   setfsuid(-1) and setfsgid(-1) return the current value and change
 *   nothing: one cheap system call each, a small fraction of a round trip
 *   (docs/performance.md), always exact, so they are asked on every call,
 *   not cached.
 * - groups: per thread in the kernel, set for every thread by glibc's
 *   setgroups()/initgroups().  Each thread caches its getgroups() answer
 *   and refreshes it when an interposed setgroups or initgroups has run
 *   since.  A process in more than LCS_MAX_GROUPS groups sends none (the
 *   master sees them as unknown and must not act as the slave).
 *
 * Depends on ownfds.c (whose process this is) and real.c. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "le.h"
#include "shim.h"

static int umask_cache = -1;      /* -1: unknown */
static unsigned groups_epoch = 1; /* bumped by setgroups/initgroups */

static __thread unsigned groups_seen; /* the epoch this thread's cache is of */
static __thread int groups_count;     /* -1: more than LCS_MAX_GROUPS, or getgroups failed */
static __thread gid_t groups_cached[LCS_MAX_GROUPS];

/* The octal number after "Umask:" in a /proc/<pid>/status text; -1 if absent. */
static int parse_umask(const char *text)
{
	const char *line = strstr(text, "\nUmask:");
	int mask = 0, digits = 0;

	if (!line)
		return -1;
	for (line += sizeof "\nUmask:" - 1; *line == ' ' || *line == '\t'; line++)
		;
	for (; *line >= '0' && *line <= '7' && digits < 4; line++, digits++)
		mask = mask * 8 + (*line - '0');
	return digits && mask <= 0777 ? mask : -1;
}

/* Raw system calls (real.c): the shim's own open must not be entered. */
void lcs_creds_init(void)
{
	char text[2048];
	ssize_t got, len = 0;
	int fd;

	do
		fd = lcs_openat_raw(AT_FDCWD, "/proc/self/status", O_RDONLY | O_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	if (fd < 0) {
		/* Under the sandbox /proc is not readable.  The constructor runs
		 * before main, while the process has one thread, so reading the
		 * umask by setting it races with no other file creation here. */
		int saved = errno;
		mode_t mask = lcs_umask_raw(0);

		lcs_umask_raw(mask);
		errno = saved;
		__atomic_store_n(&umask_cache, (int)(mask & 0777), __ATOMIC_RELAXED);
		return;
	}
	while (len < (ssize_t)sizeof text - 1) {
		got = lcs_read_raw(fd, text + len, sizeof text - 1 - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		len += got;
	}
	lcs_close_raw(fd);
	text[len] = 0;
	__atomic_store_n(&umask_cache, parse_umask(text), __ATOMIC_RELAXED);
}

/* Threads that call umask() at once leave the cache at one of their
 * values, not necessarily the kernel's last: umask is process-wide and
 * such a program cannot know its own umask either. */
LCS_EXPORT mode_t umask(mode_t mask)
{
	mode_t old = LCS_REAL(umask)(mask);

	if (lcs_own_process())
		__atomic_store_n(&umask_cache, (int)(mask & 0777), __ATOMIC_RELAXED);
	return old;
}

static void groups_changed(void)
{
	if (lcs_own_process())
		__atomic_add_fetch(&groups_epoch, 1, __ATOMIC_RELEASE);
}

LCS_EXPORT int setgroups(size_t size, const gid_t *list)
{
	int result = LCS_REAL(setgroups)(size, list);
	int saved = errno;

	groups_changed();
	errno = saved;
	return result;
}

LCS_EXPORT int initgroups(const char *user, gid_t group)
{
	int result = LCS_REAL(initgroups)(user, group);
	int saved = errno;

	groups_changed();
	errno = saved;
	return result;
}

/* This thread's groups, or -1 when unknown; errno is the caller's to restore. */
static int thread_groups(void)
{
	unsigned epoch = __atomic_load_n(&groups_epoch, __ATOMIC_ACQUIRE);

	if (groups_seen != epoch) {
		groups_count = lcs_getgroups_raw(LCS_MAX_GROUPS, groups_cached);
		groups_seen = epoch;
	}
	return groups_count;
}

/* A failing setfsuid(-1) (a seccomp filter that denies it) returns -1,
 * which is no valid id: unknown. */
static int fs_id(long (*raw)(long), uint32_t *id)
{
	long value = raw(-1);

	if (value == -1)
		return 0;
	*id = value;
	return 1;
}

unsigned lcs_context(unsigned char *header, unsigned char *groups)
{
	int saved = errno;
	int mask = __atomic_load_n(&umask_cache, __ATOMIC_RELAXED);
	int count = thread_groups();
	unsigned context = 0;
	uint32_t id;

	if (mask >= 0) {
		context |= LCS_CONTEXT_UMASK;
		lcs_put16(header + LCS_REQ_UMASK_OFFSET, mask);
	}
	if (fs_id(lcs_setfsuid_raw, &id)) {
		context |= LCS_CONTEXT_FSUID;
		lcs_put32(header + LCS_REQ_FSUID_OFFSET, id);
	}
	if (fs_id(lcs_setfsgid_raw, &id)) {
		context |= LCS_CONTEXT_FSGID;
		lcs_put32(header + LCS_REQ_FSGID_OFFSET, id);
	}
	if (count >= 0) {
		context |= LCS_CONTEXT_GROUPS;
		header[LCS_REQ_NGROUPS_OFFSET] = count;
		for (int i = 0; i < count; i++)
			lcs_put32(groups + 4 * i, groups_cached[i]);
	}
	header[LCS_REQ_CONTEXT_OFFSET] = context;
	errno = saved;
	return count > 0 ? count : 0;
}
