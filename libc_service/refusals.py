"""Count what the policy refused, and say it once per rule when the run ends.

Under ``--sandbox`` a refused call reaches the user as the program's own
symptom ("Unknown <unknown@...>", "cannot create out.txt"), far from the
rule that caused it. :class:`RefusalReport` is a router observer that
counts every call the policy answered with a refusing errno, by function,
rule and errno, and :meth:`RefusalReport.lines` turns the counts into one
line each, naming the tree the refused paths share::

    refused 12× chmod beneath /work by default (EPERM)

A call the policy forwarded and the kernel then refused (``EACCES``,
``EPERM``, ``EROFS``) is counted too when the shim reports what forwarded
calls returned (``spawn(..., reports=True)``, as ``run --sandbox`` does)::

    refused 2× open beneath /etc after FORWARD (EACCES)
    refused 12× chmod beneath /work by the sandbox, metadata=False (EPERM)

Landlock's own refusals are counted when the kernel logs them
(:meth:`RefusalReport.watch_landlock`, :mod:`libc_service.landlock_audit`)::

    refused 3× open beneath /etc by Landlock (fs.read_file)

and otherwise the report ends with one line saying why they are not; the
seccomp filter's refusals are not counted.
"""

from __future__ import annotations

import collections
import errno as errno_module
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .catalogue import METADATA_FUNCTIONS
from .router import Decision
from .slavepath import printable

if TYPE_CHECKING:
    from .landlock_audit import AccessRecord, LandlockDenials

__all__ = ["REFUSING_ERRNOS", "RefusalReport"]

#: Errnos that mean "not allowed" rather than "not there".
REFUSING_ERRNOS = frozenset(
    {
        errno_module.EPERM,
        errno_module.EACCES,
        errno_module.EROFS,
        errno_module.ENETUNREACH,
        errno_module.ECONNREFUSED,
        errno_module.EADDRNOTAVAIL,
    }
)
#: Errnos by which the kernel refuses a call the policy forwarded (not "unreachable", "refused by the peer").
KERNEL_REFUSING_ERRNOS = frozenset({errno_module.EPERM, errno_module.EACCES, errno_module.EROFS})
#: The rule a kernel's refusal is counted under.
_AFTER_FORWARD = "FORWARD"
_PATH_FIELDS = ("path", "path1")
#: Kernel refusals kept for matching with Landlock's records; beyond this they are counted at once.
_MAX_KERNEL_REFUSALS = 65536


def _path_text(decision: Decision) -> str | None:
    request = decision.request
    path = next((getattr(request, name) for name in _PATH_FIELDS if hasattr(request, name)), None)
    return None if path is None else os.fspath(path)


def _absolute(decision: Decision) -> str | None:
    """The refused path as the kernel names it in its records: absolute, normalised (else as sent)."""
    text = _path_text(decision)
    if text is None or text.startswith("/"):
        return None if text is None else os.path.normpath(text)
    directory = getattr(decision, "directory", None)  # named by the transport, when it could
    return os.path.normpath(os.path.join(directory, text)) if directory else text


@dataclass
class _Tally:
    count: int = 0
    #: The common directory of the refused paths so far ("" before the first).
    beneath: str | None = None
    paths: bool = False


@dataclass
class RefusalReport:
    """A router observer tallying refusals by (function, rule, errno)."""

    tallies: dict[tuple[str, str, int], _Tally] = field(default_factory=dict)
    #: The processes that asked the master: the slave's tree, whose Landlock domains are reported.
    pids: set[int] = field(default_factory=set)
    #: The reader of Landlock's audit records, while it runs.
    landlock: LandlockDenials | None = None
    #: Why Landlock's own refusals are not reported ("" when they are, or were not asked for).
    landlock_unavailable: str = ""
    #: The sandbox refuses metadata changes to the program (``Sandbox(metadata=False)``): a
    #: forwarded ``chmod``/``chown``/``utimens`` that failed with ``EPERM`` is the sandbox's refusal.
    metadata_refused: bool = False
    #: Forwarded calls the kernel refused, with their absolute path when known: counted by :meth:`lines`.
    kernel_refusals: list[tuple[tuple[str, str, int], str | None]] = field(default_factory=list)

    def watch_landlock(self) -> None:
        """Start reading Landlock's denials from the kernel's audit log, until :meth:`lines`.

        When they cannot be read (no audit, audit disabled, no
        ``CAP_AUDIT_READ``, Landlock ABI < 7) the reason is kept and
        :meth:`lines` says it; the run goes on. Nothing of the system's
        audit configuration is changed.
        """
        from .landlock_audit import AuditUnavailable, LandlockDenials

        reader = LandlockDenials()
        try:
            reader.start()
        except AuditUnavailable as exc:
            self.landlock_unavailable = str(exc)
            return
        self.landlock = reader

    def __call__(self, decision: Decision) -> None:
        self.pids.add(decision.request.pid)
        if decision.outcome == "forward" and decision.result is not None:
            if decision.errno not in KERNEL_REFUSING_ERRNOS:
                return
            # The slave's own call, refused by the kernel: kept apart until
            # :meth:`lines`, where Landlock's records may explain it.
            if len(self.kernel_refusals) < _MAX_KERNEL_REFUSALS:
                self.kernel_refusals.append(
                    ((decision.request.function, _AFTER_FORWARD, decision.errno), _absolute(decision))
                )
            else:
                self._count((decision.request.function, _AFTER_FORWARD, decision.errno), _path_text(decision))
            return
        if decision.outcome != "error" or decision.errno not in REFUSING_ERRNOS:
            return
        self._count((decision.request.function, decision.route, decision.errno), _path_text(decision))

    def _count(self, key: tuple[str, str, int], text: str | None) -> None:
        tally = self.tallies.setdefault(key, _Tally())
        tally.count += 1
        if text is None:
            return
        if not text.startswith("/"):
            text = "."  # relative to the slave's working directory
        directory = text if text in ("/", ".") else os.path.dirname(text.rstrip("/")) or "/"
        if tally.beneath is None:
            tally.beneath = directory
        elif tally.beneath != directory:
            try:
                tally.beneath = os.path.commonpath([tally.beneath, directory])
            except ValueError:  # an absolute and a relative path
                tally.beneath = "/"

    def lines(self, *, failed: bool = False) -> list[str]:
        """One line per (function, rule, errno), most frequent first; then Landlock's.

        Stops the Landlock reader, if one runs, once the records still on
        their way have arrived. Without one, says why — only where the
        missing lines could matter: the program ran and asked the master
        something, and it ``failed`` (a non-zero status) or other refusals
        are listed. A clean run stays quiet, and a run that failed to start
        ends with its error alone.
        """
        landlock: list[AccessRecord] = []
        if self.landlock is not None:
            # Each refusal the shim reported may be Landlock's: wait for their records (a loaded
            # machine delivers them late), a little longer than for a quiet moment alone.
            expected = sum(1 for key, _ in self.kernel_refusals if key[2] == errno_module.EACCES)
            self.landlock.stop(expected=expected, limit=3.0 if expected else 1.0)
            landlock = self.landlock.denials(self.pids | {os.getpid()})  # the slave is our child
        # A forwarded call Landlock refused is Landlock's line, not also an "after FORWARD" one.
        explained = collections.Counter(record.path for record in landlock if record.path)
        for key, path in self.kernel_refusals:
            if key[2] == errno_module.EACCES and path is not None and explained[path] > 0:
                explained[path] -= 1
                continue
            self._count(key, path)
        self.kernel_refusals.clear()
        out = []
        for (function, route, code), tally in sorted(self.tallies.items(), key=lambda item: -item[1].count):
            where = f" beneath {printable(tally.beneath)}" if tally.beneath else ""
            name = errno_module.errorcode.get(code, str(code))
            if route != _AFTER_FORWARD:
                how = f"by {route}"
            elif self.metadata_refused and code == errno_module.EPERM and function in METADATA_FUNCTIONS:
                how = "by the sandbox, metadata=False"
            else:
                how = "after FORWARD"
            out.append(f"refused {tally.count}× {function}{where} {how} ({name})")
        if self.landlock is not None:
            from .landlock_audit import denial_lines

            out += denial_lines(landlock)
            if self.landlock.lost:
                out.append(f"Landlock's refusals may be undercounted: {self.landlock.lost} audit reads overflowed")
        elif self.landlock_unavailable and self.pids and (failed or out):
            out.append(f"Landlock's own refusals are not reported: {self.landlock_unavailable}")
        return out
