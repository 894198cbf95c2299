"""perform() is the kernel: every case of the table agrees with its native run.

Each case of ``cases_*.py`` runs natively and as a slave of a master whose
every handler is ``return perform(request)``, on the shim transport and on
the seccomp transport, as root, as root with every capability dropped and
as ``nobody`` (only as the test's own user when the test is not root). What
the case recorded (results, errnos, descriptor numbers, stat fields), its
exit status and the tree it left must be the native run's. A difference
known today is an ``xfail(strict=True)`` with its reason (the case's
``differs``): fixing it makes that test fail until the entry goes.

Add a case: a function of a ``Probe`` in a ``cases_*.py`` module, decorated
with ``@case(...)`` (see ``casebook.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance.casebook import load_cases
from conformance.runner import TRANSPORTS, Outcome, differences, run_table, runs
from shimtools import needs_shim

from libc_service.seccomp.availability import seccomp_unavailable

CASES = load_cases()
RUNS = runs()

pytestmark = [pytest.mark.slow, needs_shim, pytest.mark.timeout(900)]

Table = dict[str, dict[tuple[str, str], Outcome]]


@pytest.fixture(scope="module")
def table() -> Iterator[Table]:
    """Every case natively and in each transport that works here (each configuration run once)."""
    base = Path(tempfile.mkdtemp(prefix="conformance-")) / "cases"
    base.parent.chmod(0o755)
    outcomes: Table = {"native": run_table(base, "native", RUNS)}
    outcomes["shim"] = run_table(base, "shim", RUNS)
    if seccomp_unavailable() is None:
        outcomes["seccomp"] = run_table(base, "seccomp", RUNS)
    try:
        yield outcomes
    finally:
        base.parent.rmdir()


def _params() -> list[object]:
    params = []
    for transport in TRANSPORTS:
        for name, identity in RUNS:
            reason = CASES[name].known_difference(transport, identity)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(transport, name, identity, marks=marks, id=f"{transport}-{name}-{identity}"))
    return params


def test_native_runs_are_real(table: Table) -> None:
    """Every case ran to its end natively (a case that raised compares nothing)."""
    broken = {key: outcome.seen[-1] for key, outcome in table["native"].items() if outcome.status != 0}
    assert not broken, broken


@pytest.mark.parametrize(("transport", "name", "identity"), _params())
def test_case_agrees_with_native(table: Table, transport: str, name: str, identity: str) -> None:
    """The case saw, left and exited with exactly what it does natively."""
    if transport not in table:
        pytest.skip(f"seccomp user notification is unavailable: {seccomp_unavailable()}")
    native, other = table["native"][name, identity], table[transport][name, identity]
    found = differences(native, other)
    assert not found, "\n".join(found)
