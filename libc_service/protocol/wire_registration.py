"""The registration ("hello") a new slave process sends with its channel end (``docs/protocol.md``)."""

from __future__ import annotations

import struct
from typing import Final

from libc_service.protocol.wire_header import HELLO_MAGIC, VERSION, RemoteProtocolError

__all__ = ["REGISTRATION", "decode_registration", "encode_registration"]

#: magic, version, reserved, pid, reserved.
REGISTRATION: Final = struct.Struct("<4sHHII")


def encode_registration(pid: int) -> bytes:
    """The hello a new process sends with its channel end."""
    return REGISTRATION.pack(HELLO_MAGIC, VERSION, 0, pid, 0)


def decode_registration(data: bytes, nfds: int) -> int:
    """Validate a registration datagram; returns the registering pid."""
    if len(data) != REGISTRATION.size:
        raise RemoteProtocolError(f"registration of {len(data)} bytes, expected {REGISTRATION.size}")
    magic, version, reserved1, pid, reserved2 = REGISTRATION.unpack(data)
    if magic != HELLO_MAGIC or version != VERSION:
        raise RemoteProtocolError("bad registration magic or version")
    if reserved1 or reserved2 or pid == 0:
        raise RemoteProtocolError("bad registration fields")
    if nfds != 1:
        raise RemoteProtocolError(f"a registration carries exactly one descriptor, not {nfds}")
    return int(pid)
