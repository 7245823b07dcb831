"""Frame encoding, request validation and frame reading deadlines (no sockets)."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogverse.autoscale.lock.protocol import (
    MAX_ID,
    ErrorCode,
    FrameTimeout,
    FrameTooLarge,
    IdleTimeout,
    ProtocolError,
    decode_body,
    encode_frame,
    parse_request,
    read_frame,
    seconds_to_ms,
)


def test_frame_is_big_endian_length_then_utf8_json() -> None:
    frame = encode_frame({"v": 1, "op": "ping", "id": 1, "name": "é"})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert json.loads(frame[4:].decode("utf-8")) == {"v": 1, "op": "ping", "id": 1, "name": "é"}


def test_encoded_frames_are_ascii_whatever_the_strings() -> None:
    frame = encode_frame({"detail": "lock '\ud800' \u00e9"})
    assert frame[4:].isascii()
    assert json.loads(frame[4:])["detail"] == "lock '\ud800' \u00e9"


def test_encode_refuses_oversized_frames_and_nan() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"name": "x" * 100}, max_frame_bytes=50)
    with pytest.raises(ValueError):
        encode_frame({"x": float("nan")})


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.BAD_JSON),
        (b"not json", ErrorCode.BAD_JSON),
        (b"\xff\xfe{}", ErrorCode.BAD_JSON),
        (b'{"id": NaN}', ErrorCode.BAD_JSON),
        (b'{"id": Infinity}', ErrorCode.BAD_JSON),
        (b"[" * 100_000, ErrorCode.BAD_JSON),
        (b'{"id": ' + b"9" * 5000 + b"}", ErrorCode.BAD_JSON),
        (b"[1, 2]", ErrorCode.BAD_REQUEST),
        (b'"hello"', ErrorCode.BAD_REQUEST),
    ],
)
def test_decode_body_rejects(body: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body(body)
    assert info.value.code == code


def test_parse_valid_requests() -> None:
    acquire = parse_request(
        {"v": 1, "op": "acquire", "id": 3, "name": "partition:t:g", "lease_ms": 500, "extra": 1}
    )
    assert (acquire.op, acquire.id, acquire.name, acquire.lease_ms, acquire.wait_ms) == (
        "acquire",
        3,
        "partition:t:g",
        500,
        None,
    )
    renew = parse_request({"v": 1, "op": "renew", "id": 4, "name": "a", "fence": 9})
    assert (renew.fence, renew.lease_ms) == (9, None)
    hello = parse_request({"v": 1, "op": "hello", "id": 0, "token": "t", "client": "c"})
    assert (hello.token, hello.client) == ("t", "c")
    assert parse_request({"v": 1, "op": "ping", "id": MAX_ID}).id == MAX_ID
    cancel = parse_request({"v": 1, "op": "cancel", "id": 5, "acquire_id": 3})
    assert (cancel.op, cancel.id, cancel.acquire_id, cancel.name) == ("cancel", 5, 3, None)


OK_ACQUIRE = {"v": 1, "op": "acquire", "id": 7, "name": "x", "lease_ms": 100, "wait_ms": 0}


def _with(**changes: Any) -> dict[str, Any]:
    message = dict(OK_ACQUIRE)
    for key, value in changes.items():
        if value is ...:
            del message[key]
        else:
            message[key] = value
    return message


@pytest.mark.parametrize(
    ("message", "code", "echoed_id"),
    [
        (_with(v=...), ErrorCode.BAD_REQUEST, 7),
        (_with(v=2), ErrorCode.UNSUPPORTED_VERSION, 7),
        (_with(v="1"), ErrorCode.BAD_REQUEST, 7),
        (_with(id=...), ErrorCode.BAD_REQUEST, None),
        (_with(id="7"), ErrorCode.BAD_REQUEST, None),
        (_with(id=-1), ErrorCode.BAD_REQUEST, None),
        (_with(id=True), ErrorCode.BAD_REQUEST, None),
        (_with(id=MAX_ID + 1), ErrorCode.BAD_REQUEST, None),
        (_with(op=...), ErrorCode.BAD_REQUEST, 7),
        (_with(op="steal"), ErrorCode.UNKNOWN_OP, 7),
        (_with(op=["acquire"]), ErrorCode.BAD_REQUEST, 7),
        (_with(name=...), ErrorCode.BAD_REQUEST, 7),
        (_with(name=""), ErrorCode.BAD_REQUEST, 7),
        (_with(name="x" * 257), ErrorCode.BAD_REQUEST, 7),
        (_with(name=5), ErrorCode.BAD_REQUEST, 7),
        (_with(lease_ms=0), ErrorCode.BAD_REQUEST, 7),
        (_with(lease_ms=True), ErrorCode.BAD_REQUEST, 7),
        (_with(lease_ms=1.5), ErrorCode.BAD_REQUEST, 7),
        (_with(wait_ms=-1), ErrorCode.BAD_REQUEST, 7),
        (_with(wait_ms="0"), ErrorCode.BAD_REQUEST, 7),
        (_with(op="renew"), ErrorCode.BAD_REQUEST, 7),  # no fence
        (_with(op="release", fence=False), ErrorCode.BAD_REQUEST, 7),
        (_with(op="hello", token=12), ErrorCode.BAD_REQUEST, 7),
        (_with(name="a\ud800"), ErrorCode.BAD_REQUEST, 7),
        (_with(op="hello", client="\udc80"), ErrorCode.BAD_REQUEST, 7),
        (_with(op="cancel"), ErrorCode.BAD_REQUEST, 7),  # no acquire_id
        (_with(op="cancel", acquire_id=-1), ErrorCode.BAD_REQUEST, 7),
        (_with(op="cancel", acquire_id="3"), ErrorCode.BAD_REQUEST, 7),
    ],
)
def test_parse_request_rejects(message: dict[str, Any], code: ErrorCode, echoed_id: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(message)
    assert info.value.code == code
    assert info.value.request_id == echoed_id


def test_seconds_to_ms_rounds_up_and_rejects_nonsense() -> None:
    assert seconds_to_ms(0.0001) == 1
    assert seconds_to_ms(1.5) == 1500
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            seconds_to_ms(bad)


async def _read(data: bytes, *, eof: bool, **kwargs: Any) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    kwargs.setdefault("max_frame_bytes", 1024)
    return await read_frame(reader, **kwargs)


def test_read_frame() -> None:
    async def scenario() -> None:
        assert await _read(encode_frame({"a": 1}), eof=False) == b'{"a":1}'
        with pytest.raises(EOFError):
            await _read(b"", eof=True)
        with pytest.raises(asyncio.IncompleteReadError):
            await _read(b"\x00\x00\x00\x09{}", eof=True)
        # Only the header is available: an oversized length is refused without the body.
        with pytest.raises(FrameTooLarge):
            await _read(struct.pack(">I", 1025), eof=False, frame_timeout=30)
        with pytest.raises(IdleTimeout):
            await _read(b"", eof=False, idle_timeout=0.05)
        # A frame that has started but does not finish runs into the frame deadline.
        with pytest.raises(FrameTimeout):
            await _read(b"\x00\x00\x00\x09{", eof=False, idle_timeout=30, frame_timeout=0.05)

    asyncio.run(scenario())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decoding_garbage_only_raises_protocol_error(body: bytes) -> None:
    try:
        parse_request(decode_body(body))
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
