/* close_all MODE PATH [CMD ARG...]
 *
 * Close every inherited descriptor the way programs do, then stat(PATH)
 * and open(PATH), and print "size=N open=OK|ERRNO"; with CMD, then exec
 * it (it must still reach the master).  MODE:
 *   range    close_range(3, ~0U, 0)            (daemons, Python's subprocess)
 *   cloexec  close_range(3, ~0U, CLOSE_RANGE_CLOEXEC), meaningful with CMD
 *   from     closefrom(3)
 *   loop     close(fd) for fd in 3 .. the descriptor limit
 *   dup2     dup2(2, N) then close(N), for N = $LIBC_SERVICE_FD and the
 *            4 numbers above it (where the channel is): the shim's
 *            descriptors must move away, not be replaced
 * Under a master whose policy fakes stat(PATH), size is the fake size. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static int limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur > 65536)
		return 65536;
	return rl.rlim_cur;
}

static int close_everything(const char *mode)
{
	if (!strcmp(mode, "range"))
		return close_range(3, ~0U, 0);
	if (!strcmp(mode, "cloexec"))
		return close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
	if (!strcmp(mode, "from")) {
		closefrom(3);
		return 0;
	}
	if (!strcmp(mode, "loop")) {
		for (int fd = 3, n = limit(); fd < n; fd++)
			close(fd);
		return 0;
	}
	if (!strcmp(mode, "dup2")) {
		const char *text = getenv("LIBC_SERVICE_FD");
		int first = text ? atoi(text) : 0;
		for (int fd = first; first > 2 && fd < first + 5; fd++)
			if (dup2(2, fd) != fd || close(fd) < 0)
				return -1;
		return 0;
	}
	errno = EINVAL;
	return -1;
}

int main(int argc, char **argv)
{
	struct stat st;
	int fd;

	if (argc < 3) {
		fprintf(stderr, "usage: close_all range|cloexec|from|loop|dup2 PATH [CMD ARG...]\n");
		return 2;
	}
	if (close_everything(argv[1]) < 0) {
		perror("close_all");
		return 1;
	}
	if (stat(argv[2], &st) < 0) {
		printf("stat=%s\n", strerror(errno));
		return 1;
	}
	fd = open(argv[2], O_RDONLY | O_CLOEXEC);
	printf("size=%lld open=%s\n", (long long)st.st_size, fd >= 0 ? "OK" : strerrorname_np(errno));
	fflush(stdout);
	if (argc > 3) {
		execvp(argv[3], argv + 3);
		perror("close_all: exec");
		return 127;
	}
	return 0;
}
