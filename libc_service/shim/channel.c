/* The per-process channel to the master: one call, its one reply, and the
 * threads sharing the channel.
 *
 * Each process has its own SOCK_SEQPACKET channel, registered at its first
 * intercepted call (register.c).  Threads of one process share it: every
 * thread sends its request as one datagram and waits for the reply
 * carrying its tid.  Whichever waiting thread finds nobody reading
 * becomes the reader (leader/follower): it receives, hands replies for
 * other threads to their waiter slots and wakes them.
 *
 * Any broken rule, EOF or I/O error kills the channel for this process and
 * every call falls back to the real libc (docs/protocol.md).
 *
 * The descriptors themselves (the registration socket, the channel's
 * number) and the process they belong to are ownfds.c's; the bytes are
 * codec.c's, the datagrams datagram.c's.  Depends on register.c, codec.c,
 * datagram.c, report.c (forgotten in a fork child), ownfds.c and real.c. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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
	lcs_report_forked();
	lcs_ownfds_forked();
}

void lcs_channel_init(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
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
	if (!chan_dead && lcs_chan_fd() < 0) {
		int fd = lcs_register_channel();
		if (fd < 0)
			chan_dead = 1;
		else
			lcs_set_chan_fd(fd);
	}
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

/* Called with the lock held: match a datagram to its waiter (by tid, then
 * function and request id) and fill the waiter's reply.  Returns -1 (fds
 * closed) when it breaks a rule. */
static int deliver(struct lcs_incoming *in)
{
	struct waiter *w;
	pid_t tid;

	if (lcs_reply_tid(in->buf, in->len, &tid) < 0)
		goto bad;
	for (w = waiters; w && (w->tid != tid || w->done); w = w->next)
		;
	if (!w || lcs_decode_reply(in->buf, in->len, w->function, w->id, in->nfds, w->reply) < 0)
		goto bad;
	memcpy(w->reply->fds, in->fds, in->nfds * sizeof(int));
	in->nfds = 0;
	w->done = 1;
	return 0;
bad:
	lcs_close_incoming(in);
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
static void await_reply(int fd, struct waiter *me, struct lcs_incoming *in)
{
	while (!me->done && !chan_dead) {
		if (reading) {
			pthread_cond_wait(&wake, &lock);
			continue;
		}
		reading = 1;
		pthread_mutex_unlock(&lock);
		int got = lcs_receive_datagram(fd, in);
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
	int fds[3], nfds;
	size_t len = lcs_encode_request(buf, request, lcs_own_pid(), tid, id, fds, &nfds);

	return lcs_send_datagram(fd, buf, len, fds, nfds, 0) == (ssize_t)len ? 0 : -1;
}

int lcs_call(const struct lcs_request *request, struct lcs_reply *reply)
{
	struct lcs_incoming in;
	struct waiter me = { .tid = lcs_own_tid(), .function = request->function, .reply = reply };
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
