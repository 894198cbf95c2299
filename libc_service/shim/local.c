/* Statically allowed trees: read-only calls the shim lets through itself.
 *
 * Under a sandbox, spawn() puts the trees the Landlock ruleset lets the
 * slave read by itself (the policy's allow_read, allow_write and
 * allow_exec) in LIBC_SERVICE_LOCAL, colon-separated, absolute and
 * normalised.  The constructor copies them once into a static table; a
 * read-only call on an absolute path without a ".." component that lies
 * in one of them then goes to the real libc with no round trip.  The
 * string test is only an optimisation, never the boundary: the kernel
 * checks the slave's own call on the resolved object, so a symlink out of
 * the tree is refused by Landlock (EACCES), not granted.
 *
 * Bounded: at most LOCAL_MAX trees and LOCAL_BYTES bytes; what does not
 * fit is simply not local (it goes through the master as before). */
#include <string.h>

#include "shim.h"

#define ENV_NAME "LIBC_SERVICE_LOCAL="
#define LOCAL_MAX 64
#define LOCAL_BYTES 8192

struct tree {
	const char *path;
	size_t len;
};

static char text[LOCAL_BYTES];
static struct tree trees[LOCAL_MAX];
static int count;

/* An absolute path with no empty-after-root, "." or ".." component and no
 * trailing slash (the root itself is "/"), as spawn() writes them. */
static int normalised(const char *path, size_t len)
{
	if (len == 0 || path[0] != '/')
		return 0;
	if (len == 1)
		return 1;
	if (path[len - 1] == '/')
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (path[i] != '/')
			continue;
		const char *name = path + i + 1;
		size_t rest = len - i - 1;
		if (rest == 0 || name[0] == '/')
			return 0;
		if (name[0] == '.' && (rest == 1 || name[1] == '/'))
			return 0;
		if (name[0] == '.' && name[1] == '.' && (rest == 2 || name[2] == '/'))
			return 0;
	}
	return 1;
}

void lcs_local_init(void)
{
	extern char **environ;
	const char *value = NULL;
	size_t used = 0;

	for (char **entry = environ; entry && *entry; entry++)
		if (!strncmp(*entry, ENV_NAME, sizeof ENV_NAME - 1)) {
			value = *entry + sizeof ENV_NAME - 1;
			break;
		}
	if (!value)
		return;
	while (*value && count < LOCAL_MAX) {
		const char *end = strchrnul(value, ':');
		size_t len = end - value;

		if (normalised(value, len) && used + len + 1 <= sizeof text) {
			memcpy(text + used, value, len);
			text[used + len] = 0;
			trees[count++] = (struct tree){ text + used, len };
			used += len + 1;
		}
		value = *end ? end + 1 : end;
	}
}

/* Whether path has a ".." component. */
static int climbs(const char *path)
{
	for (const char *p = strstr(path, ".."); p; p = strstr(p + 1, ".."))
		if ((p == path || p[-1] == '/') && (p[2] == 0 || p[2] == '/'))
			return 1;
	return 0;
}

int lcs_local(const char *path)
{
	if (!count || !path || path[0] != '/' || climbs(path))
		return 0;
	for (int i = 0; i < count; i++) {
		size_t len = trees[i].len;
		if (len == 1)
			return 1; /* "/" */
		if (!strncmp(path, trees[i].path, len) && (path[len] == 0 || path[len] == '/'))
			return 1;
	}
	return 0;
}
