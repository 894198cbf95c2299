"""The Router through real channels: a Master.pair() per session, a Python
Slave calling from threads, real descriptors.

Each test reads as the scenario it proves: what a handler returns or raises
is what the slave gets back, a buggy policy fails closed and the session goes
on, a slow handler holds only the thread that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import socket
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest
import uvloop

from libc_service import (
    FORWARD,
    PASS,
    AddrInfo,
    Decision,
    Errno,
    Master,
    Reply,
    Route,
    Router,
    Slave,
    Stat,
    WithFds,
    deny,
)
from libc_service.policy.conditions import under
from libc_service.protocol.requests import (
    FUNCTIONS,
    GetaddrinfoRequest,
    LstatRequest,
    OpenatRequest,
    OpenRequest,
    Request,
    StatRequest,
)

ROUTER_LOGGER = "libc_service.policy.router"
#: Generous bound on any wait in these tests: a hang fails, it does not block CI.
PATIENCE = 10.0

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


# ----------------------------------------------------------------- helpers


def open_fd_count() -> int:
    """Descriptors open in this process (master and slave both live here)."""
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Session:
    """One served channel: the router's task on the loop, the slave's end."""

    slave: Slave
    master: Master
    serving: asyncio.Task[None]

    async def call(self, function: str, /, **arguments: Any) -> Reply:
        """``slave.call`` on a worker thread, bounded by PATIENCE."""
        return await asyncio.wait_for(asyncio.to_thread(self.slave.call, function, **arguments), PATIENCE)

    def start(self, function: str, /, **arguments: Any) -> asyncio.Future[Reply]:
        """Start a call on its own new thread (so its tid is its own)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()

        def run() -> None:
            try:
                reply = self.slave.call(function, **arguments)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, reply, None)

        threading.Thread(target=run, daemon=True).start()
        return future

    @property
    def alive(self) -> bool:
        return not self.serving.done()


def _settle(future: asyncio.Future[Reply], reply: Reply | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert reply is not None
        future.set_result(reply)


@contextlib.asynccontextmanager
async def serving(router: Router) -> AsyncIterator[Session]:
    """Serve one Master.pair() session with ``router`` for the block's duration.

    On exit the slave hangs up and the router must end the session cleanly
    (``serve`` returns, no exception) with the master closed.
    """
    master, sock = Master.pair()
    slave = Slave(sock)
    task = asyncio.create_task(router.serve(master))
    try:
        yield Session(slave, master, task)
    finally:
        slave.close()
        await asyncio.wait_for(task, PATIENCE)
    assert master.closed


def close_reply(reply: Reply) -> None:
    for fd in reply.fds:
        os.close(fd)


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Run a scenario on a fresh loop of each kind (asyncio, uvloop)."""

    def run_scenario(scenario: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            await scenario()

        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.run(main())

    return run_scenario


def router_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ROUTER_LOGGER and r.levelno >= logging.ERROR]


# ---------------------------------------------------------- reply mapping


async def test_an_int_becomes_the_result() -> None:
    router = Router(default=deny())

    @router.on("access", "mkdir", "unlink")
    def allow(req: Request) -> int:
        return 0

    async with serving(router) as session:
        assert await session.call("access", path="/etc/hostname", amode="f") == Reply(0)
        assert await session.call("mkdir", path="/tmp/new", mode=0o755) == Reply(0)
        assert await session.call("unlink", path="/tmp/gone") == Reply(0)


async def test_a_stat_becomes_the_slaves_stat_result() -> None:
    router = Router(default=deny())
    faked = Stat(size=4242, type="directory", mode=0o755, uid=1000, mtime=1_700_000_000_123_456_789)

    @router.on("stat", "lstat")
    def fake(req: StatRequest | LstatRequest) -> Stat:
        return faked

    async with serving(router) as session:
        assert await session.call("stat", path="/srv") == Reply(faked)
        assert await session.call("lstat", path="/srv") == Reply(faked)


async def test_a_real_stat_reaches_the_slave_with_ns_precision(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"x" * 1234)
    router = Router(default=deny())

    @router.on("stat")
    def real(req: StatRequest) -> Stat:
        return Stat.from_os(os.stat(req.path))

    async with serving(router) as session:
        reply = await session.call("stat", path=str(target))
    mine = os.stat(target)
    assert isinstance(reply.result, Stat) and reply.errno == 0
    assert (reply.result.size, reply.result.ino, reply.result.mtime) == (1234, mine.st_ino, mine.st_mtime_ns)
    assert reply.result.st_mode == mine.st_mode


async def test_a_list_of_addrinfo_becomes_the_getaddrinfo_answer() -> None:
    router = Router(default=deny())
    answer = [AddrInfo("192.0.2.1", 443), AddrInfo("2001:db8::1", 443), AddrInfo("fe80::1%1", 0)]

    @router.on("getaddrinfo")
    async def resolve(req: GetaddrinfoRequest) -> list[AddrInfo]:
        assert (req.node, req.service, req.protocol) == ("example.test", "https", "tcp")
        return answer

    async with serving(router) as session:
        reply = await session.call("getaddrinfo", node="example.test", service="https", protocol="tcp")
    assert reply == Reply(answer)
    assert isinstance(reply.result, list)
    assert reply.result[0].address == IPv4Address("192.0.2.1")
    assert reply.result[2].address == IPv6Address("fe80::1%1")


@pytest.mark.parametrize("name", ["again", "badflags", "fail", "family", "memory", "noname", "service", "socktype"])
async def test_a_getaddrinfo_error_name_becomes_that_error(name: str) -> None:
    router = Router(default=deny())

    @router.on("getaddrinfo")
    def refuse(req: GetaddrinfoRequest) -> str:
        return name

    async with serving(router) as session:
        assert await session.call("getaddrinfo", node="example.test") == Reply(name, 0)


async def test_a_slave_that_opens_a_file_reads_what_the_master_put_in_the_pipe() -> None:
    router = Router(default=deny())

    @router.on("open")
    def pipe(req: OpenRequest) -> WithFds:
        read_end, write_end = os.pipe()
        os.write(write_end, b"what the master put in the pipe")
        os.close(write_end)
        return WithFds(0, [read_end])

    async with serving(router) as session:
        before = open_fd_count()
        reply = await session.call("open", path="/dev/null", flags=["read_only"])
        assert reply.errno == 0 and len(reply.fds) == 1
        # The master's read end went out with the reply and was closed there:
        # the only new descriptor is the slave's.
        assert open_fd_count() == before + 1
        try:
            assert os.read(reply.fds[0], 100) == b"what the master put in the pipe"
        finally:
            close_reply(reply)


async def test_a_real_open_is_passed_to_the_slave(tmp_path: Path) -> None:
    (tmp_path / "hostname").write_text("sandboxed\n")
    router = Router(default=deny())

    @router.on("openat")
    def beneath(req: OpenatRequest) -> WithFds:
        assert req.dirfd is not None
        return WithFds(0, [os.open(req.path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=req.dirfd)])

    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        async with serving(router) as session:
            reply = await session.call("openat", path="hostname", flags=["read_only"], fds=(directory,))
    finally:
        os.close(directory)
    try:
        assert os.read(reply.fds[0], 100) == b"sandboxed\n"
    finally:
        close_reply(reply)


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOENT, errno.EROFS, errno.ENAMETOOLONG])
async def test_raising_errno_fails_the_call_with_it(code: int) -> None:
    router = Router()

    @router.on("open", "stat", "mkdir")
    def refuse(req: Request) -> int:
        raise Errno(code)

    async with serving(router) as session:
        assert await session.call("open", path="/x", flags=["read_only"]) == Reply(-1, code)
        assert await session.call("stat", path="/x") == Reply(-1, code)
        assert await session.call("mkdir", path="/x", mode=0o700) == Reply(-1, code)


async def test_an_oserror_from_a_real_open_reaches_the_slave(tmp_path: Path) -> None:
    router = Router(default=deny())

    @router.on("open")
    def real(req: OpenRequest) -> WithFds:
        return WithFds(0, [os.open(req.path, os.O_RDONLY)])

    @router.on("mkdir")
    def real_mkdir(req: Request) -> int:
        os.mkdir(tmp_path)  # exists: FileExistsError
        return 0

    async with serving(router) as session:
        missing = await session.call("open", path=str(tmp_path / "missing"), flags=["read_only"])
        assert missing == Reply(-1, errno.ENOENT)
        assert await session.call("mkdir", path="/x", mode=0o700) == Reply(-1, errno.EEXIST)


async def test_a_refusal_is_the_same_however_it_is_spelled(caplog: pytest.LogCaptureFixture) -> None:
    """``raise Errno(code)``, any ``OSError`` with an errno, and returning ``deny(code)`` refuse alike."""
    router = Router(default=FORWARD)

    @router.on("unlink", "getaddrinfo")
    def refuse(req: Request) -> Any:
        spelling = str(getattr(req, "path", getattr(req, "node", "")))
        if "errno" in spelling:
            raise Errno(errno.EROFS)
        if "oserror" in spelling:
            raise OSError(errno.EROFS, "read-only")
        return deny(errno.EROFS)

    async with serving(router) as session:
        for spelling in ("/errno", "/oserror", "/deny"):
            assert await session.call("unlink", path=spelling) == Reply(-1, errno.EROFS)
            assert await session.call("getaddrinfo", node=f"{spelling[1:]}.test") == Reply("system", errno.EROFS)
        assert session.alive
    assert router_errors(caplog) == []


async def test_an_oserror_beyond_the_kernels_errnos_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    """An "errno" above ``MAX_ERRNO`` is none the kernel has (seccomp could not even return it)."""
    router = Router(default=FORWARD)

    @router.on("unlink")
    def odd(req: Request) -> int:
        raise OSError(70000, "not an errno")

    async with serving(router) as session:
        assert await session.call("unlink", path="/x") == Reply(-1, errno.EPERM)
        assert session.alive
    [record] = router_errors(caplog)
    assert record.exc_info is not None and record.exc_info[0] is OSError


@pytest.mark.parametrize(
    "exc", [Errno(errno.ECONNREFUSED), OSError(errno.EIO, "lookup failed"), ConnectionResetError(errno.ECONNRESET, "")]
)
async def test_an_oserror_in_getaddrinfo_is_the_system_error_with_its_errno(exc: OSError) -> None:
    router = Router(default=deny())

    @router.on("getaddrinfo")
    async def resolve(req: GetaddrinfoRequest) -> list[AddrInfo]:
        raise exc

    async with serving(router) as session:
        assert await session.call("getaddrinfo", node="example.test") == Reply("system", exc.errno)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (socket.EAI_NONAME, "noname"),
        (socket.EAI_AGAIN, "again"),
        (socket.EAI_FAIL, "fail"),
        (socket.EAI_SERVICE, "service"),
        (socket.EAI_FAMILY, "family"),
    ],
)
async def test_a_gaierror_in_getaddrinfo_becomes_its_error_name(code: int, name: str) -> None:
    """What ``loop.getaddrinfo`` raises for an unknown name is a DNS answer, not a crash."""
    router = Router(default=deny())

    @router.on("getaddrinfo")
    async def resolve(req: GetaddrinfoRequest) -> list[AddrInfo]:
        raise socket.gaierror(code, "lookup failed")

    async with serving(router) as session:
        assert await session.call("getaddrinfo", node="nowhere.test") == Reply(name, 0)
        assert session.alive


async def test_forward_tells_the_slave_to_use_its_own_credentials() -> None:
    router = Router(default=deny())

    @router.on("open", "connect_inet")
    def let_it(req: Request) -> object:
        return FORWARD

    sock = socket.socket()
    try:
        async with serving(router) as session:
            reply = await session.call("open", path="/etc/hostname", flags=["read_only"])
            assert reply == Reply(0, 0, (), True) and reply.forwarded
            reply = await session.call("connect_inet", address="127.0.0.1", port=80, fds=(sock.fileno(),))
            assert reply.forwarded
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_sync_and_async_handlers_decide_alike(kind: str) -> None:
    router = Router(default=deny())
    outcomes: dict[str, Any] = {"/int": 0, "/forward": FORWARD, "/stat": Stat(size=7)}

    def decide(req: StatRequest | OpenRequest) -> Any:
        if str(req.path) == "/errno":
            raise Errno(errno.EACCES)
        if str(req.path) == "/bug":
            raise RuntimeError("bug")
        return outcomes[str(req.path)]

    async def decide_async(req: StatRequest | OpenRequest) -> Any:
        await asyncio.sleep(0)
        return decide(req)

    router.on("stat", "open")(decide if kind == "sync" else decide_async)
    async with serving(router) as session:
        assert await session.call("stat", path="/stat") == Reply(Stat(size=7))
        assert (await session.call("stat", path="/forward")).forwarded
        assert await session.call("stat", path="/errno") == Reply(-1, errno.EACCES)
        assert await session.call("stat", path="/bug") == Reply(-1, errno.EPERM)
        assert await session.call("open", path="/int", flags=["read_only"]) == Reply(0)


# -------------------------------------------------------- PASS and defaults


async def test_pass_lets_the_next_route_and_then_the_default_decide() -> None:
    router = Router(default=deny(errno.EACCES))
    seen: list[str] = []

    @router.on("stat")
    def audit(req: StatRequest) -> object:
        seen.append(f"audit {req.path}")
        return PASS

    @router.on("stat")
    async def second(req: StatRequest) -> object:
        seen.append(f"second {req.path}")
        return Stat(size=2) if str(req.path) == "/second" else PASS

    @router.on("stat")
    def third(req: StatRequest) -> object:
        seen.append(f"third {req.path}")
        return PASS

    async with serving(router) as session:
        assert await session.call("stat", path="/second") == Reply(Stat(size=2))
        assert await session.call("stat", path="/other") == Reply(-1, errno.EACCES)
    assert seen == ["audit /second", "second /second", "audit /other", "second /other", "third /other"]


async def test_routes_are_tried_only_for_their_functions() -> None:
    router = Router(default=deny(errno.ENOENT))
    seen: list[str] = []

    @router.on("open")
    def opens(req: OpenRequest) -> int:
        seen.append("open")
        return 0

    async with serving(router) as session:
        assert await session.call("stat", path="/x") == Reply(-1, errno.ENOENT)
    assert seen == []


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        (FORWARD, Reply(0, 0, (), True)),
        (deny(), Reply(-1, errno.EPERM)),
        (deny(errno.ENOENT), Reply(-1, errno.ENOENT)),
        (Errno(errno.EACCES), Reply(-1, errno.EACCES)),
    ],
    ids=["forward", "deny", "deny-enoent", "errno"],
)
async def test_the_default_decides_unhandled_functions(default: Any, expected: Reply) -> None:
    router = Router(default=default)
    async with serving(router) as session:
        for function, arguments in [("stat", {"path": "/x"}), ("unlink", {"path": "/x"})]:
            assert await session.call(function, **arguments) == expected
        gai = await session.call("getaddrinfo", node="example.test")
        if expected.forwarded:
            assert gai.forwarded
        else:
            assert gai == Reply("system", expected.errno)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_default_handler_decides_every_unhandled_call(kind: str) -> None:
    seen: list[str] = []

    def fallback(req: Request) -> Any:
        seen.append(req.function)
        if isinstance(req, GetaddrinfoRequest):
            return "noname"
        return 0

    async def fallback_async(req: Request) -> Any:
        return fallback(req)

    router = Router(default=fallback if kind == "sync" else fallback_async)

    @router.on("stat")
    def passes(req: StatRequest) -> object:
        return PASS

    async with serving(router) as session:
        assert await session.call("unlink", path="/x") == Reply(0)
        assert await session.call("getaddrinfo", node="example.test") == Reply("noname")
        assert await session.call("stat", path="/x") == Reply(-1, errno.EPERM)  # 0 is no stat result
    assert seen == ["unlink", "getaddrinfo", "stat"]
    route = router.default
    assert isinstance(route, Route) and route.functions == FUNCTIONS and route.order == -1


async def test_a_default_handler_that_passes_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(default=lambda req: PASS)
    async with serving(router) as session:
        assert await session.call("unlink", path="/x") == Reply(-1, errno.EPERM)
    assert router_errors(caplog)


def test_router_defaults_are_checked() -> None:
    with pytest.raises(ValueError, match="FORWARD, deny"):
        Router(default=PASS)
    with pytest.raises(TypeError, match="FORWARD, deny"):
        Router(default=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="StatRequest"):

        def only_stat(req: StatRequest) -> int:
            return 0

        Router(default=only_stat)
    for bad in (0, -1, True, "EPERM"):
        with pytest.raises(ValueError):
            deny(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            Router(error_errno=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            Errno(bad)  # type: ignore[arg-type]
    assert deny() == Errno(errno.EPERM) and deny(errno.EACCES).errno_name == "EACCES"
    assert Router().default is FORWARD


def test_a_refusal_has_one_type_whoever_spells_it() -> None:
    # deny(code) is the Errno a handler raises: one type for the default, the table and a handler.
    refusal = deny(errno.EACCES)
    assert type(refusal) is Errno and isinstance(refusal, OSError)
    assert refusal.errno == errno.EACCES and refusal == Errno(errno.EACCES) != Errno(errno.EPERM)
    assert Router(default=refusal).routes().default is refusal
    with pytest.raises(Errno) as raised:
        raise deny(errno.EROFS)
    assert raised.value.errno == errno.EROFS


def test_deny_the_class_is_a_deprecated_name_of_errno() -> None:
    import libc_service.policy.router

    for module in (libc_service, libc_service.policy.router):
        with pytest.warns(DeprecationWarning, match="deny\\(code\\) returns an Errno"):
            old = module.Deny
        assert old is Errno
        assert "Deny" not in module.__all__


# ----------------------------------------------------- policy bugs fail closed


@pytest.mark.parametrize(
    ("function", "arguments", "wrong"),
    [
        ("stat", {"path": "/wrong"}, 0),
        ("stat", {"path": "/wrong"}, None),
        ("stat", {"path": "/wrong"}, [AddrInfo("192.0.2.1")]),
        ("stat", {"path": "/wrong"}, Stat.model_construct(size=2**70)),  # skipped validation
        ("open", {"path": "/wrong", "flags": ["read_only"]}, None),
        ("open", {"path": "/wrong", "flags": ["read_only"]}, "0"),
        ("open", {"path": "/wrong", "flags": ["read_only"]}, True),
        ("open", {"path": "/wrong", "flags": ["read_only"]}, 2**64),
        ("open", {"path": "/wrong", "flags": ["read_only"]}, Stat()),
        ("open", {"path": "/wrong", "flags": ["read_only"]}, "noname"),
        ("unlink", {"path": "/wrong"}, 1.0),
        ("unlink", {"path": "/wrong"}, object()),
        ("getaddrinfo", {"node": "wrong.test"}, 0),
        ("getaddrinfo", {"node": "wrong.test"}, "nonsense"),
        ("getaddrinfo", {"node": "wrong.test"}, "system"),  # system needs an errno
        ("getaddrinfo", {"node": "wrong.test"}, [AddrInfo("192.0.2.1")] * 129),
        ("getaddrinfo", {"node": "wrong.test"}, ["192.0.2.1"]),
        ("getaddrinfo", {"node": "wrong.test"}, [AddrInfo.model_construct(address="192.0.2.1", port=0)]),
    ],
)
@pytest.mark.parametrize("error_errno", [None, errno.EIO])
async def test_a_result_of_the_wrong_type_is_logged_and_fails_closed(
    caplog: pytest.LogCaptureFixture,
    function: str,
    arguments: dict[str, Any],
    wrong: object,
    error_errno: int | None,
) -> None:
    router = Router(default=FORWARD) if error_errno is None else Router(default=FORWARD, error_errno=error_errno)
    expected_errno = error_errno or errno.EPERM

    @router.on(function)
    def buggy(req: Request) -> Any:
        return wrong if "wrong" in str(getattr(req, "path", getattr(req, "node", ""))) else FORWARD

    async with serving(router) as session:
        reply = await session.call(function, **arguments)
        failed = "system" if function == "getaddrinfo" else -1
        assert reply == Reply(failed, expected_errno)
        # The session goes on.
        assert (await session.call("unlink", path="/after")).forwarded
        assert session.alive
    [record] = router_errors(caplog)
    assert "policy bug" in record.getMessage()
    assert "wrong" in record.getMessage()  # the request is in the log line


async def test_a_handler_that_raises_is_logged_with_its_request_and_serving_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(default=FORWARD)

    @router.on("stat", "getaddrinfo")
    async def broken(req: Request) -> object:
        if isinstance(req, GetaddrinfoRequest) or str(req.path) == "/boom":
            raise RuntimeError("the policy has a bug")
        return FORWARD

    @router.on("open")
    def no_errno(req: OpenRequest) -> int:
        raise OSError("an OSError without an errno")

    async with serving(router) as session:
        assert await session.call("stat", path="/boom") == Reply(-1, errno.EPERM)
        assert await session.call("getaddrinfo", node="boom.test") == Reply("system", errno.EPERM)
        assert await session.call("open", path="/x", flags=["read_only"]) == Reply(-1, errno.EPERM)
        assert (await session.call("stat", path="/fine")).forwarded
        assert session.alive
    records = router_errors(caplog)
    assert len(records) == 3
    assert records[0].exc_info is not None and records[0].exc_info[0] is RuntimeError
    assert "/boom" in records[0].getMessage() and "broken" in records[0].getMessage()
    assert "boom.test" in records[1].getMessage()
    assert records[2].exc_info is not None and records[2].exc_info[0] is OSError


async def test_the_errno_for_buggy_handlers_is_configurable() -> None:
    router = Router(error_errno=errno.EACCES)

    @router.on("stat")
    def broken(req: StatRequest) -> NoReturn:
        raise KeyError("oops")

    async with serving(router) as session:
        assert await session.call("stat", path="/x") == Reply(-1, errno.EACCES)


async def test_a_condition_that_raises_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    from libc_service.policy.conditions import Condition

    class Broken(Condition):
        def __call__(self, request: object) -> bool:
            raise ZeroDivisionError("bad condition")

        def describe(self) -> str:
            return "broken"

    router = Router(default=FORWARD)

    @router.on("stat", when=Broken())
    def never(req: StatRequest) -> NoReturn:
        raise AssertionError("not reached")

    async with serving(router) as session:
        assert await session.call("stat", path="/x") == Reply(-1, errno.EPERM)
        assert (await session.call("open", path="/x", flags=["read_only"])).forwarded
    [record] = router_errors(caplog)
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


async def test_a_hanging_async_handler_times_out(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(default=FORWARD, timeout=0.05)
    cancelled = asyncio.Event()

    @router.on("stat")
    async def hangs(req: StatRequest) -> Stat:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    @router.on("getaddrinfo")
    async def hangs_too(req: GetaddrinfoRequest) -> list[AddrInfo]:
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    async with serving(router) as session:
        assert await session.call("stat", path="/slow") == Reply(-1, errno.ETIMEDOUT)
        assert cancelled.is_set()
        assert await session.call("getaddrinfo", node="slow.test") == Reply("system", errno.ETIMEDOUT)
        assert (await session.call("open", path="/x", flags=["read_only"])).forwarded
    records = router_errors(caplog)
    assert len(records) == 2 and all("timed out" in r.getMessage() for r in records)
    assert "/slow" in records[0].getMessage() and "hangs" in records[0].getMessage()


async def test_the_timeout_errno_is_configurable() -> None:
    router = Router(timeout=0.01, timeout_errno=errno.EAGAIN)

    @router.on("stat")
    async def hangs(req: StatRequest) -> Stat:
        await asyncio.sleep(PATIENCE)
        raise AssertionError("not reached")

    async with serving(router) as session:
        assert await session.call("stat", path="/slow") == Reply(-1, errno.EAGAIN)


async def test_a_handlers_own_timeout_error_is_a_handler_failure_not_the_routers_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(timeout=PATIENCE)

    @router.on("stat")
    async def gives_up(req: StatRequest) -> Stat:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)
        raise AssertionError("not reached")

    async with serving(router) as session:
        assert await session.call("stat", path="/x") == Reply(-1, errno.EPERM)
    [record] = router_errors(caplog)
    assert "timed out" not in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is TimeoutError


# ------------------------------------------------------------- concurrency


def test_a_slow_handler_holds_only_the_thread_that_asked(run: Callable[..., None]) -> None:
    async def scenario() -> None:
        router = Router(default=deny(), concurrent=True)
        slow_entered = asyncio.Event()
        release = asyncio.Event()

        @router.on("getaddrinfo")
        async def resolve(req: GetaddrinfoRequest) -> list[AddrInfo] | str:
            if req.node == "slow.test":
                slow_entered.set()
                await release.wait()
                return [AddrInfo("192.0.2.1")]
            return [AddrInfo("192.0.2.2")]

        async with serving(router) as session:
            slow = session.start("getaddrinfo", node="slow.test")
            await asyncio.wait_for(slow_entered.wait(), PATIENCE)
            # Thread A is held in its handler; thread B gets its answer now.
            fast = await asyncio.wait_for(session.start("getaddrinfo", node="fast.test"), PATIENCE)
            assert fast == Reply([AddrInfo("192.0.2.2")])
            assert not slow.done()
            release.set()
            assert await asyncio.wait_for(slow, PATIENCE) == Reply([AddrInfo("192.0.2.1")])

    run(scenario)


async def test_without_concurrent_one_call_is_decided_at_a_time() -> None:
    router = Router(default=deny(), concurrent=False)
    events: list[str] = []
    slow_entered = asyncio.Event()
    release = asyncio.Event()

    @router.on("stat")
    async def decide(req: StatRequest) -> Stat:
        events.append(f"enter {req.path}")
        if str(req.path) == "/slow":
            slow_entered.set()
            await release.wait()
        events.append(f"leave {req.path}")
        return Stat()

    async with serving(router) as session:
        slow = session.start("stat", path="/slow")
        await asyncio.wait_for(slow_entered.wait(), PATIENCE)
        fast = session.start("stat", path="/fast")
        await asyncio.sleep(0.05)
        assert not fast.done()
        release.set()
        await asyncio.wait_for(asyncio.gather(slow, fast), PATIENCE)
    assert events == ["enter /slow", "leave /slow", "enter /fast", "leave /fast"]


def test_calls_from_one_thread_stay_ordered_under_concurrent_dispatch(run: Callable[..., None]) -> None:
    threads, calls = 8, 40

    async def scenario() -> None:
        router = Router(default=deny(), concurrent=True)
        seen: dict[int, list[int]] = {}
        in_flight = 0
        most_in_flight = 0
        rng = random.Random(1234)

        @router.on("stat")
        async def decide(req: StatRequest) -> Stat:
            nonlocal in_flight, most_in_flight
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            seen.setdefault(req.tid, []).append(int(req.path.name))
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            in_flight -= 1
            return Stat(size=int(req.path.name))

        async with serving(router) as session:

            def one_thread() -> list[int]:
                sizes = []
                for n in range(calls):
                    reply = session.slave.call("stat", path=f"/seq/{n}")
                    assert isinstance(reply.result, Stat)
                    sizes.append(reply.result.size)
                return sizes

            with ThreadPoolExecutor(threads) as pool:
                loop = asyncio.get_running_loop()
                results = await asyncio.wait_for(
                    asyncio.gather(*(loop.run_in_executor(pool, one_thread) for _ in range(threads))), PATIENCE * 3
                )
        assert results == [list(range(calls))] * threads
        assert len(seen) == threads
        assert all(order == list(range(calls)) for order in seen.values())
        assert most_in_flight <= threads

    run(scenario)


def test_a_hundred_sessions_are_served_concurrently_on_one_loop(run: Callable[..., None]) -> None:
    sessions = 100

    async def scenario() -> None:
        router = Router(default=deny(errno.ENOENT))
        waiting = 0
        everybody_waits = asyncio.Event()

        @router.on("stat")
        async def rendezvous(req: StatRequest) -> Stat:
            # Answers only once all hundred sessions have a call in flight:
            # proves they are served at once, not one after another.
            nonlocal waiting
            if str(req.path) == "/rendezvous":
                waiting += 1
                if waiting == sessions:
                    everybody_waits.set()
                await everybody_waits.wait()
            return Stat(size=req.pid)

        before = open_fd_count()
        pairs = [Master.pair() for _ in range(sessions)]
        slaves = [Slave(sock) for _, sock in pairs]
        tasks = [asyncio.create_task(router.serve(master)) for master, _ in pairs]

        def slave_life(slave: Slave) -> list[Reply]:
            with slave:
                return [
                    slave.call("stat", path="/rendezvous"),
                    slave.call("stat", path="/after"),
                    slave.call("unlink", path="/x"),
                ]

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(sessions) as pool:
            replies = await asyncio.wait_for(
                asyncio.gather(*(loop.run_in_executor(pool, slave_life, slave) for slave in slaves)), PATIENCE * 3
            )
        await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE)
        assert replies == [[Reply(Stat(size=os.getpid()))] * 2 + [Reply(-1, errno.ENOENT)]] * sessions
        assert all(master.closed for master, _ in pairs)
        assert open_fd_count() == before

    run(scenario)


async def test_the_end_of_a_session_cancels_its_pending_handlers() -> None:
    router = Router(concurrent=True)
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    @router.on("stat")
    async def hangs(req: StatRequest) -> Stat:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    before = open_fd_count()
    directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    master, sock = Master.pair()
    slave = Slave(sock)
    task = asyncio.create_task(router.serve(master))
    stuck = asyncio.ensure_future(asyncio.to_thread(slave.call, "stat", path="etc", fds=(directory,)))
    await asyncio.wait_for(entered.wait(), PATIENCE)
    slave.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(stuck, PATIENCE)
    await asyncio.wait_for(task, PATIENCE)
    assert cancelled.is_set() and master.closed
    os.close(directory)
    assert open_fd_count() == before


async def test_cancelling_serve_closes_the_session_and_its_descriptors() -> None:
    router = Router()
    entered = asyncio.Event()

    @router.on("stat")
    async def hangs(req: StatRequest) -> Stat:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    before = open_fd_count()
    directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    master, sock = Master.pair()
    slave = Slave(sock)
    task = asyncio.create_task(router.serve(master))
    stuck = asyncio.ensure_future(asyncio.to_thread(slave.call, "stat", path="etc", fds=(directory,)))
    await asyncio.wait_for(entered.wait(), PATIENCE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert master.closed
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(stuck, PATIENCE)
    slave.close()
    os.close(directory)
    assert open_fd_count() == before


# ------------------------------------------------------------ registration


def test_an_unknown_function_name_is_rejected_with_the_valid_names() -> None:
    router = Router()
    with pytest.raises(ValueError) as info:
        router.on("opne", "stat")
    message = str(info.value)
    assert "'opne'" in message
    assert all(name in message for name in FUNCTIONS)
    with pytest.raises(ValueError):
        router.on()
    assert len(router.routes()) == 0


def _two(req: StatRequest, other: int) -> int:
    return 0


def _none() -> int:
    return 0


def _keyword(req: StatRequest, *, extra: int) -> int:
    return 0


def _open_only(req: OpenRequest) -> int:
    return 0


def _stat_only(req: StatRequest) -> int:
    return 0


def _unresolvable(req: NoSuchRequest) -> int:  # type: ignore[name-defined]  # noqa: F821
    return 0


@pytest.mark.parametrize(
    ("functions", "handler", "match"),
    [
        (("stat",), _open_only, "OpenRequest.*stat|stat.*StatRequest"),
        (("stat", "lstat"), _stat_only, "lstat"),
        (("open", "openat"), _open_only, "openat"),
        (("stat",), _two, "exactly one argument"),
        (("stat",), _none, "exactly one argument"),
        (("stat",), _keyword, "exactly one argument"),
        (("stat",), _unresolvable, "type hints"),
        (("stat",), 42, "callable"),
    ],
    ids=[
        "open-for-stat",
        "stat-for-lstat",
        "open-for-openat",
        "two-args",
        "no-args",
        "kw-only",
        "unresolvable",
        "not-callable",
    ],
)
def test_a_handler_that_cannot_serve_its_functions_is_rejected_at_registration(
    functions: tuple[str, ...],
    handler: Any,
    match: str,
) -> None:
    router = Router()
    with pytest.raises(TypeError, match=match):
        router.on(*functions)(handler)
    assert len(router.routes()) == 0


class _Policy:
    """A policy object whose instances are handlers."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, req: StatRequest | LstatRequest) -> Stat:
        return Stat(size=self.size)

    def method(self, req: StatRequest) -> Stat:
        return Stat(size=self.size + 1)


def _sized(size: int, req: StatRequest) -> Stat:
    return Stat(size=size)


def _logged(handler: Callable[[StatRequest], Stat]) -> Callable[[StatRequest], Stat]:
    @functools.wraps(handler)
    def wrapper(req: StatRequest) -> Stat:
        return handler(req)

    return wrapper


@_logged
def _wrapped(req: StatRequest) -> Stat:
    return Stat(size=4)


@pytest.mark.parametrize(
    ("handler", "size"),
    [
        (_Policy(1), 1),
        (_Policy(1).method, 2),
        (functools.partial(_sized, 3), 3),
        (_wrapped, 4),
        (lambda req: Stat(size=5), 5),
    ],
    ids=["callable-object", "bound-method", "partial", "wrapped", "lambda"],
)
async def test_any_callable_with_a_fitting_signature_is_a_handler(handler: Any, size: int) -> None:
    router = Router(default=deny())
    router.on("stat")(handler)
    async with serving(router) as session:
        assert await session.call("stat", path="/x") == Reply(Stat(size=size))


def test_fitting_type_hints_are_accepted() -> None:
    def any_request(req: Request) -> int:
        return 0

    def union(req: OpenRequest | OpenatRequest) -> int:
        return 0

    def untyped(req):  # type: ignore[no-untyped-def]
        return 0

    def variadic(*args: Any) -> int:
        return 0

    def optional_second(req: Any, extra: int = 0) -> int:
        return 0

    router = Router()
    router.on(*FUNCTIONS)(any_request)
    router.on("open", "openat")(union)
    router.on("stat", "open")(untyped)
    router.on("open")(variadic)
    router.on("rename")(optional_second)
    assert [route.name.rsplit(".", 1)[-1] for route in router.routes()] == [
        "any_request",
        "union",
        "untyped",
        "variadic",
        "optional_second",
    ]


def test_a_result_the_function_cannot_have_is_refused_at_decoration_with_the_policys_line() -> None:
    router = Router()
    with pytest.raises(TypeError) as info:
        decorated_at = sys._getframe().f_lineno + 2

        @router.on("open", "openat")
        def serve(req: OpenRequest | OpenatRequest) -> str:
            return "ok"

    message = str(info.value)
    assert "serve" in message and "to return str" in message and "open, openat" in message
    assert f"(test_router.py, line {decorated_at})" in message
    assert len(router.routes()) == 0


def _str_for_open(req: OpenRequest) -> str:
    return "ok"


def _none_for_unlink(req: Any) -> None:
    return None


def _int_for_stat(req: StatRequest | LstatRequest) -> int:
    return 0


def _stat_or_str_for_stat(req: StatRequest) -> Stat | str:
    return "x"


def _addresses_for_open(req: Any) -> list[AddrInfo]:
    return []


def _wrong_literal(req: GetaddrinfoRequest) -> Literal["nosuchname"]:
    return "nosuchname"


def _awaitable_of_str(req: Any) -> Awaitable[str]:
    raise NotImplementedError


async def _async_awaitable(req: Any) -> Awaitable[int]:
    raise NotImplementedError


def _generator(req: Any) -> Iterator[int]:
    yield 0


async def _async_generator(req: Any) -> AsyncIterator[int]:
    yield 0


@pytest.mark.parametrize(
    ("functions", "handler", "match"),
    [
        (("open",), _str_for_open, "return str, which open cannot"),
        (("unlink",), _none_for_unlink, "return None"),
        (("stat", "lstat"), _int_for_stat, "return int, which stat, lstat cannot"),
        (("stat",), _stat_or_str_for_stat, "return str"),
        (("open", "connect_inet"), _addresses_for_open, r"list\[.*AddrInfo\]"),
        (("getaddrinfo",), _wrong_literal, "nosuchname"),
        (("open",), _awaitable_of_str, "return str"),
        (("open",), _async_awaitable, "awaits what a handler gives back once"),
        (("open",), _generator, "generator function"),
        (("open",), _async_generator, "async generator"),
    ],
    ids=[
        "str-for-open",
        "none",
        "int-for-stat",
        "one-member-of-a-union",
        "addresses-for-open",
        "unknown-error-name",
        "awaitable-of-str",
        "async-returning-awaitable",
        "generator",
        "async-generator",
    ],
)
def test_a_handler_whose_result_cannot_serve_its_functions_is_rejected_at_registration(
    functions: tuple[str, ...], handler: Any, match: str
) -> None:
    router = Router()
    with pytest.raises(TypeError, match=match):
        router.on(*functions)(handler)
    with pytest.raises(TypeError, match=match):
        router.add_route(functions, handler)
    assert len(router.routes()) == 0


def test_results_each_function_can_have_are_accepted() -> None:
    def opened(req: OpenRequest | OpenatRequest) -> WithFds:
        raise NotImplementedError

    def looked_up(req: GetaddrinfoRequest) -> list[AddrInfo] | Literal["noname", "again"]:
        return "noname"

    def stat(req: StatRequest | LstatRequest) -> Stat | WithFds:
        raise NotImplementedError

    def refuse(req: Any) -> NoReturn:
        raise Errno(errno.EACCES)

    def later(req: OpenRequest) -> Awaitable[int | WithFds]:
        raise NotImplementedError

    async def awaited(req: Any) -> int:
        return 0

    def mixed(req: Any) -> int | Stat | list[AddrInfo]:
        return 0

    def unjudged(req: Any) -> object:
        return 0

    router = Router()
    router.on("open", "openat")(opened)
    router.on("getaddrinfo")(looked_up)
    router.on("stat", "lstat")(stat)
    router.on(*FUNCTIONS)(refuse)
    router.on("open")(later)
    router.on("mkdir", "unlink")(awaited)
    router.on("stat", "open", "getaddrinfo")(mixed)
    router.on("stat")(unjudged)
    assert len(router.routes()) == 8


def test_on_returns_the_handler_unchanged_and_dedups_functions() -> None:
    router = Router()

    def handler(req: StatRequest) -> NoReturn:
        raise Errno(errno.ENOENT)

    assert router.on("stat", "stat")(handler) is handler
    [route] = router.routes()
    assert route.functions == ("stat",)


def test_when_takes_conditions() -> None:
    router = Router()
    with pytest.raises(TypeError, match="conditions"):
        router.on("stat", when="/srv")  # type: ignore[arg-type]


# --------------------------------------------------------------- observers


async def test_observers_see_request_route_outcome_result_errno_and_latency() -> None:
    router = Router(default=FORWARD)
    decisions: list[Decision] = []
    router.observe(decisions.append)

    @router.on("stat")
    async def stat_policy(req: StatRequest) -> Any:
        match str(req.path):
            case "/reply":
                await asyncio.sleep(0.01)
                return Stat(size=1)
            case "/error":
                raise Errno(errno.EACCES)
            case "/bug":
                return "not a stat"
        return PASS

    @router.on("open")
    def pipe(req: OpenRequest) -> WithFds:
        read_end, write_end = os.pipe()
        os.close(write_end)
        return WithFds(0, [read_end])

    async with serving(router) as session:
        await session.call("stat", path="/reply")
        await session.call("stat", path="/error")
        await session.call("stat", path="/bug")
        await session.call("stat", path="/passed")
        close_reply(await session.call("open", path="/x", flags=["read_only"]))
        name = session.master.name

    summary = [
        (
            d.request.function,
            str(getattr(d.request, "path")),
            d.route.rsplit(".", 1)[-1],
            d.outcome,
            d.result,
            d.errno,
            d.nfds,
        )
        for d in decisions
    ]
    assert summary == [
        ("stat", "/reply", "stat_policy", "reply", Stat(size=1), 0, 0),
        ("stat", "/error", "stat_policy", "error", -1, errno.EACCES, 0),
        ("stat", "/bug", "stat_policy", "failure", -1, errno.EPERM, 0),
        ("stat", "/passed", "default", "forward", None, 0, 0),
        ("open", "/x", "pipe", "reply", 0, 0, 1),
    ]
    assert all(d.session == name for d in decisions)
    assert all(isinstance(d.request, StatRequest | OpenRequest) for d in decisions)
    assert decisions[0].latency_ns >= 10_000_000  # the handler slept 10 ms
    assert all(d.latency_ns >= 0 for d in decisions)


async def test_an_observer_that_raises_is_logged_and_serving_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(default=deny(errno.EACCES))
    later: list[str] = []

    @router.observe
    def broken(decision: Decision) -> None:
        raise ValueError("observer bug")

    router.observe(lambda decision: later.append(decision.outcome))

    async with serving(router) as session:
        assert await session.call("stat", path="/x") == Reply(-1, errno.EACCES)
        assert await session.call("stat", path="/y") == Reply(-1, errno.EACCES)
        assert session.alive
    assert later == ["error", "error"]
    records = router_errors(caplog)
    assert len(records) == 2 and "broken" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError


# ----------------------------------------------------------- introspection


def test_routes_describe_the_policy_in_order_with_the_default() -> None:
    router = Router(default=deny(errno.EACCES), error_errno=errno.EIO)

    @router.on("open", "openat", when=under("/srv/data"))
    def read_data(req: OpenRequest | OpenatRequest) -> int:
        """Let the program read its data.

        Everything beneath /srv/data, opened with openat2(RESOLVE_BENEATH).
        """
        return 0

    @router.on("stat")
    async def fake_stat(req: StatRequest) -> Stat:
        """Fake every stat
        across two lines."""
        return Stat()

    @router.on("open")
    def undocumented(req: OpenRequest) -> object:
        return PASS

    table = router.routes()
    assert [route.name.rsplit(".", 1)[-1] for route in table] == ["read_data", "fake_stat", "undocumented"]
    assert [route.order for route in table] == [0, 1, 2]
    first, second, third = table
    assert first.functions == ("open", "openat") and first.handler is read_data
    assert first.summary == "Let the program read its data."
    assert first.doc is not None and "RESOLVE_BENEATH" in first.doc
    assert [c.describe() for c in first.conditions] == ["the path is `/srv/data` or beneath it"]
    assert second.summary == "Fake every stat across two lines."
    assert third.summary is None and third.doc is None and third.conditions == ()
    assert first.source is not None and first.source[0] == __file__
    assert first.source[1] < second.source[1] < third.source[1]  # type: ignore[index]
    assert table.default == Errno(errno.EACCES) and table.error_errno == errno.EIO
    assert len(table) == 3
    assert table.for_function("open") == (first, third)
    assert table.for_function("openat") == (first,)
    assert table.for_function("unlink") == ()


def test_routes_show_a_default_handler() -> None:
    def everything_else(req: Request) -> object:
        """Whatever no route decides is forwarded."""
        return FORWARD

    table = Router(default=everything_else).routes()
    assert isinstance(table.default, Route)
    assert table.default.summary == "Whatever no route decides is forwarded."
    assert table.default.handler is everything_else
    assert Router().routes().default is FORWARD


# ------------------------------------------------------ descriptor hygiene


def _pipe_with_fds(result: Any) -> WithFds:
    read_end, write_end = os.pipe()
    return WithFds(result, [read_end, write_end])


OUTCOMES: dict[str, Callable[[Request], Any]] = {
    "int": lambda req: 0,
    "stat": lambda req: Stat(size=1),
    "errno": lambda req: (_ for _ in ()).throw(Errno(errno.EACCES)),
    "oserror": lambda req: os.stat("/nonexistent/for/sure"),
    "raises": lambda req: (_ for _ in ()).throw(RuntimeError("bug")),
    "wrong-type": lambda req: "wrong",
    "none": lambda req: None,
    "forward": lambda req: FORWARD,
    "pass-to-default": lambda req: PASS,
    "with-fds": lambda req: WithFds(0, [os.open("/dev/null", os.O_RDONLY)]),
    "with-fds-bad-result": lambda req: WithFds("bad", [os.open("/dev/null", os.O_RDONLY)]),
    "with-fds-too-many": lambda req: _pipe_with_fds(0),
    "with-fds-for-stat": lambda req: WithFds(Stat(), [os.open("/dev/null", os.O_RDONLY)]),
    "with-fds-not-open": lambda req: WithFds(0, [os.open("/dev/null", os.O_RDONLY), 1_000_000]),
    "with-fds-not-ints": lambda req: WithFds(0, [os.open("/dev/null", os.O_RDONLY), "3"]),
}


@pytest.mark.parametrize("function", ["open", "openat", "stat", "rename", "connect_unix", "connect_inet"])
@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
async def test_received_descriptors_are_closed_after_every_outcome(
    caplog: pytest.LogCaptureFixture,
    function: str,
    outcome: str,
) -> None:
    router = Router(default=deny(errno.ENOENT))
    router.on(function)(OUTCOMES[outcome])

    directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX if function == "connect_unix" else socket.AF_INET)
    arguments: dict[str, Any] = {
        "open": {"path": "etc", "flags": ["read_only"], "fds": (directory,)},
        "openat": {"path": "etc", "flags": ["read_only"], "fds": (directory,)},
        "stat": {"path": "etc", "fds": (directory,)},
        "rename": {"path1": "a", "path2": "b", "fds": (directory, directory)},
        "connect_unix": {"path": "/run/x.sock", "fds": (sock.fileno(),)},
        "connect_inet": {"address": "127.0.0.1", "port": 80, "fds": (sock.fileno(),)},
    }[function]
    try:
        before = open_fd_count()
        async with serving(router) as session:
            during = open_fd_count()
            reply = await session.call(function, **arguments)
            for fd in reply.fds:
                os.close(fd)
            # Nothing the master received or was handed stays open.
            assert open_fd_count() == during
            assert (await session.call("unlink", path="/still-serving")) == Reply(-1, errno.ENOENT)
        assert open_fd_count() == before
    finally:
        sock.close()
        os.close(directory)


async def test_with_fds_with_descriptors_that_are_not_open_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    """sendmsg would fail with EBADF and end the session: the router catches it first."""
    router = Router(default=FORWARD)
    handed: list[int] = []
    bad = {"/closed": 1_000_000, "/negative": -1, "/huge": 2**40, "/not-an-int": "3"}

    @router.on("open", "unlink")
    def buggy(req: OpenRequest | Request) -> WithFds:
        wrong = bad[str(getattr(req, "path"))]
        if req.function == "open":  # an open reply carries exactly one descriptor
            return WithFds(0, [wrong])  # type: ignore[list-item]
        fd = os.open("/dev/null", os.O_RDONLY)
        handed.append(fd)
        return WithFds(0, [fd, wrong])  # type: ignore[list-item]

    async with serving(router) as session:
        for path in bad:
            assert await session.call("open", path=path, flags=["read_only"]) == Reply(-1, errno.EPERM)
            assert await session.call("unlink", path=path) == Reply(-1, errno.EPERM)
            assert session.alive
        assert (await session.call("stat", path="/x")).forwarded
    for fd in handed:  # the reply owned them, and closed them
        with pytest.raises(OSError):
            os.fstat(fd)
    assert len(router_errors(caplog)) == 2 * len(bad)


async def test_several_threads_pipeline_on_one_sequential_session() -> None:
    router = Router(default=deny())

    @router.on("stat")
    def echo(req: StatRequest) -> Stat:
        return Stat(size=int(req.path.name), uid=req.tid % 2**32)

    async with serving(router) as session:

        def worker(base: int) -> None:
            tid = threading.get_native_id()
            for n in range(base, base + 50):
                assert session.slave.call("stat", path=f"/n/{n}") == Reply(Stat(size=n, uid=tid))

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(4) as pool:
            await asyncio.wait_for(
                asyncio.gather(*(loop.run_in_executor(pool, worker, k * 1000) for k in range(4))), PATIENCE * 3
            )


async def test_a_handler_bug_is_logged_once_with_its_traceback_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(default=FORWARD)

    @router.on("unlink")
    def broken(req: Request) -> int:
        """Always fails the same way."""
        return 1 // 0

    async with serving(router) as session:
        for _ in range(12):
            assert await session.call("unlink", path="/x") == Reply(-1, errno.EPERM)
    errors = router_errors(caplog)
    assert len(errors) == 2
    assert errors[0].exc_info is not None and "repeats are counted" in errors[0].getMessage()
    assert errors[1].exc_info is None and "has failed 10 times with ZeroDivisionError" in errors[1].getMessage()


# ------------------------------------------------------------- add_route


async def test_add_route_is_what_the_decorator_does_for_a_router_built_from_data() -> None:
    router = Router(default=deny(errno.EACCES))

    def hostname(req: Any) -> Any:
        """The one file this policy answers."""
        return Stat(size=7)

    route = router.add_route(["stat", "lstat"], hostname, when=under("/etc/hostname"))
    assert router.routes().routes == (route,)
    assert (route.functions, route.handler, route.summary) == (
        ("stat", "lstat"),
        hostname,
        "The one file this policy answers.",
    )
    assert await router.decide(StatRequest(path="/etc/hostname", pid=1, tid=1)) == (route.name, Stat(size=7))
    name, outcome = await router.decide(StatRequest(path="/etc/passwd", pid=1, tid=1))
    assert name == "default" and isinstance(outcome, Errno) and outcome.errno == errno.EACCES
    with pytest.raises(ValueError, match="unknown function"):
        router.add_route(["stat", "chmdo"], hostname)
