"""Loader discovery reads the program's ELF files and grants only what the loader could map.

Real ELF files, compiled here with gcc: a program and its libraries in
directories it chose, with names it chose. Whatever those say, what is
granted is a regular file that is an ELF object like the executable —
never ``/``, never a directory, never a secret that happens to carry a
library's name — and the libraries the program really loads are found.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libc_service.confinement import loader_elf
from libc_service.confinement.loader import LoaderFile, parse_ld_so_cache, program_files, system_library_dirs

_CC = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
needs_cc = pytest.mark.skipif(_CC is None, reason="no C compiler (gcc or cc) to build the ELF files")

_LIBRARY_C = "int hello(void) { return 42; }\n"
_MAIN_C = '#include <stdio.h>\nint hello(void);\nint main(void) { printf("%d\\n", hello()); return 0; }\n'


def compile_c(source: str, output: Path, *flags: str) -> Path:
    """Compile ``source`` to ``output`` with ``flags``; the test's ELF file."""
    assert _CC is not None
    output.parent.mkdir(parents=True, exist_ok=True)
    source_file = output.parent / f".{output.name}.c"
    source_file.write_text(source)
    subprocess.run([_CC, "-o", str(output), str(source_file), *flags], check=True, capture_output=True, timeout=60)
    source_file.unlink()
    return output


def library(path: Path, soname: str | None = None) -> Path:
    """A shared object at ``path`` (with that soname, or none: then the file name is what links to it)."""
    return compile_c(_LIBRARY_C, path, "-shared", "-fPIC", *([f"-Wl,-soname,{soname}"] if soname else []))


def program(path: Path, link_dir: Path, needed: str, *search: str, runpath: bool = True) -> Path:
    """A program needing ``needed`` (found in ``link_dir`` at link time), with RUNPATH or RPATH ``search``."""
    tags = "--enable-new-dtags" if runpath else "--disable-new-dtags"
    flags = [f"-L{link_dir}", f"-l:{needed}", f"-Wl,{tags}"]
    if search:
        flags.append(f"-Wl,-rpath,{':'.join(search)}")
    return compile_c(_MAIN_C, path, *flags)


def paths(files: list[LoaderFile]) -> list[Path]:
    return [file.path for file in files]


def assert_only_regular_files(files: list[LoaderFile]) -> None:
    """Every grant is a regular file, with the identity its path has now; never / nor a directory."""
    for file in files:
        info = os.stat(file.path)
        assert stat.S_ISREG(info.st_mode), file
        assert (info.st_dev, info.st_ino) == (file.device, file.inode), file
        assert file.path != Path("/")


def runs(executable: Path, env: dict[str, str] | None = None) -> str:
    """What the program prints natively (the loader's own verdict on our search)."""
    done = subprocess.run(
        [str(executable)], capture_output=True, text=True, timeout=60, check=False, env=env or {"PATH": "/usr/bin:/bin"}
    )
    return done.stdout if done.returncode == 0 else f"status {done.returncode}: {done.stderr.strip()}"


# ------------------------------------------------------------- the search


@needs_cc
def test_a_library_beside_the_program_is_found_through_runpath_origin(tmp_path: Path) -> None:
    lib = library(tmp_path / "app" / "lib" / "libhello.so")
    prog = program(tmp_path / "app" / "prog", lib.parent, "libhello.so", "$ORIGIN/lib")
    assert runs(prog) == "42\n"
    files = program_files(prog)
    assert files[0].path == prog
    assert lib in paths(files)
    assert any(path.name.startswith("libc.") for path in paths(files))
    assert any(path.name.startswith("ld-") for path in paths(files))  # the ELF interpreter
    assert_only_regular_files(files)


@needs_cc
def test_a_library_directory_named_like_loader_trace_output_grants_no_directory(tmp_path: Path) -> None:
    """The old text-parsing hole: ``x => / (`` in a directory name granted read on /."""
    hostile = tmp_path / "x => / (0x0)" / "y => / ("
    lib = library(hostile / "libhello.so")
    prog = program(tmp_path / "prog", hostile, "libhello.so", str(hostile), "$ORIGIN/x => / (0x0)")
    assert runs(prog) == "42\n"
    files = program_files(prog)
    assert lib in paths(files)
    assert_only_regular_files(files)
    assert not any(path in (Path("/"), hostile, hostile.parent, tmp_path) for path in paths(files))


@needs_cc
def test_a_secret_named_like_a_library_earlier_on_the_path_is_not_granted(tmp_path: Path) -> None:
    """NEEDED ``id_rsa``, RUNPATH ``secrets:real``: the key is skipped, the real library granted."""
    secret = tmp_path / "secrets" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "A" * 2000 + "\n")
    real = library(tmp_path / "real" / "id_rsa")
    prog = program(tmp_path / "prog", real.parent, "id_rsa", str(secret.parent), str(real.parent))
    files = program_files(prog)
    assert real in paths(files)
    assert secret not in paths(files)
    assert_only_regular_files(files)


@needs_cc
def test_a_symlink_to_a_secret_or_a_directory_is_not_granted_a_symlinked_library_is(tmp_path: Path) -> None:
    secret, directory = tmp_path / "decoys" / "secret", tmp_path / "decoys" / "directory"
    secret.mkdir(parents=True)
    directory.mkdir()
    (secret / "libhello.so.1").symlink_to("/etc/passwd")
    (directory / "libhello.so.1").symlink_to("/")
    real = library(tmp_path / "lib" / "libhello.so.1.0", soname="libhello.so.1")
    (real.parent / "libhello.so.1").symlink_to(real.name)
    (real.parent / "libhello.so").symlink_to(real.name)
    prog = program(tmp_path / "prog", real.parent, "libhello.so", str(secret), str(directory), str(real.parent))
    files = program_files(prog)
    assert real.parent / "libhello.so.1" in paths(files)  # the soname, as the loader opens it
    granted = {(file.device, file.inode) for file in files}
    assert (os.stat(real).st_dev, os.stat(real).st_ino) in granted  # the rule lands on the target
    assert not any(path.parent in (secret, directory) for path in paths(files))
    assert_only_regular_files(files)


@needs_cc
def test_a_truncated_or_garbage_library_is_skipped_and_the_search_goes_on(tmp_path: Path) -> None:
    real = library(tmp_path / "real" / "libhello.so")
    data = real.read_bytes()
    broken = {
        "short": data[:40],
        "headers": data[:300],
        "garbage": b"\x7fELF" + bytes(range(256)) * 8,
        "text": b"not an ELF file\n" * 100,
    }
    for name, content in broken.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "libhello.so").write_bytes(content)
    prog = program(
        tmp_path / "prog", real.parent, "libhello.so", *(str(tmp_path / name) for name in broken), str(real.parent)
    )
    files = program_files(prog)
    assert real in paths(files)
    assert not any(path.parent.name in broken for path in paths(files))
    assert_only_regular_files(files)


@needs_cc
def test_a_program_of_another_machine_or_class_gets_no_libraries_of_ours(tmp_path: Path) -> None:
    """A library must match the executable: a candidate of another class is skipped."""
    real = library(tmp_path / "real" / "libhello.so")
    other = tmp_path / "other" / "libhello.so"
    other.parent.mkdir()
    data = bytearray(real.read_bytes())
    data[4] = 1 if data[4] == 2 else 2  # EI_CLASS flipped: a "32-bit" object
    other.write_bytes(bytes(data))
    prog = program(tmp_path / "prog", real.parent, "libhello.so", str(other.parent), str(real.parent))
    files = program_files(prog)
    assert real in paths(files) and other not in paths(files)


@needs_cc
def test_rpath_comes_before_ld_library_path_and_runpath_after(tmp_path: Path) -> None:
    first = library(tmp_path / "first" / "libhello.so")
    second = library(tmp_path / "second" / "libhello.so")
    env = {"LD_LIBRARY_PATH": str(second.parent), "PATH": "/usr/bin:/bin"}
    old = program(tmp_path / "old" / "prog", first.parent, "libhello.so", str(first.parent), runpath=False)
    new = program(tmp_path / "new" / "prog", first.parent, "libhello.so", str(first.parent), runpath=True)
    assert first in paths(program_files(old, env)) and second not in paths(program_files(old, env))
    assert second in paths(program_files(new, env)) and first not in paths(program_files(new, env))
    bare = program(tmp_path / "bare" / "prog", first.parent, "libhello.so")
    assert not any(path.name == "libhello.so" for path in paths(program_files(bare, {})))
    assert second in paths(program_files(bare, env))


@needs_cc
def test_rpath_is_inherited_by_what_the_program_loads_and_runpath_is_not(tmp_path: Path) -> None:
    """glibc: a library without RUNPATH searches its loaders' RPATH too; a RUNPATH serves its own object only."""
    inner = compile_c("int inner(void) { return 42; }\n", tmp_path / "lib" / "libinner.so", "-shared", "-fPIC")
    outer = compile_c(
        "int inner(void);\nint hello(void) { return inner(); }\n",
        tmp_path / "outer" / "libouter.so",
        "-shared",
        "-fPIC",
        f"-L{inner.parent}",
        "-linner",
    )
    for tags, inherited in (("--disable-new-dtags", True), ("--enable-new-dtags", False)):
        prog = compile_c(
            _MAIN_C,
            tmp_path / tags / "prog",
            f"-L{outer.parent}",
            "-louter",
            f"-L{inner.parent}",
            f"-Wl,{tags},-rpath,{outer.parent}:{inner.parent}",
            "-Wl,--allow-shlib-undefined",
        )
        files = paths(program_files(prog, {}))
        assert outer in files
        assert (inner in files) is inherited, tags
        assert (runs(prog) == "42\n") is inherited, tags  # the loader agrees


@needs_cc
def test_a_needed_path_is_a_path_and_must_be_a_library(tmp_path: Path) -> None:
    lib = library(tmp_path / "libs" / "libhello.so")
    prog = compile_c(_MAIN_C, tmp_path / "prog", str(lib))  # no soname: NEEDED is the path itself
    assert lib in paths(program_files(prog))
    lib.unlink()
    lib.write_text("now a secret\n")
    assert lib not in paths(program_files(prog))


@needs_cc
def test_a_library_that_needs_itself_ends(tmp_path: Path) -> None:
    first = library(tmp_path / "lib" / "libloop.so")
    looped = compile_c(
        _LIBRARY_C,
        tmp_path / "build" / "libloop.so",
        "-shared",
        "-fPIC",
        "-Wl,--no-as-needed",
        f"-L{first.parent}",
        "-l:libloop.so",
    )
    shutil.copyfile(looped, first)
    assert b"libloop.so" in first.read_bytes()  # its NEEDED: itself
    prog = program(tmp_path / "prog", first.parent, "libloop.so", str(first.parent))
    assert paths(program_files(prog)).count(first) == 1


@needs_cc
def test_a_library_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    """Parsed files are remembered by version: the same inode with new bytes is a new version."""
    lib = library(tmp_path / "lib" / "libhello.so")
    prog = program(tmp_path / "prog", lib.parent, "libhello.so", str(lib.parent))
    assert lib in paths(program_files(prog))
    inode = os.stat(lib).st_ino
    with open(lib, "r+b") as file:
        file.write(b"now a secret, same inode\n")
        file.truncate()
    assert os.stat(lib).st_ino == inode
    assert lib not in paths(program_files(prog))


# --------------------------------------------------------- the interpreter


@needs_cc
@pytest.mark.parametrize("kind", ["directory", "text", "fifo", "missing", "not executable"])
def test_a_pt_interp_that_is_not_an_executable_elf_file_is_not_granted(tmp_path: Path, kind: str) -> None:
    interp = tmp_path / "interp"
    if kind == "directory":
        interp.mkdir()
    elif kind == "text":
        interp.write_text("#!/bin/sh\necho hi\n")
        interp.chmod(0o755)
    elif kind == "fifo":
        os.mkfifo(interp)  # never opened: opening a FIFO for reading would block
    elif kind == "not executable":
        shutil.copyfile(os.path.realpath("/bin/sh"), interp)
        interp.chmod(0o644)
    lib = library(tmp_path / "lib" / "libhello.so")
    prog = program(tmp_path / "prog", lib.parent, "libhello.so", str(lib.parent))
    hostile = compile_c(_MAIN_C, tmp_path / "hostile", f"-L{lib.parent}", "-lhello", f"-Wl,--dynamic-linker={interp}")
    assert [file.path for file in program_files(hostile)] == [hostile]  # no interpreter, so nothing is loaded
    assert lib in paths(program_files(prog))


@needs_cc
def test_a_static_program_is_granted_alone(tmp_path: Path) -> None:
    try:
        prog = compile_c("int main(void) { return 0; }\n", tmp_path / "static", "-static")
    except subprocess.CalledProcessError:
        pytest.skip("no static C library to link with")
    assert paths(program_files(prog)) == [prog]


def test_files_that_are_not_regular_executables_grant_nothing(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    assert program_files(plain) == []  # no execute bit
    assert program_files(tmp_path) == []
    assert program_files(tmp_path / "missing") == []


# ------------------------------------------------------------------ scripts


def test_a_script_gets_its_interpreter_and_what_that_loads(tmp_path: Path) -> None:
    if not os.access("/bin/sh", os.X_OK):
        pytest.skip("no /bin/sh")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh -e\necho hi\n")
    script.chmod(0o755)
    files = paths(program_files(script))
    assert files[:2] == [script, Path("/bin/sh")]
    assert any(path.name.startswith("libc.") for path in files)


@needs_cc
def test_env_scripts_get_the_program_found_on_the_slaves_path(tmp_path: Path) -> None:
    if not os.access("/usr/bin/env", os.X_OK):
        pytest.skip("no /usr/bin/env")
    lib = library(tmp_path / "lib" / "libhello.so")
    tool = program(tmp_path / "bin" / "tool", lib.parent, "libhello.so", "$ORIGIN/../lib")
    script = tmp_path / "script"
    script.write_text("#!/usr/bin/env -S tool --flag\n")
    script.chmod(0o755)
    files = {os.path.realpath(path) for path in paths(program_files(script, {"PATH": str(tool.parent)}))}
    assert {str(script), os.path.realpath("/usr/bin/env"), str(tool), str(lib)} <= files
    assert tool not in paths(program_files(script, {"PATH": "/nowhere"}))


def test_script_chains_and_loops_end(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.write_text(f"#!{loop}\n")
    loop.chmod(0o755)
    assert paths(program_files(loop)) == [loop]
    previous = Path("/bin/sh")
    for index in range(10):
        script = tmp_path / f"chain{index}"
        script.write_text(f"#!{previous}\n")
        script.chmod(0o755)
        previous = script
    files = paths(program_files(previous))
    assert len([path for path in files if path.name.startswith("chain")]) == 5  # the script and 4 interpreters


# ------------------------------------------------------------- ld.so.cache


def test_ld_so_cache_reads_as_ldconfig_prints_it() -> None:
    cache = Path("/etc/ld.so.cache")
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    if ldconfig is None or not cache.is_file():
        pytest.skip("no ldconfig or no /etc/ld.so.cache here")
    printed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=60, check=True).stdout
    expected = set()
    for line in printed.splitlines()[1:]:  # "\tNAME (FLAGS[, hwcap: ...]) => PATH"
        if line.startswith("\t") and ") => " in line:
            name, _, rest = line.strip().partition(" (")
            expected.add((name, rest.rpartition(") => ")[2]))
    parsed = parse_ld_so_cache(cache.read_bytes())
    assert set(parsed) == expected
    # The same table behind an old-format header (an empty ld.so-1.7.0 table), as older ldconfigs wrote it.
    old = b"ld.so-1.7.0\0" + struct.pack("=I", 0)
    assert parse_ld_so_cache(old + cache.read_bytes()) == parsed
    assert parse_ld_so_cache(cache.read_bytes()[:100]) == []


@given(st.binary(max_size=512), st.integers(0, 2))
def test_a_broken_ld_so_cache_gives_fewer_entries_never_an_exception(tail: bytes, header: int) -> None:
    prefix = [b"", b"glibc-ld.so.cache1.1", b"ld.so-1.7.0\0"][header]
    for entry in parse_ld_so_cache(prefix + tail):
        assert isinstance(entry, tuple) and len(entry) == 2


@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 300)), max_size=8),
    st.binary(max_size=200),
)
def test_every_cache_offset_is_checked(nlibs: int, entries: list[tuple[int, int]], strings: bytes) -> None:
    """Counts and string offsets anywhere, in range or not: only strings inside the file come back."""
    header = b"glibc-ld.so.cache1.1" + struct.pack("=IIBxxxI12x", nlibs, len(strings), 0, 0)
    table = b"".join(struct.pack("=iIIIQ", 0x303, key, value, 0, 0) for key, value in entries)
    data = header + table + strings
    for name, path in parse_ld_so_cache(data):
        assert name.encode(errors="surrogateescape") + b"\0" in data
        assert path.encode(errors="surrogateescape") + b"\0" in data


@needs_cc
def test_hostile_elf_bytes_never_raise(tmp_path: Path) -> None:
    """Anything pyelftools raises on mutated ELF bytes means "not loadable", never a crash."""
    base = library(tmp_path / "libhello.so").read_bytes()

    @given(
        st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=16), st.integers(0, len(base))
    )
    def mutate(changes: list[tuple[int, int]], length: int) -> None:
        data = bytearray(base[:length])
        for offset, value in changes:
            if offset < len(data):
                data[offset] = value
        loader_elf.parse_elf(io.BytesIO(bytes(data)))

    mutate()


# ------------------------------------------------------ system directories


def test_system_library_dirs_are_existing_absolute_directories_listed_once(tmp_path: Path) -> None:
    found = system_library_dirs()
    assert all(path.is_absolute() and path.is_dir() and path != Path("/") for path in found)
    assert len({os.path.realpath(path) for path in found}) == len(found)
    extra = tmp_path / "extra"
    extra.mkdir()
    conf = tmp_path / "ld.so.conf"
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text(f"# comment\n{extra}\nrelative/dir\n/\n{tmp_path}/missing\n")
    (tmp_path / "conf.d" / "loop.conf").write_text(f"include {conf}\n")
    conf.write_text("include conf.d/*.conf\nhwcap 0 nosegneg\n")
    listed = system_library_dirs(conf)
    assert extra in listed
    assert Path("/") not in listed and tmp_path / "missing" not in listed
    assert not any(str(path).endswith("relative/dir") for path in listed)


@pytest.mark.parametrize("executable", ["/bin/ls", "/usr/bin/python3", "/usr/bin/ssh"])
def test_system_programs_get_the_libraries_ldd_lists(executable: str) -> None:
    """On trusted system programs, the system's own ldd (test-only) and discovery agree."""
    ldd = shutil.which("ldd")
    if ldd is None or not os.access(executable, os.X_OK):
        pytest.skip(f"no ldd or no {executable} here")
    listed = subprocess.run([ldd, executable], capture_output=True, text=True, timeout=60, check=False).stdout
    expected = {os.path.realpath(word) for line in listed.splitlines() for word in line.split() if word.startswith("/")}
    found = {os.path.realpath(path) for path in paths(program_files(Path(os.path.realpath(executable))))}
    assert found - {os.path.realpath(executable)} == expected


def test_discovery_is_reused_until_a_path_it_looked_at_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server starting the same program again reads no ELF file, yet never misses a change."""
    import libc_service.confinement.loader as loader

    true = Path(os.path.realpath(shutil.which("true", path="/usr/bin:/bin") or "/bin/true"))
    libraries = tmp_path / "libs"
    libraries.mkdir()
    env = {"LD_LIBRARY_PATH": str(libraries), "PATH": "/usr/bin:/bin"}
    runs = 0
    program = loader._Discovery.program

    def counted(self: Any, path: Path, depth: int) -> None:
        nonlocal runs
        runs += depth == 0
        program(self, path, depth)

    monkeypatch.setattr(loader._Discovery, "program", counted)
    first = program_files(true, env, cwd=tmp_path)
    assert program_files(true, env, cwd=tmp_path) == first and runs == 1
    # A library appearing earlier in the search (LD_LIBRARY_PATH) than the one found: discovered anew.
    libc = next(file.path for file in first if file.path.name.startswith("libc.so"))
    shutil.copy(os.path.realpath(libc), libraries / libc.name)
    second = program_files(true, env, cwd=tmp_path)
    assert runs == 2 and libraries / libc.name in paths(second)
    # Written in place (same inode, new size and times): discovered anew too.
    with open(libraries / libc.name, "ab") as stream:
        stream.write(b"\0")
    program_files(true, env, cwd=tmp_path)
    assert runs == 3
