"""A policy's documentation as a JSON document, for tools (schema: ``docs/policy-json.md``)."""

from __future__ import annotations

import json
from typing import Any, Final

from libc_service.tools.docs_model import HandlerDoc, ObserverDoc, PolicyDoc, errno_name

__all__ = ["JSON_SCHEMA", "policy_json", "render_json"]

#: The ``"schema"`` value of the JSON document (bumped on incompatible change).
JSON_SCHEMA: Final = "libc-service-policy/1"


def _handler_json(handler: HandlerDoc) -> dict[str, Any]:
    return {
        "index": handler.index,
        "name": handler.name,
        "summary": handler.summary,
        "doc": handler.doc,
        "functions": list(handler.functions),
        "conditions": list(handler.conditions),
        "when": list(handler.condition_data),
        "source": None if handler.source_file is None else {"file": handler.source_file, "line": handler.source_line},
    }


def _observer_json(observer: ObserverDoc) -> dict[str, Any]:
    return {
        "name": observer.name,
        "summary": observer.summary,
        "doc": observer.doc,
        "source": None
        if observer.source_file is None
        else {"file": observer.source_file, "line": observer.source_line},
    }


def policy_json(doc: PolicyDoc) -> dict[str, Any]:
    """The JSON document as plain data (keys in a fixed order)."""
    default = doc.default
    return {
        "schema": JSON_SCHEMA,
        "policy": doc.name,
        "description": doc.description,
        "default": {
            "action": default.action,
            "errno": default.errno,
            "errno_name": default.errno_name,
            "handler": None if default.handler is None else _handler_json(default.handler),
        },
        "failure": {"errno": doc.error_errno, "errno_name": errno_name(doc.error_errno)},
        "timeout": None
        if doc.timeout is None
        else {
            "seconds": doc.timeout,
            "errno": doc.timeout_errno,
            "errno_name": errno_name(doc.timeout_errno),
        },
        "concurrent": doc.concurrent,
        "handlers": [_handler_json(handler) for handler in doc.handlers],
        "observers": [_observer_json(observer) for observer in doc.observers],
        "functions": [
            {
                "function": function.function,
                "handlers": [handler.index for handler in function.handlers],
                "default": "unhandled" if not function.handlers else function.default_reachable,
            }
            for function in doc.functions
        ],
        "unhandled": list(doc.unhandled),
        "sandbox": None
        if doc.sandbox is None
        else {
            "rules": [{"path": path, "access": list(access)} for path, access in doc.sandbox.rules],
            "network": doc.sandbox.network,
            "metadata": doc.sandbox.metadata,
            "system_libraries": doc.sandbox.system_libraries,
        },
    }


def render_json(doc: PolicyDoc) -> str:
    """The policy documentation as a JSON document (see ``docs/policy-json.md``)."""
    return json.dumps(policy_json(doc), indent=2, ensure_ascii=False) + "\n"
