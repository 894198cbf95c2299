"""Decoding a seccomp notification's socket address: the socket's domain decides, whatever the bytes say.

Property tests over every address a slave can write: the request's function
follows the domain of the socket (``SO_DOMAIN``, which the slave cannot
change), never the family the bytes claim; whatever else is refused or left
to the kernel on the master's copy.
"""

from __future__ import annotations

import errno
import socket
import struct
from unittest.mock import patch

from hypothesis import given
from hypothesis import strategies as st

from libc_service.seccomp.abi import Refuse
from libc_service.seccomp.decode import address_fields, new_times

DOMAINS = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
FAMILIES = st.sampled_from([0, socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, 17, 0xFFFF])


class _NoDirectory:
    """Stands in for the fetched descriptors: a relative unix path asks for the working directory."""

    def directory(self, dirfd: int, path: bytes) -> int:
        return 99


@given(
    name=st.sampled_from(["connect", "bind"]),
    domain=st.sampled_from(DOMAINS),
    family=FAMILIES,
    rest=st.binary(max_size=126),
)
def test_the_function_follows_the_sockets_domain_never_the_claimed_family(
    name: str, domain: int, family: int, rest: bytes
) -> None:
    raw = struct.pack("<H", family) + rest
    try:
        fields = address_fields(name, domain, family, raw, _NoDirectory())  # type: ignore[arg-type]
    except Refuse:
        return
    if fields is None:
        return  # the master does it on its copy of the socket: the kernel's answer
    kind = fields["function"].split("_", 1)[1]
    kinds: dict[int, set[str]] = {
        socket.AF_UNIX: {"unix"},
        socket.AF_INET: {"inet"},
        socket.AF_INET6: {"inet6", "inet"},
    }
    allowed = kinds[domain]
    assert fields["function"].startswith(name + "_")
    assert kind in allowed
    if kind == "unix":
        assert family == socket.AF_UNIX and len(raw) > 2


@given(
    name=st.sampled_from(["utime", "utimes", "futimesat", "utimensat"]),
    raw=st.binary(min_size=32, max_size=32),
)
def test_new_times_are_timespecs_or_refused(name: str, raw: bytes) -> None:
    import libc_service.seccomp.decode as notify_decode

    with patch.object(notify_decode, "read_memory", lambda tid, address, size: raw[:size]):
        try:
            times = new_times(name, 0, 1)
        except Refuse as refusal:
            assert refusal.code == errno.EINVAL
            return
    for value in times:
        assert value in ("now", "omit") or (isinstance(value, int) and -(2**63) <= value < 2**63)
