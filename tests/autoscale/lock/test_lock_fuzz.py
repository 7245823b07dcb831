"""Thousands of random byte strings and JSON messages against one server: every reply is a
well-formed frame, the server keeps running, and a well-behaved client still works after."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import wait_until

from fogverse.autoscale.lock import LockClient

HOST = "127.0.0.1"


# A fixed number of examples, not a time budget: on a loaded machine they take longer, so the
# hang guard is wider than the suite's default.
pytestmark = pytest.mark.timeout(600)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def exchange(port: int, data: bytes) -> list[dict[str, Any]]:
    """Send ``data``, half-close, read to the end; return the replies (checked well-formed)."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may already have refused an early part of it
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    replies = []
    offset = 0
    while offset < len(received):
        assert len(received) - offset >= 4, "truncated reply header"
        (length,) = struct.unpack_from(">I", received, offset)
        body = bytes(received[offset + 4 : offset + 4 + length])
        assert len(body) == length, "truncated reply body"
        reply = json.loads(body)
        assert reply["v"] == 1 and isinstance(reply["ok"], bool)
        assert reply["ok"] or isinstance(reply["error"], str)
        assert reply.get("error") != "internal", reply
        replies.append(reply)
        offset += 4 + length
    return replies


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
# Lone surrogates survive JSON decoding but not re-encoding: names and tokens made of them.
surrogates = st.lists(st.integers(0xD800, 0xDFFF).map(chr), min_size=1, max_size=3).map("".join)
anything = st.one_of(json_values, st.integers(-(2**70), 2**70), st.text(max_size=300), surrogates)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values most of the time, so that messages get past validation and reach the locks."""
    return st.integers(0, 9).flatmap(lambda roll: bad if roll == 9 else good)


near_valid = st.fixed_dictionaries(
    {
        "v": mostly(st.just(1), st.sampled_from([0, 2, "1", None, True, 1.0])),
        "op": mostly(
            st.sampled_from(["acquire", "acquire", "renew", "release", "cancel", "ping", "hello"]),
            st.sampled_from(["", "x", 1, None]),
        ),
        "id": mostly(st.integers(0, 1000), st.one_of(st.integers(-3, 2**54), anything)),
        "name": mostly(st.sampled_from(["a", "b", "partition:t:g", "\u00e9t\u00e9"]), anything),
    },
    optional={
        "fence": mostly(st.one_of(st.integers(0, 64), st.integers(0, 2**53)), anything),
        "lease_ms": mostly(st.integers(1, 10**7), anything),
        "wait_ms": mostly(st.integers(0, 300), anything),
        "acquire_id": mostly(st.integers(0, 1000), anything),
        "token": mostly(st.text(max_size=20), anything),
        "client": mostly(st.text(min_size=1, max_size=20), anything),
    },
)


def test_random_bytes_never_break_the_server(
    shared_lock_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = shared_lock_server.port

    @fuzz(3000)
    @given(
        st.one_of(
            st.binary(max_size=300),
            # A plausible header followed by junk, so that bodies get parsed too.
            st.tuples(st.integers(0, 300), st.binary(max_size=300)).map(
                lambda t: struct.pack(">I", t[0]) + t[1]
            ),
        )
    )
    def check(data: bytes) -> None:
        for reply in exchange(port, data):
            assert reply["ok"] is False

    check()
    _assert_healthy(shared_lock_server, caplog)


def test_random_json_messages_never_break_the_server(
    shared_lock_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = shared_lock_server.port

    @fuzz(1500)
    @given(st.lists(mostly(near_valid, json_values), min_size=1, max_size=6))
    def check(messages: list[Any]) -> None:
        data = b"".join(frame(json.dumps(m).encode()) for m in messages)
        replies = exchange(port, data)
        assert len(replies) <= len(messages) + 1

    check()
    _assert_healthy(shared_lock_server, caplog)


def _assert_healthy(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert server.running
    # Internal errors are contained per connection, but there must not be any.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()
    # Every fuzz connection is gone and with it every lock it took.
    idle = {"connections": 0, "locks": 0, "held": 0, "waiting": 0}
    wait_until(
        lambda: server.stats() == idle, 10, lambda: f"the server to be idle; {server.stats()}"
    )

    async def well_behaved() -> None:
        async with LockClient(HOST, server.port) as client:
            async with client.lock("partition:t:g", lease=5, timeout=5) as grant:
                assert grant.fence > 0
            assert await client.ping() >= 0

    asyncio.run(well_behaved())
