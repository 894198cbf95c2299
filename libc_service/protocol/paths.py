"""A slave's path, exactly as it passed it: ``ExactPath``, ``exact_path`` and the checks every path field makes.

``PurePosixPath`` normalises text, but a trailing slash or a doubled one
changes what a call means; the request models (:mod:`libc_service.protocol.requests`)
keep the exact text through these types, and the codecs of both transports
build them with :func:`exact_path`.
"""

from __future__ import annotations

import os
from pathlib import PurePath, PurePosixPath
from collections.abc import Sequence
from typing import Any

from libc_service.protocol.catalogue import PATH_MAX_BYTES

__all__ = ["ExactPath", "check_fs_path", "exact_path", "normal", "path_in"]


class ExactPath(PurePosixPath):
    """A ``PurePosixPath`` whose text is exactly what the slave passed.

    ``PurePosixPath`` normalises its text (``"dir/"`` becomes ``"dir"``,
    ``"a//b"`` becomes ``"a/b"``), but the slave's exact bytes matter: a
    trailing slash makes ``open`` insist on a directory and ``lstat`` follow
    a symlink, and an abstract socket name is arbitrary bytes. So
    ``str()``, ``os.fspath()``, ``bytes()``, ``as_posix()`` and ``repr()``
    give the exact text, while everything pathlib computes from the parsed
    path is pathlib's own: ``parts``, ``name``, ``parent``, ``/``,
    ``is_absolute()``, and equality, hashing, ordering and ``match()``,
    which are those of the normalised path (``ExactPath("dir/") ==
    PurePosixPath("dir")``, as pathlib has it).

    Only public pathlib API is overridden, so this holds alike on Python
    3.11 to 3.13 (3.13 no longer reads a cached ``_str``, which an earlier
    version of this module set): a path derived from an exact one
    (``parent``, ``parents``, ``/``, ``joinpath()``, ``with_name()``, ...,
    and whatever 3.12+ builds through ``with_segments()``) is a plain
    normalised ``PurePosixPath``. ``pickle`` and ``copy`` keep the exact text.
    """

    __slots__ = ("_exact_text", "_normalised")

    _exact_text: str
    _normalised: PurePosixPath

    def __new__(cls, text: str) -> ExactPath:
        if not isinstance(text, str):
            raise TypeError(f"ExactPath takes the path's text, not {type(text).__name__}")
        path = super().__new__(cls, text)  # 3.11 parses here; 3.12+ in __init__
        path._exact_text = text
        return path

    def __str__(self) -> str:
        try:
            return self._exact_text
        except AttributeError:  # 3.11: a path derived from an exact one
            return super().__str__()

    def __fspath__(self) -> str:
        return str(self)

    def __bytes__(self) -> bytes:
        return os.fsencode(str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        if hasattr(self, "_exact_text"):
            return (ExactPath, (self._exact_text,))
        return (PurePosixPath, (str(self),))

    @property
    def normalised(self) -> PurePosixPath:
        """The plain ``PurePosixPath`` of the same text (pathlib's normal form)."""
        try:
            return self._normalised
        except AttributeError:
            # PurePosixPath(self) parses the parts, not str(self): normalised on every version.
            self._normalised = PurePosixPath(self)
            return self._normalised

    def with_segments(self, *pathsegments: str | os.PathLike[str]) -> PurePosixPath:
        """Paths pathlib derives itself (3.12+) are plain ``PurePosixPath`` objects."""
        return PurePosixPath(*pathsegments)

    # Derived paths come from the normalised twin on every version (3.11
    # would otherwise build them as ExactPath objects without exact text).
    @property
    def parent(self) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.parent`` of the normalised path."""
        return self.normalised.parent

    @property
    def parents(self) -> Sequence[PurePosixPath]:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.parents`` of the normalised path."""
        return self.normalised.parents

    def __truediv__(self, key: str | os.PathLike[str]) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        return self.normalised / key

    def __rtruediv__(self, key: str | os.PathLike[str]) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        return key / self.normalised

    def joinpath(self, *pathsegments: str | os.PathLike[str]) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.joinpath`` of the normalised path."""
        return self.normalised.joinpath(*pathsegments)

    def with_name(self, name: str) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.with_name`` of the normalised path."""
        return self.normalised.with_name(name)

    def with_stem(self, stem: str) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.with_stem`` of the normalised path."""
        return self.normalised.with_stem(stem)

    def with_suffix(self, suffix: str) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.with_suffix`` of the normalised path."""
        return self.normalised.with_suffix(suffix)

    # pathlib 3.12+ compares, hashes and matches through str(self); the
    # exact text must not change what the path *is*.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExactPath):
            other = other.normalised
        return self.normalised.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.normalised)

    def __lt__(self, other: PurePath) -> bool:
        return self.normalised < normal(other)

    def __le__(self, other: PurePath) -> bool:
        return self.normalised <= normal(other)

    def __gt__(self, other: PurePath) -> bool:
        return self.normalised > normal(other)

    def __ge__(self, other: PurePath) -> bool:
        return self.normalised >= normal(other)

    def match(self, *args: Any, **kwargs: Any) -> bool:
        """``PurePath.match`` of the normalised path."""
        return self.normalised.match(*args, **kwargs)

    def is_relative_to(self, *args: Any, **kwargs: Any) -> bool:
        """``PurePath.is_relative_to`` of the normalised path."""
        return self.normalised.is_relative_to(*args, **kwargs)

    def relative_to(self, *args: Any, **kwargs: Any) -> PurePosixPath:  # type: ignore[override]  # a plain path, not Self
        """``PurePath.relative_to`` of the normalised path."""
        return self.normalised.relative_to(*args, **kwargs)

    def full_match(self, *args: Any, **kwargs: Any) -> bool:
        """``PurePath.full_match`` (3.13+) of the normalised path."""
        return bool(getattr(self.normalised, "full_match")(*args, **kwargs))


def normal(path: PurePath) -> PurePath:
    return path.normalised if isinstance(path, ExactPath) else path


def exact_path(text: str) -> PurePosixPath:
    """The path named by ``text``, whose ``str()`` and ``os.fspath()`` are exactly ``text``.

    A plain ``PurePosixPath`` when ``text`` is already pathlib's normal form
    (the common case, and the cheapest), else an :class:`ExactPath`.
    """
    path = PurePosixPath(text)
    return path if str(path) == text else ExactPath(text)


def path_in(value: Any) -> Any:
    """Accept str, bytes or path objects; refuse the empty path; keep the exact text.

    ``PurePosixPath("")`` is ``"."``, which would silently turn a call that
    must fail (``open("")``) into one on the working directory.
    """
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if value == "":
        raise ValueError("a path must not be empty")
    return exact_path(value) if isinstance(value, str) else value


def check_fs_path(path: PurePosixPath) -> PurePosixPath:
    raw = os.fsencode(str(path))
    if b"\0" in raw:
        raise ValueError("a path must not contain NUL")
    if len(raw) > PATH_MAX_BYTES:
        raise ValueError(f"a path is at most {PATH_MAX_BYTES} bytes")
    return path
