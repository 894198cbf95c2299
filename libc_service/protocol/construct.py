"""Request models built from fields a decoder has already checked, without validating them again.

Both decoders of slave input — the protocol's (:mod:`libc_service.protocol.wire_requests`,
:mod:`libc_service.protocol.wire_reports`) and the seccomp transport's — check every
field as the models would (paths, flags, modes, addresses). Validating again
would cost more than decoding (docs/performance.md), and so would pydantic's
``model_construct``, whose per-field alias and default search was a third of
the decoding cost. :func:`construct` is the one way such a model is built:
one rule for which models may skip validation, one for their defaults and
the fields they record as set.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from libc_service.protocol import requests  # loaded on first use (libc_service/__init__.py)

if TYPE_CHECKING:
    from libc_service.protocol.requests import Request

__all__ = ["construct"]

_set_attribute: Final = object.__setattr__


def _plain(model: type[Any]) -> bool:
    """Whether building ``model`` is only setting its ``__dict__``: plain data.

    No post-init hook, private attributes or root model (building would run
    or need more), no aliases (the decoders give field names) and no default
    factories (a factory's default is made per model, not copied).
    """
    return (
        not getattr(model, "__pydantic_post_init__", True)
        and not getattr(model, "__private_attributes__", True)
        and not getattr(model, "__pydantic_root_model__", True)
        and all(
            info.alias is None and info.validation_alias is None and info.default_factory is None
            for info in model.model_fields.values()
        )
    )


@functools.cache
def _plain_fields() -> dict[str, tuple[str, ...]]:
    """Each plain model's field names in declaration order.

    The order is the one pydantic fills ``__dict__`` in, which repr and
    dumps follow. Computed on the first request built: the models load
    then, not when a decoder is imported.
    """
    return {function: tuple(model.model_fields) for function, model in requests.REQUEST_TYPES.items() if _plain(model)}


@functools.cache
def _defaults(function: str) -> dict[str, Any]:
    """The defaults of the fields of ``function``'s model that are not required."""
    fields = requests.REQUEST_TYPES[function].model_fields
    return {name: info.default for name, info in fields.items() if not info.is_required()}


def construct(function: str, fields: Mapping[str, Any]) -> Request:
    """The request model of ``function`` from ``fields`` its decoder has fully checked.

    A field left out takes its default and is not counted as set; a key that
    is no field of the model is left out. The models' validators are not
    run: the decoder has checked what they check. A model that is not plain
    data (a post-init hook, private attributes, default factories), or fields
    without a required one, are validated instead: raises pydantic's
    ``ValidationError`` (a ``ValueError``) when they fail.
    """
    model = requests.REQUEST_TYPES[function]
    names = _plain_fields().get(function)
    if names is None:
        return _validated(model, fields)
    try:  # the decoders' every call: each field given
        values = {name: fields[name] for name in names}
    except KeyError:
        return _with_defaults(function, model, names, fields)
    # _built, inline: this runs once per decoded request.
    request = model.__new__(model)
    _set_attribute(request, "__dict__", values)
    _set_attribute(
        request, "__pydantic_fields_set__", set(fields) if len(fields) == len(names) else fields.keys() & values.keys()
    )
    _set_attribute(request, "__pydantic_extra__", None)
    _set_attribute(request, "__pydantic_private__", None)
    return request  # type: ignore[return-value]  # (no cast: a call per request)


def _built(model: Any, values: dict[str, Any], given: set[str]) -> Request:
    """What pydantic's ``model_construct`` leaves: the values in order, the fields given, nothing else."""
    request = model.__new__(model)
    _set_attribute(request, "__dict__", values)
    _set_attribute(request, "__pydantic_fields_set__", given)
    _set_attribute(request, "__pydantic_extra__", None)
    _set_attribute(request, "__pydantic_private__", None)
    return cast("Request", request)


def _with_defaults(function: str, model: type[Any], names: tuple[str, ...], fields: Mapping[str, Any]) -> Request:
    """A plain model from fields that leave some out: their defaults, or validation if one is required."""
    defaults = _defaults(function)
    given = fields.keys() & set(names)
    if not given | defaults.keys() >= set(names):
        return _validated(model, fields)  # a required field is missing: validation says which
    return _built(model, {name: fields[name] if name in fields else defaults[name] for name in names}, given)


def _validated(model: type[Any], fields: Mapping[str, Any]) -> Request:
    """The model validated from the keys of ``fields`` that are its fields."""
    return cast(
        "Request", model.model_validate({name: value for name, value in fields.items() if name in model.model_fields})
    )
