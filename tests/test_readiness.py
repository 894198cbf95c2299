"""The one readiness helper: waits on the loop and in a thread, with real descriptors."""

from __future__ import annotations

import asyncio
import os
import socket

from libc_service.kernel import readiness


def test_readable_when_data_arrives() -> None:
    async def main() -> bool:
        mine, theirs = socket.socketpair()
        with mine, theirs:
            asyncio.get_running_loop().call_soon(theirs.send, b"x")
            return await readiness.readable(mine.fileno())

    assert asyncio.run(main()) is True


def test_readable_times_out_and_unregisters() -> None:
    async def main() -> tuple[bool, bool]:
        mine, theirs = socket.socketpair()
        with mine, theirs:
            ready = await readiness.readable(mine.fileno(), 0)
            # Unregistered: the loop accepts a new reader for the same descriptor.
            loop = asyncio.get_running_loop()
            removed = loop.remove_reader(mine.fileno())
            return ready, removed

    assert asyncio.run(main()) == (False, False)


def test_writable_socket() -> None:
    async def main() -> bool:
        mine, theirs = socket.socketpair()
        with mine, theirs:
            await readiness.writable(mine.fileno())
            return asyncio.get_running_loop().remove_writer(mine.fileno())

    assert asyncio.run(main()) is False


def test_watch_ended_from_outside_wakes_the_waiter_and_unregisters_once() -> None:
    async def main() -> bool:
        mine, theirs = socket.socketpair()
        with theirs:
            watch = readiness.Watch(mine.fileno())

            async def waiter() -> None:
                with watch:
                    await watch.ready

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0)
            watch.end()
            mine.close()  # the number is free once end() returned
            await task
            watch.end()
            return watch.ready.done()

    assert asyncio.run(main()) is True


def test_cancelled_wait_unregisters() -> None:
    async def main() -> bool:
        mine, theirs = socket.socketpair()
        with mine, theirs:
            task = asyncio.create_task(readiness.readable(mine.fileno()))
            await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            return asyncio.get_running_loop().remove_reader(mine.fileno())

    assert asyncio.run(main()) is False


def test_poll_events_reports_what_the_kernel_reports() -> None:
    read_end, write_end = os.pipe()
    try:
        assert readiness.poll_events({read_end: readiness.READABLE}, 0) == {}
        assert readiness.poll_events({write_end: readiness.WRITABLE}, 0) == {write_end: readiness.WRITABLE}
        os.write(write_end, b"x")
        assert readiness.poll_events({read_end: readiness.READABLE}, 0) == {read_end: readiness.READABLE}
        os.close(write_end)
        write_end = -1
        events = readiness.poll_events({read_end: readiness.READABLE})
        assert events[read_end] & readiness.HANG_UP
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
