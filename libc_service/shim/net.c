/* Socket calls: connect and bind, by address family.
 *
 * The slave's socket travels with the request.  If the master answers with
 * a descriptor, that socket takes the slave's socket's place (same number,
 * same close-on-exec flag); the call then returns the master's result.
 * A relative AF_UNIX path carries the working directory it is resolved
 * against, as a path call does.  Families other than AF_UNIX, AF_INET and
 * AF_INET6 go straight to libc. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "shim.h"

enum { FALLBACK = LCS_FALLBACK, ANSWERED = LCS_ANSWERED };

/* IPv6 sockaddrs may omit the scope id (RFC 2133 length). */
#define SIN6_LEN_RFC2133 24

/* Fill the request's address part.  Returns -1 when the address has no
 * protocol form (the real libc then judges it). */
static int describe(const struct sockaddr *addr, socklen_t len, int is_bind,
                    struct lcs_request *request)
{
	if (!addr || len < sizeof(sa_family_t))
		return -1;
	switch (addr->sa_family) {
	case AF_UNIX: {
		const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
		size_t room = len - offsetof(struct sockaddr_un, sun_path);
		size_t name_len;
		if (len <= offsetof(struct sockaddr_un, sun_path) || len > sizeof *un)
			return -1; /* unnamed (autobind) or oversized */
		/* An abstract name is exactly the bytes given, its NUL included;
		 * a path ends at its first NUL, as the kernel reads it. */
		name_len = un->sun_path[0] ? strnlen(un->sun_path, room) : room;
		if (name_len < 1 || name_len > LCS_UNIX_PATH_MAX)
			return -1;
		request->function = is_bind ? LCS_BIND_UNIX : LCS_CONNECT_UNIX;
		request->string1 = un->sun_path;
		request->len1 = name_len;
		return 0;
	}
	case AF_INET: {
		const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
		if (len < sizeof *in)
			return -1;
		request->function = is_bind ? LCS_BIND_INET : LCS_CONNECT_INET;
		request->arg = ntohs(in->sin_port);
		memcpy(request->address, &in->sin_addr, 4);
		return 0;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
		if (len < SIN6_LEN_RFC2133)
			return -1;
		request->function = is_bind ? LCS_BIND_INET6 : LCS_CONNECT_INET6;
		request->arg = ntohs(in6->sin6_port);
		memcpy(request->address, &in6->sin6_addr, 16);
		if (len >= sizeof *in6)
			request->scope_id = in6->sin6_scope_id;
		return 0;
	}
	}
	return -1;
}

static int is_socket(int fd)
{
	int type;
	socklen_t len = sizeof type;
	return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
}

/* Put the master's socket in place of ours, keeping our close-on-exec. */
static int replace_socket(int sockfd, int received)
{
	int fd_flags = fcntl(sockfd, F_GETFD);
	int replaced = -1;

	if (fd_flags >= 0)
		replaced = lcs_dup3_guarded(received, sockfd, fd_flags & FD_CLOEXEC ? O_CLOEXEC : 0);
	int error = errno;
	lcs_close_raw(received);
	errno = error;
	return replaced < 0 ? -1 : 0;
}

/* The working directory for a relative socket path (dir1), or nothing
 * for an absolute path and an abstract name.  Returns -1 when it cannot
 * be opened: the real libc does the call then. */
static int unix_dir(struct lcs_request *request, int *owned)
{
	*owned = 0;
	if (request->function != LCS_CONNECT_UNIX && request->function != LCS_BIND_UNIX)
		return 0;
	if (request->string1[0] == 0 || request->string1[0] == '/')
		return 0;
	return lcs_path_dir(AT_FDCWD, request->string1, &request->fds[0], owned);
}

static int socket_call(int is_bind, int sockfd, const struct sockaddr *addr,
                       socklen_t len, int *result)
{
	int saved_errno = errno;
	struct lcs_request request;
	struct lcs_reply reply;
	int answered = 0, forwarded = 0, owned;

	lcs_request_init(&request, 0);
	if (describe(addr, len, is_bind, &request) < 0 || !is_socket(sockfd)) {
		errno = saved_errno;
		return FALLBACK;
	}
	request.fds[2] = sockfd;
	if (lcs_enter()) {
		if (unix_dir(&request, &owned) == 0 && lcs_call(&request, &reply) == 0) {
			answered = reply.action == LCS_ACTION_RESULT;
			forwarded = reply.action == LCS_ACTION_FORWARD;
		}
		if (owned)
			lcs_close_raw(request.fds[0]);
		lcs_leave();
	}
	if (!answered) {
		errno = saved_errno;
		/* The master said "forward": report the real call's result (LCS_ANSWERED_OR_REAL). */
		return forwarded ? lcs_report_later(&request, LCS_REPORT_RESULT, reply.id) : FALLBACK;
	}
	if (reply.nfds == 1) {
		reply.nfds = 0;
		if (replace_socket(sockfd, reply.fds[0]) < 0) {
			*result = -1;
			return ANSWERED;
		}
	}
	*result = lcs_finish(&reply, saved_errno);
	return ANSWERED;
}

/* With _GNU_SOURCE the header declares the address as a transparent union. */
LCS_EXPORT int connect(int sockfd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
	int result, how = socket_call(0, sockfd, addr.__sockaddr__, len, &result);

	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(connect)(sockfd, addr, len));
}

LCS_EXPORT int bind(int sockfd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
	int result, how = socket_call(1, sockfd, addr.__sockaddr__, len, &result);

	return LCS_ANSWERED_OR_REAL(how, result, LCS_REAL(bind)(sockfd, addr, len));
}
