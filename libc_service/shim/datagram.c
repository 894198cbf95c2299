/* One datagram on a SOCK_SEQPACKET socket, with its descriptors: how the
 * shim sends a registration, a request or a report and receives a reply.
 *
 * Sending: MSG_NOSIGNAL (a master gone is an error, not SIGPIPE), EINTR
 * retried, the descriptors as one SCM_RIGHTS message.  Receiving:
 * MSG_CMSG_CLOEXEC, polling without blocking for up to LCS_SPIN_NS first
 * (when the thread may run on more than one CPU), then blocking; a
 * datagram that was truncated or carries anything but SCM_RIGHTS is
 * refused with every received descriptor closed.
 *
 * Depends on real.c only. */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>

#include "shim.h"

/* The most descriptors one datagram sends: one per request role. */
#define SEND_FDS_MAX 3

ssize_t lcs_send_datagram(int fd, const void *buf, size_t len, const int *fds, int nfds, int flags)
{
	union { char buf[CMSG_SPACE(SEND_FDS_MAX * sizeof(int))]; struct cmsghdr align; } control;
	struct iovec iov = { (void *)buf, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t sent;

	if (nfds < 0 || nfds > SEND_FDS_MAX) {
		errno = EINVAL;
		return -1;
	}
	if (nfds) {
		struct cmsghdr *cmsg;

		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
	}
	do
		sent = sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	return sent;
}

void lcs_close_incoming(struct lcs_incoming *in)
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
		int64_t deadline = lcs_monotonic_ns() + LCS_SPIN_NS;
		do {
			msg->msg_controllen = controllen;
			got = recvmsg(fd, msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
			if (got >= 0)
				return got;
		} while (lcs_monotonic_ns() < deadline);
	}
	do {
		msg->msg_controllen = controllen;
		got = recvmsg(fd, msg, MSG_CMSG_CLOEXEC);
	} while (got < 0 && errno == EINTR);
	return got;
}

int lcs_receive_datagram(int fd, struct lcs_incoming *in)
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
		lcs_close_incoming(in);
		return -1;
	}
	return 0;
}
