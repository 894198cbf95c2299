"""The shim's rule table: what it claims, the router would decide; real programs skip the master.

The compiler (:mod:`libc_service.policy.rules`) is checked against the router on
random policies and requests: whenever the table claims an answer
(forward, or an errno), the router gives that answer. Then the shim itself
(shim/rules.c) with real processes: calls the table decides never reach
the master, calls a handler may decide still do.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service import FORWARD, Decision, Errno, Router, deny, spawn
from libc_service.policy.conditions import Condition, flags, named, under, writing
from libc_service.protocol.catalogue import METADATA_FD_FUNCTIONS
from libc_service.protocol.requests import OPEN_FLAGS, OPENAT_FLAGS, REQUEST_TYPES, Request
from libc_service.policy.rules import (
    ENV_REPORTS,
    ENV_RULES,
    MAX_RULES_BYTES,
    OP_UNDER_SET,
    RULED_FUNCTIONS,
    compile_rules,
    evaluate,
    relative,
)
from libc_service.protocol.openflags import OPEN_FLAG_BITS
from shimtools import needs_shim

# ------------------------------------------------------------- the compiler

_COMPONENTS = ["srv", "srvx", "a", "b", ".", "..", ""]
_ROOTS = ["/", "/srv", "/srv/a", "/a/b", "/srvx", "/é", "/usr", "/usr/lib", "/usr/lib/a"]
#: Directories relative paths are relative to (the router reads them through /proc, as the shim does).
_DIRECTORIES = {path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in ("/", "/usr", "/usr/lib")}
_ACCESS = ("read_only", "write_only", "read_write")


def _path_text(parts: list[str], absolute: bool) -> str:
    text = ("/" if absolute else "") + "/".join(parts)
    return text or "/"


paths = st.builds(_path_text, st.lists(st.sampled_from(_COMPONENTS + ["é"]), max_size=4), st.booleans()).filter(
    lambda text: text != ""
)

leaves: st.SearchStrategy[Condition] = st.one_of(
    st.lists(st.sampled_from(_ROOTS), min_size=1, max_size=3).map(lambda roots: under(*roots)),
    st.sets(st.sampled_from(OPEN_FLAGS), min_size=1).map(lambda names: flags(*names)),
    st.just(writing()),
    st.just(relative()),
)
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        inner.map(lambda c: ~c),
        st.tuples(inner, inner).map(lambda pair: pair[0] & pair[1]),
        st.tuples(inner, inner).map(lambda pair: pair[0] | pair[1]),
    ),
    max_leaves=6,
)


def _fits(condition: Condition, functions: tuple[str, ...]) -> bool:
    return condition.functions is None or set(functions) <= condition.functions


@st.composite
def routers(draw: st.DrawFn) -> Router:
    router = Router(default=draw(st.sampled_from([FORWARD, deny(errno.EACCES), deny(errno.ENOENT)])))
    for _ in range(draw(st.integers(0, 3))):
        functions = tuple(draw(st.sets(st.sampled_from(sorted(RULED_FUNCTIONS)), min_size=1)))
        when = [c for c in draw(st.lists(conditions, max_size=2)) if _fits(c, functions)]

        def handler(request: Request) -> Any:
            return "handler"

        router.on(*functions, when=when)(handler)
    return router


@st.composite
def requests(draw: st.DrawFn) -> tuple[Request, int]:
    function = draw(st.sampled_from(sorted(RULED_FUNCTIONS)))
    ids = {"pid": 1, "tid": 1, "request_id": 1}
    arguments: dict[str, Any]
    bits = 0
    if function == "rename":
        arguments = {"path1": draw(paths), "path2": draw(paths), "no_replace": False}
        for name, fd_name in (("path1", "dirfd1"), ("path2", "dirfd2")):
            if not arguments[name].startswith("/"):
                arguments[fd_name] = _DIRECTORIES[draw(st.sampled_from(sorted(_DIRECTORIES)))]
    elif function in METADATA_FD_FUNCTIONS:
        arguments = {"fd": _DIRECTORIES[draw(st.sampled_from(sorted(_DIRECTORIES)))]}
    else:
        arguments = {"path": draw(paths)}
        if not arguments["path"].startswith("/"):
            arguments["dirfd"] = _DIRECTORIES[draw(st.sampled_from(sorted(_DIRECTORIES)))]
    if function in ("open", "openat"):
        vocabulary = OPENAT_FLAGS if function == "openat" else OPEN_FLAGS
        chosen = frozenset(
            {
                draw(st.sampled_from(_ACCESS)),
                *draw(st.sets(st.sampled_from([f for f in vocabulary if f not in _ACCESS]))),
            }
        )
        arguments["flags"] = chosen
        arguments["mode"] = 0o644 if chosen & {"create", "temporary"} else None
        bits = sum(OPEN_FLAG_BITS[name] for name in chosen)
    elif function in ("access", "eaccess"):
        arguments["amode"] = "f"
    elif function in ("mkdir", "chmod", "fchmod"):
        arguments["mode"] = 0o755
    model: Any = REQUEST_TYPES[function]
    return model(function=function, **ids, **arguments), bits


def _raw(request: Request, name: str) -> bytes:
    return os.fsencode(str(getattr(request, name)))


def _directory(request: Request, name: str) -> bytes | None:
    fd = getattr(request, name, None)
    return None if fd is None else os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))


@settings(max_examples=600, deadline=None)
@given(routers(), st.lists(requests(), min_size=1, max_size=8))
def test_what_the_table_claims_the_router_decides(router: Router, calls: list[tuple[Request, int]]) -> None:
    table = compile_rules(router)
    if table is None:
        return
    for request, bits in calls:
        if request.function == "rename":
            verdict = evaluate(
                table,
                "rename",
                0,
                _raw(request, "path1"),
                _raw(request, "path2"),
                directory1=_directory(request, "dirfd1"),
                directory2=_directory(request, "dirfd2"),
            )
        elif request.function in METADATA_FD_FUNCTIONS:
            verdict = evaluate(table, request.function, bits, None)
        else:
            verdict = evaluate(
                table, request.function, bits, _raw(request, "path"), directory1=_directory(request, "dirfd")
            )
        if verdict == "ask":
            continue
        route, outcome = asyncio.run(router.decide(request))
        assert route == "default", (request, verdict, route)
        if verdict == "forward":
            assert outcome is FORWARD
        else:
            assert isinstance(outcome, Errno) and outcome.errno == verdict


def test_a_forward_default_with_a_handler_under_srv_decides_everything_else_in_the_shim() -> None:
    router = Router()

    @router.on("open", "openat", "stat", "lstat", when=under("/srv"))
    def srv(request: Request) -> Any:
        return FORWARD

    table = compile_rules(router)
    assert table is not None
    assert evaluate(table, "open", OPEN_FLAG_BITS["read_only"], b"/usr/include/stdio.h") == "forward"
    assert evaluate(table, "stat", 0, b"/srvx") == "forward"
    assert evaluate(table, "stat", 0, b"//srv/./a") == "ask"
    assert evaluate(table, "stat", 0, b"/srv") == "ask"
    assert evaluate(table, "stat", 0, b"/usr/../srv/a") == "ask"  # folded lexically, as the router does
    assert evaluate(table, "stat", 0, b"/srv/../usr") == "forward"
    assert evaluate(table, "stat", 0, b"/../../srv") == "ask"
    assert evaluate(table, "stat", 0, b"relative") == "ask"  # a directory the shim cannot name
    assert evaluate(table, "stat", 0, b"a", directory1=b"/usr") == "forward"
    assert evaluate(table, "stat", 0, b"a", directory1=b"/srv") == "ask"
    assert evaluate(table, "stat", 0, b"a", directory1=b"/usr (deleted)") == "ask"
    assert evaluate(table, "unlink", 0, b"relative") == "forward"  # no route looks at unlink's path


def test_what_the_shim_cannot_prove_is_asked() -> None:
    handled = Router()

    @handled.on("stat")
    def every_stat(request: Request) -> Any:
        return FORWARD

    @handled.on("open", when=under("/srv"))
    def srv(request: Request) -> Any:
        return FORWARD

    @handled.on("getaddrinfo", when=named("example.org"))
    def lookup(request: Request) -> Any:
        return FORWARD

    table = compile_rules(handled)
    assert table is not None
    assert evaluate(table, "stat", 0, b"/etc") == "ask"
    assert evaluate(table, "open", OPEN_FLAG_BITS["read_only"], b"/etc") == "forward"

    handler_default = Router(default=lambda request: FORWARD)
    assert compile_rules(handler_default) is None

    traced = Router()
    traced.observe(lambda decision: None)
    assert compile_rules(traced) is None


# ----------------------------------------------------------- real programs


def _set_table(roots: list[bytes], offsets: tuple[int, ...] | None = None) -> bytes:
    """A table forwarding open (function 1) outside an UNDER_SET of ``roots``, taken as given."""
    if offsets is None:
        offsets = tuple(sum(map(len, roots[:k])) for k in range(len(roots)))
    operand = struct.pack(f"<H{len(roots)}H", len(roots), *offsets) + b"".join(roots)
    program = bytes([OP_UNDER_SET]) + struct.pack("<H", len(operand)) + operand
    return b"LCSR" + bytes([1, 1]) + struct.pack("<BBHH", 1, 1, 0, len(program)) + program


@needs_shim
async def test_a_program_outside_the_handled_tree_never_reaches_the_master(tmp_path: Path) -> None:
    seen: list[str] = []
    router = Router()

    @router.on("open", "openat", "stat", "lstat", "access", when=under(str(tmp_path / "srv")))
    def srv(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(["cat", "/etc/hostname"], router, stdout=asyncio.subprocess.DEVNULL) as process:
        assert await process.wait() == 0
    assert seen == []
    assert process.sessions_started == 0


@needs_shim
async def test_relative_paths_outside_the_handled_tree_never_reach_the_master(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "file").write_text("inside\n")
    (tmp_path / "outside").write_text("outside\n")
    seen: list[str] = []
    router = Router()

    @router.on("open", "openat", "stat", "lstat", "access", when=under(str(tmp_path / "srv")))
    def srv(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(["cat", "outside"], router, cwd=tmp_path, stdout=asyncio.subprocess.PIPE) as process:
        out, _ = await process.communicate()
    assert out == b"outside\n" and seen == [] and process.sessions_started == 0
    async with spawn(
        ["cat", "file", "../outside"], router, cwd=tmp_path / "srv", stdout=asyncio.subprocess.PIPE
    ) as process:
        out, _ = await process.communicate()
    assert out == b"inside\noutside\n"
    # "../outside" is folded lexically, as the router folds it: outside, decided in the shim.
    assert seen == ["file"]


@needs_shim
async def test_a_call_in_the_handled_tree_still_reaches_the_handler(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "file").write_text("inside\n")
    seen: list[str] = []
    router = Router()

    @router.on("open", "openat", when=under(str(tmp_path / "srv")))
    def srv(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(
        ["cat", "/etc/hostname", str(tmp_path / "srv" / "file")], router, stdout=asyncio.subprocess.PIPE
    ) as process:
        out, _ = await process.communicate()
    assert out.endswith(b"inside\n")
    assert seen == [str(tmp_path / "srv" / "file")]


@needs_shim
async def test_a_deny_default_fails_the_call_in_the_shim_and_the_handler_grants_its_tree(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("granted\n")
    seen: list[str] = []
    router = Router(default=deny(errno.EACCES))

    @router.on("open", "openat", "stat", "lstat", "access", when=under(str(tmp_path)))
    def mine(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(
        ["cat", str(tmp_path / "file"), "/etc/hostname"],
        router,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"},
    ) as process:
        out, err = await process.communicate()
    assert out == b"granted\n"
    assert b"/etc/hostname: Permission denied" in err
    assert process.returncode == 1
    assert seen == [str(tmp_path / "file")]


@needs_shim
async def test_rules_off_or_an_observer_asks_the_master_for_every_call(tmp_path: Path) -> None:
    router = Router()
    async with spawn(["cat", "/etc/hostname"], router, stdout=asyncio.subprocess.DEVNULL, rules=False) as process:
        assert await process.wait() == 0
    assert process.sessions_started == 1
    seen: list[str] = []
    router.observe(lambda decision: seen.append(decision.request.function))
    async with spawn(["cat", "/etc/hostname"], router, stdout=asyncio.subprocess.DEVNULL) as process:
        assert await process.wait() == 0
    assert "open" in seen or "openat" in seen


def _observed(router: Router) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    router.observe(lambda decision: seen.append((str(getattr(decision.request, "path", "")), decision.session)))
    return seen


@needs_shim
@pytest.mark.parametrize(
    "value",
    [
        "zz",
        "4c43",
        "4c435352010101",
        "4c4353520101010200000000",
        "0" * 20000,
        # open (1) forwarded by a program that pops an empty stack
        "4c435352010101010000010006",
        # too long for the shim's table, whatever it holds
        "4c435352010101" + "0" * 100000,
        # open forwarded outside a set whose roots are out of order, then one whose offset overruns
        _set_table([b"/b", b"/a"]).hex(),
        _set_table([b"/a", b"/b"], offsets=(0, 9)).hex(),
        # a set of one root (UNDER says that)
        _set_table([b"/a"]).hex(),
    ],
)
async def test_a_malformed_table_is_ignored_and_every_call_asked(value: str) -> None:
    router = Router()
    seen = _observed(router)
    # spawn gives no table (rules=False); env hands cat the malformed one.
    async with spawn(
        ["env", f"{ENV_RULES}={value}", f"{ENV_REPORTS}=1", "cat", "/etc/hostname"],
        router,
        stdout=asyncio.subprocess.DEVNULL,
        rules=False,
    ) as process:
        assert await process.wait() == 0
    asked = [session for path, session in seen if path == "/etc/hostname"]
    assert len(asked) == 1 and not asked[0].startswith("rules ")


@needs_shim
async def test_a_call_the_table_decides_reaches_observers_as_a_report() -> None:
    router = Router()
    seen = _observed(router)
    forward_all = Router()

    @forward_all.on("unlink", when=under("/nowhere"))
    def nowhere(request: Request) -> Any:
        return FORWARD

    table = compile_rules(forward_all)
    assert table is not None
    async with spawn(
        ["env", f"{ENV_RULES}={table.hex()}", f"{ENV_REPORTS}=1", "cat", "/etc/hostname"],
        router,
        stdout=asyncio.subprocess.DEVNULL,
        rules=False,
    ) as process:
        assert await process.wait() == 0
    reported = [session for path, session in seen if path == "/etc/hostname"]
    assert reported and all(session.startswith("rules ") for session in reported)


@needs_shim
async def test_with_reports_observers_see_what_the_shim_denied(tmp_path: Path) -> None:
    decisions: list[Decision] = []
    router = Router(default=deny(errno.EACCES))
    router.observe(decisions.append)

    @router.on("open", "openat", when=under(str(tmp_path)))
    def mine(request: Request) -> Any:
        return FORWARD

    async with spawn(
        ["cat", "/etc/hostname"],
        router,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"},
        reports=True,
    ) as process:
        assert await process.wait() == 1
    denied = [d for d in decisions if str(getattr(d.request, "path", "")) == "/etc/hostname"]
    assert len(denied) == 1
    assert denied[0].errno == errno.EACCES and denied[0].result == -1 and denied[0].outcome == "error"
    assert denied[0].route == "default"


# ------------------------------------------------------- metadata changes

_FCHMOD = "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fchmod(fd, 0o600); os.utime(fd)"


@needs_shim
async def test_metadata_changes_outside_the_handled_tree_are_decided_in_the_shim(tmp_path: Path) -> None:
    """chmod/touch/fchmod (a linker's, tar's) cost no round trip where the policy's answer is a constant."""
    (tmp_path / "srv").mkdir()
    for name in ("outside", "relative", "by-fd"):
        (tmp_path / name).write_text("")
    seen: list[str] = []
    router = Router()

    @router.on("chmod", "chown", "utimens", "open", "openat", when=under(str(tmp_path / "srv")))
    def srv(request: Request) -> Any:
        seen.append(request.function)
        return FORWARD

    for argv in (
        ["chmod", "600", str(tmp_path / "outside")],
        ["chmod", "640", "relative"],
        ["touch", "-d", "2001-02-03", "relative"],
        ["python3", "-c", _FCHMOD, "by-fd"],
    ):
        async with spawn(argv, router, cwd=tmp_path) as process:
            assert await process.wait() == 0, argv
        assert process.sessions_started == 0, argv
    assert seen == []
    assert (tmp_path / "outside").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "relative").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "relative").stat().st_mtime == pytest.approx(
        __import__("datetime").datetime(2001, 2, 3).timestamp()
    )
    assert (tmp_path / "by-fd").stat().st_mode & 0o777 == 0o600


@needs_shim
async def test_metadata_changes_the_handler_may_decide_still_reach_it(tmp_path: Path) -> None:
    """Inside the tree the handler decides; a descriptor whose file the table cannot name is asked."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "file").write_text("")
    seen: list[str] = []
    router = Router()

    @router.on("chmod", "fchmod", "futimens", when=under(str(tmp_path / "srv")))
    def srv(request: Request) -> Any:
        seen.append(request.function)
        raise Errno(errno.EROFS)

    async with spawn(
        ["chmod", "600", "file"], router, cwd=tmp_path / "srv", stderr=asyncio.subprocess.DEVNULL
    ) as process:
        assert await process.wait() == 1
    async with spawn(
        ["python3", "-c", _FCHMOD, "file"], router, cwd=tmp_path / "srv", stderr=asyncio.subprocess.PIPE
    ) as process:
        _, err = await process.communicate()
    assert b"Read-only file system" in err
    assert seen == ["chmod", "fchmod"]
    assert (tmp_path / "srv" / "file").stat().st_mode & 0o777 != 0o600


@needs_shim
async def test_a_deny_default_refuses_metadata_changes_in_the_shim(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    before = (tmp_path / "file").stat()
    router = Router(default=deny(errno.EPERM))

    @router.on("open", "openat", "stat", "lstat", "access")
    def everything(request: Request) -> Any:
        return FORWARD

    for argv in (["chmod", "600", "file"], ["touch", "file"], ["python3", "-c", _FCHMOD, "file"]):
        async with spawn(
            argv,
            router,
            cwd=tmp_path,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
        ) as process:
            _, err = await process.communicate()
        assert process.returncode != 0, argv
        assert b"Operation not permitted" in err or b"PermissionError" in err, (argv, err)
    after = (tmp_path / "file").stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


@needs_shim
async def test_with_reports_observers_see_metadata_changes_the_shim_decided(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    decisions: list[Decision] = []
    router = Router()
    router.observe(decisions.append)
    async with spawn(["chmod", "600", "file"], router, cwd=tmp_path, reports=True) as process:
        assert await process.wait() == 0
    chmods = [d for d in decisions if d.request.function == "chmod"]
    assert len(chmods) == 1
    assert str(chmods[0].request.path) == "file" and chmods[0].session.startswith("rules ")
    assert chmods[0].result == 0


_TAKES_HIGH_NUMBERS = """
import os
here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
print(open(os.open("out", os.O_RDONLY, dir_fd=here)).read(), end="")  # the shim names `here`
high = sorted(int(name) for name in os.listdir("/proc/self/fd") if int(name) >= 1000)
decoy = os.open("decoy", os.O_RDONLY | os.O_DIRECTORY)  # holds an "N" link to "/" for every N
for number in high:
    os.dup2(decoy, number)  # the program takes every number the shim's descriptors had
srv = os.open("srv", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
print(open(os.open("f", os.O_RDONLY, dir_fd=srv)).read(), end="")
print(open(os.open("out", os.O_RDONLY, dir_fd=here)).read(), end="")
print(len(high), os.readlink(f"/proc/self/fd/{high[-1]}") == os.path.realpath("decoy"))
"""


@needs_shim
async def test_directories_are_named_exactly_after_the_program_takes_the_shim_s_descriptor_numbers(
    tmp_path: Path,
) -> None:
    """The shim names directories through a kept /proc/self/fd descriptor; dup2() onto it moves it, never misleads."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f").write_text("inside\n")
    (tmp_path / "out").write_text("outside\n")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for number in range(1100):  # read through a descriptor that is no longer /proc/self/fd: "/"
        (decoy / str(number)).symlink_to("/")
    seen: list[str] = []
    router = Router()

    @router.on("open", "openat", "stat", "lstat", when=under(str(tmp_path / "srv")))
    def srv(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(
        ["python3", "-c", _TAKES_HIGH_NUMBERS], router, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    ) as process:
        out, _ = await process.communicate()
    assert out.decode().splitlines() == ["outside", "inside", "outside", "2 True"]
    # srv and "f" in it are the handler's (named through the shim's moved descriptor, not the decoy's "/").
    assert seen == ["srv", "f"], seen


@needs_shim
async def test_a_relative_path_in_a_removed_working_directory_is_asked(tmp_path: Path) -> None:
    """The shim cannot name a removed directory as the master would: the master decides."""
    seen: list[str] = []
    router = Router()

    @router.on("stat", "lstat", when=under(str(tmp_path / "elsewhere")))
    def elsewhere(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(
        ["sh", "-c", "mkdir gone && cd gone && rmdir ../gone && stat x; stat ../x; exit 0"],
        router,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    ) as process:
        assert await process.wait() == 0
    assert process.sessions_started >= 1  # asked, although no route matched it in the end
    assert seen == []


# ------------------------------------------------------------ large policies


def _trees(root: Path, count: int) -> list[str]:
    return [str(root / f"tree{index:05d}" / "lib" / f"module{index}.py") for index in range(count)]


@pytest.mark.parametrize("count", [2, 300, 1000, 10_000])
def test_a_policy_of_many_trees_compiles_within_the_shim_s_bound_and_says_what_the_router_says(count: int) -> None:
    trees = _trees(Path("/srv/app"), count)
    router = Router(default=deny(errno.EACCES))

    @router.on("open", "openat", "stat", "lstat", "access", when=under(*trees))
    def granted(request: Request) -> Any:
        return FORWARD

    table = compile_rules(router)
    assert table is not None and len(table) <= MAX_RULES_BYTES
    for path in (b"/etc/hostname", b"/srv/other", b"/srv/app2/tree00001", b"/"):
        assert evaluate(table, "stat", 0, path) == errno.EACCES
    # Granted trees (and, once roots are shortened to fit, their ancestors) are asked, never refused here.
    for tree in trees[:: max(1, count // 50)]:
        assert evaluate(table, "stat", 0, os.fsencode(tree)) == "ask"
        assert evaluate(table, "open", OPEN_FLAG_BITS["read_only"], os.fsencode(tree + "/x")) == "ask"


def test_roots_under_a_negation_are_never_shortened() -> None:
    """``~under(...)`` that holds means "the default decides": a shortened root there would decide more."""
    trees = _trees(Path("/srv/app"), 10_000)
    router = Router(default=FORWARD)

    @router.on("open", "openat", when=~under(*trees))
    def outside(request: Request) -> Any:
        return FORWARD

    table = compile_rules(router)
    # Exact roots do not fit, and shortening is not allowed under the ~: the function is asked.
    assert table is None or evaluate(table, "open", OPEN_FLAG_BITS["read_only"], b"/srv/app/elsewhere") == "ask"


@needs_shim
async def test_a_program_under_a_policy_of_ten_thousand_trees_is_decided_in_the_shim(tmp_path: Path) -> None:
    trees = _trees(tmp_path, 10_000)
    for tree in trees[:3]:
        Path(tree).parent.mkdir(parents=True)
        Path(tree).write_text(f"{tree}\n")
    seen: list[str] = []
    router = Router()

    @router.on("open", "openat", "stat", "lstat", "access", when=under(*trees))
    def granted(request: Request) -> Any:
        seen.append(str(request.path))
        return FORWARD

    async with spawn(["cat", "/etc/hostname"], router, stdout=asyncio.subprocess.DEVNULL) as process:
        assert await process.wait() == 0
    assert process.sessions_started == 0 and seen == []
    async with spawn(["cat", trees[1]], router, stdout=asyncio.subprocess.PIPE) as process:
        out, _ = await process.communicate()
    assert out == f"{trees[1]}\n".encode() and seen == [trees[1]]
