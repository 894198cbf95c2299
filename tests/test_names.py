"""Names as grants: a program reaches an allowed name and nothing else, and DNS is no way out.

Real programs under the real shim (and the seccomp transport), a local
nameserver on 127.0.0.1 whose log shows every question that left the
master, and a TCP greeter on 0.0.0.0 that every 127.x address reaches
natively — so a refusal is the policy's, never the network's.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service import FORWARD, Errno, Resolver, Router, perform, spawn
from libc_service.policy.conditions import named, resolved, to
from libc_service.policy.dnsanswer import answer_queries
from libc_service.policy.names import Answers, Pattern, host_labels
from libc_service.seccomp.availability import seccomp_unavailable
from libc_service.protocol.requests import ConnectInet6Request, ConnectInetRequest, GetaddrinfoRequest

from conftest import FdCount
from nameserver import Nameserver, nameserver  # noqa: F401 - nameserver is a fixture
from shimtools import PYTHON, needs_shim, run_slave
from test_seccomp_notify import static_program  # noqa: F401 - a fixture

# ------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("pypi.org", "pypi.org", True),
        ("pypi.org", "PyPI.Org.", True),
        ("pypi.org", "www.pypi.org", False),
        ("*.python.org", "docs.python.org", True),
        ("*.python.org", "a.b.python.org", True),
        ("*.python.org", "python.org", False),
        ("*.python.org", "evilpython.org", False),
        ("*.python.org", "python.org.evil.com", False),
        ("*.python.org", "a.b\\.python.org", False),
        ("*.python.org", "a .python.org", False),
        ("*.python.org", "a..python.org", False),
    ],
)
def test_a_pattern_matches_names_label_by_label(pattern: str, name: str, matches: bool) -> None:
    labels = host_labels(name)
    assert (labels is not None and Pattern.parse(pattern).matches(labels)) is matches


@pytest.mark.parametrize("bad", ["", "*", "*.", "a.*.org", "*python.org", "py pi.org", "a..b", "**.org", "ä.org"])
def test_a_pattern_that_is_no_name_is_refused_at_registration(bad: str) -> None:
    with pytest.raises(ValueError, match="name pattern"):
        named(bad)
    with pytest.raises(ValueError, match="name pattern"):
        resolved(bad)


@given(st.text(max_size=80))
def test_a_name_checked_is_the_name_a_nameserver_would_be_asked(text: str) -> None:
    """Whatever the slave sends, the labels compared with a pattern are the labels queried."""
    labels = host_labels(text)
    if labels is None:
        return
    queried = dns.name.from_text(".".join(labels))
    assert tuple(label.decode() for label in queried.labels[:-1]) == labels
    assert ".".join(labels) == text.lower().removesuffix(".")


def test_answers_expire_and_are_bounded() -> None:
    now = [0.0]
    answers = Answers(limit=3, clock=lambda: now[0])
    answers.record("a.test", [("192.0.2.1", 10.0), ("::ffff:192.0.2.2", 10.0)])
    assert list(answers.names_for("192.0.2.1")) == ["a.test"]
    assert list(answers.names_for("::ffff:192.0.2.1")) == ["a.test"]  # the v4-mapped form is the same host
    assert list(answers.names_for("192.0.2.2")) == ["a.test"]
    now[0] = 10.5
    assert list(answers.names_for("192.0.2.1")) == []
    for index in range(1000):
        answers.record(f"n{index}.test", [(f"198.51.100.{index % 250}", 60.0)])
    assert len(answers) == 3
    assert list(answers.names_for("198.51.100.249")) == ["n999.test"]


# ------------------------------------------------------------- real slaves

#: Steps given on the command line: lookup=NAME, connect=ADDRESS, sleep=SECONDS, ready=PATH (create
#: it), wait=PATH (until it exists); prints a JSON list.
_PROGRAM = """
import json, os, socket, sys, time
port = int(sys.argv[1])
out = []
for step in sys.argv[2:]:
    kind, _, arg = step.partition("=")
    if kind == "lookup":
        try:
            out.append(sorted({i[4][0] for i in socket.getaddrinfo(arg, port, type=socket.SOCK_STREAM)}))
        except socket.gaierror as exc:
            out.append(["gaierror", exc.errno])
    elif kind == "connect":
        s = socket.socket(socket.AF_INET6 if ":" in arg else socket.AF_INET)
        try:
            s.connect((arg, port))
            out.append(s.recv(100).decode())
        except OSError as exc:
            out.append(["oserror", exc.errno])
        finally:
            s.close()
    elif kind == "sleep":
        time.sleep(float(arg))
    elif kind == "ready":
        open(arg, "w").close()
    elif kind == "wait":
        for _ in range(12000):  # a hang's bound
            if os.path.exists(arg):
                break
            time.sleep(0.01)
print(json.dumps(out))
"""

NONAME = ["gaierror", socket.EAI_NONAME]
REFUSED = ["oserror", errno.ECONNREFUSED]

_SECCOMP = seccomp_unavailable()
TRANSPORTS = [
    pytest.param(False, id="shim"),
    pytest.param(True, id="seccomp", marks=pytest.mark.skipif(_SECCOMP is not None, reason=_SECCOMP or "")),
]

pytestmark = [needs_shim]


@pytest.fixture
async def greeter() -> AsyncIterator[int]:
    """A TCP server on every IPv4 address greeting with ``hello``; its port."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "0.0.0.0", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def egress(ns: Nameserver, port: int, *, careless: bool = False, min_ttl: float = 5.0, own_dns: bool = False) -> Router:
    """Connect only to `allowed.test` and names below `short.test`, on ``port``, addresses as resolved.

    ``careless``: the lookup route has no condition, so only ``perform``'s
    own refusal keeps other names from the nameserver. ``own_dns``: a
    program's own queries (a connect to port 53) are answered by the master.
    """
    # A timeout, as a real policy has one: sync handlers whose perform() is awaited must keep it on both transports.
    router = Router(default=FORWARD, timeout=30.0, resolver=Resolver([ns.address], hosts=None, min_ttl=min_ttl))
    patterns = ("allowed.test", "*.short.test")
    if own_dns:
        router.add_route(("connect_inet",), answer_queries, when=to("0.0.0.0/0:53"))

    @router.on("getaddrinfo", when=None if careless else named(*patterns))
    def lookup(request: GetaddrinfoRequest) -> Any:
        return perform(request)

    @router.on("connect_inet", "connect_inet6", when=resolved(*patterns, ports=[port]))
    def connect(request: ConnectInetRequest | ConnectInet6Request) -> Any:
        return perform(request)

    @router.on("connect_inet", "connect_inet6")
    def refuse(request: ConnectInetRequest | ConnectInet6Request) -> Any:
        raise Errno(errno.ECONNREFUSED)

    @router.on("getaddrinfo")
    def unknown(request: GetaddrinfoRequest) -> Any:
        return "noname"

    return router


async def steps(router: Router, port: int, *program: str, seccomp: bool = False) -> list[Any]:
    import subprocess

    async with spawn(
        [PYTHON, "-c", _PROGRAM, str(port), *program],
        router,
        seccomp=seccomp,
        env={"LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert await process.wait() == 0, err.decode()
    result: list[Any] = json.loads(out)
    return result


@pytest.mark.parametrize("seccomp", TRANSPORTS)
async def test_an_allowed_name_connects_and_its_address_alone_does_not(
    nameserver: Nameserver, greeter: int, seccomp: bool
) -> None:
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    router = egress(nameserver, greeter)
    assert await steps(
        router,
        greeter,
        "connect=127.0.0.1",
        "lookup=allowed.test",
        "connect=127.0.0.1",
        "connect=127.0.0.3",
        seccomp=seccomp,
    ) == [REFUSED, ["127.0.0.1"], "hello", REFUSED]
    # 127.0.0.3 is in the same network and the greeter answers there natively.
    reader, writer = await asyncio.open_connection("127.0.0.3", greeter)
    assert await reader.read() == b"hello"
    writer.close()


@pytest.mark.parametrize("seccomp", TRANSPORTS)
async def test_a_name_no_pattern_allows_is_noname_and_never_asked(
    nameserver: Nameserver, greeter: int, seccomp: bool
) -> None:
    """The exfiltration attack: the master would have carried the secret to the nameserver."""
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    nameserver.zone["topsecret-1234.exfil.test"] = (["127.0.0.1"], 300)
    for careless in (False, True):
        router = egress(nameserver, greeter, careless=careless)
        assert await steps(
            router,
            greeter,
            "lookup=TOPSECRET-1234.exfil.test",
            "lookup=short.test",
            "lookup=allowed.test",
            seccomp=seccomp,
        ) == [NONAME, NONAME, ["127.0.0.1"]]
    assert not nameserver.asked("topsecret") and not nameserver.asked("exfil")
    assert ("short.test", "A") not in nameserver.log  # "*.short.test" is the names below it
    assert ("allowed.test", "A") in nameserver.log


async def test_an_expired_answer_no_longer_grants(nameserver: Nameserver, greeter: int) -> None:
    nameserver.zone["brief.short.test"] = (["127.0.0.1"], 1)
    router = egress(nameserver, greeter, min_ttl=0.0)
    assert await steps(
        router, greeter, "lookup=brief.short.test", "connect=127.0.0.1", "sleep=2.5", "connect=127.0.0.1"
    ) == [["127.0.0.1"], "hello", REFUSED]


async def test_answers_given_to_one_tree_grant_nothing_in_another(
    nameserver: Nameserver, greeter: int, tmp_path: Path
) -> None:
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    router = egress(nameserver, greeter)
    has_answer, second_done = tmp_path / "has_answer", tmp_path / "second_done"
    first = asyncio.ensure_future(
        steps(
            router,
            greeter,
            "lookup=allowed.test",
            "connect=127.0.0.1",
            f"ready={has_answer}",
            f"wait={second_done}",
            "connect=127.0.0.1",
        )
    )
    # The first tree has its answer and holds it while the second runs.
    async with asyncio.timeout(120):
        while not has_answer.exists():
            assert not first.done(), first.result()
            await asyncio.sleep(0.01)
    assert await steps(router, greeter, "connect=127.0.0.1") == [REFUSED]
    second_done.touch()
    assert await first == [["127.0.0.1"], "hello", "hello"]


async def test_a_shell_pipeline_shares_its_trees_answers(nameserver: Nameserver, greeter: int) -> None:
    """A lookup in one process of the tree grants the connect of another (a child)."""
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    router = egress(nameserver, greeter)
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_PROGRAM!r}, '{greeter}', 'connect=127.0.0.1'])"
    ran = await run_slave(
        ["sh", "-c", f'"$0" -c "$1" {greeter} lookup=allowed.test && "$0" -c "$2"', PYTHON, _PROGRAM, child], router
    )
    assert ran.status == 0, ran.err
    assert [json.loads(line) for line in ran.out.splitlines()] == [[["127.0.0.1"]], ["hello"]]


# ------------------------------------------------------------- the policy's names


def test_the_names_a_policy_may_resolve_are_its_named_and_resolved_patterns() -> None:
    router = Router()
    router.on("getaddrinfo", when=named("a.test") & ~named("b.test"))(lambda request: "noname")
    router.on("connect_inet", when=resolved("*.c.test", "a.test"))(lambda request: 0)
    assert [str(pattern) for pattern in router.name_patterns()] == ["a.test", "*.c.test"]


async def test_a_name_in_the_hosts_file_is_answered_from_it_for_the_policys_bound(
    tmp_path: Path, nameserver: Nameserver
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n192.0.2.5  Listed.Test other  # trailing\n2001:db8::5 listed.test\nbad line\n")
    nameserver.zone["listed.test"] = (["198.51.100.1"], 300)
    resolver = Resolver([nameserver.address], hosts=hosts, hosts_ttl=42.0)
    found = await resolver.lookup(("listed", "test"))
    assert [(str(address), ttl) for address, ttl in found] == [("192.0.2.5", 42.0), ("2001:db8::5", 42.0)]
    assert nameserver.log == []
    with pytest.raises(socket.gaierror) as failed:
        await resolver.lookup(("missing", "test"))
    assert failed.value.errno == socket.EAI_NONAME
    assert nameserver.log == [("missing.test", "A"), ("missing.test", "AAAA")]


async def test_a_silent_nameserver_is_eai_again_without_blocking_the_loop() -> None:
    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    quiet.bind(("127.0.0.1", 0))
    try:
        resolver = Resolver(["127.0.0.1:%d" % quiet.getsockname()[1]], hosts=None, timeout=0.5)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        with pytest.raises(socket.gaierror) as failed:
            await resolver.lookup(("quiet", "test"))
        ticker.cancel()
        assert failed.value.errno == socket.EAI_AGAIN
        assert ticks > 1  # the loop kept running while the lookup waited
    finally:
        quiet.close()


# ------------------------------------------------------------- programs that resolve by themselves


@pytest.mark.skipif(_SECCOMP is not None, reason=_SECCOMP or "")
async def test_a_static_program_resolving_by_itself_is_answered_under_the_same_rules(
    static_program: Any, nameserver: Nameserver, greeter: int, fd_count: FdCount
) -> None:
    """Its own UDP question goes to the master's answerer, never to the nameserver it named."""
    import subprocess

    before = fd_count.snapshot()

    program = str(static_program("dns_connect"))
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    nameserver.zone["secret-1234.exfil.test"] = (["127.0.0.1"], 300)

    async def resolve_by_itself(router: Router, name: str, argv: list[str] | None = None) -> str:
        async with spawn(
            argv or [program, "192.0.2.53", name, str(greeter)],
            router,
            seccomp=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert await process.wait() == 0, err.decode()
        return out.decode().strip()

    answered = egress(nameserver, greeter, own_dns=True)
    assert await resolve_by_itself(answered, "allowed.test") == "127.0.0.1 hello"
    assert await resolve_by_itself(answered, "secret-1234.exfil.test") == "rcode 3"  # NXDOMAIN
    assert await resolve_by_itself(answered, "short.test") == "rcode 3"
    # glibc's own resolver, linked statically, asks the nameserver of /etc/resolv.conf: the answerer answers.
    libc = str(static_program("static_getaddrinfo"))
    if _resolv_conf_names_a_nameserver():
        assert await resolve_by_itself(answered, "", [libc, "allowed.test"]) == "0 127.0.0.1"
        assert await resolve_by_itself(answered, "", [libc, "secret-1234.exfil.test"]) == str(socket.EAI_NONAME)
    # Without the route, its connect to the nameserver is refused like any other address.
    refused = egress(nameserver, greeter)
    assert await resolve_by_itself(refused, "allowed.test") == f"connect nameserver: {errno.ECONNREFUSED}"
    assert not nameserver.asked("exfil") and ("short.test", "A") not in nameserver.log
    assert ("allowed.test", "A") in nameserver.log
    fd_count.assert_unchanged(before)  # each tree's answerer is closed with the tree


def _resolv_conf_names_a_nameserver() -> bool:
    """Whether glibc's resolver would send a question anywhere (an IPv4 ``nameserver`` line)."""
    try:
        with open("/etc/resolv.conf") as conf:
            lines = conf.read().splitlines()
    except OSError:
        return False
    return any(line.split()[:1] == ["nameserver"] and "." in line for line in lines)


class _Sent:
    """A transport that keeps what the answerer sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False


@settings(deadline=None, max_examples=200)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda name, kind, flip: _question(name, kind, flip),
            st.text(max_size=70),
            st.sampled_from(["A", "AAAA", "TXT", "MX", "ANY"]),
            st.binary(max_size=4),
        ),
    )
)
def test_the_answerer_takes_any_bytes_and_asks_no_nameserver_for_a_name_no_pattern_allows(data: bytes) -> None:
    """A program's own question is slave input: any bytes, never a crash, never a query past the patterns."""
    from libc_service.policy.dnsanswer import _Answerer
    from libc_service.policy.names import NameScope

    asked: list[tuple[str, ...]] = []

    class Recording(Resolver):
        async def lookup(self, labels: tuple[str, ...]) -> Any:
            asked.append(labels)
            raise socket.gaierror(socket.EAI_NONAME, "none")

    scope = NameScope(Recording(["127.0.0.1:9"], hosts=None), (Pattern.parse("allowed.test"),))
    answerer = _Answerer(scope)
    transport = _Sent()
    answerer.connection_made(transport)  # type: ignore[arg-type]
    asyncio.run(answerer._answer(data, ("127.0.0.1", 1)))
    assert all(labels == ("allowed", "test") for labels in asked)
    for sent in transport.sent:
        assert len(sent) >= 12


def _question(name: str, kind: str, flip: bytes) -> bytes:
    import dns.exception
    import dns.message

    try:
        wire: bytes = dns.message.make_query(name or ".", kind).to_wire()
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return flip
    return wire[: len(wire) - len(flip)] + flip if flip else wire
