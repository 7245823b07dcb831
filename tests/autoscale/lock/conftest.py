"""Fixtures for the lock service tests: a server on its own thread, raw protocol connections,
and what a child process needs to import fogverse."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import fogverse
from fogverse.autoscale.lock import LockServer

HOST = "127.0.0.1"
REPO_ROOT = pathlib.Path(next(iter(fogverse.__path__))).resolve().parent


class ThreadedServer:
    """A LockServer running on a private event loop thread, for tests whose own thread blocks
    (subprocess handling, blocking sockets, hypothesis)."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lock-test-server")
        self.server = LockServer(HOST, 0, **kwargs)

    def start(self) -> ThreadedServer:
        self._thread.start()
        self._run(self.server.start())
        return self

    def _run(self, coro: Awaitable[Any]) -> Any:
        async def wrapper() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout=30)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._loop.is_running()

    def stats(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            return self.server.stats()

        return self._run(read())

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self._run(self.server.stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "server thread did not stop"
        self._loop.close()


@pytest.fixture
def lock_server_factory() -> Iterator[Callable[..., ThreadedServer]]:
    servers: list[ThreadedServer] = []

    def make(**kwargs: Any) -> ThreadedServer:
        server = ThreadedServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def lock_server(lock_server_factory: Callable[..., ThreadedServer]) -> ThreadedServer:
    return lock_server_factory()


@pytest.fixture(scope="module")
def shared_lock_server() -> Iterator[ThreadedServer]:
    """One threaded server for a whole module (hypothesis rejects function-scoped fixtures)."""
    server = ThreadedServer(idle_timeout=5.0, frame_timeout=1.0, fence_start=0).start()
    yield server
    server.stop()


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for child Python processes: fogverse importable from this work tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


class RawConnection:
    """A protocol-level connection with no client logic, to send exactly what a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = iter(range(1, 1 << 30))

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: Any) -> None:
        body = json.dumps(message).encode()
        await self.send_bytes(struct.pack(">I", len(body)) + body)

    async def request(self, op: str, **fields: Any) -> int:
        request_id = next(self._ids)
        await self.send({"v": 1, "op": op, "id": request_id, **fields})
        return request_id

    async def recv(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next reply, or None at end of stream."""
        async with asyncio.timeout(timeout):
            try:
                header = await self.reader.readexactly(4)
            except asyncio.IncompleteReadError:
                return None
            (length,) = struct.unpack(">I", header)
            return json.loads(await self.reader.readexactly(length))

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = await self.request(op, **fields)
        reply = await self.recv()
        assert reply is not None, f"connection closed instead of answering {op}"
        assert reply["id"] == request_id
        return reply

    async def at_eof(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection (waiting up to ``timeout``)."""
        try:
            async with asyncio.timeout(timeout):
                rest = await self.reader.read()
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
def raw() -> Callable[[int], Awaitable[RawConnection]]:
    return RawConnection.open
