"""The view as one running thing: the reader, the offset probe and the web server together.

    async with View(ViewConfig(servers, frames=["cam.frames"])) as view:
        print(view.url)
        ...

or, from a pipeline script, ``view = await open_view(servers, frames=[...], nodes=[...])``
and ``await view.close()`` at the end. Runs on the caller's event loop (the pipeline's own);
everything it does per record is a few dictionary updates, so it stays out of the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

from fogverse.view.config import ViewConfig
from fogverse.view.figures import Figures
from fogverse.view.frames import FrameStore, timestamp_of
from fogverse.view.probe import OffsetProbe
from fogverse.view.reader import TopicReader

__all__ = ["View", "open_view"]

logger = logging.getLogger(__name__)


class View:
    """A running live view; :attr:`url` is the page's address (with the token, if any)."""

    def __init__(self, config: ViewConfig) -> None:
        self.config = config
        self.figures = Figures(config)
        self.frames = FrameStore(
            list(config.frames),
            pairing=config.detections is not None,
            max_frame_bytes=config.max_frame_bytes,
            on_skip=self.figures.skip,
        )
        self.reader = TopicReader(
            config.servers,
            [*config.frames, *([config.detections] if config.detections else [])],
            self._on_record,
            control_topic=config.control_topic,
            sampled=config.frames,
            max_fps=config.max_fps,
            max_frame_bytes=config.max_frame_bytes,
            conf=config.consumer_conf,
        )
        self.probe = OffsetProbe(config.servers, config.consumer_conf)
        self.port: int | None = None
        self._runner: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        """Set once every viewed topic's partitions are being read (records sent from then on
        are seen); a topic that does not exist yet is waited for."""

    # ---- records -------------------------------------------------------------------------

    def _on_record(
        self,
        topic: str,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        value: bytes | None,
        parsed: bool,
    ) -> None:
        if not parsed:
            self.figures.skip(topic, "unparsable record")
            return
        now = time.time()
        if topic == self.config.control_topic:
            self.figures.on_read(topic, None, now)
            self.figures.on_control(value)
            return
        self.figures.on_read(topic, timestamp_of(headers), now)
        if value is None:
            self.figures.skip(topic, "empty value")
        elif topic == self.config.detections:
            self.frames.add_detections(topic, key, headers, value)
        elif topic in self.frames.topics:
            self.frames.add_frame(topic, key, headers, value)

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        token = f"?token={self.config.token}" if self.config.token else ""
        return f"http://{shown}:{self.port}/{token}"

    async def start(self) -> View:
        try:
            from aiohttp import web
        except ImportError as exc:
            raise ImportError("the live view needs aiohttp: pip install 'fogverse[view]'") from exc

        from fogverse.view.server import make_app

        try:
            await self.reader.start()
            self._runner = web.AppRunner(make_app(self), access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await self.close()  # the port in use, say: no Kafka consumer left running
            raise
        self.port = self._runner.addresses[0][1]
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="view-poll"),
            asyncio.create_task(self.reader.run(), name="view-read"),
        ]
        logger.debug("live view on %s", self.url)
        return self

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.reader.stop()
        await self.probe.close()

    async def __aenter__(self) -> View:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- polling -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        groups = {s.group: s.inputs for s in self.config.stages}
        topics = list(self.figures.topics)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            error: str | None = None
            ends: dict[str, dict[int, int]] = {}
            committed: dict[str, dict[str, dict[int, int]]] = {}
            try:
                ends, committed = await self.probe.read(topics, groups)
                await self.reader.assign({t: list(p) for t, p in ends.items()})
            except Exception as exc:
                # The broker may be restarting: keep the page up, say so on it, try again.
                error = f"{type(exc).__name__}: {exc}"
                if error != self.figures.poll_error:  # once, not every second
                    logger.warning("view: reading offsets failed: %s", error)
            self.figures.on_offsets(time.time(), ends, committed, error)
            if not error and all(t in ends for t in self.reader.topics):
                self.ready.set()
            await asyncio.sleep(max(0.05, started + self.config.poll_interval - loop.time()))

    def snapshot(self) -> dict[str, Any]:
        return self.figures.snapshot(self.frames.stats())


async def open_view(
    servers: str,
    *,
    frames: Iterable[str] = (),
    nodes: Iterable[Any] = (),
    detections: str | None = None,
    control_topic: str | None = None,
    port: int = 0,
    token: str | bool | None = None,
    **options: Any,
) -> View:
    """Start a view of a pipeline from its script: ``nodes`` give the stages (and, with
    ``profile=True``, their time split); ``token=True`` makes up a random token."""
    if token is True:
        token = secrets.token_urlsafe(16)
    config = ViewConfig(
        servers,
        frames=list(frames),
        detections=detections,
        control_topic=control_topic,
        port=port,
        token=token or None,
        **options,
    ).watch(*nodes)
    return await View(config).start()
