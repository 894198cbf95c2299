/* fopen_read PATH MODE [DIR]
 *
 * Reads PATH with fopen(PATH, MODE) and prints its lines, then
 * "cloexec=0|1" for the stream's descriptor; with DIR, lists it with
 * opendir/readdir (sorted by the caller) after "entries:".  A failure
 * prints "fopen: ERRNAME" or "opendir: ERRNAME" and exits 1. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

static const char *name(int error)
{
	switch (error) {
	case EACCES: return "EACCES";
	case ENOENT: return "ENOENT";
	case EEXIST: return "EEXIST";
	case EROFS: return "EROFS";
	default: return strerror(error);
	}
}

int main(int argc, char **argv)
{
	char line[256];
	FILE *stream;

	if (argc < 3) {
		fprintf(stderr, "usage: fopen_read PATH MODE [DIR]\n");
		return 2;
	}
	stream = fopen(argv[1], argv[2]);
	if (!stream) {
		printf("fopen: %s\n", name(errno));
		return 1;
	}
	while (fgets(line, sizeof line, stream))
		fputs(line, stdout);
	printf("cloexec=%d\n", (fcntl(fileno(stream), F_GETFD) & FD_CLOEXEC) != 0);
	fclose(stream);
	if (argc > 3) {
		DIR *dir = opendir(argv[3]);
		struct dirent *entry;

		if (!dir) {
			printf("opendir: %s\n", name(errno));
			return 1;
		}
		printf("entries:");
		while ((entry = readdir(dir)))
			if (entry->d_name[0] != '.')
				printf(" %s", entry->d_name);
		printf("\n");
		closedir(dir);
	}
	return 0;
}
