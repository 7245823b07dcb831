"""Clients of the lock service: :class:`LockClient` (asyncio) and :class:`SyncLockClient`.

Typical use::

    async with LockClient("master", 4242) as client:
        async with client.lock(f"partition:{topic}:{group}", lease=10, timeout=30) as grant:
            ...  # grant.fence identifies this tenure of the lock

While a ``lock()`` block runs, the lease is renewed in the background every third of the
lease. If the lease is lost anyway (renewal refused, connection gone) the block is cancelled
and :class:`LockLost` is raised from it (the sync client cannot interrupt a thread: it sets
``grant.lost`` and raises :class:`LockLost` when the block ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from fogverse.autoscale.lock.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_TOKEN_CHARS,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    check_text,
    decode_body,
    encode_frame,
    read_frame,
    seconds_to_ms,
)

__all__ = [
    "LockClient",
    "LockError",
    "LockGrant",
    "LockLost",
    "LockServiceError",
    "LockTimeout",
    "SyncLockClient",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
CONNECTION_LOST = "connection_lost"
NO_REPLY = "no_reply"
_CLIENT_CLOSED = "client closed"


class LockError(Exception):
    """Base class of the lock client's errors."""


class LockServiceError(LockError):
    """The service refused a request, sent garbage, did not answer, or cannot be reached."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class LockTimeout(LockError, TimeoutError):
    """The lock was not granted within the requested wait."""


class LockLost(LockError):
    """The lease is gone: it expired, was taken over, or its connection closed."""


class LockGrant:
    """One tenure of a named lock.

    ``fence`` grows with every grant of the same lock, so a resource that remembers the highest
    fence it has seen can reject writes from a holder whose lease has since expired.
    """

    __slots__ = (
        "_conn",
        "_expires_at",
        "_lost_reason",
        "_on_lost",
        "fence",
        "lease",
        "name",
        "released",
    )

    def __init__(
        self, name: str, fence: int, lease: float, expires_at: float, conn: _Connection
    ) -> None:
        self.name = name
        self.fence = fence
        self.lease = lease
        self.released = False
        self._expires_at = expires_at
        self._conn = conn
        self._lost_reason: str | None = None
        self._on_lost: Callable[[LockGrant], None] | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else "released" if self.released else "held"
        return f"<LockGrant {self.name!r} fence={self.fence} {state}>"

    @property
    def lost(self) -> bool:
        """True once the lease is known to be gone (safe to read from any thread)."""
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason

    @property
    def expires_at(self) -> float:
        """``time.monotonic()`` by which the lease ends unless renewed (a local estimate)."""
        return self._expires_at

    def check(self) -> None:
        """Raise :class:`LockLost` if the lease is gone."""
        if self._lost_reason is not None:
            raise LockLost(f"lock {self.name!r} (fence {self.fence}) lost: {self._lost_reason}")

    def _mark_lost(self, reason: str) -> None:
        if self._lost_reason is not None or self.released:
            return
        self._lost_reason = reason
        self._conn.grants.discard(self)
        level = logging.INFO if reason.endswith(_CLIENT_CLOSED) else logging.WARNING
        logger.log(level, "lock %r (fence %d) lost: %s", self.name, self.fence, reason)
        if self._on_lost is not None:
            self._on_lost(self)


class _Connection:
    """One TCP connection: request/reply matching by id, keepalive pings."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame_bytes: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        # What the server accepts (lowered to its limit after hello) bounds our requests only;
        # its replies echo names and carry error details, so they are read with our own bound.
        self.max_frame_bytes = max_frame_bytes
        self.max_reply_bytes = max_frame_bytes
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # Acquires whose caller gave up before the reply: a late grant is released at once.
        self.abandoned: set[int] = set()
        # Whether the server withdraws a queued acquire on request (its hello lists "cancel").
        self.can_cancel = False
        self.grants: set[LockGrant] = set()
        self.closed = False
        self.close_reason = "not connected"
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._read_loop(), name="lock-client-reader"))

    def start_keepalive(self, interval: float, timeout: float) -> None:
        task = asyncio.create_task(self._keepalive(interval, timeout), name="lock-client-ping")
        self._tasks.append(task)

    def post(self, op: str, **fields: Any) -> int:
        """Write a request without waiting for anything; return its id."""
        if self.closed:
            raise LockServiceError(f"connection closed: {self.close_reason}", code=CONNECTION_LOST)
        request_id = next(self._ids)
        message = {"v": PROTOCOL_VERSION, "op": op, "id": request_id, **fields}
        self.writer.write(encode_frame(message, max_frame_bytes=self.max_frame_bytes))
        return request_id

    async def request(self, op: str, timeout: float | None, **fields: Any) -> dict[str, Any]:
        """Send a request and wait for its reply (``ok`` true or false)."""
        # The frame is written before the first await, so a request whose caller is cancelled
        # right away (a release in a finally block, say) still reaches the server.
        request_id = self.post(op, **fields)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        delivered = False
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                reply = await future
            delivered = True
            return reply
        except TimeoutError:
            raise LockServiceError(
                f"no reply to {op!r} within {timeout:g} s", code=NO_REPLY
            ) from None
        except ConnectionError as exc:
            raise LockServiceError(f"connection lost: {exc}", code=CONNECTION_LOST) from None
        finally:
            unanswered = self.pending.pop(request_id, None) is not None
            if op == "acquire" and not delivered:
                if unanswered:
                    self.abandoned.add(request_id)
                    self._withdraw(request_id)
                elif (
                    future.done()
                    and not future.cancelled()
                    and future.exception() is None
                    and future.result().get("ok")
                ):
                    # The grant arrived but its caller was cancelled before taking it.
                    self._release_quietly(future.result())

    def _withdraw(self, request_id: int) -> None:
        # Left queued, the request would be granted later to nobody, and the waiters behind it
        # would wait until the grant came back. Its reply (grant or "cancelled") still comes.
        if self.can_cancel and not self.closed:
            with contextlib.suppress(LockServiceError, OSError):
                self.post("cancel", acquire_id=request_id)

    def _release_quietly(self, reply: dict[str, Any]) -> None:
        name, fence = reply.get("name"), reply.get("fence")
        if isinstance(name, str) and isinstance(fence, int) and not self.closed:
            logger.debug("releasing %r (fence %d) granted after its caller gave up", name, fence)
            with contextlib.suppress(LockServiceError, OSError):
                self.post("release", name=name, fence=fence)

    async def _read_loop(self) -> None:
        reason = "end of stream"
        try:
            while True:
                message = decode_body(
                    await read_frame(self.reader, max_frame_bytes=self.max_reply_bytes)
                )
                request_id = message.get("id")
                future = self.pending.pop(request_id, None) if type(request_id) is int else None
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                elif request_id in self.abandoned:
                    self.abandoned.discard(request_id)
                    if message.get("ok"):
                        self._release_quietly(message)
                elif request_id is None and message.get("ok") is False:
                    # The server explains why it is about to close the connection.
                    reason = f"server: {message.get('error')}: {message.get('detail')}"
                    logger.warning("lock server closes the connection: %s", reason)
        except EOFError:
            pass
        except asyncio.CancelledError:
            reason = _CLIENT_CLOSED
            raise
        except (ProtocolError, asyncio.IncompleteReadError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._fail(reason)

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            try:
                await self.request("ping", timeout)
            except LockServiceError as exc:
                if exc.code == NO_REPLY:
                    logger.warning("lock server does not answer pings; dropping the connection")
                    self.writer.transport.abort()
                return

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        error = LockServiceError(f"connection closed: {reason}", code=CONNECTION_LOST)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        for grant in list(self.grants):
            # The server releases a connection's locks when it closes.
            grant._mark_lost(f"connection closed: {reason}")
        self.writer.close()

    async def close(self) -> None:
        self._fail(_CLIENT_CLOSED)
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


def _reply_error(reply: dict[str, Any], what: str) -> LockError:
    code, detail = reply.get("error"), reply.get("detail")
    if code == ErrorCode.TIMEOUT:
        return LockTimeout(f"{what}: {detail}")
    if code == ErrorCode.NOT_HELD:
        return LockLost(f"{what}: {detail}")
    return LockServiceError(
        f"{what}: {code}: {detail}", code=code if isinstance(code, str) else None
    )


class LockClient:
    """Asyncio client. One connection, opened on first use and reopened after it is lost.

    Several tasks may share one client; each ``lock()`` is a separate tenure (a task that
    asks again for a lock it holds waits behind itself until its wait times out).
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None = None,
        *,
        client_name: str | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
    ) -> None:
        if token is not None:
            check_text(token, "token", MAX_TOKEN_CHARS)
        if client_name is not None:
            check_text(client_name, "client_name")
        self.host = host
        self.port = port
        self._token = token
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self.server_info: dict[str, Any] = {}

    async def __aenter__(self) -> LockClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection now instead of on first use."""
        await self._connection()

    async def close(self) -> None:
        """Close the connection; the server releases every lock it held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            try:
                async with asyncio.timeout(self._connect_timeout):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                raise LockServiceError(
                    f"cannot connect to lock server {self.host}:{self.port}: {exc!r}",
                    code=CONNECTION_LOST,
                ) from exc
            conn = _Connection(reader, writer, DEFAULT_MAX_FRAME_BYTES)
            conn.start()
            try:
                hello: dict[str, Any] = {}
                if self._token is not None:
                    hello["token"] = self._token
                if self._client_name is not None:
                    hello["client"] = self._client_name
                reply = await conn.request("hello", self._request_timeout, **hello)
                if not reply.get("ok"):
                    raise _reply_error(reply, "hello refused")
            except BaseException:
                await conn.close()
                raise
            self.server_info = reply
            limit = reply.get("max_frame_bytes")
            if type(limit) is int and limit > 0:
                conn.max_frame_bytes = limit
            ops = reply.get("ops")
            conn.can_cancel = isinstance(ops, list) and "cancel" in ops
            idle_ms = reply.get("idle_timeout_ms")
            if type(idle_ms) is int and idle_ms > 0:
                conn.start_keepalive(idle_ms / 3000, self._request_timeout)
            self._conn = conn
            return conn

    async def acquire(
        self, name: str, lease: float = 10.0, timeout: float | None = 30.0
    ) -> LockGrant:
        """Wait up to ``timeout`` seconds (None: forever, 0: try once) for the lock.

        The lease is not renewed automatically; use :meth:`lock` for that, or :meth:`renew`.
        """
        # Checked here: the server would answer a bad name by closing the connection, and with
        # it every other lock this client holds.
        check_text(name, "lock name")
        lease_ms = seconds_to_ms(lease)
        if timeout is None:
            wait_ms, reply_timeout = None, None
        elif timeout <= 0:
            wait_ms, reply_timeout = 0, self._request_timeout
        else:
            wait_ms, reply_timeout = seconds_to_ms(timeout), timeout + self._request_timeout
        conn = await self._connection()
        started = time.monotonic()
        fields: dict[str, Any] = {"name": name, "lease_ms": lease_ms}
        if wait_ms is not None:
            fields["wait_ms"] = wait_ms
        reply = await conn.request("acquire", reply_timeout, **fields)
        if not reply.get("ok"):
            error = _reply_error(reply, f"lock {name!r}")
            if isinstance(error, LockTimeout) and timeout is not None:
                error = LockTimeout(f"lock {name!r} not granted within {timeout:g} s")
            raise error
        fence, granted_ms = reply.get("fence"), reply.get("lease_ms")
        if type(fence) is not int or type(granted_ms) is not int or granted_ms <= 0:
            raise LockServiceError(f"malformed grant for {name!r}: {reply!r}", code="bad_reply")
        if conn.closed:
            # The connection went down after the grant arrived but before this task resumed:
            # the server has released the lock with it.
            raise LockServiceError(
                f"lock {name!r}: connection closed: {conn.close_reason}", code=CONNECTION_LOST
            )
        # The lease started when the server granted it, which is after we asked: measuring from
        # the request keeps the local estimate on the safe side.
        grant = LockGrant(name, fence, granted_ms / 1000, started + granted_ms / 1000, conn)
        conn.grants.add(grant)
        return grant

    async def renew(self, grant: LockGrant, lease: float | None = None) -> None:
        """Extend the lease (to ``lease`` seconds, default the granted lease) or raise LockLost."""
        await self._renew(grant, lease, self._request_timeout)

    async def _renew(self, grant: LockGrant, lease: float | None, timeout: float) -> None:
        grant.check()
        if grant.released:
            raise LockLost(f"lock {grant.name!r} (fence {grant.fence}) was released")
        fields: dict[str, Any] = {"name": grant.name, "fence": grant.fence}
        if lease is not None:
            fields["lease_ms"] = seconds_to_ms(lease)
        sent = time.monotonic()
        try:
            reply = await grant._conn.request("renew", timeout, **fields)
        except LockServiceError as exc:
            if exc.code == CONNECTION_LOST:
                grant._mark_lost(str(exc))
                raise LockLost(f"lock {grant.name!r}: {exc}") from exc
            raise
        if not reply.get("ok"):
            error = _reply_error(reply, f"renewing lock {grant.name!r}")
            if isinstance(error, LockLost):
                grant._mark_lost(str(error))
            raise error
        granted_ms = reply.get("lease_ms")
        if type(granted_ms) is int and granted_ms > 0:
            grant.lease = granted_ms / 1000
        grant._expires_at = sent + grant.lease

    async def release(self, grant: LockGrant) -> None:
        """Release the lock; raise LockLost if the lease had already gone.

        A connection lost meanwhile is not an error: the server releases that connection's
        locks itself.
        """
        if grant.released:
            return
        lost_reason = grant.lost_reason
        grant.released = True
        conn = grant._conn
        conn.grants.discard(grant)
        # Sent even for a grant believed lost: if only the renewal replies were late, the
        # server still has it and would otherwise keep it until the lease runs out.
        if not conn.closed:
            try:
                reply = await conn.request(
                    "release", self._request_timeout, name=grant.name, fence=grant.fence
                )
            except LockServiceError as exc:
                if exc.code != CONNECTION_LOST:
                    raise
                return
            if not reply.get("ok"):
                error = _reply_error(reply, f"releasing lock {grant.name!r}")
                if not isinstance(error, LockLost):
                    raise error
                lost_reason = lost_reason or str(error)
        if lost_reason is not None:
            raise LockLost(f"lock {grant.name!r} (fence {grant.fence}) lost: {lost_reason}")

    async def ping(self) -> float:
        """Round-trip time in seconds."""
        conn = await self._connection()
        started = time.perf_counter()
        reply = await conn.request("ping", self._request_timeout)
        if not reply.get("ok"):
            raise _reply_error(reply, "ping")
        return time.perf_counter() - started

    def lock(
        self,
        name: str,
        lease: float = 10.0,
        timeout: float | None = 30.0,
        *,
        cancel_on_loss: bool = True,
    ) -> _AsyncLockContext:
        """``async with client.lock(name) as grant``: acquire, keep renewed, release."""
        return _AsyncLockContext(self, name, lease, timeout, cancel_on_loss)

    async def _keep_renewed(self, grant: LockGrant) -> None:
        """Renew every third of the lease until the grant is released or lost."""
        next_at = time.monotonic() + grant.lease / 3
        while not (grant.lost or grant.released):
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if grant.lost or grant.released:
                return
            remaining = grant.expires_at - time.monotonic()
            # Wait for the server's verdict no longer than the lease lasts: the server hands the
            # lock on when it ends, so a holder still waiting then has lost it. Only a holder
            # whose loop stalled past the lease asks for a moment (it hears "not held" rather
            # than guessing).
            timeout = min(self._request_timeout, remaining if remaining > 0 else 1.0)
            try:
                await self._renew(grant, None, timeout)
            except LockLost:
                return
            except LockServiceError as exc:
                if (exc.code == NO_REPLY and timeout >= remaining) or (
                    time.monotonic() >= grant.expires_at
                ):
                    grant._mark_lost(f"lease ran out while renewals failed ({exc})")
                    return
                logger.warning("renewing lock %r failed (%s); retrying", grant.name, exc)
                if exc.code not in (NO_REPLY, CONNECTION_LOST):
                    grant._mark_lost(f"renewal refused: {exc}")
                    return
                # Retry while some of the lease is left, not after it has run out.
                left = max(0.0, grant.expires_at - time.monotonic())
                next_at = time.monotonic() + min(grant.lease / 3, 0.2, left / 2)
                continue
            next_at = time.monotonic() + grant.lease / 3

    async def _start_renewal(self, grant: LockGrant) -> asyncio.Task[None]:
        return asyncio.create_task(self._keep_renewed(grant), name=f"renew {grant.name}")

    async def _finish(self, grant: LockGrant, renewer: asyncio.Task[None]) -> None:
        """Stop renewing, then release (also when cancelled while stopping)."""
        try:
            renewer.cancel()
            await asyncio.wait([renewer])
        finally:
            await self.release(grant)


class _AsyncLockContext:
    def __init__(
        self,
        client: LockClient,
        name: str,
        lease: float,
        timeout: float | None,
        cancel_on_loss: bool,
    ) -> None:
        self._client = client
        self._name = name
        self._lease = lease
        self._timeout = timeout
        self._cancel_on_loss = cancel_on_loss
        self._grant: LockGrant | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._inside = False
        self._cancelled_by_loss = False

    async def __aenter__(self) -> LockGrant:
        if self._grant is not None:
            raise RuntimeError("a lock() context cannot be entered twice")
        grant = await self._client.acquire(self._name, self._lease, self._timeout)
        self._grant = grant
        self._task = asyncio.current_task()
        self._renewer = asyncio.create_task(
            self._client._keep_renewed(grant), name=f"renew {grant.name}"
        )
        grant._on_lost = self._on_lost
        self._inside = True
        return grant

    def _on_lost(self, grant: LockGrant) -> None:
        task = self._task
        # The body itself learns of the loss from the exception it is given; cancelling it as
        # well would leave a stray cancellation behind.
        if not self._inside or not self._cancel_on_loss or task is None or task.done():
            return
        if task is asyncio.current_task():
            return
        self._cancelled_by_loss = True
        task.cancel(f"lock {grant.name!r} lost")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inside = False
        grant, renewer = self._grant, self._renewer
        assert grant is not None and renewer is not None
        release_error: LockError | None = None
        try:
            await self._client._finish(grant, renewer)
        except LockError as error:
            release_error = error
        lost = LockLost(f"lock {grant.name!r} (fence {grant.fence}) lost: {grant.lost_reason}")
        if self._cancelled_by_loss:
            assert self._task is not None
            if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise lost from exc
            # Otherwise somebody else cancelled the task too: let that cancellation through.
        if exc_type is None:
            if grant.lost:
                raise lost
            if release_error is not None:
                raise release_error
        elif release_error is not None and not isinstance(release_error, LockLost):
            # Do not let a failed release hide the exception of the block.
            logger.warning("releasing lock %r failed: %s", grant.name, release_error)


class SyncLockClient:
    """Blocking client for threads and plain scripts, with the semantics of :class:`LockClient`.

    It runs a :class:`LockClient` on a private event loop in a daemon thread, which also
    renews leases in the background. Close it (or use ``with``) to stop that thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None = None,
        *,
        client_name: str | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
    ) -> None:
        def make_client() -> LockClient:
            return LockClient(
                host,
                port,
                token,
                client_name=client_name,
                connect_timeout=connect_timeout,
                request_timeout=request_timeout,
            )

        # Validates the arguments now; a fresh one is made for each background loop because
        # asyncio objects belong to the loop that first used them.
        self._make_client = make_client
        self._client = make_client()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loops_started = 0
        self._state_lock = threading.Lock()

    def __enter__(self) -> SyncLockClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def server_info(self) -> dict[str, Any]:
        return self._client.server_info

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._state_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="fogverse-lock-client", daemon=True)
                thread.start()
                ready.wait()
                if self._loops_started:
                    self._client = self._make_client()
                self._loops_started += 1
                self._loop, self._thread = loop, thread
            return self._loop

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._ensure_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncLockClient cannot be used from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt and the like: do not leave the request running (an acquire
            # that is granted after this is released by the client).
            future.cancel()
            raise

    def connect(self) -> None:
        self._call(self._client.connect())

    def close(self) -> None:
        """Close the connection (releasing its locks) and stop the background thread."""
        with self._state_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            await self._client.close()
            current = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not current]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()

    def acquire(self, name: str, lease: float = 10.0, timeout: float | None = 30.0) -> LockGrant:
        """Blocking :meth:`LockClient.acquire` (no automatic renewal)."""
        return self._call(self._client.acquire(name, lease, timeout))

    def renew(self, grant: LockGrant, lease: float | None = None) -> None:
        self._call(self._client.renew(grant, lease))

    def release(self, grant: LockGrant) -> None:
        self._call(self._client.release(grant))

    def ping(self) -> float:
        return self._call(self._client.ping())

    def lock(
        self, name: str, lease: float = 10.0, timeout: float | None = 30.0
    ) -> _SyncLockContext:
        """``with client.lock(name) as grant``: acquire, keep renewed in the background, release.

        Check ``grant.lost`` (or call ``grant.check()``) in long critical sections; the block
        cannot be interrupted, so a loss is raised as :class:`LockLost` when it ends.
        """
        return _SyncLockContext(self, name, lease, timeout)


class _SyncLockContext:
    def __init__(
        self, owner: SyncLockClient, name: str, lease: float, timeout: float | None
    ) -> None:
        self._owner = owner
        self._name = name
        self._lease = lease
        self._timeout = timeout
        self._grant: LockGrant | None = None
        self._renewer: asyncio.Task[None] | None = None

    def __enter__(self) -> LockGrant:
        if self._grant is not None:
            raise RuntimeError("a lock() context cannot be entered twice")
        client = self._owner._client
        grant = self._owner._call(client.acquire(self._name, self._lease, self._timeout))
        self._grant = grant
        try:
            self._renewer = self._owner._call(client._start_renewal(grant))
        except BaseException:
            with contextlib.suppress(LockError):
                self._owner.release(grant)
            raise
        return grant

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        grant, renewer = self._grant, self._renewer
        assert grant is not None and renewer is not None
        try:
            self._owner._call(self._owner._client._finish(grant, renewer))
        except LockError as error:
            if exc_type is None:
                raise
            if not isinstance(error, LockLost):
                logger.warning("releasing lock %r failed: %s", grant.name, error)
