"""The shim's sessions beside the seccomp transport: relayed, so each call is decided once.

A program under the seccomp filter keeps the shim preloaded for
``getaddrinfo``, which is no system call and so never reaches the filter.
Every other call the shim asks about would be decided twice (once by the
shim's session, once when it reaches the kernel): the relay answers those
``FORWARD`` at once and leaves them to the filter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from libc_service.protocol.outcomes import FORWARD
from libc_service.policy.observers import Decision
from libc_service.policy.router import Router

__all__ = ["shim_relay"]


def shim_relay(router: Router) -> Router:
    """The router for the shim sessions of a program that also runs under the seccomp filter.

    Only ``getaddrinfo`` (no system call, so the filter never sees it) is
    decided by ``router``, whose observers then see it as usual; every
    other call is answered ``FORWARD`` at once (by the router's fast path,
    in the reader callback), so the shim makes it through libc and the
    filter hands it to ``router`` then: each call is decided once, with the
    kernel's view of it.
    """
    relay = Router(default=FORWARD, concurrent=router.concurrent, error_errno=router.error_errno)
    #: The deciding route of ``router`` for each getaddrinfo in flight, by request identity.
    deciding: dict[int, str] = {}

    @relay.on("getaddrinfo")
    async def decided_by_the_policy(request: Any) -> Any:
        route, outcome = await router.decide(request)
        deciding[id(request)] = route
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @relay.observe
    def reported_to_the_policy(decision: Decision) -> None:
        route = deciding.pop(id(decision.request), None)
        if route is not None:
            router.report(dataclasses.replace(decision, route=route))

    return relay
