/* The shim's own descriptors: the registration socket, this process's
 * channel to the master and its /proc/self/fd (for naming directories), and
 * the process they belong to (and the calling thread's id).
 *
 * Both live at high numbers (from LCS_FD_BASE), out of the way of programs
 * that dup2() onto low numbers, and are guarded (fdguard.c).  Their numbers
 * are read, without a lock, by the guard from any thread or signal handler,
 * so they are accessed atomically; channel.c sets the channel's under its
 * lock.  Async-signal-safe throughout: atomics and raw system calls only
 * (except lcs_ownfds_init, which runs in the constructor).
 *
 * Depends on real.c only. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "shim.h"

static int reg_fd = -1;  /* registration socket; -1: the shim is inert */
static int chan_fd = -1; /* our channel, once registered */
static int proc_fd = -1; /* /proc/self/fd of this process, opened on first use */
static int proc_pid;     /* the process this state belongs to */
/* Bumped (before the number is given up) whenever proc_fd's descriptor
 * stops being ours under its number: a name read through the old number
 * meanwhile is not trusted (lcs_proc_fds_unchanged). */
static unsigned proc_generation;

/* LIBC_SERVICE_FD=<reg_fd>, put in the environment by the constructor
 * (the environment's entry then points at this buffer), so the number can
 * be rewritten in place, without allocation, when the descriptor moves. */
#define ENV_PREFIX "LIBC_SERVICE_FD="
static char env_entry[sizeof ENV_PREFIX + 11] = ENV_PREFIX;

static int load_fd(const int *fd) { return __atomic_load_n(fd, __ATOMIC_RELAXED); }
static void store_fd(int *fd, int value) { __atomic_store_n(fd, value, __ATOMIC_RELAXED); }

int lcs_reg_fd(void) { return load_fd(&reg_fd); }
int lcs_chan_fd(void) { return load_fd(&chan_fd); }
void lcs_set_chan_fd(int fd) { store_fd(&chan_fd, fd); }

int lcs_own_pid(void) { return proc_pid; }

/* The calling thread's id, cached per thread (forgotten in a fork child). */
static __thread pid_t own_tid;

int lcs_own_tid(void)
{
	if (!own_tid)
		own_tid = lcs_gettid_raw();
	return own_tid;
}

int lcs_own_process(void)
{
	return lcs_getpid_raw() == proc_pid;
}

int lcs_is_seqpacket(int fd)
{
	int type;
	socklen_t len = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return 0;
	return type == SOCK_SEQPACKET;
}

static int parse_fd(const char *text)
{
	char *end;
	long value;
	if (!text || !*text)
		return -1;
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno || *end || value < 0 || value > 0x7fffffff)
		return -1;
	return value;
}

static void write_env_number(int fd)
{
	char digits[11];
	char *out = env_entry + sizeof ENV_PREFIX - 1;
	int n = 0;

	do
		digits[n++] = '0' + fd % 10;
	while ((fd /= 10) && n < 10);
	while (n)
		*out++ = digits[--n];
	*out = 0;
}

/* The environment's LIBC_SERVICE_FD entry, or NULL.  Read from environ
 * directly: programs may define getenv/putenv themselves (bash does, on
 * its shell variables), and the program's definitions win. */
static char **env_slot(void)
{
	extern char **environ;

	for (char **entry = environ; entry && *entry; entry++)
		if (!strncmp(*entry, ENV_PREFIX, sizeof ENV_PREFIX - 1))
			return entry;
	return NULL;
}

/* The lowest descriptor the shim's own may live at. */
static long high_base(void)
{
	struct rlimit limit;

	/* A low descriptor limit: the top of what it allows, if that is high. */
	if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
	    limit.rlim_cur < LCS_FD_BASE + 64)
		return limit.rlim_cur >= 128 ? (long)limit.rlim_cur - 64 : -1;
	return LCS_FD_BASE;
}

int lcs_dup_high(int fd, int cloexec)
{
	long base = high_base();
	long moved;

	if (base < 0)
		return fd;
	moved = lcs_fcntl_raw(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, base);
	if (moved < 0)
		return errno == EMFILE || errno == EINVAL ? fd : -1;
	return moved;
}

int lcs_move_high(int fd, int cloexec)
{
	long base = high_base();

	if (base < 0 || fd >= base)
		return fd;
	return lcs_dup_high(fd, cloexec);
}

/* The registration socket is moved to a high number, out of the way of
 * programs that dup2() onto low numbers, and LIBC_SERVICE_FD follows it:
 * its entry in environ is pointed at env_entry (what putenv does, without
 * going through a putenv the program may have replaced).  The constructor
 * runs before main, single-threaded, so this is safe here.  The socket
 * stays without close-on-exec: exec'd programs register through it. */
int lcs_ownfds_init(void)
{
	char **slot = env_slot();
	int fd = slot ? parse_fd(*slot + sizeof ENV_PREFIX - 1) : -1;

	if (fd < 0 || !lcs_is_seqpacket(fd))
		return -1;
	int high = lcs_move_high(fd, 0);
	if (high >= 0 && high != fd) {
		write_env_number(high);
		*slot = env_entry;
		lcs_close_raw(fd);
		fd = high;
	}
	proc_pid = lcs_getpid_raw();
	return fd;
}

void lcs_ownfds_activate(int fd)
{
	store_fd(&reg_fd, fd);
}

/* The child of fork(): forget the parent's channel and its /proc/self/fd
 * (closing our copies is harmless to the parent; the latter names the
 * parent's descriptors, not ours); the state now belongs to this process.
 * Async-signal-safe. */
void lcs_ownfds_forked(void)
{
	int fd = load_fd(&chan_fd);

	own_tid = 0;
	store_fd(&chan_fd, -1);
	if (fd >= 0)
		lcs_close_raw(fd);
	__atomic_add_fetch(&proc_generation, 1, __ATOMIC_SEQ_CST);
	fd = load_fd(&proc_fd);
	store_fd(&proc_fd, -1);
	if (fd >= 0)
		lcs_close_raw(fd);
	proc_pid = lcs_getpid_raw();
}

int lcs_proc_fds(unsigned *generation)
{
	int fd;

	if (load_fd(&reg_fd) < 0 || !lcs_own_process())
		return -1; /* inert, or a vfork()ed child: its parent's state */
	*generation = __atomic_load_n(&proc_generation, __ATOMIC_SEQ_CST);
	fd = load_fd(&proc_fd);
	if (fd >= 0)
		return fd;
	int opened = lcs_openat_raw(AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (opened < 0)
		return -1;
	int high = lcs_move_high(opened, 1);
	if (high != opened)
		lcs_close_raw(opened);
	if (high < 0)
		return -1;
	int expected = -1;
	if (!__atomic_compare_exchange_n(&proc_fd, &expected, high, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
		lcs_close_raw(high); /* another thread opened it first */
		return expected;
	}
	return high;
}

int lcs_proc_fds_unchanged(unsigned generation)
{
	return __atomic_load_n(&proc_generation, __ATOMIC_SEQ_CST) == generation;
}

int lcs_guarded_fds(int fds[LCS_GUARDED_MAX])
{
	int reg = load_fd(&reg_fd), n = 0;
	int others[2] = { load_fd(&chan_fd), load_fd(&proc_fd) };

	if (reg < 0)
		return 0;
	fds[n++] = reg;
	for (int i = 0; i < 2; i++) {
		int fd = others[i], at = n++;
		if (fd < 0) {
			n--;
			continue;
		}
		while (at > 0 && fds[at - 1] > fd) { /* kept ascending */
			fds[at] = fds[at - 1];
			at--;
		}
		fds[at] = fd;
	}
	return n;
}

/* The program wants fd's number (dup2/dup3 onto it): give it up after
 * moving the shim's descriptor to another high number.  Not in a vfork()ed
 * child, which shares our memory (and so this state) with its parent but
 * not its descriptor table: there the number is simply lost to the child.
 * Async-signal-safe: atomics and system calls only. */
int lcs_evict(int fd)
{
	int *slot;
	int moved;

	if (fd < 0)
		return 0;
	if (fd == load_fd(&reg_fd))
		slot = &reg_fd;
	else if (fd == load_fd(&chan_fd))
		slot = &chan_fd;
	else if (fd == load_fd(&proc_fd))
		slot = &proc_fd;
	else
		return 0;
	if (lcs_getpid_raw() != proc_pid)
		return 0;
	if (slot == &proc_fd) /* a reader of the old number must not trust what it reads */
		__atomic_add_fetch(&proc_generation, 1, __ATOMIC_SEQ_CST);
	moved = lcs_dup_high(fd, slot != &reg_fd);
	if (moved < 0)
		return -1;
	if (moved == fd)
		return 0; /* nowhere to go: the caller's dup2 will take it */
	store_fd(slot, moved);
	if (slot == &reg_fd)
		write_env_number(moved);
	/* The old number is left open for the caller's dup2 to replace. */
	return 0;
}
