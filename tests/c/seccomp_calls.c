/* seccomp_calls COMMAND ARG...
 *
 * Arbitrated system calls made the ways the shim cannot see (raw syscall(),
 * and built -static by tests/test_seccomp_notify.py), including hostile
 * ones.  Prints one line per call: the result or the errno name.
 *
 *   stat PATH          stat(): "size=N mode=O mtime=S.NS"
 *   statx PATH         the same through statx()
 *   lstat PATH         lstat()
 *   access PATH MODE   access() (MODE: f, r, w, x, rw...), then faccessat2(AT_EACCESS)
 *   mkdir PATH         mkdir(PATH, 0750)
 *   unlinkat DIR NAME  unlinkat() relative to an opened directory
 *   rename OLD NEW     renameat2(RENAME_NOREPLACE)
 *   openat DIR NAME    openat() relative to an opened directory; prints the content
 *   cloexec PATH       open(O_CLOEXEC) and open(): whether each has FD_CLOEXEC
 *   connect PATH       connect() a unix stream socket; prints what the peer sent
 *   bind PATH          bind() a unix stream socket (no O_CLOEXEC), then listen()
 *   badptr             open(NULL), open(1), a path running into an unmapped
 *                      page, stat() into read-only memory, connect() with a
 *                      bad address
 *   race OK BAD N      N opens of a buffer another thread keeps switching
 *                      between OK and BAD; prints how many opens returned a
 *                      descriptor whose content starts with "ok", how many
 *                      failed with EACCES, and anything else
 *   wait PATH          open() once (the test kills the program meanwhile)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

static int report(const char *what, long result)
{
	if (result < 0)
		printf("%s: %s\n", what, strerrorname_np(errno));
	else
		printf("%s: %ld\n", what, result);
	return result < 0;
}

static void print_stat(const char *what, long result, const struct stat *st)
{
	if (result < 0) {
		printf("%s: %s\n", what, strerrorname_np(errno));
		return;
	}
	printf("%s: size=%lld mode=%o mtime=%lld.%09ld\n", what, (long long)st->st_size, st->st_mode,
	       (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
}

static void cat(int fd)
{
	char buf[256];
	ssize_t got;

	while ((got = read(fd, buf, sizeof buf)) > 0)
		fwrite(buf, 1, (size_t)got, stdout);
}

static int amode(const char *text)
{
	int mode = 0;

	for (; *text; text++)
		mode |= *text == 'r' ? R_OK : *text == 'w' ? W_OK : *text == 'x' ? X_OK : 0;
	return mode;
}

static char race_buffer[64];
static atomic_int race_done;
static const char *race_paths[2];

static void *flip(void *unused)
{
	(void)unused;
	for (unsigned i = 0; !atomic_load(&race_done); i++)
		strcpy(race_buffer, race_paths[i & 1]);
	return NULL;
}

static int race(const char *ok, const char *bad, int n)
{
	pthread_t thread;
	int granted = 0, refused = 0, other = 0;

	race_paths[0] = ok;
	race_paths[1] = bad;
	strcpy(race_buffer, ok);
	pthread_create(&thread, NULL, flip, NULL);
	for (int i = 0; i < n; i++) {
		long fd = syscall(SYS_openat, AT_FDCWD, race_buffer, O_RDONLY | O_CLOEXEC);
		char head[2] = "";
		if (fd >= 0) {
			if (read((int)fd, head, 2) == 2 && memcmp(head, "ok", 2) == 0)
				granted++;
			else
				other++;
			close((int)fd);
		} else if (errno == EACCES || errno == ENOENT) {
			refused++;
		} else {
			other++;
		}
	}
	atomic_store(&race_done, 1);
	pthread_join(thread, NULL);
	printf("granted=%d refused=%d other=%d\n", granted, refused, other);
	return 0;
}

static int badptr(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct sockaddr_un *bad_address = (struct sockaddr_un *)(area + 2 * page - 4);
	int sock = socket(AF_UNIX, SOCK_STREAM, 0);

	memset(area, 'a', 2 * page);
	mprotect(area + page, page, PROT_NONE);
	report("open NULL", syscall(SYS_openat, AT_FDCWD, NULL, O_RDONLY));
	report("open 1", syscall(SYS_openat, AT_FDCWD, (char *)1, O_RDONLY));
	report("open unterminated", syscall(SYS_openat, AT_FDCWD, area + page - 16, O_RDONLY));
	mprotect(area, page, PROT_READ);
	report("stat into read-only", syscall(SYS_newfstatat, AT_FDCWD, "/", area, 0));
	report("connect bad address", syscall(SYS_connect, sock, bad_address, sizeof(struct sockaddr_un)));
	report("openat2 bad how", syscall(SYS_openat2, AT_FDCWD, "/", (void *)8, 24));
	report("open after", syscall(SYS_openat, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY));
	return 0;
}

int main(int argc, char **argv)
{
	struct stat st;
	const char *command = argc > 1 ? argv[1] : "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(command, "stat") && argc == 3) {
		print_stat("stat", stat(argv[2], &st), &st);
	} else if (!strcmp(command, "lstat") && argc == 3) {
		print_stat("lstat", lstat(argv[2], &st), &st);
	} else if (!strcmp(command, "statx") && argc == 3) {
		struct statx sx;
		if (statx(AT_FDCWD, argv[2], 0, STATX_BASIC_STATS, &sx) < 0)
			printf("statx: %s\n", strerrorname_np(errno));
		else
			printf("statx: size=%lld mode=%o mtime=%lld.%09u\n", (long long)sx.stx_size, sx.stx_mode,
			       (long long)sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec);
	} else if (!strcmp(command, "access") && argc == 4) {
		report("access", access(argv[2], amode(argv[3])));
		report("eaccess", syscall(SYS_faccessat2, AT_FDCWD, argv[2], amode(argv[3]), AT_EACCESS));
	} else if (!strcmp(command, "mkdir") && argc == 3) {
		report("mkdir", mkdir(argv[2], 0750));
	} else if (!strcmp(command, "unlinkat") && argc == 4) {
		int dir = open(argv[2], O_RDONLY | O_DIRECTORY);
		report("unlinkat", unlinkat(dir, argv[3], 0));
	} else if (!strcmp(command, "rename") && argc == 4) {
		report("rename", syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], 1 /* NOREPLACE */));
	} else if (!strcmp(command, "openat") && argc == 4) {
		int dir = open(argv[2], O_RDONLY | O_DIRECTORY);
		int fd = openat(dir, argv[3], O_RDONLY);
		if (!report("openat", fd >= 0 ? 0 : -1))
			cat(fd);
	} else if (!strcmp(command, "cloexec") && argc == 3) {
		int with = open(argv[2], O_RDONLY | O_CLOEXEC), without = open(argv[2], O_RDONLY);
		printf("O_CLOEXEC: %d\n", with >= 0 ? (fcntl(with, F_GETFD) & FD_CLOEXEC) != 0 : -1);
		printf("no O_CLOEXEC: %d\n", without >= 0 ? (fcntl(without, F_GETFD) & FD_CLOEXEC) != 0 : -1);
	} else if (!strcmp(command, "connect") && argc == 3) {
		struct sockaddr_un address = { .sun_family = AF_UNIX };
		int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		strncpy(address.sun_path, argv[2], sizeof address.sun_path - 1);
		if (!report("connect", connect(sock, (struct sockaddr *)&address, sizeof address))) {
			printf("FD_CLOEXEC: %d\n", (fcntl(sock, F_GETFD) & FD_CLOEXEC) != 0);
			cat(sock);
		}
	} else if (!strcmp(command, "bind") && argc == 3) {
		struct sockaddr_un address = { .sun_family = AF_UNIX };
		int sock = socket(AF_UNIX, SOCK_STREAM, 0);
		strncpy(address.sun_path, argv[2], sizeof address.sun_path - 1);
		if (!report("bind", bind(sock, (struct sockaddr *)&address, sizeof address))) {
			printf("FD_CLOEXEC: %d\n", (fcntl(sock, F_GETFD) & FD_CLOEXEC) != 0);
			report("listen", listen(sock, 1));
		}
	} else if (!strcmp(command, "badptr")) {
		return badptr();
	} else if (!strcmp(command, "race") && argc == 5) {
		return race(argv[2], argv[3], atoi(argv[4]));
	} else if (!strcmp(command, "wait") && argc == 3) {
		report("open", open(argv[2], O_RDONLY));
	} else {
		fprintf(stderr, "usage: seccomp_calls COMMAND ARG... (see the source)\n");
		return 2;
	}
	return 0;
}
