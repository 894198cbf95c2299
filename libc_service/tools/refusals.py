"""Count what was refused, and say once per rule, naming what was refused, when the run ends.

Under ``--sandbox`` a refused call reaches the user as the program's own
symptom ("Unknown <unknown@...>", "cannot create out.txt"), far from the
rule that caused it. :class:`RefusalReport` is a router observer that
counts every call the policy answered with a refusing errno, by function,
rule and errno, and :meth:`RefusalReport.lines` turns the counts into one
line each, naming the files or addresses refused — the most frequent
first, then a count of the rest::

    refused 12× chmod by default (EPERM): /work/a (10×), /work/b, and 1 other
    refused 1× connect_inet by refuse_other_connects (ECONNREFUSED): 10.1.2.3:443

A handler that raised (a policy bug) failed its call with the router's
``error_errno``; that is a refusal too, and says so::

    refused 2× open by serve, which raised an exception (EPERM): /srv/a, /srv/b

A call the policy forwarded and the kernel then refused (``EACCES``,
``EPERM``, ``EROFS``) is counted too when the shim reports what forwarded
calls returned (``spawn(..., reports=True)``, as ``run --sandbox`` does):
that needs no audit, the program's own call told it::

    refused 2× open after FORWARD (EACCES): /etc/shadow, /root/.netrc
    refused 12× chmod by the sandbox, metadata=False (EPERM): /work/prog

Landlock's own refusals of what the shim does not see (an ``exec``, a
library the loader opens) are counted when the kernel logs them
(:meth:`RefusalReport.watch_landlock`, :mod:`libc_service.confinement.landlock_audit`)::

    refused 3× execve by Landlock (fs.execute): /usr/bin/make

and otherwise the report says why they are not, and reads what the
program's exit status tells: 126 and 127 are what a shell or the loader
answers for a program it could not execute or load.

Every structure here is bounded, whatever the program sends: the names
kept (:mod:`libc_service.policy.named_tally`), the processes remembered, the
forwarded refusals waiting for Landlock's records. Beyond the bounds
events are still counted, without their names.

With a ``record`` file every refusal is also written there as one JSON
object per line (see :data:`RECORD_FIELDS`).
"""

from __future__ import annotations

import errno as errno_module
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO

from libc_service.protocol.catalogue import INET6_FUNCTIONS, INET_FUNCTIONS, METADATA_FUNCTIONS
from libc_service.policy.named_tally import NameBudget, NamedTally
from libc_service.policy.router import Decision
from libc_service.policy.slavepath import printable

if TYPE_CHECKING:
    from libc_service.confinement.landlock_audit import AccessRecord, LandlockDenials

__all__ = ["KERNEL_REFUSING_ERRNOS", "RECORD_FIELDS", "REFUSING_ERRNOS", "RefusalReport", "refusal_target"]

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
_AFTER_FORWARD: Final = "FORWARD"
#: Who refused: the policy's rule, a handler that raised, the kernel after a forward, Landlock's audit record.
_POLICY, _FAILURE, _KERNEL, _LANDLOCK = "policy", "handler_failure", "kernel", "landlock"
_PATH_FIELDS = ("path", "path1")
#: Processes remembered (Landlock's records are those of their domains) — a program may claim any pid.
MAX_PIDS: Final = 1024
#: The keys of one line of the ``record`` file. ``by`` is ``policy`` (a rule refused),
#: ``handler_failure`` (a handler raised: the call got the router's ``error_errno``),
#: ``kernel`` (the policy forwarded, the program's own call failed with ``errno``) or
#: ``landlock`` (the kernel's audit record of a Landlock denial; a ``kernel`` line of the
#: same path may be the same refusal, seen from the program). ``target`` is the path,
#: ``address:port`` or name the call was about (``null`` when it names none).
RECORD_FIELDS: Final = ("by", "function", "target", "rule", "errno", "errno_name", "pid", "transport")


def _path_text(decision: Decision) -> str | None:
    request = decision.request
    path = next((getattr(request, name) for name in _PATH_FIELDS if hasattr(request, name)), None)
    return None if path is None else os.fspath(path)


def _absolute(decision: Decision) -> str | None:
    """The refused path as the kernel names it: absolute, normalised (else as sent)."""
    text = _path_text(decision)
    if text is None or text.startswith("/"):
        return None if text is None else os.path.normpath(text)
    if text.startswith("\0"):  # an abstract unix socket name
        return "@" + text[1:]
    directory = decision.directory  # named by the transport, when it could
    return os.path.normpath(os.path.join(directory, text)) if directory else text


def refusal_target(decision: Decision) -> str | None:
    """What ``decision``'s call was about, as a refusal names it.

    The absolute path (made absolute against the directory the transport
    named for a relative one), ``address:port`` (``[v6]:port``) for a
    connect or bind, the name for a lookup; ``None`` for a call that names
    nothing (``fchmod``).
    """
    request = decision.request
    function = request.function
    if function in INET_FUNCTIONS or function in INET6_FUNCTIONS:
        address = str(getattr(request, "address"))
        host = f"[{address}]" if function in INET6_FUNCTIONS else address
        return f"{host}:{getattr(request, 'port')}"
    if function == "getaddrinfo":
        node = getattr(request, "node", None)
        service = getattr(request, "service", None)
        return None if node is None and service is None else f"{node or ''}{':' + service if service else ''}"
    return _absolute(decision)


@dataclass
class RefusalReport:
    """A router observer tallying refusals by (function, rule, errno, who), naming what was refused."""

    #: Tallies by (function, rule, errno, who refused).
    tallies: dict[tuple[str, str, int, str], NamedTally] = field(default_factory=dict)
    #: Processes that asked the master (at most :data:`MAX_PIDS`): the slave's tree, whose Landlock domains count.
    pids: set[int] = field(default_factory=set)
    #: The reader of Landlock's audit records, while it runs.
    landlock: LandlockDenials | None = None
    #: Why Landlock's own refusals are not reported ("" when they are, or were not asked for).
    landlock_unavailable: str = ""
    #: The sandbox refuses metadata changes to the program (``Sandbox(metadata=False)``): a
    #: forwarded ``chmod``/``chown``/``utimens`` that failed with ``EPERM`` is the sandbox's refusal.
    metadata_refused: bool = False
    #: Where every refusal is written as a JSON line (``run --refusals FILE``), if anywhere.
    record: TextIO | None = None
    #: Forwarded calls the kernel refused, by (function, errno) and path, until :meth:`lines`
    #: matches them with Landlock's records (names within their own budget).
    kernel_refusals: dict[tuple[str, int], NamedTally] = field(default_factory=dict)
    #: Forwarded calls whose result the transport could not know (seccomp continues them in the kernel).
    unseen_results: dict[str, NamedTally] = field(default_factory=dict)
    _budget: NameBudget = field(default_factory=NameBudget)
    _pending_budget: NameBudget = field(default_factory=NameBudget)

    def watch_landlock(self) -> None:
        """Start reading Landlock's denials from the kernel's audit log, until :meth:`lines`.

        When they cannot be read (no audit, audit disabled, no
        ``CAP_AUDIT_READ``, Landlock ABI < 7) the reason is kept and
        :meth:`lines` says it; the run goes on. Nothing of the system's
        audit configuration is changed.
        """
        from libc_service.confinement.landlock_audit import AuditUnavailable, LandlockDenials

        reader = LandlockDenials()
        try:
            reader.start()
        except AuditUnavailable as exc:
            self.landlock_unavailable = str(exc)
            return
        self.landlock = reader

    def __call__(self, decision: Decision) -> None:
        request = decision.request
        if len(self.pids) < MAX_PIDS:
            self.pids.add(request.pid)
        if decision.outcome == "forward" and decision.result is None and decision.transport == "seccomp":
            function = decision.request.function
            self.unseen_results.setdefault(function, NamedTally(self._budget)).add(refusal_target(decision))
            return
        if decision.outcome == "forward" and decision.result is not None:
            if decision.errno not in KERNEL_REFUSING_ERRNOS:
                return
            # The program's own call, refused by the kernel: kept apart until
            # :meth:`lines`, where Landlock's records may explain it.
            target = refusal_target(decision)
            self._write(_KERNEL, decision, target, _AFTER_FORWARD)
            key = (request.function, decision.errno)
            self.kernel_refusals.setdefault(key, NamedTally(self._pending_budget)).add(target)
            return
        if decision.outcome == "failure":
            who = _FAILURE
        elif decision.outcome == "error" and decision.errno in REFUSING_ERRNOS:
            who = _POLICY
        else:
            return
        target = refusal_target(decision)
        self._write(who, decision, target, decision.route)
        self._count((request.function, decision.route, decision.errno, who), target)

    def _count(self, key: tuple[str, str, int, str], target: str | None, times: int = 1) -> None:
        self.tallies.setdefault(key, NamedTally(self._budget)).add(target, times)

    def _write(self, who: str, decision: Decision, target: str | None, rule: str) -> None:
        if self.record is None:
            return
        code = decision.errno
        self._write_line(
            {
                "by": who,
                "function": decision.request.function,
                "target": target,
                "rule": rule,
                "errno": code,
                "errno_name": errno_module.errorcode.get(code, str(code)),
                "pid": decision.request.pid,
                "transport": decision.transport,
            }
        )

    def _write_line(self, line: dict[str, Any]) -> None:
        assert self.record is not None
        try:
            self.record.write(json.dumps(line) + "\n")
        except (OSError, ValueError):  # a full disk, a closed file: the summary still comes
            self.record = None

    def _landlock_records(self) -> list[AccessRecord]:
        """Stop the audit reader once the records on their way arrived; the records of our tree."""
        if self.landlock is None:
            return []
        # Each refusal the shim reported may be Landlock's: wait for their records (a loaded
        # machine delivers them late), a little longer than for a quiet moment alone.
        expected = sum(tally.count for (_, code), tally in self.kernel_refusals.items() if code == errno_module.EACCES)
        self.landlock.stop(expected=expected, limit=3.0 if expected else 1.0)
        return self.landlock.denials(self.pids | {os.getpid()})  # the slave is our child

    def _settle_kernel_refusals(self, landlock: list[AccessRecord]) -> None:
        """Count the forwarded calls the kernel refused, but not those Landlock's records explain."""
        explained: dict[str, int] = {}
        for record in landlock:
            if record.path:
                explained[record.path] = explained.get(record.path, 0) + 1
        for (function, code), pending in self.kernel_refusals.items():
            key = (function, _AFTER_FORWARD, code, _KERNEL)
            for path, times in pending.names.items():
                if code == errno_module.EACCES:
                    matched = min(times, explained.get(path, 0))
                    explained[path] = explained.get(path, 0) - matched
                    times -= matched
                if times:
                    self._count(key, path, times)
            unnamed = pending.count - sum(pending.names.values())
            if unnamed:
                self._count(key, None, unnamed)
        self.kernel_refusals.clear()

    def lines(self, *, failed: bool = False, status: int | None = None, program: str | None = None) -> list[str]:
        """One line per (function, rule, errno), most frequent first; then Landlock's.

        Stops the Landlock reader, if one runs, once the records still on
        their way have arrived. Without one, says why — only where the
        missing lines could matter: the program ran and asked the master
        something, and it ``failed`` (a non-zero status) or other refusals
        are listed — and what the exit ``status`` says when it is a
        shell's or the loader's "could not execute" (of ``program``, the
        command's, or of a program it ran). A clean run stays
        quiet, and a run that failed to start ends with its error alone.
        """
        landlock = self._landlock_records()
        self._settle_kernel_refusals(landlock)
        out = []
        for (function, route, code, who), tally in sorted(self.tallies.items(), key=lambda item: -item[1].count):
            name = errno_module.errorcode.get(code, str(code))
            if who == _FAILURE:
                how = f"by {route}, which raised an exception"
            elif who == _POLICY:
                how = f"by {route}"
            elif self.metadata_refused and code == errno_module.EPERM and function in METADATA_FUNCTIONS:
                how = "by the sandbox, metadata=False"
            else:
                how = "after FORWARD"
            named = tally.named()
            out.append(f"refused {tally.count}× {function} {how} ({name})" + (f": {named}" if named else ""))
        if self.landlock is not None:
            out += self._landlock_lines(landlock)
            if self.landlock.lost:
                out.append(f"Landlock's refusals may be undercounted: {self.landlock.lost} audit reads overflowed")
            unkept = getattr(self.landlock, "unkept", 0)
            if unkept:
                out.append(
                    f"Landlock's refusals are undercounted: {unkept} audit records beyond the bound were not kept"
                )
        elif self.landlock_unavailable and self.pids and (failed or out):
            out.append(f"Landlock's own refusals are not reported: {self.landlock_unavailable}")
            for function, tally in sorted(self.unseen_results.items(), key=lambda item: -item[1].count):
                named = tally.named()
                out.append(
                    f"not known: the results of {tally.count}× {function} forwarded by the seccomp transport "
                    "(the kernel went on with them; it may have refused them)" + (f": {named}" if named else "")
                )
            out += _exit_status_lines(status, program)
        if self.record is not None:
            try:
                self.record.flush()
            except (OSError, ValueError):
                self.record = None
        return out

    def _landlock_lines(self, records: list[AccessRecord]) -> list[str]:
        """Landlock's records, one line per (call, blockers), naming the paths; also to ``record``."""
        tallies: dict[tuple[str, str], NamedTally] = {}
        for record in records:
            blockers = ",".join(record.blockers) or "?"
            tallies.setdefault((record.verb, blockers), NamedTally(self._budget)).add(record.path)
            if self.record is not None:
                self._write_line(
                    {
                        "by": _LANDLOCK,
                        "function": record.verb,
                        "target": record.path,
                        "rule": blockers,
                        "errno": None,
                        "errno_name": None,
                        "pid": None,
                        "transport": None,
                    }
                )
        out = []
        for (verb, blockers), tally in sorted(tallies.items(), key=lambda item: -item[1].count):
            named = tally.named()
            out.append(f"refused {tally.count}× {verb} by Landlock ({blockers})" + (f": {named}" if named else ""))
        return out


def _exit_status_lines(status: int | None, program: str | None) -> list[str]:
    """What a shell's or the loader's exit status says when Landlock's own refusals cannot be read."""
    who = f"the program ({printable(program)})" if program else "the program"
    if status == 126:
        return [
            f"{who} exited with status 126, a shell's 'cannot execute': under the sandbox only "
            "the program itself, what loading it needs and the allow_exec trees may be executed "
            "(run --exec PATH adds one)"
        ]
    if status == 127:
        return [
            f"{who} exited with status 127, a shell's 'not found' or the loader's 'cannot load a "
            "library': under the sandbox a library outside the system's library directories must be "
            "granted (run --read PATH or --exec PATH)"
        ]
    return []
