/* unix_connect PATH stream|dgram
 *
 * Reach a named unix socket as a static program would (built with -static,
 * no shim can see it): "stream" connects and prints what the service
 * answers, "dgram" sends one datagram and prints "sent"; or the errno
 * name of the step that failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_un address = { .sun_family = AF_UNIX };
	char buf[256];
	ssize_t got;
	int dgram, fd;

	if (argc != 3 || strlen(argv[1]) >= sizeof address.sun_path) {
		fprintf(stderr, "usage: unix_connect PATH stream|dgram\n");
		return 2;
	}
	strcpy(address.sun_path, argv[1]);
	dgram = strcmp(argv[2], "dgram") == 0;
	fd = socket(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0);
	if (fd < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	if (dgram) {
		if (sendto(fd, "DATAGRAM-REACHED", 16, 0, (struct sockaddr *)&address, sizeof address) < 0) {
			printf("%s\n", strerrorname_np(errno));
			return 1;
		}
		printf("sent\n");
		return 0;
	}
	if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	got = read(fd, buf, sizeof buf - 1);
	if (got < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	buf[got] = 0;
	printf("%s\n", buf);
	return 0;
}
