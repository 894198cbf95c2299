/* The bytes of the messages the shim sends and receives (docs/protocol.md,
 * version 2): requests, the registration hello, the fixed parts of a
 * report, replies (decoded and held to every rule of "Reply") and stat
 * records.  No I/O: the caller sends and receives.
 *
 * Depends on creds.c (the context every request carries). */
#include <string.h>

#include "le.h"
#include "shim.h"

void lcs_request_init(struct lcs_request *request, uint16_t function)
{
	memset(request, 0, sizeof *request);
	request->function = function;
	request->fds[0] = request->fds[1] = request->fds[2] = -1;
	request->dirs[0] = request->dirs[1] = -1;
}

size_t lcs_encode_request(unsigned char *buf, const struct lcs_request *request, pid_t pid, pid_t tid,
                          uint64_t id, int *fds, int *nfds)
{
	unsigned roles = 0;
	unsigned char *strings;

	memset(buf, 0, LCS_REQUEST_HEADER);
	memcpy(buf + LCS_REQ_MAGIC_OFFSET, "LCSq", 4);
	lcs_put16(buf + LCS_REQ_VERSION_OFFSET, LCS_VERSION);
	lcs_put16(buf + LCS_REQ_FUNCTION_OFFSET, request->function);
	lcs_put32(buf + LCS_REQ_PID_OFFSET, pid);
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

void lcs_encode_hello(unsigned char *hello, pid_t pid)
{
	memset(hello, 0, LCS_HELLO_SIZE);
	memcpy(hello + LCS_HELLO_MAGIC_OFFSET, "LCSh", 4);
	lcs_put16(hello + LCS_HELLO_VERSION_OFFSET, LCS_VERSION);
	lcs_put32(hello + LCS_HELLO_PID_OFFSET, pid);
}

void lcs_encode_report_header(unsigned char *buf, int outcome, int64_t result, int error, unsigned lost,
                              uint64_t duration)
{
	memset(buf, 0, LCS_REPORT_HEADER);
	memcpy(buf + LCS_REPORT_MAGIC_OFFSET, "LCSo", 4);
	lcs_put16(buf + LCS_REPORT_VERSION_OFFSET, LCS_VERSION);
	buf[LCS_REPORT_OUTCOME_OFFSET] = outcome;
	lcs_put32(buf + LCS_REPORT_ERRNO_OFFSET, error > 0 && error < 4096 ? error : 0);
	lcs_put32(buf + LCS_REPORT_LOST_OFFSET, lost);
	lcs_put64(buf + LCS_REPORT_RESULT_OFFSET, (uint64_t)result);
	lcs_put64(buf + LCS_REPORT_DURATION_OFFSET, duration);
}

void lcs_encode_report_call(unsigned char *buf, pid_t pid, pid_t tid, uint64_t id, uint16_t function)
{
	lcs_put32(buf + LCS_REPORT_CALL_PID_OFFSET, pid);
	lcs_put32(buf + LCS_REPORT_CALL_TID_OFFSET, tid);
	lcs_put64(buf + LCS_REPORT_CALL_ID_OFFSET, id);
	lcs_put16(buf + LCS_REPORT_CALL_FUNCTION_OFFSET, function);
	lcs_put16(buf + LCS_REPORT_CALL_RESERVED_OFFSET, 0);
}

void lcs_encode_report_names(unsigned char *names, const size_t dirs[2], size_t exe, size_t argv)
{
	memset(names, 0, LCS_REPORT_NAMES_SIZE);
	lcs_put16(names + LCS_REPORT_NAMES_DIR1_OFFSET, dirs[0]);
	lcs_put16(names + LCS_REPORT_NAMES_DIR2_OFFSET, dirs[1]);
	lcs_put16(names + LCS_REPORT_NAMES_EXE_OFFSET, exe);
	lcs_put16(names + LCS_REPORT_NAMES_ARGV_OFFSET, argv);
}

int lcs_reply_tid(const unsigned char *buf, size_t len, pid_t *tid)
{
	if (len < LCS_REPLY_HEADER || memcmp(buf + LCS_REPLY_MAGIC_OFFSET, "LCSr", 4) ||
	    lcs_get16(buf + LCS_REPLY_VERSION_OFFSET) != LCS_VERSION)
		return -1;
	for (int i = LCS_REPLY_RESERVED_OFFSET; i < LCS_REPLY_HEADER; i++)
		if (buf[i])
			return -1;
	*tid = lcs_get32(buf + LCS_REPLY_TID_OFFSET);
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

int lcs_decode_reply(const unsigned char *buf, size_t len, uint16_t function, uint64_t id, int nfds,
                     struct lcs_reply *reply)
{
	if (lcs_get16(buf + LCS_REPLY_FUNCTION_OFFSET) != function || lcs_get64(buf + LCS_REPLY_ID_OFFSET) != id)
		return -1;
	if (nfds > max_reply_fds(function))
		return -1;
	reply->error = lcs_get32(buf + LCS_REPLY_ERRNO_OFFSET);
	reply->result = (int64_t)lcs_get64(buf + LCS_REPLY_RESULT_OFFSET);
	reply->action = buf[LCS_REPLY_ACTION_OFFSET];
	reply->kind = buf[LCS_REPLY_KIND_OFFSET];
	reply->count = lcs_get16(buf + LCS_REPLY_COUNT_OFFSET);
	reply->payload_len = len - LCS_REPLY_HEADER;
	reply->nfds = nfds;
	memcpy(reply->payload, buf + LCS_REPLY_HEADER, reply->payload_len);
	if (reply->error < 0 || reply->error > 4095 || !valid_payload(function, reply)) {
		reply->nfds = 0;
		return -1;
	}
	return 0;
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
