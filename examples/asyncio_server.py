"""An asyncio job server: one sandboxed worker per job, each under its own policy.

Clients send jobs as JSON lines over a unix socket:
`{"job": "name", "directory": "/path", "argv": ["cat", "data.txt"]}`. For
each job the server builds a policy of its own (`JobPolicy`: a `Router`
whose handlers know only that job's directory), starts `argv` in that
directory as a slave of it — confined by Landlock when the kernel has it —,
and answers with one JSON line: the exit status, the output, whether it was
sandboxed, and every decision the master made for the job
(`libc_service.tools.tracing.decision_record`). Many jobs run at once, all on one
event loop; `concurrent_jobs` in a report says how many ran at the same time
as it (itself included).

A job's worker may read files beneath its own directory (the master opens
them beneath it and passes the descriptor), may look up and load the system's
programs (`/usr`, `/bin`, `/lib`, `/lib64`: forwarded, and the sandbox lets
it execute from there), writes nothing (`EROFS`), and gets `EACCES` for
everything else — another job's directory included, and any path into its
own directory that climbs with `..`: such a path may pass through another
job's tree (`../b/data.txt` from `b` goes through the jobs' common parent),
and `..` is the kernel's to resolve, not a string to fold.

Run it — jobs in two temporary directories `a` and `b` (each with its
`data.txt`), all at once in this process; each reads its own `data.txt` and
is refused `../b/data.txt`, job `b` too (the path leaves the job's directory
before it comes back):

    python3 examples/asyncio_server.py demo -- sh -c 'cat data.txt ../b/data.txt'

As a server and a client: `serve SOCKET -- CMD` serves while CMD runs (here
a client submitting one job: list the `examples` directory), then stops and
exits with CMD's status; without `-- CMD` it serves until interrupted, and
`submit` can be run from another terminal:

    python3 examples/asyncio_server.py serve jobs.sock -- python3 examples/asyncio_server.py submit jobs.sock examples -- ls

One job's policy on its own (its directory is `$LIBC_SERVICE_ROOT`, or the
current directory):

    libc-service run --sandbox examples/asyncio_server.py -- head -n 1 README.md
    libc-service docs examples/asyncio_server.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libc_service import (
    Decision,
    Errno,
    FORWARD,
    Router,
    Sandbox,
    SandboxUnavailable,
    Stat,
    WithFds,
    deny,
    network_namespaces_available,
    open_beneath,
    spawn,
    stat_beneath,
)
from libc_service.conditions import Condition, under, writing
from libc_service.requests import (
    AccessRequest,
    EaccessRequest,
    LstatRequest,
    OpenatRequest,
    OpenRequest,
    Request,
    StatRequest,
)
from libc_service.tools.tracing import decision_record

logger = logging.getLogger("asyncio_server")

#: Where workers find and load programs; forwarded, and executable in the sandbox.
SYSTEM = ("/usr", "/bin", "/lib", "/lib64")
#: What a worker may do by itself: run the system's programs; no network.
sandbox = Sandbox(allow_exec=SYSTEM, network=False)
#: Output kept per stream in a report.
OUTPUT_LIMIT = 64 * 1024
_AMODE_BITS = {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}


class Climbs(Condition):
    """The request's path has a `..` component (a condition of this policy's own)."""

    functions = frozenset({"open", "openat", "stat", "lstat", "access", "eaccess"})

    def __call__(self, request: object) -> bool:
        return ".." in Path(getattr(request, "path")).parts

    def describe(self) -> str:
        return "the path has a `..` component"


class JobPolicy:
    """The policy of one job: read beneath its directory, nothing else of the job's own."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.realpath(directory)
        self.decisions: list[dict[str, Any]] = []
        self.router = Router(default=deny(errno.EACCES))
        on = self.router.on
        on("open", "openat", "mkdir", "rmdir", "unlink", "rename", when=writing())(self.refuse_writes)
        job_files = ("open", "openat", "stat", "lstat", "access", "eaccess")
        on(*job_files, when=[under(self.directory), Climbs()])(self.refuse_climbing)
        on("open", "openat", when=under(self.directory))(self.read_job_files)
        on("stat", "lstat", when=under(self.directory))(self.stat_job_files)
        on("access", "eaccess", when=under(self.directory))(self.access_job_files)
        on("open", "openat", "stat", "lstat", "access", "eaccess", when=under(*SYSTEM))(self.system_files)
        self.router.observe(self.record)

    def record(self, decision: Decision) -> None:
        """Keep every decision for the job's report."""
        self.decisions.append(decision_record(decision))

    def refuse_writes(self, request: Request) -> int:
        """The job writes nothing, anywhere: `EROFS`."""
        raise Errno(errno.EROFS)

    def refuse_climbing(self, request: Request) -> int:
        """A path into the job's directory that climbs with `..` is refused: `EACCES`.

        `../b/data.txt` from job `b` leaves `b` and comes back; on its way it
        names the jobs' common parent, and a `..` is resolved by the kernel
        on the real tree (symlinks included), which a folded string does not
        follow. A job names its files from its own directory down.
        """
        raise Errno(errno.EACCES)

    def read_job_files(self, request: OpenRequest | OpenatRequest) -> WithFds:
        """Files beneath the job's directory are opened by the master, beneath it, and passed back."""
        return WithFds(0, [open_beneath(self.directory, request)])

    def stat_job_files(self, request: StatRequest | LstatRequest) -> Stat:
        """`stat`/`lstat` beneath the job's directory, answered from the object opened beneath it."""
        return stat_beneath(self.directory, request)

    def access_job_files(self, request: AccessRequest | EaccessRequest) -> int:
        """`access` beneath the job's directory checks the object opened beneath it (write: `EROFS`)."""
        if request.amode != "f" and "w" in request.amode:
            raise Errno(errno.EROFS)
        fd = open_beneath(self.directory, request, os.O_PATH | os.O_CLOEXEC, 0)
        try:
            mode = os.F_OK if request.amode == "f" else sum(_AMODE_BITS[bit] for bit in request.amode)
            if not os.access(f"/proc/self/fd/{fd}", mode, effective_ids=request.function == "eaccess"):
                raise Errno(errno.EACCES)
            return 0
        finally:
            os.close(fd)

    def system_files(self, request: Request) -> object:
        """Reading and looking up the system's programs and libraries: the worker does it itself.

        So a shell finds programs on `PATH`. Under the sandbox the worker can
        read and execute these directories, and nothing else, by itself.
        """
        return FORWARD


#: One job's policy for `libc-service run` and `libc-service docs`.
router = JobPolicy(os.environ.get("LIBC_SERVICE_ROOT") or os.getcwd()).router


@dataclass
class Job:
    """What a client asked for."""

    name: str
    directory: str
    argv: list[str]

    @classmethod
    def from_json(cls, data: Any) -> Job:
        if not isinstance(data, dict):
            raise ValueError("a job is a JSON object")
        argv = data.get("argv")
        directory = data.get("directory")
        if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
            raise ValueError('"argv" must be a non-empty list of strings')
        if not isinstance(directory, str) or not os.path.isdir(directory):
            raise ValueError('"directory" must name a directory')
        return cls(str(data.get("job") or Path(directory).name), directory, argv)


@dataclass
class _Running:
    peak: int = 0


@dataclass
class JobServer:
    """Runs jobs as sandboxed slaves, many at once on the running loop."""

    timeout: float = 30.0
    use_sandbox: bool = True
    sandbox_unavailable: str | None = field(default=None, init=False)
    _running: list[_Running] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.use_sandbox:
            self.sandbox_unavailable = Sandbox.available() or network_namespaces_available()
            if self.sandbox_unavailable is not None:
                logger.warning("workers run unsandboxed: %s", self.sandbox_unavailable)

    @property
    def sandboxed(self) -> bool:
        """Whether workers are confined by Landlock."""
        return self.use_sandbox and self.sandbox_unavailable is None

    async def run_job(self, job: Job) -> dict[str, Any]:
        """Run one job to completion under its own policy; its report."""
        policy = JobPolicy(job.directory)
        mine = _Running()
        self._running.append(mine)
        for running in self._running:
            running.peak = max(running.peak, len(self._running))
        env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
        try:
            async with spawn(
                job.argv,
                policy.router,
                cwd=policy.directory,
                env=env,
                sandbox=sandbox if self.sandboxed else None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            ) as worker:
                try:
                    async with asyncio.timeout(self.timeout):
                        stdout, stderr = await worker.communicate()
                except TimeoutError:
                    worker.kill()
                    stdout, stderr = b"", b"job timed out\n"
                status = await worker.wait()
        except (OSError, SandboxUnavailable) as exc:  # the program is missing, or the sandbox failed
            status, stdout, stderr = 127, b"", f"cannot start: {exc}\n".encode()
        finally:
            self._running.remove(mine)
        outcomes = Counter(record["decision"] for record in policy.decisions)
        return {
            "job": job.name,
            "status": status,
            "stdout": (stdout or b"")[:OUTPUT_LIMIT].decode(errors="replace"),
            "stderr": (stderr or b"")[:OUTPUT_LIMIT].decode(errors="replace"),
            "sandboxed": self.sandboxed,
            "sandbox_unavailable": self.sandbox_unavailable,
            "concurrent_jobs": mine.peak,
            "summary": {name: outcomes[name] for name in ("reply", "forward", "error", "failure")},
            "decisions": policy.decisions,
        }

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: a job per line, a report per line (jobs of one client run one after another)."""
        try:
            while line := await reader.readline():
                try:
                    job = Job.from_json(json.loads(line))
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    report: dict[str, Any] = {"error": str(exc)}
                else:
                    logger.info("job %s: %s in %s", job.name, job.argv, job.directory)
                    report = await self.run_job(job)
                writer.write(json.dumps(report).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve(self, path: str, command: Sequence[str] = ()) -> int:
        """Accept clients on a unix socket at ``path`` until cancelled, or while ``command`` runs.

        With a command, the server stops when it exits and its status is
        returned: a client and its server in one shell command, nothing left
        running. The socket is removed when the server stops.
        """
        if os.path.exists(path):
            os.unlink(path)
        server = await asyncio.start_unix_server(self.handle_client, path)
        logger.info(
            "serving jobs on %s (%s)",
            path,
            "sandboxed" if self.sandboxed else f"unsandboxed: {self.sandbox_unavailable}",
        )
        try:
            async with server:
                if not command:
                    await server.serve_forever()
                client = await asyncio.create_subprocess_exec(*command)
                return await client.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


async def submit(path: str, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send ``jobs`` to a server, each on its own connection (so they run at once)."""

    async def one(job: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(json.dumps(job).encode() + b"\n")
            await writer.drain()
            report: dict[str, Any] = json.loads(await reader.readline())
            return report
        finally:
            writer.close()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def _print_report(report: dict[str, Any]) -> None:
    if "error" in report:
        print(f"error: {report['error']}")
        return
    print(
        f"== job {report['job']}: status {report['status']}, "
        f"{'sandboxed' if report['sandboxed'] else 'NOT sandboxed (' + str(report['sandbox_unavailable']) + ')'}, "
        f"{report['concurrent_jobs']} job(s) at once, decisions {report['summary']}"
    )
    for record in report["decisions"]:
        answer = record["errno_name"] or record["decision"]
        print(
            f"   {record['function']}({', '.join(map(str, record['arguments'].values()))}) "
            f"-> {answer} by {record['route']}"
        )
    sys.stdout.write(report["stdout"])
    sys.stdout.write(report["stderr"])


async def _demo(directories: Sequence[str], argv: Sequence[str]) -> None:
    server = JobServer()
    jobs = [Job(Path(directory).name, directory, list(argv)) for directory in directories]
    for report in await asyncio.gather(*(server.run_job(job) for job in jobs)):
        _print_report(report)


def _demo_in_temporary_jobs(argv: Sequence[str]) -> None:
    """The demo in two job directories made for it, so it needs no data of its own.

    `a` and `b` are siblings, each with a `data.txt`: a job that reaches for
    `../b/data.txt` shows its policy refusing files outside its directory.
    """
    with tempfile.TemporaryDirectory(prefix="jobs-") as top:
        directories = []
        for name in ("a", "b"):
            directory = Path(top, name)
            directory.mkdir()
            (directory / "data.txt").write_text(f"data of job {name}\n")
            directories.append(str(directory))
        asyncio.run(_demo(directories, argv))


def main(args: Sequence[str] | None = None) -> int:
    """``serve SOCKET [-- CMD...]``, ``submit SOCKET DIR -- CMD...`` or ``demo [DIR...] [-- CMD...]``."""
    parser = argparse.ArgumentParser(prog="asyncio_server.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve jobs on a unix socket (with -- CMD: while CMD runs, then exit with its status)",
    )
    serve.add_argument("socket")
    serve.add_argument("--no-sandbox", action="store_true", help="run workers without Landlock")
    send = commands.add_parser("submit", help="send one job to a server and print its report")
    send.add_argument("socket")
    send.add_argument("directory")
    send.add_argument("argv", nargs=argparse.REMAINDER)
    demo = commands.add_parser(
        "demo",
        help="run CMD (default: head data.txt) in each directory (default: two temporary ones, a and b), "
        "all at once, in this process",
    )
    demo.add_argument("directories", nargs="*", metavar="DIR")
    args = list(sys.argv[1:] if args is None else args)
    command: list[str] = []
    if args[:1] in (["demo"], ["serve"]) and "--" in args:
        command = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="asyncio_server: %(message)s")
    if options.command == "serve":
        try:
            return asyncio.run(JobServer(use_sandbox=not options.no_sandbox).serve(options.socket, command))
        except KeyboardInterrupt:
            return 130
    if options.command == "submit":
        argv = options.argv[1:] if options.argv[:1] == ["--"] else options.argv
        job = {"job": Path(options.directory).name, "directory": os.path.abspath(options.directory), "argv": argv}
        (report,) = asyncio.run(submit(options.socket, [job]))
        _print_report(report)
        return int(report.get("status", 2))
    command = command or ["head", "data.txt"]
    if options.directories:
        asyncio.run(_demo(options.directories, command))
    else:
        _demo_in_temporary_jobs(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
