/* seccomp_attacks COMMAND ARG...
 *
 * What a hostile program does against the seccomp transport, with raw
 * system calls and real threads (built -static by the tests, so that no
 * shim is involved; built dynamically for the shim transport's cases).
 * Each command prints counted outcomes, one "name=count" word each.
 *
 *   flip connect|bind PATH N
 *                 N connect()s (or bind()s) of a unix stream socket to PATH
 *                 while another thread keeps switching the address's family
 *                 between AF_NETLINK and AF_UNIX: "connected=" (the peer
 *                 answered), "bound=" (a socket file was made), "refused="
 *                 and "other=".
 *   deep DIR NAME LEVELS FILE
 *                 chdir(DIR), then chdir(NAME) LEVELS times (so the working
 *                 directory's name outgrows PATH_MAX), then open(FILE) and
 *                 print its first line, or the errno name.
 *   loadrace OK BAD N
 *                 N read-only opens of a buffer another thread keeps
 *                 switching between OK and BAD: "bad=" (what was read
 *                 starts with "SECRET", as BAD does), "ok=", "refused=",
 *                 "other=".
 *   threadfiles ALLOWED SECRET NAME
 *                 opens the directories ALLOWED and SECRET, starts a
 *                 CLONE_THREAD thread without CLONE_FILES that dup2()s
 *                 SECRET over ALLOWED's number in its own table and opens
 *                 NAME relative to that number: prints what it read or
 *                 the errno name.
 *   calls DIR     the calls a filter may forget, each on files in DIR:
 *                 one line per call, "name: result-or-errno".
 *   numbers N...  each system call number N made with zero arguments:
 *                 "N: errno-name" or "N: result".
 *   nofollow PATH faccessat(PATH, R_OK, AT_SYMLINK_NOFOLLOW) through glibc.
 *   setfd PORT N  N times: bind a TCP socket, connect() it to 127.0.0.1:PORT
 *                 while another thread closes its number and makes a pipe
 *                 there: "replaced=" (the reply put a socket over the
 *                 pipe), "kept=", "missed=" (the pipe got another number).
 *   uffd PATH     open() a path in memory registered with userfaultfd that
 *                 nobody serves until stdin ends (or 60 s passed: prints
 *                 "watchdog"), while another thread open()s PATH:
 *                 "stalling" first, then "stalled open: …", "plain open: …".
 *   uffd-stat PATH the same, but the page nobody serves is the buffer a
 *                 stat(PATH) is answered into: "stalled stat: ok" or its errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <linux/io_uring.h>
#include <linux/mount.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int code)
{
	const char *name = strerrorname_np(code);
	return name ? name : "E?";
}

/* ------------------------------------------------------------------ flip */

static struct sockaddr_un flip_address;
static atomic_int flip_stop;

static void *flipper(void *unused)
{
	(void)unused;
	volatile sa_family_t *family = &flip_address.sun_family;
	while (!atomic_load_explicit(&flip_stop, memory_order_relaxed)) {
		*family = AF_NETLINK;
		*family = AF_UNIX;
	}
	return NULL;
}

static int flip(const char *how, const char *path, int tries)
{
	int connected = 0, bound = 0, refused = 0, other = 0;
	pthread_t thread;
	int binding = strcmp(how, "bind") == 0;

	memset(&flip_address, 0, sizeof flip_address);
	flip_address.sun_family = AF_UNIX;
	strncpy(flip_address.sun_path, path, sizeof flip_address.sun_path - 1);
	pthread_create(&thread, NULL, flipper, NULL);
	for (int i = 0; i < tries; i++) {
		int sock = socket(AF_UNIX, SOCK_STREAM, 0);
		long result;
		if (binding)
			result = syscall(SYS_bind, sock, &flip_address, sizeof flip_address);
		else
			result = syscall(SYS_connect, sock, &flip_address, sizeof flip_address);
		if (result == 0) {
			if (binding) {
				bound++;
				unlink(path);
			} else {
				char buffer[64] = { 0 };
				if (read(sock, buffer, sizeof buffer - 1) > 0)
					connected++;
				else
					other++;
			}
		} else if (errno == EACCES || errno == EPERM || errno == EINVAL || errno == EAFNOSUPPORT ||
			   errno == ECONNREFUSED || errno == ENOENT) {
			refused++;
		} else {
			other++;
		}
		close(sock);
	}
	atomic_store(&flip_stop, 1);
	pthread_join(thread, NULL);
	printf("connected=%d bound=%d refused=%d other=%d\n", connected, bound, refused, other);
	return 0;
}

/* ------------------------------------------------------------------ deep */

static int deep(const char *dir, const char *name, int levels, const char *file)
{
	char line[256] = { 0 };
	if (chdir(dir) != 0) {
		printf("chdir: %s\n", errname(errno));
		return 1;
	}
	for (int i = 0; i < levels; i++) {
		if (syscall(SYS_chdir, name) != 0) {
			printf("chdir %d: %s\n", i, errname(errno));
			return 1;
		}
	}
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		printf("open: %s\n", errname(errno));
		return 0;
	}
	ssize_t got = read(fd, line, sizeof line - 1);
	if (got < 0) {
		printf("read: %s\n", errname(errno));
		return 0;
	}
	line[strcspn(line, "\n")] = 0;
	printf("read: %s\n", line);
	return 0;
}

/* -------------------------------------------------------------- loadrace */

static char race_path[4096];
static const char *race_ok, *race_bad;
static atomic_int race_stop;

static void *switcher(void *unused)
{
	(void)unused;
	size_t ok = strlen(race_ok) + 1, bad = strlen(race_bad) + 1;
	while (!atomic_load_explicit(&race_stop, memory_order_relaxed)) {
		memcpy(race_path, race_ok, ok);
		memcpy(race_path, race_bad, bad);
	}
	return NULL;
}

static int loadrace(const char *ok, const char *bad, int tries)
{
	int ok_count = 0, bad_count = 0, refused = 0, other = 0;
	pthread_t thread;
	race_ok = ok;
	race_bad = bad;
	memcpy(race_path, ok, strlen(ok) + 1);
	pthread_create(&thread, NULL, switcher, NULL);
	for (int i = 0; i < tries; i++) {
		int fd = syscall(SYS_open, race_path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno == EACCES || errno == EPERM || errno == ENOENT)
				refused++;
			else
				other++;
			continue;
		}
		char buffer[64] = { 0 };
		ssize_t got = pread(fd, buffer, sizeof buffer - 1, 0);
		if (got > 0 && strncmp(buffer, "SECRET", 6) == 0)
			bad_count++;
		else if (got >= 0)
			ok_count++;
		else
			other++;
		close(fd);
	}
	atomic_store(&race_stop, 1);
	pthread_join(thread, NULL);
	printf("bad=%d ok=%d refused=%d other=%d\n", bad_count, ok_count, refused, other);
	return 0;
}

/* ----------------------------------------------------------- threadfiles */

static int thread_allowed, thread_secret;
static const char *thread_name;
static char thread_out[256];
static atomic_int thread_done;

static int files_thread(void *unused)
{
	(void)unused;
	/* Raw system calls only: this thread has no TLS of its own. */
	long fd;
	syscall(SYS_dup2, thread_secret, thread_allowed);
	fd = syscall(SYS_openat, thread_allowed, thread_name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(thread_out, sizeof thread_out, "open: %s", errname(errno));
	} else {
		char buffer[128] = { 0 };
		long got = syscall(SYS_read, fd, buffer, sizeof buffer - 1);
		buffer[got > 0 ? strcspn(buffer, "\n") : 0] = 0;
		snprintf(thread_out, sizeof thread_out, "read: %s", buffer);
	}
	atomic_store(&thread_done, 1);
	syscall(SYS_exit, 0);
	return 0;
}

static int threadfiles(const char *allowed, const char *secret, const char *name)
{
	static char stack[256 * 1024] __attribute__((aligned(16)));
	thread_allowed = open(allowed, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	thread_secret = open(secret, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (thread_allowed < 0 || thread_secret < 0) {
		printf("opening the directories: %s\n", errname(errno));
		return 1;
	}
	thread_name = name;
	int flags = CLONE_VM | CLONE_SIGHAND | CLONE_THREAD | CLONE_FS; /* no CLONE_FILES */
	if (clone(files_thread, stack + sizeof stack, flags, NULL) < 0) {
		printf("clone: %s\n", errname(errno));
		return 1;
	}
	while (!atomic_load(&thread_done))
		usleep(1000);
	printf("%s\n", thread_out);
	return 0;
}

/* ------------------------------------------------------------------ calls */

static void result(const char *what, long value)
{
	if (value < 0)
		printf("%s: %s\n", what, errname(errno));
	else
		printf("%s: %ld\n", what, value);
}

static int calls(const char *dir)
{
	char a[4096], b[4096], c[4096];
	int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	snprintf(a, sizeof a, "%s/victim", dir);
	snprintf(b, sizeof b, "%s/other", dir);

	struct {
		struct file_handle handle;
		unsigned char bytes[128];
	} handle = { .handle = { .handle_bytes = 128 } };
	int mount_id;
	result("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, a, &handle.handle, &mount_id, 0));
	result("open_by_handle_at", syscall(SYS_open_by_handle_at, dirfd, &handle.handle, O_RDONLY));
	result("renameat2_exchange",
	       syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE));
	result("renameat2_whiteout",
	       syscall(SYS_renameat2, AT_FDCWD, b, AT_FDCWD, a, RENAME_WHITEOUT));
	snprintf(c, sizeof c, "%s/made-by-link", dir);
	result("link", syscall(SYS_link, a, c));
	result("linkat", syscall(SYS_linkat, AT_FDCWD, a, AT_FDCWD, c, 0));
	snprintf(c, sizeof c, "%s/made-by-symlink", dir);
	result("symlink", syscall(SYS_symlink, a, c));
	result("symlinkat", syscall(SYS_symlinkat, a, AT_FDCWD, c));
	snprintf(c, sizeof c, "%s/made-by-mknod", dir);
	result("mknod", syscall(SYS_mknod, c, S_IFREG | 0600, 0));
	result("mknodat", syscall(SYS_mknodat, AT_FDCWD, c, S_IFIFO | 0600, 0));
	result("truncate", syscall(SYS_truncate, a, 0));
	snprintf(c, sizeof c, "%s/made-by-creat", dir);
	result("creat", syscall(SYS_creat, c, 0600));
	result("open_accmode3_trunc", syscall(SYS_open, a, 3 | O_TRUNC));
	snprintf(c, sizeof c, "%s/made-by-accmode3", dir);
	result("open_accmode3_creat", syscall(SYS_open, c, 3 | O_CREAT, 0600));
	result("chmod", syscall(SYS_chmod, a, 0777));
	result("fchmodat", syscall(SYS_fchmodat, AT_FDCWD, a, 0777));
	result("utimensat", syscall(SYS_utimensat, AT_FDCWD, a, NULL, 0));
	result("setxattr", syscall(SYS_setxattr, a, "user.x", "1", 1, 0));
	long tree = syscall(SYS_open_tree, AT_FDCWD, dir, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	result("open_tree", tree);
	snprintf(c, sizeof c, "%s/mountpoint", dir);
	result("move_mount", syscall(SYS_move_mount, tree, "", AT_FDCWD, c, MOVE_MOUNT_F_EMPTY_PATH));
	result("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
	result("mount", syscall(SYS_mount, "none", c, "tmpfs", 0, NULL));
	result("chroot", syscall(SYS_chroot, dir));
	struct io_uring_params params;
	memset(&params, 0, sizeof params);
	result("io_uring_setup", syscall(SYS_io_uring_setup, 4, &params));
	return 0;
}

static int numbers(int count, char **argv)
{
	for (int i = 0; i < count; i++) {
		long nr = strtol(argv[i], NULL, 10);
		long value = syscall(nr, 0, 0, 0, 0, 0, 0);
		if (value < 0)
			printf("%ld: %s\n", nr, errname(errno));
		else
			printf("%ld: %ld\n", nr, value);
	}
	return 0;
}

/* ------------------------------------------------------------------- uffd */

static const char *uffd_plain;
static int uffd_stat;
static int uffd_fd;
static char *uffd_area;
static long uffd_page;

static void *plain_open(void *unused)
{
	(void)unused;
	usleep(200 * 1000); /* the first open is waiting in the master by now */
	int fd = syscall(SYS_open, uffd_plain, O_RDONLY | O_CLOEXEC);
	printf("plain open: %s\n", fd >= 0 ? "opened" : errname(errno));
	return NULL;
}

static void *resolver(void *unused)
{
	(void)unused;
	/* Serve the fault once stdin ends (the test says so), or after 60 s. */
	struct pollfd input = { .fd = 0, .events = POLLIN };
	if (poll(&input, 1, 60 * 1000) == 0)
		printf("watchdog\n");
	char *page = aligned_alloc(uffd_page, uffd_page);
	memset(page, 0, uffd_page);
	strncpy(page, uffd_plain, uffd_page - 1);
	struct uffdio_copy copy = {
		.dst = (unsigned long)uffd_area, .src = (unsigned long)page, .len = uffd_page, .mode = 0
	};
	ioctl(uffd_fd, UFFDIO_COPY, &copy);
	return NULL;
}

static int uffd(const char *path)
{
	uffd_page = sysconf(_SC_PAGESIZE);
	uffd_fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd_fd < 0) {
		printf("unavailable: userfaultfd: %s\n", errname(errno));
		return 0;
	}
	struct uffdio_api api = { .api = UFFD_API };
	if (ioctl(uffd_fd, UFFDIO_API, &api) != 0) {
		printf("unavailable: UFFDIO_API: %s\n", errname(errno));
		return 0;
	}
	uffd_area = mmap(NULL, uffd_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = {
		.range = { .start = (unsigned long)uffd_area, .len = uffd_page },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(uffd_fd, UFFDIO_REGISTER, &reg) != 0) {
		printf("unavailable: UFFDIO_REGISTER: %s\n", errname(errno));
		return 0;
	}
	uffd_plain = path;
	pthread_t plain, serve;
	pthread_create(&serve, NULL, resolver, NULL);
	printf("stalling\n");
	pthread_create(&plain, NULL, plain_open, NULL);
	if (uffd_stat) {
		/* A write into this page waits until the resolver serves it. */
		long done = syscall(SYS_stat, path, (void *)uffd_area);
		printf("stalled stat: %s\n", done < 0 ? errname(errno) : "ok");
	} else {
		/* A read of this page waits until the resolver serves it. */
		long fd = syscall(SYS_open, uffd_area, O_RDONLY | O_CLOEXEC);
		printf("stalled open: %s\n", fd < 0 ? errname(errno) : "opened");
	}
	pthread_join(plain, NULL);
	pthread_join(serve, NULL);
	return 0;
}

/* ------------------------------------------------------------------ setfd */

static atomic_int setfd_number = -1, setfd_go, setfd_stop, setfd_read = -1, setfd_write = -1, setfd_delay;

static void *replacer(void *unused)
{
	(void)unused;
	while (!atomic_load(&setfd_stop)) {
		if (!atomic_exchange(&setfd_go, 0))
			continue;
		for (volatile int spin = atomic_load(&setfd_delay); spin > 0; spin--)
			;
		int ends[2];
		close(atomic_load(&setfd_number));
		if (pipe2(ends, O_CLOEXEC) != 0)
			ends[0] = ends[1] = -1;
		atomic_store(&setfd_write, ends[1]);
		atomic_store(&setfd_read, ends[0]);
	}
	return NULL;
}

static int setfd(int port, int tries)
{
	int replaced = 0, kept = 0, missed = 0;
	pthread_t thread;
	struct sockaddr_in any = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in server = any;
	server.sin_port = htons(port);
	pthread_create(&thread, NULL, replacer, NULL);
	for (int i = 0; i < tries; i++) {
		int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (syscall(SYS_bind, sock, &any, sizeof any) != 0) {
			printf("bind: %s\n", errname(errno));
			return 1;
		}
		atomic_store(&setfd_read, -2); /* -2: the other thread has not made its pipe yet */
		atomic_store(&setfd_number, sock);
		atomic_store(&setfd_delay, (i * 7919) % 200000);
		atomic_store(&setfd_go, 1);
		syscall(SYS_connect, sock, &server, sizeof server);
		while (atomic_load(&setfd_read) == -2)
			;
		int ours = atomic_load(&setfd_read), theirs = atomic_load(&setfd_write);
		struct stat st;
		if (ours != sock)
			missed++;
		else if (fstat(sock, &st) == 0 && S_ISSOCK(st.st_mode))
			replaced++; /* the pipe made at this number was replaced by the reply */
		else
			kept++;
		if (ours >= 0)
			close(ours);
		if (theirs >= 0)
			close(theirs);
		if (ours != sock)
			close(sock); /* closed by the other thread; EBADF, or a number the pipe did not take */
	}
	atomic_store(&setfd_stop, 1);
	pthread_join(thread, NULL);
	printf("replaced=%d kept=%d missed=%d\n", replaced, kept, missed);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 5 && strcmp(argv[1], "flip") == 0)
		return flip(argv[2], argv[3], atoi(argv[4]));
	if (argc >= 6 && strcmp(argv[1], "deep") == 0)
		return deep(argv[2], argv[3], atoi(argv[4]), argv[5]);
	if (argc >= 5 && strcmp(argv[1], "loadrace") == 0)
		return loadrace(argv[2], argv[3], atoi(argv[4]));
	if (argc >= 5 && strcmp(argv[1], "threadfiles") == 0)
		return threadfiles(argv[2], argv[3], argv[4]);
	if (argc >= 3 && strcmp(argv[1], "calls") == 0)
		return calls(argv[2]);
	if (argc >= 2 && strcmp(argv[1], "numbers") == 0)
		return numbers(argc - 2, argv + 2);
	if (argc >= 3 && strcmp(argv[1], "nofollow") == 0) {
		/* glibc's faccessat(AT_SYMLINK_NOFOLLOW): faccessat2, or a stat where that is ENOSYS */
		int result = faccessat(AT_FDCWD, argv[2], R_OK, AT_SYMLINK_NOFOLLOW);
		printf("faccessat nofollow: %s\n", result == 0 ? "0" : errname(errno));
		return 0;
	}
	if (argc >= 4 && strcmp(argv[1], "setfd") == 0)
		return setfd(atoi(argv[2]), atoi(argv[3]));
	if (argc >= 3 && strcmp(argv[1], "uffd") == 0)
		return uffd(argv[2]);
	if (argc >= 3 && strcmp(argv[1], "uffd-stat") == 0) {
		uffd_stat = 1;
		return uffd(argv[2]);
	}
	fprintf(stderr, "usage: seccomp_attacks flip|deep|loadrace|threadfiles|calls|numbers|uffd ARG...\n");
	return 2;
}
