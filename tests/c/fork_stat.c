/* fork_stat: under `floor_master stat`, 4 threads stat() in a loop while the
 * main thread forks 200 children that each stat() 20 times.  Every answer
 * must be the master's (size 4242): a forked child registers its own
 * channel and never reads its parent's replies; no lock survives fork. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile int stop; static long bad;
static void *spin(void *a) { struct stat st; (void)a; while (!stop) { if (stat("/etc/passwd", &st) || st.st_size != 4242) __atomic_add_fetch(&bad, 1, 0); } return 0; }
int main(void) {
	pthread_t t[4]; int failures = 0;
	for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, spin, 0);
	for (int i = 0; i < 200; i++) {
		pid_t pid = fork();
		if (pid == 0) { struct stat st; int ok = 1;
			for (int j = 0; j < 20; j++) ok &= stat("/etc/passwd", &st) == 0 && st.st_size == 4242;
			_exit(ok ? 0 : 1); }
		int status; waitpid(pid, &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status)) failures++;
	}
	stop = 1; for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
	printf("fork children failed=%d parent mismatches=%ld\n", failures, bad);
	return failures || bad;
}
