/* stat_loop procs|threads N CALLS PATH
 *
 * Throughput driver: N processes (fork) or N threads of one process each
 * call stat(PATH) CALLS times.  Every worker makes one warm-up call first
 * (a forked child registers its own channel then), waits at a barrier, and
 * the clock runs from the barrier's release until the last worker is done.
 * Prints:
 *   calls=TOTAL seconds=S calls_per_s=X failures=F */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *path;
static long calls;
static int ready_pipe[2], go_pipe[2];

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Warm up, report ready, wait for the start, then run.  Returns failures. */
static long work(void)
{
	struct stat st;
	char byte = 0;
	long failures = 0;

	if (stat(path, &st) < 0)
		failures++;
	if (write(ready_pipe[1], &byte, 1) != 1 || read(go_pipe[0], &byte, 1) != 0)
		return -1;
	for (long i = 0; i < calls; i++)
		if (stat(path, &st) < 0)
			failures++;
	return failures;
}

static void *thread_main(void *arg)
{
	*(long *)arg = work();
	return NULL;
}

int main(int argc, char **argv)
{
	int n, threads;
	long failures = 0;
	double start, end;
	char byte;

	if (argc != 5 || (strcmp(argv[1], "procs") && strcmp(argv[1], "threads")) ||
	    (n = atoi(argv[2])) < 1 || (calls = atol(argv[3])) < 1) {
		fprintf(stderr, "usage: stat_loop procs|threads N CALLS PATH\n");
		return 2;
	}
	threads = !strcmp(argv[1], "threads");
	path = argv[4];
	if (pipe(ready_pipe) < 0 || pipe(go_pipe) < 0)
		return 2;
	pthread_t *tids = calloc(n, sizeof *tids);
	long *results = calloc(n, sizeof *results);
	pid_t *pids = calloc(n, sizeof *pids);
	for (int i = 0; i < n; i++) {
		if (threads) {
			if (pthread_create(&tids[i], NULL, thread_main, &results[i]))
				return 2;
			continue;
		}
		pids[i] = fork();
		if (pids[i] < 0)
			return 2;
		if (pids[i] == 0) {
			close(go_pipe[1]);
			long failed = work();
			_exit(failed < 0 ? 2 : failed > 0);
		}
	}
	for (int i = 0; i < n; i++)
		if (read(ready_pipe[0], &byte, 1) != 1)
			return 2;
	start = now();
	close(go_pipe[1]); /* every worker's read returns 0: go */
	for (int i = 0; i < n; i++) {
		if (threads) {
			pthread_join(tids[i], NULL);
			failures += results[i] != 0;
		} else {
			int status;
			waitpid(pids[i], &status, 0);
			failures += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
		}
	}
	end = now();
	printf("calls=%ld seconds=%.6f calls_per_s=%.0f failures=%ld\n", n * calls, end - start,
	       n * calls / (end - start), failures);
	return failures ? 1 : 0;
}
