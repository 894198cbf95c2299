/* floor_master: the smallest master that speaks the libc-service wire
 * protocol (docs/protocol.md, version 3).  It is the transport floor for
 * the benchmarks and the shim's test harness.
 *
 *   floor_master [-v] [-s SHIM] MODE -- CMD [ARG...]
 *
 * MODE forward: every call is answered "forward" (the slave does it).
 * MODE stat:    stat/lstat get a fixed regular file (size 4242, mode 0644);
 *               everything else is forwarded.
 * MODE answer:  as stat, and open/openat are done in the master
 *               (openat(dirfd or AT_FDCWD, path, flags)) and the descriptor
 *               sent back, or -1 and the errno: the same answers as
 *               `bench/pymaster.py answer`, to compare like with like.
 * SHIM defaults to $LIBC_SERVICE_SHIM.  -v logs each registration, -vv
 * also each request (function and first string).
 *
 * Single-threaded: one poll() over the registration socket, a signalfd for
 * SIGCHLD and every registered channel.  Exits with the child's status once
 * the child has exited and every channel is closed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION 3
#define MAX_GROUPS 64
#define REQUEST_HEADER 72
#define MAX_MESSAGE (REQUEST_HEADER + 4 * MAX_GROUPS + 2 * 4095) /* docs/protocol.md; wire.MAX_MESSAGE */
#define REPLY_HEADER 48
#define STAT_RECORD 152 /* wire.STAT: times as seconds + ns, statx fields after */
#define MAX_REQUEST_FDS 2
#define MAX_CHANNELS 4096
#define FN_OPEN 1
#define FN_OPENAT 2
#define FN_STAT 5
#define FN_LSTAT 6
#define FN_MAX 23

enum { MODE_FORWARD, MODE_STAT, MODE_ANSWER };

/* Open flag bits 0..11 of docs/protocol.md, in bit order. */
static const int open_flags[12] = {
	O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_CREAT, O_DIRECTORY,
	O_EXCL, O_NOFOLLOW, O_PATH, O_SYNC, O_TMPFILE, O_TRUNC,
};

static const char *const names[FN_MAX + 1] = {
	"?", "open", "openat", "unlink", "rename", "stat", "lstat", "access", "eaccess",
	"mkdir", "rmdir", "connect_unix", "connect_inet", "connect_inet6", "bind_unix",
	"bind_inet", "bind_inet6", "getaddrinfo", "chmod", "fchmod", "chown", "fchown", "utimens",
	"futimens",
};

static int mode;
static int verbose;
static struct pollfd polls[MAX_CHANNELS + 2]; /* [0] registration, [1] signalfd */
static int npolls;

static void put16(unsigned char *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static void put64(unsigned char *p, uint64_t v) { put32(p, v); put32(p + 4, v >> 32); }
static uint16_t get16(const unsigned char *p) { return p[0] | p[1] << 8; }
static uint32_t get32(const unsigned char *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }

static void usage(void)
{
	fprintf(stderr, "usage: floor_master [-v] [-s SHIM] forward|stat|answer -- CMD [ARG...]\n");
	exit(2);
}

/* Receive one datagram with its descriptors (all close-on-exec).  Returns
 * its length, 0 on EOF, -1 on error or truncation (fds closed). */
static ssize_t receive(int fd, unsigned char *buf, size_t size, int *fds, int max_fds, int *nfds)
{
	union { char buf[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr align; } control;
	struct iovec iov = { buf, size };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
	                      .msg_control = control.buf, .msg_controllen = sizeof control.buf };
	ssize_t got;

	*nfds = 0;
	do
		got = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (int i = 0; i < count; i++) {
			int received;
			memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
			if (*nfds < max_fds)
				fds[(*nfds)++] = received;
			else
				close(received);
		}
	}
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC) || *nfds == max_fds) {
		while (*nfds)
			close(fds[--*nfds]);
		return -1;
	}
	return got;
}

static void add_channel(int fd)
{
	if (npolls == MAX_CHANNELS + 2) {
		fprintf(stderr, "floor_master: too many channels\n");
		close(fd);
		return;
	}
	polls[npolls++] = (struct pollfd){ .fd = fd, .events = POLLIN };
}

static void accept_registration(int reg_fd)
{
	unsigned char hello[64];
	int fds[2], nfds, type;
	socklen_t len = sizeof type;
	ssize_t got = receive(reg_fd, hello, sizeof hello, fds, 2, &nfds);

	if (got <= 0)
		return;
	if (got != 16 || memcmp(hello, "LCSh", 4) || get16(hello + 4) != VERSION || nfds != 1 ||
	    getsockopt(fds[0], SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET) {
		fprintf(stderr, "floor_master: bad registration\n");
		while (nfds)
			close(fds[--nfds]);
		return;
	}
	if (verbose)
		fprintf(stderr, "floor_master: registered pid=%u fd=%d\n", get32(hello + 8), fds[0]);
	add_channel(fds[0]);
}

static void fake_stat(unsigned char *record)
{
	memset(record, 0, STAT_RECORD);
	put64(record + 16, 1);      /* nlink */
	put64(record + 32, 4242);   /* size */
	put64(record + 40, 4096);   /* blksize */
	put64(record + 48, 16);     /* blocks */
	put32(record + 80, 0644);   /* mode */
	put32(record + 84, 1);      /* regular */
}

/* Where the request's strings start: after the header and the caller's groups. */
static size_t strings(const unsigned char *req)
{
	return REQUEST_HEADER + 4 * (size_t)req[60];
}

/* The framing rules; the per-function field rules are the real master's. */
static int valid_request(const unsigned char *req, ssize_t len, int nfds)
{
	uint16_t function = get16(req + 6);

	if (len < REQUEST_HEADER || memcmp(req, "LCSq", 4) || get16(req + 4) != VERSION)
		return 0;
	if (function < 1 || function > FN_MAX || req[56] & ~7 || req[60] > MAX_GROUPS)
		return 0;
	if ((size_t)len != strings(req) + (size_t)get16(req + 52) + get16(req + 54))
		return 0;
	return __builtin_popcount(req[56]) == nfds;
}

/* open/openat in the master.  Returns the descriptor, or -1 with errno;
 * -2 when the request has flags this floor does not map (forward it). */
static int open_here(const unsigned char *req, const int *fds, int nfds)
{
	char path[4096];
	uint32_t bits = get32(req + 24);
	uint16_t len = get16(req + 52);
	int flags = O_CLOEXEC;

	if (bits >> 12 || len >= sizeof path)
		return -2; /* resolve_* flags: forward */
	for (int bit = 0; bit < 12; bit++)
		if (bits & 1u << bit)
			flags |= open_flags[bit];
	memcpy(path, req + strings(req), len);
	path[len] = 0;
	return openat(nfds && req[56] & 1 ? fds[0] : AT_FDCWD, path, flags, get32(req + 28));
}

/* Send the reply, with `opened` as its one descriptor when it is >= 0. */
static int send_reply(int fd, unsigned char *rep, size_t rep_len, int opened)
{
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
	struct iovec iov = { rep, rep_len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (opened >= 0) {
		struct cmsghdr *c;
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof control.buf;
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &opened, sizeof opened);
	}
	return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)rep_len ? 0 : -1;
}

/* Answer one request.  Returns -1 when the channel must be closed. */
static int serve(int fd)
{
	unsigned char req[MAX_MESSAGE], rep[REPLY_HEADER + STAT_RECORD];
	int fds[MAX_REQUEST_FDS + 2], nfds, opened = -2, open_errno = 0, result;
	ssize_t got = receive(fd, req, sizeof req, fds, MAX_REQUEST_FDS + 2, &nfds);
	size_t rep_len = REPLY_HEADER;
	uint16_t function;

	if (got <= 0)
		return -1;
	if (!valid_request(req, got, nfds)) {
		fprintf(stderr, "floor_master: malformed request, closing the channel\n");
		got = -1;
	}
	function = get16(req + 6);
	if (got > 0 && mode == MODE_ANSWER && (function == FN_OPEN || function == FN_OPENAT))
		opened = open_here(req, fds, nfds);
	open_errno = errno;
	while (nfds)
		close(fds[--nfds]); /* the master's copies; the reply carries its own */
	if (got < 0)
		return -1;
	if (verbose > 1)
		fprintf(stderr, "floor_master: pid=%u tid=%u %s %.*s\n", get32(req + 8), get32(req + 12),
		        names[function], (int)get16(req + 52), req + strings(req));
	memset(rep, 0, REPLY_HEADER);
	memcpy(rep, "LCSr", 4);
	put16(rep + 4, VERSION);
	put16(rep + 6, function);
	memcpy(rep + 8, req + 12, 4);   /* tid */
	memcpy(rep + 16, req + 16, 8);  /* request id */
	if (mode != MODE_FORWARD && (function == FN_STAT || function == FN_LSTAT)) {
		rep[33] = 1;
		fake_stat(rep + REPLY_HEADER);
		rep_len += STAT_RECORD;
	} else if (opened == -1) {
		put32(rep + 12, open_errno);
		put64(rep + 24, (uint64_t)-1);
	} else if (opened < 0) {
		rep[32] = 1; /* forward */
	}
	result = send_reply(fd, rep, rep_len, opened);
	if (opened >= 0)
		close(opened);
	return result;
}

static void close_channel(int index)
{
	close(polls[index].fd);
	polls[index] = polls[--npolls];
}

static int exit_status(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}

static pid_t start_child(char **argv, int child_end, const sigset_t *old_mask)
{
	char fd_text[16];
	pid_t pid = fork();

	if (pid != 0)
		return pid;
	sigprocmask(SIG_SETMASK, old_mask, NULL);
	snprintf(fd_text, sizeof fd_text, "%d", child_end);
	setenv("LIBC_SERVICE_FD", fd_text, 1);
	execvp(argv[0], argv);
	fprintf(stderr, "floor_master: %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

int main(int argc, char **argv)
{
	const char *shim = getenv("LIBC_SERVICE_SHIM");
	int pair[2], opt, status = 0, child_done = 0;
	sigset_t chld, old_mask;
	pid_t child;

	while ((opt = getopt(argc, argv, "+vs:")) != -1) {
		if (opt == 'v')
			verbose++;
		else if (opt == 's')
			shim = optarg;
		else
			usage();
	}
	if (argc - optind < 3 || strcmp(argv[optind + 1], "--"))
		usage();
	if (!strcmp(argv[optind], "forward"))
		mode = MODE_FORWARD;
	else if (!strcmp(argv[optind], "stat"))
		mode = MODE_STAT;
	else if (!strcmp(argv[optind], "answer"))
		mode = MODE_ANSWER;
	else
		usage();
	if (!shim) {
		fprintf(stderr, "floor_master: no shim (-s or LIBC_SERVICE_SHIM)\n");
		return 2;
	}
	setenv("LD_PRELOAD", shim, 1);
	/* Our end is close-on-exec; the child's end is inherited by the tree. */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) < 0 || fcntl(pair[0], F_SETFD, FD_CLOEXEC) < 0) {
		perror("floor_master: socketpair");
		return 2;
	}
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old_mask);
	polls[0] = (struct pollfd){ .fd = pair[0], .events = POLLIN };
	polls[1] = (struct pollfd){ .fd = signalfd(-1, &chld, SFD_CLOEXEC), .events = POLLIN };
	npolls = 2;
	child = start_child(argv + optind + 2, pair[1], &old_mask);
	if (child < 0) {
		perror("floor_master: fork");
		return 2;
	}
	close(pair[1]);

	while (!child_done || npolls > 2) {
		if (poll(polls, npolls, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("floor_master: poll");
			return 2;
		}
		if (polls[1].revents) {
			struct signalfd_siginfo info;
			if (read(polls[1].fd, &info, sizeof info) < 0 && errno != EAGAIN)
				return 2;
			if (waitpid(child, &status, WNOHANG) == child)
				child_done = 1;
		}
		if (polls[0].revents & POLLIN)
			accept_registration(polls[0].fd);
		else if (polls[0].revents)
			polls[0].fd = -polls[0].fd - 1; /* every holder gone: stop polling it */
		for (int i = npolls - 1; i >= 2; i--)
			if (polls[i].revents && serve(polls[i].fd) < 0)
				close_channel(i);
	}
	return exit_status(status);
}
