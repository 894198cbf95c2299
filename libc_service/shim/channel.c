/* The per-process channel to the master.
 *
 * Each process has its own SOCK_SEQPACKET channel, registered over the
 * inherited registration socket (LIBC_SERVICE_FD).  Threads of one process
 * share it: every thread sends its request as one datagram and waits for
 * the reply carrying its tid.  Whichever waiting thread finds nobody reading
 * becomes the reader (leader/follower): it receives, hands replies for other
 * threads to their waiter slots and wakes them.
 *
 * Any broken rule, EOF or I/O error kills the channel for this process and
 * every call falls back to the real libc (docs/protocol.md).
 *
 * The descriptors themselves (the registration socket, the channel's
 * number) and the process they belong to are ownfds.c's.  Depends on
 * ownfds.c, creds.c (each request's context) and real.c. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "le.h"
#include "shim.h"

struct waiter {
	struct waiter *next;
	pid_t tid;
	uint16_t function;
	uint64_t id;
	int done;
	struct lcs_reply *reply;
};

/* The channel's number is ownfds.c's (lcs_chan_fd), set under the lock. */
static int chan_dead;            /* set once; then always fall back */
static int reading;              /* a thread is blocked receiving */
static int users;                /* threads between send and return */
static uint64_t next_id;
static struct waiter *waiters;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static __thread int busy;
static int reporting;             /* LIBC_SERVICE_REPORTS=1 or 2: tell observers */
static int reports_wait;          /* LIBC_SERVICE_REPORTS=2: wait for room, never drop */
static unsigned reports_lost;     /* reports the socket did not take */
static int program_told;          /* this process's program went with a report (reset by fork) */
static __thread pid_t cached_tid;

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

/* The child of fork() must never touch the parent's channel: forget it
 * (closing our copy is harmless to the parent) and register anew at the
 * first call.  Only async-signal-safe work here; the lock may have been
 * held by a thread that does not exist in the child, so it is re-created. */
static void atfork_child(void)
{
	static const pthread_mutex_t fresh_lock = PTHREAD_MUTEX_INITIALIZER;
	static const pthread_cond_t fresh_wake = PTHREAD_COND_INITIALIZER;

	memcpy(&lock, &fresh_lock, sizeof lock);
	memcpy(&wake, &fresh_wake, sizeof wake);
	chan_dead = 0;
	reading = 0;
	users = 0;
	waiters = NULL;
	cached_tid = 0;
	npending = 0;
	program_told = 0;
	lcs_ownfds_forked();
}

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

void lcs_channel_init(void)
{
	int reports = env_digit("LIBC_SERVICE_REPORTS=");

	reporting = reports == 1 || reports == 2;
	reports_wait = reports == 2;
	pthread_atfork(NULL, NULL, atfork_child);
}

static pid_t current_tid(void)
{
	if (!cached_tid)
		cached_tid = lcs_gettid_raw();
	return cached_tid;
}

static ssize_t send_retry(int fd, struct msghdr *msg)
{
	ssize_t sent;
	do
		sent = sendmsg(fd, msg, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	return sent;
}

/* Attach fds as one SCM_RIGHTS message; control must hold CMSG_SPACE. */
static void attach_fds(struct msghdr *msg, void *control, const int *fds, int nfds)
{
	struct cmsghdr *cmsg;

	if (!nfds)
		return;
	msg->msg_control = control;
	msg->msg_controllen = CMSG_SPACE(nfds * sizeof(int));
	cmsg = CMSG_FIRSTHDR(msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
}

/* Called with the lock held and no channel: make one and hand its other
 * end to the master. */
static int register_channel(void)
{
	int pair[2];
	unsigned char hello[LCS_HELLO_SIZE] = "LCSh";
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
	struct iovec iov = { hello, sizeof hello };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t sent;

	int reg = lcs_reg_fd();

	if (!lcs_is_seqpacket(reg))
		return -1;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
		return -1;
	lcs_put16(hello + LCS_HELLO_VERSION_OFFSET, LCS_VERSION);
	lcs_put32(hello + LCS_HELLO_PID_OFFSET, lcs_own_pid());
	attach_fds(&msg, control.buf, &pair[1], 1);
	sent = send_retry(reg, &msg);
	lcs_close_raw(pair[1]);
	if (sent != sizeof hello) {
		lcs_close_raw(pair[0]);
		return -1;
	}
	/* Out of the way of programs that dup2() onto low numbers. */
	int high = lcs_move_high(pair[0], 1);
	if (high >= 0 && high != pair[0])
		lcs_close_raw(pair[0]);
	else
		high = pair[0];
	lcs_set_chan_fd(high);
	return 0;
}

int lcs_enter(void)
{
	int usable;

	if (lcs_reg_fd() < 0 || busy)
		return 0;
	/* A vfork()ed or raw clone()d child shares our memory but is another
	 * process; it must leave the parent's state alone. */
	if (!lcs_own_process())
		return 0;
	busy = 1;
	pthread_mutex_lock(&lock);
	if (!chan_dead && lcs_chan_fd() < 0 && register_channel() < 0)
		chan_dead = 1;
	usable = !chan_dead;
	pthread_mutex_unlock(&lock);
	if (!usable)
		busy = 0;
	return usable;
}

void lcs_leave(void)
{
	busy = 0;
}

void lcs_request_init(struct lcs_request *request, uint16_t function)
{
	memset(request, 0, sizeof *request);
	request->function = function;
	request->fds[0] = request->fds[1] = request->fds[2] = -1;
	request->dirs[0] = request->dirs[1] = -1;
}

int lcs_path_dir(int dirfd, const char *path, int *fd, int *owned)
{
	*fd = -1;
	*owned = 0;
	if (path[0] == '/')
		return 0;
	if (dirfd != AT_FDCWD) {
		if (fcntl(dirfd, F_GETFD) < 0)
			return -1;
		*fd = dirfd;
		return 0;
	}
	/* The raw syscall: this must not come back into the shim. */
	*fd = lcs_openat_raw(AT_FDCWD, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0)
		return -1;
	*owned = 1;
	return 0;
}

void lcs_close_fds(struct lcs_reply *reply)
{
	for (int i = 0; i < reply->nfds; i++)
		lcs_close_raw(reply->fds[i]);
	reply->nfds = 0;
}

int lcs_finish(struct lcs_reply *reply, int saved_errno)
{
	lcs_close_fds(reply);
	if (reply->error) {
		errno = reply->error;
		return -1;
	}
	errno = saved_errno;
	return reply->result;
}

/* Called with the lock held.  shutdown() wakes a reader blocked in
 * recvmsg; the descriptor itself is closed when the last user leaves, so
 * its number cannot be reused under a thread still sending on it. */
static void kill_channel(void)
{
	int fd = lcs_chan_fd();

	if (!chan_dead && fd >= 0)
		shutdown(fd, SHUT_RDWR);
	chan_dead = 1;
	pthread_cond_broadcast(&wake);
}

static size_t encode_request(unsigned char *buf, const struct lcs_request *request,
                             pid_t tid, uint64_t id, int *fds, int *nfds)
{
	unsigned roles = 0;
	unsigned char *strings;

	memset(buf, 0, LCS_REQUEST_HEADER);
	memcpy(buf + LCS_REQ_MAGIC_OFFSET, "LCSq", 4);
	lcs_put16(buf + LCS_REQ_VERSION_OFFSET, LCS_VERSION);
	lcs_put16(buf + LCS_REQ_FUNCTION_OFFSET, request->function);
	lcs_put32(buf + LCS_REQ_PID_OFFSET, lcs_own_pid());
	lcs_put32(buf + LCS_REQ_TID_OFFSET, tid);
	lcs_put64(buf + LCS_REQ_ID_OFFSET, id);
	lcs_put32(buf + LCS_REQ_FLAGS_OFFSET, request->flags);
	lcs_put32(buf + LCS_REQ_ARG_OFFSET, request->arg);
	memcpy(buf + LCS_REQ_ADDRESS_OFFSET, request->address, sizeof request->address);
	lcs_put32(buf + LCS_REQ_SCOPE_ID_OFFSET, request->scope_id);
	lcs_put16(buf + LCS_REQ_LEN1_OFFSET, request->len1);
	lcs_put16(buf + LCS_REQ_LEN2_OFFSET, request->len2);
	*nfds = 0;
	for (int role = 0; role < 3; role++) {
		if (request->fds[role] < 0)
			continue;
		roles |= 1u << role;
		fds[(*nfds)++] = request->fds[role];
	}
	buf[LCS_REQ_ROLES_OFFSET] = roles;
	strings = buf + LCS_REQUEST_HEADER + 4 * lcs_context(buf, buf + LCS_REQUEST_HEADER);
	if (request->len1)
		memcpy(strings, request->string1, request->len1);
	if (request->len2)
		memcpy(strings + request->len1, request->string2, request->len2);
	return strings + request->len1 + request->len2 - buf;
}

/* ---- reports: calls the rules decided or forwarded, for the master's observers ----
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
 * kept. */
static void send_report(unsigned char *buf, size_t len)
{
	struct iovec iov = { buf, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	int saved_errno = errno;
	ssize_t sent;

	do
		sent = sendmsg(lcs_reg_fd(), &msg, (reports_wait ? 0 : MSG_DONTWAIT) | MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR && reports_wait);
	if (sent != (ssize_t)len)
		__atomic_add_fetch(&reports_lost, 1, __ATOMIC_RELAXED);
	errno = saved_errno;
}

static int64_t monotonic_ns(void); /* CLOCK_MONOTONIC in ns (the vDSO: no system call) */

static void report_header(unsigned char *buf, int outcome, int64_t result, int error, uint64_t duration)
{
	memset(buf, 0, LCS_REPORT_HEADER);
	memcpy(buf + LCS_REPORT_MAGIC_OFFSET, "LCSo", 4);
	lcs_put16(buf + LCS_REPORT_VERSION_OFFSET, LCS_VERSION);
	buf[LCS_REPORT_OUTCOME_OFFSET] = outcome;
	lcs_put32(buf + LCS_REPORT_ERRNO_OFFSET, error > 0 && error < 4096 ? error : 0);
	lcs_put32(buf + LCS_REPORT_LOST_OFFSET, __atomic_load_n(&reports_lost, __ATOMIC_RELAXED));
	lcs_put64(buf + LCS_REPORT_RESULT_OFFSET, (uint64_t)result);
	lcs_put64(buf + LCS_REPORT_DURATION_OFFSET, duration);
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
	static const int dir_offsets[2] = { LCS_REPORT_NAMES_DIR1_OFFSET, LCS_REPORT_NAMES_DIR2_OFFSET };
	struct lcs_request plain = *request;
	int fds[3], nfds, saved_errno = errno;
	size_t len;

	if (LCS_REQUEST_HEADER + 4 * LCS_MAX_GROUPS + request->len1 + request->len2 > LCS_MAX_MESSAGE)
		return;
	plain.fds[0] = plain.fds[1] = plain.fds[2] = -1; /* a report carries no descriptor */
	report_header(buf, outcome, result, error, duration);
	memset(names, 0, LCS_REPORT_NAMES_SIZE);
	for (int n = 0; n < 2; n++) {
		/* Read into place: the name's NUL is overwritten by what follows. */
		if (request->dirs[n] == -1 || !lcs_directory_name(request->dirs[n], (char *)at, &len))
			len = 0;
		lcs_put16(names + dir_offsets[n], len);
		at += len;
	}
	if (!__atomic_exchange_n(&program_told, 1, __ATOMIC_RELAXED)) {
		ssize_t exe = readlink("/proc/self/exe", (char *)at, LCS_PATH_MAX_BYTES);
		if (exe > 0 && exe < LCS_PATH_MAX_BYTES && at[0] == '/') {
			lcs_put16(names + LCS_REPORT_NAMES_EXE_OFFSET, exe);
			at += exe;
			len = read_argv(at);
			lcs_put16(names + LCS_REPORT_NAMES_ARGV_OFFSET, len);
			at += len;
		}
	}
	errno = saved_errno;
	send_report(buf, at - buf + encode_request(at, &plain, tid, 0, fds, &nfds));
}

static int reports_on(void)
{
	return reporting && lcs_reg_fd() >= 0 && lcs_own_process();
}

void lcs_report(const struct lcs_request *request, int outcome, int error)
{
	if (reports_on())
		report_request(request, outcome, -1, error, current_tid(), 0);
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
	p->tid = current_tid();
	p->id = id;
	if (outcome == LCS_REPORT_FORWARDED)
		p->request = *request;
	else
		p->request.function = request->function;
	p->start = monotonic_ns(); /* last: the real call comes next */
	return LCS_FORWARDED;
}

void lcs_report_result(int64_t result, int error)
{
	unsigned char buf[LCS_REPORT_HEADER + LCS_REPORT_CALL_SIZE];
	int64_t end = monotonic_ns(); /* first: the real call has just returned */
	struct pending *p;

	if (!npending)
		return;
	p = &pending[--npending];
	if (p->outcome == LCS_REPORT_FORWARDED) {
		report_request(&p->request, p->outcome, result, error, p->tid, (uint64_t)(end - p->start));
		return;
	}
	report_header(buf, p->outcome, result, error, (uint64_t)(end - p->start));
	lcs_put32(buf + LCS_REPORT_HEADER + LCS_REPORT_CALL_PID_OFFSET, lcs_own_pid());
	lcs_put32(buf + LCS_REPORT_HEADER + LCS_REPORT_CALL_TID_OFFSET, p->tid);
	lcs_put64(buf + LCS_REPORT_HEADER + LCS_REPORT_CALL_ID_OFFSET, p->id);
	lcs_put16(buf + LCS_REPORT_HEADER + LCS_REPORT_CALL_FUNCTION_OFFSET, p->request.function);
	lcs_put16(buf + LCS_REPORT_HEADER + LCS_REPORT_CALL_RESERVED_OFFSET, 0);
	send_report(buf, sizeof buf);
}

/* One received datagram, before it is matched to a waiter. */
struct incoming {
	unsigned char buf[LCS_MAX_MESSAGE];
	size_t len;
	int fds[LCS_MAX_REPLY_FDS + 1];
	int nfds;
};

static void close_incoming(struct incoming *in)
{
	for (int i = 0; i < in->nfds; i++)
		lcs_close_raw(in->fds[i]);
	in->nfds = 0;
}

/* Whether a caller waiting for its reply spins first (LCS_SPIN_NS) instead
 * of sleeping at once: only when the thread may run on more than one CPU,
 * so that the master has one of its own meanwhile.  Spinning then saves
 * the wake-up of a sleeping CPU (tens of microseconds on a virtual machine,
 * as long as the master's answer itself) for a reply that is usually a few
 * microseconds away.  Computed once (a benign race: every thread computes
 * the same). */
static int spin_allowed(void)
{
	static int allowed = -1;
	int value = __atomic_load_n(&allowed, __ATOMIC_RELAXED);

	if (value < 0) {
		cpu_set_t cpus;
		value = sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) > 1;
		__atomic_store_n(&allowed, value, __ATOMIC_RELAXED);
	}
	return value;
}

static int64_t monotonic_ns(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* recvmsg, polling without blocking for up to LCS_SPIN_NS first (see
 * spin_allowed), then blocking.  EINTR is retried.  A failed poll is only
 * "not yet", whatever errno says: a signal handler may have run (and
 * changed errno) between the call and the check, and a real error recurs
 * on the blocking call, which reports it. */
static ssize_t receive_message(int fd, struct msghdr *msg)
{
	size_t controllen = msg->msg_controllen;
	ssize_t got;

	if (spin_allowed()) {
		int64_t deadline = monotonic_ns() + LCS_SPIN_NS;
		do {
			msg->msg_controllen = controllen;
			got = recvmsg(fd, msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
			if (got >= 0)
				return got;
		} while (monotonic_ns() < deadline);
	}
	do {
		msg->msg_controllen = controllen;
		got = recvmsg(fd, msg, MSG_CMSG_CLOEXEC);
	} while (got < 0 && errno == EINTR);
	return got;
}

/* Returns 0 on a well-formed datagram (fds collected), -1 otherwise with
 * every received descriptor closed. */
static int receive(int fd, struct incoming *in)
{
	union {
		char buf[CMSG_SPACE((LCS_MAX_REPLY_FDS + 1) * sizeof(int))];
		struct cmsghdr align;
	} control;
	struct iovec iov = { in->buf, sizeof in->buf };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
	                      .msg_control = control.buf, .msg_controllen = sizeof control.buf };
	struct cmsghdr *cmsg;
	ssize_t got;
	int bad = 0;

	got = receive_message(fd, &msg);
	in->nfds = 0;
	if (got <= 0)
		return -1;
	in->len = got;
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		int count;
		int *data = (int *)CMSG_DATA(cmsg);
		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
			bad = 1;
			continue;
		}
		count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (int i = 0; i < count; i++) {
			int received;
			memcpy(&received, data + i, sizeof received);
			if (in->nfds < LCS_MAX_REPLY_FDS + 1)
				in->fds[in->nfds++] = received;
			else
				lcs_close_raw(received);
		}
	}
	if (bad || msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		close_incoming(in);
		return -1;
	}
	return 0;
}

static int max_reply_fds(uint16_t function)
{
	switch (function) {
	case LCS_OPEN: case LCS_OPENAT:
	case LCS_CONNECT_UNIX: case LCS_CONNECT_INET: case LCS_CONNECT_INET6:
	case LCS_BIND_UNIX: case LCS_BIND_INET: case LCS_BIND_INET6:
		return 1;
	}
	return LCS_MAX_REPLY_FDS;
}

static int valid_stat_record(const unsigned char *record)
{
	static const int nsec_offsets[] = { LCS_STAT_ATIME_NSEC_OFFSET, LCS_STAT_MTIME_NSEC_OFFSET,
					    LCS_STAT_CTIME_NSEC_OFFSET, LCS_STAT_BTIME_NSEC_OFFSET };
	uint32_t type = lcs_get32(record + LCS_STAT_TYPE_OFFSET);
	uint32_t present = lcs_get32(record + LCS_STAT_PRESENT_OFFSET);
	for (size_t i = 0; i < sizeof nsec_offsets / sizeof nsec_offsets[0]; i++)
		if (lcs_get32(record + nsec_offsets[i]) >= 1000000000u)
			return 0;
	return lcs_get32(record + LCS_STAT_MODE_OFFSET) <= 07777 && type >= 1 && type <= 7 &&
	       !(present & ~(uint32_t)(LCS_STAT_BTIME | LCS_STAT_MNT_ID)) &&
	       lcs_get32(record + LCS_STAT_RESERVED_OFFSET) == 0;
}

static int valid_addrinfo_entry(const unsigned char *entry)
{
	if (entry[LCS_AI_RESERVED_OFFSET] != 0)
		return 0;
	if (entry[LCS_AI_FAMILY_OFFSET] == 6)
		return 1;
	if (entry[LCS_AI_FAMILY_OFFSET] != 4 || lcs_get32(entry + LCS_AI_SCOPE_ID_OFFSET) != 0)
		return 0;
	for (int i = LCS_AI_ADDRESS_OFFSET + 4; i < LCS_ADDRINFO_ENTRY; i++)
		if (entry[i])
			return 0;
	return 1;
}

/* The rules of docs/protocol.md "Reply" that depend on the payload. */
static int valid_payload(uint16_t function, const struct lcs_reply *reply)
{
	int is_stat = function == LCS_STAT || function == LCS_LSTAT;
	int is_gai = function == LCS_GETADDRINFO;

	if (reply->count && reply->kind != LCS_KIND_ADDRINFO)
		return 0;
	if (reply->action == LCS_ACTION_FORWARD)
		return reply->result == 0 && reply->error == 0 && reply->kind == LCS_KIND_NONE && reply->nfds == 0;
	if (reply->action != LCS_ACTION_RESULT)
		return 0;
	switch (reply->kind) {
	case LCS_KIND_NONE:
		if (reply->payload_len || is_gai)
			return 0;
		if (reply->error)
			return reply->result == -1;
		return !is_stat;
	case LCS_KIND_STAT:
		return is_stat && reply->payload_len == LCS_STAT_RECORD && reply->result == 0 &&
		       reply->error == 0 && valid_stat_record(reply->payload);
	case LCS_KIND_ADDRINFO:
		if (!is_gai || reply->count > LCS_MAX_ADDRINFO || reply->result || reply->error ||
		    reply->payload_len != (size_t)reply->count * LCS_ADDRINFO_ENTRY)
			return 0;
		for (unsigned i = 0; i < reply->count; i++)
			if (!valid_addrinfo_entry(reply->payload + i * LCS_ADDRINFO_ENTRY))
				return 0;
		return 1;
	case LCS_KIND_GAI_ERROR:
		if (!is_gai || reply->payload_len || reply->result < 1 || reply->result > 9)
			return 0;
		return reply->result == 9 || reply->error == 0;
	}
	return 0;
}

/* Called with the lock held: match a datagram to its waiter and fill the
 * waiter's reply.  Returns -1 (fds closed) when it breaks a rule. */
static int deliver(struct incoming *in)
{
	const unsigned char *h = in->buf;
	struct waiter *w;
	struct lcs_reply *reply;
	pid_t tid;

	if (in->len < LCS_REPLY_HEADER || memcmp(h + LCS_REPLY_MAGIC_OFFSET, "LCSr", 4) ||
	    lcs_get16(h + LCS_REPLY_VERSION_OFFSET) != LCS_VERSION)
		goto bad;
	for (int i = LCS_REPLY_RESERVED_OFFSET; i < LCS_REPLY_HEADER; i++)
		if (h[i])
			goto bad;
	tid = lcs_get32(h + LCS_REPLY_TID_OFFSET);
	for (w = waiters; w && (w->tid != tid || w->done); w = w->next)
		;
	if (!w || lcs_get16(h + LCS_REPLY_FUNCTION_OFFSET) != w->function || lcs_get64(h + LCS_REPLY_ID_OFFSET) != w->id)
		goto bad;
	if (in->nfds > max_reply_fds(w->function))
		goto bad;
	reply = w->reply;
	reply->error = lcs_get32(h + LCS_REPLY_ERRNO_OFFSET);
	reply->result = (int64_t)lcs_get64(h + LCS_REPLY_RESULT_OFFSET);
	reply->action = h[LCS_REPLY_ACTION_OFFSET];
	reply->kind = h[LCS_REPLY_KIND_OFFSET];
	reply->count = lcs_get16(h + LCS_REPLY_COUNT_OFFSET);
	reply->payload_len = in->len - LCS_REPLY_HEADER;
	reply->nfds = in->nfds;
	memcpy(reply->fds, in->fds, in->nfds * sizeof(int));
	memcpy(reply->payload, h + LCS_REPLY_HEADER, reply->payload_len);
	if (reply->error < 0 || reply->error > 4095 || !valid_payload(w->function, reply)) {
		reply->nfds = 0;
		goto bad;
	}
	in->nfds = 0;
	w->done = 1;
	return 0;
bad:
	close_incoming(in);
	return -1;
}

static void unlink_waiter(struct waiter *me)
{
	struct waiter **link = &waiters;
	while (*link != me)
		link = &(*link)->next;
	*link = me->next;
}

/* Called with the lock held: wait until our reply is in or the channel
 * dies, taking a turn as the reader when nobody is reading. */
static void await_reply(int fd, struct waiter *me, struct incoming *in)
{
	while (!me->done && !chan_dead) {
		if (reading) {
			pthread_cond_wait(&wake, &lock);
			continue;
		}
		reading = 1;
		pthread_mutex_unlock(&lock);
		int got = receive(fd, in);
		pthread_mutex_lock(&lock);
		reading = 0;
		if (got < 0 || deliver(in) < 0)
			kill_channel();
		pthread_cond_broadcast(&wake);
	}
}

static int send_request(int fd, const struct lcs_request *request, pid_t tid, uint64_t id)
{
	unsigned char buf[LCS_MAX_MESSAGE];
	union { char buf[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } control;
	int fds[3], nfds;
	struct iovec iov = { buf, 0 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	iov.iov_len = encode_request(buf, request, tid, id, fds, &nfds);
	attach_fds(&msg, control.buf, fds, nfds);
	return send_retry(fd, &msg) == (ssize_t)iov.iov_len ? 0 : -1;
}

int lcs_call(const struct lcs_request *request, struct lcs_reply *reply)
{
	struct incoming in;
	struct waiter me = { .tid = current_tid(), .function = request->function, .reply = reply };
	int fd, cancel_state;

	if (LCS_REQUEST_HEADER + 4 * LCS_MAX_GROUPS + request->len1 + request->len2 > LCS_MAX_MESSAGE)
		return -1;
	/* Our waiter slot lives on this stack: cancellation must not unwind it. */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	pthread_mutex_lock(&lock);
	if (chan_dead) {
		pthread_mutex_unlock(&lock);
		pthread_setcancelstate(cancel_state, NULL);
		return -1;
	}
	me.id = ++next_id;
	me.next = waiters;
	waiters = &me;
	users++;
	fd = lcs_chan_fd();
	pthread_mutex_unlock(&lock);

	/* The slot is linked before sending: another thread may read our reply
	 * as soon as it is sent. */
	int sent = send_request(fd, request, me.tid, me.id);

	pthread_mutex_lock(&lock);
	if (sent < 0)
		kill_channel();
	else
		await_reply(fd, &me, &in);
	unlink_waiter(&me);
	if (--users == 0 && chan_dead && lcs_chan_fd() >= 0) {
		int dead = lcs_chan_fd();
		lcs_set_chan_fd(-1);
		lcs_close_raw(dead);
	}
	pthread_mutex_unlock(&lock);
	pthread_setcancelstate(cancel_state, NULL);
	reply->id = me.id;
	return me.done ? 0 : -1;
}

void lcs_stat_decode(const unsigned char *record, struct lcs_stat *out)
{
	out->dev = lcs_get64(record + LCS_STAT_DEV_OFFSET);
	out->ino = lcs_get64(record + LCS_STAT_INO_OFFSET);
	out->nlink = lcs_get64(record + LCS_STAT_NLINK_OFFSET);
	out->rdev = lcs_get64(record + LCS_STAT_RDEV_OFFSET);
	out->size = (int64_t)lcs_get64(record + LCS_STAT_SIZE_OFFSET);
	out->blksize = (int64_t)lcs_get64(record + LCS_STAT_BLKSIZE_OFFSET);
	out->blocks = (int64_t)lcs_get64(record + LCS_STAT_BLOCKS_OFFSET);
	out->atime = (struct timespec){ (int64_t)lcs_get64(record + LCS_STAT_ATIME_OFFSET),
					lcs_get32(record + LCS_STAT_ATIME_NSEC_OFFSET) };
	out->mtime = (struct timespec){ (int64_t)lcs_get64(record + LCS_STAT_MTIME_OFFSET),
					lcs_get32(record + LCS_STAT_MTIME_NSEC_OFFSET) };
	out->ctime = (struct timespec){ (int64_t)lcs_get64(record + LCS_STAT_CTIME_OFFSET),
					lcs_get32(record + LCS_STAT_CTIME_NSEC_OFFSET) };
	out->btime = (struct timespec){ (int64_t)lcs_get64(record + LCS_STAT_BTIME_OFFSET),
					lcs_get32(record + LCS_STAT_BTIME_NSEC_OFFSET) };
	out->mode = lcs_get32(record + LCS_STAT_MODE_OFFSET);
	out->type = lcs_get32(record + LCS_STAT_TYPE_OFFSET);
	out->uid = lcs_get32(record + LCS_STAT_UID_OFFSET);
	out->gid = lcs_get32(record + LCS_STAT_GID_OFFSET);
	out->attributes = lcs_get64(record + LCS_STAT_ATTRIBUTES_OFFSET);
	out->attributes_mask = lcs_get64(record + LCS_STAT_ATTRIBUTES_MASK_OFFSET);
	out->mnt_id = lcs_get64(record + LCS_STAT_MNT_ID_OFFSET);
	out->present = lcs_get32(record + LCS_STAT_PRESENT_OFFSET);
}
