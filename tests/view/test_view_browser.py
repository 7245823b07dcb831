"""The live view in a real browser (Debian's headless Chromium under Playwright) while a real
pipeline runs on the real broker: a camera feed, a detection stage (a FogVerse Consumer), the
view, and for the last test an auto-scaling master.

One pipeline serves the module's tests (they run in file order, each leaving it working):
starting Chromium, a group and the view costs seconds that each test would pay again.
Screenshots go to the test's tmp_path; ``FOGVERSE_VIEW_SHOTS=DIR`` copies them somewhere to
look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from polling import until, wait_until
from view_harness import (
    LoopThread,
    SquareDetector,
    canvas_pixels,
    chromium_path,
    make_frame,
    send_bad_header_key,
    send_frames,
    square_at,
)

from fogverse.view import open_view
from fogverse.view.figures import RATE_WINDOW

RATE = 15.0


def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("FOGVERSE_VIEW_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = chromium_path()
    if exe is None:
        pytest.fail("chromium is not installed: `make setup` installs Debian's package")
    # The test extra installs playwright; it drives Debian's Chromium, never a download.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Live:
    """The running pipeline and view (on ``lt``'s loop) and the page showing it."""

    def __init__(self, lt: LoopThread, bootstrap: str, topics: dict[str, str]) -> None:
        self.lt, self.bootstrap, self.topics = lt, bootstrap, topics
        self.sent = 0
        self.sent_at: list[float] = []
        self.errors: list[str] = []
        self.page: Any = None
        self.view: Any = None
        self.detector: Any = None
        self.producer: Any = None
        self._detector_run: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.detector = SquareDetector(
            consumer_topic=self.topics["frames"],
            producer_topic=self.topics["detections"],
            consumer_servers=self.bootstrap,
            group_id=self.topics["group"],
        )
        self._detector_run = asyncio.create_task(self.detector.run())
        await until(
            self.detector.assigned.is_set, 30, "the detector's group to form", interval=0.05
        )
        self.view = await open_view(
            self.bootstrap,
            frames=[self.topics["frames"]],
            detections=self.topics["detections"],
            control_topic=self.topics["control"],
            nodes=[self.detector],
            token=True,
            poll_interval=0.5,
        )
        await asyncio.wait_for(self.view.ready.wait(), 30)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        if self.detector is not None:
            self.detector.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._detector_run, 30)
        if self.view is not None:
            await self.view.close()

    def feed(self, count: int, rate: float = RATE) -> Any:
        """Send ``count`` more frames in the background; the future gives how many. The
        time of each send is appended to ``sent_at``."""
        start, self.sent = self.sent, self.sent + count
        return self.lt.spawn(
            send_frames(
                self.producer, self.topics["frames"], start, count, rate, sent_at=self.sent_at
            )
        )

    def achieved_rate(self, seconds: float) -> float:
        """Frames per second actually sent over the last ``seconds``."""
        since = time.monotonic() - seconds
        return sum(1 for t in list(self.sent_at) if t >= since) / seconds

    def received(self) -> int:
        return self.page.evaluate(
            "(t) => window.fogverseView.frames[t] ? window.fogverseView.frames[t].received : 0",
            self.topics["frames"],
        )

    def figures(self) -> dict[str, Any]:
        """The figures the page last fetched (what it is showing)."""
        return self.page.evaluate("() => window.fogverseView.last")

    def text(self, selector: str) -> str:
        return self.page.locator(selector).first.inner_text()


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, kafka_admin: Any, browser: Any) -> Iterator[Live]:
    from confluent_kafka.admin import NewTopic

    suffix = uuid.uuid4().hex[:10]
    topics = {
        "frames": f"view-frames-{suffix}",
        "detections": f"view-dets-{suffix}",
        "control": f"view-ctl-{suffix}",
    }
    futures = kafka_admin.create_topics([NewTopic(t, num_partitions=1) for t in topics.values()])
    for f in futures.values():
        f.result(30)
    topics["group"] = f"view-detector-{suffix}"
    lt = LoopThread()
    live = Live(lt, kafka_bootstrap, topics)
    page = None
    try:
        lt.call(live.start())
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda exc: live.errors.append(str(exc)))
        live.page = page
        page.goto(live.view.url)
        yield live
    finally:
        if page is not None:
            page.close()
        with contextlib.suppress(Exception):
            lt.call(live.stop(), 60)
        lt.close()
        kafka_admin.delete_topics([*topics.values(), f"{topics['frames']}.dlq"])


def _differing(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixel values that differ by more than JPEG noise."""
    assert a.shape == b.shape and a.size
    return float((np.abs(a.astype(int) - b.astype(int)) > 24).mean())


def _is_green(px: np.ndarray, x: int, y: int) -> bool:
    r, g, b = (int(v) for v in px[y, x, :3])
    return g > 200 and r < 120 and b < 120


def test_frames_arrive_change_carry_their_detections_and_the_figures_match(
    live: Live, tmp_path: Path
) -> None:
    frames, dets = live.topics["frames"], live.topics["detections"]
    feeding = live.feed(150)  # 10 s at 15 frames/s
    wait_until(lambda: live.received() >= 2, 20, "the first frames on the page", interval=0.05)
    first, meta1 = canvas_pixels(live.page, frames)
    seen = live.received()
    wait_until(lambda: live.received() >= seen + 2, 10, "more frames on the page", interval=0.05)
    second, meta2 = canvas_pixels(live.page, frames)
    # The pixels changed, not only a counter: the square moved between the two frames.
    assert int(meta2["key"]) > int(meta1["key"])
    assert _differing(first, second) > 0.01
    # Each frame is drawn with its own detection, in the frame's pixels.
    for px, meta in ((first, meta1), (second, meta2)):
        x, y = square_at(int(meta["key"]))
        assert meta["labels"] == ["square"]
        (x1, y1, x2, y2) = meta["boxes"][0]
        assert max(abs(x1 - x), abs(y1 - y), abs(x2 - x - 48), abs(y2 - y - 48)) <= 2, meta
        assert _is_green(px, int((x1 + x2) / 2), int(y1)), "no box drawn on the frame"

    # Mid-feed (5 s in, the rate window is 3 s), the rates shown are the feed's.
    wait_until(
        lambda: (live.figures()["topics"][frames]["end_offsets"] or 0) >= 75,
        20,
        "5 s of feed on the page",
        interval=0.1,
    )
    snap = live.figures()
    # Compared with the rate the feeder actually achieved over the view's window (and the
    # polls before it), not the nominal one: a loaded machine may have held the feeder back.
    achieved = live.achieved_rate(RATE_WINDOW + 1.0)
    assert not feeding.done(), "the test could not sample the figures while the feed ran"
    rate = snap["topics"][frames]["per_s"]
    assert rate is not None and 0.7 * achieved <= rate <= 1.3 * achieved, (
        achieved,
        snap["topics"][frames],
    )
    stage = snap["stages"][0]
    assert stage["in_per_s"] is not None, stage
    assert 0.6 * achieved <= stage["in_per_s"] <= 1.4 * achieved, (achieved, stage)
    shot = _shot(live.page, tmp_path, "view-pipeline.png")
    assert shot.stat().st_size > 10_000

    sent = feeding.result(30)
    assert sent == 150
    # Every frame is counted (the view samples the frames it shows, at most max_fps a
    # second, but reads every detection); the detector's lag drains to 0 and its time
    # split (profile=True) is on the page.
    topic_row = f'tr[data-topic="{frames}"]'
    assert live.figures()["topics"][frames]["read"] < sent

    def counts_match() -> bool:
        return (
            live.text(f'{topic_row} [data-figure="end_offsets"]') == str(sent)
            and live.text(f'tr[data-topic="{dets}"] [data-figure="read"]') == str(sent)
            and live.text('[data-stage] [data-figure="lag"]').startswith("0 ")
        )

    wait_until(counts_match, 20, lambda: f"the page to show {sent} frames", interval=0.2)
    profile = live.text('[data-stage] [data-figure="profile"]')
    assert "process" in profile and "decode" in profile
    assert live.figures()["stages"][0]["profile"]["messages"] == sent
    assert not live.errors


def test_garbage_on_the_topics_is_counted_and_the_page_keeps_working(
    live: Live, tmp_path: Path
) -> None:
    frames, dets = live.topics["frames"], live.topics["detections"]
    before = live.received()
    skipped_before = live.figures()["skipped"]
    whole = make_frame(1)
    garbage_frames = [
        b"definitely not an image",
        whole[: len(whole) // 2],  # a cut-off JPEG
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature over junk
        None,  # a tombstone
    ]
    garbage_detections = [b"{not json", b'{"boxes": "everywhere"}', b"[1, 2, 3]"]

    def skipped() -> int:
        return int(live.view.figures.snapshot()["skipped"]) - skipped_before

    # One at a time: the view reads the newest frame of a topic, so each bad one must be
    # the newest for a moment to be read at all.
    for i, value in enumerate(garbage_frames):
        live.lt.call(live.producer.send_and_wait(frames, value, key=f"junk{i}".encode()))
        wait_until(lambda i=i: skipped() == i + 1, 10, f"bad frame {i} counted", interval=0.02)
    # A header key that is not UTF-8 (aiokafka cannot parse its batch): a stand-in is counted.
    send_bad_header_key(live.bootstrap, frames)
    n = len(garbage_frames) + 1
    wait_until(lambda: skipped() == n, 10, "the unparsable record counted", interval=0.02)
    for i, value in enumerate(garbage_detections):
        live.lt.call(live.producer.send_and_wait(dets, value, key=str(i).encode()))
    expected = n + len(garbage_detections)
    wait_until(
        lambda: live.figures()["skipped"] - skipped_before == expected,
        15,
        lambda: f"{expected} skipped messages (page: {live.figures()['skipped']})",
        interval=0.2,
    )
    assert "bad message(s) skipped" in live.text("#skipped")
    # The page still shows new frames, and nothing broke in it.
    live.feed(20).result(30)
    wait_until(lambda: live.received() > before + 3, 20, "frames after the garbage", interval=0.1)
    wait_until(
        lambda: live.figures()["topics"][frames]["end_offsets"] == live.sent + n,
        10,
        "the page to count every frame, good or bad",
        interval=0.2,
    )
    _shot(live.page, tmp_path, "view-after-garbage.png")
    assert not live.errors


class _Instance:
    """What the test's deploy function returns: an instance that only reports heartbeats."""

    def __init__(self, observer: Any) -> None:
        self.observer = observer

    def alive(self) -> bool:
        return True

    async def stop(self) -> None:
        await self.observer.close()


def test_a_scale_out_by_the_master_appears_with_its_reason(live: Live, tmp_path: Path) -> None:
    from fogverse.autoscale import AutoScaleComponent, DeployScripts, Observer, Worker

    control, bootstrap = live.topics["control"], live.bootstrap
    src, out = f"{live.topics['frames']}-as-in", f"{live.topics['frames']}-as-out"
    stage_name = f"{src} → {out}"

    def observer(instance_id: str) -> Any:
        conf = {
            "kafka_server": bootstrap,
            "producer_topic": control,
            "heartbeat_interval": 0.25,
            "instance_id": instance_id,
        }
        obs = Observer(conf)  # type: ignore[arg-type]
        obs.source_topic, obs.target_topic, obs.group_id = src, out, "as-stage"
        return obs

    deployed: list[str] = []

    async def deploy(log: Any, config: dict[str, Any]) -> _Instance:
        # A real deploy starts a process; this one starts the new instance's heartbeats.
        deployed.append(config["instance_id"])
        obs = observer(config["instance_id"])
        await obs.start()
        return _Instance(obs)

    scripts = DeployScripts()
    scripts.set_deploy_functions("TEST", deploy)
    master = AutoScaleComponent().master_auto_scaler(
        {
            "consumer_topic": control,
            "consumer_server": bootstrap,
            "consumer_group_id": "view-test-master",
            "auto_deployer_config": {
                "deploy_delay": 1,
                "after_heartbeat_delay": 0,
                "tick": 0.25,
                "stop_instances_on_exit": True,
            },
            "included_worker": [Worker.AUTO_DEPLOYER, Worker.INPUT_OUTPUT_WORKER],
            "input_output_worker_config": {
                "refresh_rate_second": 0.5,
                "input_output_ratio_threshold": 0.9,
                "window_seconds": 2,
            },
            "lookback_seconds": 30,
        },
        scripts,
    )
    first, upstream = observer("stage-first"), observer("camera")
    upstream.source_topic, upstream.target_topic = None, src

    behind = {"now": False}

    async def traffic() -> None:
        # The camera sends 40 messages/s to the stage, which keeps up until the test makes
        # it fall behind (10/s out): then the master's io-ratio signal wants one more.
        await first.start()
        await upstream.start()
        first.send_auto_scale_request(
            src, out, {"provider": "TEST", "service_name": "det", "max_instance": 2}
        )
        while True:
            upstream.send_heartbeat(src, 4)
            first.send_heartbeat(out, 1 if behind["now"] and not deployed else 4)
            await asyncio.sleep(0.1)

    async def start() -> Any:
        run = asyncio.create_task(master.run())
        await until(master.ready.is_set, 30, "the master to catch up", interval=0.05)
        return run, asyncio.create_task(traffic())

    run, feeding = live.lt.call(start())
    row = f'tr[data-as-stage="{stage_name}"]'
    try:
        wait_until(
            lambda: (
                live.page.locator(row).count() == 1
                and live.text(f'{row} [data-figure="instances"]') == "1"
            ),
            20,
            lambda: f"the stage's first instance on the page: {live.figures()['autoscale']}",
            interval=0.1,
        )
        assert not deployed
        behind["now"] = True
        wait_until(
            lambda: live.page.locator('tr[data-decision="scale-out"]').count() == 1,
            30,
            "the master's scale-out on the page",
            interval=0.1,
        )
        decision = live.text('tr[data-decision="scale-out"]')
        assert deployed and deployed[0] in decision
        assert "input_output wants 2" in decision and "has 1" in decision, decision
        wait_until(
            lambda: live.text(f'{row} [data-figure="instances"]') == "2",
            20,
            "the new instance's heartbeats on the page",
            interval=0.1,
        )
        record = master.deployer.records[0]
        assert record.action == "deploy" and record.instance_id == deployed[0]
        assert live.page.locator('tr[data-decision="scale-out"]').count() == 1
        live.page.locator("#autoscale").scroll_into_view_if_needed()
        _shot(live.page, tmp_path, "view-autoscale.png")
        assert not live.errors
    finally:

        async def stop() -> None:
            feeding.cancel()
            master.stop()
            await asyncio.wait_for(run, 30)
            await first.close()
            await upstream.close()

        live.lt.call(stop(), 60)
