/* signal_stat: under `floor_master stat`, stat() in a loop while a 200us
 * SIGALRM handler also calls stat(): the handler's call, made while the
 * thread is inside the shim, goes straight to the real libc instead of
 * deadlocking on the channel. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/time.h>
static volatile long handler_calls, handler_ok;
static void on_alarm(int sig) { struct stat st; (void)sig; handler_calls++; if (stat("/etc/passwd", &st) == 0) handler_ok++; }
int main(void) {
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	struct itimerval it = { { 0, 200 }, { 0, 200 } };
	struct stat st; long bad = 0;
	sigaction(SIGALRM, &sa, 0); setitimer(ITIMER_REAL, &it, 0);
	for (int i = 0; i < 50000; i++) if (stat("/etc/passwd", &st) || st.st_size != 4242) bad++;
	printf("main bad=%ld handler calls=%ld ok=%ld\n", bad, handler_calls, handler_ok);
	return bad != 0;
}
