/* The shim's constructor: starts every module, in order.
 *
 * It may depend on every file of the shim; nothing depends on it
 * (tests/test_shim_layout.py checks both). */
#include <errno.h>

#include "shim.h"

/* Runs before main, single-threaded.  The guard's real functions are
 * resolved first, whatever happens next; the rest only when the process
 * was given a registration socket (LIBC_SERVICE_FD), which becomes the
 * shim's (activating it) once every module is ready. */
__attribute__((constructor)) static void shim_init(void)
{
	int saved = errno;
	int fd;

	lcs_fdguard_init();
	fd = lcs_ownfds_init();
	if (fd >= 0) {
		lcs_local_init();
		lcs_rules_init();
		lcs_report_init();
		lcs_channel_init();
		lcs_creds_init();
		lcs_ownfds_activate(fd);
	}
	errno = saved;
}
