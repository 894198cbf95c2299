"""A request built from checked fields is the model pydantic's ``model_construct`` builds, or a validated one.

Both decoders of slave input (the protocol's codec and the seccomp
transport) build their requests with :func:`construct`; what it builds must
be indistinguishable from ``model_construct`` — the same ``__dict__`` in the
same order (repr and dumps follow it), the same fields counted as set — and
a model whose building is more than setting its fields must be validated.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libc_service.protocol import construct as requests_construct
from libc_service.protocol.requests import REQUEST_TYPES, Request, StatRequest
from libc_service.protocol.construct import construct

import strategies as s


def _same(built: Any, expected: Any) -> None:
    assert type(built) is type(expected)
    assert list(built.__dict__.items()) == list(expected.__dict__.items())
    assert built.model_fields_set == expected.model_fields_set
    assert repr(built) == repr(expected)
    assert built.model_dump() == expected.model_dump()


@given(request=s.requests)
def test_a_request_from_every_field_is_model_constructs(request: Request) -> None:
    fields = dict(request.__dict__)
    _same(construct(request.function, fields), type(request).model_construct(**fields))
    assert construct(request.function, fields) == request


@given(request=s.requests, data=st.data())
def test_a_field_left_out_takes_its_default_and_is_not_set(request: Request, data: st.DataObject) -> None:
    model = type(request)
    optional = sorted(name for name, info in model.model_fields.items() if not info.is_required())
    left_out = data.draw(st.sets(st.sampled_from(optional), min_size=1))
    fields = {name: value for name, value in request.__dict__.items() if name not in left_out}
    built = construct(request.function, fields)
    _same(built, model.model_construct(**fields))
    assert not left_out & built.model_fields_set


def test_a_key_that_is_no_field_is_left_out() -> None:
    built = construct("stat", {"function": "stat", "path": PurePosixPath("/x"), "pid": 1, "tid": 2, "bogus": 3})
    _same(built, StatRequest.model_construct(function="stat", path=PurePosixPath("/x"), pid=1, tid=2))
    assert "bogus" not in built.__dict__


def test_fields_without_a_required_one_are_validated_and_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="path"):
        construct("stat", {"function": "stat", "pid": 1, "tid": 2})


class _TaggedStat(StatRequest):
    """A model with a default factory: building it makes a value, which copying fields cannot."""

    tags: list[str] = pydantic.Field(default_factory=list)


@pytest.fixture
def tagged_stat(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    requests_construct._plain_fields.cache_clear()
    requests_construct._defaults.cache_clear()
    monkeypatch.setitem(REQUEST_TYPES, "stat", _TaggedStat)
    yield
    monkeypatch.undo()
    requests_construct._plain_fields.cache_clear()
    requests_construct._defaults.cache_clear()


@pytest.mark.usefixtures("tagged_stat")
def test_a_model_that_is_not_plain_data_is_validated() -> None:
    fields = {"function": "stat", "path": PurePosixPath("/x"), "pid": 1, "tid": 2}
    first, second = construct("stat", fields), construct("stat", fields)
    assert type(first) is _TaggedStat and first.tags == [] and first.tags is not second.tags
    with pytest.raises(pydantic.ValidationError, match="path"):
        construct("stat", {**fields, "path": 3})
