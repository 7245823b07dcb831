"""The live view's cost: a video pipeline's throughput with ``fogverse view`` open vs closed,
in paired interleaved runs on one broker.

Each run sends ``--frames`` camera-like 720p JPEG frames (~220 KiB) as fast as it can through
a pass-through stage (a FogVerse Consumer) to a counting sink, all on one event loop as in the
demo, and times first send -> last frame at the sink. With the view open, the view runs on that
same event loop (``open_view``, as the demo does) reading both topics and the stage's offsets,
and a client in another process watches it the way the page does: both frame streams over
WebSockets plus ``/api/figures`` every second (``--client browser``: a real headless Chromium
page instead, whose rendering then competes for the same cores). "idle": the view runs with
nobody watching (its reading and polling alone).

    .venv/bin/python benchmarks/view_overhead.py --reps 5
    .venv/bin/python benchmarks/view_overhead.py --reps 3 --client browser

Kafka: FOGVERSE_BOOTSTRAP, or a local broker it starts and stops. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from asyncio.subprocess import PIPE
from typing import Any

from benchmarks.common import interleaved, make_frames, median_ratio, run_async, summarize
from benchmarks.kafka import _admin, _own_node_settings, broker, create_topic, delete_topics
from fogverse import Consumer

# Watches a view like the page does: every frame stream, and the figures once a second.
_WS_CLIENT = """
import asyncio, sys, aiohttp
async def stream(http, url, topic):
    async with http.ws_connect(url.replace("http", "ws", 1) + "ws", params={"topic": topic}) as ws:
        async for _ in ws:
            pass
async def figures(http, url):
    while True:
        async with http.get(url + "api/figures") as r:
            await r.read()
        await asyncio.sleep(1)
async def main(url, topics):
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(figures(http, url), *(stream(http, url, t) for t in topics))
asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""

_BROWSER_CLIENT = """
import sys, time
from playwright.sync_api import sync_playwright
with sync_playwright() as pw:
    b = pw.chromium.launch(
        executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
    )
    page = b.new_page(viewport={"width": 1280, "height": 900})
    page.goto(sys.argv[1])
    sys.stdin.read()
    b.close()
"""


class _Stage(Consumer):
    """Passes each frame on untouched (the view's cost is then a large share of the work)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, input_codec="bytes", **kwargs)
        self.assigned = asyncio.Event()

    async def _on_assign(self, tps: Any) -> None:
        await super()._on_assign(tps)
        self.assigned.set()

    def process(self, data: bytes) -> bytes:
        return data


class _Sink(_Stage):
    def __init__(self, *args: Any, expected: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected, self.count, self.done = expected, 0, asyncio.Event()

    def process(self, data: bytes) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


async def _one_run(
    bootstrap: str, src: str, out: str, frames: list[bytes], n: int, mode: str, client: str
) -> float:
    from aiokafka import AIOKafkaProducer

    from fogverse.view import open_view

    stage = _Stage(src, bootstrap, f"{src}.stage", producer_topic=out)
    sink = _Sink(out, bootstrap, f"{out}.sink", expected=n)
    tasks = [asyncio.create_task(node.run()) for node in (stage, sink)]
    view: Any = None
    watcher: asyncio.subprocess.Process | None = None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 << 20)
    try:
        await asyncio.wait_for(asyncio.gather(stage.assigned.wait(), sink.assigned.wait()), 60)
        if mode != "closed":
            view = await open_view(bootstrap, frames=[src, out], nodes=[stage, sink])
            await asyncio.wait_for(view.ready.wait(), 30)
        if view is not None and mode == "open":
            code, extra = (_BROWSER_CLIENT, []) if client == "browser" else (_WS_CLIENT, [src, out])
            watcher = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, view.url, *extra, stdin=PIPE, stdout=PIPE
            )
            # Timed from when the client watches both frame streams.
            deadline = time.monotonic() + 60
            while view.figures.clients < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the view's client never connected")
                await asyncio.sleep(0.05)
        await producer.start()
        t0 = time.perf_counter()
        acks = [await producer.send(src, frames[i % len(frames)]) for i in range(n)]
        await asyncio.gather(*acks)
        await asyncio.wait_for(sink.done.wait(), 300)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()
        if watcher is not None:
            if watcher.stdin is not None:
                watcher.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                watcher.terminate()
            await asyncio.wait_for(watcher.wait(), 30)
        if view is not None:
            await view.close()
        for node in (stage, sink):
            node.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="pairs of runs (default 5)")
    parser.add_argument("--frames", type=int, default=600, help="frames per run (default 600)")
    parser.add_argument("--client", choices=("websocket", "browser"), default="websocket")
    args = parser.parse_args()
    frames = make_frames(8).jpeg
    modes = ["closed", "idle", "open"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with broker() as bootstrap, _own_node_settings():
        admin = _admin(bootstrap)
        # One untimed run first: the first topics and groups of a broker are slow to set up.
        plan = [(-1, "closed"), *interleaved(modes, args.reps)]
        for rep, mode in plan:
            src, out = create_topic(admin, "vov-src"), create_topic(admin, "vov-out")
            try:
                rate = run_async(
                    lambda src=src, out=out, mode=mode: _one_run(
                        bootstrap, src, out, frames, args.frames, mode, args.client
                    )
                )
            finally:
                delete_topics(admin, [src, out])
            if rep >= 0:
                rates[mode].append(rate)
            print(f"round {rep}: view {mode:6s} {rate:7.1f} frames/s", flush=True)
    ratio = median_ratio(rates["open"], rates["closed"])
    print(
        json.dumps(
            {
                "frames_per_run": args.frames,
                "frame_kib": round(sum(map(len, frames)) / len(frames) / 1024, 1),
                "client": args.client,
                **{m: summarize(rates[m], 1) for m in modes},
                "idle_over_closed": round(median_ratio(rates["idle"], rates["closed"]), 3),
                "open_over_closed": round(ratio, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
