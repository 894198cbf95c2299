/* bench_calls N PATH
 *
 * Time N stat(PATH) calls and N open(PATH)+close pairs, one at a time, and
 * print the median and mean nanoseconds per call for each:
 *   stat median_ns=... mean_ns=... n=N
 *   open_close median_ns=... mean_ns=... n=N */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

static void report(const char *name, long long *samples, long n)
{
	long long sum = 0;

	for (long i = 0; i < n; i++)
		sum += samples[i];
	qsort(samples, n, sizeof *samples, by_value);
	printf("%s median_ns=%lld mean_ns=%lld n=%ld\n", name, samples[n / 2], sum / n, n);
}

int main(int argc, char **argv)
{
	long n;
	long long *samples;
	const char *path;
	struct stat st;

	if (argc != 3 || (n = atol(argv[1])) < 1) {
		fprintf(stderr, "usage: bench_calls N PATH\n");
		return 2;
	}
	path = argv[2];
	samples = malloc(n * sizeof *samples);
	if (!samples)
		return 2;
	for (long i = 0; i < n; i++) {
		long long start = now_ns();
		if (stat(path, &st) < 0) {
			perror("bench_calls: stat");
			return 1;
		}
		samples[i] = now_ns() - start;
	}
	report("stat", samples, n);
	for (long i = 0; i < n; i++) {
		long long start = now_ns();
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			perror("bench_calls: open");
			return 1;
		}
		close(fd);
		samples[i] = now_ns() - start;
	}
	report("open_close", samples, n);
	return 0;
}
