"""LockClient and SyncLockClient: renewal, release on every exit path, loss detection,
abandoned requests, reconnection and error types."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from polling import until, wait_until

from fogverse.autoscale.lock import (
    LockClient,
    LockError,
    LockLost,
    LockServer,
    LockServiceError,
    LockTimeout,
    SyncLockClient,
)

HOST = "127.0.0.1"


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


async def is_free(port: int, name: str) -> bool:
    """Whether another client could take ``name`` right now."""
    async with LockClient(HOST, port) as probe:
        try:
            grant = await probe.acquire(name, timeout=0)
        except LockTimeout:
            return False
        await probe.release(grant)
        return True


def test_lock_block_renews_the_lease_while_held_and_releases_after() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            # The lease is long enough that a loaded machine's scheduling delays (a renewal
            # is due every lease / 3) do not lose it; three leases long, only renewals keep it.
            async with client.lock("r", lease=1.0, timeout=5) as grant:
                first_expiry = grant.expires_at
                await asyncio.sleep(3.0)
                assert not await is_free(server.port, "r")
                assert not grant.lost and grant.expires_at > first_expiry
            assert grant.released and not grant.lost
            assert await is_free(server.port, "r")

    run(scenario())


def test_lock_is_released_when_the_block_raises_or_is_cancelled() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            with pytest.raises(ValueError, match="boom"):
                async with client.lock("x", lease=30):
                    raise ValueError("boom")
            assert await is_free(server.port, "x")

            entered = asyncio.Event()

            async def holder() -> None:
                async with client.lock("x", lease=30):
                    entered.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(holder())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await is_free(server.port, "x")
            await until(lambda: server.stats()["locks"] == 0, 10, "the lock to be forgotten")

    run(scenario())


def test_cancelled_acquire_does_not_leave_the_lock_taken() -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0) as server,
            LockClient(HOST, server.port) as a,
            LockClient(HOST, server.port) as b,
        ):
            grant = await a.acquire("c", lease=30)
            waiting = asyncio.create_task(b.acquire("c", lease=30, timeout=None))
            await until(lambda: server.stats()["waiting"] == 1, 10, "b to wait")
            async with LockClient(HOST, server.port) as c:
                behind = asyncio.create_task(c.acquire("c", lease=30, timeout=60))
                await until(lambda: server.stats()["waiting"] == 2, 10, "c to wait behind b")
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                # b withdraws its request: the server never grants it, and b forgets it.
                await until(lambda: server.stats()["waiting"] == 1, 10, "b's request to go")
                conn = b._conn
                assert conn is not None
                await until(lambda: not conn.abandoned, 10, "b to hear its request went")
                await a.release(grant)
                late = await behind
                assert late.fence == grant.fence + 1  # nobody had the lock in between
                await c.release(late)

    run(scenario())


def test_shared_client_serialises_its_own_tasks() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            inside = 0
            most_inside = 0

            async def worker() -> None:
                nonlocal inside, most_inside
                for _ in range(5):
                    async with client.lock("shared", lease=5, timeout=10):
                        inside += 1
                        most_inside = max(most_inside, inside)
                        await asyncio.sleep(0.001)
                        inside -= 1

            await asyncio.gather(*(worker() for _ in range(4)))
            assert most_inside == 1

    run(scenario())


def test_lost_connection_cancels_the_block_with_lock_lost() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            with pytest.raises(LockLost, match="connection"):
                async with client.lock("d", lease=30) as grant:
                    assert client._conn is not None
                    client._conn.writer.transport.abort()
                    await asyncio.sleep(30)
            assert grant.lost
            # The client reconnects on next use.
            async with client.lock("d", lease=5, timeout=5) as again:
                assert again.fence > grant.fence

    run(scenario())


def test_expired_lease_is_reported_as_lock_lost(lock_server: Any) -> None:
    async def scenario() -> None:
        async with LockClient(HOST, lock_server.port) as client:
            started = time.monotonic()
            with pytest.raises(LockLost):
                async with client.lock("e", lease=0.2) as grant:
                    # Blocking this loop stops the renewals; the server (own thread) expires
                    # the lease meanwhile. The loop stays blocked until the server says so
                    # (however long that takes on a loaded machine); then the next renewal
                    # is refused and the block cancelled.
                    wait_until(  # the point: a loop that stalls
                        lambda: lock_server.stats()["held"] == 0, 20, "the lease to expire"
                    )
                    await asyncio.sleep(30)
            assert grant.lost and "not held" in (grant.lost_reason or "")
            assert time.monotonic() - started < 20
            with pytest.raises(LockLost):
                await client.renew(grant)
            with pytest.raises(LockLost):
                grant.check()

    run(scenario())


def test_without_cancel_on_loss_the_block_finishes_and_exit_raises() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            with pytest.raises(LockLost):
                async with client.lock("f", lease=30, cancel_on_loss=False) as grant:
                    assert client._conn is not None
                    client._conn.writer.transport.abort()
                    await until(lambda: grant.lost, 10, "the loss")
                    await asyncio.sleep(0.01)  # not cancelled

    run(scenario())


def test_block_that_swallows_the_loss_cancellation_still_raises_lock_lost() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            swallowed = False
            with pytest.raises(LockLost):
                async with client.lock("g", lease=30):
                    assert client._conn is not None
                    client._conn.writer.transport.abort()
                    try:
                        await asyncio.sleep(30)
                    except asyncio.CancelledError:
                        swallowed = True
            assert swallowed
            # No stray cancellation is left on the task.
            await asyncio.sleep(0)
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(scenario())


def test_outer_cancellation_is_not_turned_into_lock_lost() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            entered = asyncio.Event()

            async def body() -> None:
                async with client.lock("o", lease=30):
                    entered.set()
                    await asyncio.sleep(30)

            task = asyncio.create_task(body())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await is_free(server.port, "o")

    run(scenario())


def test_bad_arguments_are_refused_before_reaching_the_server() -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server, LockClient(HOST, server.port) as client:
            grant = await client.acquire("ok", lease=30)
            for name in ("", "x" * 257, "a\ud800", 5):
                with pytest.raises(ValueError):
                    await client.acquire(name)  # type: ignore[arg-type]
            for lease in (0, -1, float("nan")):
                with pytest.raises(ValueError):
                    await client.acquire("y", lease=lease)
            # The connection, and the lock it holds, are untouched.
            await client.renew(grant)
            await client.release(grant)
        with pytest.raises(ValueError):
            LockClient(HOST, 1, token="")
        with pytest.raises(ValueError):
            LockServer(HOST, 0, token="")

    run(scenario())


def test_timeouts_and_service_errors() -> None:
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0) as server,
            LockClient(HOST, server.port) as a,
            LockClient(HOST, server.port) as b,
        ):
            grant = await a.acquire("t", lease=30)
            with pytest.raises(LockTimeout, match=r"0\.1 s"):
                await b.acquire("t", timeout=0.1)
            with pytest.raises(TimeoutError):  # LockTimeout is a TimeoutError
                await b.acquire("t", timeout=0)
            await a.release(grant)
            await a.release(grant)  # releasing twice is a no-op
            with pytest.raises(LockLost):
                await a.renew(grant)
        # Nothing listens on a just-closed port.
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        with pytest.raises(LockServiceError) as info:
            await LockClient(HOST, port, connect_timeout=2).acquire("t")
        assert info.value.code == "connection_lost"
        assert issubclass(LockServiceError, LockError)

    run(scenario())


def test_sync_client(lock_server: Any) -> None:
    before = set(threading.enumerate())
    with (
        SyncLockClient(HOST, lock_server.port, client_name="sync") as client,
        SyncLockClient(HOST, lock_server.port) as other,
    ):
        assert client.ping() >= 0
        # A lease long enough for a loaded machine's stalls (renewed every third of it), and
        # a wait until its first term has surely ended: it must have been renewed meanwhile.
        with client.lock("s", lease=2.0, timeout=5) as grant:
            first_end = grant.expires_at
            wait_until(lambda: time.monotonic() > first_end + 0.2, 30, "the first term to end")
            with pytest.raises(LockTimeout):
                other.acquire("s", timeout=0)
            assert not grant.lost
        assert grant.released
        with pytest.raises(KeyError), client.lock("s", lease=5):
            raise KeyError("boom")
        taken = other.acquire("s", timeout=0)
        assert taken.fence > grant.fence
        other.release(taken)
    # No thread of either client outlives it.
    assert set(threading.enumerate()) <= before
    # A closed client can be used again (on a fresh background loop), and closed again.
    reused = SyncLockClient(HOST, lock_server.port)
    for _ in range(2):
        with reused.lock("s", lease=5, timeout=5) as again:
            assert again.fence > taken.fence
        reused.close()
    assert set(threading.enumerate()) <= before


def test_sync_client_reports_a_loss_when_the_block_ends(lock_server: Any) -> None:
    with SyncLockClient(HOST, lock_server.port) as client:
        with pytest.raises(LockLost), client.lock("l", lease=30) as grant:
            loop = client._loop
            assert loop is not None and client._client._conn is not None
            loop.call_soon_threadsafe(client._client._conn.writer.transport.abort)
            wait_until(lambda: grant.lost, 10, "the client to notice the lost lock")
        with pytest.raises(LockLost):
            client.renew(grant)


@pytest.mark.timeout(60)
def test_unrenewable_lease_is_lost_by_its_end_before_the_lock_passes_on() -> None:
    # The holder's renewals stop reaching the server (its connection stays open): the server
    # hands the lock to the waiter when the lease ends, so by then the holder's block must
    # already have been told, not up to a second later.
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0) as server,
            LockClient(HOST, server.port, request_timeout=1.0) as a,
            LockClient(HOST, server.port) as b,
        ):
            entered = asyncio.Event()
            held: list[Any] = []

            async def holder() -> None:
                async with a.lock("p", lease=0.3) as grant:
                    held.append(grant)
                    assert a._conn is not None
                    a._conn.writer.write = lambda data: None  # type: ignore[method-assign]
                    entered.set()
                    await asyncio.sleep(30)

            task = asyncio.create_task(holder())
            await entered.wait()
            taken = await b.acquire("p", lease=30, timeout=20)
            # The holder's wait for a renewal ends when its lease does (its own estimate, no
            # later than the server's), so on a stalled loop the holder's timeout and B's
            # grant can become ready in one pass: let the loop run the few steps from that
            # timeout to the loss before looking. The old wait ran a second past the lease.
            for _ in range(20):
                await asyncio.sleep(0)
            lost_by_then = held[0].lost
            with pytest.raises(LockLost):
                await task
            assert lost_by_then, "the lock passed on while its previous holder's block still ran"
            await b.release(taken)

    run(scenario())


@pytest.mark.timeout(60)
def test_small_server_frame_limit_does_not_cut_the_client_off_on_long_replies() -> None:
    # max_frame_bytes bounds what the server reads; its replies ("not held" with the lock's name
    # and fence) can be longer. Refusing them would drop the connection and every lock on it.
    async def scenario() -> None:
        async with (
            LockServer(HOST, 0, max_frame_bytes=128) as server,
            LockClient(HOST, server.port) as client,
        ):
            kept = await client.acquire("keep", lease=30)
            short = await client.acquire("short", lease=0.05)
            await until(lambda: server.stats()["held"] == 1, 10, "the short lease to expire")
            with pytest.raises(LockLost, match="not held"):
                await client.renew(short)
            assert not kept.lost, kept.lost_reason
            assert server.stats()["held"] == 1
            await client.release(kept)

    run(scenario())


@pytest.mark.timeout(60)
def test_grant_whose_connection_closed_before_acquire_returned_is_not_handed_out() -> None:
    # The grant reply and, in the same read, a frame that makes the client drop the connection
    # (the server then releases the lock): acquire must not return the grant as held.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def recv() -> dict[str, Any]:
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            return json.loads(await reader.readexactly(length))

        def frame(message: dict[str, Any]) -> bytes:
            body = json.dumps(message).encode()
            return struct.pack(">I", len(body)) + body

        hello = await recv()
        writer.write(frame({"v": 1, "id": hello["id"], "ok": True}))
        req = await recv()
        grant = {"v": 1, "id": req["id"], "ok": True, "name": req["name"], "fence": 7}
        writer.write(frame({**grant, "lease_ms": 30000}) + b"\xff\xff\xff\xff")
        await reader.read()
        writer.close()

    async def scenario() -> None:
        fake = await asyncio.start_server(handle, HOST, 0)
        async with fake, LockClient(HOST, fake.sockets[0].getsockname()[1]) as client:
            try:
                grant = await client.acquire("z", lease=30)
            except LockServiceError as exc:
                assert exc.code == "connection_lost"
            else:
                assert grant.lost, "acquire returned a grant on a closed connection as held"

    run(scenario())


@pytest.mark.timeout(60)
def test_cancelled_acquire_sends_no_cancel_to_a_server_that_does_not_list_it() -> None:
    # A server from before "cancel" closes the connection on an unknown op, taking every lock
    # of the client with it: the client asks only a server whose hello lists the op.
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
            except asyncio.IncompleteReadError:
                break
            req = json.loads(await reader.readexactly(length))
            seen.append(req["op"])
            if req["op"] != "acquire":  # never granted
                body = json.dumps({"v": 1, "id": req["id"], "ok": True}).encode()
                writer.write(struct.pack(">I", len(body)) + body)
        writer.close()

    async def scenario() -> None:
        old = await asyncio.start_server(handle, HOST, 0)
        async with old, LockClient(HOST, old.sockets[0].getsockname()[1]) as client:
            waiting = asyncio.create_task(client.acquire("n", timeout=None))
            await until(lambda: "acquire" in seen, 10, "the acquire to arrive")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await client.ping()
            assert seen == ["hello", "acquire", "ping"]

    run(scenario())
