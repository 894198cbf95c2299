"""Reading what the dynamic loader uses from an ELF file, as data (with pyelftools).

The program is untrusted and so is every file it names: nothing here is
run, only the program headers count (as for the kernel and ld.so), every
count and offset is bounded, and whatever the parser raises on hostile
bytes means "not a loadable object".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import IO, Final

from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile

from libc_service.confinement.loader_files import MAX_NAME, FileVersion

__all__ = ["Elf", "parse_elf", "parse_elf_once"]

#: Dynamic entries read from one object, and names it may need.
_MAX_TAGS: Final = 4096
_MAX_NEEDED: Final = 256
#: The kernel refuses program header tables larger than this (``load_elf_phdrs``).
_MAX_PHDR_BYTES: Final = 65536


@dataclass(frozen=True)
class Elf:
    """What the loader reads from one ELF file (strings still raw bytes)."""

    #: (class, little endian, machine): a library must match the executable's.
    kind: tuple[int, bool, str | int]
    elf_type: str | int
    interpreter: bytes | None
    dynamic: bool
    needed: tuple[bytes, ...]
    rpath: bytes | None
    #: ``DT_RUNPATH`` present (even unreadable): then ``DT_RPATH`` is ignored.
    has_runpath: bool
    runpath: bytes | None


#: Files read so far, by version: a program started again (one sandboxed
#: worker per job) is not parsed again. Bounded; the oldest entry goes first.
_PARSED: dict[FileVersion, Elf | None] = {}
_MAX_PARSED: Final = 4096
_parsed_lock = threading.Lock()


def _cstring(stream: IO[bytes], offset: int) -> bytes | None:
    """The non-empty NUL-terminated string at ``offset``, if it ends within ``MAX_NAME`` bytes.

    Names are short: a first small read usually holds the whole string.
    """
    stream.seek(offset)
    head = stream.read(256)
    if b"\0" not in head and len(head) == 256:
        head += stream.read(MAX_NAME - 256)
    text, nul, _ = head.partition(b"\0")
    return text if nul and text else None


def parse_elf(stream: IO[bytes]) -> Elf | None:
    """Read what the loader uses from an ELF file; ``None`` when it is not one it would load.

    Only the program headers count (``PT_INTERP``, ``PT_LOAD``,
    ``PT_DYNAMIC``), as for the kernel and ld.so: section headers, which
    the loader ignores, could say anything. The input is hostile and the
    parser is not ours, so whatever it raises (``ELFError``, struct and
    construct errors, ``ValueError``, ``IndexError``, ...) means "not a
    loadable object", never a failure of the caller.
    """
    try:
        return _read_elf(stream)
    except Exception:  # any failure on hostile bytes means "not loadable"
        return None


def parse_elf_once(stream: IO[bytes], version: FileVersion) -> Elf | None:
    """:func:`parse_elf`, remembered for this version of the file."""
    with _parsed_lock:
        if version in _PARSED:
            return _PARSED[version]
    elf = parse_elf(stream)
    with _parsed_lock:
        if len(_PARSED) >= _MAX_PARSED:
            del _PARSED[next(iter(_PARSED))]
        _PARSED[version] = elf
    return elf


def _read_elf(stream: IO[bytes]) -> Elf | None:
    """:func:`parse_elf` without the safety net: raises on a malformed file."""
    elf = ELFFile(stream)
    header = elf.header
    ident = header["e_ident"]
    # glibc's open_verify: current version, a System V or GNU ABI, program headers of our size.
    if ident["EI_VERSION"] != "EV_CURRENT" or header["e_version"] != "EV_CURRENT":
        return None
    if ident["EI_OSABI"] not in ("ELFOSABI_SYSV", "ELFOSABI_LINUX"):
        return None
    phdr = elf.structs.Elf_Phdr
    phnum, phentsize = header["e_phnum"], header["e_phentsize"]
    if phentsize != phdr.sizeof() or phnum * phentsize > _MAX_PHDR_BYTES:
        return None
    segments = [struct_parse(phdr, stream, header["e_phoff"] + index * phentsize) for index in range(phnum)]
    interpreter = None
    dynamic = None
    for segment in segments:
        if segment["p_type"] == "PT_INTERP" and interpreter is None:
            interpreter = _cstring(stream, segment["p_offset"])
            if interpreter is None:
                return None  # the kernel refuses an unterminated or empty interpreter
        elif segment["p_type"] == "PT_DYNAMIC" and dynamic is None:
            dynamic = segment
    kind = (elf.elfclass, elf.little_endian, header["e_machine"])
    if dynamic is None:
        return Elf(kind, header["e_type"], interpreter, False, (), None, False, None)
    # The dynamic entries as ld.so reads them: up to DT_NULL; for a tag that
    # appears twice the last one counts (elf_get_dynamic_info).
    dyn = elf.structs.Elf_Dyn
    size = dyn.sizeof()
    count = min(dynamic["p_filesz"] // size, _MAX_TAGS)
    stream.seek(dynamic["p_offset"])
    table = stream.read(count * size)
    needed: list[int] = []
    single: dict[str, int] = {}
    for index in range(len(table) // size):
        entry = dyn.parse(table[index * size : (index + 1) * size])
        tag = entry["d_tag"]
        if tag == "DT_NULL":
            break
        if tag == "DT_NEEDED" and len(needed) < _MAX_NEEDED:
            needed.append(entry["d_val"])
        elif tag in ("DT_STRTAB", "DT_RPATH", "DT_RUNPATH"):
            single[tag] = entry["d_val"]
    strtab = None
    if "DT_STRTAB" in single:
        address = single["DT_STRTAB"]
        for segment in segments:  # the file offset of that address, through the first PT_LOAD holding it
            start = segment["p_vaddr"]
            if segment["p_type"] == "PT_LOAD" and start <= address < start + segment["p_filesz"]:
                strtab = address - start + segment["p_offset"]
                break

    def string(offset: int | None) -> bytes | None:
        return None if strtab is None or offset is None else _cstring(stream, strtab + offset)

    names = tuple(name for name in (string(offset) for offset in needed) if name is not None)
    return Elf(
        kind,
        header["e_type"],
        interpreter,
        True,
        names,
        string(single.get("DT_RPATH")),
        "DT_RUNPATH" in single,
        string(single.get("DT_RUNPATH")),
    )
