"""The open flags' one table: every name of the vocabulary once, with this system's value and its own wire bit.

Expected values are the os module's, read here; a flags word's names are
read back exactly as the seccomp transport reads a system call's arguments.
"""

from __future__ import annotations

import os
import platform

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libc_service.protocol.catalogue import OPEN_FLAGS, OPENAT_FLAGS
from libc_service.protocol.openflags import (
    ACCESS_MODES,
    KNOWN_OS_FLAGS,
    OPEN_FLAG_BITS,
    OS_FLAGS,
    RESOLVE_FLAGS,
    names_of,
)

#: The os module's name of each flag's constant (large_file's is 0 in a 64-bit C library).
_OS_NAMES = {
    "read_only": "O_RDONLY",
    "write_only": "O_WRONLY",
    "read_write": "O_RDWR",
    "append": "O_APPEND",
    "create": "O_CREAT",
    "directory": "O_DIRECTORY",
    "exclusive": "O_EXCL",
    "no_follow": "O_NOFOLLOW",
    "path": "O_PATH",
    "sync_all_on_write": "O_SYNC",
    "temporary": "O_TMPFILE",
    "truncate": "O_TRUNC",
    "non_blocking": "O_NONBLOCK",
    "no_ctty": "O_NOCTTY",
    "close_on_exec": "O_CLOEXEC",
    "sync_data_on_write": "O_DSYNC",
    "no_atime": "O_NOATIME",
    "direct": "O_DIRECT",
    "async_signals": "O_ASYNC",
    "large_file": "O_LARGEFILE",
}
#: x86_64's O_LARGEFILE as a system call carries it (the seccomp transport's architecture).
_X86_64_LARGE_FILE = 0o100000


def test_every_name_has_one_row_and_its_own_wire_bit() -> None:
    assert list(OPEN_FLAG_BITS) == list(OPENAT_FLAGS)
    assert list(OS_FLAGS) == list(OPEN_FLAGS)
    assert set(RESOLVE_FLAGS) == set(OPENAT_FLAGS) - set(OPEN_FLAGS)
    bits = list(OPEN_FLAG_BITS.values())
    assert all(bit.bit_count() == 1 for bit in bits) and len(set(bits)) == len(bits)


@pytest.mark.parametrize("name", OPEN_FLAGS)
def test_a_flags_value_is_the_os_modules(name: str) -> None:
    assert OS_FLAGS[name] == getattr(os, _OS_NAMES[name], 0)


#: Sets of open flags a flags word says exactly: one access mode, and of each nested pair the whole or the part.
_SAYABLE = st.builds(
    lambda access, others, sync, directory: frozenset({access, *others, *sync, *directory}),
    st.sampled_from(ACCESS_MODES),
    st.sets(
        st.sampled_from([name for name in OPEN_FLAGS if name not in ACCESS_MODES and OS_FLAGS[name]]).filter(
            lambda name: name not in ("sync_all_on_write", "sync_data_on_write", "temporary", "directory")
        )
    ),
    st.sampled_from([(), ("sync_all_on_write",), ("sync_data_on_write",)]),
    st.sampled_from([(), ("temporary",), ("directory",)]),
)


@given(names=_SAYABLE, resolve=st.sets(st.sampled_from(sorted(RESOLVE_FLAGS))))
def test_a_flags_word_reads_back_as_its_names(names: frozenset[str], resolve: set[str]) -> None:
    flags = 0
    for name in names:
        flags |= OS_FLAGS[name]
    bits = sum(RESOLVE_FLAGS[name] for name in resolve)
    assert names_of(flags, bits) == names | resolve
    assert flags & ~KNOWN_OS_FLAGS == 0


def test_access_mode_3_has_no_name() -> None:
    with pytest.raises(ValueError, match="access mode 3"):
        names_of(os.O_ACCMODE)


#: open(2)'s flag bits on x86_64 as the kernel's uapi headers define them
#: (asm-generic/fcntl.h), written here as the oracle the table is checked against.
_UAPI_X86_64: tuple[tuple[int, str], ...] = (
    (0o200, "exclusive"),
    (0o400, "no_ctty"),
    (0o1000, "truncate"),
    (0o2000, "append"),
    (0o4000, "non_blocking"),
    (0o20000, "async_signals"),
    (0o40000, "direct"),
    (0o100000, "large_file"),
    (0o400000, "no_follow"),
    (0o1000000, "no_atime"),
    (0o2000000, "close_on_exec"),
    (0o10000000, "path"),
    (0o100, "create"),
)
_UAPI_RESOLVE = (
    (0x01, "resolve_no_xdev"),
    (0x02, "resolve_no_magiclinks"),
    (0x04, "resolve_no_symlinks"),
    (0x08, "resolve_beneath"),
    (0x10, "resolve_in_root"),
    (0x20, "resolve_cached"),
)


def _uapi_names(flags: int, resolve: int) -> frozenset[str]:
    names = {("read_only", "write_only", "read_write")[flags & 3]}
    names.update(name for bit, name in _UAPI_X86_64 if flags & bit)
    if flags & 0o4010000 == 0o4010000:
        names.add("sync_all_on_write")
    elif flags & 0o10000:
        names.add("sync_data_on_write")
    if flags & 0o20200000 == 0o20200000:
        names.add("temporary")
    elif flags & 0o200000:
        names.add("directory")
    names.update(name for bit, name in _UAPI_RESOLVE if resolve & bit)
    return frozenset(names)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp transport reads x86_64 system calls only")
@given(flags=st.integers(0, 2**32 - 1), resolve=st.integers(0, 0x3F))
def test_names_are_read_as_the_kernel_defines_the_bits(flags: int, resolve: int) -> None:
    if flags & os.O_ACCMODE == os.O_ACCMODE:
        return
    assert names_of(flags, resolve, large_file=_X86_64_LARGE_FILE) == _uapi_names(flags, resolve)
    known = 3 | 0o4010000 | 0o20200000 | sum(bit for bit, _ in _UAPI_X86_64) | 0o10000 | 0o200000
    assert (flags & ~(KNOWN_OS_FLAGS | _X86_64_LARGE_FILE) == 0) == (flags & ~known == 0)
