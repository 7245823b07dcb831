"""Asyncio lock server: named locks with leases, FIFO waiters and fencing tokens.

Every lock operation is a synchronous method on the event loop (no lock work ever awaits), so
one misbehaving connection can only stall itself. A connection's locks are released the moment
it closes; a lock whose lease is not renewed in time passes to the next waiter even while the
holder's connection stays open. Run standalone with
``python -m fogverse.autoscale.lock.server --host 0.0.0.0 --port 4242``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hmac
import itertools
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fogverse.autoscale.lock.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_ID,
    OPS,
    ErrorCode,
    ProtocolError,
    Request,
    decode_body,
    encode_frame,
    error_reply,
    ok_reply,
    parse_request,
    read_frame,
    seconds_to_ms,
)

__all__ = ["TOKEN_ENV", "LockServer", "main"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "FOGVERSE_LOCK_TOKEN"
SERVER_NAME = "fogverse-lock"
# A peer that stops reading its replies is cut off once this much output is queued for it.
_WRITE_BUFFER_LIMIT = 1024 * 1024
# After an error reply, what the peer still sends is read and dropped for a moment before the
# socket closes; closing with unread input makes the kernel send RST, which can destroy the
# error reply before the peer reads it.
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 256 * 1024


class _Session:
    """One client connection and the locks it holds or waits for."""

    __slots__ = ("authed", "client", "closing", "held", "peer", "sid", "waiters", "writer")

    def __init__(self, sid: int, peer: Any, writer: asyncio.StreamWriter, authed: bool) -> None:
        self.sid = sid
        self.peer = peer
        self.writer = writer
        self.authed = authed
        self.client: str | None = None
        self.closing = False
        self.held: set[_Lock] = set()
        self.waiters: set[_Waiter] = set()

    def __repr__(self) -> str:
        client = f" {self.client!r}" if self.client else ""
        return f"<session {self.sid} {self.peer}{client}>"

    def send(self, message: dict[str, Any]) -> None:
        """Queue a reply without waiting; a peer that does not read its replies is dropped."""
        transport = self.writer.transport
        if self.closing or transport.is_closing():
            return
        self.writer.write(encode_frame(message))
        if transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
            logger.info("%r does not read its replies; dropping it", self)
            self.closing = True
            transport.abort()


@dataclass(eq=False, slots=True)
class _Waiter:
    session: _Session
    request_id: int
    lock: _Lock
    lease_ms: int
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Lock:
    name: str
    holder: _Session | None = None
    fence: int = 0
    lease_ms: int = 0
    expiry: asyncio.TimerHandle | None = None
    # Invariant: waiters is non-empty only while holder is set.
    waiters: collections.deque[_Waiter] = field(default_factory=collections.deque)


class _LockTable:
    """All named locks. Every method is synchronous and O(waiters of one lock) at worst."""

    def __init__(
        self,
        *,
        default_lease_ms: int,
        max_lease_ms: int,
        max_pending: int,
        max_held: int,
        fence_start: int,
    ) -> None:
        self._locks: dict[str, _Lock] = {}
        self._default_lease_ms = default_lease_ms
        self._max_lease_ms = max_lease_ms
        self._max_pending = max_pending
        self._max_held = max_held
        self._fence = fence_start

    def __len__(self) -> int:
        return len(self._locks)

    def counts(self) -> dict[str, int]:
        held = sum(1 for lock in self._locks.values() if lock.holder is not None)
        waiting = sum(len(lock.waiters) for lock in self._locks.values())
        return {"locks": len(self._locks), "held": held, "waiting": waiting}

    def _lease(self, lease_ms: int | None) -> int:
        return min(lease_ms or self._default_lease_ms, self._max_lease_ms)

    def acquire(self, session: _Session, req: Request) -> None:
        assert req.name is not None
        if len(session.waiters) >= self._max_pending or len(session.held) >= self._max_held:
            session.send(
                error_reply(
                    req.id,
                    ErrorCode.TOO_MANY_PENDING,
                    f"at most {self._max_pending} waiting and {self._max_held} held locks "
                    "per connection",
                )
            )
            return
        lease_ms = self._lease(req.lease_ms)
        lock = self._locks.get(req.name)
        if lock is None:
            lock = self._locks[req.name] = _Lock(req.name)
        if lock.holder is None:
            self._grant(lock, session, req.id, lease_ms)
        elif req.wait_ms == 0:
            session.send(error_reply(req.id, ErrorCode.TIMEOUT, f"lock {req.name!r} is held"))
        else:
            waiter = _Waiter(session, req.id, lock, lease_ms)
            if req.wait_ms is not None:
                loop = asyncio.get_running_loop()
                waiter.timer = loop.call_later(req.wait_ms / 1000, self._wait_expired, waiter)
            lock.waiters.append(waiter)
            session.waiters.add(waiter)

    def renew(self, session: _Session, req: Request) -> None:
        lock = self._held_by(session, req)
        if lock is None:
            return
        # Without an explicit lease a renewal restarts the lease the lock was granted with.
        lease_ms = self._lease(req.lease_ms) if req.lease_ms else lock.lease_ms
        self._arm_expiry(lock, lease_ms)
        session.send(ok_reply(req.id, lease_ms=lease_ms))

    def release(self, session: _Session, req: Request) -> None:
        lock = self._held_by(session, req)
        if lock is None:
            return
        self._vacate(lock)
        session.send(ok_reply(req.id))

    def cancel(self, session: _Session, req: Request) -> None:
        # A caller that gave up waiting: left queued, the lock would later be granted to nobody
        # and every waiter behind would wait for that grant to be given back or to expire.
        withdrawn = [w for w in session.waiters if w.request_id == req.acquire_id]
        for waiter in withdrawn:
            self._forget_waiter(waiter)
            session.send(
                error_reply(
                    waiter.request_id,
                    ErrorCode.CANCELLED,
                    f"acquire of lock {waiter.lock.name!r} withdrawn",
                )
            )
        session.send(ok_reply(req.id, withdrawn=bool(withdrawn)))

    def drop(self, session: _Session) -> None:
        """Forget a closed connection: cancel its waits, release its locks."""
        session.closing = True
        for waiter in list(session.waiters):
            self._forget_waiter(waiter)
        for lock in list(session.held):
            logger.debug("%r closed while holding %r; releasing it", session, lock.name)
            self._vacate(lock)

    def clear(self) -> None:
        for lock in self._locks.values():
            if lock.expiry is not None:
                lock.expiry.cancel()
            for waiter in lock.waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
        self._locks.clear()

    def _held_by(self, session: _Session, req: Request) -> _Lock | None:
        assert req.name is not None
        lock = self._locks.get(req.name)
        if lock is not None and lock.holder is session and lock.fence == req.fence:
            return lock
        session.send(
            error_reply(
                req.id,
                ErrorCode.NOT_HELD,
                f"lock {req.name!r} is not held with fence {req.fence} by this connection "
                "(lease expired or already released)",
            )
        )
        return None

    def _grant(self, lock: _Lock, session: _Session, request_id: int, lease_ms: int) -> None:
        # One counter for all locks: strictly increasing per lock as well, and it never resets
        # when an idle lock's entry is deleted.
        self._fence += 1
        lock.holder = session
        lock.fence = self._fence
        session.held.add(lock)
        self._arm_expiry(lock, lease_ms)
        session.send(ok_reply(request_id, name=lock.name, fence=lock.fence, lease_ms=lease_ms))

    def _arm_expiry(self, lock: _Lock, lease_ms: int) -> None:
        lock.lease_ms = lease_ms
        if lock.expiry is not None:
            lock.expiry.cancel()
        loop = asyncio.get_running_loop()
        lock.expiry = loop.call_later(lease_ms / 1000, self._lease_expired, lock, lock.fence)

    def _lease_expired(self, lock: _Lock, fence: int) -> None:
        if lock.holder is not None and lock.fence == fence:
            logger.warning(
                "lease on %r (fence %d) held by %r expired without renewal",
                lock.name,
                fence,
                lock.holder,
            )
            self._vacate(lock)

    def _vacate(self, lock: _Lock) -> None:
        """Take the lock from its holder and hand it to the first live waiter (FIFO)."""
        if lock.holder is not None:
            lock.holder.held.discard(lock)
            lock.holder = None
        if lock.expiry is not None:
            lock.expiry.cancel()
            lock.expiry = None
        while lock.waiters:
            waiter = lock.waiters.popleft()
            waiter.session.waiters.discard(waiter)
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.session.closing:
                self._grant(lock, waiter.session, waiter.request_id, waiter.lease_ms)
                return
        del self._locks[lock.name]

    def _wait_expired(self, waiter: _Waiter) -> None:
        if waiter in waiter.session.waiters:
            self._forget_waiter(waiter)
            name = waiter.lock.name
            waiter.session.send(
                error_reply(waiter.request_id, ErrorCode.TIMEOUT, f"lock {name!r} not granted")
            )

    def _forget_waiter(self, waiter: _Waiter) -> None:
        waiter.session.waiters.discard(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()
        with contextlib.suppress(ValueError):
            waiter.lock.waiters.remove(waiter)


class LockServer:
    """TCP lock service (the auto-scaling Master's DISTRIBUTED_LOCK_WORKER).

    ``idle_timeout`` closes connections that start no frame for that long (clients ping to
    stay connected); ``frame_timeout`` bounds the time to finish a frame once it has started.
    Durations are in seconds. With ``token`` set, a connection's first message must be
    ``hello`` carrying that token.
    """

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 4242,
        *,
        token: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout: float | None = 60.0,
        frame_timeout: float = 10.0,
        default_lease: float = 10.0,
        max_lease: float = 3600.0,
        max_connections: int = 1024,
        max_pending_per_connection: int = 64,
        max_held_per_connection: int = 1024,
        fence_start: int | None = None,
    ) -> None:
        if max_frame_bytes < 64:
            raise ValueError("max_frame_bytes must be at least 64")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        if frame_timeout <= 0:
            raise ValueError("frame_timeout must be positive")
        if token is not None and not token:
            raise ValueError("token must be a non-empty string or None")
        self._host = host
        self._requested_port = port
        self._token = token.encode() if token is not None else None
        self._max_frame_bytes = max_frame_bytes
        self._idle_timeout = idle_timeout
        self._frame_timeout = frame_timeout
        if default_lease > max_lease:
            raise ValueError("default_lease cannot exceed max_lease")
        self._default_lease_ms = seconds_to_ms(default_lease)
        self._max_connections = max_connections
        if fence_start is None:
            # Microseconds of wall-clock time: a restarted server then normally hands out fences
            # above those of its previous run.
            fence_start = time.time_ns() // 1000
        if not 0 <= fence_start < MAX_ID // 2:
            raise ValueError("fence_start out of range")
        self._table = _LockTable(
            default_lease_ms=self._default_lease_ms,
            max_lease_ms=seconds_to_ms(max_lease),
            max_pending=max_pending_per_connection,
            max_held=max_held_per_connection,
            fence_start=fence_start,
        )
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._sids = itertools.count(1)

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0).

        With a host that resolves to several addresses and port 0, each socket gets its own
        port; this is the first one's (see :attr:`addresses`).
        """
        return self.addresses[0][1]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            raise RuntimeError("server not started")
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    def stats(self) -> dict[str, int]:
        """Counts of connections, lock entries, held locks and waiting requests."""
        return {"connections": len(self._sessions), **self._table.counts()}

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await asyncio.start_server(
            self._on_connect, self._host, self._requested_port, reuse_address=True
        )
        logger.info(
            "lock server listening on %s",
            ", ".join(f"{h}:{p}" for h, p in self.addresses),
        )

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop listening, close every connection and forget every lock."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            session.closing = True
            # Ends the handler's pending read with end-of-stream: handlers finish on their own.
            session.writer.transport.abort()
        handlers = list(self._handlers)
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=5)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()
        self._table.clear()
        logger.info("lock server stopped")

    async def __aenter__(self) -> LockServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        session = _Session(
            next(self._sids), writer.get_extra_info("peername"), writer, self._token is None
        )
        linger = False
        try:
            if self._server is None:
                session.send(error_reply(None, ErrorCode.SHUTTING_DOWN, "server is stopping"))
                linger = True
            elif len(self._sessions) >= self._max_connections:
                logger.warning("refusing %r: %d connections open", session, len(self._sessions))
                session.send(error_reply(None, ErrorCode.BUSY, "too many connections"))
                linger = True
            else:
                self._sessions.add(session)
                logger.debug("%r connected", session)
                linger = await self._serve(session, reader)
        except asyncio.CancelledError:
            # Only stop() cancels a handler. Ending normally keeps asyncio's stream machinery
            # from logging the cancellation as an error.
            linger = False
        except Exception:
            # Whatever went wrong belongs to this connection only; the server carries on.
            logger.exception("internal error on %r", session)
            session.send(error_reply(None, ErrorCode.INTERNAL, "internal server error"))
        finally:
            self._sessions.discard(session)
            self._table.drop(session)
            await self._close(session, reader, linger=linger)
            self._handlers.discard(task)
            logger.debug("%r closed", session)

    async def _serve(self, session: _Session, reader: asyncio.StreamReader) -> bool:
        """Serve requests until the connection ends; True when it ends with an error reply."""
        writer = session.writer
        while not session.closing:
            try:
                body = await read_frame(
                    reader,
                    max_frame_bytes=self._max_frame_bytes,
                    idle_timeout=self._idle_timeout,
                    frame_timeout=self._frame_timeout,
                )
                req = parse_request(decode_body(body))
            except ProtocolError as exc:
                logger.info("closing %r: %s: %s", session, exc.code, exc.detail)
                session.send(error_reply(exc.request_id, exc.code, exc.detail))
                return True
            except EOFError:
                return False
            except (asyncio.IncompleteReadError, OSError) as exc:
                # OSError, not only ConnectionError: a peer whose host vanished fails the read
                # with EHOSTUNREACH and the like, which is its going away, not our fault.
                logger.debug("%r went away: %r", session, exc)
                return False
            if not session.authed or req.op == "hello":
                rejection = self._check_hello(req)
                if rejection is not None:
                    logger.info("closing %r: %s", session, rejection)
                    session.send(error_reply(req.id, rejection[0], rejection[1]))
                    return True
                session.authed = True
            self._dispatch(session, req)
            try:
                # Backpressure per connection: stop reading from a peer that does not read.
                async with asyncio.timeout(self._frame_timeout):
                    await writer.drain()
            except TimeoutError:
                logger.info("dropping %r: it does not read its replies", session)
                writer.transport.abort()
                return False
            except OSError:
                return False
        return False

    def _check_hello(self, req: Request) -> tuple[ErrorCode, str] | None:
        if req.op != "hello":
            return ErrorCode.AUTH_REQUIRED, "the first message must be hello with the token"
        if self._token is None:
            return None
        if req.token is None or not hmac.compare_digest(req.token.encode("utf-8"), self._token):
            return ErrorCode.AUTH_FAILED, "wrong token"
        return None

    def _dispatch(self, session: _Session, req: Request) -> None:
        if req.op == "acquire":
            self._table.acquire(session, req)
        elif req.op == "renew":
            self._table.renew(session, req)
        elif req.op == "release":
            self._table.release(session, req)
        elif req.op == "cancel":
            self._table.cancel(session, req)
        elif req.op == "ping":
            session.send(ok_reply(req.id))
        else:  # hello
            session.client = req.client
            session.send(
                ok_reply(
                    req.id,
                    server=SERVER_NAME,
                    ops=sorted(OPS),
                    max_frame_bytes=self._max_frame_bytes,
                    idle_timeout_ms=(
                        seconds_to_ms(self._idle_timeout) if self._idle_timeout else None
                    ),
                    default_lease_ms=self._default_lease_ms,
                )
            )

    async def _close(
        self, session: _Session, reader: asyncio.StreamReader, *, linger: bool
    ) -> None:
        session.closing = True
        writer = session.writer
        if linger and not writer.transport.is_closing():
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                if writer.can_write_eof():
                    writer.write_eof()
                async with asyncio.timeout(_LINGER_SECONDS):
                    dropped = 0
                    while dropped < _LINGER_MAX_BYTES:
                        chunk = await reader.read(64 * 1024)
                        if not chunk:
                            break
                        dropped += len(chunk)
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except TimeoutError:
            # Output the peer does not read would keep a closed transport open for ever.
            writer.transport.abort()
        except OSError:
            pass


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fogverse.autoscale.lock.server",
        description="Run the FogVerse distributed lock service.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4242, help="port (0: any free port)")
    parser.add_argument(
        "--token",
        default=None,
        help=f"shared secret clients must present (default: ${TOKEN_ENV}; "
        "prefer the variable, command lines are visible to other users)",
    )
    parser.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--frame-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--default-lease", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    server = LockServer(
        args.host,
        args.port,
        token=args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout=args.idle_timeout if args.idle_timeout > 0 else None,
        frame_timeout=args.frame_timeout,
        default_lease=args.default_lease,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
        logger.info("signal received, shutting down")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fogverse.autoscale.lock.server``."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                raise
        else:
            uvloop.run(_run(args))
            return 0
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
