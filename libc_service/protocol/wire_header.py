"""The protocol's frame: version, magics, function codes, limits, and its errors (``docs/protocol.md``).

Every message of the slave ⇄ master protocol starts with a magic and the
protocol's version; the codecs of the messages (:mod:`libc_service.protocol.wire_requests`,
:mod:`libc_service.protocol.wire_replies`, :mod:`libc_service.protocol.wire_reports`,
:mod:`libc_service.protocol.wire_registration`) build on the constants here. The
codecs are sans-I/O: pure functions between bytes + descriptor numbers and
typed messages, no sockets, no asyncio, no closing of descriptors. The
caller owns the I/O and the descriptors, and must close received
descriptors when decoding fails.

Errors follow h11's split, under one base, :class:`ProtocolError`:
:class:`RemoteProtocolError` means the *peer* sent something malformed (the
session is closed); :class:`LocalProtocolError` (also a ``ValueError``) and
``TypeError`` mean the *local caller* asked for something impossible (a
policy bug, raised at once). ``ProtocolError`` is not a ``ValueError``, so
an ``except ValueError`` meant for a caller's mistake never swallows a
hostile peer's message.
"""

from __future__ import annotations

from typing import Final

from libc_service.protocol.catalogue import FD_RESULT_FUNCTIONS, FUNCTIONS

__all__ = [
    "CODE",
    "HELLO_MAGIC",
    "MAX_ADDRINFO",
    "MAX_MESSAGE",
    "MAX_REPLY_FDS",
    "MAX_REQUEST_FDS",
    "REPLY_MAGIC",
    "REPORT_MAGIC",
    "REQUEST_MAGIC",
    "VERSION",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "reply_fd_limit",
]

#: 2: requests carry the caller's umask and filesystem credentials, every
#: open flag, and a relative unix socket path's directory.
VERSION: Final = 3
REQUEST_MAGIC: Final = b"LCSq"
REPLY_MAGIC: Final = b"LCSr"
HELLO_MAGIC: Final = b"LCSh"
REPORT_MAGIC: Final = b"LCSo"

MAX_REQUEST_FDS: Final = 2
MAX_REPLY_FDS: Final = 4
MAX_ADDRINFO: Final = 128
#: The largest datagram: a request header, the most groups and two strings
#: of ``PATH_MAX`` (a rename of two ``PATH_MAX_BYTES`` paths by a process in
#: ``MAX_GROUPS`` groups is ``72 + 4 * 64 + 2 * 4095`` bytes).
MAX_MESSAGE: Final = 8518

CODE: Final[dict[str, int]] = {name: code for code, name in enumerate(FUNCTIONS, 1)}


class ProtocolError(Exception):
    """The base of the protocol's errors: catch it to handle both sides' mistakes at once."""


class RemoteProtocolError(ProtocolError):
    """The peer sent a message that breaks the protocol; end the session."""


class LocalProtocolError(ProtocolError, ValueError):
    """The local caller asked for a message the protocol cannot carry.

    A ``ValueError`` too: a value out of the protocol's range is the
    caller's bad argument, as the encoders documented before the split.
    """


def reply_fd_limit(function: str) -> int:
    """How many descriptors a reply to ``function`` may carry."""
    return 1 if function in FD_RESULT_FUNCTIONS else MAX_REPLY_FDS
