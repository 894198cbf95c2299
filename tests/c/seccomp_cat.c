/* seccomp_cat PATH...
 *
 * Opens each PATH with open(2) and copies it to stdout; prints
 * "PATH: ERRNAME" for a failed open.  Built with -static by
 * tests/test_seccomp_notify.py: a static program never loads the shim, so
 * only the seccomp transport sees its calls. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char buf[4096];
	ssize_t got;

	for (int i = 1; i < argc; i++) {
		int fd = open(argv[i], O_RDONLY);
		if (fd < 0) {
			printf("%s: %s\n", argv[i], strerrorname_np(errno));
			continue;
		}
		while ((got = read(fd, buf, sizeof buf)) > 0)
			fwrite(buf, 1, (size_t)got, stdout);
		close(fd);
	}
	return 0;
}
