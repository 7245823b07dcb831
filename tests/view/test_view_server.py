"""The view's server and frame store without Kafka: safe defaults (token, Host check,
read-only), dropping frames for a slow browser, and the checks on what the topics carry."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from view_harness import make_frame

from fogverse.codec import NDArrayCodec
from fogverse.view import View, ViewConfig, server
from fogverse.view.config import StageSpec
from fogverse.view.figures import Figures
from fogverse.view.frames import (
    PAIR_DETECTIONS,
    PAIR_FRAMES,
    PAIR_WAIT,
    FrameStore,
    image_kind,
    parse_detections,
)
from fogverse.view.server import make_app

FRAMES = "cam.frames"


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[View, str]]:
    """The view's web app on a free port; no Kafka client is started."""
    view = View(ViewConfig("127.0.0.1:1", frames=[FRAMES], port=0, **options))
    runner = web.AppRunner(make_app(view), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield view, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def test_a_token_guards_every_request_but_the_static_code() -> None:
    async def test() -> None:
        async with serving(token="s3cret") as (_, base), aiohttp.ClientSession() as http:
            for path in ("/", "/api/figures", f"/ws?topic={FRAMES}"):
                async with http.get(base + path) as r:
                    assert r.status == 401, path
                async with http.get(base + path + ("&" if "?" in path else "?") + "token=no") as r:
                    assert r.status == 401, path
            async with http.get(base + "/api/figures?token=s3cret") as r:
                assert r.status == 200
            async with http.get(
                base + "/api/figures", headers={"Authorization": "Bearer s3cret"}
            ) as r:
                assert r.status == 200
            async with http.get(base + "/static/view.js") as r:
                assert r.status == 200 and "fogverseView" in await r.text()
            async with http.get(base + "/static/service.py") as r:
                assert r.status == 404  # only the page's own files

    run(test)


def test_without_a_token_only_loopback_host_names_are_served() -> None:
    async def test() -> None:
        async with serving() as (_, base), aiohttp.ClientSession() as http:
            async with http.get(base + "/api/figures") as r:
                assert r.status == 200
            # A DNS-rebinding page would send its own host name.
            async with http.get(base + "/", headers={"Host": "evil.example:8765"}) as r:
                assert r.status == 403

    run(test)


def test_the_server_is_read_only() -> None:
    async def test() -> None:
        async with serving() as (_, base), aiohttp.ClientSession() as http:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                async with http.request(method, base + "/api/figures", data=b"{}") as r:
                    assert r.status == 405, method
            async with http.get(base + "/ws?topic=someone.elses.topic") as r:
                assert r.status == 404
            async with http.get(base + "/") as r:
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                assert r.headers["Referrer-Policy"] == "no-referrer"

    run(test)


def test_figures_json_has_the_documented_shape() -> None:
    async def test() -> None:
        async with serving() as (view, base), aiohttp.ClientSession() as http:
            view.frames.add_frame(FRAMES, b"1", [("timestamp", b"1800000000.0")], make_frame(1))
            view.frames.add_frame(FRAMES, b"2", [], b"junk")
            async with http.get(base + "/api/figures") as r:
                snap = await r.json()
            assert snap["v"] == 1
            assert {"time", "started", "topics", "stages", "frames", "autoscale", "history"} <= set(
                snap
            )
            topic = snap["topics"][FRAMES]
            assert topic["skipped"] == {"not an image": 1}
            assert snap["skipped"] == 1
            assert snap["frames"][FRAMES]["frames"] == 1
            async with http.get(base + f"/api/frame/{FRAMES}") as r:
                assert r.content_type == "image/jpeg" and await r.read() == make_frame(1)

    run(test)


@pytest.mark.timeout(30)
def test_a_group_that_never_committed_has_an_unknown_lag_not_zero() -> None:
    """A stage stuck before its first commit showed lag 0 (keeping up) over a full topic."""
    figures = Figures(ViewConfig("127.0.0.1:1", stages=[StageSpec("g", ("in",))]))
    figures.on_offsets(1.0, {"in": {0: 500, 1: 300}}, {"g": {"in": {0: -1, 1: -1}}}, None)
    lag = figures.snapshot()["stages"][0]["lag"]
    assert lag == {"total": None, "partitions": {"in": {"0": None, "1": None}}}
    assert figures.history[-1]["stages"]["g"]["lag"] is None
    figures.on_offsets(2.0, {"in": {0: 500, 1: 300}}, {"g": {"in": {0: 480, 1: -1}}}, None)
    assert figures.snapshot()["stages"][0]["lag"]["total"] == 20
    assert figures.history[-1]["stages"]["g"]["lag"] == 20


@pytest.mark.timeout(30)
def test_rates_are_unknown_while_the_offsets_cannot_be_read() -> None:
    """A broker down for a minute: the rates read before it went stayed on the page and were
    charted, flat, at every failed poll."""
    figures = Figures(ViewConfig("127.0.0.1:1", topics=["t"], stages=[StageSpec("g", ("t",))]))
    figures.on_offsets(1.0, {"t": {0: 100}}, {"g": {"t": {0: 100}}}, None)
    figures.on_offsets(2.0, {"t": {0: 200}}, {"g": {"t": {0: 150}}}, None)
    snap = figures.snapshot()
    assert snap["topics"]["t"]["per_s"] == 100 and snap["stages"][0]["in_per_s"] == 50
    for t in (3.0, 4.0):
        figures.on_offsets(t, {}, {}, "KafkaConnectionError: Unable to bootstrap")
        snap = figures.snapshot()
        assert snap["topics"]["t"]["per_s"] is None and snap["stages"][0]["in_per_s"] is None
        assert figures.history[-1]["topics"]["t"] is None
        assert figures.history[-1]["stages"]["g"]["in"] is None
    figures.on_offsets(5.0, {"t": {0: 300}}, {"g": {"t": {0: 200}}}, None)
    figures.on_offsets(6.0, {"t": {0: 330}}, {"g": {"t": {0: 220}}}, None)
    snap = figures.snapshot()
    assert snap["topics"]["t"]["per_s"] == 30 and snap["stages"][0]["in_per_s"] == 20


def test_frames_are_not_deflated_again_for_a_browser_that_offers_compression() -> None:
    # Browsers offer permessage-deflate; the frames are JPEG or PNG already.
    async def test() -> None:
        async with (
            serving(max_fps=0) as (view, base),
            aiohttp.ClientSession() as http,
            http.ws_connect(base + f"/ws?topic={FRAMES}", compress=15) as ws,
        ):
            assert ws.compress == 0, "the server accepted permessage-deflate"
            view.frames.add_frame(FRAMES, b"0", [], make_frame(1))
            assert _header(await ws.receive_bytes(timeout=5))

    run(test)


def test_a_browser_gets_the_newest_frame_not_a_queue() -> None:
    async def test() -> None:
        async with (
            serving(max_fps=0) as (view, base),
            aiohttp.ClientSession() as http,
            http.ws_connect(base + f"/ws?topic={FRAMES}") as ws,
        ):
            frame = make_frame(3)
            view.frames.add_frame(FRAMES, b"0", [("cam", b"c")], frame)
            first = await ws.receive_bytes(timeout=5)
            # 500 frames (~10 MB) arrive, the server getting a turn every 50: each time it
            # sends the newest frame, never the ones it missed meanwhile.
            for i in range(1, 501):
                view.frames.add_frame(FRAMES, str(i).encode(), [("cam", b"c")], frame)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
            keys = [json.loads(_header(first))["key"]]
            while keys[-1] != "500":
                keys.append(json.loads(_header(await ws.receive_bytes(timeout=5)))["key"])
            assert keys == [str(i) for i in range(0, 501, 50)], keys
            assert view.frames.topics[FRAMES].seq == 501

    run(test)


def _header(message: bytes) -> bytes:
    n = int.from_bytes(message[:4], "big")
    return message[4 : 4 + n]


def _store(
    pairing: bool = True, clock: Callable[[], float] | None = None
) -> tuple[FrameStore, list[tuple[str, str]]]:
    skipped: list[tuple[str, str]] = []
    store = FrameStore(
        [FRAMES],
        pairing=pairing,
        max_frame_bytes=1 << 20,
        on_skip=lambda t, why: skipped.append((t, why)),
        **({"clock": clock} if clock else {}),
    )
    return store, skipped


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _camera_with_detector(
    store: FrameStore, clock: _Clock, frames: int, lag: int | None, fps: float = 10.0
) -> list[tuple[int, bool, bool]]:
    """Frames 0.. at ``fps``; the detection of frame i is read with frame i + ``lag``
    (``None``: no detector). Returns (shown frame, with boxes, marked waiting) after each."""
    jpeg = make_frame(0)
    seen = []
    for i in range(frames):
        clock.now += 1 / fps
        headers = [("cam", b"c"), ("timestamp", f"{clock.now:.6f}".encode())]
        store.add_frame(FRAMES, str(i).encode(), headers, jpeg)
        if lag is not None and i >= lag:
            done = i - lag
            found = {"boxes": [[done, 0, done + 5, 5]], "names": ["thing"]}
            stamp = [("cam", b"c"), ("timestamp", f"{clock.now - lag / fps:.6f}".encode())]
            store.add_detections("dets", str(done).encode(), stamp, json.dumps(found).encode())
        shown = store.topics[FRAMES].shown
        if shown is not None:
            waiting = getattr(shown, "waiting", False)
            seen.append((int(shown.frame.key), shown.detections is not None, waiting))
    return seen


def test_a_detector_many_frames_behind_still_gets_its_boxes_shown() -> None:
    """A slow fog node's detector 100 frames (10 s) behind the camera: the page shows the
    newest frame that has its detections, boxes drawn, not the newest frame bare."""
    clock = _Clock()
    store, skipped = _store(clock=clock)
    seen = _camera_with_detector(store, clock, frames=300, lag=100)
    # Once the first detection is read, every frame shown is paired, and it keeps up with
    # the detector: frame i - 100 with its own box.
    boxed_at = [n for n, (_, boxed, _) in enumerate(seen) if boxed]
    assert boxed_at, "no frame was ever shown with its boxes"
    after = seen[boxed_at[0] :]
    assert len(after) == 200 and all(boxed and not waiting for _, boxed, waiting in after)
    assert after[-1][0] == 199
    shown = store.topics[FRAMES].shown
    assert shown is not None and shown.detections is not None
    assert shown.detections.boxes == [[199.0, 0.0, 204.0, 5.0]]  # its own, not another's
    meta = json.loads(_header(asyncio.run(store.payload(shown)) or b""))
    assert meta["boxes"] and meta["waiting"] is False and 9_900 < meta["age_ms"] < 10_100
    # Shown frames leave the ring: what waits is only the 100 frames the detector owes.
    assert len(store.topics[FRAMES].waiting) == 100
    assert not skipped


def test_without_detections_for_long_frames_show_bare_saying_why() -> None:
    clock = _Clock()
    store, _ = _store(clock=clock)
    seen = _camera_with_detector(store, clock, frames=100, lag=None)
    first = seen[0][0]
    assert PAIR_WAIT * 10 - 2 <= first <= PAIR_WAIT * 10 + 2  # bare after PAIR_WAIT s
    assert seen[-1] == (99, False, True)
    meta = json.loads(_header(asyncio.run(store.payload(store.topics[FRAMES].shown)) or b""))
    assert meta["waiting"] is True and meta["behind_s"] is None  # no detection read yet
    # A detector further behind than the ring holds frames: bare, with how far behind.
    clock = _Clock()
    store, _ = _store(clock=clock)
    seen = _camera_with_detector(store, clock, frames=PAIR_FRAMES + 400, lag=PAIR_FRAMES + 50)
    assert seen[-1][1:] == (False, True)
    meta = json.loads(_header(asyncio.run(store.payload(store.topics[FRAMES].shown)) or b""))
    assert meta["behind_s"] == pytest.approx((PAIR_FRAMES + 50) / 10, abs=0.2)
    assert len(store.topics[FRAMES].waiting) == PAIR_FRAMES


def test_frames_wait_for_their_detections_and_memory_stays_bounded() -> None:
    store, skipped = _store()
    jpeg = make_frame(0)
    store.add_frame(FRAMES, b"7", [("cam", b"a")], jpeg)
    assert store.topics[FRAMES].shown is None  # waiting for its detections
    boxes = {"boxes": [[1, 2, 30, 40]], "scores": [0.5], "class_ids": [2], "names": ["car"]}
    store.add_detections("dets", b"7", [("cam", b"b")], json.dumps(boxes).encode())
    assert store.topics[FRAMES].shown is None  # another camera's frame 7
    store.add_detections("dets", b"7", [("cam", b"a")], json.dumps(boxes).encode())
    shown = store.topics[FRAMES].shown
    assert shown is not None and shown.frame.key == b"7"
    assert shown.detections is not None and shown.detections.labels == ["car"]
    for i in range(5000):
        store.add_frame(FRAMES, str(i).encode(), [("cam", b"x")], jpeg)
        store.add_detections("dets", str(-i).encode(), [], b'{"boxes": []}')
    assert len(store.topics[FRAMES].waiting) == PAIR_FRAMES
    assert len(store._detections) == PAIR_DETECTIONS
    assert not skipped


def test_hostile_payloads_are_refused_with_a_reason() -> None:
    jpeg = make_frame(0)
    assert image_kind(jpeg, 1 << 20) == "jpeg"
    for payload, why in [
        (jpeg[: len(jpeg) // 2], "broken image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken image"),
        (b"hello", "not an image"),
        (jpeg, "too large"),
    ]:
        with pytest.raises(ValueError, match=why):
            image_kind(payload, 1000 if why == "too large" else 1 << 20)
    store, skipped = _store(pairing=False)
    ndarray = NDArrayCodec().encode(np.zeros((4, 4), "complex64"))
    store.add_frame(FRAMES, b"1", [], ndarray)  # passes the cheap check...
    shown = store.topics[FRAMES].shown
    assert shown is not None
    assert asyncio.run(store.payload(shown)) is None  # ...and is refused when converted
    assert skipped == [(FRAMES, "ndarray is not an image")]


@pytest.mark.parametrize(
    ("record", "labels"),
    [
        ({"boxes": [[0, 0, 1, 1]], "names": ["person"]}, ["person"]),
        ({"boxes": [[0, 0, 1, 1]], "class_ids": [1], "names": ["bg", "dog"]}, ["dog"]),
        ({"boxes": [[0, 0, 1, 1]], "class_ids": [3], "names": {"3": "cat"}}, ["cat"]),
        ({"boxes": [[0, 0, 1, 1]], "class_ids": [5]}, ["5"]),
        ({"boxes": []}, []),
    ],
)
def test_detections_in_the_detection_helpers_shapes(record: dict, labels: list[str]) -> None:
    assert parse_detections(json.dumps(record).encode()).labels == labels


@pytest.mark.parametrize(
    "raw",
    [
        b"{nope",
        b"[]",
        b'{"boxes": "all"}',
        b'{"boxes": [[1, 2, 3]]}',
        b'{"boxes": [[1, 2, 3, NaN]]}',
        b'{"boxes": [[true, 2, 3, 4]]}',
        json.dumps({"boxes": [[0, 0, 1, 1]] * 1001}).encode(),
        b"[" * 100_000,
    ],
)
def test_malformed_detections_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_detections(raw)


@pytest.mark.timeout(30)
def test_a_detection_with_a_number_too_big_for_a_float_is_skipped_not_raised() -> None:
    """A JSON integer of 400 digits is finite to ``json`` but no float holds it: the record is
    counted as skipped, not an OverflowError out of the reader's loop (which ended it)."""
    view = View(ViewConfig("127.0.0.1:1", frames=[FRAMES], detections="dets", port=0))
    huge = "1" + "0" * 400
    view._on_record("dets", b"1", [], f'{{"boxes": [[{huge}, 0, 1, 1]]}}'.encode(), True)
    assert view.figures.topics["dets"].skipped == {"a box is not [x1, y1, x2, y2]": 1}
    found = parse_detections(f'{{"boxes": [[0, 0, 1, 1]], "scores": [{huge}]}}'.encode())
    assert found.boxes == [[0.0, 0.0, 1.0, 1.0]] and math.isnan(found.scores[0])


@asynccontextmanager
async def _runner(**options: Any) -> AsyncIterator[tuple[View, web.AppRunner, str]]:
    view = View(ViewConfig("127.0.0.1:1", frames=[FRAMES], port=0, **options))
    runner = web.AppRunner(make_app(view), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield view, runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
def test_the_server_shuts_down_at_once_with_a_browser_watching() -> None:
    """Before, an open frame stream never ended by itself: shutting down (View.close) waited
    aiohttp's 60 s shutdown timeout for it."""

    async def test() -> None:
        async with (
            _runner() as (view, runner, base),
            aiohttp.ClientSession() as http,
            http.ws_connect(base + f"/ws?topic={FRAMES}") as ws,
        ):
            reading = asyncio.create_task(ws.receive())  # a browser reads: it answers a close
            await _until(lambda: view.figures.clients == 1, 5, "the stream never started")
            async with asyncio.timeout(10):
                await runner.cleanup()
            assert (await reading).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert view.figures.clients == 0

    asyncio.run(test())


@pytest.mark.timeout(60)
def test_a_browser_that_never_reads_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that opens the stream and never reads: once a frame cannot be sent for
    SEND_TIMEOUT, its connection is dropped. Before, its handler waited for the socket to
    drain for good, the heartbeat's close waiting for the same unsent bytes: the socket, the
    task and a frame held forever, and the page's client count never went down."""
    monkeypatch.setattr(server, "SEND_TIMEOUT", 0.5, raising=False)
    # Noise does not compress: 1.4 MB a frame fills the socket's buffers in a few frames.
    noise = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    png = cv2.imencode(".png", noise)[1].tobytes()

    async def test() -> None:
        async with _runner(max_fps=0) as (view, runner, _):
            port = runner.addresses[0][1]
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(b"0123456789abcdef").decode()
            sock.send(
                f"GET /ws?topic={FRAMES} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            try:
                await _until(lambda: view.figures.clients == 1, 5, "the stream never started")
                deadline = asyncio.get_running_loop().time() + 20
                i = 0
                while view.figures.clients or runner.server.connections:  # type: ignore[union-attr]
                    assert asyncio.get_running_loop().time() < deadline, "never cut off"
                    i += 1
                    view.frames.add_frame(FRAMES, str(i).encode(), [], png)
                    await asyncio.sleep(0.05)
            finally:
                sock.close()

    asyncio.run(test())


@pytest.mark.timeout(30)
def test_a_token_header_of_non_utf8_bytes_is_refused_not_an_error() -> None:
    async def test() -> None:
        async with serving(token="s3cret") as (_, base):
            port = int(base.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /api/figures HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
            )
            status = await reader.readline()
            writer.close()
            assert status.startswith(b"HTTP/1.1 401"), status

    asyncio.run(test())


@pytest.mark.timeout(30)
def test_a_view_that_cannot_bind_its_port_stops_its_kafka_reader() -> None:
    async def test() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            view = View(ViewConfig("127.0.0.1:1", frames=[FRAMES], port=port))
            calls: list[str] = []

            async def start() -> None:
                calls.append("start")

            async def stop() -> None:
                calls.append("stop")

            view.reader.start = start  # type: ignore[method-assign]
            view.reader.stop = stop  # type: ignore[method-assign]
            with pytest.raises(OSError):
                await view.start()
            assert calls == ["start", "stop"]

    asyncio.run(test())
