/* getaddrinfo: the master resolves node and service to (address, port)
 * pairs; the shim applies the caller's hints and builds the addrinfo list
 * laid out as glibc lays it out (one malloc block per node holding the
 * addrinfo and its sockaddr, ai_canonname a separate malloc), so the real
 * freeaddrinfo frees it. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "le.h"
#include "shim.h"

#define KNOWN_FLAGS (AI_PASSIVE | AI_CANONNAME | AI_NUMERICHOST | AI_V4MAPPED | AI_ALL | \
                     AI_ADDRCONFIG | AI_NUMERICSERV | AI_IDN | AI_CANONIDN)

/* glibc's defaults for a NULL hints argument. */
static const struct addrinfo default_hints = { .ai_flags = AI_V4MAPPED | AI_ADDRCONFIG };

struct socket_kind {
	int socktype, protocol;
};

/* The error names' codes (docs/protocol.md), index = code. */
static const int eai_codes[10] = {
	0, EAI_AGAIN, EAI_BADFLAGS, EAI_FAIL, EAI_FAMILY, EAI_MEMORY,
	EAI_NONAME, EAI_SERVICE, EAI_SOCKTYPE, EAI_SYSTEM,
};

/* A getaddrinfo return code as a report carries it: 0, the protocol's
 * code for the errors it names (index in eai_codes), else glibc's own
 * (negative) code. */
static int gai_code(int code)
{
	for (int i = 1; i < 10; i++)
		if (code == eai_codes[i])
			return i;
	return code;
}

static int all_digits(const char *text)
{
	if (!*text)
		return 0;
	for (; *text; text++)
		if (*text < '0' || *text > '9')
			return 0;
	return 1;
}

static int default_protocol(int socktype)
{
	if (socktype == SOCK_STREAM)
		return IPPROTO_TCP;
	if (socktype == SOCK_DGRAM)
		return IPPROTO_UDP;
	return 0;
}

/* Whether node is an address in text (glibc reads IPv4 as inet_aton does:
 * "127.1" too), not a name. */
static int numeric_node(const char *node)
{
	char v6[INET6_ADDRSTRLEN + 1];
	struct in6_addr a6;
	struct in_addr a4;
	size_t len;

	if (!node)
		return 0;
	if (inet_aton(node, &a4))
		return 1;
	len = strcspn(node, "%");
	if (len >= sizeof v6)
		return 0;
	memcpy(v6, node, len);
	v6[len] = 0;
	return inet_pton(AF_INET6, v6, &a6) == 1;
}

/* The socket kinds each address is expanded to, as glibc does: the one
 * asked for, or stream, datagram and raw; raw only without a service or
 * with a numeric one (a named service exists per protocol, raw has none). */
static int socket_kinds(const struct addrinfo *hints, int named_service, struct socket_kind *kinds)
{
	if (hints->ai_socktype) {
		kinds[0].socktype = hints->ai_socktype;
		kinds[0].protocol = hints->ai_protocol ? hints->ai_protocol : default_protocol(hints->ai_socktype);
		return 1;
	}
	if (hints->ai_protocol == IPPROTO_TCP) {
		kinds[0] = (struct socket_kind){ SOCK_STREAM, IPPROTO_TCP };
		return 1;
	}
	if (hints->ai_protocol == IPPROTO_UDP) {
		kinds[0] = (struct socket_kind){ SOCK_DGRAM, IPPROTO_UDP };
		return 1;
	}
	kinds[0] = (struct socket_kind){ SOCK_STREAM, IPPROTO_TCP };
	kinds[1] = (struct socket_kind){ SOCK_DGRAM, IPPROTO_UDP };
	kinds[2] = (struct socket_kind){ SOCK_RAW, 0 };
	return named_service ? 2 : 3;
}

/* Hints the protocol can express; anything else goes to the real libc,
 * which reports the error or needs no authority (numeric host, wildcard
 * passive address). */
static int expressible(const char *node, const char *service, const struct addrinfo *hints)
{
	int socktype = hints->ai_socktype, protocol = hints->ai_protocol;

	if (!node && !service)
		return 0;
	if (hints->ai_flags & ~KNOWN_FLAGS || hints->ai_flags & AI_NUMERICHOST)
		return 0;
	if (!node && hints->ai_flags & AI_PASSIVE)
		return 0;
	if (hints->ai_family != AF_UNSPEC && hints->ai_family != AF_INET && hints->ai_family != AF_INET6)
		return 0;
	if (socktype && socktype != SOCK_STREAM && socktype != SOCK_DGRAM && socktype != SOCK_RAW)
		return 0;
	if (protocol && protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return 0;
	if (socktype && socktype != SOCK_RAW && protocol && protocol != default_protocol(socktype))
		return 0;
	if ((node && strnlen(node, LCS_NODE_MAX + 1) > LCS_NODE_MAX) ||
	    (service && strnlen(service, LCS_SERVICE_MAX + 1) > LCS_SERVICE_MAX))
		return 0;
	return 1;
}

static uint32_t protocol_arg(const struct addrinfo *hints)
{
	int protocol = hints->ai_protocol ? hints->ai_protocol : default_protocol(hints->ai_socktype);
	if (protocol == IPPROTO_TCP)
		return LCS_PROTO_TCP;
	if (protocol == IPPROTO_UDP)
		return LCS_PROTO_UDP;
	return LCS_PROTO_NONE;
}

struct entry {
	int family;
	uint16_t port;
	uint32_t scope_id;
	unsigned char address[16];
};

static void decode_entry(const unsigned char *raw, struct entry *out)
{
	out->family = raw[LCS_AI_FAMILY_OFFSET] == 4 ? AF_INET : AF_INET6;
	out->port = lcs_get16(raw + LCS_AI_PORT_OFFSET);
	out->scope_id = lcs_get32(raw + LCS_AI_SCOPE_ID_OFFSET);
	memcpy(out->address, raw + LCS_AI_ADDRESS_OFFSET, sizeof out->address);
}

/* The sockaddr for an entry as the caller's family wants it; 0 when the
 * entry is filtered out.  IPv4 entries become v4-mapped IPv6 when asked. */
static socklen_t make_sockaddr(const struct entry *e, int family, int map_v4, struct sockaddr_in6 *out)
{
	memset(out, 0, sizeof *out);
	if (e->family == AF_INET && (family == AF_UNSPEC || family == AF_INET)) {
		struct sockaddr_in *in = (struct sockaddr_in *)out;
		in->sin_family = AF_INET;
		in->sin_port = htons(e->port);
		memcpy(&in->sin_addr, e->address, 4);
		return sizeof *in;
	}
	if (e->family == AF_INET && !map_v4)
		return 0;
	if (e->family == AF_INET6 && family == AF_INET)
		return 0;
	out->sin6_family = AF_INET6;
	out->sin6_port = htons(e->port);
	if (e->family == AF_INET) {
		out->sin6_addr.s6_addr[10] = out->sin6_addr.s6_addr[11] = 0xff;
		memcpy(out->sin6_addr.s6_addr + 12, e->address, 4);
	} else {
		memcpy(&out->sin6_addr, e->address, 16);
		out->sin6_scope_id = e->scope_id;
	}
	return sizeof *out;
}

static struct addrinfo *new_node(const struct sockaddr_in6 *addr, socklen_t addr_len,
                                 const struct socket_kind *kind)
{
	struct addrinfo *ai = malloc(sizeof *ai + addr_len);
	if (!ai)
		return NULL;
	memset(ai, 0, sizeof *ai);
	ai->ai_family = addr->sin6_family;
	ai->ai_socktype = kind->socktype;
	ai->ai_protocol = kind->protocol;
	ai->ai_addrlen = addr_len;
	ai->ai_addr = (struct sockaddr *)(ai + 1);
	memcpy(ai->ai_addr, addr, addr_len);
	return ai;
}

/* Build the caller's list from the reply's entries.  Returns 0 or an
 * EAI_ code. */
static int build_list(const struct lcs_reply *reply, const char *node,
                      const struct addrinfo *hints, int named_service, struct addrinfo **res)
{
	struct socket_kind kinds[3];
	int nkinds = socket_kinds(hints, named_service, kinds);
	struct addrinfo *head = NULL, **tail = &head;
	int have_v6 = 0, map_v4;
	struct entry e;

	for (unsigned i = 0; i < reply->count; i++)
		have_v6 |= reply->payload[i * LCS_ADDRINFO_ENTRY] == 6;
	map_v4 = hints->ai_family == AF_INET6 && hints->ai_flags & AI_V4MAPPED &&
	         (!have_v6 || hints->ai_flags & AI_ALL);
	for (unsigned i = 0; i < reply->count; i++) {
		struct sockaddr_in6 addr;
		socklen_t addr_len;
		decode_entry(reply->payload + i * LCS_ADDRINFO_ENTRY, &e);
		addr_len = make_sockaddr(&e, hints->ai_family, map_v4, &addr);
		for (int k = 0; addr_len && k < nkinds; k++) {
			if (!(*tail = new_node(&addr, addr_len, &kinds[k])))
				goto no_memory;
			tail = &(*tail)->ai_next;
		}
	}
	/* An address of the other family than the one asked for is glibc's
	 * EAI_ADDRFAMILY; a name with no address of that family, EAI_NONAME. */
	if (!head)
		return reply->count && numeric_node(node) ? EAI_ADDRFAMILY : EAI_NONAME;
	/* The reply carries no canonical name; the name asked for stands in. */
	if (hints->ai_flags & AI_CANONNAME && node && !(head->ai_canonname = strdup(node)))
		goto no_memory;
	*res = head;
	return 0;
no_memory:
	freeaddrinfo(head);
	return EAI_MEMORY;
}

static int answer(const struct lcs_reply *reply, const char *node, const struct addrinfo *hints,
                  int named_service, struct addrinfo **res, int saved_errno)
{
	int code;

	if (reply->kind == LCS_KIND_GAI_ERROR) {
		code = eai_codes[reply->result];
		errno = code == EAI_SYSTEM ? reply->error : saved_errno;
		return code;
	}
	code = build_list(reply, node, hints, named_service, res);
	errno = saved_errno;
	return code;
}

/* Ask the master for getaddrinfo's answer.  Returns LCS_ANSWERED with
 * *code set (and *res on success), or LCS_FALLBACK or LCS_FORWARDED (the
 * master said "forward": report the real call's code, gai_after) with
 * errno restored: the real getaddrinfo does the call with the program's
 * own arguments. */
static int resolve(const char *node, const char *service, const struct addrinfo *hints,
                   struct addrinfo **res, int *code)
{
	int saved_errno = errno;
	const struct addrinfo *given = hints ? hints : &default_hints;
	struct lcs_request request;
	struct lcs_reply reply;
	int answered = 0, forwarded = 0;

	if (!expressible(node, service, given))
		return LCS_FALLBACK;
	if (given->ai_flags & AI_NUMERICSERV && service && !all_digits(service)) {
		*code = EAI_NONAME;
		return LCS_ANSWERED;
	}
	/* A raw socket has no port: glibc refuses any service before looking up the node. */
	if (given->ai_socktype == SOCK_RAW && service) {
		*code = EAI_SERVICE;
		return LCS_ANSWERED;
	}
	lcs_request_init(&request, LCS_GETADDRINFO);
	request.flags = (node ? 1 : 0) | (service ? 2 : 0);
	request.arg = protocol_arg(given);
	request.string1 = node;
	request.len1 = node ? strlen(node) : 0;
	request.string2 = service;
	request.len2 = service ? strlen(service) : 0;
	if (lcs_enter()) {
		if (lcs_call(&request, &reply) == 0) {
			answered = reply.action == LCS_ACTION_RESULT;
			forwarded = reply.action == LCS_ACTION_FORWARD;
		}
		lcs_leave();
	}
	if (!answered) {
		errno = saved_errno;
		return forwarded ? lcs_report_later(&request, LCS_REPORT_RESULT, reply.id) : LCS_FALLBACK;
	}
	lcs_close_fds(&reply);
	*code = answer(&reply, node, given, service && !all_digits(service), res, saved_errno);
	return LCS_ANSWERED;
}

/* The real call's code, reported (as gai_code has it) when how is
 * LCS_FORWARDED. */
static int gai_after(int how, int code)
{
	if (how == LCS_FORWARDED)
		lcs_report_result(gai_code(code), code == EAI_SYSTEM ? errno : 0);
	return code;
}

LCS_EXPORT int getaddrinfo(const char *node, const char *service,
                           const struct addrinfo *hints, struct addrinfo **res)
{
	int code, how = resolve(node, service, hints, res, &code);

	return LCS_ANSWERED_OR_REAL_AFTER(gai_after, how, code, LCS_REAL(getaddrinfo)(node, service, hints, res));
}
