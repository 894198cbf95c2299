/* spawn_children PATH
 *
 * Children made without fork(): posix_spawn() and vfork()+exec of
 * `stat -c %s PATH`, each of which must register its own session after
 * exec (and print the master's answer); and a vfork() child that calls
 * stat(PATH) itself before _exit: it shares the parent's memory, so the
 * shim sends it straight to the real libc and leaves the parent's channel
 * alone.  The parent's own stat(PATH) before and after must keep getting
 * the master's answer.  Prints
 *   parent-before=N
 *   N                  (posix_spawn'd stat)
 *   N                  (vfork'd stat)
 *   vfork-child=N      (the real size)
 *   parent-after=N */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static long long size_of(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static int wait_for(pid_t pid)
{
	int status;
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
	static volatile long long child_size;
	char *stat_argv[] = { "stat", "-c", "%s", NULL, NULL };
	pid_t pid;

	if (argc != 2) {
		fprintf(stderr, "usage: spawn_children PATH\n");
		return 2;
	}
	stat_argv[3] = argv[1];
	printf("parent-before=%lld\n", size_of(argv[1]));
	fflush(stdout);

	if (posix_spawnp(&pid, "stat", NULL, NULL, stat_argv, environ) != 0 || wait_for(pid) != 0)
		return 1;

	pid = vfork();
	if (pid == 0) {
		execvp("stat", stat_argv);
		_exit(127);
	}
	if (wait_for(pid) != 0)
		return 1;

	pid = vfork();
	if (pid == 0) {
		child_size = size_of(argv[1]);
		_exit(0);
	}
	if (wait_for(pid) != 0)
		return 1;
	printf("vfork-child=%lld\n", child_size);
	printf("parent-after=%lld\n", size_of(argv[1]));
	return 0;
}
