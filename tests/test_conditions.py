"""Declarative route conditions: what they match, how they read in the docs,
where they may be used, and a policy built from them served to a real slave."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from libc_service import FORWARD, AddrInfo, Errno, Master, Reply, Router, Slave, WithFds, deny
from libc_service.policy.conditions import Condition, flags, named, slave_path, to, under, writing
from libc_service.protocol.requests import (
    BindInet6Request,
    BindInetRequest,
    ConnectInet6Request,
    ConnectInetRequest,
    ConnectUnixRequest,
    GetaddrinfoRequest,
    MkdirRequest,
    OpenatRequest,
    OpenRequest,
    RenameRequest,
    Request,
    RmdirRequest,
    StatRequest,
    UnlinkRequest,
)

PATIENCE = 10.0
WRITES = "the call writes (opens for writing, creates, truncates, or changes a directory)"


# ----------------------------------------------------------------- helpers


@contextlib.contextmanager
def directory_fd(path: str | os.PathLike[str]) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def opening(path: str, *open_flags: str, dirfd: int | None = None) -> OpenatRequest:
    mode = 0o644 if {"create", "temporary"} & set(open_flags) else None
    return OpenatRequest(path=path, flags=list(open_flags or ["read_only"]), mode=mode, dirfd=dirfd)


class Served:
    def __init__(self, slave: Slave) -> None:
        self.slave = slave

    async def call(self, function: str, /, **arguments: Any) -> Reply:
        return await asyncio.wait_for(asyncio.to_thread(self.slave.call, function, **arguments), PATIENCE)


@contextlib.asynccontextmanager
async def serving(router: Router) -> AsyncIterator[Served]:
    master, sock = Master.pair()
    slave = Slave(sock)
    task = asyncio.create_task(router.serve(master))
    try:
        yield Served(slave)
    finally:
        slave.close()
        await asyncio.wait_for(task, PATIENCE)


# ---------------------------------------------------------------- slave_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/data/x", "/srv/data/x"),
        ("/srv/data/../secret", "/srv/secret"),
        ("//srv//data/./x/", "/srv/data/x"),
        ("/../../etc", "/etc"),
        ("/", "/"),
    ],
)
def test_slave_path_folds_an_absolute_path_lexically(path: str, expected: str) -> None:
    assert slave_path(PurePosixPath(path), None) == expected


def test_slave_path_resolves_a_relative_path_against_the_directory_descriptor(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with directory_fd(tmp_path / "data") as fd:
        assert slave_path(PurePosixPath("notes.txt"), fd) == f"{tmp_path}/data/notes.txt"
        assert slave_path(PurePosixPath("../secret"), fd) == f"{tmp_path}/secret"
        assert slave_path(PurePosixPath("a/../../../" * 40 + "etc"), fd) == "/etc"
        assert slave_path(PurePosixPath("/abs"), fd) == "/abs"  # an absolute path ignores dirfd


def test_slave_path_cannot_name_what_it_cannot_resolve(tmp_path: Path) -> None:
    assert slave_path(PurePosixPath("relative"), None) is None
    assert slave_path(PurePosixPath("\0abstract"), None) is None
    with directory_fd(tmp_path) as fd:
        pass
    assert slave_path(PurePosixPath("x"), fd) is None  # closed by now


def test_slave_path_of_a_removed_directory_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    with directory_fd(tmp_path / "gone") as fd:
        (tmp_path / "gone").rmdir()
        # The kernel names it "<tmp>/gone (deleted)": not a place under <tmp>.
        assert slave_path(PurePosixPath("x"), fd) is None
        assert not under(str(tmp_path))(opening("x", dirfd=fd))


def test_slave_path_of_a_directory_merely_named_deleted_is_its_path(tmp_path: Path) -> None:
    (tmp_path / "old (deleted)").mkdir()
    with directory_fd(tmp_path / "old (deleted)") as fd:
        assert slave_path(PurePosixPath("x"), fd) == f"{tmp_path}/old (deleted)/x"


# -------------------------------------------------------------------- under


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/srv/data", True),
        ("/srv/data/", True),
        ("/srv/data/a/b/c", True),
        ("/srv/database", False),  # a common prefix is not a parent
        ("/srv/dat", False),
        ("/srv", False),
        ("/srv/data/../secret", False),
        ("/srv/other/../data/x", True),
        ("//srv//data/./x", True),
        ("/srv/data/x/../../../etc/passwd", False),
    ],
)
def test_under_matches_the_root_and_beneath_it_after_folding_dotdot(path: str, inside: bool) -> None:
    assert under("/srv/data")(opening(path)) is inside
    assert under("/srv/data/")(opening(path)) is inside
    assert under("/srv/other/../data")(opening(path)) is inside


def test_under_resolves_relative_paths_against_the_slaves_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    inside = under(data)
    with directory_fd(data) as in_data, directory_fd(tmp_path) as in_parent:
        assert inside(opening("notes.txt", dirfd=in_data))
        assert inside(opening("sub/../notes.txt", dirfd=in_data))
        assert not inside(opening("../secret", dirfd=in_data))
        assert inside(opening("data/notes.txt", dirfd=in_parent))
        assert not inside(opening("database/x", dirfd=in_parent))
        assert inside(StatRequest(path=".", dirfd=in_data))
    assert not inside(opening("notes.txt"))  # relative, and no directory to resolve it against


def test_under_takes_both_paths_of_a_rename(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    inside = under(data)
    assert inside(RenameRequest(path1=f"{data}/a", path2=f"{data}/b"))
    assert not inside(RenameRequest(path1=f"{data}/a", path2="/tmp/out"))
    assert not inside(RenameRequest(path1="/etc/passwd", path2=f"{data}/b"))
    with directory_fd(data) as in_data, directory_fd(tmp_path) as in_parent:
        assert inside(RenameRequest(path1="a", path2="data/b", dirfd1=in_data, dirfd2=in_parent))
        assert not inside(RenameRequest(path1="a", path2="b", dirfd1=in_data, dirfd2=in_parent))
        assert not inside(RenameRequest(path1="a", path2="b", dirfd1=in_data))


def test_under_for_unix_sockets_ignores_abstract_names() -> None:
    runtime = under("/run/app")
    assert runtime(ConnectUnixRequest(path="/run/app/socket", socket=3))
    assert not runtime(ConnectUnixRequest(path="/run/other/socket", socket=3))
    assert not runtime(ConnectUnixRequest(path="\0/run/app/socket", socket=3))
    assert not under("/")(ConnectUnixRequest(path="\0abstract", socket=3))
    assert not runtime(ConnectUnixRequest(path="relative.sock", socket=3))


def test_under_several_roots_and_path_like_roots(tmp_path: Path) -> None:
    either = under("/srv/a", PurePosixPath("/srv/b"), tmp_path)
    assert either(UnlinkRequest(path="/srv/a/x"))
    assert either(UnlinkRequest(path="/srv/b"))
    assert either(UnlinkRequest(path=f"{tmp_path}/y"))
    assert not either(UnlinkRequest(path="/srv/c/x"))
    assert under("/")(UnlinkRequest(path="/anything/at/all"))


def test_under_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="at least one"):
        under()
    with pytest.raises(ValueError, match="absolute"):
        under("srv/data")


def test_under_describes_itself() -> None:
    assert under("/srv/data").describe() == "the path is `/srv/data` or beneath it"
    assert under("/srv/a/", "/srv/b/../c").describe() == "the path is beneath one of `/srv/a`, `/srv/c`"
    assert repr(under("/srv")) == "<UnderCondition: the path is `/srv` or beneath it>"


# ---------------------------------------------------------- writing, flags


@pytest.mark.parametrize(
    ("open_flags", "writes"),
    [
        (("read_only",), False),
        (("read_only", "directory", "no_follow"), False),
        (("path", "read_only"), False),
        (("write_only",), True),
        (("read_write",), True),
        (("read_only", "append"), True),
        (("read_only", "create"), True),
        (("read_only", "truncate"), True),
        (("read_write", "temporary"), True),
    ],
)
def test_writing_reads_the_open_flags(open_flags: tuple[str, ...], writes: bool) -> None:
    assert writing()(opening("/x", *open_flags)) is writes
    mode = 0o600 if {"create", "temporary"} & set(open_flags) else None
    assert writing()(OpenRequest(path="/x", flags=list(open_flags), mode=mode)) is writes


def test_writing_is_true_for_every_directory_change() -> None:
    for request in (
        UnlinkRequest(path="/x"),
        RmdirRequest(path="/x"),
        MkdirRequest(path="/x", mode=0o700),
        RenameRequest(path1="/x", path2="/y"),
    ):
        assert writing()(request)
    assert writing().describe() == WRITES


def test_flags_match_any_of_the_named_flags() -> None:
    creating = flags("create", "exclusive")
    assert creating(opening("/x", "write_only", "create"))
    assert creating(opening("/x", "write_only", "exclusive"))
    assert not creating(opening("/x", "write_only", "truncate"))
    assert flags("resolve_beneath")(opening("x", "read_only", "resolve_beneath"))
    assert creating.describe() == "the open flags include `create` or `exclusive`"


def test_flags_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="valid:.*read_only.*resolve_beneath"):
        flags("create", "bogus")
    with pytest.raises(ValueError):
        flags()


# ------------------------------------------------------------------ network


def connect(address: str, port: int) -> ConnectInetRequest | ConnectInet6Request:
    if ":" in address:
        return ConnectInet6Request(address=address, port=port, socket=3)
    return ConnectInetRequest(address=address, port=port, socket=3)


@pytest.mark.parametrize(
    ("address", "port", "allowed"),
    [
        ("127.0.0.1", 8080, True),
        ("127.0.0.1", 8081, False),
        ("127.0.0.2", 8080, False),
        ("10.1.2.3", 1, True),
        ("10.255.255.255", 65535, True),
        ("11.0.0.1", 80, False),
        ("::1", 53, True),
        ("::1", 54, False),
        ("fe80::1%1", 22, True),  # the scope id does not hide the address
        ("fe80::1%1", 23, False),
        ("2001:db8::1", 443, True),
        ("::ffff:127.0.0.1", 8080, False),  # a v4-mapped address is not the v4 network
    ],
)
def test_to_matches_networks_and_ports(address: str, port: int, allowed: bool) -> None:
    endpoints = to("127.0.0.1:8080", "10.0.0.0/8:*", "[::1]:53", ("fe80::/10", 22), ("2001:db8::/32", None))
    assert endpoints(connect(address, port)) is allowed


def test_to_applies_to_bind_too() -> None:
    local = to("127.0.0.1:*", "[::1]:*")
    assert local(BindInetRequest(address="127.0.0.1", port=0, socket=3))
    assert not local(BindInetRequest(address="0.0.0.0", port=8080, socket=3))
    assert local(BindInet6Request(address="::1", port=9000, socket=3))
    assert not local(BindInet6Request(address="::", port=9000, socket=3))


def test_to_describes_itself() -> None:
    assert to("127.0.0.1:8080", "[::1]:53", "10.0.0.0/8:*", ("fe80::/10", None)).describe() == (
        "the address is one of `127.0.0.1:8080`, `[::1]:53`, `10.0.0.0/8:*`, `[fe80::/10]:*`"
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "127.0.0.1",
        "127.0.0.1:70000",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "999.0.0.1:80",
        "localhost:80",
        "::1:53",
        "fe80::/10:*",
        "[::1]",
        ("127.0.0.1", 65536),
        ("127.0.0.1", -1),
    ],
)
def test_to_refuses_what_is_not_an_endpoint(endpoint: Any) -> None:
    with pytest.raises(ValueError):
        to(endpoint)


def test_to_needs_an_endpoint() -> None:
    with pytest.raises(ValueError):
        to()


def test_named_matches_names_case_insensitively_without_the_trailing_dot() -> None:
    names = named("Service.TEST", "db.test.")
    assert names(GetaddrinfoRequest(node="service.test"))
    assert names(GetaddrinfoRequest(node="SERVICE.test."))
    assert names(GetaddrinfoRequest(node="db.test"))
    assert not names(GetaddrinfoRequest(node="other.test"))
    assert not names(GetaddrinfoRequest(node="sub.service.test"))
    assert not names(GetaddrinfoRequest(service="http"))  # no node
    assert names.describe() == "the name looked up is one of `db.test`, `service.test`"
    with pytest.raises(ValueError):
        named()


# ------------------------------------------------------------- combinations


def test_conditions_combine_with_and_or_not() -> None:
    data = under("/srv/data")
    logs = under("/var/log/app")
    read_data = data & ~writing()
    data_or_logs = data | logs
    assert read_data(opening("/srv/data/x"))
    assert not read_data(opening("/srv/data/x", "write_only"))
    assert not read_data(opening("/etc/x"))
    assert data_or_logs(opening("/var/log/app/today"))
    assert data_or_logs(opening("/srv/data/x"))
    assert not data_or_logs(opening("/srv/x"))
    assert (~data_or_logs)(opening("/srv/x"))
    appending_logs = logs & flags("append") & ~flags("truncate")
    assert appending_logs(opening("/var/log/app/x", "write_only", "append"))
    assert not appending_logs(opening("/var/log/app/x", "write_only", "append", "truncate"))
    assert not appending_logs(opening("/var/log/app/x", "write_only"))


def test_combinations_describe_themselves_with_grouping() -> None:
    data = under("/a")
    assert (data & ~writing()).describe() == f"the path is `/a` or beneath it and not ({WRITES})"
    assert ((data | under("/b")) & flags("create")).describe() == (
        "(the path is `/a` or beneath it or the path is `/b` or beneath it) and the open flags include `create`"
    )
    assert (~(data & writing())).describe() == f"not (the path is `/a` or beneath it and {WRITES})"
    assert (named("x.test") | named("y.test")).describe() == (
        "the name looked up is one of `x.test` or the name looked up is one of `y.test`"
    )


def test_a_combination_applies_to_the_functions_all_of_its_parts_understand() -> None:
    assert (under("/a") & writing()).functions == frozenset(
        {
            "open",
            "openat",
            "unlink",
            "rmdir",
            "mkdir",
            "rename",
            "chmod",
            "chown",
            "utimens",
            "fchmod",
            "fchown",
            "futimens",
        }
    )
    assert (under("/a") & flags("create")).functions == frozenset({"open", "openat"})
    assert (under("/a") | to("127.0.0.1:*")).functions == frozenset()
    assert (~named("x.test")).functions == frozenset({"getaddrinfo"})


def test_a_condition_combines_only_with_conditions() -> None:
    with pytest.raises(TypeError):
        under("/a") & "/b"  # type: ignore[operator]
    with pytest.raises(TypeError):
        under("/a") | True  # type: ignore[operator]


class _Everything(Condition):
    """A user's own condition that understands every function."""

    def __call__(self, request: object) -> bool:
        return True

    def describe(self) -> str:
        return "always"


def test_a_user_condition_applies_everywhere_and_combines() -> None:
    assert _Everything().functions is None
    assert (_Everything() & under("/a")).functions == under("/a").functions
    router = Router()
    router.on("getaddrinfo", "stat", when=_Everything())(lambda req: FORWARD)
    assert (_Everything() & ~under("/a")).describe() == "always and not (the path is `/a` or beneath it)"


# -------------------------------------------------------------- registration


@pytest.mark.parametrize(
    ("functions", "condition", "named_function"),
    [
        (("getaddrinfo",), under("/srv"), "getaddrinfo"),
        (("open", "stat"), writing(), "stat"),
        (("stat",), ~writing(), "stat"),
        (("open", "openat", "unlink"), flags("create"), "unlink"),
        (("connect_unix",), to("127.0.0.1:80"), "connect_unix"),
        (("open",), named("x.test"), "open"),
        (("open",), under("/srv") | to("127.0.0.1:80"), "open"),
        (("unlink",), under("/srv") & flags("create"), "unlink"),
    ],
)
def test_a_condition_registered_for_a_function_it_does_not_apply_to_is_rejected(
    functions: tuple[str, ...],
    condition: Condition,
    named_function: str,
) -> None:
    router = Router()
    with pytest.raises(ValueError, match=named_function):
        router.on(*functions, when=condition)
    with pytest.raises(ValueError, match=named_function):
        router.on(*functions, when=[_Everything(), condition])
    assert len(router.routes()) == 0


def test_conditions_are_kept_on_the_route_in_order() -> None:
    router = Router()
    first, second = under("/srv"), ~writing()

    @router.on("open", "openat", when=[first, second])
    def read_srv(req: OpenRequest | OpenatRequest) -> object:
        return FORWARD

    [route] = router.routes()
    assert route.conditions == (first, second)
    assert [c.describe() for c in route.conditions] == ["the path is `/srv` or beneath it", f"not ({WRITES})"]


# ------------------------------------------------- a policy made of conditions


async def test_a_slave_reads_beneath_its_data_directory_and_nowhere_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("in the data directory\n")
    (tmp_path / "secret").write_text("outside\n")
    (tmp_path / "other").mkdir()
    router = Router(default=deny(errno.EACCES))
    decided: list[str] = []

    @router.on("open", "openat", when=under(data) & ~writing())
    def read_data(req: OpenRequest | OpenatRequest) -> WithFds:
        """Read anything beneath the data directory."""
        decided.append(str(req.path))
        return WithFds(0, [os.open(req.path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=req.dirfd)])

    async with serving(router) as session:
        with directory_fd(data) as in_data, directory_fd(tmp_path) as in_parent:
            granted = [
                await session.call("openat", path="notes.txt", flags=["read_only"], fds=(in_data,)),
                await session.call("openat", path="data/notes.txt", flags=["read_only"], fds=(in_parent,)),
                await session.call("open", path=f"{data}/notes.txt", flags=["read_only"]),
                await session.call("open", path=f"{tmp_path}/other/../data/notes.txt", flags=["read_only"]),
            ]
            refused = [
                await session.call("openat", path="../secret", flags=["read_only"], fds=(in_data,)),
                await session.call("open", path=f"{data}/../secret", flags=["read_only"]),
                await session.call("open", path=f"{data}/notes.txt", flags=["write_only"]),
                await session.call(
                    "openat", path="notes.txt", flags=["read_only", "create"], mode=0o644, fds=(in_data,)
                ),
                await session.call("openat", path="notes.txt", flags=["read_only"]),  # relative, no dirfd
            ]
    try:
        for reply in granted:
            assert reply.errno == 0 and len(reply.fds) == 1
            assert os.read(reply.fds[0], 100) == b"in the data directory\n"
    finally:
        for reply in granted:
            for fd in reply.fds:
                os.close(fd)
    assert refused == [Reply(-1, errno.EACCES)] * len(refused)
    assert len(decided) == len(granted)


async def test_renames_within_a_tree_only(tmp_path: Path) -> None:
    router = Router(default=deny(errno.EXDEV))

    @router.on("rename", when=under(tmp_path))
    def within(req: RenameRequest) -> int:
        return 0

    async with serving(router) as session:
        with directory_fd(tmp_path) as in_tmp:
            assert await session.call("rename", path1="a", path2="b", fds=(in_tmp, in_tmp)) == Reply(0)
            assert await session.call("rename", path1=f"{tmp_path}/a", path2="/elsewhere/b") == Reply(-1, errno.EXDEV)
            assert await session.call("rename", path1="a", path2="../b", fds=(in_tmp, in_tmp)) == Reply(-1, errno.EXDEV)


async def test_connections_to_listed_endpoints_only() -> None:
    router = Router(default=deny(errno.ECONNREFUSED))

    @router.on("connect_inet", "connect_inet6", when=to("127.0.0.1:8080", "[::1]:*"))
    def local_service(req: ConnectInetRequest | ConnectInet6Request) -> int:
        return 0

    v4, v6 = socket.socket(socket.AF_INET), socket.socket(socket.AF_INET6)
    try:
        async with serving(router) as session:
            assert await session.call("connect_inet", address="127.0.0.1", port=8080, fds=(v4.fileno(),)) == Reply(0)
            assert await session.call("connect_inet", address="127.0.0.1", port=22, fds=(v4.fileno(),)) == Reply(
                -1, errno.ECONNREFUSED
            )
            assert await session.call("connect_inet6", address="::1", port=443, fds=(v6.fileno(),)) == Reply(0)
            assert await session.call("connect_inet6", address="2001:db8::1", port=443, fds=(v6.fileno(),)) == Reply(
                -1, errno.ECONNREFUSED
            )
    finally:
        v4.close()
        v6.close()


async def test_names_resolved_by_the_policy_and_unknown_names_refused() -> None:
    def unknown(req: Request) -> Any:
        return "noname" if isinstance(req, GetaddrinfoRequest) else FORWARD

    router = Router(default=unknown)

    @router.on("getaddrinfo", when=named("service.test"))
    async def service(req: GetaddrinfoRequest) -> list[AddrInfo]:
        return [AddrInfo("192.0.2.10", 443)]

    async with serving(router) as session:
        assert await session.call("getaddrinfo", node="Service.Test.") == Reply([AddrInfo("192.0.2.10", 443)])
        assert await session.call("getaddrinfo", node="example.com") == Reply("noname")


async def test_creating_and_truncating_are_refused_the_rest_forwarded() -> None:
    router = Router(default=FORWARD)

    @router.on("open", "openat", when=flags("create", "truncate"))
    def read_only_fs(req: OpenRequest | OpenatRequest) -> int:
        raise Errno(errno.EROFS)

    @router.on("mkdir", "unlink", when=writing())
    def no_changes(req: Request) -> int:
        raise Errno(errno.EROFS)

    async with serving(router) as session:
        assert await session.call("open", path="/x", flags=["write_only", "create"], mode=0o644) == Reply(
            -1, errno.EROFS
        )
        assert await session.call("open", path="/x", flags=["write_only", "truncate"]) == Reply(-1, errno.EROFS)
        assert (await session.call("open", path="/x", flags=["write_only"])).forwarded
        assert await session.call("mkdir", path="/x", mode=0o755) == Reply(-1, errno.EROFS)
        assert (await session.call("stat", path="/x")).forwarded


def test_under_names_the_file_a_metadata_call_s_descriptor_is_open_on(tmp_path: Path) -> None:
    from libc_service.protocol.requests import FchmodRequest

    (tmp_path / "build").mkdir()
    target = tmp_path / "build" / "prog"
    target.write_bytes(b"")
    fd = os.open(target, os.O_RDONLY)
    try:
        request = FchmodRequest(pid=1, tid=1, fd=fd, mode=0o755)
        assert under(str(tmp_path / "build"))(request)
        assert not under(str(tmp_path / "src"))(request)
        target.unlink()
        assert not under(str(tmp_path / "build"))(request)  # removed: it has no name any more
    finally:
        os.close(fd)
