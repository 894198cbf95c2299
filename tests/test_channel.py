"""The channel's protocol state without sockets: calls in flight, one reply each, replies matched.

Both ends' rules are plain objects fed bytes and descriptor counts, so a
hostile peer's datagram, a reply out of step or a second reply is a few
lines here, and the parsers get hypothesis.
"""

from __future__ import annotations

import socket
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libc_service.protocol import wire_requests
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_header
from libc_service import Stat
from libc_service.protocol.calls import TRUNCATED, MasterChannel, SlaveChannel
from libc_service.protocol.outcomes import FORWARDED, Answer
from libc_service.protocol.requests import OpenRequest, StatRequest
from libc_service.protocol.wire_header import LocalProtocolError, ProtocolError, RemoteProtocolError

import strategies as s


def _stat(tid: int = 7, request_id: int = 1, path: str = "/etc/hostname") -> StatRequest:
    return StatRequest(path=PurePosixPath(path), pid=7, tid=tid, request_id=request_id)


class _Call:
    """A call as the master channel sees it: any object, compared by identity."""


# ------------------------------------------------------------------ errors


def test_the_protocol_errors_split_into_the_peers_and_the_callers() -> None:
    assert not issubclass(ProtocolError, ValueError), "a hostile peer's message is no caller's ValueError"
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(RemoteProtocolError, ValueError)
    assert issubclass(LocalProtocolError, ProtocolError) and issubclass(LocalProtocolError, ValueError)


# ------------------------------------------------------------- master end


def test_a_request_is_decoded_and_its_call_is_in_flight_until_its_reply_is_sent() -> None:
    channel: MasterChannel[_Call] = MasterChannel(max_in_flight=2)
    data, fds = wire_requests.encode_request(_stat())
    request = channel.receive(data, fds)
    call = _Call()
    channel.open(call)
    assert (channel.in_flight, channel.unanswered, channel.answered(call)) == (1, 1, False)
    reply = channel.reply(call, request, Stat(size=3), 0, 0)
    assert wire_replies.decode_reply(reply).result == Stat(size=3)
    assert (channel.in_flight, channel.unanswered, channel.answered(call)) == (1, 0, True)
    channel.sent(call)
    assert channel.in_flight == 0


def test_a_second_reply_to_one_call_is_the_callers_error() -> None:
    channel: MasterChannel[_Call] = MasterChannel()
    request = _stat()
    call = _Call()
    channel.open(call)
    channel.forward(call, request)
    with pytest.raises(RuntimeError, match="already answered"):
        channel.reply(call, request, -1, 2, 0)
    with pytest.raises(RuntimeError, match="already answered"):
        channel.forward(call, request)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer("reply", Stat(size=3)), wire_replies.ReplyMessage("stat", 7, 1, Stat(size=3))),
        (FORWARDED, wire_replies.ReplyMessage("stat", 7, 1, 0, forward=True)),
        (Answer("error", -1, 13), wire_replies.ReplyMessage("stat", 7, 1, -1, 13)),
    ],
    ids=["reply", "forward", "error"],
)
def test_an_answer_is_encoded_as_the_reply_it_says(answer: Answer, expected: wire_replies.ReplyMessage) -> None:
    channel: MasterChannel[_Call] = MasterChannel()
    call = _Call()
    channel.open(call)
    assert wire_replies.decode_reply(channel.answer(call, _stat(), answer)) == expected
    assert channel.answered(call)
    with pytest.raises(RuntimeError, match="already answered"):
        channel.answer(call, _stat(), answer)


def test_an_answer_without_a_result_is_not_taken_for_a_forward() -> None:
    channel: MasterChannel[_Call] = MasterChannel()
    call = _Call()
    channel.open(call)
    with pytest.raises(TypeError):
        channel.answer(call, _stat(), Answer("reply", None))
    assert not channel.answered(call)


def test_a_reply_the_protocol_cannot_carry_leaves_the_call_owed() -> None:
    channel: MasterChannel[_Call] = MasterChannel()
    request = OpenRequest(path=PurePosixPath("/x"), flags=["read_only"], pid=1, tid=1, request_id=1)
    call = _Call()
    channel.open(call)
    with pytest.raises(LocalProtocolError):
        channel.reply(call, request, 3, 0, 2)  # an open's reply carries one descriptor at most
    assert not channel.answered(call)
    channel.reply(call, request, 3, 0, 1)
    assert channel.answered(call)


def test_the_in_flight_cap_counts_calls_whose_replies_wait_for_room() -> None:
    channel: MasterChannel[_Call] = MasterChannel(max_in_flight=2)
    first, second = _Call(), _Call()
    channel.open(first)
    assert not channel.full
    channel.open(second)
    assert channel.full
    channel.reply(first, _stat(), -1, 2, 0)
    assert channel.full, "an encoded reply not yet sent still holds the call's descriptors"
    channel.sent(first)
    assert not channel.full
    with pytest.raises(ValueError):
        MasterChannel(max_in_flight=0)


def test_closing_records_how_the_session_ended_and_hands_back_every_call() -> None:
    channel: MasterChannel[_Call] = MasterChannel()
    waiting, sending = _Call(), _Call()
    channel.open(waiting)
    channel.open(sending)
    channel.reply(sending, _stat(), -1, 2, 0)
    assert set(channel.close()) == {waiting, sending}
    assert (channel.closed, channel.unanswered_at_close, channel.unsent_at_close) == (True, 1, 1)
    assert channel.close() == [], "closing twice hands nothing back twice"
    for call in (waiting, sending):
        channel.drop(call)
    assert channel.in_flight == 0


@pytest.mark.parametrize(
    ("data", "nfds", "flags"),
    [
        pytest.param(wire_requests.encode_request(_stat())[0], 0, int(socket.MSG_TRUNC), id="truncated"),
        pytest.param(wire_requests.encode_request(_stat())[0], 0, int(socket.MSG_CTRUNC), id="descriptors cut"),
        pytest.param(wire_requests.encode_request(_stat())[0] + bytes(wire_header.MAX_MESSAGE), 0, 0, id="oversized"),
        pytest.param(
            wire_requests.encode_request(_stat())[0], wire_header.MAX_REQUEST_FDS + 1, 0, id="too many descriptors"
        ),
    ],
)
def test_a_datagram_outside_the_size_rules_is_the_peers_error(data: bytes, nfds: int, flags: int) -> None:
    with pytest.raises(RemoteProtocolError):
        MasterChannel.receive(data, list(range(100, 100 + nfds)), flags)


@given(data=st.binary(max_size=512), nfds=st.integers(0, 4), flags=st.sampled_from([0, TRUNCATED]))
def test_whatever_the_slave_sends_is_a_request_or_the_peers_error(data: bytes, nfds: int, flags: int) -> None:
    try:
        MasterChannel.receive(data, list(range(100, 100 + nfds)), flags)
    except RemoteProtocolError:
        pass


@given(request=s.requests)
def test_every_request_a_slave_channel_sends_a_master_channel_receives(request: Any) -> None:
    data, fds = SlaveChannel().send(request)
    assert MasterChannel.receive(data, fds) == request


# -------------------------------------------------------------- slave end


def test_a_reply_reaches_the_call_of_its_thread_and_ends_it() -> None:
    channel = SlaveChannel()
    request = _stat(tid=5, request_id=channel.next_request_id())
    channel.send(request)
    assert channel.in_flight == 1
    message = channel.receive(
        wire_replies.encode_reply(wire_replies.ReplyMessage("stat", 5, request.request_id, Stat(size=9))), 0
    )
    assert message.result == Stat(size=9)
    assert channel.in_flight == 0


def test_request_ids_are_never_reused() -> None:
    channel = SlaveChannel()
    ids = [channel.next_request_id() for _ in range(100)]
    assert len(set(ids)) == 100


def test_a_thread_has_one_call_in_flight() -> None:
    channel = SlaveChannel()
    channel.send(_stat(tid=5, request_id=1))
    with pytest.raises(LocalProtocolError, match="already has a call"):
        channel.send(_stat(tid=5, request_id=2))
    channel.cancel(5)
    channel.send(_stat(tid=5, request_id=3))


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(wire_replies.ReplyMessage("stat", 6, 1, -1, 2), id="a thread with no call"),
        pytest.param(wire_replies.ReplyMessage("stat", 5, 2, -1, 2), id="another request's id"),
        pytest.param(wire_replies.ReplyMessage("lstat", 5, 1, -1, 2), id="another function"),
    ],
)
def test_a_reply_out_of_step_with_the_calls_is_the_peers_error(reply: wire_replies.ReplyMessage) -> None:
    channel = SlaveChannel()
    channel.send(_stat(tid=5, request_id=1))
    with pytest.raises(RemoteProtocolError):
        channel.receive(wire_replies.encode_reply(reply), 0)


@given(data=st.binary(max_size=512), nfds=st.integers(0, 6), flags=st.sampled_from([0, TRUNCATED]))
def test_whatever_the_master_sends_is_a_reply_or_the_peers_error(data: bytes, nfds: int, flags: int) -> None:
    channel = SlaveChannel()
    channel.send(_stat(tid=5, request_id=1))
    try:
        channel.receive(data, nfds, flags)
    except RemoteProtocolError:
        pass
