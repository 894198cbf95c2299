#!/usr/bin/env python3
"""Soak: one master under load, hostile sessions and killed slaves, for a while.

One ``Router`` on one event loop serves, all at once and for ``--duration``
seconds:

- **load**: ``--processes`` copies of ``tests/c/load_stat`` (``--threads``
  threads × ``--calls`` stat calls each) through the real shim, started with
  ``spawn()`` and restarted as they finish; every answer is checked by the
  caller (see ``tests/test_load.py``);
- **killed slaves**: every ``--kill-every`` seconds one running load process
  is SIGKILLed mid-call — in turn from outside, at a moment the master does
  not choose, and from inside the load handler while the master answers
  it — and every few seconds a hostile child process (``tests/hostile.py``,
  valid calls with descriptors of every kind) too;
- **hostile sessions**: ``--fuzz-threads`` threads of raw-socket hostile
  slaves (``tests/hostile.py``: mutated messages, random bytes, lying
  lengths, descriptor floods, hang-ups), some cut from another thread;
- **a well-behaved session**: a Python ``Slave`` checking every answer.

Every ``--interval`` seconds it prints calls/s, hostile messages/s,
sessions, the process's descriptor count, RSS and tasks; at the end a
summary, and exit status 1 if anything went wrong (a violation, a wrong or
lost answer, a crashed session, a descriptor not returned, a silence of the
well-behaved session over 2 s, a traceback or error in the master's log —
the loop's "Exception in callback" included — other than the hostile
policy's deliberately buggy handler, an exception in a thread or a
destructor).

    python bench/soak.py                       # 60 s, uvloop, sequential router
    python bench/soak.py --duration 600 --concurrent --loop asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import hostile  # noqa: E402

#: What the hostile policy's deliberately buggy handler raises (``/fuzz-ok/raise``):
#: the router logs it with its traceback, by design.
_DELIBERATE = "a buggy handler"
from libc_service import PASS, Errno, Master, Router, Slave, SlaveProcess, Stat, deny, spawn  # noqa: E402
from libc_service.protocol.requests import StatRequest  # noqa: E402

OUT = ROOT / "bench" / "out"
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
_INO_SALT = 0x9E3779B97F4A7C15


def fnv1a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & _MASK64
    return value


def build_load_stat() -> Path:
    source = ROOT / "tests" / "c" / "load_stat.c"
    target = OUT / "load_stat"
    OUT.mkdir(exist_ok=True)
    if not target.exists() or source.stat().st_mtime > target.stat().st_mtime:
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(target), str(source)], check=True)
    return target


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_table() -> dict[int, str]:
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # listdir's own
    return table


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LogWatch(logging.Handler):
    """Every log record at ERROR or above, or carrying a traceback, is a
    problem, except the deliberate handler failure. The loop's own reports
    (``Exception in callback``, ``Task exception was never retrieved``) come
    through the ``asyncio`` logger, so a reader callback that raised is seen
    here; the console handler shows only CRITICAL records, as before."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.deliberate = 0
        self.unexpected: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and not record.exc_info:
            return
        with self.lock_:
            if self._deliberate(record):
                self.deliberate += 1
            else:
                self.unexpected.append(logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record))

    @staticmethod
    def _deliberate(record: logging.LogRecord) -> bool:
        """The buggy handler's failure: logged once with its traceback, then
        counted again at 10, 100, 1000... occurrences (libc_service.protocol.outcomes.BugLog)."""
        if record.name != "libc_service.policy.router":
            return False
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            return isinstance(error, RuntimeError) and str(error) == _DELIBERATE
        args = record.args if isinstance(record.args, tuple) else ()
        return (
            str(record.msg).startswith("handler %s has failed")
            and len(args) >= 4
            and args[2] == "RuntimeError"
            and str(args[3]).endswith("hostile.py")
        )

    def uncaught(self, what: str, error: BaseException | None) -> None:
        """An exception in a thread or a destructor (nobody's log)."""
        with self.lock_:
            self.unexpected.append(f"{what}: {error!r}")


@dataclass
class Figures:
    """Everything counted during the soak (updated from the loop and from threads)."""

    decisions: int = 0
    load_calls: int = 0
    load_misattributed: int = 0
    load_runs: int = 0
    load_ok_calls: int = 0
    load_misrouted: int = 0
    load_errors: int = 0
    load_failed_runs: list[str] = field(default_factory=list)
    load_killed: int = 0
    load_killed_in_handler: int = 0
    load_sessions: int = 0
    children_killed: int = 0
    children_messages: int = 0
    good_rounds: int = 0
    good_wrong: list[str] = field(default_factory=list)
    good_longest_silence: float = 0.0
    crashes: list[str] = field(default_factory=list)
    fuzz: hostile.Tally = field(default_factory=hostile.Tally)


class Soak:
    def __init__(self, args: argparse.Namespace, log: LogWatch) -> None:
        self.args = args
        self.log = log
        self.figures = Figures()
        #: Load processes the load handler SIGKILLs at their next call.
        self.kill_in_handler: set[int] = set()
        self.stop = threading.Event()
        self.program = build_load_stat()
        self.running: set[SlaveProcess] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.router = self._router()
        self.live: list[hostile.Session] = []
        self.live_lock = threading.Lock()
        self.first_snapshot: tracemalloc.Snapshot | None = None

    # ---------------------------------------------------------- the policy

    def _router(self) -> Router:
        router = Router(default=deny(errno.EPERM), concurrent=self.args.concurrent)
        figures = self.figures
        kill_in_handler = self.kill_in_handler

        @router.on("stat")
        def load(request: StatRequest) -> Any:
            """The load programs' paths: a fake file computed from the path."""
            raw = os.fsencode(str(request.path))
            if not raw.startswith(b"/lcs-load/"):
                return PASS
            _, _, pid, tid, _thread, call = raw.split(b"/")
            figures.load_calls += 1
            if request.pid in kill_in_handler:
                # Killed while the master answers it (in the reader callback
                # with the sequential router): its queued calls then fail.
                kill_in_handler.discard(request.pid)
                figures.load_killed_in_handler += 1
                os.kill(request.pid, signal.SIGKILL)
            if (int(pid), int(tid)) != (request.pid, request.tid):
                figures.load_misattributed += 1
                raise Errno(errno.EXDEV)
            digest = fnv1a(raw)
            return Stat(size=digest & _MASK63, ino=digest ^ _INO_SALT, nlink=int(call) + 1, mode=0o640, type="regular")

        hostile.fuzz_router(router=router)

        @router.observe
        def count(decision: Any) -> None:
            figures.decisions += 1

        return router

    def serve(self) -> tuple[Future[None], socket.socket]:
        assert self.loop is not None
        master, theirs = Master.pair()
        return asyncio.run_coroutine_threadsafe(self.router.serve(master), self.loop), theirs

    # ---------------------------------------------------------------- load

    async def load_slot(self) -> None:
        args = self.args
        while not self.stop.is_set():
            async with spawn(
                [str(self.program), str(args.threads), str(args.calls)],
                self.router,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ) as process:
                self.running.add(process)
                try:
                    out, err = await process.communicate()
                    status = await process.wait()
                finally:
                    self.running.discard(process)
                    self.kill_in_handler.discard(process.pid)
            self.figures.load_sessions += process.sessions_started
            if status == 128 + signal.SIGKILL:
                self.figures.load_killed += 1
                continue
            self.figures.load_runs += 1
            counts = dict(item.split("=") for item in out.decode().split()) if out else {}
            self.figures.load_ok_calls += int(counts.get("ok", 0))
            self.figures.load_misrouted += int(counts.get("misrouted", 0))
            self.figures.load_errors += int(counts.get("errors", 0))
            if status != 0:
                self.figures.load_failed_runs.append(f"status {status}: {out!r} {err[:300]!r}")

    async def load_killer(self) -> None:
        rnd = random.Random(7)
        from_outside = True
        while not self.stop.is_set():
            await asyncio.sleep(self.args.kill_every)
            if self.running:
                victim = rnd.choice(sorted(self.running, key=lambda p: p.pid))
                if from_outside:
                    victim.send_signal(signal.SIGKILL)
                else:
                    self.kill_in_handler.add(victim.pid)
                from_outside = not from_outside

    # ------------------------------------------------------------- hostile

    def fuzz_thread(self, seed: int) -> None:
        rnd = random.Random(seed)
        while not self.stop.is_set():
            served, theirs = self.serve()
            session = hostile.Session(theirs)
            with self.live_lock:
                self.live.append(session)
            try:
                session.play(hostile.hostile_stream(rnd, valid=rnd.choice([0.3, 0.8, 0.95])))
            finally:
                with self.live_lock:
                    self.live.remove(session)
            try:
                served.result(hostile.PATIENCE)
            except BaseException as exc:  # noqa: BLE001 - a crash of serve, to report
                self.figures.crashes.append(repr(exc))
            self.figures.fuzz.add(session.tally)

    def cutter_thread(self) -> None:
        rnd = random.Random(11)
        while not self.stop.wait(rnd.uniform(0.001, 0.05)):
            with self.live_lock:
                victim = rnd.choice(self.live) if self.live else None
            if victim is not None:
                victim.kill()
                with self.figures.fuzz.lock:
                    self.figures.fuzz.killed += 1

    def child_thread(self) -> None:
        rnd = random.Random(13)
        seed = 0
        while not self.stop.wait(rnd.uniform(0.5, 3.0)):
            seed += 1
            served, theirs = self.serve()
            with theirs:
                child = subprocess.Popen(
                    [sys.executable, str(Path(hostile.__file__).resolve()), str(theirs.fileno()), str(seed)],
                    pass_fds=[theirs.fileno()],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            assert child.stdout is not None
            child.stdout.readline()  # it is talking to the master
            time.sleep(rnd.uniform(0.1, 1.5))
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate()
            reports = [line for line in out.decode().splitlines() if line.startswith("sent=")]
            if reports:
                self.figures.children_messages += int(reports[-1].split()[0].removeprefix("sent="))
            self.figures.children_killed += 1
            try:
                served.result(hostile.PATIENCE)
            except BaseException as exc:  # noqa: BLE001
                self.figures.crashes.append(f"child session: {exc!r}")

    # ---------------------------------------------------------------- good

    def good_thread(self) -> None:
        served, theirs = self.serve()
        last = time.monotonic()
        with Slave(theirs) as slave:
            i = 0
            while not self.stop.is_set():
                i += 1
                path = f"/fuzz-ok/good/{i}"
                reply = slave.call("stat", path=path)
                if (reply.result, reply.errno, reply.forwarded) != (hostile.stat_of(path.encode()), 0, False):
                    self.figures.good_wrong.append(f"stat {path}: {reply}")
                reply = slave.call("open", path="/dev/null", flags={"read_only"})
                if len(reply.fds) != 1 or reply.errno:
                    self.figures.good_wrong.append(f"open: {reply}")
                for fd in reply.fds:
                    os.close(fd)
                now = time.monotonic()
                self.figures.good_longest_silence = max(self.figures.good_longest_silence, now - last)
                last = now
                self.figures.good_rounds += 1
                time.sleep(0.001)
        try:
            served.result(hostile.PATIENCE)
        except BaseException as exc:  # noqa: BLE001
            self.figures.crashes.append(f"good session: {exc!r}")

    # ------------------------------------------------------------- running

    async def report(self, started: float) -> None:
        f = self.figures
        previous = (time.monotonic(), 0, 0)
        print(
            f"{'t(s)':>6} {'calls/s':>9} {'hostile/s':>9} {'load':>5} {'fuzz':>6} {'killed':>6} "
            f"{'fds':>5} {'rss MiB':>8} {'tasks':>6}",
            flush=True,
        )
        while not self.stop.is_set():
            await asyncio.sleep(self.args.interval)
            if self.args.tracemalloc and self.first_snapshot is None:
                self.first_snapshot = tracemalloc.take_snapshot()
            now = time.monotonic()
            decisions, sent = f.decisions, f.fuzz.sent
            rate = (decisions - previous[1]) / (now - previous[0])
            hostile_rate = (sent - previous[2]) / (now - previous[0])
            previous = (now, decisions, sent)
            print(
                f"{now - started:6.0f} {rate:9,.0f} {hostile_rate:9,.0f} {f.load_runs + f.load_killed:5} "
                f"{f.fuzz.sessions:6} {f.load_killed + f.children_killed + f.fuzz.killed:6} "
                f"{fd_count():5} {rss_kib() / 1024:8.1f} {len(asyncio.all_tasks()):6}",
                flush=True,
            )

    async def main(self) -> int:
        args = self.args
        self.loop = asyncio.get_running_loop()
        # Warm up, then take the baseline: uvloop keeps a pipe from its first
        # subprocess on, and one /dev/null from its first stdin=DEVNULL on.
        warm_up = await asyncio.create_subprocess_exec(
            "true", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        await warm_up.communicate()
        base_table, base_rss = fd_table(), rss_kib()
        base_fds = len(base_table)
        started = time.monotonic()
        threads = [
            threading.Thread(target=self.fuzz_thread, args=(seed,), daemon=True) for seed in range(args.fuzz_threads)
        ]
        threads += [
            threading.Thread(target=self.cutter_thread, daemon=True),
            threading.Thread(target=self.child_thread, daemon=True),
            threading.Thread(target=self.good_thread, daemon=True),
        ]
        for thread in threads:
            thread.start()
        tasks = [asyncio.ensure_future(self.load_slot()) for _ in range(args.processes)]
        tasks += [asyncio.ensure_future(self.load_killer()), asyncio.ensure_future(self.report(started))]
        await asyncio.sleep(args.duration)
        self.stop.set()
        await asyncio.gather(*tasks[: args.processes])  # the programs finish their runs
        for task in tasks[args.processes :]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for thread in threads:
            await asyncio.to_thread(thread.join, 60)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.1)
        if self.first_snapshot is not None:
            growth = tracemalloc.take_snapshot().compare_to(self.first_snapshot, "lineno")
            print("\nlargest allocation growth since the first report:")
            for stat in growth[:12]:
                print(f"  {stat}")
        end_table, end_rss = fd_table(), rss_kib()
        end_fds = len(end_table)
        for fd, what in sorted(end_table.items()):
            if base_table.get(fd) != what:
                print(f"descriptor {fd} -> {what} was not open at the start", flush=True)
        return self.summary(elapsed, base_fds, end_fds, base_rss, end_rss)

    def summary(self, elapsed: float, base_fds: int, end_fds: int, base_rss: int, end_rss: int) -> int:
        f = self.figures
        fz = f.fuzz
        print()
        print(
            f"duration          {elapsed:.1f} s ({self.args.loop}, "
            f"{'concurrent' if self.args.concurrent else 'sequential'} router)"
        )
        print(f"master decisions  {f.decisions:,} ({f.decisions / elapsed:,.0f}/s)")
        print(
            f"load              {f.load_runs} runs of {self.args.threads}x{self.args.calls} completed, "
            f"{f.load_killed} SIGKILLed mid-run ({f.load_killed_in_handler} by the handler answering them); "
            f"{f.load_calls:,} calls answered by the master, "
            f"{f.load_ok_calls:,} checked ok by completed runs; misrouted {f.load_misrouted}, "
            f"errors {f.load_errors}, misattributed {f.load_misattributed}, failed runs {len(f.load_failed_runs)}"
        )
        print(f"hostile           {fz.summary()}")
        print(f"                  by kind {dict(sorted(fz.by_how.items()))}")
        print(f"hostile children  {f.children_killed} SIGKILLed after {f.children_messages:,} messages")
        print(
            f"sessions          {f.load_sessions + fz.sessions + f.children_killed + 1:,} "
            f"({f.load_sessions} load, {fz.sessions} hostile, {f.children_killed} children, 1 good)"
        )
        print(
            f"good session      {f.good_rounds:,} rounds, longest silence {f.good_longest_silence * 1000:.0f} ms, "
            f"{len(f.good_wrong)} wrong"
        )
        print(
            f"log               {len(self.log.unexpected)} errors or tracebacks "
            f"({self.log.deliberate} deliberate handler failures not counted)"
        )
        print(f"descriptors       {base_fds} at start, {end_fds} at the end")
        print(f"RSS               {base_rss / 1024:.1f} MiB at start, {end_rss / 1024:.1f} MiB at the end")
        problems = [*f.crashes, *fz.violations, *f.good_wrong, *f.load_failed_runs, *self.log.unexpected]
        if f.load_misrouted or f.load_errors or f.load_misattributed:
            problems.append("load answers wrong")
        if end_fds != base_fds:
            problems.append(f"descriptors {base_fds} -> {end_fds}")
        if f.good_longest_silence > 2.0:
            problems.append(f"the good session waited {f.good_longest_silence:.1f} s")
        for problem in problems[:20]:
            print("PROBLEM:", problem)
        print("result            " + ("FAILED" if problems else "ok: 0 crashes, 0 violations, 0 leaked descriptors"))
        return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--concurrent", action="store_true", help="Router(concurrent=True)")
    parser.add_argument("--processes", type=int, default=4, help="load programs running at once")
    parser.add_argument("--threads", type=int, default=8, help="threads per load program")
    parser.add_argument("--calls", type=int, default=2000, help="stat calls per load thread")
    parser.add_argument("--kill-every", type=float, default=2.0, help="SIGKILL a load program this often (s)")
    parser.add_argument("--fuzz-threads", type=int, default=2, help="threads of hostile sessions")
    parser.add_argument("--interval", type=float, default=5.0, help="report every N seconds")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace allocations; print the largest growth from the first report to the end",
    )
    args = parser.parse_args(argv)
    # Every rejected message logs a warning by design: the console shows only
    # CRITICAL; errors and tracebacks are counted (LogWatch) and fail the soak.
    log = LogWatch()
    console = logging.StreamHandler()
    console.setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.ERROR, handlers=[console, log])
    threading.excepthook = lambda hook: log.uncaught(f"thread {hook.thread and hook.thread.name}", hook.exc_value)
    sys.unraisablehook = lambda hook: log.uncaught(f"unraisable in {hook.object!r}", hook.exc_value)
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    if args.tracemalloc:
        tracemalloc.start()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(Soak(args, log).main())


if __name__ == "__main__":
    raise SystemExit(main())
