"""Lock semantics over real sockets: named locks, leases, FIFO waiters, fencing, connection drops,
per-connection limits, shutdown, and the standalone command."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from polling import until

from fogverse.autoscale.lock import LockClient, LockServer, LockServiceError

HOST = "127.0.0.1"
Raw = Callable[[int], Awaitable[Any]]


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def test_port_zero_reports_the_bound_port_and_hello_describes_limits(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0, idle_timeout=7.0, default_lease=3.0) as server:
            assert server.port > 0
            assert server.addresses == [(HOST, server.port)]
            conn = await raw(server.port)
            reply = await conn.call("hello", client="t")
            assert reply["ok"] is True and reply["v"] == 1
            assert reply["idle_timeout_ms"] == 7000
            assert reply["default_lease_ms"] == 3000
            assert reply["max_frame_bytes"] == 64 * 1024
            await conn.close()

    run(scenario())


def test_named_locks_are_independent_and_fences_increase(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            a, b = await raw(server.port), await raw(server.port)
            one = await a.call("acquire", name="partition:t1:g", wait_ms=0)
            two = await b.call("acquire", name="partition:t2:g", wait_ms=0)
            assert one["ok"] and two["ok"]
            assert two["fence"] > one["fence"]
            busy = await b.call("acquire", name="partition:t1:g", wait_ms=0)
            assert (busy["ok"], busy["error"]) == (False, "timeout")
            fences = [one["fence"]]
            for _ in range(3):
                assert (await a.call("release", name="partition:t1:g", fence=fences[-1]))["ok"]
                again = await a.call("acquire", name="partition:t1:g", wait_ms=0)
                fences.append(again["fence"])
            assert fences == sorted(set(fences))
            assert server.stats() == {"connections": 2, "locks": 2, "held": 2, "waiting": 0}
            await a.close()
            await b.close()

    run(scenario())


def test_waiters_are_granted_in_fifo_order(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            holder = await raw(server.port)
            grant = await holder.call("acquire", name="q", lease_ms=30_000)
            waiters = []
            for i in range(5):
                conn = await raw(server.port)
                await conn.request("acquire", name="q", lease_ms=30_000, wait_ms=20_000)
                await until(lambda n=i + 1: server.stats()["waiting"] == n, 10, f"waiter {i + 1}")
                waiters.append(conn)
            await holder.call("release", name="q", fence=grant["fence"])
            last_fence = grant["fence"]
            # If anyone but the oldest waiter were granted, it would never release and the
            # oldest waiter's recv would time out.
            for conn in waiters:
                reply = await conn.recv(timeout=10)
                assert reply is not None and reply["ok"], reply
                assert reply["fence"] > last_fence
                last_fence = reply["fence"]
                assert (await conn.call("release", name="q", fence=last_fence))["ok"]
            assert server.stats()["locks"] == 0
            for conn in [holder, *waiters]:
                await conn.close()

    run(scenario())


def test_cancel_withdraws_a_queued_acquire_and_the_next_waiter_gets_the_lock(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            holder, quitter, patient = [await raw(server.port) for _ in range(3)]
            assert "cancel" in (await quitter.call("hello"))["ops"]
            grant = await holder.call("acquire", name="q", lease_ms=30_000)
            gone = await quitter.request("acquire", name="q", lease_ms=30_000)
            await until(lambda: server.stats()["waiting"] == 1, 10, "the quitter to wait")
            await patient.request("acquire", name="q", lease_ms=30_000)
            await until(lambda: server.stats()["waiting"] == 2, 10, "the patient one to wait")
            cancel = await quitter.request("cancel", acquire_id=gone)
            # The acquire is answered (once, before the cancel), then the cancel.
            withdrawn = await quitter.recv()
            assert withdrawn is not None
            assert (withdrawn["id"], withdrawn["ok"], withdrawn["error"]) == (
                gone,
                False,
                "cancelled",
            )
            reply = await quitter.recv()
            assert reply == {"v": 1, "id": cancel, "ok": True, "withdrawn": True}
            assert server.stats()["waiting"] == 1
            # Nothing left to withdraw: the connection carries on.
            for acquire_id in (gone, 12345):
                again = await quitter.call("cancel", acquire_id=acquire_id)
                assert again["ok"] and again["withdrawn"] is False
            # Released, the lock goes straight to the waiter still there, not to the quitter.
            await holder.call("release", name="q", fence=grant["fence"])
            taken = await patient.recv()
            assert taken is not None and taken["ok"] and taken["fence"] == grant["fence"] + 1
            assert (await quitter.call("ping"))["ok"]  # and no grant arrived before the pong
            assert server.stats() == {"connections": 3, "locks": 1, "held": 1, "waiting": 0}
            # An acquire answered already is not touched by a cancel.
            assert (await patient.call("cancel", acquire_id=taken["id"]))["withdrawn"] is False
            assert (await patient.call("release", name="q", fence=taken["fence"]))["ok"]
            for conn in (holder, quitter, patient):
                await conn.close()

    run(scenario())


def test_wait_timeout_gets_a_timeout_reply_and_leaves_the_queue(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            holder, waiter = await raw(server.port), await raw(server.port)
            grant = await holder.call("acquire", name="w", lease_ms=30_000)
            reply = await waiter.call("acquire", name="w", wait_ms=150)
            assert reply["ok"] is False and reply["error"] == "timeout"
            assert "w" in reply["detail"]
            assert server.stats()["waiting"] == 0
            # The timed-out waiter is not granted later, and its connection keeps working.
            await holder.call("release", name="w", fence=grant["fence"])
            assert server.stats()["locks"] == 0
            assert (await waiter.call("ping"))["ok"]
            await holder.close()
            await waiter.close()

    run(scenario())


def test_unrenewed_lease_expires_and_passes_to_the_waiter(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            stale, waiter = await raw(server.port), await raw(server.port)
            # Renewals keep it: after 3 renewals spanning more than a lease it is still held.
            # Each renewal comes 0.4 s after the last, so a loaded machine may delay one by
            # up to 0.6 s before the lease (1 s) runs out.
            grant = await stale.call("acquire", name="e", lease_ms=1000)
            for _ in range(3):
                await asyncio.sleep(0.4)
                renewed = await stale.call("renew", name="e", fence=grant["fence"])
                assert renewed["ok"] and renewed["lease_ms"] == 1000
            taken = await waiter.call("acquire", name="e", lease_ms=30_000, wait_ms=10_000)
            assert taken["ok"] and taken["fence"] > grant["fence"]
            # The stale holder is still connected but its fence is no longer valid.
            assert server.stats()["connections"] == 2
            for op in ("renew", "release"):
                refused = await stale.call(op, name="e", fence=grant["fence"])
                assert (refused["ok"], refused["error"]) == (False, "not_held")
            # Nor can it use the new holder's fence: ownership is per connection.
            refused = await stale.call("release", name="e", fence=taken["fence"])
            assert refused["error"] == "not_held"
            assert (await waiter.call("release", name="e", fence=taken["fence"]))["ok"]
            await stale.close()
            await waiter.close()

    run(scenario())


def test_closing_a_connection_releases_its_locks_and_cancels_its_waits(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            a, c, d = [await raw(server.port) for _ in range(3)]
            a_grant = await a.call("acquire", name="a", lease_ms=60_000)
            c_grant = await c.call("acquire", name="b", lease_ms=60_000)
            await a.request("acquire", name="b", wait_ms=60_000)
            await d.request("acquire", name="a", lease_ms=60_000, wait_ms=60_000)
            await until(lambda: server.stats()["waiting"] == 2, 10, "both waiters")
            await a.close()
            granted = await d.recv(timeout=5)
            assert granted is not None and granted["ok"] and granted["fence"] > a_grant["fence"]
            await until(lambda: server.stats()["connections"] == 2, 10, "a's connection to close")
            # a's wait for b died with a: releasing b leaves it free.
            assert (await c.call("release", name="b", fence=c_grant["fence"]))["ok"]
            assert server.stats() == {"connections": 2, "locks": 1, "held": 1, "waiting": 0}
            await c.close()
            await d.close()
            await until(lambda: server.stats()["locks"] == 0, 10, "every lock to be forgotten")

    run(scenario())


def test_network_error_on_a_connection_is_its_end_not_an_internal_error(
    raw: Raw, caplog: pytest.LogCaptureFixture
) -> None:
    # A client whose host vanished: the kernel fails the socket with EHOSTUNREACH (an OSError
    # that is no ConnectionError), as asyncio's transport reports it.
    async def scenario() -> None:
        async with LockServer(HOST, 0) as server:
            gone, waiter = await raw(server.port), await raw(server.port)
            grant = await gone.call("acquire", name="h", lease_ms=60_000)
            await waiter.request("acquire", name="h", lease_ms=60_000)
            await until(lambda: server.stats()["waiting"] == 1, 10, "the waiter")
            (session,) = [s for s in server._sessions if s.held]
            protocol: Any = session.writer._protocol  # type: ignore[attr-defined]
            protocol.connection_lost(OSError(errno.EHOSTUNREACH, "No route to host"))
            taken = await waiter.recv()
            assert taken is not None and taken["ok"] and taken["fence"] > grant["fence"]
            await until(lambda: server.stats()["connections"] == 1, 10, "the session to go")
            await gone.close()
            await waiter.close()

    with caplog.at_level(logging.DEBUG, logger="fogverse.autoscale.lock"):
        run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def test_lease_is_capped_and_pending_requests_are_limited(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(
            HOST,
            0,
            default_lease=1.0,
            max_lease=2.0,
            max_pending_per_connection=2,
            max_held_per_connection=3,
        ) as server:
            holder, greedy = await raw(server.port), await raw(server.port)
            grant = await holder.call("acquire", name="x", lease_ms=10**9)
            assert grant["lease_ms"] == 2000
            renewed = await holder.call("renew", name="x", fence=grant["fence"], lease_ms=10**9)
            assert renewed["lease_ms"] == 2000
            assert (await holder.call("acquire", name="y", wait_ms=0))["lease_ms"] == 1000
            with pytest.raises(ValueError):
                LockServer(HOST, 0, default_lease=5.0, max_lease=2.0)
            for _ in range(2):
                await greedy.request("acquire", name="x", wait_ms=60_000)
            refused = await greedy.call("acquire", name="x", wait_ms=60_000)
            assert refused["error"] == "too_many_pending"
            # A refusal of this kind does not end the connection.
            assert (await greedy.call("ping"))["ok"]
            # holder has x and y; max_held_per_connection=3.
            assert (await holder.call("acquire", name="z", wait_ms=0))["ok"]
            refused = await holder.call("acquire", name="w", wait_ms=0)
            assert refused["error"] == "too_many_pending"
            await holder.close()
            await greedy.close()

    run(scenario())


def test_connection_limit_refuses_extra_connections(raw: Raw) -> None:
    async def scenario() -> None:
        async with LockServer(HOST, 0, max_connections=1) as server:
            first = await raw(server.port)
            assert (await first.call("ping"))["ok"]
            second = await raw(server.port)
            reply = await second.recv()
            assert reply is not None and reply["error"] == "busy"
            assert await second.at_eof()
            assert (await first.call("ping"))["ok"]
            await first.close()
            await second.close()

    run(scenario())


def test_stop_disconnects_clients_and_forgets_locks(raw: Raw) -> None:
    async def scenario() -> None:
        server = LockServer(HOST, 0)
        await server.start()
        client = LockClient(HOST, server.port)
        grant = await client.acquire("s", lease=30)
        waiting = asyncio.create_task(client.acquire("s", timeout=None))
        await until(lambda: server.stats()["waiting"] == 1, 10, "the waiter")
        await server.stop()
        with pytest.raises(LockServiceError) as info:
            await waiting
        assert info.value.code == "connection_lost"
        assert grant.lost
        assert server.stats() == {"connections": 0, "locks": 0, "held": 0, "waiting": 0}
        await client.close()
        # Stopping twice is harmless.
        await server.stop()

    run(scenario())


def test_standalone_command_serves_until_sigterm(python: str, child_env: dict[str, str]) -> None:
    env = dict(child_env, FOGVERSE_LOCK_TOKEN="s3cret")
    proc = subprocess.Popen(
        [python, "-m", "fogverse.autoscale.lock.server", "--host", HOST, "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "server did not report its port"

        async def use() -> None:
            async with (
                LockClient(HOST, port, token="s3cret") as client,
                client.lock("cli", lease=5) as grant,
            ):
                assert grant.fence > 0
            with pytest.raises(LockServiceError) as info:
                await LockClient(HOST, port, token="wrong").connect()
            assert info.value.code == "auth_failed"

        run(use())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert out == ""  # logging only, no print
        assert "lock server stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
