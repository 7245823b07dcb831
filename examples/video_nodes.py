"""The video demo's stages one per process, configured by environment: what the containerised
demo (deploy/demo/compose.yaml, run by ``make demo-containers``) starts, one container each.

    fogverse run examples/video_nodes.py:camera     # PhotoCamera -> DEMO_PREFIX.frames
    fogverse run examples/video_nodes.py:detector   # .frames -> face detector -> .detections
    fogverse run examples/video_nodes.py:sink       # pairs both, annotated video, summary

The same classes as ``video_pipeline.py`` (which runs all three in one process). Settings:
``FOGVERSE_BOOTSTRAP`` (the broker), ``DEMO_PREFIX`` (topic and group names), ``FRAMES`` (how
many frames the camera sends and the sink expects), ``FPS`` (the camera's pace),
``PROCESSES`` (the detector's worker processes), ``OUTPUT_DIR`` (the sink's annotated.mp4,
latency.csv and summary.json) and ``IDLE_TIMEOUT`` (the sink gives up after this many quiet
seconds). The sink exits with status 0 when every frame arrived, 1 when some were lost.
With ``AUTOSCALE_PROVIDER`` set (deploy/kubernetes sets ``K8S``), the detector asks the
auto-scaling master to scale it, through that provider of the master's ``deploy_scripts``, up to
``AUTOSCALE_MAX`` instances (default 4).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from harness import ReadyParallelConsumer, Summary
from photo_camera import PhotoCamera
from video_pipeline import LOW_LATENCY, DetectionSink, VideoSource

from fogverse.autoscale import enable_heartbeats
from fogverse.config import default_servers
from processors import FaceCascade

__all__ = ["camera", "detector", "sink"]

logger = logging.getLogger("examples")


def _setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _topics() -> tuple[str, str]:
    prefix = _setting("DEMO_PREFIX", "demo")
    return f"{prefix}.frames", f"{prefix}.detections"


def _frames() -> int:
    return int(_setting("FRAMES", "300"))


def _fps() -> float:
    return float(_setting("FPS", "10"))


def camera() -> VideoSource:
    """``FRAMES`` views of the packaged photograph, paced at ``FPS``; ends after the last."""
    frames = _frames()
    return VideoSource(
        PhotoCamera(frames=frames, fps=_fps()),
        fps=_fps(),
        max_frames=frames,
        producer_topic=_topics()[0],
        producer_servers=default_servers(),
        producer_conf=LOW_LATENCY,
    )


def detector() -> ReadyParallelConsumer:
    """The packaged face detector in ``PROCESSES`` worker processes."""
    frames_topic, detections_topic = _topics()
    node = ReadyParallelConsumer(
        frames_topic,
        default_servers(),
        f"{_setting('DEMO_PREFIX', 'demo')}.detect",
        producer_topic=detections_topic,
        producer_conf=LOW_LATENCY,
        input_codec="bytes",  # the workers decode the JPEG
    )
    node.processor = FaceCascade()
    node.process_number = int(_setting("PROCESSES", "2"))
    provider = _setting("AUTOSCALE_PROVIDER", "")
    if provider:
        # Heartbeats alone never make a stage scalable: the master scales only the stages
        # that sent it an auto-scale request naming one of its providers.
        observer = enable_heartbeats(node, True)
        assert observer is not None
        observer.send_auto_scale_request(
            frames_topic,
            detections_topic,
            {
                "provider": provider,
                "service_name": "detector",
                "max_instance": int(_setting("AUTOSCALE_MAX", "4")),
                "extra_configs": {},
            },
        )
    return node


async def sink() -> None:
    """Pairs frames with their detections until all ``FRAMES`` arrived (or nothing came for
    ``IDLE_TIMEOUT`` s); writes the summary and exits 1 if frames were lost."""
    frames_topic, detections_topic = _topics()
    out = Path(_setting("OUTPUT_DIR", "output"))
    expected, idle = _frames(), float(_setting("IDLE_TIMEOUT", "60"))
    node = DetectionSink(
        detections_topic,
        frames_topic=frames_topic,
        video_path=out / "annotated.mp4",
        csv_path=out / "latency.csv",
        detector="face",
        out_fps=_fps(),
        consumer_servers=default_servers(),
        group_id=f"{_setting('DEMO_PREFIX', 'demo')}.sink",
    )
    node.expect(expected)
    running = asyncio.create_task(node.run())
    try:
        while not node.done.is_set() and not running.done():
            node.progress.clear()
            waiters = [asyncio.create_task(e.wait()) for e in (node.done, node.progress)]
            finished, _ = await asyncio.wait(
                [*waiters, running], timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
            for w in waiters:
                w.cancel()
            if not finished:
                logger.warning("no frame for %.0f s: %d of %d", idle, node.stats.count, expected)
                break
    finally:
        node.stop()
        await running
    interrupted = node.stopping and not node.done.is_set()
    settings: dict[str, Any] = {"frames": expected, "fps": _fps(), "detector": "face"}
    summary = Summary.of({"cam0": expected}, node.stats, settings, interrupted)
    summary.log()
    summary.write(out / "summary.json")
    if summary.lost or interrupted:
        raise SystemExit(1)
