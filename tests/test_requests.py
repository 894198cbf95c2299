"""Typed requests and reply payloads: what a policy author builds and reads."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import stat as stat_module
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from pydantic import TypeAdapter, ValidationError

import strategies as s
from libc_service import AddrInfo, Stat
from libc_service.protocol.replies import GAI_ERRORS
from libc_service.protocol.requests import (
    FUNCTIONS,
    MAX_GROUPS,
    OPEN_FLAGS,
    OPENAT_FLAGS,
    REQUEST_TYPES,
    AccessRequest,
    BindUnixRequest,
    ConnectInet6Request,
    ConnectInetRequest,
    ConnectUnixRequest,
    GetaddrinfoRequest,
    MkdirRequest,
    OpenatRequest,
    OpenRequest,
    RenameRequest,
    Request,
    StatRequest,
    parse_request,
)
from libc_service.protocol.paths import ExactPath, exact_path


def test_there_is_one_model_per_function_tagged_with_its_name() -> None:
    assert list(REQUEST_TYPES) == list(FUNCTIONS)
    assert len(FUNCTIONS) == 23
    for function, model in REQUEST_TYPES.items():
        assert model.model_fields["function"].default == function
        assert model.__doc__, f"{model.__name__} documents itself"


@given(request=s.requests)
def test_the_union_picks_the_model_by_its_function_tag(request: Any) -> None:
    fields = {name: getattr(request, name) for name in type(request).model_fields}
    parsed = parse_request(fields)
    assert type(parsed) is type(request)
    assert parsed == request
    assert TypeAdapter(Request).validate_python(fields) == request


def test_a_request_names_its_arguments_in_the_seeds_order() -> None:
    request = OpenRequest(path="/tmp/x", flags=["write_only", "create"], mode=0o600, dirfd=None)
    assert request.arguments() == (PurePosixPath("/tmp/x"), frozenset({"write_only", "create"}), 0o600)
    rename = RenameRequest(path1="a", path2="b", dirfd1=4, dirfd2=5)
    assert rename.arguments() == (PurePosixPath("a"), PurePosixPath("b"))
    assert rename.descriptors() == (4, 5)
    assert RenameRequest(path1="/a", path2="b", dirfd2=5).descriptors() == (5,)
    assert GetaddrinfoRequest(node="example.org").arguments() == ("example.org", None, None)
    assert ConnectInetRequest(address="127.0.0.1", port=80, socket=3).arguments() == (IPv4Address("127.0.0.1"), 80)
    assert ConnectInetRequest(address="127.0.0.1", port=80, socket=3).descriptors() == (3,)


def test_requests_are_frozen_and_refuse_unknown_fields() -> None:
    request = StatRequest(path="/etc/hostname")
    with pytest.raises(ValidationError):
        request.path = PurePosixPath("/etc/shadow")  # type: ignore[misc]
    with pytest.raises(ValidationError):
        StatRequest(path="/etc/hostname", follow=True)  # type: ignore[call-arg]
    assert hash(request) == hash(StatRequest(path="/etc/hostname"))


# -------------------------------------------------------------------- paths


def test_a_path_may_be_bytes_str_or_a_path_object() -> None:
    expected = PurePosixPath("/etc/hostname")
    for given_path in ("/etc/hostname", b"/etc/hostname", Path("/etc/hostname"), expected):
        assert StatRequest(path=given_path).path == expected


def test_a_non_utf8_path_arrives_through_surrogateescape() -> None:
    request = StatRequest(path=b"/tmp/caf\xe9")
    assert str(request.path) == "/tmp/caf\udce9"
    assert os.fsencode(request.path) == b"/tmp/caf\xe9"


@pytest.mark.parametrize("text", ["dir/", "link/.", "./a", "a//b", "//net/share", "\0abstract//name/"])
def test_a_path_keeps_its_exact_text(text: str) -> None:
    path = ConnectUnixRequest(path=text, socket=3).path if text.startswith("\0") else StatRequest(path=text).path
    assert str(path) == os.fspath(path) == text
    assert path == PurePosixPath(text), "still compares as the path it names"


_INEXACT = ["dir/", "link/.", "./a", "a//b", "/a/b/../c/", "/etc//passwd", "\0abstract//name/"]


@pytest.mark.parametrize("text", _INEXACT)
def test_an_exact_path_gives_its_text_to_every_text_conversion(text: str) -> None:
    path = exact_path(text)
    assert isinstance(path, ExactPath) and isinstance(path, PurePosixPath)
    assert str(path) == os.fspath(path) == path.as_posix() == text
    assert bytes(path) == os.fsencode(text)
    assert repr(path) == f"ExactPath({text!r})"


@pytest.mark.parametrize("text", _INEXACT)
def test_an_exact_path_is_otherwise_the_path_pathlib_parses(text: str) -> None:
    path, plain = exact_path(text), PurePosixPath(text)
    assert path == plain and plain == path and hash(path) == hash(plain)
    assert path != PurePosixPath(text + "x")
    assert (path.parts, path.name, path.suffix, path.is_absolute()) == (
        plain.parts,
        plain.name,
        plain.suffix,
        plain.is_absolute(),
    )
    assert sorted([PurePosixPath("~"), path]) == [path, PurePosixPath("~")]
    assert path.match(plain.name or "*") == plain.match(plain.name or "*")
    assert path.is_relative_to(plain.parent)
    assert path.normalised == plain and type(path.normalised) is PurePosixPath


@pytest.mark.parametrize("text", _INEXACT)
def test_a_path_derived_from_an_exact_one_is_a_plain_normalised_path(text: str) -> None:
    path, plain = exact_path(text), PurePosixPath(text)
    derived = {
        "parent": (path.parent, plain.parent),
        "/": (path / "x", plain / "x"),
        "r/": ("/root" / path, "/root" / plain),
        "joinpath": (path.joinpath("x", "y"), plain.joinpath("x", "y")),
        "parents": (path.parents[0], plain.parents[0]),
        "relative_to": (path.relative_to(plain.parent), plain.relative_to(plain.parent)),
    }
    if plain.name:
        derived["with_name"] = (path.with_name("n"), plain.with_name("n"))
        derived["with_suffix"] = (path.with_suffix(".s"), plain.with_suffix(".s"))
        derived["with_stem"] = (path.with_stem("s"), plain.with_stem("s"))
    for how, (got, expected) in derived.items():
        assert type(got) is PurePosixPath, how
        assert str(got) == str(expected), how


@pytest.mark.parametrize("text", _INEXACT)
def test_pickle_and_copy_keep_the_exact_text(text: str) -> None:
    path = exact_path(text)
    for clone in (pickle.loads(pickle.dumps(path)), copy.copy(path), copy.deepcopy(path)):
        assert type(clone) is ExactPath and str(clone) == text and clone == path
    request = StatRequest(path=text) if not text.startswith("\0") else ConnectUnixRequest(path=text, socket=3)
    assert str(pickle.loads(pickle.dumps(request)).path) == text


def test_a_path_already_in_normal_form_stays_a_plain_path() -> None:
    for text in ("/etc/hostname", "a/b", "//net/share", "."):
        path = exact_path(text)
        assert type(path) is PurePosixPath and str(path) == text


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("", id="empty"),
        pytest.param(b"", id="empty bytes"),
        pytest.param("/etc\0/passwd", id="NUL"),
        pytest.param("a" * 4096, id="4096 bytes"),
        pytest.param("é" * 2048, id="4096 bytes in UTF-8"),
        pytest.param(42, id="an int"),
    ],
)
def test_an_impossible_path_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        StatRequest(path=bad)
    with pytest.raises(ValidationError):
        RenameRequest(path1="/ok", path2=bad)


def test_the_longest_path_is_accepted() -> None:
    assert len(str(StatRequest(path="a" * 4095).path)) == 4095


# ---------------------------------------------------------------- open flags


def test_open_takes_exactly_one_access_mode() -> None:
    for access in ("read_only", "write_only", "read_write"):
        assert OpenRequest(path="/x", flags=[access]).flags == {access}
    with pytest.raises(ValidationError, match="exactly one"):
        OpenRequest(path="/x", flags=[])
    with pytest.raises(ValidationError, match="exactly one"):
        OpenRequest(path="/x", flags=["read_only", "write_only"])


def test_a_mode_goes_with_create_or_temporary_and_only_with_them() -> None:
    assert OpenRequest(path="/x", flags=["write_only", "create"], mode=0o644).mode == 0o644
    assert OpenRequest(path="/tmp", flags=["read_write", "temporary"], mode=0o600).mode == 0o600
    with pytest.raises(ValidationError, match="need a mode"):
        OpenRequest(path="/x", flags=["write_only", "create"])
    with pytest.raises(ValidationError, match="only given with"):
        OpenRequest(path="/x", flags=["read_only"], mode=0o644)
    with pytest.raises(ValidationError):
        OpenRequest(path="/x", flags=["write_only", "create"], mode=0o10000)


def test_flags_are_a_collection_of_names() -> None:
    with pytest.raises(ValidationError, match="not a string"):
        OpenRequest(path="/x", flags="read_only")
    with pytest.raises(ValidationError):
        OpenRequest(path="/x", flags=["read_only", "cloexec"])


_BEHAVIOUR_FLAGS = (
    "non_blocking",
    "no_ctty",
    "close_on_exec",
    "sync_data_on_write",
    "no_atime",
    "direct",
    "async_signals",
    "large_file",
)


def test_the_flag_vocabulary_names_every_open_flag_and_keeps_the_seeds_names() -> None:
    seed = (
        "read_only",
        "write_only",
        "read_write",
        "append",
        "create",
        "directory",
        "exclusive",
        "no_follow",
        "path",
        "sync_all_on_write",
        "temporary",
        "truncate",
    )
    assert OPEN_FLAGS == seed + _BEHAVIOUR_FLAGS
    for flag in _BEHAVIOUR_FLAGS:
        assert flag in OpenRequest(path="/x", flags=["read_only", flag]).flags
        assert flag in OpenatRequest(path="x", flags=["read_only", flag], dirfd=3).flags
    both = OpenRequest(path="/x", flags=["write_only", "sync_all_on_write", "sync_data_on_write"])
    assert both.flags >= {"sync_all_on_write", "sync_data_on_write"}


def test_resolve_flags_belong_to_openat_only() -> None:
    resolve = [flag for flag in OPENAT_FLAGS if flag not in OPEN_FLAGS]
    assert len(resolve) == 6
    for flag in resolve:
        assert flag in OpenatRequest(path="x", flags=["read_only", flag], dirfd=3).flags
        with pytest.raises(ValidationError):
            OpenRequest(path="/x", flags=["read_only", flag])


# --------------------------------------------------------- other arguments


@pytest.mark.parametrize(
    ("given_amode", "expected"),
    [("f", "f"), ("r", {"r"}), ("rwx", {"r", "w", "x"}), (["w", "x"], {"w", "x"}), (("x",), {"x"})],
)
def test_amode_is_f_or_a_set_of_rwx(given_amode: Any, expected: Any) -> None:
    amode = AccessRequest(path="/bin/sh", amode=given_amode).amode
    assert amode == (expected if expected == "f" else frozenset(expected))


@pytest.mark.parametrize("bad", ["", [], "q", ["r", "f"], "fr"])
def test_an_impossible_amode_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        AccessRequest(path="/bin/sh", amode=bad)


def test_mkdir_needs_a_mode_of_permission_bits() -> None:
    assert MkdirRequest(path="d", mode=0o755).mode == 0o755
    with pytest.raises(ValidationError):
        MkdirRequest(path="d")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        MkdirRequest(path="d", mode=-1)


def test_unix_socket_paths_may_be_abstract() -> None:
    abstract = ConnectUnixRequest(path="\0x11-bus", socket=3)
    assert abstract.abstract and str(abstract.path) == "\0x11-bus"
    assert not BindUnixRequest(path="/run/sock", socket=3).abstract
    assert ConnectUnixRequest(path="\0" * 108, socket=3).abstract
    for bad in ("", "s" * 109, "/run/so\0ck"):
        with pytest.raises(ValidationError):
            ConnectUnixRequest(path=bad, socket=3)
    with pytest.raises(ValidationError):
        ConnectUnixRequest(path="/run/sock")  # type: ignore[call-arg]


def test_a_relative_socket_path_may_name_its_directory_and_only_it() -> None:
    assert ConnectUnixRequest(path="sock", socket=3, dirfd=4).descriptors() == (3, 4)
    assert BindUnixRequest(path="run/sock", socket=3).dirfd is None
    for path in ("/run/sock", "\0name"):
        with pytest.raises(ValidationError, match="relative"):
            BindUnixRequest(path=path, socket=3, dirfd=4)


# ----------------------------------------------------- the caller's context


def test_the_callers_context_is_unknown_unless_given() -> None:
    request = StatRequest(path="/x")
    assert (request.umask, request.fsuid, request.fsgid, request.groups) == (None, None, None, None)
    given = GetaddrinfoRequest(node="example.org", umask=0o22, fsuid=1000, fsgid=100, groups=[100, 27])
    assert (given.umask, given.fsuid, given.fsgid, given.groups) == (0o22, 1000, 100, (100, 27))
    assert StatRequest(path="/x", groups=()).groups == ()


@pytest.mark.parametrize(
    "bad",
    [
        {"umask": 0o1000},
        {"umask": -1},
        {"fsuid": 2**32},
        {"fsgid": -1},
        {"groups": tuple(range(MAX_GROUPS + 1))},
        {"groups": (2**32,)},
        {"groups": 5},
    ],
)
def test_a_context_beyond_what_the_kernel_has_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StatRequest(path="/x", **bad)


def test_inet_requests_take_the_right_family_and_port() -> None:
    assert ConnectInetRequest(address="10.0.0.1", port=65535, socket=3).address == IPv4Address("10.0.0.1")
    for bad in (
        {"address": "::1", "port": 80},
        {"address": "10.0.0.1", "port": 65536},
        {"address": "10.0.0.1", "port": -1},
    ):
        with pytest.raises(ValidationError):
            ConnectInetRequest(socket=3, **bad)
    with pytest.raises(ValidationError):
        ConnectInet6Request(address="10.0.0.1", port=80, socket=3)


def test_an_ipv6_scope_is_an_interface_index() -> None:
    lo = socket.if_nametoindex("lo")
    assert ConnectInet6Request(address="fe80::1%lo", port=1, socket=3).address == IPv6Address(f"fe80::1%{lo}")
    assert ConnectInet6Request(address=IPv6Address("fe80::1%lo"), port=1, socket=3).address.scope_id == str(lo)
    assert ConnectInet6Request(address="fe80::1%0", port=1, socket=3).address == IPv6Address("fe80::1")
    assert ConnectInet6Request(address="fe80::1%4294967295", port=1, socket=3).address.scope_id == "4294967295"
    for bad in ("fe80::1%no-such-interface0", "fe80::1%4294967296"):
        with pytest.raises(ValidationError):
            ConnectInet6Request(address=bad, port=1, socket=3)


def test_getaddrinfo_needs_a_node_or_a_service() -> None:
    assert GetaddrinfoRequest(node="example.org", protocol="tcp").service is None
    assert GetaddrinfoRequest(service="http").node is None
    assert GetaddrinfoRequest(node="", service="").node == ""
    with pytest.raises(ValidationError, match="node or a service"):
        GetaddrinfoRequest()
    with pytest.raises(ValidationError):
        GetaddrinfoRequest(node="x", protocol="sctp")


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"node": "n" * 1025}, True),
        ({"node": "n" * 1026}, False),
        ({"node": "é" * 513}, False),
        ({"service": "s" * 32}, True),
        ({"service": "s" * 33}, False),
        ({"node": "a\0b"}, False),
        ({"service": "8\x000"}, False),
    ],
)
def test_getaddrinfo_names_are_bounded(fields: dict[str, str], ok: bool) -> None:
    if ok:
        GetaddrinfoRequest(**fields)
    else:
        with pytest.raises(ValidationError):
            GetaddrinfoRequest(**fields)


@pytest.mark.parametrize("field", ["pid", "tid", "request_id"])
def test_ids_are_unsigned_and_bounded(field: str) -> None:
    limit = 2**64 if field == "request_id" else 2**32
    assert getattr(StatRequest(path="/", **{field: limit - 1}), field) == limit - 1
    for bad in (-1, limit):
        with pytest.raises(ValidationError):
            StatRequest(path="/", **{field: bad})


def test_descriptors_are_non_negative() -> None:
    with pytest.raises(ValidationError):
        StatRequest(path="x", dirfd=-1)
    with pytest.raises(ValidationError):
        ConnectInetRequest(address="127.0.0.1", port=1, socket=-100)


# ------------------------------------------------------------ reply payloads


def test_a_faked_stat_names_only_what_it_fakes() -> None:
    fake = Stat(size=4242)
    assert fake.size == 4242 and fake.type == "regular"
    assert (fake.dev, fake.ino, fake.mode, fake.nlink, fake.uid, fake.atime) == (0, 0, 0, 0, 0, 0)
    assert fake.st_mode == stat_module.S_IFREG


def test_stat_from_os_keeps_type_permissions_and_nanoseconds(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o750)
    os.utime(directory, ns=(1, 1_234_567_891_234_567_890))
    st = Stat.from_os(os.stat(directory))
    assert st.type == "directory"
    assert st.mode == stat_module.S_IMODE(os.stat(directory).st_mode)
    assert st.st_mode == os.stat(directory).st_mode
    assert (st.atime, st.mtime) == (1, 1_234_567_891_234_567_890)
    link = tmp_path / "link"
    link.symlink_to(directory)
    assert Stat.from_os(os.lstat(link)).type == "symlink"
    assert Stat.from_os(os.stat("/dev/null")).type == "character_device"
    r, w = os.pipe()
    try:
        assert Stat.from_os(os.fstat(r)).type == "fifo"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "bad",
    [{"mode": 0o10000}, {"mode": -1}, {"type": "door"}, {"size": 2**63}, {"dev": -1}, {"uid": 2**32}, {"st_size": 1}],
)
def test_an_impossible_stat_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Stat(**bad)


def test_addrinfo_takes_address_and_port_positionally() -> None:
    assert AddrInfo("192.0.2.1", 80) == AddrInfo(address=IPv4Address("192.0.2.1"), port=80)
    assert AddrInfo("2001:db8::1").port == 0
    assert AddrInfo("fe80::1%lo", 22).address == IPv6Address(f"fe80::1%{socket.if_nametoindex('lo')}")
    with pytest.raises(ValidationError):
        AddrInfo("192.0.2.1", 65536)
    with pytest.raises(ValidationError):
        AddrInfo("not an address")


def test_the_getaddrinfo_error_names_are_the_documented_ones() -> None:
    assert GAI_ERRORS == ("again", "badflags", "fail", "family", "memory", "noname", "service", "socktype", "system")
