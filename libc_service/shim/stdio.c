/* Streams and directories: fopen, fopen64, opendir.
 *
 * glibc's fopen and opendir open their file with glibc-internal calls
 * that LD_PRELOAD cannot interpose, so they are interposed themselves: the
 * mode becomes open flags, the master is asked through the shim's open
 * path (fs.c), and a descriptor it grants is wrapped with fdopen or
 * fdopendir.  "forward", an inactive shim, or a mode the shim does not
 * parse (glibc's ",ccs=", 'm', 'c', anything unusual) go to the real
 * function with the original arguments. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "shim.h"

#define MODE_MAX 7 /* "r+bxe" and reorderings fit; longer goes to the real fopen */

/* fopen's mode as open flags, and in *plain the mode fdopen is given (the
 * same without 'x' and 'e', which fdopen ignores or, in other C
 * libraries, refuses).  Returns -1 for a mode the real fopen must parse. */
static int stream_flags(const char *mode, char plain[MODE_MAX + 1])
{
	int flags, n = 0;

	if (strnlen(mode, MODE_MAX + 1) > MODE_MAX)
		return -1;
	switch (mode[0]) {
	case 'r': flags = O_RDONLY; break;
	case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
	case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
	default: return -1;
	}
	plain[n++] = mode[0];
	for (const char *c = mode + 1; *c; c++) {
		switch (*c) {
		case '+': flags = (flags & ~O_ACCMODE) | O_RDWR; plain[n++] = '+'; break;
		case 'b': plain[n++] = 'b'; break;
		case 'x': flags |= O_EXCL; break;
		case 'e': flags |= O_CLOEXEC; break;
		default: return -1;
		}
	}
	plain[n] = 0;
	return flags;
}

/* Ask the master for the file of an fopen.  Returns LCS_FALLBACK or
 * LCS_FORWARDED (the real fopen does it, see stream_after), or
 * LCS_ANSWERED with *stream set (NULL with errno on failure). */
static int open_stream(const char *path, const char *mode, FILE **stream)
{
	char plain[MODE_MAX + 1];
	int flags, fd, how, saved_errno = errno;

	if (!path || !mode || (flags = stream_flags(mode, plain)) < 0)
		return LCS_FALLBACK;
	how = lcs_open_call(AT_FDCWD, path, flags, 0666, &fd);
	if (how != LCS_ANSWERED)
		return how;
	*stream = NULL;
	if (fd < 0)
		return LCS_ANSWERED;
	*stream = fdopen(fd, plain);
	if (!*stream) {
		int error = errno;
		lcs_close_raw(fd);
		errno = error;
	} else {
		errno = saved_errno;
	}
	return LCS_ANSWERED;
}

/* The real call's stream, its descriptor reported when how is
 * LCS_FORWARDED. */
static FILE *stream_after(int how, FILE *stream)
{
	if (how == LCS_FORWARDED)
		lcs_report_result(stream ? fileno(stream) : -1, stream ? 0 : errno);
	return stream;
}

LCS_EXPORT FILE *fopen(const char *path, const char *mode)
{
	FILE *stream;
	int how = open_stream(path, mode, &stream);

	return LCS_ANSWERED_OR_REAL_AFTER(stream_after, how, stream, LCS_REAL(fopen)(path, mode));
}

LCS_EXPORT FILE *fopen64(const char *path, const char *mode)
{
	FILE *stream;
	int how = open_stream(path, mode, &stream);

	return LCS_ANSWERED_OR_REAL_AFTER(stream_after, how, stream, LCS_REAL(fopen64)(path, mode));
}

/* Ask the master for the directory of an opendir: as open(path,
 * read_only | directory), close-on-exec, the granted descriptor read with
 * fdopendir (which checks it is a directory opened for reading).  Returns
 * LCS_FALLBACK or LCS_FORWARDED (the real opendir does it, see
 * directory_after; a NULL path goes there too), or LCS_ANSWERED with
 * *dir set (NULL with errno on failure). */
static int open_directory(const char *path, DIR **dir)
{
	int fd, how, saved_errno = errno;

	how = lcs_open_call(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, &fd);
	if (how != LCS_ANSWERED)
		return how;
	*dir = NULL;
	if (fd < 0)
		return LCS_ANSWERED;
	*dir = fdopendir(fd);
	if (!*dir) {
		int error = errno;
		lcs_close_raw(fd);
		errno = error;
	} else {
		errno = saved_errno;
	}
	return LCS_ANSWERED;
}

/* The real call's directory, its descriptor reported when how is
 * LCS_FORWARDED. */
static DIR *directory_after(int how, DIR *dir)
{
	if (how == LCS_FORWARDED)
		lcs_report_result(dir ? dirfd(dir) : -1, dir ? 0 : errno);
	return dir;
}

LCS_EXPORT DIR *opendir(const char *path)
{
	DIR *dir;
	int how = open_directory(path, &dir);

	return LCS_ANSWERED_OR_REAL_AFTER(directory_after, how, dir, LCS_REAL(opendir)(path));
}
