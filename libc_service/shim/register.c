/* Registration: this process's channel to the master, made at its first
 * intercepted call (docs/shim.md "Registration").
 *
 * A SOCK_SEQPACKET socketpair: one end goes with the 16-byte "LCSh" hello
 * (this process's pid) over the registration socket (LIBC_SERVICE_FD) and
 * is closed here; the other, moved high and close-on-exec, is the channel.
 *
 * Depends on codec.c, datagram.c, ownfds.c and real.c. */
#include <sys/socket.h>

#include "shim.h"

int lcs_register_channel(void)
{
	unsigned char hello[LCS_HELLO_SIZE];
	int pair[2], reg = lcs_reg_fd(), high;
	ssize_t sent;

	if (!lcs_is_seqpacket(reg))
		return -1;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
		return -1;
	lcs_encode_hello(hello, lcs_own_pid());
	sent = lcs_send_datagram(reg, hello, sizeof hello, &pair[1], 1, 0);
	lcs_close_raw(pair[1]);
	if (sent != sizeof hello) {
		lcs_close_raw(pair[0]);
		return -1;
	}
	/* Out of the way of programs that dup2() onto low numbers. */
	high = lcs_move_high(pair[0], 1);
	if (high >= 0 && high != pair[0])
		lcs_close_raw(pair[0]);
	else
		high = pair[0];
	return high;
}
