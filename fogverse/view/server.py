"""The HTTP side of the view (aiohttp): the page, the figures as JSON, frames over WebSockets.

Read-only by construction: there are only GET routes, and WebSocket messages from a browser
are read and dropped. With a token, every request must carry it (``?token=`` or
``Authorization: Bearer``); without one, only requests addressed to a loopback name or the
bound host are served, so a web page elsewhere cannot reach the view through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from fogverse.view.config import ViewConfig
from fogverse.view.figures import Figures
from fogverse.view.frames import FrameStore

__all__ = ["Served", "make_app"]

logger = logging.getLogger(__name__)

_STATIC = {
    "view.js": "text/javascript",
    "view.css": "text/css",
}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The token may be in the page's address: never send it on.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
SEND_TIMEOUT = 30.0
"""Seconds a browser may take to accept one frame before it is taken for gone and cut off."""
CLOSE_TIMEOUT = 2.0
"""Seconds a browser is given to answer a WebSocket close before its socket is aborted."""


class Served(Protocol):
    """What the server reads from the view it serves (``fogverse.view.service.View`` is one).

    The server depends on this shape, not on the service module, so that the service can
    import the server without a circle."""

    config: ViewConfig
    figures: Figures
    frames: FrameStore

    def snapshot(self) -> dict[str, Any]: ...


_KEY: web.AppKey[Served] = web.AppKey("view")
_STREAMS: web.AppKey[dict[web.WebSocketResponse, asyncio.Transport]] = web.AppKey("streams")


def _asset(name: str) -> bytes:
    return resources.files("fogverse.view").joinpath("static", name).read_bytes()


def _host_allowed(request: web.Request, view: Served) -> bool:
    bound = view.config.host
    if bound in ("0.0.0.0", "::", ""):
        return True
    try:
        host = urlsplit("//" + request.host).hostname
    except ValueError:
        return False
    return host in _LOOPBACK or host == bound


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    view = request.app[_KEY]
    token = view.config.token
    # The page's script and style are public code (a <script> tag cannot send the token).
    if token and not request.path.startswith("/static/"):
        given = request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        # A header of non-UTF-8 bytes arrives with surrogates: a wrong token, not an error.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
            return web.Response(status=401, text="a valid token is required\n")
    elif not _host_allowed(request, view):
        return web.Response(status=403, text="unexpected Host header\n")
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="the view is read-only\n")
    response = await handler(request)
    response.headers.update(_HEADERS)
    return response


async def _index(request: web.Request) -> web.Response:
    return web.Response(body=_asset("index.html"), content_type="text/html", charset="utf-8")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=_STATIC[name], charset="utf-8")


async def _figures(request: web.Request) -> web.Response:
    view = request.app[_KEY]
    snap = view.snapshot()
    since = request.query.get("since")
    if since is not None:
        with contextlib.suppress(ValueError):
            t = float(since)
            snap["history"] = [p for p in snap["history"] if p["t"] > t]
    return web.Response(
        text=json.dumps(snap, separators=(",", ":"), allow_nan=False),
        content_type="application/json",
    )


async def _frame(request: web.Request) -> web.Response:
    view = request.app[_KEY]
    found = view.frames.latest_image(request.match_info["topic"])
    if found is None:
        raise web.HTTPNotFound(text="no frame (yet) on that topic\n")
    data, media = found
    return web.Response(body=data, content_type=media)


async def _stream(request: web.Request) -> web.WebSocketResponse:
    view = request.app[_KEY]
    topic = request.query.get("topic", "")
    if topic not in view.frames.topics:
        raise web.HTTPNotFound(text="not a viewed image topic\n")
    # No permessage-deflate: the frames are JPEG or PNG, already compressed. Deflating a 720p
    # JPEG (240 KB) again cost 5.5 ms of CPU per frame and viewer and saved 1.7 % of its bytes.
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    view.figures.clients += 1
    # Held here: aiohttp forgets the request's transport when it gives up on the connection,
    # though the socket stays open while it has bytes to send.
    transport = request.transport
    assert transport is not None
    request.app[_STREAMS][ws] = transport
    drain = asyncio.create_task(_discard_incoming(ws))
    interval = 1.0 / view.config.max_fps if view.config.max_fps > 0 else 0.0
    loop = asyncio.get_running_loop()
    version = 0
    try:
        while not ws.closed and not drain.done():
            shown = await view.frames.next(topic, version, timeout=1.0)
            if shown is None or shown.version <= version:
                continue
            version = shown.version
            payload = await view.frames.payload(shown)
            if payload is None:
                continue
            sent_at = loop.time()
            # One frame in flight per browser: aiohttp waits for the socket to drain, and
            # frames arriving meanwhile replace each other in the store. A browser that takes
            # no more is cut off: nothing else ends that wait.
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await ws.send_bytes(payload)
            except TimeoutError:
                logger.info("view: a browser took no frame for %.0f s: cut off", SEND_TIMEOUT)
                transport.abort()
                break
            if interval:
                await asyncio.sleep(max(0.0, sent_at + interval - loop.time()))
    except (ConnectionError, RuntimeError):
        pass  # the browser went away mid-send
    finally:
        view.figures.clients -= 1
        request.app[_STREAMS].pop(ws, None)
        drain.cancel()
        await _hang_up(ws, transport)
    return ws


async def _hang_up(ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
    """Close ``ws``, then abort its socket: a closed socket with bytes a stalled browser
    never reads would otherwise stay open (and its handler wait) for good. Not waiting for
    the socket to drain: a send cut off by its timeout leaves aiohttp's drain future
    cancelled, and waiting on it again would raise CancelledError."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code=WSCloseCode.GOING_AWAY, drain=False)
    transport.abort()


async def _end_streams(app: web.Application) -> None:
    # A stream never ends by itself: without this, shutting down waits aiohttp's 60 s.
    await asyncio.gather(*(_hang_up(ws, tr) for ws, tr in list(app[_STREAMS].items())))


async def _discard_incoming(ws: web.WebSocketResponse) -> None:
    # Nothing a page sends is acted on; reading is only how a close is noticed.
    async for msg in ws:
        if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break


def make_app(view: Served) -> web.Application:
    """The view's aiohttp application: the page, ``/api/figures``, the latest frame of a
    topic and the frames' WebSocket stream, all GET and guarded (token or Host check)."""
    app = web.Application(middlewares=[_guard], client_max_size=4096)
    app[_KEY] = view
    app[_STREAMS] = {}
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/figures", _figures)
    app.router.add_get("/api/frame/{topic}", _frame)
    app.router.add_get("/ws", _stream)
    return app
