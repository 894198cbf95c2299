/* raw_read PATH
 *
 * Read PATH with raw openat/read system calls, bypassing every libc
 * wrapper (and so the shim): prints the content, or the errno name.  Shows
 * that the shim is not a security boundary; the sandbox is. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char buf[4096];
	long fd, got;

	if (argc != 2) {
		fprintf(stderr, "usage: raw_read PATH\n");
		return 2;
	}
	fd = syscall(SYS_openat, AT_FDCWD, argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	while ((got = syscall(SYS_read, fd, buf, sizeof buf)) > 0)
		if (fwrite(buf, 1, got, stdout) != (size_t)got)
			return 1;
	if (got < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	syscall(SYS_close, fd);
	return 0;
}
