"""The sandbox makes the master the only door: real programs, real kernel.

Without the sandbox a raw system call walks past the shim; with it the
kernel (Landlock, a network namespace) refuses whatever the slave tries on
its own authority, and what the policy grants arrives as a descriptor the
master opened. Tests skip, with the kernel's reason, where Landlock or
network namespaces are missing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FdCount
from shimtools import c_program, needs_shim  # noqa: F401 - c_program is a fixture

from libc_service import FORWARD, Errno, Router, Sandbox, WithFds, perform, spawn

from libc_service.tools import cli
from libc_service.confinement import ruleset_cache
from libc_service.confinement import sandbox as sandbox_module
from libc_service.protocol.requests import ConnectInetRequest, ConnectUnixRequest, OpenatRequest, OpenRequest
from libc_service.acting.safepath import open_beneath, resolve
from libc_service.confinement.isolation import stop_namespace_stock
from libc_service.confinement.loader import LoaderFile
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available, program_files
from libc_service.processes.spawn_launch import shim_path

_NO_LANDLOCK = Sandbox.available()
_NO_NETNS = network_namespaces_available()
_KERNEL_MISSING = (
    f"no Landlock sandbox here: {_NO_LANDLOCK}"
    if _NO_LANDLOCK is not None
    else f"no network namespaces here: {_NO_NETNS}"
    if _NO_NETNS is not None
    else None
)
#: The test confines a real program: skip, saying why, where the kernel cannot.
needs_kernel = pytest.mark.skipif(_KERNEL_MISSING is not None, reason=_KERNEL_MISSING or "")
pytestmark = [pytest.mark.slow, needs_shim]
ABI = landlock_abi()
C_DIR = Path(__file__).with_name("c")
COMMAND = [sys.executable, "-m", "libc_service"]


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **(extra or {})}


async def run(
    argv: Sequence[str],
    router: Router,
    sandbox: Sandbox | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> Ran:
    """Run ``argv`` as a (sandboxed) slave of ``router``; its status and output."""
    async with spawn(
        argv,
        router,
        sandbox=sandbox,
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        status = await process.wait()
    return Ran(status, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))


def granting(root: Path, seen: list[Any] | None = None) -> Router:
    """A policy that opens (read-only) whatever the slave asks beneath ``root`` itself."""
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def grant(req: OpenRequest | OpenatRequest) -> Any:
        """Files beneath the root are opened by the master; the rest is forwarded."""
        if seen is not None:
            seen.append((req, resolve(req)))
        try:
            return WithFds(0, [open_beneath(root, req)])
        except PermissionError:
            return FORWARD

    return router


@pytest.fixture(scope="session")
def raw_read(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/raw_read.c: reads a file with raw openat/read syscalls (no libc wrapper, no shim)."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc or cc) to build tests/c/raw_read.c")
    target = tmp_path_factory.mktemp("c") / "raw_read"
    subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(target), str(C_DIR / "raw_read.c")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return target


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("the secret\n")
    return path


# ------------------------------------------------- raw syscalls and the kernel


@needs_kernel
async def test_raw_syscalls_read_a_file_without_the_sandbox(raw_read: Path, secret: Path) -> None:
    ran = await run([str(raw_read), str(secret)], Router(default=FORWARD))
    assert (ran.status, ran.out) == (0, "the secret\n")


@needs_kernel
async def test_raw_syscalls_cannot_read_a_file_under_the_sandbox(raw_read: Path, secret: Path) -> None:
    # Even a policy that would grant the file cannot help: the raw call never asks.
    ran = await run([str(raw_read), str(secret)], granting(secret.parent), Sandbox())
    assert (ran.status, ran.out) == (1, "EACCES\n")


@needs_kernel
async def test_a_static_binary_ignores_the_shim_but_not_the_sandbox(
    raw_read: Path,
    secret: Path,
    tmp_path: Path,
) -> None:
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    assert compiler is not None  # raw_read was built
    static = tmp_path / "raw_read_static"
    built = subprocess.run(
        [compiler, "-static", "-O2", "-o", str(static), str(C_DIR / "raw_read.c")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"no static C library to link with: {built.stderr[-200:]}")
    free = await run([str(static), str(secret)], Router(default=FORWARD))
    confined = await run([str(static), str(secret)], granting(secret.parent), Sandbox())
    assert (free.status, free.out) == (0, "the secret\n")
    assert (confined.status, confined.out) == (1, "EACCES\n")


@needs_kernel
async def test_what_loading_needs_stays_readable_in_the_sandbox(raw_read: Path) -> None:
    """The minimal ruleset: the program, its loader and libraries, the shim, ld.so.cache."""
    loading = [str(file.path) for file in program_files(raw_read)[1:]]
    for path in [*loading, str(shim_path()), "/etc/ld.so.cache"]:
        if not os.path.exists(path):
            continue
        ran = await run([str(raw_read), path], Router(default=FORWARD), Sandbox())
        assert ran.status == 0, (path, ran.out[:80])
    ran = await run([str(raw_read), "/etc/passwd"], Router(default=FORWARD), Sandbox())
    assert ran.out == "EACCES\n"
    ran = await run([str(raw_read), str(raw_read.parent)], Router(default=FORWARD), Sandbox())
    assert ran.out == "EACCES\n"  # the program's file is granted, not its directory


@pytest.fixture(scope="session")
def uring_read(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/uring_read.c: opens and reads a file with io_uring requests only."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc or cc) to build tests/c/uring_read.c")
    target = tmp_path_factory.mktemp("c") / "uring_read"
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(target), str(C_DIR / "uring_read.c")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build tests/c/uring_read.c (no <linux/io_uring.h>?): {built.stderr[-200:]}")
    return target


@needs_kernel
async def test_io_uring_is_refused_and_its_opens_would_be_too(uring_read: Path, secret: Path) -> None:
    """io_uring walks past the shim, not past the kernel: by default the seccomp filter
    refuses io_uring itself (and without a network, whatever ``metadata`` says: its connects
    would walk past the socket filter); with metadata=True and the network (no filter)
    Landlock checks its opens."""
    free = await run([str(uring_read), str(secret)], Router(default=FORWARD))
    if free.status == 3:
        pytest.skip(f"io_uring is unavailable here: {free.out.strip()}")
    filtered = await run([str(uring_read), str(secret)], granting(secret.parent), Sandbox())
    no_network = await run([str(uring_read), str(secret)], granting(secret.parent), Sandbox(metadata=True))
    unfiltered = await run(
        [str(uring_read), str(secret)], granting(secret.parent), Sandbox(metadata=True, network=True)
    )
    assert (free.status, free.out) == (0, "the secret\n")
    assert (filtered.status, filtered.out) == (3, "setup ENOSYS\n")
    assert (no_network.status, no_network.out) == (3, "setup ENOSYS\n")
    assert (unfiltered.status, unfiltered.out) == (1, "EACCES\n")


# ----------------------------------------------------------- cat, granted


@needs_kernel
async def test_cat_reads_a_file_the_master_grants(secret: Path, fd_count: FdCount) -> None:
    ruleset_cache.clear()
    stop_namespace_stock()
    before = fd_count.snapshot()
    ran = await run(["cat", str(secret)], granting(secret.parent), Sandbox())
    assert (ran.status, ran.out) == (0, "the secret\n")
    ruleset_cache.clear()  # the one descriptor kept for the next spawn of this program and sandbox
    stop_namespace_stock()  # and the namespaces made ahead for the next jobs
    fd_count.assert_unchanged(before)  # the spawn's ruleset and every session descriptor are closed


@needs_kernel
async def test_cat_fails_when_the_policy_forwards(secret: Path) -> None:
    ran = await run(["cat", str(secret)], Router(default=FORWARD), Sandbox())
    assert ran.status == 1 and ran.out == ""
    assert "Permission denied" in ran.err  # EACCES: the slave's own open, refused by Landlock


@needs_kernel
async def test_cat_reads_a_file_without_the_sandbox_when_the_policy_forwards(secret: Path) -> None:
    ran = await run(["cat", str(secret)], Router(default=FORWARD))
    assert (ran.status, ran.out) == (0, "the secret\n")


@needs_kernel
async def test_a_relative_path_is_resolved_in_the_slaves_working_directory(tmp_path: Path) -> None:
    (tmp_path / "rel.txt").write_text("relative\n")
    seen: list[Any] = []
    ran = await run(["cat", "rel.txt"], granting(tmp_path, seen), Sandbox(), cwd=tmp_path)
    assert (ran.status, ran.out) == (0, "relative\n")
    request, absolute = seen[0]
    assert str(request.path) == "rel.txt" and request.dirfd is not None
    assert absolute == str(tmp_path / "rel.txt")


@needs_kernel
def test_the_sandbox_works_on_uvloop_too(secret: Path) -> None:
    """uvloop runs preexec_fn before closing inherited descriptors, as subprocess does."""
    uvloop = pytest.importorskip("uvloop")
    granted = uvloop.run(run(["cat", str(secret)], granting(secret.parent), Sandbox()))
    forwarded = uvloop.run(run(["cat", str(secret)], Router(default=FORWARD), Sandbox()))
    assert (granted.status, granted.out) == (0, "the secret\n")
    assert forwarded.status == 1 and "Permission denied" in forwarded.err


@needs_kernel
async def test_dev_null_goes_through_the_master_too(tmp_path: Path) -> None:
    """Programs that open /dev/null (or locales, ...) need the master: forwarding fails them."""
    forwarded = await run(["cat", "/dev/null"], Router(default=FORWARD), Sandbox())
    assert forwarded.status == 1 and "Permission denied" in forwarded.err
    granted = await run(["cat", "/dev/null"], granting(Path("/dev")), Sandbox())
    assert (granted.status, granted.out) == (0, "")


# ------------------------------------------- ls and fopen reach the master


@needs_kernel
async def test_ls_lists_a_directory_the_master_grants_and_not_one_it_forwards(tmp_path: Path) -> None:
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "a.txt").write_text("")
    (listed / "b").mkdir()
    granted = await run(["ls", str(listed)], granting(tmp_path), Sandbox())
    forwarded = await run(["ls", str(listed)], Router(default=FORWARD), Sandbox())
    assert (granted.status, granted.out) == (0, "a.txt\nb\n")
    assert forwarded.status == 2 and "Permission denied" in forwarded.err  # opendir's own open


@needs_kernel
async def test_fopen_reads_a_file_the_master_grants_and_not_one_it_forwards(
    c_program: Callable[[str], Path],
    secret: Path,
) -> None:
    program = str(c_program("fopen_read"))
    granted = await run([program, str(secret), "re"], granting(secret.parent), Sandbox())
    forwarded = await run([program, str(secret), "r"], Router(default=FORWARD), Sandbox())
    assert (granted.status, granted.out) == (0, "the secret\ncloexec=1\n")
    assert (forwarded.status, forwarded.out) == (1, "fopen: EACCES\n")


# ------------------------------------------------------------ static rules


def paths_seen(router: Router) -> list[str]:
    """The paths of the calls that reached ``router`` (filled as they come)."""
    seen: list[str] = []
    router.observe(lambda decision: seen.append(str(getattr(decision.request, "path", ""))))
    return seen


@needs_kernel
async def test_reads_beneath_a_static_tree_need_no_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "inside.txt").write_text("inside\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    router = granting(tmp_path)
    seen = paths_seen(router)
    sandbox = Sandbox(allow_read=[tree])
    inside = await run(["cat", str(tree / "inside.txt")], router, sandbox)
    listed = await run(["ls", str(tree)], router, sandbox)
    stat = await run(["stat", "-c", "%s", str(tree / "inside.txt")], router, sandbox)
    granted = await run(["cat", str(outside)], router, sandbox)
    assert (inside.status, inside.out) == (0, "inside\n")
    assert (listed.status, listed.out) == (0, "inside.txt\n")
    assert (stat.status, stat.out) == (0, "7\n")
    assert (granted.status, granted.out) == (0, "outside\n")
    assert not [path for path in seen if path.startswith(str(tree))], seen  # the shim did them itself
    assert str(outside) in seen  # the master granted this one


@needs_kernel
async def test_a_symlink_or_dotdot_out_of_a_static_tree_is_refused_by_the_kernel(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    (tree / "escape").symlink_to(outside)
    router = Router(default=FORWARD)
    seen = paths_seen(router)
    sandbox = Sandbox(allow_read=[tree])
    via_link = await run(["cat", str(tree / "escape")], router, sandbox)
    via_dots = await run(["cat", f"{tree}/../outside.txt"], router, sandbox)
    for ran in (via_link, via_dots):
        assert ran.status == 1 and ran.out == "" and "Permission denied" in ran.err  # EACCES from Landlock
    assert str(tree / "escape") not in seen  # no round trip: the kernel judged the resolved file
    assert f"{tree}/../outside.txt" in seen  # '..' is never taken as inside: the master was asked


@needs_kernel
async def test_a_static_rule_on_a_single_file_lets_the_slave_read_it_alone(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one\n")
    (tmp_path / "two.txt").write_text("two\n")
    sandbox = Sandbox(allow_read=[tmp_path / "one.txt"])  # a file: file rights only
    one = await run(["cat", str(tmp_path / "one.txt")], Router(default=FORWARD), sandbox)
    two = await run(["cat", str(tmp_path / "two.txt")], Router(default=FORWARD), sandbox)
    assert (one.status, one.out) == (0, "one\n")
    assert two.status == 1 and "Permission denied" in two.err


@needs_kernel
async def test_allow_write_lets_the_slave_create_files_there_and_nowhere_else(tmp_path: Path) -> None:
    writable, readable = tmp_path / "w", tmp_path / "r"
    writable.mkdir()
    readable.mkdir()
    sandbox = Sandbox(allow_read=[readable], allow_write=[writable])
    ran = await run(
        ["sh", "-c", f"echo made > {writable}/out.txt && echo made > {readable}/out.txt"],
        Router(default=FORWARD),
        sandbox,
    )
    assert (writable / "out.txt").read_text() == "made\n"
    assert not (readable / "out.txt").exists()
    assert ran.status != 0 and "Permission denied" in ran.err


@needs_kernel
async def test_a_script_runs_with_its_interpreter_allowed(tmp_path: Path) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\necho plain ran\n")
    via_env = tmp_path / "env.sh"
    via_env.write_text("#!/usr/bin/env sh\necho env ran\n")
    for script in (plain, via_env):
        script.chmod(0o755)
    ran_plain = await run([str(plain)], Router(default=FORWARD), Sandbox())
    ran_env = await run([str(via_env)], Router(default=FORWARD), Sandbox())
    assert (ran_plain.status, ran_plain.out) == (0, "plain ran\n")
    assert (ran_env.status, ran_env.out) == (0, "env ran\n")


@needs_kernel
async def test_other_programs_cannot_be_executed_unless_allowed(tmp_path: Path) -> None:
    denied = await run(["sh", "-c", "cat /dev/null"], Router(default=FORWARD), Sandbox())
    assert denied.status == 126 and "Permission denied" in denied.err
    system = ["/usr", "/bin", "/lib", "/lib64"]
    allowed = await run(["sh", "-c", "cat /dev/null"], granting(Path("/dev")), Sandbox(allow_exec=system))
    assert allowed.status == 0, allowed.err


def test_listing_what_loading_needs_runs_nothing_not_even_the_programs_interpreter_choice(
    raw_read: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program names its PT_INTERP (here /bin/sh): discovery reads files, it runs none."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    assert compiler is not None  # raw_read was built
    hostile = tmp_path / "hostile"
    subprocess.run(
        [compiler, "-Wl,--dynamic-linker=/bin/sh", "-o", str(hostile), str(C_DIR / "raw_read.c")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ran: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        ran.append(args)
        raise AssertionError("loader discovery started a program")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
    monkeypatch.setattr(os, "system", refuse)
    hostile_files = [file.path for file in program_files(hostile)]
    normal = [file.path for file in program_files(raw_read)]
    assert ran == []
    assert hostile_files[0] == hostile and any(path.name.startswith("libc.") for path in normal)
    if os.path.realpath("/bin/sh").startswith(("/bin/", "/usr/bin/")) and open("/bin/sh", "rb").read(4) == b"\x7fELF":
        assert hostile_files[1] == Path("/bin/sh")  # an ELF executable like the program: granted, not run


def test_a_sandbox_takes_lists_of_absolute_paths() -> None:
    with pytest.raises(TypeError, match="list of paths"):
        Sandbox(allow_read="/etc")
    with pytest.raises(ValueError, match="absolute"):
        Sandbox(allow_read=["etc"])
    assert Sandbox(allow_read=["/etc"], system_libraries=False).static_rules() == [("/etc", "read")]
    # The system's library directories are granted but not listed (they differ between machines).
    assert Sandbox(allow_read=["/etc"]).static_rules() == [("/etc", "read")]


# ------------------------------------------------------ python3 and its stdlib


@pytest.fixture(scope="session")
def python3() -> tuple[str, list[str]]:
    """The python3 on PATH as a real executable (pyenv's is a shim script) and its stdlib dirs."""
    found = shutil.which("python3")
    if found is None:
        pytest.skip("no python3 on PATH")
    probe = (
        "import json, sys, sysconfig; "
        "print(json.dumps([sys.executable, sysconfig.get_path('stdlib'), sysconfig.get_path('platstdlib')]))"
    )
    executable, *stdlib = json.loads(
        subprocess.run([found, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    )
    return os.path.realpath(executable), sorted(set(stdlib))


def python_sandbox(python3: tuple[str, list[str]]) -> Sandbox:
    """Its stdlib, and the system library directories its extension modules dlopen from."""
    executable, stdlib = python3
    libc_dirs = {
        str(file.path.parent) for file in program_files(Path(executable)) if file.path.name.startswith("libc.")
    }
    return Sandbox(allow_read=[*stdlib, *sorted(libc_dirs)])


_PYTHON_READS = textwrap.dedent("""
    import email.parser, json, sys
    message = email.parser.Parser().parsestr("Subject: sandboxed\\n\\nbody")
    print(json.dumps({"subject": message["subject"]}))
    try:
        print(open(sys.argv[1]).read(), end="")
    except OSError as exc:
        print("refused", exc.errno)
""")


@needs_kernel
async def test_python_runs_with_its_stdlib_allowed_statically_and_a_file_outside_is_refused(
    python3: tuple[str, list[str]],
    secret: Path,
) -> None:
    ran = await run([python3[0], "-c", _PYTHON_READS, str(secret)], Router(default=FORWARD), python_sandbox(python3))
    assert ran.status == 0, ran.err
    assert ran.out == f'{{"subject": "sandboxed"}}\nrefused {errno.EACCES}\n'


@needs_kernel
async def test_python_reads_a_file_outside_the_allowed_set_when_the_master_grants_it(
    python3: tuple[str, list[str]],
    secret: Path,
) -> None:
    seen: list[Any] = []
    ran = await run(
        [python3[0], "-c", _PYTHON_READS, str(secret)], granting(secret.parent, seen), python_sandbox(python3)
    )
    assert ran.status == 0, ran.err
    assert ran.out == '{"subject": "sandboxed"}\nthe secret\n'
    assert str(secret) in {absolute for _, absolute in seen}


_DLOPENS = (
    "import zlib, binascii, bz2; "
    "print(zlib.crc32(b'x'), binascii.hexlify(b'ok').decode(), bz2.decompress(bz2.compress(b'in')).decode())"
)


@needs_kernel
async def test_a_system_python_loads_its_extension_modules_in_the_default_sandbox(secret: Path) -> None:
    """Extension modules and the libraries they link are dlopen'ed by the loader, which the shim
    never sees: the default sandbox grants the system library directories (read, execute)."""
    python = "/usr/bin/python3"
    native = (
        subprocess.run([python, "-c", _DLOPENS], capture_output=True, text=True, timeout=60, check=False)
        if os.access(python, os.X_OK)
        else None
    )
    if native is None or native.returncode != 0:
        pytest.skip(f"no {python} with zlib, binascii and bz2 here")
    ran = await run([python, "-c", _DLOPENS], Router(default=FORWARD), Sandbox())
    assert (ran.status, ran.out) == (0, native.stdout), ran.err
    reads = await run([python, "-c", "import sys; open(sys.argv[1])", str(secret)], Router(default=FORWARD), Sandbox())
    assert reads.status == 1 and "Permission denied" in reads.err  # and nothing more than those directories


@needs_kernel
async def test_without_system_libraries_a_dlopen_outside_the_discovered_files_fails() -> None:
    python = "/usr/bin/python3"
    probe = "import _bz2, sysconfig; print(_bz2.__file__); print(sysconfig.get_path('stdlib'))"
    native = (
        subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
        if os.access(python, os.X_OK)
        else None
    )
    if native is None or native.returncode != 0:
        pytest.skip(f"no {python} with an _bz2 extension module here")
    extension, stdlib = native.stdout.split()
    if not extension.startswith(stdlib + "/"):
        pytest.skip(f"_bz2 is not beneath the standard library ({extension})")
    # The standard library (with the extension module itself) is allowed; libbz2 is not.
    ran = await run(
        [python, "-c", _DLOPENS], Router(default=FORWARD), Sandbox(allow_read=[stdlib], system_libraries=False)
    )
    assert ran.status != 0 and "libbz2" in ran.err, ran.err


@needs_kernel
async def test_a_library_directory_named_like_loader_trace_output_opens_nothing_more(
    tmp_path: Path,
    secret: Path,
) -> None:
    """The old text-parsing hole: a library in ``lib => / (0x0)`` made the parent grant /."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc or cc)")
    hostile = tmp_path / "lib => / (0x0)"  # the directories "lib => " and " (0x0)"
    hostile.mkdir(parents=True)
    (tmp_path / "hello.c").write_text("int hello(void) { return 42; }\n")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(hostile / "libhello.so"), str(tmp_path / "hello.c")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    program = tmp_path / "raw_read"
    subprocess.run(
        [
            compiler,
            "-o",
            str(program),
            str(C_DIR / "raw_read.c"),
            "-Wl,--no-as-needed",
            f"-L{hostile}",
            "-lhello",
            f"-Wl,--enable-new-dtags,-rpath,{hostile}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for sandbox in (Sandbox(), Sandbox(system_libraries=False)):
        for path in (secret, Path("/etc/passwd")):
            ran = await run([str(program), str(path)], Router(default=FORWARD), sandbox)
            assert (ran.status, ran.out) == (1, "EACCES\n"), (sandbox, ran.err)  # it started; / was not granted


@needs_kernel
async def test_a_loader_file_that_is_not_what_discovery_checked_is_not_granted(
    raw_read: Path,
    secret: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Between discovery and the rule the path may be swapped: the rule checks the identity."""
    discovered = sandbox_module.program_files
    extra: list[LoaderFile] = []
    monkeypatch.setattr(sandbox_module, "program_files", lambda *args, **kwargs: [*discovered(*args, **kwargs), *extra])
    harmless = tmp_path / "harmless"
    harmless.write_text("nothing\n")
    checked, now = os.stat(harmless), os.stat(secret)
    extra[:] = [LoaderFile(secret, checked.st_dev, checked.st_ino)]  # checked one file, the path leads to another
    ran = await run([str(raw_read), str(secret)], Router(default=FORWARD), Sandbox())
    assert (ran.status, ran.out) == (1, "EACCES\n")
    assert "changed since it was checked" in caplog.text
    directory = os.stat(secret.parent)
    extra[:] = [LoaderFile(secret.parent, directory.st_dev, directory.st_ino)]  # never a directory
    ran = await run([str(raw_read), str(secret)], Router(default=FORWARD), Sandbox())
    assert (ran.status, ran.out) == (1, "EACCES\n")
    extra[:] = [LoaderFile(secret, now.st_dev, now.st_ino)]  # the file discovery checked: granted
    ran = await run([str(raw_read), str(secret)], Router(default=FORWARD), Sandbox())
    assert (ran.status, ran.out) == (0, "the secret\n")


_DIRECTORY_FD = textwrap.dedent("""
    import errno, os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)  # the master grants the directory
    print(sorted(os.listdir(fd)))                             # listing the granted descriptor works
    for how, attempt in (("openat", lambda: os.open("inside.txt", os.O_RDONLY, dir_fd=fd)),
                         ("fchdir", lambda: (os.fchdir(fd), open("inside.txt")))):
        try:
            attempt()
            print(how, "read it")
        except OSError as exc:
            print(how, errno.errorcode[exc.errno])
""")


@needs_kernel
async def test_a_granted_directory_descriptor_lists_but_does_not_open_what_is_inside(
    python3: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    """Landlock checks every open by where the object is, whatever dirfd the path starts from."""
    (tmp_path / "inside.txt").write_text("inside\n")
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def directories_only(req: OpenRequest | OpenatRequest) -> Any:
        """The directory itself is opened by the master; what is in it is forwarded."""
        if "directory" in req.flags:
            return WithFds(0, [open_beneath(tmp_path, req)])
        return FORWARD

    ran = await run([python3[0], "-c", _DIRECTORY_FD, str(tmp_path)], router, python_sandbox(python3))
    assert ran.status == 0, ran.err
    assert ran.out == "['inside.txt']\nopenat EACCES\nfchdir EACCES\n"


@needs_kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="only a root slave has capabilities to lose")
async def test_a_root_slave_has_no_capabilities(python3: tuple[str, list[str]], tmp_path: Path) -> None:
    """chown is not a Landlock right: what stops a root slave is the empty capability set."""
    target = tmp_path / "owned"
    target.write_text("")
    code = "import os, sys\ntry:\n    os.chown(sys.argv[1], 12345, -1); print('chowned')\nexcept OSError as e: print(e.errno)"
    sandbox = Sandbox(allow_read=python_sandbox(python3).allow_read, allow_write=[tmp_path])
    confined = await run([python3[0], "-c", code, str(target)], Router(default=FORWARD), sandbox)
    assert confined.out == f"{errno.EPERM}\n" and target.stat().st_uid == 0
    free = await run([python3[0], "-c", code, str(target)], Router(default=FORWARD))
    assert free.out == "chowned\n"


_METADATA = textwrap.dedent("""
    import errno, os, sys
    for how, attempt in (("chmod", lambda: os.chmod(sys.argv[1], 0o644)),
                         ("utime", lambda: os.utime(sys.argv[1], (0, 0))),
                         ("setxattr", lambda: os.setxattr(sys.argv[1], "user.libc_service", b"1"))):
        try:
            attempt()
            print(how, "done")
        except OSError as exc:
            print(how, errno.errorcode[exc.errno])
""")


@needs_kernel
async def test_the_slave_cannot_change_metadata_of_its_users_files_unless_allowed(
    python3: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    """chmod/utime/setxattr are not Landlock rights: the seccomp filter refuses them,
    even on a file no rule mentions (say, the user's private key)."""
    key = tmp_path / "id_key"
    key.write_text("private")
    key.chmod(0o600)
    libraries = python_sandbox(python3).allow_read
    confined = await run(
        [python3[0], "-c", _METADATA, str(key)], Router(default=FORWARD), Sandbox(allow_read=libraries)
    )
    assert confined.out == "chmod EPERM\nutime EPERM\nsetxattr EPERM\n", confined.err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_mtime != 0
    allowed = await run(
        [python3[0], "-c", _METADATA, str(key)], Router(default=FORWARD), Sandbox(allow_read=libraries, metadata=True)
    )
    assert allowed.out.splitlines()[:2] == ["chmod done", "utime done"], allowed.err
    assert stat.S_IMODE(key.stat().st_mode) == 0o644


# ------------------------------------------------------------------- network


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    """An echo server of the master's on 127.0.0.1: answers b"ping" with b"PONG"."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


_CLIENT = textwrap.dedent("""
    import errno, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
    except OSError as exc:
        print(errno.errorcode[exc.errno])
        sys.exit(1)
    s.sendall(b"ping")
    print(s.recv(100).decode())
""")


def connecting(port: int) -> Router:
    """Connects to 127.0.0.1:PORT on the master's own socket; refuses any other address."""
    router = Router(default=FORWARD)

    @router.on("connect_inet")
    async def connect(req: ConnectInetRequest) -> WithFds:
        """The master connects; its socket replaces the slave's."""
        if (str(req.address), req.port) != ("127.0.0.1", port):
            raise Errno(errno.ECONNREFUSED)
        mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            mine.setblocking(False)
            await asyncio.get_running_loop().sock_connect(mine, (str(req.address), req.port))
            mine.setblocking(True)  # the status flags are shared with the slave's copy
        except BaseException:
            mine.close()
            raise
        return WithFds(0, [mine.detach()])

    return router


@needs_kernel
async def test_a_connect_fails_without_a_network(python3: tuple[str, list[str]], listener: int) -> None:
    ran = await run([python3[0], "-c", _CLIENT, str(listener)], Router(default=FORWARD), python_sandbox(python3))
    assert ran.status == 1, ran.err
    # Landlock's TCP rule refuses it first (EACCES); the empty namespace would (ENETUNREACH).
    assert ran.out.strip() in {"EACCES", "ENETUNREACH"}


@needs_kernel
async def test_a_connect_the_policy_allows_works_through_the_master(
    python3: tuple[str, list[str]],
    listener: int,
) -> None:
    ran = await run([python3[0], "-c", _CLIENT, str(listener)], connecting(listener), python_sandbox(python3))
    assert (ran.status, ran.out) == (0, "PING\n"), ran.err


@needs_kernel
async def test_a_connect_the_policy_refuses_gets_its_errno(python3: tuple[str, list[str]], listener: int) -> None:
    ran = await run(
        [python3[0], "-c", _CLIENT, str(listener)],
        connecting(listener + 1 if listener < 65535 else 1),
        python_sandbox(python3),
    )
    assert (ran.status, ran.out) == (1, "ECONNREFUSED\n")


@needs_kernel
async def test_with_network_true_the_slave_connects_by_itself(python3: tuple[str, list[str]], listener: int) -> None:
    sandbox = Sandbox(allow_read=python_sandbox(python3).allow_read, network=True)
    ran = await run([python3[0], "-c", _CLIENT, str(listener)], Router(default=FORWARD), sandbox)
    assert (ran.status, ran.out) == (0, "PING\n"), ran.err


@pytest.fixture
def sysv_segment() -> Iterator[int]:
    """A SysV shared memory segment of the master's; its key."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x4C430000 | (os.getpid() & 0xFFFF)
    ident = libc.shmget(key, 4096, 0o1600)  # IPC_CREAT | 0600
    if ident < 0:
        pytest.skip(f"cannot create a SysV shared memory segment: {os.strerror(ctypes.get_errno())}")
    try:
        yield key
    finally:
        libc.shmctl(ident, 0, None)  # IPC_RMID


@needs_kernel
async def test_the_hosts_sysv_ipc_is_out_of_reach(python3: tuple[str, list[str]], sysv_segment: int) -> None:
    """Landlock does not mediate SysV IPC; network=False also gives the slave its own IPC namespace."""
    code = (
        "import ctypes, errno, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('found' if libc.shmget(int(sys.argv[1]), 0, 0) >= 0 else errno.errorcode[ctypes.get_errno()])"
    )
    argv = [python3[0], "-c", code, str(sysv_segment)]
    free = await run(argv, Router(default=FORWARD))
    confined = await run(argv, Router(default=FORWARD), python_sandbox(python3))
    assert free.out == "found\n", free.err
    assert confined.out == "ENOENT\n", confined.err


@needs_kernel
@pytest.mark.skipif(ABI < 6, reason=f"Landlock ABI {ABI} has no signal scoping (needs 6)")
async def test_the_slave_cannot_signal_the_master() -> None:
    probe = ["sh", "-c", "kill -0 $PPID && echo signalled"]
    free = await run(probe, Router(default=FORWARD))
    confined = await run(probe, Router(default=FORWARD), Sandbox())
    assert free.out == "signalled\n"
    assert confined.status != 0 and confined.out == ""


# ------------------------------------------------------ the host's named unix sockets


@pytest.fixture
def host_service(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A service of the host on a named unix socket outside every granted tree: its path, and what reached it.

    A stream socket at ``PATH`` answers each connection with ``HOST-SERVICE-REACHED``; a datagram
    socket at ``PATH.dgram`` records what is sent to it.
    """
    import threading

    path = tmp_path / "host" / "service.sock"
    path.parent.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    datagrams = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    datagrams.bind(f"{path}.dgram")
    reached: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            reached.append(b"connection")
            with conn:
                conn.sendall(b"HOST-SERVICE-REACHED")

    def receive() -> None:
        while True:
            try:
                reached.append(datagrams.recv(100))
            except OSError:
                return

    threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=receive, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield path, reached
    finally:
        for sock in (server, datagrams):
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(5)


#: Reaches the service as a static program or a raw system call would: connect(2) by number,
#: bypassing the shim (argv[2] == "raw"), or through libc (and so the shim) otherwise.
_UNIX_CLIENT = textwrap.dedent("""
    import ctypes, errno, os, socket, struct, sys
    path = sys.argv[1].encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if sys.argv[2] == "raw":
            libc = ctypes.CDLL(None, use_errno=True)
            number = {"x86_64": 42, "aarch64": 203}[os.uname().machine]
            address = struct.pack("=H", socket.AF_UNIX) + path + b"\\0"
            if libc.syscall(number, s.fileno(), ctypes.create_string_buffer(address, len(address)), len(address)):
                raise OSError(ctypes.get_errno(), "connect")
        else:
            s.connect(sys.argv[1])
    except OSError as exc:
        print(errno.errorcode[exc.errno])
        sys.exit(1)
    print(s.recv(100).decode())
""")

#: A unix datagram to the service, from a socket of its own and from one end of a socketpair.
_UNIX_DATAGRAMS = textwrap.dedent("""
    import errno, socket, sys
    for make in (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
                 lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0]):
        try:
            make().sendto(b"DATAGRAM-REACHED", sys.argv[1])
            print("sent")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
""")


def _allowing_unix(path: Path) -> Router:
    """Performs (in the master) connects to ``path``; forwards everything else."""
    router = Router(default=FORWARD)

    @router.on("connect_unix")
    def connect(req: ConnectUnixRequest) -> Any:
        """The service the policy names, connected by the master; any other is forwarded."""
        return perform(req) if str(req.path) == str(path) else FORWARD

    return router


async def _run_seccomp(argv: Sequence[str], router: Router, sandbox: Sandbox) -> Ran:
    async with spawn(
        argv, router, sandbox=sandbox, seccomp=True, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    ) as process:
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    return Ran(await process.wait(), (out or b"").decode(errors="replace"), "")


@needs_kernel
@pytest.mark.parametrize("how", ["raw", "libc"])
async def test_a_sandboxed_connect_does_not_reach_a_host_service_on_a_named_socket(
    python3: tuple[str, list[str]], host_service: tuple[Path, list[bytes]], how: str
) -> None:
    path, reached = host_service
    argv = [python3[0], "-c", _UNIX_CLIENT, str(path), how]
    native = await run(argv, Router(default=FORWARD))
    assert native.out == "HOST-SERVICE-REACHED\n", native.err  # the door the sandbox must close
    reached.clear()
    confined = await run(argv, Router(default=FORWARD), python_sandbox(python3))
    assert (confined.status, confined.out) == (1, "EACCES\n"), confined.err
    assert reached == []


@needs_kernel
async def test_a_sandboxed_program_sends_no_unix_datagram_to_the_host(
    python3: tuple[str, list[str]], host_service: tuple[Path, list[bytes]]
) -> None:
    path, reached = host_service
    argv = [python3[0], "-c", _UNIX_DATAGRAMS, f"{path}.dgram"]
    native = await run(argv, Router(default=FORWARD))
    assert native.out == "sent\nsent\n", native.err  # the door the sandbox must close
    reached.clear()
    confined = await run(argv, Router(default=FORWARD), python_sandbox(python3))
    assert confined.out == "EACCES\nEACCES\n", confined.err
    assert reached == []


@needs_kernel
async def test_a_connect_the_policy_allows_still_reaches_the_named_socket(
    python3: tuple[str, list[str]], host_service: tuple[Path, list[bytes]]
) -> None:
    path, _ = host_service
    ran = await run([python3[0], "-c", _UNIX_CLIENT, str(path), "libc"], _allowing_unix(path), python_sandbox(python3))
    assert (ran.status, ran.out) == (0, "HOST-SERVICE-REACHED\n"), ran.err


@needs_kernel
@pytest.mark.parametrize("how", ["raw", "libc"])
async def test_under_seccomp_a_raw_connect_reaches_only_what_the_policy_performs(
    python3: tuple[str, list[str]], host_service: tuple[Path, list[bytes]], how: str
) -> None:
    from libc_service.seccomp.availability import seccomp_unavailable

    if (reason := seccomp_unavailable()) is not None:
        pytest.skip(reason)
    path, reached = host_service
    argv = [python3[0], "-c", _UNIX_CLIENT, str(path), how]
    forwarded = await _run_seccomp(argv, Router(default=FORWARD), python_sandbox(python3))
    assert (forwarded.status, forwarded.out) == (1, "EACCES\n")
    assert reached == []
    allowed = await _run_seccomp(argv, _allowing_unix(path), python_sandbox(python3))
    assert (allowed.status, allowed.out) == (0, "HOST-SERVICE-REACHED\n")


@pytest.fixture(scope="module")
def static_unix_connect(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/unix_connect.c built static (no shim can see it), or a skip saying why not."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build a static program")
    target = tmp_path_factory.mktemp("static") / "unix_connect"
    built = subprocess.run(
        [compiler, "-static", "-O2", "-o", str(target), str(C_DIR / "unix_connect.c")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot link a static program here: {built.stderr.strip()[-200:]}")
    return target


async def _until_received(reached: list[bytes], count: int) -> None:
    """Until the host service has read ``count`` messages (a datagram waits in its buffer until then)."""
    while len(reached) < count:
        await asyncio.sleep(0.01)


@needs_kernel
async def test_a_static_program_reaches_a_named_socket_only_through_the_master(
    static_unix_connect: Path, host_service: tuple[Path, list[bytes]]
) -> None:
    from libc_service.seccomp.availability import seccomp_unavailable

    path, reached = host_service
    stream = [str(static_unix_connect), str(path), "stream"]
    dgram = [str(static_unix_connect), f"{path}.dgram", "dgram"]
    native = await run(stream, Router(default=FORWARD))
    assert native.out == "HOST-SERVICE-REACHED\n", native.err
    assert (await run(dgram, Router(default=FORWARD))).out == "sent\n"
    await asyncio.wait_for(_until_received(reached, 2), 60)  # the service reads on a thread of its own
    reached.clear()
    assert (await run(stream, Router(default=FORWARD), Sandbox())).out == "EACCES\n"
    assert (await run(dgram, Router(default=FORWARD), Sandbox())).out == "EACCES\n"
    assert reached == []
    if (reason := seccomp_unavailable()) is not None:
        pytest.skip(reason)
    assert (await _run_seccomp(stream, Router(default=FORWARD), Sandbox())).out == "EACCES\n"
    assert reached == []
    allowed = await _run_seccomp(stream, _allowing_unix(path), Sandbox())
    assert allowed.out == "HOST-SERVICE-REACHED\n"


# ------------------------------------------------------------------ the CLI


def command(*args: str, cwd: Path | None = None) -> Ran:
    done = subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=dict(os.environ, LC_ALL="C"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def write_policy(directory: Path, body: str) -> Path:
    path = directory / "policy.py"
    path.write_text(textwrap.dedent(body))
    return path


FORWARDING_POLICY = """
    from libc_service import FORWARD, Router
    router = Router(default=FORWARD)
"""


@needs_kernel
def test_cli_sandbox_minimal_stops_raw_syscalls(tmp_path: Path, raw_read: Path, secret: Path) -> None:
    policy = write_policy(tmp_path, FORWARDING_POLICY)
    confined = command("run", "--sandbox", str(policy), "--", str(raw_read), str(secret))
    free = command("run", str(policy), "--", str(raw_read), str(secret))
    assert (confined.status, confined.out) == (1, "EACCES\n")
    assert (free.status, free.out) == (0, "the secret\n")


@needs_kernel
def test_cli_sandbox_uses_the_policys_sandbox_and_router(tmp_path: Path) -> None:
    public, private = tmp_path / "public", tmp_path / "private"
    public.mkdir()
    private.mkdir()
    (public / "p.txt").write_text("public\n")
    (private / "s.txt").write_text("private\n")
    (private / "other.txt").write_text("other\n")
    policy = write_policy(
        tmp_path,
        f"""
        from libc_service import FORWARD, Router, Sandbox, WithFds
        from libc_service.policy.conditions import under
        from libc_service.acting.safepath import open_beneath

        router = Router(default=FORWARD)
        sandbox = Sandbox(allow_read=[{str(public)!r}])

        @router.on("open", "openat", when=under({str(private / "s.txt")!r}))
        def grant(req):
            return WithFds(0, [open_beneath({str(private)!r}, req)])
    """,
    )
    statically = command("run", "--sandbox", str(policy), "--", "cat", str(public / "p.txt"))
    granted = command("run", "--sandbox", str(policy), "--", "cat", str(private / "s.txt"))
    refused = command("run", "--sandbox", str(policy), "--", "cat", str(private / "other.txt"))
    assert (statically.status, statically.out) == (0, "public\n")
    assert (granted.status, granted.out) == (0, "private\n")
    assert refused.status == 1 and "Permission denied" in refused.err


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"landlock_abi": lambda: 0}, "no Landlock"),
        (
            {"landlock_abi": lambda: 7, "network_namespaces_available": lambda: "cannot create a network namespace"},
            "network namespace",
        ),
    ],
)
def test_cli_sandbox_without_kernel_support_is_one_clear_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    patch: dict[str, Callable[[], object]],
    message: str,
) -> None:
    for name, value in patch.items():
        monkeypatch.setattr(sandbox_module, name, value)
    policy = write_policy(tmp_path, FORWARDING_POLICY)
    status = cli.main(["run", "--sandbox", str(policy), "--", "true"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("libc-service: error: cannot sandbox") and message in err
