/* idle_tree N PATH
 *
 * Fork N children; each calls stat(PATH) once (under the shim: registers
 * its own channel with the master) and then blocks reading stdin until it
 * is closed.  The parent waits for them all.  bench/memory.py uses it to
 * hold N idle sessions open in a master. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int n;
	struct stat st;
	char byte;

	if (argc != 3 || (n = atoi(argv[1])) < 1) {
		fprintf(stderr, "usage: idle_tree N PATH\n");
		return 2;
	}
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("idle_tree: fork");
			break;
		}
		if (pid == 0) {
			stat(argv[2], &st);
			while (read(0, &byte, 1) > 0)
				;
			_exit(0);
		}
	}
	while (wait(NULL) > 0)
		;
	return 0;
}
