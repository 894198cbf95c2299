/* floor_answer: the transport floor that *answers* like bench/pymaster.py.
 *
 *   floor_answer SHIM -- CMD [ARG...]
 *
 * bench/floor_master.c (the shim engineer's) forwards open; the benchmark's
 * Python handler answers it with a descriptor, which costs an openat in the
 * master and an SCM_RIGHTS transfer.  To compare like with like this master
 * gives the same answers as `pymaster.py answer`:
 *
 *   stat, lstat    a fixed regular file (size 4242, mode 0644, nlink 1,
 *                  blksize 4096, blocks 16), as floor_master's stat mode
 *   open, openat   openat(dirfd or AT_FDCWD, path, flags) in the master,
 *                  the descriptor sent back (or -1 and the errno)
 *   anything else  forward
 *
 * Same structure as floor_master: one poll() over the registration socket,
 * a signalfd for SIGCHLD and every channel; framing checked, fields not. */
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

#define MAX_MESSAGE 8256
#define REQUEST_HEADER 64
#define REPLY_HEADER 48
#define STAT_RECORD 96
#define MAX_REQUEST_FDS 2
#define MAX_CHANNELS 4096
#define FN_OPEN 1
#define FN_OPENAT 2
#define FN_STAT 5
#define FN_LSTAT 6
#define FN_MAX 17
#define ROLE_DIR1 1

static struct pollfd polls[MAX_CHANNELS + 2]; /* [0] registration, [1] signalfd */
static int npolls;

/* Open flag bits 0..11 of docs/protocol.md, in bit order. */
static const int open_flags[12] = {
	O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_CREAT, O_DIRECTORY,
	O_EXCL, O_NOFOLLOW, O_PATH, O_SYNC, O_TMPFILE, O_TRUNC,
};

static void put16(unsigned char *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static void put64(unsigned char *p, uint64_t v) { put32(p, v); put32(p + 4, v >> 32); }
static uint16_t get16(const unsigned char *p) { return p[0] | p[1] << 8; }
static uint32_t get32(const unsigned char *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }

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

static void accept_registration(int reg_fd)
{
	unsigned char hello[64];
	int fds[2], nfds;
	ssize_t got = receive(reg_fd, hello, sizeof hello, fds, 2, &nfds);

	if (got <= 0)
		return;
	if (got != 16 || memcmp(hello, "LCSh", 4) || get16(hello + 4) != 1 || nfds != 1 ||
	    npolls == MAX_CHANNELS + 2) {
		while (nfds)
			close(fds[--nfds]);
		return;
	}
	polls[npolls++] = (struct pollfd){ .fd = fds[0], .events = POLLIN };
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

static int valid_request(const unsigned char *req, ssize_t len, int nfds)
{
	uint16_t function = get16(req + 6);

	if (len < REQUEST_HEADER || memcmp(req, "LCSq", 4) || get16(req + 4) != 1)
		return 0;
	if (function < 1 || function > FN_MAX || req[56] & ~7)
		return 0;
	if ((size_t)len != REQUEST_HEADER + (size_t)get16(req + 52) + get16(req + 54))
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
	memcpy(path, req + REQUEST_HEADER, len);
	path[len] = 0;
	return openat(nfds && req[56] & ROLE_DIR1 ? fds[0] : AT_FDCWD, path, flags, get32(req + 28));
}

static int serve(int fd)
{
	unsigned char req[MAX_MESSAGE], rep[REPLY_HEADER + STAT_RECORD];
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
	int fds[MAX_REQUEST_FDS + 2], nfds, opened = -2;
	ssize_t got = receive(fd, req, sizeof req, fds, MAX_REQUEST_FDS + 2, &nfds);
	struct iovec iov = { rep, REPLY_HEADER };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	uint16_t function;
	ssize_t sent;

	if (got <= 0)
		return -1;
	if (!valid_request(req, got, nfds)) {
		while (nfds)
			close(fds[--nfds]);
		return -1;
	}
	function = get16(req + 6);
	memset(rep, 0, REPLY_HEADER);
	memcpy(rep, "LCSr", 4);
	put16(rep + 4, 1);
	put16(rep + 6, function);
	memcpy(rep + 8, req + 12, 4);   /* tid */
	memcpy(rep + 16, req + 16, 8);  /* request id */
	if (function == FN_OPEN || function == FN_OPENAT)
		opened = open_here(req, fds, nfds);
	if (function == FN_STAT || function == FN_LSTAT) {
		rep[33] = 1;
		fake_stat(rep + REPLY_HEADER);
		iov.iov_len += STAT_RECORD;
	} else if (opened >= 0) {
		struct cmsghdr *c;
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof control.buf;
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &opened, sizeof opened);
		put64(rep + 24, 0);
	} else if (opened == -1) {
		put32(rep + 12, errno);
		put64(rep + 24, (uint64_t)-1);
	} else {
		rep[32] = 1; /* forward */
	}
	while (nfds)
		close(fds[--nfds]);
	sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
	if (opened >= 0)
		close(opened);
	return sent == (ssize_t)iov.iov_len ? 0 : -1;
}

int main(int argc, char **argv)
{
	int pair[2], status = 0, child_done = 0;
	sigset_t chld, old_mask;
	pid_t child;

	if (argc < 4 || strcmp(argv[2], "--")) {
		fprintf(stderr, "usage: floor_answer SHIM -- CMD [ARG...]\n");
		return 2;
	}
	setenv("LD_PRELOAD", argv[1], 1);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) < 0 || fcntl(pair[0], F_SETFD, FD_CLOEXEC) < 0) {
		perror("floor_answer: socketpair");
		return 2;
	}
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old_mask);
	polls[0] = (struct pollfd){ .fd = pair[0], .events = POLLIN };
	polls[1] = (struct pollfd){ .fd = signalfd(-1, &chld, SFD_CLOEXEC), .events = POLLIN };
	npolls = 2;
	child = fork();
	if (child < 0) {
		perror("floor_answer: fork");
		return 2;
	}
	if (child == 0) {
		char fd_text[16];
		sigprocmask(SIG_SETMASK, &old_mask, NULL);
		snprintf(fd_text, sizeof fd_text, "%d", pair[1]);
		setenv("LIBC_SERVICE_FD", fd_text, 1);
		execvp(argv[3], argv + 3);
		fprintf(stderr, "floor_answer: %s: %s\n", argv[3], strerror(errno));
		_exit(127);
	}
	close(pair[1]);
	while (!child_done || npolls > 2) {
		if (poll(polls, npolls, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("floor_answer: poll");
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
			polls[0].fd = -polls[0].fd - 1;
		for (int i = npolls - 1; i >= 2; i--)
			if (polls[i].revents && serve(polls[i].fd) < 0) {
				close(polls[i].fd);
				polls[i] = polls[--npolls];
			}
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
