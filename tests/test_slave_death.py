"""Slaves SIGKILLed mid-call, hundreds of times, on both loops.

A slave's death is an ordinary event: whatever the master was doing at that
instant (answering in the reader callback, busy-polling, flushing a reply
that waited for room, running an async handler), the session ends quietly,
the master logs no traceback, every other session keeps being served, and
every descriptor the master held for the dead slave is closed.

Multithreaded victims (``tests/c/stat_threads``) keep several calls queued
on their channel, so after the kill the master still reads requests of a
process that is gone and its replies fail: the case that once closed the
socket under the reader callback. Some victims are killed from outside at
a random moment, some from inside a handler, in the middle of the callback
that answers them. A second program (a survivor) is served on the same
loop all along and must get every answer right.

Both loops always run, whatever ``cli_program._run_loop`` would pick.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from libc_service import FORWARD, Master, Router, Slave, Stat, spawn

from libc_service.protocol import wire_requests
from libc_service.protocol.requests import StatRequest
from shimtools import c_program, needs_shim  # noqa: F401 - c_program is a fixture


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

#: Kills per scenario (each loop runs three scenarios: hundreds per loop).
KILLS = int(os.environ.get("LCS_DEATH_KILLS", "100"))
#: Victims alive at once.
SLOTS = 4
VICTIM_THREADS = 8
VICTIM_PATH = "/lcs-death/victim"
SURVIVOR_PATH = "/lcs-death/survivor"
VICTIM_SIZE = 4242
SURVIVOR_SIZE = 1717
#: The survivor's runs: threads x calls, repeated until the victims are done.
SURVIVOR_THREADS = 4
SURVIVOR_CALLS = 300
#: The survivor left unanswered while this many victims died is a stalled session.
LONGEST_SILENCE = max(KILLS // 4, 8)


@dataclass
class Victim:
    """One victim's plan: how many of its calls are answered before the kill,
    and whether a handler kills it (while the master is answering it) or the
    test does (at whatever moment that turns out to be)."""

    kill_at: int
    from_handler: bool
    calls: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Death:
    """The policy of the scenario and what it saw."""

    mode: str
    victims: dict[int, Victim] = field(default_factory=dict)
    survivor_calls: int = 0
    #: Victims whose death the master has seen, and how many had when the survivor was last answered.
    victims_done: int = 0
    survivor_last: int = 0
    #: The most victims that died between two answers to the survivor (a count, not a clock).
    longest_silence: int = 0
    unexpected: list[str] = field(default_factory=list)

    def router(self) -> Router:
        router = Router(default=FORWARD, concurrent=self.mode == "concurrent")
        if self.mode == "sync":
            router.on("stat")(self.stat)
        else:

            async def stat_async(request: StatRequest) -> Any:
                """The same answers, decided by an async handler (the session's task)."""
                if request.tid % 2:
                    await asyncio.sleep(0)
                return self.stat(request)

            router.on("stat")(stat_async)
        return router

    def stat(self, request: StatRequest) -> Any:
        """A fake file for each program; the victim's handler may kill its caller."""
        path = str(request.path)
        if path == SURVIVOR_PATH:
            self.longest_silence = max(self.longest_silence, self.victims_done - self.survivor_last)
            self.survivor_last = self.victims_done
            self.survivor_calls += 1
            return Stat(size=SURVIVOR_SIZE, mode=0o644, type="regular")
        if path != VICTIM_PATH:
            self.unexpected.append(path)
            return FORWARD
        victim = self.victims.get(request.pid)
        if victim is not None:
            victim.calls += 1
            victim.arrived.set()
            if victim.from_handler and victim.calls == victim.kill_at:
                os.kill(request.pid, signal.SIGKILL)
        return Stat(size=VICTIM_SIZE, mode=0o644, type="regular")


def _warm_up(factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Spawn once before counting descriptors: uvloop keeps a pipe for the
    whole process from its first subprocess on (not a leak of ours)."""

    async def spawn_once() -> None:
        process = await asyncio.create_subprocess_exec("true", stdin=subprocess.DEVNULL)
        await process.wait()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(spawn_once())


async def _victim_slot(
    program: Path, death: Death, router: Router, rnd: random.Random, kills: list[int], statuses: list[int]
) -> None:
    while len(kills) < KILLS:
        kills.append(0)
        plan = Victim(kill_at=rnd.randint(1, 60), from_handler=rnd.random() < 0.5)
        argv = [str(program), str(VICTIM_THREADS), "1000000000", VICTIM_PATH, str(VICTIM_SIZE)]
        async with spawn(
            argv, router, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as process:
            death.victims[process.pid] = plan
            try:
                await asyncio.wait_for(plan.arrived.wait(), 30)
                if not plan.from_handler:
                    # Outside, at a moment the master does not choose.
                    await asyncio.sleep(rnd.uniform(0, 0.01))
                    process.kill()
                statuses.append(await asyncio.wait_for(process.wait(), 30))
                death.victims_done += 1
            finally:
                process.kill()
                del death.victims[process.pid]


async def _survivor(program: Path, router: Router, done: asyncio.Event, statuses: list[int]) -> None:
    argv = [str(program), str(SURVIVOR_THREADS), str(SURVIVOR_CALLS), SURVIVOR_PATH, str(SURVIVOR_SIZE)]
    while not done.is_set() or not statuses:
        async with spawn(
            argv, router, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process:
            out, err = await asyncio.wait_for(process.communicate(), 60)
            status = await process.wait()
        assert status == 0, f"the survivor got wrong answers: status {status}, {out!r} {err!r}"
        statuses.append(status)


async def _scenario(program: Path, death: Death) -> tuple[list[int], list[int]]:
    router = death.router()
    rnd = random.Random(f"{death.mode}-{KILLS}")
    kills: list[int] = []
    victim_statuses: list[int] = []
    survivor_statuses: list[int] = []
    done = asyncio.Event()
    survivor = asyncio.ensure_future(_survivor(program, router, done, survivor_statuses))
    try:
        await asyncio.gather(
            *(
                _victim_slot(program, death, router, random.Random(rnd.random()), kills, victim_statuses)
                for _ in range(SLOTS)
            )
        )
    finally:
        done.set()
        await asyncio.wait_for(survivor, 60)
    return victim_statuses, survivor_statuses


@pytest.mark.slow
@needs_shim
@pytest.mark.timeout(300)
@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("mode", ["sync", "async", "concurrent"])
def test_slaves_killed_mid_call_end_their_sessions_quietly(
    c_program: Callable[[str], Path],
    fd_count: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    loop: str,
    mode: str,
) -> None:
    """``sync``: the reader callback answers (the fast path); ``async``: the
    session's task does; ``concurrent``: one task per call."""
    program = c_program("stat_threads")
    _warm_up(LOOPS[loop])
    caplog.set_level(logging.DEBUG)
    death = Death(mode)
    before = fd_count.snapshot()
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        victims, survivors = runner.run(_scenario(program, death))
    fd_count.assert_unchanged(before)

    assert len(victims) >= KILLS
    assert set(victims) == {128 + signal.SIGKILL}
    assert survivors and set(survivors) == {0}
    assert death.survivor_calls == len(survivors) * SURVIVOR_THREADS * SURVIVOR_CALLS
    # Served throughout: never left waiting while a quarter of the victims died.
    assert max(death.longest_silence, death.victims_done - death.survivor_last) <= LONGEST_SILENCE
    assert death.unexpected == []
    noisy = [
        record
        for record in caplog.records
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage()
    ]
    assert noisy == [], "\n".join(record.getMessage() for record in noisy)
    captured = capfd.readouterr()
    for text in (captured.out, captured.err):
        assert "Traceback" not in text and "Exception in callback" not in text, text
    print(
        f"{mode}/{loop}: {len(victims)} victims killed, {len(survivors)} survivor runs, "
        f"{death.survivor_calls} survivor calls, at most {death.longest_silence} victims died between two answers to it"
    )


# ------------------------------------------- each interleaving, on its own
#
# A raw slave socket, so a test can queue a burst of requests while the
# master waits (the reader callback then answers them in one go), or leave
# the master's replies unread until its sends would block.


def _stat(path: str, request_id: int) -> bytes:
    request = StatRequest.model_validate(
        {"function": "stat", "pid": os.getpid(), "tid": 1000 + request_id, "request_id": request_id, "path": path}
    )
    data, fds = wire_requests.encode_request(request)
    assert not fds
    return data


def _burst(sock: socket.socket, count: int, path: str = "/burst") -> int:
    """Queue up to ``count`` requests without blocking; how many went."""
    sock.setblocking(False)
    for request_id in range(1, count + 1):
        try:
            sock.send(_stat(path, request_id))
        except BlockingIOError:
            return request_id - 1
    return count


def _in_loop(loop: str, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


async def _waiting(master: Master) -> None:
    """Until the session's task waits for the reader callback."""
    for _ in range(1000):
        if master._reader is not None:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the master never waited for a request")


def _quiet(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("closer", ["handler", "observer", "handler-returning-awaitable"])
def test_a_policy_closing_its_session_while_the_callback_answers(
    fd_count: Any, caplog: pytest.LogCaptureFixture, loop: str, closer: str
) -> None:
    """The second of a burst of calls closes the master (from the handler, an
    observer, or a handler that then returns an awaitable): the callback
    stops there, nothing is left unawaited, nothing leaks."""
    _warm_up(LOOPS[loop])
    before = fd_count.snapshot()
    answered: list[int] = []

    async def scenario() -> None:
        master, theirs = Master.pair()
        router = Router()

        async def never_awaited() -> Any:
            return Stat(size=1)

        @router.on("stat")
        def stat(request: StatRequest) -> Any:
            answered.append(request.request_id)
            if request.request_id == 2 and closer != "observer":
                master.close()
                if closer == "handler-returning-awaitable":
                    return never_awaited()
            return Stat(size=1)

        @router.observe
        def observer(decision: Any) -> None:
            if closer == "observer" and decision.request.request_id == 2:
                master.close()

        with theirs:
            serving = asyncio.ensure_future(router.serve(master))
            await _waiting(master)
            assert _burst(theirs, 8) == 8
            await asyncio.wait_for(serving, 10)
        assert master.closed

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _in_loop(loop, scenario)
        gc.collect()
    assert answered == [1, 2]
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert _quiet(caplog) == []
    fd_count.assert_unchanged(before)


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
def test_a_slave_dying_while_replies_wait_for_room(
    fd_count: Any, caplog: pytest.LogCaptureFixture, loop: str, concurrent: bool
) -> None:
    """A slave that stops reading fills its socket until the master's replies
    wait for room (the writer callback); then it dies. The session ends
    quietly, the writer is unregistered before the descriptor is closed, and
    a new channel that reuses the descriptor numbers is served normally."""
    _warm_up(LOOPS[loop])
    before = fd_count.snapshot()

    async def scenario() -> None:
        router = Router(concurrent=concurrent)

        @router.on("stat")
        def stat(request: StatRequest) -> Any:
            return Stat(size=len(str(request.path)))

        master, theirs = Master.pair()
        numbers = {master.fileno(), theirs.fileno()}
        serving = asyncio.ensure_future(router.serve(master))
        await _waiting(master)
        sent = 0
        for _ in range(2000):
            sent += _burst(theirs, 64, "/" + "x" * 2000)
            await asyncio.sleep(0)
            if master._writers:
                break
        assert master._writers, f"{sent} requests sent, the master's replies never waited"
        theirs.close()  # the slave dies with its replies unread
        await asyncio.wait_for(serving, 10)
        assert master._writer_loop is None and master._reader_loop is None

        # The same descriptor numbers, on the same loop, for the next slave.
        master, theirs = Master.pair()
        assert {master.fileno(), theirs.fileno()} == numbers
        serving = asyncio.ensure_future(router.serve(master))
        with Slave(theirs) as slave:
            reply = await asyncio.to_thread(slave.call, "stat", path="/next")
        assert reply.result == Stat(size=5)
        await asyncio.wait_for(serving, 10)

    caplog.set_level(logging.DEBUG)
    _in_loop(loop, scenario)
    assert _quiet(caplog) == []
    fd_count.assert_unchanged(before)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_closing_a_session_from_its_owner_while_calls_are_in_every_state(
    fd_count: Any, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    """The owner closes the master (as spawn's ``aclose`` does) while one call
    waits on an async handler and more wait in the socket; close() twice is
    a no-op; the handler finishing afterwards is not an error."""
    _warm_up(LOOPS[loop])
    before = fd_count.snapshot()
    finished: list[str] = []

    async def scenario() -> None:
        router = Router()
        release = asyncio.Event()

        @router.on("stat")
        async def stat(request: StatRequest) -> Any:
            await release.wait()
            finished.append(str(request.path))
            return Stat(size=1)

        master, theirs = Master.pair()
        with theirs:
            serving = asyncio.ensure_future(router.serve(master))
            await _waiting(master)
            _burst(theirs, 8)
            for _ in range(100):
                if finished or master._reader is None:
                    break
                await asyncio.sleep(0.001)
            master.close()
            master.close()
            release.set()
            await asyncio.wait_for(serving, 10)

    caplog.set_level(logging.DEBUG)
    _in_loop(loop, scenario)
    assert finished == ["/burst"]
    assert _quiet(caplog) == []
    fd_count.assert_unchanged(before)


# ------------------------------------------------ the command, as reported

_POLICY = f'''
from libc_service import FORWARD, Router, Stat

router = Router()


@router.on("stat")
def victims(request):
    """The victims' path is a fake file; the rest is the program's own."""
    if str(request.path) == "{VICTIM_PATH}":
        return Stat(size={VICTIM_SIZE}, mode=0o644, type="regular")
    return FORWARD
'''

#: The program: a shell that starts multithreaded stat loops and SIGKILLs
#: each from outside after a few milliseconds, then checks a last run whole.
_SCRIPT = """
i=0
while [ $i -lt {runs} ]; do
    "$0" {threads} 1000000000 {path} {size} & victim=$!
    sleep 0.00$((i % 10))
    kill -9 $victim
    wait $victim 2>/dev/null  # not the shell's "Killed"
    [ $? -eq 137 ] || exit 3
    i=$((i + 1))
done
"$0" 4 300 {path} {size}
"""

#: ``libc-service`` with uvloop hidden: the default asyncio loop, as after
#: ``pip install .`` without ``[fast]``.
_WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; from libc_service.tools.cli import main; raise SystemExit(main())"
)


@pytest.mark.slow
@needs_shim
@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_libc_service_run_prints_no_traceback_when_its_program_is_killed_mid_call(
    c_program: Callable[[str], Path], tmp_path: Path, loop: str
) -> None:
    program = c_program("stat_threads")
    policy = tmp_path / "victims.py"
    policy.write_text(_POLICY)
    script = _SCRIPT.format(runs=40, threads=VICTIM_THREADS, path=VICTIM_PATH, size=VICTIM_SIZE)
    command = ["-c", _WITHOUT_UVLOOP] if loop == "asyncio" else ["-m", "libc_service"]
    done = subprocess.run(
        [sys.executable, *command, "run", str(policy), "--", "sh", "-c", script, str(program)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    noisy = [line for line in done.stderr.splitlines() if "dropped" not in line]
    assert noisy == [], done.stderr
