"""One wire layout: every constant, size and limit of ``shim/shim.h`` equals the Python codec's (``wire_*.py``).

The C shim and the Python codec are two descriptions of one protocol. This
test reads the header itself — ``#define``s and ``enum`` blocks, with the
few expression forms the header uses — and compares each value with its
Python counterpart, so a change on one side that misses the other fails
here rather than as a garbled call.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from libc_service import requests

from libc_service.protocol import openflags

from libc_service.protocol import wire_fields

from libc_service.protocol import wire_header

from libc_service.protocol import wire_registration

from libc_service.protocol import wire_replies

from libc_service.protocol import wire_reports

from libc_service.protocol import wire_requests
from libc_service.policy import rules as rule_table

#: The codec's modules, where each named constant lives.
CODEC = (wire_header, wire_fields, wire_requests, wire_replies, wire_reports, wire_registration)

HEADER = Path(wire_header.__file__).parent.parent / "shim" / "shim.h"


def _evaluate(expression: str, known: dict[str, int]) -> int | None:
    """A header expression (numbers, ``1u << n``, names, + - * parentheses), or None."""
    text = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expression.strip())
    if not re.fullmatch(r"[\w\s+\-*()<|]+", text):
        return None
    names = {name: known[name] for name in re.findall(r"[A-Za-z_]\w*", text) if name in known}
    if any(name not in known for name in re.findall(r"[A-Za-z_]\w*", text)):
        return None
    try:
        value = eval(text, {"__builtins__": {}}, names)  # noqa: S307 - digits, operators and known names only
    except (SyntaxError, TypeError, NameError):
        return None
    return value if isinstance(value, int) else None


def header_constants() -> dict[str, int]:
    """Every integer ``#define`` and enum member of shim.h, by name."""
    source = re.sub(r"/\*.*?\*/", " ", HEADER.read_text(), flags=re.S)
    known: dict[str, int] = {}
    pending: list[tuple[str, str]] = []
    for name, value in re.findall(r"^#define\s+(LCS_\w+)\s+(.+?)\s*$", source, flags=re.M):
        pending.append((name, value))
    for body in re.findall(r"\benum\s*\{(.*?)\}", source, flags=re.S):
        following = 0
        for member in (part.strip() for part in body.split(",")):
            if not member:
                continue
            name, _, value = member.partition("=")
            name = name.strip()
            if value:
                evaluated = _evaluate(value, known)
                if evaluated is None:
                    pending.append((name, value))
                    continue
                following = evaluated
            known[name] = following
            following += 1
    for _ in range(3):  # defines may name each other in any order
        for name, value in pending:
            evaluated = _evaluate(value, known)
            if evaluated is not None:
                known[name] = evaluated
    return known


@pytest.fixture(scope="module")
def header() -> dict[str, int]:
    return header_constants()


def test_version_limits_and_sizes_agree(header: dict[str, int]) -> None:
    assert header["LCS_VERSION"] == wire_header.VERSION
    assert header["LCS_PATH_MAX_BYTES"] == requests.PATH_MAX_BYTES
    assert header["LCS_UNIX_PATH_MAX"] == requests.UNIX_PATH_MAX
    assert header["LCS_NODE_MAX"] == requests.NODE_MAX
    assert header["LCS_SERVICE_MAX"] == requests.SERVICE_MAX
    assert header["LCS_MAX_GROUPS"] == requests.MAX_GROUPS
    assert header["LCS_MAX_REQUEST_FDS"] == wire_header.MAX_REQUEST_FDS
    assert header["LCS_MAX_REPLY_FDS"] == wire_header.MAX_REPLY_FDS
    assert header["LCS_MAX_ADDRINFO"] == wire_header.MAX_ADDRINFO
    assert header["LCS_MAX_MESSAGE"] == wire_header.MAX_MESSAGE
    assert header["LCS_REQUEST_HEADER"] == wire_requests.REQUEST.size
    assert header["LCS_REPLY_HEADER"] == wire_replies.REPLY.size
    assert header["LCS_STAT_RECORD"] == wire_replies.STAT.size
    assert header["LCS_ADDRINFO_ENTRY"] == wire_replies.ADDRINFO.size


def test_every_function_has_the_same_code_on_both_sides(header: dict[str, int]) -> None:
    first, last = header["LCS_OPEN"], max(wire_header.CODE.values())
    c_functions = {
        name: value
        for name, value in header.items()
        if first <= value <= last and name.startswith("LCS_") and name.removeprefix("LCS_").lower() in wire_header.CODE
    }
    assert {name.removeprefix("LCS_").lower(): value for name, value in c_functions.items()} == wire_header.CODE


def test_open_flag_bits_agree(header: dict[str, int]) -> None:
    """Every flag the shim sends is the codec's; only openat2's resolve_* flags (which the shim,
    interposing no openat2, never sends) are the codec's alone."""
    c_flags = {name.removeprefix("LCS_O_").lower(): bit for name, bit in header.items() if name.startswith("LCS_O_")}
    assert c_flags == {name: bit for name, bit in openflags.OPEN_FLAG_BITS.items() if not name.startswith("resolve_")}


@pytest.mark.parametrize(
    ("c_name", "python_name"),
    [
        ("LCS_RENAME_NO_REPLACE", "RENAME_NO_REPLACE"),
        ("LCS_ROLE_SOCKET", "ROLE_SOCKET"),
        ("LCS_CONTEXT_UMASK", "CONTEXT_UMASK"),
        ("LCS_CONTEXT_FSUID", "CONTEXT_FSUID"),
        ("LCS_CONTEXT_FSGID", "CONTEXT_FSGID"),
        ("LCS_CONTEXT_GROUPS", "CONTEXT_GROUPS"),
        ("LCS_ACTION_RESULT", "ACTION_RESULT"),
        ("LCS_ACTION_FORWARD", "ACTION_FORWARD"),
        ("LCS_KIND_NONE", "KIND_NONE"),
        ("LCS_KIND_STAT", "KIND_STAT"),
        ("LCS_KIND_ADDRINFO", "KIND_ADDRINFO"),
        ("LCS_KIND_GAI_ERROR", "KIND_GAI_ERROR"),
    ],
)
def test_named_bits_and_codes_agree(header: dict[str, int], c_name: str, python_name: str) -> None:
    (value,) = {getattr(module, python_name) for module in CODEC if hasattr(module, python_name)}
    assert header[c_name] == value


def test_protocol_numbers_agree(header: dict[str, int]) -> None:
    assert (header["LCS_PROTO_NONE"], header["LCS_PROTO_TCP"], header["LCS_PROTO_UDP"]) == (
        wire_requests.PROTOCOL_NUMBER[None],
        wire_requests.PROTOCOL_NUMBER["tcp"],
        wire_requests.PROTOCOL_NUMBER["udp"],
    )


def test_the_magics_in_the_shim_sources_are_the_codecs() -> None:
    sources = "".join(path.read_text() for path in HEADER.parent.glob("*.[ch]"))
    for magic in (wire_header.REQUEST_MAGIC, wire_header.REPLY_MAGIC, wire_header.HELLO_MAGIC):
        assert f'"{magic.decode()}"' in sources or "".join(f"'{c}'" for c in magic.decode()) in sources.replace(
            ", ", ""
        ), magic


def test_the_parser_reads_what_it_compares(header: dict[str, int]) -> None:
    """Guard against a parser that silently finds nothing: the header's main names are there."""
    assert {"LCS_VERSION", "LCS_OPEN", "LCS_GETADDRINFO", "LCS_O_TRUNCATE", "LCS_MAX_MESSAGE"} <= header.keys()


# ---- named field offsets: every LCS_<layout>_<FIELD>_OFFSET of shim.h is where the codec's struct puts it ----


def struct_offsets(layout: struct.Struct, names: list[str]) -> dict[str, int]:
    """The offset of each field of a little-endian struct format, in order, by name.

    A pad byte (``x``) is a field too (the C side checks that it is zero): ``names`` lists
    one name for each item of the format, counts included (``16s`` is one item, ``3x`` one)."""
    fmt = layout.format
    assert fmt[0] == "<", f"{fmt}: standard sizes, no alignment"
    items = re.findall(r"(\d*)([xcbB?hHiIlLqQnNefdspP])", fmt[1:])
    assert "".join(count + code for count, code in items) == fmt[1:], fmt
    assert len(items) == len(names), f"{fmt} has {len(items)} fields, named {names}"
    offsets: dict[str, int] = {}
    prefix = "<"
    for (count, code), name in zip(items, names):
        offsets[name] = struct.calcsize(prefix)
        prefix += count + code
    assert struct.calcsize(prefix) == layout.size
    return offsets


#: (prefix in shim.h, the codec's struct, its fields' names in the order the codec unpacks them).
LAYOUTS = [
    (
        "LCS_REQ",
        wire_requests.REQUEST,
        [
            "magic",
            "version",
            "function",
            "pid",
            "tid",
            "id",
            "flags",
            "arg",
            "address",
            "scope_id",
            "len1",
            "len2",
            "roles",
            "context",
            "umask",
            "ngroups",
            "reserved",
            "fsuid",
            "fsgid",
        ],
    ),
    (
        "LCS_REPLY",
        wire_replies.REPLY,
        ["magic", "version", "function", "tid", "errno", "id", "result", "action", "kind", "count", "reserved"],
    ),
    (
        "LCS_STAT",
        wire_replies.STAT,
        [
            "dev",
            "ino",
            "nlink",
            "rdev",
            "size",
            "blksize",
            "blocks",
            "atime",
            "mtime",
            "ctime",
            "mode",
            "type",
            "uid",
            "gid",
            "atime_nsec",
            "mtime_nsec",
            "ctime_nsec",
            "btime_nsec",
            "btime",
            "attributes",
            "attributes_mask",
            "mnt_id",
            "present",
            "reserved",
        ],
    ),
    ("LCS_AI", wire_replies.ADDRINFO, ["family", "reserved", "port", "scope_id", "address"]),
    ("LCS_HELLO", wire_registration.REGISTRATION, ["magic", "version", "reserved1", "pid", "reserved2"]),
    (
        "LCS_REPORT",
        wire_reports.REPORT,
        ["magic", "version", "outcome", "reserved", "errno", "lost", "result", "duration"],
    ),
    ("LCS_REPORT_CALL", wire_reports.REPORT_CALL, ["pid", "tid", "id", "function", "reserved"]),
    ("LCS_REPORT_NAMES", wire_reports.REPORT_NAMES, ["dir1", "dir2", "exe", "argv"]),
    ("LCS_RULES", rule_table.HEADER, ["magic", "version", "count"]),
    ("LCS_RULES_ENTRY", rule_table.ENTRY, ["function", "action", "errno", "size"]),
]


@pytest.mark.parametrize(("prefix", "layout", "names"), LAYOUTS, ids=[prefix for prefix, _, _ in LAYOUTS])
def test_every_named_offset_is_the_codecs(
    header: dict[str, int], prefix: str, layout: struct.Struct, names: list[str]
) -> None:
    expected = {f"{prefix}_{name.upper()}_OFFSET": offset for name, offset in struct_offsets(layout, names).items()}
    named = {
        name: value
        for name, value in header.items()
        if re.fullmatch(rf"{prefix}_[A-Z0-9_]+_OFFSET", name)
        and not any(
            name.startswith(f"{longer}_") for longer, _, _ in LAYOUTS if longer != prefix and longer.startswith(prefix)
        )
    }
    assert named == expected


def test_every_header_offset_is_compared(header: dict[str, int]) -> None:
    """No LCS_*_OFFSET of shim.h escapes the comparison above."""
    prefixes = sorted((prefix for prefix, _, _ in LAYOUTS), key=len, reverse=True)
    loose = [
        name
        for name in header
        if name.endswith("_OFFSET") and not any(name.startswith(prefix + "_") for prefix in prefixes)
    ]
    assert not loose


@pytest.mark.parametrize(
    ("c_name", "size"),
    [
        ("LCS_HELLO_SIZE", wire_registration.REGISTRATION.size),
        ("LCS_REPORT_HEADER", wire_reports.REPORT.size),
        ("LCS_REPORT_CALL_SIZE", wire_reports.REPORT_CALL.size),
        ("LCS_REPORT_NAMES_SIZE", wire_reports.REPORT_NAMES.size),
        ("LCS_REPORT_ARGV_MAX", wire_reports.REPORT_ARGV_MAX),
        ("LCS_RULES_HEADER", rule_table.HEADER.size),
        ("LCS_RULES_ENTRY", rule_table.ENTRY.size),
        ("LCS_RULES_VERSION", rule_table.VERSION),
    ],
)
def test_the_other_sizes_agree(header: dict[str, int], c_name: str, size: int) -> None:
    assert header[c_name] == size


def test_the_struct_reader_counts_like_struct() -> None:
    """Guard the offset reader itself against a known layout."""
    assert struct_offsets(struct.Struct("<BxHI16s"), ["a", "b", "c", "d", "e"]) == {
        "a": 0,
        "b": 1,
        "c": 2,
        "d": 4,
        "e": 8,
    }
