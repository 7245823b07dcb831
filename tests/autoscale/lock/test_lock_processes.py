"""The lock across processes: mutual exclusion under contention from async tasks and OS
processes, and what happens to a holder process that is killed or frozen."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from polling import until

from fogverse.autoscale.lock import LockClient, LockTimeout

HOST = "127.0.0.1"

# Read-modify-write of "<count> <last fence>" with a yield in the middle: without mutual
# exclusion concurrent increments overwrite each other. The file is replaced atomically so that
# a reader never sees half a write, even in the unlocked control run.
COUNTER_WORKER = r"""
import os, sys, time
from fogverse.autoscale.lock import SyncLockClient

host, port, path, rounds, mode = sys.argv[1:]
port, rounds = int(port), int(rounds)

def bump(fence):
    with open(path) as f:
        value, last_fence = map(int, f.read().split())
    time.sleep(0.001)
    if fence is not None and fence <= last_fence:
        sys.exit(f"fence went backwards: {fence} after {last_fence}")
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{value + 1} {fence or 0}")
    os.replace(tmp, path)

with SyncLockClient(host, port, client_name=f"counter-{os.getpid()}") as client:
    client.ping()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(rounds):
        if mode == "lock":
            with client.lock("counter", lease=10, timeout=60) as grant:
                bump(grant.fence)
        else:
            bump(None)
"""

HOLDER = r"""
import sys, time
from fogverse.autoscale.lock import LockLost, SyncLockClient

host, port, name, lease = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
client = SyncLockClient(host, port, client_name="holder")
try:
    with client.lock(name, lease=lease, timeout=10) as grant:
        print("held", grant.fence, flush=True)
        while not grant.lost:
            time.sleep(0.01)
        print("lost:", grant.lost_reason, flush=True)
        try:
            client.renew(grant)
        except LockLost:
            print("renew raised LockLost", flush=True)
except LockLost:
    print("block raised LockLost", flush=True)
finally:
    client.close()
"""


def _read_counter(path: Path) -> tuple[int, int]:
    value, last_fence = map(int, path.read_text().split())
    return value, last_fence


def _write_counter(path: Path, value: int, fence: int, writer: str) -> None:
    tmp = path.with_name(f"{path.name}.{writer}")
    tmp.write_text(f"{value} {fence}")
    os.replace(tmp, path)


async def _bump(path: Path, fence: int | None) -> None:
    value, last_fence = _read_counter(path)
    await asyncio.sleep(0.001)
    assert fence is None or fence > last_fence, "fence went backwards"
    _write_counter(path, value + 1, fence or 0, f"task{id(asyncio.current_task())}")


async def _task_worker(
    port: int, path: Path, rounds: int, use_lock: bool, ready: asyncio.Queue[None], go: Any
) -> None:
    async with LockClient(HOST, port, client_name="counter-task") as client:
        await client.ping()
        ready.put_nowait(None)
        await go.wait()
        for _ in range(rounds):
            if use_lock:
                async with client.lock("counter", lease=10, timeout=60) as grant:
                    await _bump(path, grant.fence)
            else:
                await _bump(path, None)


async def _hammer(
    python: str,
    env: dict[str, str],
    port: int,
    path: Path,
    *,
    use_lock: bool,
    processes: int,
    tasks: int,
    rounds: int,
) -> int:
    """Run ``processes`` sync-client processes and ``tasks`` async clients, ``rounds``
    increments each, all starting together; return the final count."""
    _write_counter(path, 0, 0, "init")
    mode = "lock" if use_lock else "nolock"
    procs = []
    try:
        for _ in range(processes):
            procs.append(
                await asyncio.create_subprocess_exec(
                    python,
                    "-c",
                    COUNTER_WORKER,
                    HOST,
                    str(port),
                    str(path),
                    str(rounds),
                    mode,
                    env=env,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        ready: asyncio.Queue[None] = asyncio.Queue()
        go = asyncio.Event()
        workers = [
            asyncio.create_task(_task_worker(port, path, rounds, use_lock, ready, go))
            for _ in range(tasks)
        ]
        async with asyncio.timeout(60):
            for proc in procs:
                assert proc.stdout is not None
                assert await proc.stdout.readline() == b"ready\n"
            for _ in range(tasks):
                await ready.get()
        # Everyone is connected: start them all at once.
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        go.set()
        async with asyncio.timeout(90):
            await asyncio.gather(*workers)
            codes = await asyncio.gather(*(proc.wait() for proc in procs))
        assert codes == [0] * processes
        return _read_counter(path)[0]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_twenty_clients_count_exactly_under_the_lock(
    lock_server: Any, python: str, child_env: dict[str, str], tmp_path: Path
) -> None:
    rounds = 25
    final = asyncio.run(
        _hammer(
            python,
            child_env,
            lock_server.port,
            tmp_path / "counter",
            use_lock=True,
            processes=10,
            tasks=10,
            rounds=rounds,
        )
    )
    assert final == 20 * rounds
    assert lock_server.stats()["locks"] == 0


def test_control_run_without_the_lock_loses_updates(
    lock_server: Any, python: str, child_env: dict[str, str], tmp_path: Path
) -> None:
    # The same workload unlocked: the async tasks alone are enough to lose updates every time
    # (they all read before any of them writes back), so this run proves the counter test can
    # see lost updates.
    rounds = 10
    final = asyncio.run(
        _hammer(
            python,
            child_env,
            lock_server.port,
            tmp_path / "counter",
            use_lock=False,
            processes=10,
            tasks=10,
            rounds=rounds,
        )
    )
    assert final < 20 * rounds


async def _start_holder(
    python: str, env: dict[str, str], port: int, name: str, lease: float
) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        python,
        "-c",
        HOLDER,
        HOST,
        str(port),
        name,
        str(lease),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    line = await _line(proc)
    assert line.startswith("held "), line
    return proc, int(line.split()[1])


async def _line(proc: asyncio.subprocess.Process, timeout: float = 30) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        return (await proc.stdout.readline()).decode().strip()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await proc.wait()


def test_killed_holder_loses_the_lock_at_once(
    lock_server: Any, python: str, child_env: dict[str, str]
) -> None:
    lease = 30.0

    async def scenario() -> None:
        proc, fence = await _start_holder(python, child_env, lock_server.port, "kill", lease)
        try:
            async with LockClient(HOST, lock_server.port) as waiter:
                waiting = asyncio.create_task(waiter.acquire("kill", lease=5, timeout=25))
                await until(lambda: lock_server.stats()["waiting"] == 1, 10, "the waiter")
                killed_at = time.monotonic()
                proc.send_signal(signal.SIGKILL)
                grant = await waiting
                # Far inside the holder's 30 s lease: the dropped connection released it.
                assert time.monotonic() - killed_at < lease / 3
                assert grant.fence > fence
                assert await proc.wait() == -signal.SIGKILL
                await waiter.release(grant)
        finally:
            await _reap(proc)

    asyncio.run(scenario())


def test_frozen_holder_loses_the_lock_when_its_lease_expires(
    lock_server: Any, python: str, child_env: dict[str, str]
) -> None:
    # The holder renews every third of its lease: at 2 s a loaded machine's stall of more
    # than a second does not lose it the lock while it is meant to hold it.
    lease = 2.0
    margin = 2.5

    async def scenario() -> None:
        proc, fence = await _start_holder(python, child_env, lock_server.port, "stop", lease)
        try:
            async with LockClient(HOST, lock_server.port) as waiter:
                # While the holder runs, its renewals keep the lock well past its lease.
                with pytest.raises(LockTimeout):
                    await waiter.acquire("stop", timeout=2.5 * lease)
                proc.send_signal(signal.SIGSTOP)
                stopped_at = time.monotonic()
                grant = await waiter.acquire("stop", lease=30, timeout=lease + margin)
                assert time.monotonic() - stopped_at <= lease + margin
                assert grant.fence > fence
                # Still connected (frozen, not dead): the lease ran out, nothing dropped.
                assert lock_server.stats()["connections"] == 2
                proc.send_signal(signal.SIGCONT)
                # Its next renewal is refused: the holder learns it lost the lock.
                lost = await _line(proc)
                # The server's "not held", or, when its reply is more than a second late on a
                # loaded machine, the holder's own verdict: the lease ran out.
                assert lost.startswith("lost:"), lost
                assert "not held" in lost or "lease ran out" in lost, lost
                assert await _line(proc) == "renew raised LockLost"
                assert await _line(proc) == "block raised LockLost"
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
                assert not grant.lost
                await waiter.release(grant)
        finally:
            await _reap(proc)

    asyncio.run(scenario())
