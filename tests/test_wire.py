"""The sans-I/O codec: every request and reply survives a round trip, and
every malformed message is a ProtocolError, never anything else."""

from __future__ import annotations

import errno
import os
import struct
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from libc_service import AddrInfo, Stat
from libc_service.protocol.wire_header import LocalProtocolError, ProtocolError, RemoteProtocolError
from libc_service.protocol import openflags
from libc_service.protocol import wire_fields
from libc_service.protocol import wire_header
from libc_service.protocol import wire_registration
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_requests
from libc_service.protocol.replies import GAI_ERRORS
from libc_service.protocol.requests import (
    FUNCTIONS,
    MAX_GROUPS,
    OPENAT_FLAGS,
    PATH_MAX_BYTES,
    REQUEST_TYPES,
    BindUnixRequest,
    ConnectInet6Request,
    ConnectInetRequest,
    ConnectUnixRequest,
    GetaddrinfoRequest,
    OpenatRequest,
    OpenRequest,
    RenameRequest,
    StatRequest,
)
from libc_service.protocol.wire_replies import ReplyMessage, decode_reply, encode_reply
from libc_service.protocol.wire_requests import decode_request, encode_request

import strategies as s
from strategies import raw_reply, raw_request

# ------------------------------------------------------------------ helpers


def test_the_header_layouts_match_the_protocol_document() -> None:
    assert wire_requests.REQUEST.size == 72
    assert wire_fields.GROUP.size == 4
    assert wire_replies.REPLY.size == 48
    assert wire_replies.STAT.size == 152
    assert wire_replies.ADDRINFO.size == 24
    assert wire_registration.REGISTRATION.size == 16
    assert (
        wire_header.MAX_REQUEST_FDS,
        wire_header.MAX_REPLY_FDS,
        wire_header.MAX_ADDRINFO,
        wire_header.MAX_MESSAGE,
    ) == (2, 4, 128, 8518)
    assert (
        wire_header.MAX_MESSAGE == wire_requests.REQUEST.size + wire_fields.GROUP.size * MAX_GROUPS + 2 * PATH_MAX_BYTES
    )
    assert wire_header.VERSION == 3


def test_function_codes_are_the_documented_ones() -> None:
    documented = {
        1: "open",
        2: "openat",
        3: "unlink",
        4: "rename",
        5: "stat",
        6: "lstat",
        7: "access",
        8: "eaccess",
        9: "mkdir",
        10: "rmdir",
        11: "connect_unix",
        12: "connect_inet",
        13: "connect_inet6",
        14: "bind_unix",
        15: "bind_inet",
        16: "bind_inet6",
        17: "getaddrinfo",
        18: "chmod",
        19: "fchmod",
        20: "chown",
        21: "fchown",
        22: "utimens",
        23: "futimens",
    }
    assert {code: name for name, code in wire_header.CODE.items()} == documented
    assert set(REQUEST_TYPES) == set(FUNCTIONS) == set(documented.values())


def test_metadata_arguments_travel_as_documented() -> None:
    """chown's ids in the address field's first 8 bytes, utimens's times in its 16, flags say which."""
    chown = wire_requests.decode_request(
        raw_request(
            b"x",
            function=wire_header.CODE["chown"],
            flags=wire_fields.META_NO_FOLLOW | wire_fields.CHOWN_GROUP,
            address=bytes(4) + (1000).to_bytes(4, "little") + bytes(8),
            roles=wire_fields.ROLE_DIR1,
        ),
        [5],
    )
    assert (chown.owner, chown.group, chown.no_follow, chown.dirfd) == (None, 1000, True, 5)  # type: ignore[union-attr]
    times = wire_fields.TIMES.pack(-1, 0)
    utimens = wire_requests.decode_request(
        raw_request(b"/f", function=wire_header.CODE["utimens"], flags=wire_fields.MTIME_OMIT, address=times)
    )
    assert (utimens.atime, utimens.mtime, utimens.no_follow) == (-1, "omit", False)  # type: ignore[union-attr]
    fchmod = wire_requests.decode_request(
        raw_request(b"", function=wire_header.CODE["fchmod"], arg=0o4755, roles=wire_fields.ROLE_DIR1), [9]
    )
    assert (fchmod.fd, fchmod.mode) == (9, 0o4755)  # type: ignore[union-attr]
    now = wire_requests.decode_request(
        raw_request(
            b"",
            function=wire_header.CODE["futimens"],
            roles=wire_fields.ROLE_DIR1,
            flags=wire_fields.ATIME_NOW | wire_fields.MTIME_NOW,
        ),
        [4],
    )
    assert (now.fd, now.atime, now.mtime) == (4, "now", "now")  # type: ignore[union-attr]


@given(s.requests_of("chown") | s.requests_of("fchown"))
def test_an_unchanged_owner_or_group_is_none_on_both_sides(request: Any) -> None:
    data, fds = wire_requests.encode_request(request)
    decoded = wire_requests.decode_request(data, fds)
    assert (decoded.owner, decoded.group) == (request.owner, request.group)  # type: ignore[union-attr]


def test_open_flag_bits_are_the_documented_ones() -> None:
    assert openflags.OPEN_FLAG_BITS == {
        "read_only": 1 << 0,
        "write_only": 1 << 1,
        "read_write": 1 << 2,
        "append": 1 << 3,
        "create": 1 << 4,
        "directory": 1 << 5,
        "exclusive": 1 << 6,
        "no_follow": 1 << 7,
        "path": 1 << 8,
        "sync_all_on_write": 1 << 9,
        "temporary": 1 << 10,
        "truncate": 1 << 11,
        "resolve_beneath": 1 << 16,
        "resolve_in_root": 1 << 17,
        "resolve_no_magiclinks": 1 << 18,
        "resolve_no_symlinks": 1 << 19,
        "resolve_no_xdev": 1 << 20,
        "resolve_cached": 1 << 21,
        "non_blocking": 1 << 24,
        "no_ctty": 1 << 25,
        "close_on_exec": 1 << 26,
        "sync_data_on_write": 1 << 27,
        "no_atime": 1 << 28,
        "direct": 1 << 29,
        "async_signals": 1 << 30,
        "large_file": 1 << 31,
    }
    assert set(openflags.OPEN_FLAG_BITS) == set(OPENAT_FLAGS)


def test_a_hand_packed_stat_request_decodes_to_the_model() -> None:
    request = decode_request(raw_request())
    assert request == StatRequest(path="/etc/hostname", pid=7, tid=8, request_id=9)


# -------------------------------------------------------- request round trip


@pytest.mark.parametrize("function", FUNCTIONS)
@given(data=st.data())
def test_every_function_survives_encode_then_decode(function: str, data: st.DataObject) -> None:
    request = data.draw(s.requests_of(function))
    raw, fds = encode_request(request)
    assert len(raw) <= wire_header.MAX_MESSAGE
    assert sorted(fds) == sorted(request.descriptors())
    decoded = decode_request(raw, fds)
    assert type(decoded) is type(request)
    assert decoded == request
    for name in ("path", "path1", "path2"):
        if hasattr(request, name):
            assert str(getattr(decoded, name)) == str(getattr(request, name))
    if hasattr(request, "address"):
        assert decoded.address.packed == request.address.packed  # type: ignore[union-attr]
        assert getattr(decoded.address, "scope_id", None) == getattr(request.address, "scope_id", None)  # type: ignore[union-attr]
    assert encode_request(decoded) == (raw, fds)
    for name in ("umask", "fsuid", "fsgid", "groups"):
        assert getattr(decoded, name) == getattr(request, name)


# ------------------------------------------------- the caller's context


@given(request=s.requests)
def test_the_context_bits_say_which_values_came(request: Any) -> None:
    raw, _ = encode_request(request)
    (*_, context, umask, ngroups, reserved, fsuid, fsgid) = wire_requests.REQUEST.unpack_from(raw)
    assert context == (
        (request.umask is not None) * wire_fields.CONTEXT_UMASK
        | (request.fsuid is not None) * wire_fields.CONTEXT_FSUID
        | (request.fsgid is not None) * wire_fields.CONTEXT_FSGID
        | (request.groups is not None) * wire_fields.CONTEXT_GROUPS
    )
    assert (umask, fsuid, fsgid) == (request.umask or 0, request.fsuid or 0, request.fsgid or 0)
    assert ngroups == len(request.groups or ())
    assert reserved == bytes(3)
    groups = raw[wire_requests.REQUEST.size : wire_requests.REQUEST.size + 4 * ngroups]
    assert groups == b"".join(wire_fields.GROUP.pack(gid) for gid in request.groups or ())


def test_a_request_that_says_nothing_of_its_caller_has_unknown_context() -> None:
    request = decode_request(raw_request())
    assert (request.umask, request.fsuid, request.fsgid, request.groups) == (None, None, None, None)


_EVERY = wire_fields.CONTEXT_UMASK | wire_fields.CONTEXT_FSUID | wire_fields.CONTEXT_FSGID | wire_fields.CONTEXT_GROUPS


def test_a_hand_packed_context_decodes_to_the_fields() -> None:
    data = raw_request(context=_EVERY, umask=0o077, fsuid=65534, fsgid=65533, groups=(4, 24, 27))
    request = decode_request(data)
    assert (request.umask, request.fsuid, request.fsgid, request.groups) == (0o077, 65534, 65533, (4, 24, 27))
    assert str(request.path) == "/etc/hostname", "the strings follow the group list"
    assert encode_request(request)[0] == data


def test_root_with_no_supplementary_groups_is_not_unknown() -> None:
    # Zero values with their bits set are known zeros, not absent values.
    request = decode_request(raw_request(context=_EVERY))
    assert (request.umask, request.fsuid, request.fsgid, request.groups) == (0, 0, 0, ())


def test_the_most_groups_with_the_longest_rename_fit_in_one_message() -> None:
    groups = tuple(range(MAX_GROUPS))
    request = RenameRequest(path1="a" * 4095, path2="b" * 4095, pid=1, tid=1, groups=groups, umask=0o22)
    raw, fds = encode_request(request)
    assert len(raw) == wire_header.MAX_MESSAGE
    assert decode_request(raw, fds) == request


@pytest.mark.parametrize("fields", [{"groups": tuple(range(MAX_GROUPS + 1))}, {"umask": 0o1000}, {"fsuid": 2**32}])
def test_a_context_the_protocol_cannot_carry_is_the_callers_error(fields: dict[str, Any]) -> None:
    unknown = {"umask": None, "fsuid": None, "fsgid": None, "groups": None}
    request = StatRequest.model_construct(path=PurePosixPath("/x"), pid=1, tid=1, **{**unknown, **fields})
    with pytest.raises(ValueError):
        encode_request(request)


# -------------------------------------------- relative unix socket paths


@pytest.mark.parametrize("model", [ConnectUnixRequest, BindUnixRequest])
def test_a_relative_socket_path_carries_its_directory_before_the_socket(model: Any) -> None:
    request = model(path="run/sock", socket=7, dirfd=5, pid=1, tid=1)
    raw, fds = encode_request(request)
    assert fds == [5, 7], "descriptors travel in role bit order: directory, then socket"
    assert wire_requests.REQUEST.unpack_from(raw)[12] == wire_fields.ROLE_DIR1 | wire_fields.ROLE_SOCKET
    decoded = decode_request(raw, fds)
    assert (decoded.dirfd, decoded.socket) == (5, 7)  # type: ignore[union-attr]
    assert decoded.descriptors() == (7, 5), "the socket first, as a caller gives them"


@pytest.mark.parametrize("path", ["/run/sock", "\0abstract", "\0"])
def test_an_absolute_or_abstract_socket_path_carries_no_directory(path: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        ConnectUnixRequest(path=path, socket=3, dirfd=4)
    data = raw_request(
        os.fsencode(path),
        function=wire_header.CODE["connect_unix"],
        roles=wire_fields.ROLE_DIR1 | wire_fields.ROLE_SOCKET,
    )
    with pytest.raises(ProtocolError):
        decode_request(data, [4, 3])


@given(raw=s.path_bytes)
@example(raw=b"dir/")
@example(raw=b"link/.")
@example(raw=b"./a//b/")
@example(raw=b"\xff\xfe/\x80")
def test_the_master_sees_the_path_bytes_the_slave_sent(raw: bytes) -> None:
    # A trailing slash makes lstat follow a symlink and open insist on a
    # directory: the path must not be normalised on the way.
    request = decode_request(raw_request(raw, roles=wire_fields.ROLE_DIR1), [5])
    assert isinstance(request, StatRequest)
    assert os.fsencode(request.path) == raw
    assert request.dirfd == 5
    assert encode_request(request)[0] == raw_request(raw, roles=wire_fields.ROLE_DIR1)


@given(raw=s.unix_path_bytes)
@example(raw=b"\0name//with/./slashes/")
@example(raw=b"\0")
@example(raw=b"\0\0\0")
def test_an_abstract_socket_name_arrives_byte_for_byte(raw: bytes) -> None:
    data = raw_request(raw, function=wire_header.CODE["connect_unix"], roles=wire_fields.ROLE_SOCKET)
    request = decode_request(data, [6])
    assert isinstance(request, ConnectUnixRequest)
    assert os.fsencode(str(request.path)) == raw
    assert request.abstract == raw.startswith(b"\0")
    assert encode_request(request) == (data, [6])


@pytest.mark.parametrize(
    ("node", "service"), [("example.org", None), (None, "http"), ("example.org", "http"), ("", "0"), ("::1", "")]
)
@pytest.mark.parametrize("protocol", [None, "tcp", "udp"])
def test_getaddrinfo_node_and_service_combinations(node: str | None, service: str | None, protocol: str | None) -> None:
    request = GetaddrinfoRequest(node=node, service=service, protocol=protocol, pid=1, tid=1)
    raw, fds = encode_request(request)
    assert fds == []
    header = wire_requests.REQUEST.unpack_from(raw)
    assert header[6] == (node is not None) | (service is not None) << 1
    assert header[7] == {None: 0, "tcp": 6, "udp": 17}[protocol]
    assert decode_request(raw) == request


@given(flags_mode=s.open_flags_and_mode(at=True))
def test_every_openat_flag_combination_round_trips(flags_mode: tuple[frozenset[str], int | None]) -> None:
    flags, mode = flags_mode
    request = OpenatRequest(path="f", flags=flags, mode=mode, pid=1, tid=1)
    decoded = decode_request(*encode_request(request))
    assert decoded == request
    assert isinstance(decoded, OpenatRequest) and decoded.flags == flags and decoded.mode == mode


@pytest.mark.parametrize("amode", ["f", "r", "w", "x", "rw", "rx", "wx", "rwx"])
@pytest.mark.parametrize("function", ["access", "eaccess"])
def test_every_amode_round_trips(function: str, amode: str) -> None:
    model: Any = REQUEST_TYPES[function]
    request = model(path="/bin/sh", amode=amode, pid=1, tid=1)
    raw, _ = encode_request(request)
    expected_bits = 0 if amode == "f" else sum({"r": 4, "w": 2, "x": 1}[m] for m in amode)
    assert wire_requests.REQUEST.unpack_from(raw)[6] == expected_bits
    assert decode_request(raw) == request


def test_an_ipv6_scope_id_travels_in_its_own_field() -> None:
    request = ConnectInet6Request(address="fe80::1%7", port=443, socket=3, pid=1, tid=1)
    raw, fds = encode_request(request)
    header = wire_requests.REQUEST.unpack_from(raw)
    assert header[8] == IPv6Address("fe80::1").packed and header[9] == 7
    decoded = decode_request(raw, fds)
    assert decoded.address == IPv6Address("fe80::1%7")  # type: ignore[union-attr]


# -------------------------------------------------------- malformed requests


def _decodes_or_protocol_error(data: bytes, fds: list[int]) -> None:
    try:
        decode_request(data, fds)
    except ProtocolError:
        pass


@given(data=st.binary(max_size=wire_header.MAX_MESSAGE + 16), nfds=st.integers(0, 4))
def test_random_bytes_are_a_protocol_error(data: bytes, nfds: int) -> None:
    with pytest.raises(ProtocolError):
        decode_request(data, list(range(100, 100 + nfds)))


@given(
    request=s.requests,
    flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(1, 255)), min_size=1, max_size=4),
    extra_fd=st.booleans(),
)
def test_a_corrupted_request_is_valid_or_a_protocol_error(
    request: Any, flips: list[tuple[int, int]], extra_fd: bool
) -> None:
    raw, fds = encode_request(request)
    mutated = bytearray(raw)
    for position, xor in flips:
        mutated[position % len(mutated)] ^= xor
    _decodes_or_protocol_error(bytes(mutated), fds + [99] * extra_fd)


@given(request=s.requests, cut=st.integers(0, 2**16))
def test_a_truncated_request_is_a_protocol_error(request: Any, cut: int) -> None:
    raw, fds = encode_request(request)
    with pytest.raises(ProtocolError):
        decode_request(raw[: cut % len(raw)], fds)


def _bad(reason: str, data: bytes, fds: tuple[int, ...] = ()) -> Any:
    return pytest.param(data, list(fds), id=reason)


_OPEN = wire_header.CODE["open"]
_CHMOD, _FCHMOD, _CHOWN, _UTIMENS = (wire_header.CODE[name] for name in ("chmod", "fchmod", "chown", "utimens"))
_BAD_REQUESTS = [
    _bad("empty", b""),
    _bad("header only half there", raw_request()[:40]),
    _bad("bad magic", raw_request(magic=b"LCSr")),
    _bad("version 1", raw_request(version=1)),
    _bad("the next version", raw_request(version=wire_header.VERSION + 1)),
    _bad("function code 0", raw_request(function=0)),
    _bad("function code 24", raw_request(function=24)),
    _bad("function code 65535", raw_request(function=65535)),
    _bad("pid 0", raw_request(pid=0)),
    _bad("tid 0", raw_request(tid=0)),
    *[_bad(f"reserved byte {i}", raw_request(reserved=bytes(i) + b"\1" + bytes(2 - i))) for i in range(3)],
    *[_bad(f"context bit {bit}", raw_request(context=1 << bit)) for bit in range(4, 8)],
    _bad("umask without its bit", raw_request(umask=0o22)),
    _bad("umask beyond 0o777", raw_request(context=wire_fields.CONTEXT_UMASK, umask=0o1000)),
    _bad("fsuid without its bit", raw_request(fsuid=1)),
    _bad("fsgid without its bit", raw_request(context=wire_fields.CONTEXT_FSUID, fsgid=1)),
    _bad("groups without their bit", raw_request(groups=(1,))),
    _bad("65 groups", raw_request(context=wire_fields.CONTEXT_GROUPS, groups=tuple(range(65)))),
    _bad("group count lies", raw_request(context=wire_fields.CONTEXT_GROUPS, groups=(1, 2), ngroups=3)),
    *[_bad(f"fd role bit {bit}", raw_request(roles=1 << bit), (3,)) for bit in range(3, 8)],
    _bad("len1 longer than the data", raw_request(len1=14)),
    _bad("len1 shorter than the data", raw_request(len1=12)),
    _bad("len2 lies", raw_request(len2=1)),
    _bad("trailing garbage", raw_request() + b"x"),
    _bad("oversized datagram", raw_request(b"/" * 4095, b"/" * 4095) + bytes(40)),
    _bad("roles announce a descriptor that did not come", raw_request(roles=wire_fields.ROLE_DIR1)),
    _bad("a descriptor no role announced", raw_request(), (3,)),
    _bad("two descriptors, one role", raw_request(roles=wire_fields.ROLE_DIR1), (3, 4)),
    _bad("stat with the socket role", raw_request(roles=wire_fields.ROLE_SOCKET), (3,)),
    _bad("stat with a second directory", raw_request(roles=wire_fields.ROLE_DIR2), (3,)),
    _bad("empty path", raw_request(b"")),
    _bad("path with NUL", raw_request(b"/etc\0/passwd")),
    _bad("path of 4096 bytes", raw_request(b"/" * 4096)),
    _bad("stat with string2", raw_request(b"/a", b"/b")),
    _bad("stat with flags", raw_request(flags=1)),
    _bad("stat with arg", raw_request(arg=1)),
    _bad("stat with an address", raw_request(address=b"\1" + bytes(15))),
    _bad("stat with a scope", raw_request(scope=1)),
    _bad("open without access mode", raw_request(function=_OPEN, flags=0)),
    _bad("open with two access modes", raw_request(function=_OPEN, flags=0b11)),
    _bad("open with a resolve flag", raw_request(function=_OPEN, flags=1 | 1 << 16)),
    *[
        _bad(f"open with undefined flag bit {bit}", raw_request(function=_OPEN, flags=1 | 1 << bit))
        for bit in (12, 15, 22, 23)
    ],
    _bad("openat with undefined flag bit 22", raw_request(function=wire_header.CODE["openat"], flags=1 | 1 << 22)),
    _bad("open with a mode but no create", raw_request(function=_OPEN, flags=1, arg=0o644)),
    _bad("open with a mode beyond 0o7777", raw_request(function=_OPEN, flags=1 | 1 << 4, arg=0o10000)),
    _bad("mkdir with a mode beyond 0o7777", raw_request(function=wire_header.CODE["mkdir"], arg=0o17777)),
    _bad("mkdir with flags", raw_request(function=wire_header.CODE["mkdir"], flags=1)),
    _bad("access with amode bit 3", raw_request(function=wire_header.CODE["access"], flags=8)),
    _bad("access with arg", raw_request(function=wire_header.CODE["access"], arg=1)),
    _bad("rename without path2", raw_request(function=wire_header.CODE["rename"])),
    _bad("rename with the socket role", raw_request(b"/a", b"/b", function=wire_header.CODE["rename"], roles=4), (3,)),
    _bad("rename with an unknown flag", raw_request(b"/a", b"/b", function=wire_header.CODE["rename"], flags=2)),
    _bad("connect_unix without its socket", raw_request(b"\0x", function=wire_header.CODE["connect_unix"])),
    _bad(
        "connect_unix with a directory only",
        raw_request(b"s", function=wire_header.CODE["connect_unix"], roles=1),
        (3,),
    ),
    _bad(
        "connect_unix with a directory for an absolute path",
        raw_request(b"/s", function=wire_header.CODE["connect_unix"], roles=5),
        (3, 4),
    ),
    _bad(
        "connect_unix with a second directory",
        raw_request(b"s", function=wire_header.CODE["connect_unix"], roles=6),
        (3, 4),
    ),
    _bad(
        "connect_unix path of 109 bytes",
        raw_request(b"s" * 109, function=wire_header.CODE["connect_unix"], roles=4),
        (3,),
    ),
    _bad("connect_unix empty path", raw_request(b"", function=wire_header.CODE["connect_unix"], roles=4), (3,)),
    _bad(
        "connect_unix NUL inside a file name",
        raw_request(b"/s\0t", function=wire_header.CODE["connect_unix"], roles=4),
        (3,),
    ),
    _bad(
        "connect_unix with string2", raw_request(b"/s", b"t", function=wire_header.CODE["connect_unix"], roles=4), (3,)
    ),
    _bad("bind_unix with flags", raw_request(b"/s", function=wire_header.CODE["bind_unix"], roles=4, flags=1), (3,)),
    _bad("connect_inet with a path", raw_request(b"/s", function=wire_header.CODE["connect_inet"], roles=4), (3,)),
    _bad(
        "connect_inet with IPv6 bytes",
        raw_request(b"", function=wire_header.CODE["connect_inet"], roles=4, address=bytes(15) + b"\1"),
        (3,),
    ),
    _bad(
        "connect_inet with a scope", raw_request(b"", function=wire_header.CODE["connect_inet"], roles=4, scope=1), (3,)
    ),
    _bad(
        "connect_inet port 65536", raw_request(b"", function=wire_header.CODE["connect_inet"], roles=4, arg=65536), (3,)
    ),
    _bad("connect_inet without its socket", raw_request(b"", function=wire_header.CODE["connect_inet"])),
    _bad("bind_inet6 with flags", raw_request(b"", function=wire_header.CODE["bind_inet6"], roles=4, flags=2), (3,)),
    _bad("bind_inet6 port 70000", raw_request(b"", function=wire_header.CODE["bind_inet6"], roles=4, arg=70000), (3,)),
    _bad("getaddrinfo with nothing present", raw_request(b"", function=wire_header.CODE["getaddrinfo"])),
    _bad(
        "getaddrinfo with a descriptor",
        raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=1, roles=1),
        (3,),
    ),
    _bad(
        "getaddrinfo with an unannounced descriptor",
        raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=1),
        (3,),
    ),
    _bad("getaddrinfo presence bit 2", raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=5)),
    _bad("getaddrinfo protocol 1", raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=1, arg=1)),
    _bad(
        "getaddrinfo absent node with bytes",
        raw_request(b"x", b"80", function=wire_header.CODE["getaddrinfo"], flags=2),
    ),
    _bad("getaddrinfo node of 1026 bytes", raw_request(b"n" * 1026, function=wire_header.CODE["getaddrinfo"], flags=1)),
    _bad(
        "getaddrinfo service of 33 bytes",
        raw_request(b"", b"s" * 33, function=wire_header.CODE["getaddrinfo"], flags=2),
    ),
    _bad("chmod with a mode beyond 0o7777", raw_request(function=_CHMOD, arg=0o10000)),
    _bad("chmod with an unknown flag bit", raw_request(function=_CHMOD, flags=2)),
    _bad("chmod with address bytes", raw_request(function=_CHMOD, address=b"\1" + bytes(15))),
    _bad("chmod with a scope", raw_request(function=_CHMOD, scope=1)),
    _bad("chmod with string2", raw_request(b"/a", b"/b", function=_CHMOD)),
    _bad("chmod with the socket role", raw_request(function=_CHMOD, roles=4), (3,)),
    _bad("chmod with an empty path", raw_request(b"", function=_CHMOD)),
    _bad("fchmod without its descriptor", raw_request(b"", function=_FCHMOD)),
    _bad("fchmod with a path", raw_request(b"/a", function=_FCHMOD, roles=1), (3,)),
    _bad("fchmod with no_follow", raw_request(b"", function=_FCHMOD, roles=1, flags=1), (3,)),
    _bad("chown with arg", raw_request(function=_CHOWN, arg=1)),
    _bad("chown owner without its bit", raw_request(function=_CHOWN, address=b"\1" + bytes(15))),
    _bad("chown group without its bit", raw_request(function=_CHOWN, flags=2, address=bytes(4) + b"\1" + bytes(11))),
    _bad("chown with address bytes 8-15", raw_request(function=_CHOWN, flags=6, address=bytes(8) + b"\1" + bytes(7))),
    _bad("chown with flag bit 3", raw_request(function=_CHOWN, flags=8)),
    _bad("fchown without its descriptor", raw_request(b"", function=wire_header.CODE["fchown"], flags=2)),
    _bad(
        "utimens atime now and omit",
        raw_request(function=_UTIMENS, flags=wire_fields.ATIME_NOW | wire_fields.ATIME_OMIT),
    ),
    _bad(
        "utimens mtime now and omit",
        raw_request(function=_UTIMENS, flags=wire_fields.MTIME_NOW | wire_fields.MTIME_OMIT),
    ),
    _bad(
        "utimens atime now with a value",
        raw_request(function=_UTIMENS, flags=wire_fields.ATIME_NOW, address=b"\1" + bytes(15)),
    ),
    _bad(
        "utimens mtime omit with a value",
        raw_request(function=_UTIMENS, flags=wire_fields.MTIME_OMIT, address=bytes(8) + b"\1" + bytes(7)),
    ),
    _bad("utimens with flag bit 5", raw_request(function=_UTIMENS, flags=32)),
    _bad("utimens with arg", raw_request(function=_UTIMENS, arg=1)),
    _bad("futimens with a path", raw_request(b"/a", function=wire_header.CODE["futimens"], roles=1), (3,)),
    _bad("getaddrinfo node with NUL", raw_request(b"a\0b", function=wire_header.CODE["getaddrinfo"], flags=1)),
    _bad(
        "getaddrinfo with an address",
        raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=1, address=b"\1" + bytes(15)),
    ),
]


@pytest.mark.parametrize(("data", "fds"), _BAD_REQUESTS)
def test_a_malformed_request_is_a_protocol_error(data: bytes, fds: list[int]) -> None:
    with pytest.raises(ProtocolError):
        decode_request(data, fds)


def test_a_rename_of_two_longest_paths_fits_in_one_message() -> None:
    request = RenameRequest(path1="a" * 4095, path2="b" * 4095, pid=1, tid=1)
    raw, fds = encode_request(request)
    assert len(raw) <= wire_header.MAX_MESSAGE
    assert decode_request(raw, fds) == request


def test_the_limits_themselves_are_accepted() -> None:
    assert decode_request(raw_request(b"/" * 4095))
    groups = tuple(range(MAX_GROUPS))
    assert decode_request(raw_request(context=wire_fields.CONTEXT_GROUPS, groups=groups)).groups == groups
    assert decode_request(raw_request(context=wire_fields.CONTEXT_UMASK, umask=0o777)).umask == 0o777
    assert decode_request(raw_request(context=wire_fields.CONTEXT_FSUID, fsuid=2**32 - 1)).fsuid == 2**32 - 1
    unix = wire_header.CODE["connect_unix"]
    assert decode_request(raw_request(b"s" * 108, function=unix, roles=4), [3])
    assert decode_request(raw_request(b"\0" * 108, function=unix, roles=4), [3])
    gai = wire_header.CODE["getaddrinfo"]
    assert decode_request(raw_request(b"n" * 1025, b"s" * 32, function=gai, flags=3, arg=17))
    assert decode_request(raw_request(b"", function=gai, flags=1))  # an empty but present node


# ---------------------------------------------------------- reply round trip


def _round_trip(message: ReplyMessage, nfds: int = 0) -> ReplyMessage:
    data = encode_reply(message, nfds)
    assert len(data) <= wire_header.MAX_MESSAGE
    return decode_reply(data, nfds)


@given(stat=s.stats, function=st.sampled_from(["stat", "lstat"]), tid=s.U32, rid=s.U64)
def test_a_stat_reply_keeps_every_field_to_the_nanosecond(stat: Stat, function: str, tid: int, rid: int) -> None:
    message = ReplyMessage(function, tid, rid, stat)
    decoded = _round_trip(message)
    assert decoded == message
    assert isinstance(decoded.result, Stat)
    assert decoded.result.model_dump() == stat.model_dump()


def test_a_real_stat_result_round_trips(tmp_path: Any) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"x" * 4242)
    os.utime(target, ns=(1_700_000_000_123_456_789, 1_600_000_000_987_654_321))
    expected = Stat.from_os(os.stat(target))
    decoded = _round_trip(ReplyMessage("stat", 1, 1, expected)).result
    assert decoded == expected
    assert isinstance(decoded, Stat)
    assert (decoded.size, decoded.atime, decoded.mtime) == (4242, 1_700_000_000_123_456_789, 1_600_000_000_987_654_321)
    assert decoded.st_mode == os.stat(target).st_mode


@given(addresses=s.addrinfo_lists, tid=s.U32, rid=s.U64)
def test_an_address_list_round_trips_with_scopes(addresses: list[AddrInfo], tid: int, rid: int) -> None:
    message = ReplyMessage("getaddrinfo", tid, rid, addresses)
    decoded = _round_trip(message)
    assert decoded == message
    assert [(a.address, a.port) for a in decoded.result] == [(a.address, a.port) for a in addresses]  # type: ignore[union-attr]


def test_a_mixed_v4_v6_answer_in_order() -> None:
    answer = [AddrInfo("192.0.2.1", 80), AddrInfo("2001:db8::1", 443), AddrInfo("fe80::2%3", 8080)]
    assert _round_trip(ReplyMessage("getaddrinfo", 1, 1, answer)).result == answer


@pytest.mark.parametrize("name", GAI_ERRORS)
def test_every_getaddrinfo_error_name_round_trips(name: str) -> None:
    errno_value = errno.ECONNREFUSED if name == "system" else 0
    message = ReplyMessage("getaddrinfo", 1, 2, name, errno_value)  # type: ignore[arg-type]
    data = encode_reply(message)
    assert wire_replies.REPLY.unpack_from(data)[6] == GAI_ERRORS.index(name) + 1
    assert decode_reply(data) == message


def test_getaddrinfo_with_an_errno_is_the_system_error() -> None:
    decoded = _round_trip(ReplyMessage("getaddrinfo", 1, 2, -1, errno.EMFILE))
    assert (decoded.result, decoded.errno) == ("system", errno.EMFILE)


@given(
    function=st.sampled_from([f for f in FUNCTIONS if f not in ("stat", "lstat", "getaddrinfo")]),
    result=s.I64,
    tid=s.U32,
    rid=s.U64,
)
def test_an_int_result_round_trips(function: str, result: int, tid: int, rid: int) -> None:
    message = ReplyMessage(function, tid, rid, result)
    assert _round_trip(message) == message


@given(function=st.sampled_from([f for f in FUNCTIONS if f != "getaddrinfo"]), errno_value=s.errnos)
def test_a_failure_is_minus_one_and_its_errno(function: str, errno_value: int) -> None:
    decoded = _round_trip(ReplyMessage(function, 5, 6, -1, errno_value))
    assert (decoded.result, decoded.errno, decoded.forward) == (-1, errno_value, False)


def test_a_failure_result_is_always_minus_one() -> None:
    assert _round_trip(ReplyMessage("open", 5, 6, 0, errno.EACCES)).result == -1


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_forward_reply_round_trips(function: str) -> None:
    message = ReplyMessage(function, 5, 6, forward=True)
    data = encode_reply(message)
    assert len(data) == wire_replies.REPLY.size
    assert decode_reply(data) == ReplyMessage(function, 5, 6, 0, 0, forward=True)


@pytest.mark.parametrize(
    ("function", "limit"),
    [("open", 1), ("openat", 1), ("connect_unix", 1), ("bind_inet6", 1), ("stat", 4), ("unlink", 4)],
)
def test_reply_descriptor_limits(function: str, limit: int) -> None:
    assert wire_header.reply_fd_limit(function) == limit
    result: Any = Stat() if function == "stat" else 0
    assert decode_reply(encode_reply(ReplyMessage(function, 1, 1, result), limit), limit).result == result
    with pytest.raises(ValueError):
        encode_reply(ReplyMessage(function, 1, 1, result), limit + 1)
    with pytest.raises(ProtocolError):
        decode_reply(encode_reply(ReplyMessage(function, 1, 1, result), limit), limit + 1)


# ------------------------------------------------ encoding a policy's mistake


@pytest.mark.parametrize(
    ("message", "nfds"),
    [
        pytest.param(ReplyMessage("open", 1, 1, 2**63), 0, id="result beyond i64"),
        pytest.param(ReplyMessage("open", 1, 1, -(2**63) - 1), 0, id="result below i64"),
        pytest.param(ReplyMessage("open", 1, 1, -1, -1), 0, id="negative errno"),
        pytest.param(ReplyMessage("open", 1, 1, -1, 2**31), 0, id="errno beyond i32"),
        pytest.param(ReplyMessage("frobnicate", 1, 1, 0), 0, id="unknown function"),
        pytest.param(ReplyMessage("open", 1, 1, 3), 2, id="two descriptors on open"),
        pytest.param(ReplyMessage("stat", 1, 1, Stat()), 5, id="five descriptors on stat"),
        pytest.param(ReplyMessage("open", 1, 1, forward=True), 1, id="descriptors on a forward"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, "nosuchname"), 0, id="unknown getaddrinfo error"),  # type: ignore[arg-type]
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, "system"), 0, id="system error without errno"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, "noname", errno.EIO), 0, id="noname with errno"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, [AddrInfo("::1")], errno.EIO), 0, id="addresses with errno"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, [AddrInfo("::1")] * 129), 0, id="129 addresses"),
        pytest.param(ReplyMessage("stat", 2**32, 1, Stat()), 0, id="tid beyond u32"),
        pytest.param(ReplyMessage("stat", 1, 2**64, Stat()), 0, id="request id beyond u64"),
        pytest.param(ReplyMessage("stat", 1, 1, Stat.model_construct(size=2**63)), 0, id="unvalidated stat size"),
        pytest.param(ReplyMessage("stat", 1, 1, Stat.model_construct(mode=0o10000)), 0, id="unvalidated stat mode"),
        pytest.param(ReplyMessage("stat", 1, 1, Stat.model_construct(type="door")), 0, id="unvalidated stat type"),  # type: ignore[arg-type]
        pytest.param(
            ReplyMessage(
                "getaddrinfo", 1, 1, [AddrInfo.model_construct(address=IPv6Address("fe80::1%4294967296"), port=1)]
            ),
            0,
            id="scope beyond u32",
        ),
        pytest.param(
            ReplyMessage("getaddrinfo", 1, 1, [AddrInfo.model_construct(address=IPv4Address("127.0.0.1"), port=65536)]),
            0,
            id="unvalidated port",
        ),
    ],
)
def test_an_impossible_reply_is_a_value_error(message: ReplyMessage, nfds: int) -> None:
    with pytest.raises(ValueError) as raised:
        encode_reply(message, nfds)
    assert not isinstance(raised.value, RemoteProtocolError), "the policy's bug, not the peer's"
    assert isinstance(raised.value, LocalProtocolError)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(ReplyMessage("open", 1, 1, Stat()), id="Stat for open"),
        pytest.param(ReplyMessage("stat", 1, 1, 0), id="int for a successful stat"),
        pytest.param(ReplyMessage("mkdir", 1, 1, [AddrInfo("127.0.0.1")]), id="AddrInfo list for mkdir"),
        pytest.param(ReplyMessage("mkdir", 1, 1, "noname"), id="gai error name for mkdir"),
        pytest.param(ReplyMessage("open", 1, 1, True), id="bool for open"),
        pytest.param(ReplyMessage("open", 1, 1, Stat(), errno.EIO), id="Stat with an errno"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, 0), id="int for getaddrinfo"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, Stat()), id="Stat for getaddrinfo"),
        pytest.param(ReplyMessage("getaddrinfo", 1, 1, ["127.0.0.1"]), id="list of strings for getaddrinfo"),  # type: ignore[list-item]
    ],
)
def test_a_result_of_the_wrong_type_is_a_type_error(message: ReplyMessage) -> None:
    with pytest.raises(TypeError):
        encode_reply(message)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(StatRequest.model_construct(path=PurePosixPath("/x"), pid=2**32, tid=1), id="pid beyond u32"),
        pytest.param(StatRequest.model_construct(path=PurePosixPath("/x"), pid=1, tid=-1), id="negative tid"),
        pytest.param(
            StatRequest.model_construct(path=PurePosixPath("/x"), pid=1, tid=1, request_id=2**64),
            id="request id beyond u64",
        ),
        pytest.param(
            StatRequest.model_construct(path=PurePosixPath("a" * 4096), pid=1, tid=1), id="path beyond 4095 bytes"
        ),
        pytest.param(
            OpenRequest.model_construct(
                path=PurePosixPath("/x"), flags=frozenset({"read_only", "create"}), mode=0o10000, pid=1, tid=1
            ),
            id="mode beyond 0o7777",
        ),
        pytest.param(
            ConnectInetRequest.model_construct(address=IPv4Address("127.0.0.1"), port=70000, socket=3, pid=1, tid=1),
            id="port beyond 65535",
        ),
        pytest.param(
            ConnectInet6Request.model_construct(address=IPv6Address("::1%4294967296"), port=1, socket=3, pid=1, tid=1),
            id="scope beyond u32",
        ),
    ],
)
def test_an_impossible_request_is_a_value_error(request_: Any) -> None:
    with pytest.raises(ValueError):
        encode_request(request_)


# ------------------------------------------------------------ bad replies


@given(data=st.binary(max_size=wire_header.MAX_MESSAGE + 16), nfds=st.integers(0, 6))
def test_random_reply_bytes_are_a_protocol_error(data: bytes, nfds: int) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(data, nfds)


@given(
    result=st.one_of(
        s.I64.map(lambda r: ("open", r)),
        s.stats.map(lambda r: ("stat", r)),
        s.addrinfo_lists.map(lambda r: ("getaddrinfo", r)),
    ),
    flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(1, 255)), min_size=1, max_size=3),
)
def test_a_corrupted_reply_is_valid_or_a_protocol_error(result: tuple[str, Any], flips: list[tuple[int, int]]) -> None:
    data = bytearray(encode_reply(ReplyMessage(result[0], 1, 1, result[1])))
    for position, xor in flips:
        data[position % len(data)] ^= xor
    try:
        decode_reply(bytes(data))
    except ProtocolError:
        pass


_STAT = wire_header.CODE["stat"]
_GAI = wire_header.CODE["getaddrinfo"]
_STAT_RECORD = wire_replies._encode_stat(Stat(size=1))
_V4_ENTRY = wire_replies.ADDRINFO.pack(4, 80, 0, bytes([127, 0, 0, 1]) + bytes(12))

_BAD_REPLIES = [
    _bad("empty", b""),
    _bad("short header", raw_reply()[:47]),
    _bad("bad magic", raw_reply(magic=b"LCSq")),
    _bad("version 0", raw_reply(version=0)),
    _bad("function code 0", raw_reply(function=0)),
    _bad("function code 24", raw_reply(function=24)),
    _bad("reserved bytes set", raw_reply(reserved=b"\1" + bytes(11))),
    _bad("two descriptors on open", raw_reply(), (3, 4)),
    _bad("five descriptors on unlink", raw_reply(function=wire_header.CODE["unlink"], result=0), (3, 4, 5, 6, 7)),
    _bad("unknown action", raw_reply(action=2)),
    _bad("forward with a result", raw_reply(action=1, result=1)),
    _bad("forward with an errno", raw_reply(action=1, result=0, errno=1)),
    _bad("forward with a descriptor", raw_reply(action=1, result=0), (3,)),
    _bad("forward with a payload", raw_reply(b"x", action=1, result=0)),
    _bad("count without addresses", raw_reply(count=1)),
    _bad("payload on kind none", raw_reply(b"x")),
    _bad("failure whose result is not -1", raw_reply(errno=2, result=0)),
    _bad("successful stat without a record", raw_reply(function=_STAT, result=0)),
    _bad("stat record on open", raw_reply(_STAT_RECORD, kind=1, result=0)),
    _bad("stat record with an errno", raw_reply(_STAT_RECORD, function=_STAT, kind=1, result=0, errno=1)),
    _bad("stat record with a result", raw_reply(_STAT_RECORD, function=_STAT, kind=1, result=3)),
    _bad("stat record of 95 bytes", raw_reply(_STAT_RECORD[:95], function=_STAT, kind=1, result=0)),
    _bad("stat record of 97 bytes", raw_reply(_STAT_RECORD + b"\0", function=_STAT, kind=1, result=0)),
    _bad(
        "stat mode beyond 0o7777",
        raw_reply(_STAT_RECORD[:80] + struct.pack("<I", 0o10000) + _STAT_RECORD[84:], function=_STAT, kind=1, result=0),
    ),
    _bad(
        "stat type 0",
        raw_reply(_STAT_RECORD[:84] + struct.pack("<I", 0) + _STAT_RECORD[88:], function=_STAT, kind=1, result=0),
    ),
    _bad(
        "stat type 8",
        raw_reply(_STAT_RECORD[:84] + struct.pack("<I", 8) + _STAT_RECORD[88:], function=_STAT, kind=1, result=0),
    ),
    _bad("getaddrinfo of kind none", raw_reply(function=_GAI, result=0)),
    _bad("addresses on stat", raw_reply(_V4_ENTRY, function=_STAT, kind=2, count=1, result=0)),
    _bad("addresses with an errno", raw_reply(_V4_ENTRY, function=_GAI, kind=2, count=1, result=0, errno=1)),
    _bad("count larger than the payload", raw_reply(_V4_ENTRY, function=_GAI, kind=2, count=2, result=0)),
    _bad("count smaller than the payload", raw_reply(_V4_ENTRY * 2, function=_GAI, kind=2, count=1, result=0)),
    _bad("129 addresses", raw_reply(_V4_ENTRY * 129, function=_GAI, kind=2, count=129, result=0)),
    _bad("address family 5", raw_reply(b"\5" + _V4_ENTRY[1:], function=_GAI, kind=2, count=1, result=0)),
    _bad("IPv4 entry with IPv6 bytes", raw_reply(_V4_ENTRY[:-1] + b"\1", function=_GAI, kind=2, count=1, result=0)),
    _bad(
        "IPv4 entry with a scope",
        raw_reply(wire_replies.ADDRINFO.pack(4, 80, 1, bytes(16)), function=_GAI, kind=2, count=1, result=0),
    ),
    _bad("gai error on open", raw_reply(kind=3, result=1)),
    _bad("gai error code 0", raw_reply(function=_GAI, kind=3, result=0)),
    _bad("gai error code 10", raw_reply(function=_GAI, kind=3, result=10)),
    _bad("system error without errno", raw_reply(function=_GAI, kind=3, result=9)),
    _bad("noname with an errno", raw_reply(function=_GAI, kind=3, result=6, errno=5)),
    _bad("gai error with a payload", raw_reply(b"x", function=_GAI, kind=3, result=6)),
    _bad("payload kind 4", raw_reply(kind=4)),
    _bad("oversized datagram", raw_reply(_V4_ENTRY * 400, function=_GAI, kind=2, count=400, result=0)),
]


@pytest.mark.parametrize(("data", "fds"), _BAD_REPLIES)
def test_a_malformed_reply_is_a_protocol_error(data: bytes, fds: list[int]) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(data, len(fds))


# ------------------------------------------------------------ registration


@given(pid=s.U32)
def test_a_registration_round_trips(pid: int) -> None:
    assert wire_registration.decode_registration(wire_registration.encode_registration(pid), 1) == pid


@pytest.mark.parametrize(
    ("data", "nfds"),
    [
        (b"", 1),
        (wire_registration.encode_registration(5)[:15], 1),
        (wire_registration.encode_registration(5) + b"\0", 1),
        (wire_registration.REGISTRATION.pack(b"LCSq", wire_header.VERSION, 0, 5, 0), 1),
        (wire_registration.REGISTRATION.pack(b"LCSh", 1, 0, 5, 0), 1),
        (wire_registration.REGISTRATION.pack(b"LCSh", wire_header.VERSION + 1, 0, 5, 0), 1),
        (wire_registration.REGISTRATION.pack(b"LCSh", wire_header.VERSION, 1, 5, 0), 1),
        (wire_registration.REGISTRATION.pack(b"LCSh", wire_header.VERSION, 0, 5, 1), 1),
        (wire_registration.REGISTRATION.pack(b"LCSh", wire_header.VERSION, 0, 0, 0), 1),
        (wire_registration.encode_registration(5), 0),
        (wire_registration.encode_registration(5), 2),
    ],
)
def test_a_malformed_registration_is_a_protocol_error(data: bytes, nfds: int) -> None:
    with pytest.raises(ProtocolError):
        wire_registration.decode_registration(data, nfds)


def test_rename_no_replace_travels_as_its_flag_bit() -> None:
    request = RenameRequest(path1="/a", path2="/b", no_replace=True, pid=1, tid=1)
    data, fds = wire_requests.encode_request(request)
    assert wire_requests.REQUEST.unpack_from(data)[6] == wire_requests.RENAME_NO_REPLACE
    assert wire_requests.decode_request(data, fds).no_replace is True


def test_the_catalogues_families_name_arbitrated_functions_only() -> None:
    from libc_service.protocol import catalogue
    from libc_service.protocol.requests import FUNCTIONS

    families = [value for name, value in vars(catalogue).items() if name.endswith("_FUNCTIONS")]
    assert families and all(family <= set(FUNCTIONS) for family in families)
    assert set(catalogue.GAI_ERROR_NAMES.values()) <= set(catalogue.GAI_ERRORS)
