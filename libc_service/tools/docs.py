"""A policy's documentation, generated from the code that enforces it.

``libc-service docs POLICY`` and the mkdocs hook
(`libc_service.tools.mkdocs_hook`) call [render_policy][libc_service.tools.docs.render_policy]. It reads
only what the router itself dispatches on — [Router.routes][libc_service.policy.router.Router.routes],
each route's handler name, docstring, conditions and source line, the
router's default and failure settings — plus the module's ``sandbox``, so the
document cannot drift from the policy.

Two formats:

- ``md``: a page for people reviewing the policy: a summary table, then,
  for every arbitrated function in the protocol's order, the handlers that
  may decide it (in the order they are tried), their conditions in words,
  and what happens when none decides.
- ``json``: the same facts for tools; the schema is described in
  ``docs/policy-json.md`` and named by the document's ``"schema"`` key.

The output is deterministic: no timestamps, no memory addresses, no
dictionary or set ordering, and source locations relative to the policy
file's directory, so a review diff shows exactly what a policy change did.

The facts are gathered once (:mod:`.docs_describe`, into the records of
:mod:`.docs_model`) and rendered by :mod:`.docs_markdown` or
:mod:`.docs_json`; this module chooses the renderer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from libc_service.tools.docs_describe import condition_data, describe_policy
from libc_service.tools.docs_json import JSON_SCHEMA, policy_json, render_json
from libc_service.tools.docs_markdown import render_markdown
from libc_service.tools.docs_model import DefaultDoc, FunctionDoc, HandlerDoc, ObserverDoc, PolicyDoc, SandboxDoc
from libc_service.tools.policy_file import LoadedPolicy

__all__ = [
    "JSON_SCHEMA",
    "DefaultDoc",
    "FunctionDoc",
    "HandlerDoc",
    "ObserverDoc",
    "PolicyDoc",
    "SandboxDoc",
    "condition_data",
    "describe_policy",
    "policy_json",
    "render_json",
    "render_markdown",
    "render_policy",
]


Format = Literal["md", "json"]


_RENDERERS: Final[dict[str, Callable[[PolicyDoc], str]]] = {"md": render_markdown, "json": render_json}


def render_policy(policy: LoadedPolicy, fmt: Format = "md") -> str:
    """Document ``policy`` as Markdown (``"md"``) or JSON (``"json"``)."""
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown documentation format {fmt!r}; valid: {', '.join(_RENDERERS)}")
    return renderer(describe_policy(policy))
