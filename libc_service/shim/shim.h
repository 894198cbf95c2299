/* libc-service LD_PRELOAD shim: shared declarations.
 *
 * The files, each depending only on those listed before it (file A depends
 * on B when A calls a function B defines; tests/test_shim_layout.py checks
 * that the graph has no cycle):
 *
 *   real.c     the one way to the real libc: lcs_real behind LCS_REAL, and
 *              the raw system calls the shim must make (lcs_*_raw)
 *   local.c    statically allowed trees (LIBC_SERVICE_LOCAL)
 *   rules.c    the policy's constant decisions (LIBC_SERVICE_RULES)
 *   ownfds.c   the shim's own descriptors (registration socket, channel)
 *              and the process (and thread) they belong to
 *   fdguard.c  the interposed close/close_range/closefrom/dup2/dup3 that
 *              guard those descriptors
 *   creds.c    the caller's umask and credentials every request carries
 *   codec.c    the bytes of the messages (docs/protocol.md, version 2):
 *              requests, the hello, reports, replies and their rules
 *   datagram.c one datagram with its descriptors, sent or received
 *   register.c a process's channel, made and handed to the master
 *   report.c   reports of the calls the rules decided or forwarded
 *   channel.c  the per-process channel: one call, its one reply, the
 *              threads sharing it (leader/follower), fork
 *   fs.c, meta.c, net.c, dns.c, stdio.c   the interposed entry points,
 *              each ending in LCS_ANSWERED_OR_REAL
 *   init.c     the constructor, starting each module; nothing depends on it
 *
 * Everything here is hidden; only the interposed functions are exported
 * (LCS_EXPORT).  Inside the shim an interposed function is never called by
 * its name (that would come back into the shim): its real definition is
 * LCS_REAL(name). */
#ifndef LCS_SHIM_H
#define LCS_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define LCS_EXPORT __attribute__((visibility("default")))

#define LCS_VERSION 3

/* Limits from docs/protocol.md. */
#define LCS_PATH_MAX_BYTES 4095
#define LCS_UNIX_PATH_MAX 108
#define LCS_NODE_MAX 1025
#define LCS_SERVICE_MAX 32
#define LCS_MAX_REQUEST_FDS 2
#define LCS_MAX_REPLY_FDS 4
#define LCS_MAX_ADDRINFO 128
#define LCS_MAX_GROUPS 64
/* A rename of two 4095-byte paths by a process in 64 groups. */
#define LCS_MAX_MESSAGE (LCS_REQUEST_HEADER + 4 * LCS_MAX_GROUPS + 2 * LCS_PATH_MAX_BYTES)
#define LCS_REQUEST_HEADER 72
#define LCS_REPLY_HEADER 48
#define LCS_STAT_RECORD 152
#define LCS_ADDRINFO_ENTRY 24

/* Field offsets (little-endian fields; docs/protocol.md).  Each equals
 * the Python codec's struct layout, wire_*.py (tests/test_wire_layout.py). */

/* Request header (wire_requests.REQUEST); the groups follow it, then the strings. */
#define LCS_REQ_MAGIC_OFFSET 0      /* "LCSq" */
#define LCS_REQ_VERSION_OFFSET 4    /* u16 */
#define LCS_REQ_FUNCTION_OFFSET 6   /* u16 */
#define LCS_REQ_PID_OFFSET 8        /* u32 */
#define LCS_REQ_TID_OFFSET 12       /* u32 */
#define LCS_REQ_ID_OFFSET 16        /* u64 */
#define LCS_REQ_FLAGS_OFFSET 24     /* u32 */
#define LCS_REQ_ARG_OFFSET 28       /* u32 */
#define LCS_REQ_ADDRESS_OFFSET 32   /* 16 bytes */
#define LCS_REQ_SCOPE_ID_OFFSET 48  /* u32 */
#define LCS_REQ_LEN1_OFFSET 52      /* u16 */
#define LCS_REQ_LEN2_OFFSET 54      /* u16 */
#define LCS_REQ_ROLES_OFFSET 56     /* u8, LCS_ROLE_* */
#define LCS_REQ_CONTEXT_OFFSET 57   /* u8, LCS_CONTEXT_* */
#define LCS_REQ_UMASK_OFFSET 58     /* u16 */
#define LCS_REQ_NGROUPS_OFFSET 60   /* u8 */
#define LCS_REQ_RESERVED_OFFSET 61  /* 3 zero bytes */
#define LCS_REQ_FSUID_OFFSET 64     /* u32 */
#define LCS_REQ_FSGID_OFFSET 68     /* u32 */

/* Reply header (wire_replies.REPLY); the payload follows it. */
#define LCS_REPLY_MAGIC_OFFSET 0     /* "LCSr" */
#define LCS_REPLY_VERSION_OFFSET 4   /* u16 */
#define LCS_REPLY_FUNCTION_OFFSET 6  /* u16 */
#define LCS_REPLY_TID_OFFSET 8       /* u32 */
#define LCS_REPLY_ERRNO_OFFSET 12    /* u32 */
#define LCS_REPLY_ID_OFFSET 16       /* u64 */
#define LCS_REPLY_RESULT_OFFSET 24   /* i64 */
#define LCS_REPLY_ACTION_OFFSET 32   /* u8 */
#define LCS_REPLY_KIND_OFFSET 33     /* u8 */
#define LCS_REPLY_COUNT_OFFSET 34    /* u16 */
#define LCS_REPLY_RESERVED_OFFSET 36 /* zero up to LCS_REPLY_HEADER */

/* Stat record (wire_replies.STAT). */
#define LCS_STAT_DEV_OFFSET 0      /* u64 */
#define LCS_STAT_INO_OFFSET 8      /* u64 */
#define LCS_STAT_NLINK_OFFSET 16   /* u64 */
#define LCS_STAT_RDEV_OFFSET 24    /* u64 */
#define LCS_STAT_SIZE_OFFSET 32    /* i64 */
#define LCS_STAT_BLKSIZE_OFFSET 40 /* i64 */
#define LCS_STAT_BLOCKS_OFFSET 48  /* i64 */
#define LCS_STAT_ATIME_OFFSET 56   /* i64 seconds */
#define LCS_STAT_MTIME_OFFSET 64   /* i64 seconds */
#define LCS_STAT_CTIME_OFFSET 72   /* i64 seconds */
#define LCS_STAT_MODE_OFFSET 80    /* u32 */
#define LCS_STAT_TYPE_OFFSET 84    /* u32 */
#define LCS_STAT_UID_OFFSET 88     /* u32 */
#define LCS_STAT_GID_OFFSET 92     /* u32 */
#define LCS_STAT_ATIME_NSEC_OFFSET 96  /* u32, < 10^9 */
#define LCS_STAT_MTIME_NSEC_OFFSET 100 /* u32 */
#define LCS_STAT_CTIME_NSEC_OFFSET 104 /* u32 */
#define LCS_STAT_BTIME_NSEC_OFFSET 108 /* u32 */
#define LCS_STAT_BTIME_OFFSET 112      /* i64 seconds */
#define LCS_STAT_ATTRIBUTES_OFFSET 120 /* u64 */
#define LCS_STAT_ATTRIBUTES_MASK_OFFSET 128 /* u64 */
#define LCS_STAT_MNT_ID_OFFSET 136     /* u64 */
#define LCS_STAT_PRESENT_OFFSET 144    /* u32: LCS_STAT_BTIME | LCS_STAT_MNT_ID */
#define LCS_STAT_RESERVED_OFFSET 148   /* u32, zero */
#define LCS_STAT_BTIME 1
#define LCS_STAT_MNT_ID 2

/* getaddrinfo entry (wire_replies.ADDRINFO). */
#define LCS_AI_FAMILY_OFFSET 0   /* u8: 4 or 6 */
#define LCS_AI_RESERVED_OFFSET 1 /* u8, zero */
#define LCS_AI_PORT_OFFSET 2     /* u16 */
#define LCS_AI_SCOPE_ID_OFFSET 4 /* u32 */
#define LCS_AI_ADDRESS_OFFSET 8  /* 16 bytes; an IPv4 address's last 12 zero */

/* Registration ("hello", wire_registration.REGISTRATION), with the channel's other end. */
#define LCS_HELLO_SIZE 16
#define LCS_HELLO_MAGIC_OFFSET 0     /* "LCSh" */
#define LCS_HELLO_VERSION_OFFSET 4   /* u16 */
#define LCS_HELLO_RESERVED1_OFFSET 6 /* u16, zero */
#define LCS_HELLO_PID_OFFSET 8       /* u32 */
#define LCS_HELLO_RESERVED2_OFFSET 12 /* u32, zero */

/* Report header (wire_reports.REPORT, LCS_REPORT_HEADER bytes).  A report of a
 * call the rules decided (LCS_REPORT_FORWARDED, LCS_REPORT_DENIED) goes on
 * with the request as it would have been sent; one of a call the master
 * answered "forward" (LCS_REPORT_RESULT) with the call's identity
 * (wire_reports.REPORT_CALL, LCS_REPORT_CALL_SIZE bytes). */
#define LCS_REPORT_MAGIC_OFFSET 0    /* "LCSo" */
#define LCS_REPORT_VERSION_OFFSET 4  /* u16 */
#define LCS_REPORT_OUTCOME_OFFSET 6  /* u8, LCS_REPORT_FORWARDED/DENIED/RESULT */
#define LCS_REPORT_RESERVED_OFFSET 7 /* u8, zero */
#define LCS_REPORT_ERRNO_OFFSET 8    /* u32 */
#define LCS_REPORT_LOST_OFFSET 12    /* u32 */
#define LCS_REPORT_RESULT_OFFSET 16  /* i64: the real call's result */
#define LCS_REPORT_DURATION_OFFSET 24 /* u64: ns the real call took (0: a denial, none) */

/* After the report header of a call the rules decided, before its request
 * (wire_reports.REPORT_NAMES, LCS_REPORT_NAMES_SIZE bytes): the lengths of the
 * names that follow it, in this order, no NUL: the directories its
 * relative paths are relative to (the first path's, the second's:
 * rename's new path; 0 for an absolute path or a directory the shim
 * cannot name: no /proc, a removed directory), then, in the first report
 * of a process (after exec or fork) only, its executable (/proc/self/exe)
 * and its arguments (/proc/self/cmdline: each ends with a NUL; whole
 * arguments only, up to LCS_REPORT_ARGV_MAX bytes). */
#define LCS_REPORT_NAMES_SIZE 8
#define LCS_REPORT_NAMES_DIR1_OFFSET 0 /* u16 */
#define LCS_REPORT_NAMES_DIR2_OFFSET 2 /* u16 */
#define LCS_REPORT_NAMES_EXE_OFFSET 4  /* u16 */
#define LCS_REPORT_NAMES_ARGV_OFFSET 6 /* u16 */
#define LCS_REPORT_ARGV_MAX 4096

/* The identity of a call the master answered "forward" (wire_reports.REPORT_CALL):
 * its request header's pid, tid, id and function. */
#define LCS_REPORT_CALL_SIZE 20
#define LCS_REPORT_CALL_PID_OFFSET 0       /* u32 */
#define LCS_REPORT_CALL_TID_OFFSET 4       /* u32 */
#define LCS_REPORT_CALL_ID_OFFSET 8        /* u64 */
#define LCS_REPORT_CALL_FUNCTION_OFFSET 16 /* u16 */
#define LCS_REPORT_CALL_RESERVED_OFFSET 18 /* u16, zero */

/* The rule table (rules.c; libc_service/rules.py HEADER and ENTRY). */
#define LCS_RULES_VERSION 1
#define LCS_RULES_HEADER 6
#define LCS_RULES_MAGIC_OFFSET 0   /* "LCSR" */
#define LCS_RULES_VERSION_OFFSET 4 /* u8 */
#define LCS_RULES_COUNT_OFFSET 5   /* u8 */
#define LCS_RULES_ENTRY 6          /* then the entry's program */
#define LCS_RULES_ENTRY_FUNCTION_OFFSET 0 /* u8 */
#define LCS_RULES_ENTRY_ACTION_OFFSET 1   /* u8 */
#define LCS_RULES_ENTRY_ERRNO_OFFSET 2    /* u16 */
#define LCS_RULES_ENTRY_SIZE_OFFSET 4     /* u16: the program's bytes */

/* Function codes. */
enum {
	LCS_OPEN = 1,
	LCS_OPENAT,
	LCS_UNLINK,
	LCS_RENAME,
	LCS_STAT,
	LCS_LSTAT,
	LCS_ACCESS,
	LCS_EACCESS,
	LCS_MKDIR,
	LCS_RMDIR,
	LCS_CONNECT_UNIX,
	LCS_CONNECT_INET,
	LCS_CONNECT_INET6,
	LCS_BIND_UNIX,
	LCS_BIND_INET,
	LCS_BIND_INET6,
	LCS_GETADDRINFO,
	/* Metadata changes (meta.c). */
	LCS_CHMOD,
	LCS_FCHMOD,
	LCS_CHOWN,
	LCS_FCHOWN,
	LCS_UTIMENS,
	LCS_FUTIMENS,
};

/* Metadata change flag bits: AT_SYMLINK_NOFOLLOW; chown's owner and group
 * present (in address[0..7]); utimens's now/omit per time (the times are
 * address[0..15] as two int64 ns). */
enum {
	LCS_META_NO_FOLLOW = 1u << 0,
	LCS_CHOWN_OWNER = 1u << 1,
	LCS_CHOWN_GROUP = 1u << 2,
	LCS_ATIME_NOW = 1u << 1,
	LCS_ATIME_OMIT = 1u << 2,
	LCS_MTIME_NOW = 1u << 3,
	LCS_MTIME_OMIT = 1u << 4,
};

/* Open flag bits. */
enum {
	LCS_O_READ_ONLY = 1u << 0,
	LCS_O_WRITE_ONLY = 1u << 1,
	LCS_O_READ_WRITE = 1u << 2,
	LCS_O_APPEND = 1u << 3,
	LCS_O_CREATE = 1u << 4,
	LCS_O_DIRECTORY = 1u << 5,
	LCS_O_EXCLUSIVE = 1u << 6,
	LCS_O_NO_FOLLOW = 1u << 7,
	LCS_O_PATH = 1u << 8,
	LCS_O_SYNC_ALL_ON_WRITE = 1u << 9,
	LCS_O_TEMPORARY = 1u << 10,
	LCS_O_TRUNCATE = 1u << 11,
	/* Flags that grant nothing but change the call. */
	LCS_O_NON_BLOCKING = 1u << 24,
	LCS_O_NO_CTTY = 1u << 25,
	LCS_O_CLOSE_ON_EXEC = 1u << 26,
	LCS_O_SYNC_DATA_ON_WRITE = 1u << 27,
	LCS_O_NO_ATIME = 1u << 28,
	LCS_O_DIRECT = 1u << 29,
	LCS_O_ASYNC_SIGNALS = 1u << 30,
	LCS_O_LARGE_FILE = 1u << 31,
};

/* rename flag bits. */
enum { LCS_RENAME_NO_REPLACE = 1u << 0 };

/* fd roles (LCS_REQ_ROLES_OFFSET); a relative connect_unix/bind_unix path
 * carries the working directory as dir1. */
enum {
	LCS_ROLE_DIR1 = 1u << 0,
	LCS_ROLE_DIR2 = 1u << 1,
	LCS_ROLE_SOCKET = 1u << 2,
};

/* Context bits (LCS_REQ_CONTEXT_OFFSET): which of the caller's umask
 * (LCS_REQ_UMASK_OFFSET), fsuid (LCS_REQ_FSUID_OFFSET), fsgid
 * (LCS_REQ_FSGID_OFFSET) and groups (count at LCS_REQ_NGROUPS_OFFSET, the
 * list after the header) the request carries. */
enum {
	LCS_CONTEXT_UMASK = 1u << 0,
	LCS_CONTEXT_FSUID = 1u << 1,
	LCS_CONTEXT_FSGID = 1u << 2,
	LCS_CONTEXT_GROUPS = 1u << 3,
};

/* Reply actions and payload kinds. */
enum { LCS_ACTION_RESULT = 0, LCS_ACTION_FORWARD = 1 };
enum { LCS_KIND_NONE = 0, LCS_KIND_STAT, LCS_KIND_ADDRINFO, LCS_KIND_GAI_ERROR };

/* getaddrinfo protocol argument. */
enum { LCS_PROTO_NONE = 0, LCS_PROTO_TCP = 6, LCS_PROTO_UDP = 17 };

struct lcs_request {
	uint16_t function;
	uint32_t flags;
	uint32_t arg;
	unsigned char address[16];
	uint32_t scope_id;
	const char *string1;
	size_t len1;
	const char *string2;
	size_t len2;
	/* Indexed by role bit (dir1, dir2, socket); -1 when absent. */
	int fds[3];
	/* For a report: the directory descriptor of each relative path
	 * (AT_FDCWD for the working directory); -1 for none. */
	int dirs[2];
};

struct lcs_reply {
	uint64_t id; /* the request's id on the channel (lcs_call sets it) */
	int64_t result;
	int error;
	int action;
	int kind;
	unsigned count;
	int nfds;
	int fds[LCS_MAX_REPLY_FDS];
	size_t payload_len;
	unsigned char payload[LCS_MAX_MESSAGE - LCS_REPLY_HEADER];
};

/* Decoded stat record. */
struct lcs_stat {
	uint64_t dev, ino, nlink, rdev;
	int64_t size, blksize, blocks;
	struct timespec atime, mtime, ctime, btime;
	uint32_t mode, type, uid, gid;
	uint64_t attributes, attributes_mask, mnt_id;
	uint32_t present; /* LCS_STAT_BTIME, LCS_STAT_MNT_ID */
};

/* ---- the channel: one call, its one reply (channel.c) ---- */

/* A call into the shim: lcs_enter() returns 1 when this thread may talk to
 * the master (the shim is active, the channel is usable and this thread is
 * not already inside the shim); the caller must then call lcs_leave().
 * Returns 0 when the call must go straight to the real libc. */
int lcs_enter(void);
void lcs_leave(void);

/* Send one request and wait for its reply.  Returns 0 with *reply filled in
 * (received descriptors owned by the caller), or -1 when the channel cannot
 * be used (it is then dead for this process): fall back to the real libc. */
int lcs_call(const struct lcs_request *request, struct lcs_reply *reply);

void lcs_close_fds(struct lcs_reply *reply);

/* What an answered call returns to the program: the reply's result, with
 * the caller's errno (saved_errno) kept on success, exactly the master's
 * errno on failure.  Closes any descriptor the reply still holds. */
int lcs_finish(struct lcs_reply *reply, int saved_errno);

/* Fill the request's directory role for a path: nothing for an absolute
 * path, the caller's dirfd, or a fresh O_PATH descriptor of the cwd for
 * AT_FDCWD (*owned set; close it after the call).  Returns -1 when the
 * dirfd is not an open descriptor: the real libc reports that. */
int lcs_path_dir(int dirfd, const char *path, int *fd, int *owned);

/* The channel's start (from the constructor): registers its fork handler,
 * which forgets the parent's channel, reports and thread ids. */
void lcs_channel_init(void);

/* ---- registration (register.c) ---- */

/* Called with the channel's lock held and no channel: make one, hand its
 * other end to the master with this process's hello over the
 * registration socket; returns the channel (high, close-on-exec) or -1. */
int lcs_register_channel(void);

/* ---- the bytes of the messages (codec.c) ---- */

void lcs_request_init(struct lcs_request *request, uint16_t function);

/* The request as one datagram into buf (room for LCS_MAX_MESSAGE; the
 * request's strings must fit), with the caller's context (creds.c);
 * returns its length and puts the descriptors it carries, in role order,
 * into fds (room for 3) and their count into *nfds. */
size_t lcs_encode_request(unsigned char *buf, const struct lcs_request *request, pid_t pid, pid_t tid,
                          uint64_t id, int *fds, int *nfds);

/* The registration hello (LCS_HELLO_SIZE bytes). */
void lcs_encode_hello(unsigned char *hello, pid_t pid);

/* A report's header (LCS_REPORT_HEADER bytes; an error outside 1..4095
 * is sent as 0), the lengths of the names after it (LCS_REPORT_NAMES_SIZE
 * bytes: the directories, the executable, the arguments) and the identity
 * of a call the master answered "forward" (LCS_REPORT_CALL_SIZE bytes). */
void lcs_encode_report_header(unsigned char *buf, int outcome, int64_t result, int error, unsigned lost,
                              uint64_t duration);
void lcs_encode_report_names(unsigned char *names, const size_t dirs[2], size_t exe, size_t argv);
void lcs_encode_report_call(unsigned char *buf, pid_t pid, pid_t tid, uint64_t id, uint16_t function);

/* A received datagram's addressee: 0 with *tid set when it has a reply's
 * header (magic, version, reserved bytes zero), -1 otherwise. */
int lcs_reply_tid(const unsigned char *buf, size_t len, pid_t *tid);

/* The reply in a datagram with a reply's header (lcs_reply_tid), for the
 * request of function and id, carrying nfds descriptors: 0 with *reply
 * filled in (its fds left to the caller, reply->nfds set), -1 when it
 * breaks a rule of docs/protocol.md "Reply" (reply->nfds 0). */
int lcs_decode_reply(const unsigned char *buf, size_t len, uint16_t function, uint64_t id, int nfds,
                     struct lcs_reply *reply);

void lcs_stat_decode(const unsigned char *record, struct lcs_stat *out);

/* ---- datagrams with descriptors (datagram.c) ---- */

/* How long a caller polls for its reply before it sleeps, when it may run
 * on more than one CPU. */
#define LCS_SPIN_NS 50000

/* One datagram received: its bytes and the descriptors it carried (one
 * more than a reply may carry: that one is refused by the codec). */
struct lcs_incoming {
	unsigned char buf[LCS_MAX_MESSAGE];
	size_t len;
	int fds[LCS_MAX_REPLY_FDS + 1];
	int nfds;
};

/* Send buf as one datagram with up to 3 descriptors (SCM_RIGHTS), flags
 * added to MSG_NOSIGNAL, EINTR retried; sendmsg's return value. */
ssize_t lcs_send_datagram(int fd, const void *buf, size_t len, const int *fds, int nfds, int flags);

/* Receive one datagram (polling up to LCS_SPIN_NS first, see datagram.c):
 * 0 with *in filled, -1 on EOF, error, truncation or a control message
 * other than SCM_RIGHTS, every received descriptor then closed. */
int lcs_receive_datagram(int fd, struct lcs_incoming *in);
void lcs_close_incoming(struct lcs_incoming *in);

/* CLOCK_MONOTONIC in ns (the vDSO: no system call). */
static inline int64_t lcs_monotonic_ns(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* What an entry point does with a call: the real libc does it
 * (LCS_FALLBACK), the master or the rules answered it (LCS_ANSWERED), or
 * the real libc does it and a report of its result is due (LCS_FORWARDED:
 * the entry point passes the real call's result to LCS_ANSWERED_OR_REAL). */
enum { LCS_FALLBACK = 0, LCS_ANSWERED = 1, LCS_FORWARDED = 2 };

/* open/openat through the master (fs.c), for fopen and opendir: AT_FDCWD
 * asks as open, anything else as openat.  Returns LCS_ANSWERED with
 * *result set (errno set when it is -1), or LCS_FALLBACK / LCS_FORWARDED:
 * the real function must do the call (then LCS_ANSWERED_OR_REAL). */
int lcs_open_call(int dirfd, const char *path, int flags, unsigned mode, int *result);

/* ---- the caller's umask and credentials (creds.c) ---- */

/* Read the umask from /proc/self/status (the constructor). */
void lcs_creds_init(void);

/* Fill a request header's context (LCS_REQ_CONTEXT_OFFSET to the header's
 * end, see the enum above) for
 * the calling thread and write its groups at groups (room for
 * LCS_MAX_GROUPS); returns how many groups were written. */
unsigned lcs_context(unsigned char *header, unsigned char *groups);

/* Whether the caller is the process the shim's state belongs to (not a
 * vfork()ed child sharing its memory). */
int lcs_own_process(void);

/* ---- statically allowed trees (local.c) ----
 *
 * LIBC_SERVICE_LOCAL, set by spawn() only under a sandbox: the trees the
 * Landlock ruleset lets the slave read by itself.  A read-only call on an
 * absolute path without a ".." component inside one of them goes to the
 * real libc with no round trip; the kernel checks the resolved object. */
void lcs_local_init(void);
int lcs_local(const char *path);

/* ---- the policy's constant decisions (rules.c) ----
 *
 * LIBC_SERVICE_RULES, set by spawn(): what the router would certainly
 * answer for a file-system call, compiled by libc_service/rules.py.
 * lcs_rules() says forward, deny (*error set) or ask the master; path1
 * is NULL for a descriptor's metadata change (fchmod, fchown, futimens). */
enum { LCS_RULE_ASK = 0, LCS_RULE_FORWARD, LCS_RULE_DENY };
void lcs_rules_init(void);

/* The absolute name of the directory dirfd (AT_FDCWD: the working
 * directory) is open on, read from /proc/self/fd/N (through a kept
 * descriptor of /proc/self/fd, ownfds.c) or with getcwd(2): the kernel's
 * name of the directory, as the master reads its copy of the descriptor.
 * out has room for
 * LCS_PATH_MAX_BYTES + 1; returns 1 with out NUL-terminated and *out_len
 * set, 0 when it cannot be named exactly: no /proc (a sandbox), not a
 * directory path, a removed directory (" (deleted)"), too long.  errno
 * may change. */
int lcs_directory_name(int dirfd, char *out, size_t *out_len);
int lcs_rules(uint16_t function, uint32_t flags, int dirfd1, const char *path1, int dirfd2,
              const char *path2, int *error);

/* ---- reports (report.c) ----
 *
 * Tell the master's observers about calls (only with
 * LIBC_SERVICE_REPORTS=1): never blocks, a report the socket does not
 * take is counted as lost, errno is kept.
 *
 * lcs_report: a call the rules denied, at once.
 * lcs_report_later: a call the real libc is about to do, forwarded by the
 *   rules (LCS_REPORT_FORWARDED, the request is kept) or by the master
 *   (LCS_REPORT_RESULT, id: the reply's).  Returns LCS_FORWARDED when a
 *   report is due, LCS_FALLBACK when not (reports off, or too deeply
 *   nested); the caller then does the real call and gives its result to
 *   lcs_report_result (LCS_ANSWERED_OR_REAL), which sends the report. */
enum { LCS_REPORT_FORWARDED = 1, LCS_REPORT_DENIED = 2, LCS_REPORT_RESULT = 3 };
#define LCS_REPORT_HEADER 32
void lcs_report(const struct lcs_request *request, int outcome, int error);
int lcs_report_later(const struct lcs_request *request, int outcome, uint64_t id);
void lcs_report_result(int64_t result, int error);

/* The step every interposed entry point that asks ends with: the answer
 * when the master or the rules gave one (how is LCS_ANSWERED), else the
 * real function, called with the program's own arguments (real_call is
 * evaluated only then, after how and before anything else touches errno)
 * and its value passed through after(how, value), which reports it when
 * how is LCS_FORWARDED and returns it unchanged, errno kept.  It adds no
 * lock, allocation or system call of its own: it is as safe in a signal
 * handler or a vfork()ed child as the asking was.
 *
 * LCS_ANSWERED_OR_REAL is it for the functions returning a number (a
 * negative value is a failure with errno); a function returning a pointer
 * gives its own after (LCS_ANSWERED_OR_REAL_AFTER). */
#define LCS_ANSWERED_OR_REAL_AFTER(after, how, answer, real_call)                     \
	({                                                                            \
		int lcs_how_ = (how);                                                 \
		lcs_how_ == LCS_ANSWERED ? (answer) : after(lcs_how_, real_call);     \
	})
#define LCS_ANSWERED_OR_REAL(how, answer, real_call) \
	LCS_ANSWERED_OR_REAL_AFTER(LCS_AFTER, how, answer, real_call)

/* LCS_ANSWERED_OR_REAL's after: the real call's value, its result
 * reported when how is LCS_FORWARDED (a negative value is a failure with
 * errno, kept for the program). */
#define LCS_AFTER(how, call)                                                    \
	({                                                                      \
		__typeof__(call) lcs_value_ = (call);                           \
		if ((how) == LCS_FORWARDED)                                     \
			lcs_report_result(lcs_value_, lcs_value_ < 0 ? errno : 0); \
		lcs_value_;                                                     \
	})

/* The reports' start (from the constructor): reads LIBC_SERVICE_REPORTS. */
void lcs_report_init(void);

/* In the child of fork(): no report is pending, the program is not yet
 * named.  Async-signal-safe. */
void lcs_report_forked(void);

/* ---- the shim's own descriptors (ownfds.c) ----
 *
 * The registration socket and the channel live at high numbers (from
 * LCS_FD_BASE) and are guarded (fdguard.c): close, close_range and
 * closefrom skip them, dup2/dup3 onto them move them away first.  Their
 * numbers are read atomically, from any thread or signal handler. */
#define LCS_FD_BASE 1000

/* From the constructor: the registration socket named by LIBC_SERVICE_FD,
 * moved high (the environment follows it), and this process as the
 * owner; -1 when there is none (the shim stays inert).  The shim becomes
 * active when lcs_ownfds_activate() makes it the registration socket. */
int lcs_ownfds_init(void);
void lcs_ownfds_activate(int fd);

/* In the child of fork(): close our copy of the parent's channel, forget
 * it, and own the state.  Async-signal-safe. */
void lcs_ownfds_forked(void);

/* The registration socket (-1: the shim is inert) and the channel (-1:
 * none yet); channel.c sets the channel under its lock. */
int lcs_reg_fd(void);
int lcs_chan_fd(void);
void lcs_set_chan_fd(int fd);

/* The process the shim's state belongs to, and whether the caller is it
 * (not a vfork()ed child sharing its memory). */
int lcs_own_pid(void);
int lcs_own_process(void);

/* The calling thread's id (cached per thread; gettid(2) once). */
int lcs_own_tid(void);

int lcs_is_seqpacket(int fd);

/* A duplicate of fd at LCS_FD_BASE or above (or below the descriptor limit
 * when that is lower), close-on-exec if asked; fd itself when it is high
 * already or there is no room; -1 on error.  The caller closes fd. */
int lcs_move_high(int fd, int cloexec);

/* As lcs_move_high, but always a new descriptor (when there is room),
 * even if fd is high already. */
int lcs_dup_high(int fd, int cloexec);

/* The guarded descriptors in ascending order; returns how many (0 to
 * LCS_GUARDED_MAX). */
#define LCS_GUARDED_MAX 3
int lcs_guarded_fds(int fds[LCS_GUARDED_MAX]);

/* A descriptor of this process's /proc/self/fd (opened on first use, at a
 * high number, close-on-exec, guarded like the others), or -1: an inert
 * shim, a vfork()ed child, no /proc.  A name read through it counts only
 * if lcs_proc_fds_unchanged(*generation) still holds afterwards: the
 * program may have dup2()ed onto its number meanwhile. */
int lcs_proc_fds(unsigned *generation);
int lcs_proc_fds_unchanged(unsigned generation);

/* fd is about to be replaced by the program (dup2/dup3 onto it): if it is
 * a guarded descriptor, move it elsewhere.  Returns -1 (errno set) when it
 * could not be moved. */
int lcs_evict(int fd);

/* ---- the descriptor guard (fdguard.c) ---- */

/* Resolve the guard's real functions (from the constructor: no dlsym in
 * a signal handler later). */
void lcs_fdguard_init(void);

/* dup3 as the program's dup3 does it: a guarded newfd is moved away first. */
int lcs_dup3_guarded(int oldfd, int newfd, int flags);

/* ---- the real libc (real.c) ----
 *
 * The one way to call a real libc function the shim interposes:
 * LCS_REAL(name)(args...).  It resolves the next definition after the
 * shim's (dlsym RTLD_NEXT) once per call site and caches it; a function
 * the libc lacks fails with ENOSYS.  No other file calls dlsym. */
void *lcs_real(const char *name);

#define LCS_REAL(name)                                                  \
	({                                                              \
		static __typeof__(name) *real_fn;                       \
		__typeof__(name) *fn = __atomic_load_n(&real_fn, __ATOMIC_RELAXED); \
		if (!fn) {                                              \
			fn = (__typeof__(name) *)lcs_real(#name);      \
			__atomic_store_n(&real_fn, fn, __ATOMIC_RELAXED); \
		}                                                       \
		fn;                                                     \
	})

/* Raw system calls, for the few places where even the real libc function
 * must not be used; real.c says why for each.  No other file calls
 * syscall(). */

/* Close one of the shim's own descriptors: never the guarded close, never
 * a cancellation point; errno kept. */
void lcs_close_raw(int fd);
/* close(2) for closefrom's fallback around the guarded descriptors. */
int lcs_close_unguarded(int fd);
int lcs_close_range_raw(unsigned first, unsigned last, int flags);
int lcs_fcntl_raw(int fd, int command, long arg);
int lcs_openat_raw(int dirfd, const char *path, int flags);
long lcs_read_raw(int fd, void *buf, size_t len);
int lcs_getpid_raw(void);
int lcs_gettid_raw(void);
mode_t lcs_umask_raw(mode_t mask);
int lcs_getgroups_raw(int size, gid_t *list);
long lcs_setfsuid_raw(long id);
long lcs_setfsgid_raw(long id);

#endif
