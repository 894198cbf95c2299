/* Reports: calls the rules decided or forwarded, for the master's observers.
 *
 * With LIBC_SERVICE_REPORTS=1 (spawn() sets it when the router has
 * observers), every call the real libc does on a "forward" (the rule
 * table's or the master's) and every call the rule table denied is told
 * to the master: one datagram on the registration socket (docs/protocol.md
 * "Report"), "LCSo", the version, the outcome (1 forwarded by the rules,
 * 2 denied by the rules, 3 forwarded by the master), the errno, how many
 * reports this process lost before, the real call's result; then the
 * request as it would have been sent (no descriptors), or for outcome 3
 * the pid, tid and id of the request the master answered.  MSG_DONTWAIT:
 * the slave never waits for an observer; a report the socket does not
 * take is counted and dropped.  With LIBC_SERVICE_REPORTS=2 (trace) the
 * slave waits for room instead: the observers see every call.  errno is
 * kept.
 *
 * Depends on codec.c, datagram.c, rules.c (naming directories), ownfds.c
 * and real.c. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shim.h"

static int reporting;             /* LIBC_SERVICE_REPORTS=1 or 2: tell observers */
static int reports_wait;          /* LIBC_SERVICE_REPORTS=2: wait for room, never drop */
static unsigned reports_lost;     /* reports the socket did not take */
static int program_told;          /* this process's program went with a report (reset by fork) */

/* Reports due after the real call, innermost last: a real call may come
 * back into the shim (an NSS module's fopen inside getaddrinfo). */
#define PENDING_MAX 4
struct pending {
	int outcome;
	pid_t tid;
	uint64_t id;
	int64_t start; /* CLOCK_MONOTONIC ns, just before the real call */
	struct lcs_request request; /* LCS_REPORT_FORWARDED: its strings are the caller's */
};
static __thread struct pending pending[PENDING_MAX];
static __thread unsigned npending;

/* The value of name (with its "=") when it is one digit 1-9, else 0. */
static int env_digit(const char *name)
{
	extern char **environ;
	size_t len = strlen(name);

	for (char **entry = environ; entry && *entry; entry++)
		if (!strncmp(*entry, name, len)) {
			const char *value = *entry + len;
			return value[0] >= '1' && value[0] <= '9' && !value[1] ? value[0] - '0' : 0;
		}
	return 0;
}

void lcs_report_init(void)
{
	int reports = env_digit("LIBC_SERVICE_REPORTS=");

	reporting = reports == 1 || reports == 2;
	reports_wait = reports == 2;
}

void lcs_report_forked(void)
{
	npending = 0;
	program_told = 0;
}

static void send_report(unsigned char *buf, size_t len)
{
	int saved_errno = errno;
	ssize_t sent = lcs_send_datagram(lcs_reg_fd(), buf, len, NULL, 0, reports_wait ? 0 : MSG_DONTWAIT);

	if (sent != (ssize_t)len)
		__atomic_add_fetch(&reports_lost, 1, __ATOMIC_RELAXED);
	errno = saved_errno;
}

static void report_header(unsigned char *buf, int outcome, int64_t result, int error, uint64_t duration)
{
	lcs_encode_report_header(buf, outcome, result, error, __atomic_load_n(&reports_lost, __ATOMIC_RELAXED),
	                         duration);
}

/* The arguments of this process, as /proc/self/cmdline has them (each
 * ending with a NUL), whole ones only, into out (room for
 * LCS_REPORT_ARGV_MAX); returns their length, 0 when unreadable. */
static size_t read_argv(unsigned char *out)
{
	size_t len = 0;
	long got = 0;
	int fd = lcs_openat_raw(AT_FDCWD, "/proc/self/cmdline", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	while (len < LCS_REPORT_ARGV_MAX &&
	       ((got = lcs_read_raw(fd, out + len, LCS_REPORT_ARGV_MAX - len)) > 0 || (got < 0 && errno == EINTR)))
		if (got > 0)
			len += got;
	lcs_close_raw(fd);
	while (len > 0 && out[len - 1] != 0)
		len--; /* a cut argument goes */
	return len;
}

/* A report carrying the request (a call the rules decided), after the
 * names of the directories its relative paths are relative to, read now
 * (after the real call) through /proc: the observers need no round trip
 * to name them; the first report of a process names its program too
 * (the observers may read /proc/PID only after it exited).  errno is
 * kept. */
static void report_request(const struct lcs_request *request, int outcome, int64_t result, int error,
                           pid_t tid, uint64_t duration)
{
	unsigned char buf[LCS_REPORT_HEADER + LCS_REPORT_NAMES_SIZE + 3 * (LCS_PATH_MAX_BYTES + 1) +
	                  LCS_REPORT_ARGV_MAX + LCS_MAX_MESSAGE];
	unsigned char *names = buf + LCS_REPORT_HEADER, *at = names + LCS_REPORT_NAMES_SIZE;
	struct lcs_request plain = *request;
	size_t dirs[2], exe_len = 0, argv_len = 0;
	int fds[3], nfds, saved_errno = errno;

	if (LCS_REQUEST_HEADER + 4 * LCS_MAX_GROUPS + request->len1 + request->len2 > LCS_MAX_MESSAGE)
		return;
	plain.fds[0] = plain.fds[1] = plain.fds[2] = -1; /* a report carries no descriptor */
	report_header(buf, outcome, result, error, duration);
	for (int n = 0; n < 2; n++) {
		/* Read into place: the name's NUL is overwritten by what follows. */
		if (request->dirs[n] == -1 || !lcs_directory_name(request->dirs[n], (char *)at, &dirs[n]))
			dirs[n] = 0;
		at += dirs[n];
	}
	if (!__atomic_exchange_n(&program_told, 1, __ATOMIC_RELAXED)) {
		ssize_t exe = readlink("/proc/self/exe", (char *)at, LCS_PATH_MAX_BYTES);
		if (exe > 0 && exe < LCS_PATH_MAX_BYTES && at[0] == '/') {
			exe_len = exe;
			at += exe;
			argv_len = read_argv(at);
			at += argv_len;
		}
	}
	lcs_encode_report_names(names, dirs, exe_len, argv_len);
	errno = saved_errno;
	send_report(buf, at - buf + lcs_encode_request(at, &plain, lcs_own_pid(), tid, 0, fds, &nfds));
}

static int reports_on(void)
{
	return reporting && lcs_reg_fd() >= 0 && lcs_own_process();
}

void lcs_report(const struct lcs_request *request, int outcome, int error)
{
	if (reports_on())
		report_request(request, outcome, -1, error, lcs_own_tid(), 0);
}

int lcs_report_later(const struct lcs_request *request, int outcome, uint64_t id)
{
	struct pending *p;

	if (!reports_on())
		return LCS_FALLBACK;
	if (npending == PENDING_MAX) {
		__atomic_add_fetch(&reports_lost, 1, __ATOMIC_RELAXED);
		return LCS_FALLBACK;
	}
	p = &pending[npending++];
	p->outcome = outcome;
	p->tid = lcs_own_tid();
	p->id = id;
	if (outcome == LCS_REPORT_FORWARDED)
		p->request = *request;
	else
		p->request.function = request->function;
	p->start = lcs_monotonic_ns(); /* last: the real call comes next */
	return LCS_FORWARDED;
}

void lcs_report_result(int64_t result, int error)
{
	unsigned char buf[LCS_REPORT_HEADER + LCS_REPORT_CALL_SIZE];
	int64_t end = lcs_monotonic_ns(); /* first: the real call has just returned */
	struct pending *p;

	if (!npending)
		return;
	p = &pending[--npending];
	if (p->outcome == LCS_REPORT_FORWARDED) {
		report_request(&p->request, p->outcome, result, error, p->tid, (uint64_t)(end - p->start));
		return;
	}
	report_header(buf, p->outcome, result, error, (uint64_t)(end - p->start));
	lcs_encode_report_call(buf + LCS_REPORT_HEADER, lcs_own_pid(), p->tid, p->id, p->request.function);
	send_report(buf, sizeof buf);
}
