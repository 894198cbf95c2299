/* stat_threads THREADS CALLS PATH EXPECTED_SIZE
 *
 * THREADS threads each stat() PATH CALLS times and check st_size against
 * EXPECTED_SIZE: many threads sharing one shim channel must each get their
 * own replies.  Prints "calls=N mismatches=M errors=E"; exits 1 unless
 * every call succeeded with the expected size. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *path;
static long calls_per_thread;
static long long expected_size;
static long total_calls, mismatches, errors;
static pthread_mutex_t tally = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg)
{
	long calls = 0, wrong = 0, failed = 0;
	struct stat st;

	(void)arg;
	for (long i = 0; i < calls_per_thread; i++) {
		calls++;
		if (stat(path, &st) < 0) {
			failed++;
			continue;
		}
		if (st.st_size != expected_size)
			wrong++;
	}
	pthread_mutex_lock(&tally);
	total_calls += calls;
	mismatches += wrong;
	errors += failed;
	pthread_mutex_unlock(&tally);
	return NULL;
}

int main(int argc, char **argv)
{
	int nthreads;
	pthread_t *threads;

	if (argc != 5) {
		fprintf(stderr, "usage: stat_threads THREADS CALLS PATH EXPECTED_SIZE\n");
		return 2;
	}
	nthreads = atoi(argv[1]);
	calls_per_thread = atol(argv[2]);
	path = argv[3];
	expected_size = atoll(argv[4]);
	if (nthreads < 1 || calls_per_thread < 0) {
		fprintf(stderr, "stat_threads: bad counts\n");
		return 2;
	}
	threads = calloc(nthreads, sizeof *threads);
	for (int i = 0; i < nthreads; i++) {
		int error = pthread_create(&threads[i], NULL, worker, NULL);
		if (error) {
			fprintf(stderr, "stat_threads: pthread_create: %s\n", strerror(error));
			return 2;
		}
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(threads[i], NULL);
	printf("calls=%ld mismatches=%ld errors=%ld\n", total_calls, mismatches, errors);
	return mismatches || errors ? 1 : 0;
}
