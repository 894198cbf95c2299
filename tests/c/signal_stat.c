/* signal_stat [CALLS [PATH [SIZE]]]
 *
 * stat(PATH) CALLS times (default 50000, /etc/passwd, 4242) while a 200us
 * SIGALRM interrupts it.  The handler is installed without SA_RESTART, so a
 * signal landing while the shim waits for the master makes its recvmsg,
 * sendmsg or condition wait return early: the shim must retry, and every
 * call in the main loop must still get the master's answer (st_size ==
 * SIZE).  The handler itself calls stat() too: made while the thread is
 * inside the shim, that call goes straight to the real libc instead of
 * deadlocking on the channel.  Prints
 *   main bad=N handler calls=N ok=N
 * and exits 1 if any main-loop call went wrong. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

static const char *path = "/etc/passwd";
static volatile long handler_calls, handler_ok;

static void on_alarm(int sig)
{
	struct stat st;
	(void)sig;
	handler_calls++;
	if (stat(path, &st) == 0)
		handler_ok++;
}

int main(int argc, char **argv)
{
	long calls = argc > 1 ? atol(argv[1]) : 50000;
	long long size = argc > 3 ? atoll(argv[3]) : 4242;
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = 0 };
	struct itimerval it = { { 0, 200 }, { 0, 200 } };
	struct stat st;
	long bad = 0;

	if (argc > 2)
		path = argv[2];
	sigaction(SIGALRM, &sa, 0);
	setitimer(ITIMER_REAL, &it, 0);
	for (long i = 0; i < calls; i++)
		if (stat(path, &st) || st.st_size != size)
			bad++;
	memset(&it, 0, sizeof it);
	setitimer(ITIMER_REAL, &it, 0);
	printf("main bad=%ld handler calls=%ld ok=%ld\n", bad, handler_calls, handler_ok);
	return bad != 0;
}
