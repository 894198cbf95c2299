/* load_stat THREADS CALLS
 *
 * THREADS threads each make CALLS stat() calls on their own paths,
 * "/lcs-load/PID/TID/THREAD/I", and check every answer against what the
 * master's load handler computes from the path it was asked about:
 *
 *   st_size = FNV-1a 64 of the path, top bit cleared
 *   st_ino  = the same hash XOR 0x9e3779b97f4a7c15
 *   st_nlink = I + 1,  st_mode = 0100640 (a regular file, rw-r-----)
 *
 * A reply meant for another call (another thread, another process, or an
 * earlier call of this thread) fails the check.  Prints
 * "calls=N ok=K misrouted=M errors=E" and exits 1 unless every call was
 * answered correctly. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static long calls_per_thread;
static long total_calls, total_ok, misrouted, errors;
static pthread_mutex_t tally = PTHREAD_MUTEX_INITIALIZER;

static uint64_t fnv1a(const char *text)
{
	uint64_t hash = 0xcbf29ce484222325ULL;

	for (; *text; text++) {
		hash ^= (unsigned char)*text;
		hash *= 0x100000001b3ULL;
	}
	return hash;
}

static void *worker(void *arg)
{
	long index = (long)(intptr_t)arg;
	long calls = 0, ok = 0, wrong = 0, failed = 0;
	pid_t pid = getpid(), tid = gettid();
	char path[128];
	struct stat st;

	for (long i = 0; i < calls_per_thread; i++) {
		uint64_t hash;

		snprintf(path, sizeof path, "/lcs-load/%d/%d/%ld/%ld", (int)pid, (int)tid, index, i);
		hash = fnv1a(path);
		calls++;
		if (stat(path, &st) < 0) {
			if (failed++ < 3)
				fprintf(stderr, "load_stat: stat %s: %s\n", path, strerror(errno));
			continue;
		}
		if ((uint64_t)st.st_size != (hash & INT64_MAX) || (uint64_t)st.st_ino != (hash ^ 0x9e3779b97f4a7c15ULL)
		    || st.st_nlink != (nlink_t)(i + 1) || st.st_mode != (S_IFREG | 0640)) {
			if (wrong++ < 3)
				fprintf(stderr, "load_stat: %s answered size=%lld ino=%llu nlink=%llu mode=%o\n", path,
					(long long)st.st_size, (unsigned long long)st.st_ino,
					(unsigned long long)st.st_nlink, (unsigned)st.st_mode);
			continue;
		}
		ok++;
	}
	pthread_mutex_lock(&tally);
	total_calls += calls;
	total_ok += ok;
	misrouted += wrong;
	errors += failed;
	pthread_mutex_unlock(&tally);
	return NULL;
}

int main(int argc, char **argv)
{
	int nthreads;
	pthread_t *threads;

	if (argc != 3) {
		fprintf(stderr, "usage: load_stat THREADS CALLS\n");
		return 2;
	}
	nthreads = atoi(argv[1]);
	calls_per_thread = atol(argv[2]);
	if (nthreads < 1 || calls_per_thread < 0) {
		fprintf(stderr, "load_stat: bad counts\n");
		return 2;
	}
	threads = calloc(nthreads, sizeof *threads);
	if (!threads)
		return 2;
	for (long i = 0; i < nthreads; i++) {
		int error = pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);
		if (error) {
			fprintf(stderr, "load_stat: pthread_create: %s\n", strerror(error));
			return 2;
		}
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(threads[i], NULL);
	printf("calls=%ld ok=%ld misrouted=%ld errors=%ld\n", total_calls, total_ok, misrouted, errors);
	free(threads);
	return total_ok == total_calls ? 0 : 1;
}
