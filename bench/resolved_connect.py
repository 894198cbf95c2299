"""A connect granted by name (the master resolves, remembers, connects) against a forwarded one.

    python bench/resolved_connect.py [--connects 2000] [--runs 5]

A Python slave under the real shim times ``--connects`` TCP connects (and
closes) to a local listener, one at a time, and prints the median
nanoseconds per connect; each configuration runs ``--runs`` times,
interleaved, and the figure is the median of the runs' medians:

- ``native``    no shim, no master: the kernel's connect
- ``forwarded`` ``Router(default=FORWARD)``: the shim asks, the master says
                forward, the slave connects its own socket
- ``by-address`` each connect matches ``to("127.0.0.1:PORT")`` and is performed
                by the master: the same work as ``resolved`` without the names
- ``resolved``  the slave first looks up ``bench.test`` (answered by a
                nameserver on 127.0.0.1 through the master's resolver), then
                each connect matches ``resolved("bench.test", ports=[PORT])``
                and is performed by the master (``perform``: a socket of the
                master's, connected, which replaces the slave's)
- ``lookup``    (one figure per run, not per connect) the median of the
                ``getaddrinfo("bench.test")`` calls through the master's
                resolver and the local nameserver

All on the loopback of one machine: the figures are the price of the
arbitration, not of a network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libc_service import FORWARD, Resolver, Router, perform, spawn  # noqa: E402
from libc_service.policy.conditions import named, resolved, to  # noqa: E402

SLAVE = """
import json, socket, sys, time
port, count, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lookups = []
address = "127.0.0.1"
if name != "-":
    for _ in range(20):
        started = time.perf_counter_ns()
        address = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        lookups.append(time.perf_counter_ns() - started)
times = []
for _ in range(count):
    s = socket.socket()
    started = time.perf_counter_ns()
    s.connect((address, port))
    times.append(time.perf_counter_ns() - started)
    s.close()
times.sort()
lookups.sort()
print(json.dumps({"connect": times[len(times) // 2], "lookup": lookups[len(lookups) // 2] if lookups else None}))
"""


NAMESERVER = """
import socket, sys
import dns.message, dns.rrset
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    query = dns.message.from_wire(data)
    response = dns.message.make_response(query)
    question = query.question[0]
    if question.name.to_text(omit_final_dot=True) == "bench.test" and question.rdtype == 1:
        response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", "127.0.0.1"))
    sock.sendto(response.to_wire(), peer)
"""


def _nameserver() -> tuple[subprocess.Popen[str], str]:
    """A nameserver on 127.0.0.1 answering ``bench.test`` with 127.0.0.1 (TTL 300), in a process of its own.

    Not a thread of this process: each question would wait for the GIL
    the master holds (milliseconds), which is no resolver's cost.
    """
    server = subprocess.Popen([sys.executable, "-c", NAMESERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, f"127.0.0.1:{int(server.stdout.readline())}"


def _accepting(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()


def _routers(port: int, nameserver: str) -> dict[str, Router]:
    forwarded = Router(default=FORWARD)
    by_name = Router(default=FORWARD, resolver=Resolver([nameserver], hosts=None))

    @by_name.on("getaddrinfo", when=named("bench.test"))
    def lookup(request: Any) -> Any:
        return perform(request)

    @by_name.on("connect_inet", when=resolved("bench.test", ports=[port]))
    def connect(request: Any) -> Any:
        return perform(request)

    by_address = Router(default=FORWARD)

    @by_address.on("connect_inet", when=to(f"127.0.0.1:{port}"))
    def connect_address(request: Any) -> Any:
        return perform(request)

    return {"forwarded": forwarded, "by-address": by_address, "resolved": by_name}


async def _one(router: Router | None, port: int, count: int, name: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", SLAVE, str(port), str(count), name]
    if router is None:
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        result: dict[str, Any] = json.loads(done.stdout)
        return result
    async with spawn(argv, router, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        out, err = await process.communicate()
        if await process.wait() != 0 or out is None:
            raise RuntimeError((err or b"").decode())
    result = json.loads(out)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    threading.Thread(target=_accepting, args=(listener,), daemon=True).start()
    port = listener.getsockname()[1]
    ns_process, nameserver = _nameserver()
    routers = _routers(port, nameserver)
    figures: dict[str, list[int]] = {"native": [], "forwarded": [], "by-address": [], "resolved": [], "lookup": []}
    for _ in range(options.runs):
        figures["native"].append((await _one(None, port, options.connects, "-"))["connect"])
        figures["forwarded"].append((await _one(routers["forwarded"], port, options.connects, "-"))["connect"])
        figures["by-address"].append((await _one(routers["by-address"], port, options.connects, "-"))["connect"])
        measured = await _one(routers["resolved"], port, options.connects, "bench.test")
        figures["resolved"].append(measured["connect"])
        figures["lookup"].append(measured["lookup"])
    listener.close()
    ns_process.kill()
    ns_process.wait()
    print(f"{'configuration':<12} median of {options.runs} runs' medians ({options.connects} connects each)")
    for name, values in figures.items():
        print(f"{name:<12} {statistics.median(values) / 1000:8.1f} µs")


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    asyncio.run(main())
