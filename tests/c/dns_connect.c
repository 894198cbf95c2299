/* A program that resolves by itself, as Go's resolver does: a UDP socket
 * connected to the nameserver, one A question, the first address of the
 * answer; then a TCP connect to that address and what the server says.
 *
 *   dns_connect NAMESERVER NAME PORT
 *
 * Prints "rcode N" for an error answer, "no answer" when none came,
 * "ADDRESS GREETING" or "ADDRESS connect: ERRNO" otherwise. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static size_t put_question(unsigned char *out, const char *name)
{
	static const unsigned char head[12] = { 0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };
	size_t at = sizeof head;

	memcpy(out, head, sizeof head);
	while (*name) {
		size_t len = strcspn(name, ".");
		out[at++] = (unsigned char)len;
		memcpy(out + at, name, len);
		at += len;
		name += len + (name[len] == '.');
	}
	out[at++] = 0;
	memcpy(out + at, "\0\1\0\1", 4); /* type A, class IN */
	return at + 4;
}

static size_t skip_name(const unsigned char *msg, size_t at, size_t len)
{
	while (at < len && msg[at]) {
		if ((msg[at] & 0xc0) == 0xc0)
			return at + 2;
		at += msg[at] + 1;
	}
	return at + 1;
}

int main(int argc, char **argv)
{
	unsigned char query[512], reply[512];
	struct sockaddr_in server = { .sin_family = AF_INET, .sin_port = htons(53) };
	struct timeval wait = { .tv_sec = 5 };
	char address[INET_ADDRSTRLEN], greeting[64] = "";
	ssize_t got;
	size_t at, sent;
	int udp, tcp, answers;

	if (argc != 4 || inet_pton(AF_INET, argv[1], &server.sin_addr) != 1)
		return 2;
	udp = socket(AF_INET, SOCK_DGRAM, 0);
	setsockopt(udp, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
	if (connect(udp, (struct sockaddr *)&server, sizeof server) < 0) {
		printf("connect nameserver: %d\n", errno);
		return 0;
	}
	sent = put_question(query, argv[2]);
	if (send(udp, query, sent, 0) < 0 || (got = recv(udp, reply, sizeof reply, 0)) < 12) {
		printf("no answer\n");
		return 0;
	}
	if (reply[0] != 0x12 || reply[1] != 0x34 || (reply[3] & 0xf)) {
		printf("rcode %d\n", reply[3] & 0xf);
		return 0;
	}
	answers = reply[6] << 8 | reply[7];
	at = skip_name(reply, 12, (size_t)got) + 4;
	for (; answers > 0 && at + 10 <= (size_t)got; answers--) {
		size_t rdlen;
		at = skip_name(reply, at, (size_t)got);
		rdlen = (size_t)(reply[at + 8] << 8 | reply[at + 9]);
		if (reply[at + 1] == 1 && rdlen == 4 && at + 14 <= (size_t)got)
			break;
		at += 10 + rdlen;
	}
	if (answers <= 0) {
		printf("no address\n");
		return 0;
	}
	memcpy(&server.sin_addr, reply + at + 10, 4);
	server.sin_port = htons((unsigned short)atoi(argv[3]));
	inet_ntop(AF_INET, &server.sin_addr, address, sizeof address);
	tcp = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(tcp, (struct sockaddr *)&server, sizeof server) < 0) {
		printf("%s connect: %d\n", address, errno);
		return 0;
	}
	got = read(tcp, greeting, sizeof greeting - 1);
	greeting[got > 0 ? got : 0] = 0;
	printf("%s %s\n", address, greeting);
	return 0;
}
