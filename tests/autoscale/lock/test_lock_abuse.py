"""Misbehaving connections: each is answered with an error and/or closed, while a well-behaved
client keeps being served on the same server during the abuse and afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from polling import until

from fogverse.autoscale.lock import LockClient, LockServer, LockServiceError

HOST = "127.0.0.1"
Raw = Callable[[int], Awaitable[Any]]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def message(**fields: Any) -> bytes:
    return frame(json.dumps(fields).encode())


class Bystander:
    """A well-behaved client that holds a lock across the abuse and does round trips."""

    def __init__(self, client: LockClient) -> None:
        self.client = client
        self.round_trips = 0

    async def round_trip(self) -> None:
        grant = await self.client.acquire("bystander:rt", lease=5, timeout=5)
        await self.client.release(grant)
        self.round_trips += 1


@asynccontextmanager
async def bystanding(server: LockServer, token: str | None = None) -> AsyncIterator[Bystander]:
    async with LockClient(HOST, server.port, token=token, request_timeout=5) as client:
        # The lease outlasts any scenario, however slow the machine: only the abuse could
        # take it away.
        held = await client.acquire("bystander:held", lease=3600, timeout=5)
        bystander = Bystander(client)
        yield bystander
        # Same connection, same lock: nothing the abuser did reached this client.
        await client.renew(held)
        await client.release(held)
        await bystander.round_trip()
        assert not held.lost


MALFORMED = [
    pytest.param(frame(b"not json"), "bad_json", None, id="not-json"),
    pytest.param(frame(b"\xff\xfe\xfd"), "bad_json", None, id="not-utf8"),
    pytest.param(frame(b""), "bad_json", None, id="empty-body"),
    pytest.param(frame(b"[" * 60_000), "bad_json", None, id="deep-nesting"),
    pytest.param(frame(b'{"v":1,"op":"ping","id":NaN}'), "bad_json", None, id="nan"),
    pytest.param(frame(b"[1,2,3]"), "bad_request", None, id="not-an-object"),
    pytest.param(message(v=1, op="ping", id="7"), "bad_request", None, id="id-string"),
    pytest.param(message(v=1, op="ping"), "bad_request", None, id="id-missing"),
    pytest.param(message(op="ping", id=4), "bad_request", 4, id="v-missing"),
    pytest.param(message(v=2, op="ping", id=3), "unsupported_version", 3, id="v2"),
    pytest.param(message(v=1, op="steal", id=5), "unknown_op", 5, id="unknown-op"),
    pytest.param(message(v=1, op="acquire", id=6), "bad_request", 6, id="name-missing"),
    pytest.param(
        message(v=1, op="acquire", id=8, name="x", lease_ms=True), "bad_request", 8, id="bool-int"
    ),
    pytest.param(message(v=1, op="renew", id=9, name="x"), "bad_request", 9, id="fence-missing"),
    pytest.param(
        message(v=1, op="acquire", id=10, name="x" * 1000), "bad_request", 10, id="long-name"
    ),
    pytest.param(
        frame(b'{"v":1,"op":"acquire","id":11,"name":"a\\ud800"}'),
        "bad_request",
        11,
        id="lone-surrogate-name",
    ),
    pytest.param(
        frame(b'{"v":1,"op":"hello","id":12,"token":"\\udfff"}'),
        "bad_request",
        12,
        id="lone-surrogate-token",
    ),
]


@pytest.mark.parametrize(("data", "code", "echoed_id"), MALFORMED)
def test_malformed_frame_gets_error_and_close(
    raw: Raw, data: bytes, code: str, echoed_id: int | None
) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, bystanding(server) as bystander:
            bad = await raw(server.port)
            await bad.send_bytes(data)
            await bystander.round_trip()
            reply = await bad.recv()
            assert reply is not None
            assert (reply["ok"], reply["error"], reply["id"]) == (False, code, echoed_id)
            assert await bad.at_eof()
            await bystander.round_trip()
            await bad.close()

    asyncio.run(scenario())


def test_oversized_length_is_refused_before_the_body_arrives(raw: Raw) -> None:
    async def scenario() -> None:
        # A long frame deadline: if the server waited for the body we would see no reply.
        async with (
            LockServer(HOST, 0, max_frame_bytes=1024, frame_timeout=60) as server,
            bystanding(server) as bystander,
        ):
            bad = await raw(server.port)
            await bad.send_bytes(struct.pack(">I", 1025))
            reply = await bad.recv(timeout=10)
            assert reply is not None and reply["error"] == "frame_too_large"
            await bystander.round_trip()
            assert await bad.at_eof()
            # The same for a client that keeps streaming the body it announced.
            flood = await raw(server.port)
            await flood.send_bytes(struct.pack(">I", 10 * 1024 * 1024) + b"x" * 200_000)
            reply = await flood.recv(timeout=10)
            assert reply is not None and reply["error"] == "frame_too_large"
            await bystander.round_trip()
            await bad.close()
            await flood.close()

    asyncio.run(scenario())


def test_slow_drip_frame_times_out(raw: Raw) -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0, frame_timeout=0.5, idle_timeout=30) as server,
            bystanding(server) as bystander,
        ):
            bad = await raw(server.port)
            data = message(v=1, op="ping", id=1)
            dripped = 0
            reply_task = asyncio.create_task(bad.recv(timeout=10))
            # One byte at a time with a round trip of the bystander in between: the frame would
            # take far longer than the frame deadline to complete.
            while not reply_task.done() and dripped < len(data) - 1:
                try:
                    await bad.send_bytes(data[dripped : dripped + 1])
                except ConnectionError:
                    break
                dripped += 1
                await bystander.round_trip()
                await asyncio.sleep(0.05)
            reply = await reply_task
            assert reply is not None and reply["error"] == "frame_timeout"
            assert dripped < len(data) - 1, "the frame deadline never fired"
            assert bystander.round_trips >= 2
            assert await bad.at_eof()
            await bad.close()

    asyncio.run(scenario())


def test_idle_connection_is_closed_but_pings_keep_one_alive(raw: Raw) -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0, idle_timeout=1.0) as server,
            bystanding(server) as bystander,
        ):
            idle, pinger = await raw(server.port), await raw(server.port)
            closed = asyncio.create_task(idle.recv(timeout=10))
            loop = asyncio.get_running_loop()
            started = loop.time()
            # The pinger sends something every 0.2 s for three idle periods (a loaded
            # machine may delay one ping by up to 0.8 s before the idle timeout).
            while loop.time() - started < 3.0:
                assert (await pinger.call("ping"))["ok"]
                await bystander.round_trip()
                await asyncio.sleep(0.2)
            reply = await closed
            assert reply is not None and reply["error"] == "idle_timeout"
            assert await idle.at_eof()
            assert (await pinger.call("ping"))["ok"]
            # The client library pings on its own (a third of the idle timeout announced in
            # the hello reply), so a lock it holds survives a quiet spell.
            assert bystander.client.server_info["idle_timeout_ms"] == 1000
            await idle.close()
            await pinger.close()

    asyncio.run(scenario())


def test_client_keepalive_survives_idle_timeout() -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0, idle_timeout=1.0) as server,
            LockClient(HOST, server.port) as client,
        ):
            # Three idle periods; the client pings every third of one, so a loaded machine
            # may delay a ping by up to two thirds of a period.
            grant = await client.acquire("quiet", lease=30)
            await asyncio.sleep(3.0)
            await client.renew(grant)
            assert not grant.lost
            await client.release(grant)

    asyncio.run(scenario())


def test_token_is_required_and_checked(raw: Raw) -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0, token="s3cret") as server,
            bystanding(server, token="s3cret") as bystander,
        ):
            cases = [
                (message(v=1, op="hello", id=1, token="wrong"), "auth_failed"),
                (message(v=1, op="hello", id=1, token="s3crét"), "auth_failed"),
                (message(v=1, op="hello", id=1), "auth_failed"),
                (message(v=1, op="acquire", id=1, name="x"), "auth_required"),
                (message(v=1, op="ping", id=1), "auth_required"),
            ]
            for data, code in cases:
                bad = await raw(server.port)
                await bad.send_bytes(data)
                await bystander.round_trip()
                reply = await bad.recv()
                assert reply is not None and (reply["id"], reply["error"]) == (1, code)
                assert await bad.at_eof()
                await bad.close()
            # After a good hello the connection is served; a later wrong hello ends it.
            conn = await raw(server.port)
            assert (await conn.call("hello", token="s3cret"))["ok"]
            assert (await conn.call("ping"))["ok"]
            assert (await conn.call("hello", token="nope"))["error"] == "auth_failed"
            assert await conn.at_eof()
            await conn.close()
            with pytest.raises(LockServiceError) as info:
                await LockClient(HOST, server.port, token="wrong").connect()
            assert info.value.code == "auth_failed"
            with pytest.raises(LockServiceError) as info:
                await LockClient(HOST, server.port).acquire("x")
            assert info.value.code == "auth_failed"

    asyncio.run(scenario())


@pytest.mark.timeout(600)  # thousands of hello round trips: slow on a loaded machine
def test_client_that_never_reads_replies_is_cut_off(raw: Raw) -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0, frame_timeout=0.5) as server,
            bystanding(server) as bystander,
        ):
            hog = await raw(server.port)
            await until(lambda: server.stats()["connections"] == 2, 10, "the hog and the bystander")
            # Stop reading on our side so that the server's replies pile up (hello has the
            # longest reply per request byte).
            hog.writer.transport.pause_reading()
            hellos = b"".join(message(v=1, op="hello", id=i) for i in range(2000))
            for _ in range(1000):
                if server.stats()["connections"] == 1:
                    break
                try:
                    async with asyncio.timeout(2):
                        await hog.send_bytes(hellos)
                except ConnectionError:
                    break
                except TimeoutError:
                    pass  # our send buffer is full: the server no longer reads from us
                await bystander.round_trip()
            await until(lambda: server.stats()["connections"] == 1, 20, "the hog to be cut off")
            await bystander.round_trip()
            # The socket itself is gone too, not just the session: reading reaches its end.
            hog.writer.transport.resume_reading()
            async with asyncio.timeout(20):
                with contextlib.suppress(ConnectionError):
                    while await hog.reader.read(1 << 20):
                        pass
            hog.writer.transport.abort()

    asyncio.run(scenario())
