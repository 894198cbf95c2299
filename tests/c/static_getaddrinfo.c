/* getaddrinfo(NAME, "80") for IPv4 stream sockets, linked statically: glibc's
 * own resolver sends the question to the nameserver of /etc/resolv.conf.
 * Prints the return code and, on success, the first address. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *found;
	char text[INET_ADDRSTRLEN] = "";
	int code;

	if (argc != 2)
		return 2;
	code = getaddrinfo(argv[1], "80", &hints, &found);
	if (code == 0) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)found->ai_addr)->sin_addr, text, sizeof text);
		freeaddrinfo(found);
	}
	printf("%d %s\n", code, text);
	return 0;
}
