"""Run unittest names and write one JSON line per test case and outcome.

The exactness oracle (``bench/oracle.py``) runs this script natively and as a
slave of libc-service, then compares outcomes per test id. Outcomes are taken
from unittest's result callbacks, not from the text output, so a test that
prints, a changed message or a different traceback cannot shift the
comparison; only what unittest decided counts.

Each line is written and flushed as it happens, so a run that crashes or is
killed on timeout still leaves every finished test behind, and a ``start``
line names the test that was running::

    {"start": "test.test_os.FileTests.test_access"}
    {"id": "test.test_os.FileTests.test_access", "outcome": "pass", "time": 0.001}
    {"id": "setUpClass (test.test_x.T)", "outcome": "error", "detail": "..."}
    {"done": true, "run": 42}

Outcomes: ``pass``, ``fail``, ``error``, ``skip``, ``xfail`` (expected
failure), ``xpass`` (unexpected success). A test whose subtests failed is
``fail`` (or ``error``), as regrtest counts it.

    python bench/oracle_runner.py --out results.jsonl test.test_os test.test_glob.GlobTests
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import sys
import time
import traceback
import unittest
from types import TracebackType
from typing import IO, Any, TypeAlias

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

#: Severity when one test reports several things (subtests): the worst wins.
RANK = {"error": 5, "fail": 4, "xpass": 3, "pass": 2, "xfail": 1, "skip": 0}

#: Lines of a traceback kept in the record: enough to see where and what.
DETAIL_LINES = 6


def _case_id(test: unittest.TestCase) -> str:
    """The id of the test case itself, for a subtest too.

    A ``_SubTest`` reports ``id() + ' (i=1)'``; outcomes are compared per test
    case, so a subtest's result is folded into its case.
    """
    case = getattr(test, "test_case", None)
    if isinstance(case, unittest.TestCase):
        return case.id()
    return test.id()


def _tail(err: ExcInfo, label: str = "") -> str:
    if err[1] is None:
        return label
    lines = "".join(traceback.format_exception(err[1])).rstrip().splitlines()
    tail = "\n".join(lines[-DETAIL_LINES:])
    return f"{label}\n{tail}" if label else tail


class JsonLinesResult(unittest.TestResult):
    """Folds each test case's callbacks into one outcome line in ``out``."""

    def __init__(self, out: IO[str], test_timeout: float) -> None:
        super().__init__()
        self.out = out
        self.test_timeout = test_timeout
        self.current: dict[str, dict[str, Any]] = {}
        self.started: dict[str, float] = {}
        self.count = 0

    def _write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def _note(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        case = _case_id(test)
        if case not in self.started:
            # setUpModule/setUpClass/tearDown*Class errors and skips arrive on an
            # _ErrorHolder, outside startTest/stopTest, and so do skipped tests on
            # Python 3.12+: record them at once.
            record: dict[str, Any] = {"id": case, "outcome": outcome}
            if detail:
                record["detail"] = detail
            self._write(record)
            return
        state = self.current.setdefault(case, {"outcome": None, "detail": ""})
        if state["outcome"] is None or RANK[outcome] > RANK[state["outcome"]]:
            state["outcome"] = outcome
            if detail:
                state["detail"] = detail

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().startTest(test)
        case = test.id()
        self.started[case] = time.monotonic()
        self._write({"start": case})
        if self.test_timeout > 0:
            # A hung test ends the run with a stack dump on stderr; the
            # ``start`` line above names it.
            faulthandler.dump_traceback_later(self.test_timeout, exit=True)

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        if self.test_timeout > 0:
            faulthandler.cancel_dump_traceback_later()
        case = test.id()
        begun = self.started.pop(case, None)
        if begun is None:
            # Python 3.12+ reports a skipped class or method with addSkip and
            # stopTest but no startTest: _note has written it already.
            super().stopTest(test)
            return
        state = self.current.pop(case, {"outcome": None, "detail": ""})
        record: dict[str, Any] = {
            "id": case,
            # Every subtest passed and unittest did not call addSuccess: that only
            # happens when one of them was skipped.
            "outcome": state["outcome"] or "skip",
            "time": round(time.monotonic() - begun, 3),
        }
        if state["detail"]:
            record["detail"] = state["detail"]
        self._write(record)
        self.count += 1
        super().stopTest(test)

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        self._note(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # noqa: N802
        self._note(test, "fail", _tail(err))

    def addError(self, test: unittest.TestCase, err: ExcInfo) -> None:  # noqa: N802
        self._note(test, "error", _tail(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        self._note(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # noqa: N802
        self._note(test, "xfail")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        self._note(test, "xpass")

    def addSubTest(  # noqa: N802
        self, test: unittest.TestCase, subtest: unittest.TestCase, err: ExcInfo | None
    ) -> None:
        if err is None:
            return
        failed = isinstance(err[1], test.failureException)
        self._note(test, "fail" if failed else "error", _tail(err, subtest.id()))


def _unloadable(suite: unittest.TestSuite | unittest.TestCase) -> bool:
    """Whether the loader gave back its stand-in for a name it could not find."""
    if isinstance(suite, unittest.TestSuite):
        return any(_unloadable(test) for test in suite)
    return type(suite).__name__ == "_FailedTest"


def _without(suite: unittest.TestSuite, excluded: list[str]) -> unittest.TestSuite:
    """``suite`` less the test cases whose id starts with one of ``excluded``."""
    kept = unittest.TestSuite()
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            kept.addTest(_without(test, excluded))
        elif not test.id().startswith(tuple(excluded)):
            kept.addTest(test)
    return kept


def _configure_support(resources: list[str]) -> None:
    """Set ``test.support`` as regrtest would without ``-u``.

    Outside regrtest ``use_resources`` is None, which *enables* every
    resource (network, cpu, largefile...). The oracle wants the ordinary,
    bounded set, the same in every configuration.
    """
    support: Any = importlib.import_module("test.support")
    support.use_resources = list(resources)


def main(argv: list[str] | None = None) -> int:
    """Load the names, run them with :class:`JsonLinesResult`, exit 0 even on failures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to append outcomes to")
    parser.add_argument("--use", default="", help="comma-separated test.support resources to enable")
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=0.0,
        help="seconds one test case may take before the run is ended with a stack dump (0: none)",
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="PREFIX", help="leave out test ids starting with PREFIX"
    )
    parser.add_argument("names", nargs="+", help="unittest names: test.test_os, test.test_os.FileTests, ...")
    args = parser.parse_args(argv)

    _configure_support([r for r in args.use.split(",") if r])
    with open(args.out, "a", encoding="utf-8") as out:
        result = JsonLinesResult(out, args.test_timeout)
        for name in args.names:
            try:
                suite = unittest.defaultTestLoader.loadTestsFromName(name)
            except Exception as exc:  # noqa: BLE001 - any import failure is an outcome
                result._write({"id": f"load ({name})", "outcome": "error", "detail": repr(exc)})
                continue
            if _unloadable(suite):
                # The loader turns a missing module, class or method into a test
                # that fails when run; say which name it was instead.
                result._write(
                    {
                        "id": f"load ({name})",
                        "outcome": "error",
                        "detail": f"{name}: no such module, class or test in this Python's test package",
                    }
                )
                continue
            if args.exclude:
                suite = _without(suite, args.exclude)
            suite.run(result)
        result._write({"done": True, "run": result.count})
    return 0


if __name__ == "__main__":
    # Run as a script, this directory is sys.path[0]; drop it so nothing here
    # can shadow a module the tests import.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main())
