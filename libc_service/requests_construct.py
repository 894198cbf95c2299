"""Request models built from fields a decoder has already checked, without validating them again.

pydantic's validation of a request costs more than decoding it (docs/performance.md);
a decoder that has checked every byte builds the model here instead.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from . import requests  # loaded on first use (libc_service/__init__.py)

__all__ = ["construct"]

_set_attribute: Final = object.__setattr__


def _plain_model(cls: type[Any]) -> bool:
    """Whether ``model_construct`` of ``cls`` only sets the four attributes below."""
    return (
        not getattr(cls, "__pydantic_post_init__", True)
        and not getattr(cls, "__private_attributes__", True)
        and not getattr(cls, "__pydantic_root_model__", True)
        and all(f.alias is None and f.validation_alias is None for f in cls.model_fields.values())
    )


@functools.cache
def _fast_fields() -> dict[str, tuple[str, ...]]:
    """The models built without pydantic's search: their fields in declaration order.

    The order is the one ``model_construct`` fills ``__dict__`` in, which repr
    and dumps follow. Computed on the first decoded request: the models load
    then, not when the codec is imported.
    """
    return {name: tuple(cls.model_fields) for name, cls in requests.REQUEST_TYPES.items() if _plain_model(cls)}


def construct(function: str, fields: dict[str, Any]) -> Any:
    """``model_construct(**fields)`` for a decoder that fills every field.

    Does what pydantic's ``model_construct`` does for a model without
    aliases, private attributes or post-init hooks, minus its per-field
    alias and default search, which was a third of the decoding cost
    (``bench/hotpath.py``; figures in docs/performance.md).
    """
    cls = requests.REQUEST_TYPES[function]
    order = _fast_fields().get(function)
    if order is None:
        return cls.model_construct(**fields)
    try:
        values = {name: fields[name] for name in order}
    except KeyError:  # a field left to its default: pydantic fills it
        return cls.model_construct(**fields)
    model = cls.__new__(cls)
    _set_attribute(model, "__dict__", values)
    _set_attribute(model, "__pydantic_fields_set__", set(fields))
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)
    return model
