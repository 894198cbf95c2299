/* The policy's constant decisions, applied with no round trip.
 *
 * spawn() puts a rule table compiled from the router (libc_service/rules.py,
 * which documents the format) in LIBC_SERVICE_RULES, hex-encoded.  The
 * constructor decodes it once into a static buffer and validates all of it;
 * a malformed table is ignored whole, and every call is asked as before.
 * Exec'd programs inherit the variable and decode it again.
 *
 * For a file-system call or a metadata change the table either proves what the router would
 * answer (forward, or fail with an errno) or says to ask the master.  It
 * asks for anything it cannot evaluate exactly as the router does: a
 * function it has no entry for, and, when the entry looks at paths, a
 * relative path whose directory it cannot name as the master would
 * (through /proc, as the master reads its copy of the descriptor).  ".."
 * is folded lexically, exactly as the router folds it.  Like the router's
 * conditions it compares paths lexically; the sandbox, not this string
 * test, is the boundary.
 *
 * Everything here reads memory written once by the constructor: no locks,
 * no allocation, usable from a signal handler or a vfork()ed child. */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "le.h"
#include "shim.h"

#define ENV_NAME "LIBC_SERVICE_RULES="
#define RULES_BYTES 49152
#define STACK_MAX 32

enum { OP_TRUE = 1, OP_FALSE, OP_UNDER, OP_FLAGS, OP_NOT, OP_AND, OP_OR, OP_RELATIVE, OP_UNDER_SET };
enum { ACTION_ASK = 0, ACTION_FORWARD, ACTION_DENY };

struct entry {
	const unsigned char *program;
	size_t len;
	int action;
	int error;
	int paths;    /* the program has an UNDER */
	int relative; /* the program has a RELATIVE */
};

static unsigned char table[RULES_BYTES];
static struct entry entries[LCS_FUTIMENS + 1];
static int loaded;

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decode the hex text into table; returns its length, or -1. */
static long decode(const char *text)
{
	size_t len = strnlen(text, 2 * RULES_BYTES + 1);

	if (len % 2 || len > 2 * RULES_BYTES)
		return -1;
	for (size_t i = 0; i < len / 2; i++) {
		int high = hex_digit(text[2 * i]), low = hex_digit(text[2 * i + 1]);
		if (high < 0 || low < 0)
			return -1;
		table[i] = high << 4 | low;
	}
	return len / 2;
}

/* Byte order of two strings, as Python orders bytes: a prefix first. */
static int order(const unsigned char *a, size_t a_len, const unsigned char *b, size_t b_len)
{
	int r = memcmp(a, b, a_len < b_len ? a_len : b_len);

	if (r)
		return r;
	return a_len < b_len ? -1 : a_len > b_len;
}

/* A set's operand: count:u16, offset:u16[count], then the roots. */
struct root_set {
	const unsigned char *offsets;
	const unsigned char *blob;
	size_t count, blob_len;
};

static struct root_set root_set(const unsigned char *operand, size_t size)
{
	struct root_set set = { .count = lcs_get16(operand) };

	set.offsets = operand + 2;
	set.blob = operand + 2 + 2 * set.count;
	set.blob_len = size - 2 - 2 * set.count;
	return set;
}

static const unsigned char *set_root(const struct root_set *set, size_t k, size_t *len)
{
	size_t start = lcs_get16(set->offsets + 2 * k);
	size_t end = k + 1 < set->count ? lcs_get16(set->offsets + 2 * (k + 1)) : set->blob_len;

	*len = end - start;
	return set->blob + start;
}

/* Whether a set's operand of size bytes is well formed: at least two
 * roots, each absolute and non-empty, in strictly ascending order. */
static int valid_set(const unsigned char *operand, size_t size)
{
	struct root_set set;
	const unsigned char *previous = NULL;
	size_t previous_len = 0;

	if (size < 2)
		return 0;
	set = root_set(operand, size);
	if (set.count < 2 || size - 2 < 2 * set.count)
		return 0;
	for (size_t k = 0; k < set.count; k++) {
		size_t start = lcs_get16(set.offsets + 2 * k), len;
		size_t end = k + 1 < set.count ? lcs_get16(set.offsets + 2 * (k + 1)) : set.blob_len;
		const unsigned char *root;

		if (start >= end || end > set.blob_len || (k == 0 && start != 0))
			return 0;
		root = set_root(&set, k, &len);
		if (root[0] != '/' || (previous && order(previous, previous_len, root, len) >= 0))
			return 0;
		previous = root;
		previous_len = len;
	}
	return 1;
}

/* Whether program is well formed: known operations, operands in bounds,
 * the stack within STACK_MAX, never below empty, one value at the end. */
static int valid_program(const unsigned char *program, size_t len, int *paths, int *relative)
{
	int depth = 0;

	for (size_t i = 0; i < len;) {
		switch (program[i++]) {
		case OP_RELATIVE:
			*relative = 1;
			/* fall through */
		case OP_TRUE:
		case OP_FALSE:
			depth++;
			break;
		case OP_UNDER:
			if (len - i < 2 || len - i - 2 < lcs_get16(program + i))
				return 0;
			if (lcs_get16(program + i) == 0 || program[i + 2] != '/')
				return 0;
			i += 2 + lcs_get16(program + i);
			*paths = 1;
			depth++;
			break;
		case OP_UNDER_SET:
			if (len - i < 2 || len - i - 2 < lcs_get16(program + i))
				return 0;
			if (!valid_set(program + i + 2, lcs_get16(program + i)))
				return 0;
			i += 2 + lcs_get16(program + i);
			*paths = 1;
			depth++;
			break;
		case OP_FLAGS:
			if (len - i < 4)
				return 0;
			i += 4;
			depth++;
			break;
		case OP_NOT:
			if (depth < 1)
				return 0;
			break;
		case OP_AND:
		case OP_OR:
			if (depth < 2)
				return 0;
			depth--;
			break;
		default:
			return 0;
		}
		if (depth > STACK_MAX)
			return 0;
	}
	return len == 0 || depth == 1;
}

static int parse(size_t len)
{
	size_t at = LCS_RULES_HEADER;
	unsigned count;

	if (len < LCS_RULES_HEADER || memcmp(table + LCS_RULES_MAGIC_OFFSET, "LCSR", 4) ||
	    table[LCS_RULES_VERSION_OFFSET] != LCS_RULES_VERSION)
		return 0;
	count = table[LCS_RULES_COUNT_OFFSET];
	for (unsigned n = 0; n < count; n++) {
		struct entry *entry;
		unsigned function;
		size_t size;

		const unsigned char *raw = table + at;

		if (len - at < LCS_RULES_ENTRY)
			return 0;
		function = raw[LCS_RULES_ENTRY_FUNCTION_OFFSET];
		size = lcs_get16(raw + LCS_RULES_ENTRY_SIZE_OFFSET);
		if (function < LCS_OPEN || function > LCS_FUTIMENS || len - at - LCS_RULES_ENTRY < size)
			return 0;
		entry = &entries[function];
		if (entry->program || raw[LCS_RULES_ENTRY_ACTION_OFFSET] > ACTION_DENY)
			return 0;
		entry->action = raw[LCS_RULES_ENTRY_ACTION_OFFSET];
		entry->error = lcs_get16(raw + LCS_RULES_ENTRY_ERRNO_OFFSET);
		if (entry->action == ACTION_DENY && entry->error == 0)
			return 0;
		entry->program = raw + LCS_RULES_ENTRY;
		entry->len = size;
		if (!valid_program(entry->program, size, &entry->paths, &entry->relative))
			return 0;
		at += LCS_RULES_ENTRY + size;
	}
	return at == len;
}

void lcs_rules_init(void)
{
	extern char **environ;
	long len;

	for (char **entry = environ; entry && *entry; entry++)
		if (!strncmp(*entry, ENV_NAME, sizeof ENV_NAME - 1)) {
			len = decode(*entry + sizeof ENV_NAME - 1);
			if (len > 0 && parse(len))
				loaded = 1;
			else
				memset(entries, 0, sizeof entries);
			return;
		}
}

/* Declared in shim.h: the rules' own test of a relative path, and the
 * directory channel.c's reports name. */
int lcs_directory_name(int dirfd, char *out, size_t *out_len)
{
	char link[32] = "/proc/self/fd/";
	char *digits = link + 14;
	ssize_t len = -1;
	unsigned generation;
	int self;

	if (dirfd == AT_FDCWD) {
		/* getcwd(2) is the d_path /proc/self/cwd shows, without the
		 * lookup (a sixth of its cost); it fails for a removed
		 * directory and says "(unreachable)" outside the root: asked. */
		if (!getcwd(out, LCS_PATH_MAX_BYTES + 1))
			return 0;
		len = strlen(out);
	} else {
		char reversed[12];
		unsigned value = dirfd, n = 0;

		if (dirfd < 0)
			return 0;
		do
			reversed[n++] = '0' + value % 10;
		while (value /= 10);
		while (n)
			*digits++ = reversed[--n];
		*digits = 0;
		/* The same link, looked up from a kept descriptor of
		 * /proc/self/fd: two thirds of the cost of the whole path. */
		self = lcs_proc_fds(&generation);
		if (self >= 0) {
			len = readlinkat(self, link + 14, out, LCS_PATH_MAX_BYTES);
			if (!lcs_proc_fds_unchanged(generation))
				len = -1; /* the program replaced that descriptor meanwhile: read it again */
		}
		if (len < 0)
			len = readlink(link, out, LCS_PATH_MAX_BYTES);
	}
	if (len <= 0 || len >= LCS_PATH_MAX_BYTES || out[0] != '/')
		return 0;
	out[len] = 0;
	if (len >= 10 && !memcmp(out + len - 10, " (deleted)", 10))
		return 0;
	*out_len = len;
	return 1;
}

static int append_components(const char *path, char *out, size_t *len);

/* path as the router compares it (made absolute against its directory,
 * empty and "." components dropped, ".." folded), in out; 0 when the
 * rules cannot say (a directory that cannot be named, too long). */
static int normalise(int dirfd, const char *path, char *out, size_t *out_len)
{
	char base[LCS_PATH_MAX_BYTES + 1];
	size_t base_len, len = 0;

	if (!path)
		return 0;
	if (path[0] != '/') {
		if (!lcs_directory_name(dirfd, base, &base_len) || !append_components(base, out, &len))
			return 0;
	}
	if (!append_components(path, out, &len))
		return 0;
	if (len == 0)
		out[len++] = '/';
	out[len] = 0;
	*out_len = len;
	return 1;
}

/* Append path's components to out (at *len), each after a '/'. */
static int append_components(const char *path, char *out, size_t *len_io)
{
	size_t len = *len_io;

	for (const char *p = path; *p;) {
		const char *name;
		size_t size;

		while (*p == '/')
			p++;
		name = p;
		while (*p && *p != '/')
			p++;
		size = p - name;
		if (size == 0 || (size == 1 && name[0] == '.'))
			continue;
		if (size == 2 && name[0] == '.' && name[1] == '.') {
			/* Folded lexically, as the router folds it
			 * (posixpath.normpath): the last component goes,
			 * and ".." of the root is the root. */
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
			continue;
		}
		if (len + 1 + size > LCS_PATH_MAX_BYTES)
			return 0;
		out[len++] = '/';
		memcpy(out + len, name, size);
		len += size;
	}
	*len_io = len;
	return 1;
}

static int inside(const char *path, size_t len, const unsigned char *root, size_t root_len)
{
	if (root_len == 1)
		return 1; /* "/" */
	return len >= root_len && !memcmp(path, root, root_len) &&
	       (len == root_len || path[root_len] == '/');
}

/* Whether the set holds root, by binary search. */
static int set_holds(const struct root_set *set, const char *root, size_t len)
{
	size_t low = 0, high = set->count;

	while (low < high) {
		size_t middle = low + (high - low) / 2, middle_len;
		const unsigned char *candidate = set_root(set, middle, &middle_len);
		int r = order(candidate, middle_len, (const unsigned char *)root, len);

		if (r == 0)
			return 1;
		if (r < 0)
			low = middle + 1;
		else
			high = middle;
	}
	return 0;
}

/* Whether path is one of the set's roots or beneath one: each ancestor
 * of the path (a prefix ending before a '/', and the path itself) is
 * looked up, a few dozen comparisons however many roots there are. */
static int inside_set(const char *path, size_t len, const struct root_set *set)
{
	if (set_holds(set, "/", 1))
		return 1;
	for (size_t end = 1; end <= len; end++)
		if ((end == len || path[end] == '/') && set_holds(set, path, end))
			return 1;
	return 0;
}

struct call {
	uint32_t flags;
	int relative; /* a path of the call is relative */
	const char *paths[2];
	size_t lens[2];
	int npaths;
};

static int run(const struct entry *entry, const struct call *call)
{
	unsigned char stack[STACK_MAX];
	int depth = 0;
	const unsigned char *program = entry->program;

	if (entry->len == 0)
		return 0;
	for (size_t i = 0; i < entry->len;) {
		switch (program[i++]) {
		case OP_TRUE:
			stack[depth++] = 1;
			break;
		case OP_FALSE:
			stack[depth++] = 0;
			break;
		case OP_RELATIVE:
			stack[depth++] = call->relative;
			break;
		case OP_UNDER: {
			size_t root_len = lcs_get16(program + i);
			int all = 1;
			for (int n = 0; n < call->npaths; n++)
				all &= inside(call->paths[n], call->lens[n], program + i + 2, root_len);
			stack[depth++] = all;
			i += 2 + root_len;
			break;
		}
		case OP_UNDER_SET: {
			size_t size = lcs_get16(program + i);
			struct root_set set = root_set(program + i + 2, size);
			int all = 1;
			for (int n = 0; n < call->npaths; n++)
				all &= inside_set(call->paths[n], call->lens[n], &set);
			stack[depth++] = all;
			i += 2 + size;
			break;
		}
		case OP_FLAGS:
			stack[depth++] = (call->flags & lcs_get32(program + i)) != 0;
			i += 4;
			break;
		case OP_NOT:
			stack[depth - 1] = !stack[depth - 1];
			break;
		case OP_AND:
			depth--;
			stack[depth - 1] = stack[depth - 1] && stack[depth];
			break;
		case OP_OR:
			depth--;
			stack[depth - 1] = stack[depth - 1] || stack[depth];
			break;
		}
	}
	return stack[depth - 1];
}

int lcs_rules(uint16_t function, uint32_t flags, int dirfd1, const char *path1, int dirfd2,
              const char *path2, int *error)
{
	char normal[2][LCS_PATH_MAX_BYTES + 1];
	struct call call = {
		.flags = flags,
		.relative = path1 && (path1[0] != '/' || (path2 && path2[0] != '/')),
	};
	const struct entry *entry;

	if (!loaded || function > LCS_FUTIMENS)
		return LCS_RULE_ASK;
	entry = &entries[function];
	if (!entry->program || entry->action == ACTION_ASK)
		return LCS_RULE_ASK;
	if (!path1 && (entry->paths || entry->relative))
		return LCS_RULE_ASK; /* a descriptor call: the file behind it has no name here */
	if (entry->paths) {
		const char *paths[2] = { path1, path2 };
		int dirfds[2] = { dirfd1, dirfd2 };
		call.npaths = path2 ? 2 : 1;
		for (int n = 0; n < call.npaths; n++) {
			if (!normalise(dirfds[n], paths[n], normal[n], &call.lens[n]))
				return LCS_RULE_ASK;
			call.paths[n] = normal[n];
		}
	}
	if (run(entry, &call))
		return LCS_RULE_ASK;
	if (entry->action == ACTION_FORWARD)
		return LCS_RULE_FORWARD;
	*error = entry->error;
	return LCS_RULE_DENY;
}
