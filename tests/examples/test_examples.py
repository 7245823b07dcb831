"""The example scripts, run as a user runs them (subprocesses) on the real broker.

Each run is short; the assertions are on what the run produced: every frame accounted for,
the latency CSV, the annotated video, per-camera counts, the custom Processor's results, and
no process of the run left alive afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import psutil
import pytest
from backends import committed_kafka, produce_kafka, read_kafka
from onnx_models import constant_model
from polling import until

from fogverse.codec import AutoCodec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Node settings from the environment would override the examples' own topics and groups.
_NODE_ENV = (
    "CONSUMER_TOPIC",
    "CONSUMER_SERVERS",
    "PRODUCER_TOPIC",
    "PRODUCER_SERVERS",
    "GROUP_ID",
    "CLIENT_ID",
    "FOGVERSE_BOOTSTRAP",
)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


make_video = _load("make_video")
photo_camera = _load("photo_camera")

# Where the astronaut's face is in skimage.data.astronaut() (512x512), read off the picture.
FACE = (180.0, 70.0, 268.0, 162.0)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def start_example(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``examples/<script>`` in its own session (process group) with text pipes."""
    base = {k: v for k, v in os.environ.items() if k not in _NODE_ENV}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
        start_new_session=True,
        cwd=EXAMPLES.parent,
    )


def finish_example(
    proc: subprocess.Popen, timeout: float = 90.0, stderr_so_far: str = ""
) -> subprocess.CompletedProcess[str]:
    """Wait for the run; fail if it or anything it started (workers, forkserver, a broker)
    is still alive shortly after it exits, or if it exited with an error."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[1]} did not finish within {timeout} s\n{err[-4000:]}")
    err = stderr_so_far + err
    # The forkserver and workers notice their parent's exit on their own; give them a moment.
    deadline = time.monotonic() + 10
    while (left := _group_members(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in left:
        p.kill()
    assert not left, f"{proc.args[1]} left processes behind: {[p.cmdline()[:3] for p in left]}"
    assert proc.returncode == 0, f"{proc.args[1]} exited {proc.returncode}\n{err[-4000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_until(stream: Any, marker: Callable[[str], bool], timeout: float = 150) -> list[str]:
    """Lines of a running example's ``stream`` up to the first that ``marker`` accepts (the
    test fails, showing them, if none comes within ``timeout`` seconds or before it ends)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # readline returns at the latest when the run ends
        line = stream.readline()
        seen.append(line)
        if not line or marker(line):
            break
    assert any(marker(line) for line in seen), "".join(seen)[-4000:]
    return seen


def run_example(
    script: str, *args: str, timeout: float = 90.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return finish_example(start_example(script, *args, env=env), timeout)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def test_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s 1280x720 synthetic clip, made by the example's own CLI."""
    out = tmp_path_factory.mktemp("video") / "clip.mp4"
    run_example("make_video.py", "--out", str(out), "--seconds", "2", "--fps", "30")
    return out


def test_make_video_writes_a_video_opencv_reads_back(test_video: Path) -> None:
    frames, fps, width, height = make_video.probe_video(test_video)
    assert (frames, width, height) == (60, 1280, 720)
    assert fps == pytest.approx(30, abs=0.5)
    cap = cv2.VideoCapture(str(test_video))
    ok1, first = cap.read()
    ok2, second = cap.read()
    cap.release()
    assert ok1 and ok2
    assert cv2.absdiff(first, second).mean() > 0.1  # things move


def test_video_pipeline_delivers_every_frame(
    kafka_bootstrap: str, test_video: Path, tmp_path: Path
) -> None:
    frames = 45
    result = run_example(
        "video_pipeline.py",
        "--bootstrap",
        kafka_bootstrap,
        "--video",
        str(test_video),
        "--frames",
        str(frames),
        "--processes",
        "2",
        "--detector",
        "motion",
        "--output-dir",
        str(tmp_path),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["lost"]) == (frames, frames, 0)
    assert summary["duplicates"] == 0
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert "frames out" in result.stderr  # live progress
    assert re.search(r"frames in 45 \| out 45 \| lost 0", result.stderr)

    rows = _csv_rows(tmp_path / "latency.csv")
    assert [int(r["frame"]) for r in rows] == list(range(frames))  # every frame, in order
    assert {r["cam"] for r in rows} == {"cam0"}
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    # The walking figure and the shapes move, so the motion detector finds something, and
    # its boxes were mapped back into the 1280x720 source frame.
    boxes = [list(map(float, b.split())) for r in rows if r["boxes"] for b in r["boxes"].split(";")]
    assert sum(int(r["detections"]) for r in rows) == len(boxes) > 0
    assert all(0 <= x1 < x2 <= 1280 and 0 <= y1 < y2 <= 720 for x1, y1, x2, y2 in boxes)

    written, _, width, height = make_video.probe_video(tmp_path / "annotated.mp4")
    assert (written, width, height) == (frames, 1280, 720)


def test_video_pipeline_tensor_wire_at_max_rate(
    kafka_bootstrap: str, test_video: Path, tmp_path: Path
) -> None:
    # 2.4 MB float16 tensors: only deliverable because the script raises the limits on purpose.
    frames = 30
    run_example(
        "video_pipeline.py",
        "--bootstrap",
        kafka_bootstrap,
        "--video",
        str(test_video),
        "--frames",
        str(frames),
        "--max-rate",
        "--wire",
        "tensor",
        "--detector",
        "none",
        "--output-dir",
        str(tmp_path),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["lost"]) == (frames, frames, 0)
    assert summary["settings"]["fps"] == "max"
    rows = _csv_rows(tmp_path / "latency.csv")
    assert [int(r["frame"]) for r in rows] == list(range(frames))
    assert make_video.probe_video(tmp_path / "annotated.mp4")[0] == frames


def test_multi_camera_counts_every_camera(kafka_bootstrap: str, tmp_path: Path) -> None:
    cameras, frames = 3, 12
    result = run_example(
        "multi_camera.py",
        "--bootstrap",
        kafka_bootstrap,
        "--cameras",
        str(cameras),
        "--frames",
        str(frames),
        "--fps",
        "10",
        "--size",
        "640x360",
        "--output-dir",
        str(tmp_path),
    )
    summary = json.loads((tmp_path / "cameras_summary.json").read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["lost"]) == (36, 36, 0)
    assert summary["settings"]["partitions"] == cameras
    assert set(summary["per_cam"]) == {f"cam{i}" for i in range(cameras)}
    for counts in summary["per_cam"].values():
        assert (counts["in"], counts["out"]) == (frames, frames)
    rows = _csv_rows(tmp_path / "cameras.csv")
    for i in range(cameras):
        # Keyed by camera, so each camera's frames share a partition and stay in order.
        assert [int(r["frame"]) for r in rows if r["cam"] == f"cam{i}"] == list(range(frames))
    assert "cam2" in result.stderr


def test_custom_processor_runs_in_workers(kafka_bootstrap: str) -> None:
    frames = 12
    result = run_example(
        "custom_processor.py", "--bootstrap", kafka_bootstrap, "--frames", str(frames)
    )
    lines = re.findall(r"frame +(\d+): (\{.*\})", result.stdout)
    got = {int(n): json.loads(text) for n, text in lines}
    assert sorted(got) == list(range(frames))
    assert f"{frames} of {frames} frames processed" in result.stdout

    # The values are what the example's Processor computes for the example's frames, and
    # they came from worker processes (set up once each), not from the script's own process.
    custom = _load("custom_processor")
    brightness = custom.Brightness()
    brightness.setup()
    for n in (0, frames - 1):
        assert got[n]["brightness"] == brightness.process(custom.jpeg_frame(n))["brightness"]
    assert os.getpid() not in {r["worker"] for r in got.values()}
    assert 1 <= len({r["worker"] for r in got.values()}) <= 2


@pytest.mark.skipif(shutil.which("java") is None, reason="the local broker needs Java")
@pytest.mark.timeout(400)  # its own broker and a whole pipeline: 78 s at load average 47
def test_default_demo_starts_its_own_broker_and_boxes_the_face(tmp_path: Path) -> None:
    # `make demo` with fewer frames, without FOGVERSE_BOOTSTRAP: the script runs its own
    # broker (and must leave no JVM behind: run_example checks the whole process group), the
    # packaged face detector runs on the packaged photo, and every frame's box is on the face.
    frames = 20
    result = run_example(
        "video_pipeline.py", "--frames", str(frames), "--output-dir", str(tmp_path), timeout=360
    )
    assert "starting a local Kafka broker" in result.stderr
    assert re.search(r"Kafka .* serving at .*\(pid \d+", result.stderr)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["lost"]) == (frames, frames, 0)
    assert summary["settings"]["detector"] == "face"
    camera = photo_camera.PhotoCamera(frames=frames)
    rows = _csv_rows(tmp_path / "latency.csv")
    assert [int(r["frame"]) for r in rows] == list(range(frames))
    for r in rows:
        assert r["detections"] == "1", r
        found = [float(v) for v in r["boxes"].split()]
        expected = camera.to_frame(FACE, int(r["frame"]))
        assert _iou(found, expected) > 0.5, (r, expected)
    written, _, width, height = make_video.probe_video(tmp_path / "annotated.mp4")
    assert (written, width, height) == (frames, 1280, 720)


def test_video_pipeline_runs_a_yolo_onnx_model(kafka_bootstrap: str, tmp_path: Path) -> None:
    # --model takes the YOLO path. The model answers one fixed v8-layout box in model pixels
    # (x 100..300, y 200..300 of 640x640); on the 1280x720 frames the letterbox scale is 0.5
    # with 140 px of padding on top, so the box must come back as (200, 120, 600, 320).
    output = np.zeros((1, 6, 1), np.float32)
    output[0, :, 0] = [200, 250, 200, 100, 0.0, 0.9]  # class 1 of 2
    model = constant_model(output, "example_yolo", metadata={"names": "{0: 'a', 1: 'bee'}"})
    frames = 8
    run_example(
        "video_pipeline.py",
        "--bootstrap",
        kafka_bootstrap,
        "--model",
        str(model),
        "--frames",
        str(frames),
        "--max-rate",
        "--output-dir",
        str(tmp_path),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["lost"]) == (frames, frames, 0)
    assert summary["settings"]["detector"] == "yolo"
    rows = _csv_rows(tmp_path / "latency.csv")
    assert [r["boxes"] for r in rows] == ["200 120 600 320"] * frames


@pytest.mark.timeout(300)
def test_video_pipeline_stops_cleanly_on_ctrl_c(
    kafka_bootstrap: str, test_video: Path, tmp_path: Path
) -> None:
    # The run is meant to be interrupted: its own end (--seconds) lies far beyond the time a
    # loaded machine may take to start it and print the first progress line.
    proc = start_example(
        "video_pipeline.py",
        "--bootstrap",
        kafka_bootstrap,
        "--video",
        str(test_video),
        "--loop",
        "--seconds",
        "900",
        "--detector",
        "motion",
        "--output-dir",
        str(tmp_path),
    )
    assert proc.stderr is not None
    seen = read_until(proc.stderr, lambda line: "frames out" in line)
    proc.send_signal(signal.SIGINT)
    result = finish_example(proc, timeout=60, stderr_so_far="".join(seen))
    assert "interrupted" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["lost"] == 0
    assert 0 < summary["frames_out"] <= summary["frames_in"]
    rows = _csv_rows(tmp_path / "latency.csv")  # flushed and closed on the way out
    assert [int(r["frame"]) for r in rows] == list(range(summary["frames_out"]))


def test_video_pipeline_jpeg_wire_decodes_at_reduced_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import processors.image as image_module

    seen: list[int] = []
    real = image_module._imdecode

    def spy(buf: np.ndarray, flags: int) -> np.ndarray:
        seen.append(flags)
        return real(buf, flags)

    monkeypatch.setattr(image_module, "_imdecode", spy)
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the example imports its sibling modules
    frame = cv2.GaussianBlur(
        np.random.default_rng(1).integers(0, 256, (720, 1280, 3), np.uint8), (7, 7), 0
    )
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    out = _load("video_pipeline").preprocessor("jpeg").process(jpeg)
    # A 720p frame bound for 640x640 decodes at half size (640x360), not at full size.
    assert seen == [cv2.IMREAD_REDUCED_COLOR_2]
    assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR).shape == (640, 640, 3)


def test_detection_sink_commits_a_half_only_with_its_pair(
    kafka_bootstrap: str, new_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's join holds the first half of each pair uncommitted until the pair is
    drawn: frame 1, whose detections never come, is not committed, a restart reads it again,
    and once its partner is overdue it goes to the dead-letter topic."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the example imports its sibling modules
    frames_topic, detections_topic = new_topic(), new_topic()
    group = f"sink-{uuid.uuid4().hex[:8]}"
    codec = AutoCodec()
    jpeg, jpeg_type = codec.encode_tagged(np.zeros((36, 64, 3), np.uint8))
    found, found_type = codec.encode_tagged({"boxes": [], "scores": [], "names": []})

    def items(payload: bytes, content_type: str, indices: list[int]) -> list:
        return [
            (
                str(i).encode(),
                payload,
                [
                    ("cam", b"cam0"),
                    ("frame", str(i).encode()),
                    ("timestamp", str(time.time()).encode()),
                    ("size", b"64x36"),
                    ("content-type", content_type.encode()),
                ],
            )
            for i in indices
        ]

    def committed(topic: str) -> int | None:
        return committed_kafka(kafka_bootstrap, group, topic)

    async def run_sink(pair_timeout: float, until_done) -> None:
        sink = _load("video_pipeline").DetectionSink(
            detections_topic,
            frames_topic=frames_topic,
            detector="face",
            pair_timeout=pair_timeout,
            consumer_servers=kafka_bootstrap,
            group_id=group,
        )
        sink.commit_interval = 0.05
        task = asyncio.create_task(sink.run())
        try:
            await until_done(sink)
        finally:
            sink.stop()
            await asyncio.wait_for(task, 60)

    async def pairs_drawn(sink) -> None:
        await until(lambda: sink.stats.count == 2 and sink._tracker.in_flight == 1, 60, "pairs")
        await until(lambda: committed(frames_topic) == 1, 30, "frame 0 committed", interval=0.2)
        await until(lambda: committed(detections_topic) == 2, 30, "both detections committed")

    async def overdue(sink) -> None:
        # Read again from frame 1: frame 2 comes after it, and with a timeout of 0 its
        # arrival makes frame 1 overdue.
        await until(lambda: committed(frames_topic) == 2, 60, "frame 1 dead-lettered", interval=0.2)

    async def main() -> list:
        await produce_kafka(kafka_bootstrap, frames_topic, items(jpeg, jpeg_type, [0, 1, 2]))
        await produce_kafka(kafka_bootstrap, detections_topic, items(found, found_type, [0, 2]))
        await run_sink(3600, pairs_drawn)
        assert committed(frames_topic) == 1, "the stop left frame 1 uncommitted"
        await run_sink(0, overdue)
        return await read_kafka(kafka_bootstrap, f"{frames_topic}.dlq", 1, timeout=30)

    dead = asyncio.run(main())
    assert [dict(r.headers)["frame"] for r in dead] == [b"1"]
    headers = dict(dead[0].headers)
    assert headers["fogverse.error.stage"] == b"hold"
    assert headers["fogverse.error.message"] == b"no detections for this frame in 0 s"


def test_the_pipeline_benchmark_sends_with_the_examples_low_latency_preset(monkeypatch) -> None:
    """The suite's video pipeline (benchmarks/kafka.py) measures the producer settings the
    examples recommend for video nodes, not settings of its own."""
    from benchmarks import kafka as bench
    from fogverse.transport.confluent import librdkafka_config

    monkeypatch.syspath_prepend(str(EXAMPLES))  # the example imports its sibling modules
    preset = _load("video_pipeline").LOW_LATENCY
    assert librdkafka_config(preset) == bench._low_latency("confluent")
    assert librdkafka_config(preset)["max.in.flight.requests.per.connection"] == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--model", "no-such-model.onnx"], "--model no-such-model.onnx: no such file"),
        (["--video", "no-such-clip.mp4"], "--video no-such-clip.mp4: OpenCV cannot open it"),
    ],
    ids=["model", "video"],
)
def test_video_pipeline_refuses_a_missing_input_before_starting_anything(
    option: list[str], message: str, tmp_path: Path
) -> None:
    # A typo in a path is a usage error, found before a broker starts or topics are made on
    # the user's cluster, not a traceback once the pipeline runs.
    proc = start_example("video_pipeline.py", *option, "--output-dir", str(tmp_path))
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the run did not stop within 120 s\n{err[-4000:]}")
    assert proc.returncode == 2, err[-4000:]
    assert message in err
    assert "starting a local Kafka broker" not in err and "Traceback" not in err
    left = _group_members(proc.pid)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[p.cmdline()[:3] for p in left]}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("script", "option"),
    [
        ("multi_camera.py", ["--fps", "0"]),
        ("multi_camera.py", ["--cameras", "0"]),
        ("make_video.py", ["--size", "10x10"]),
    ],
    ids=["fps", "cameras", "size"],
)
def test_examples_refuse_impossible_counts_as_usage_errors(script: str, option: list[str]) -> None:
    # --fps 0 divided by zero once the cameras ran, --cameras 0 ran a pipeline of nothing and
    # a size the scene cannot draw failed with a traceback: argparse refuses them first.
    proc = start_example(script, *option, "--help-not-reached")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-4000:]
    assert f"argument {option[0]}" in err and "Traceback" not in err


@pytest.mark.timeout(300)
def test_autoscale_example_stops_its_instances_promptly_on_sigterm(kafka_bootstrap: str) -> None:
    # Its own end lies far beyond the test: only the signal may stop it, and soon, with every
    # detector instance it started stopped too (a supervisor SIGKILLs what outlasts its grace).
    proc = start_example(
        "autoscale/run.py", env={"FOGVERSE_BOOTSTRAP": kafka_bootstrap, "EXAMPLE_SECONDS": "900"}
    )
    assert proc.stdout is not None
    read_until(proc.stdout, lambda line: "t(s)" in line)
    proc.send_signal(signal.SIGTERM)
    result = finish_example(proc, timeout=60)
    assert "interrupted" in result.stdout


@pytest.mark.timeout(300)
def test_dynamic_partitions_example_ends_at_once_on_sigterm(kafka_bootstrap: str) -> None:
    # Stopped while c1 runs alone, the demo must not go on to start c2 and c3 (growing the
    # topic) and must not wait out its pauses first.
    proc = start_example(
        "dynamic_partitions.py", "--bootstrap", kafka_bootstrap, "--join-every", "600"
    )
    assert proc.stdout is not None
    read_until(proc.stdout, lambda line: line.startswith("t="))
    proc.send_signal(signal.SIGTERM)
    result = finish_example(proc, timeout=60)
    assert "interrupted" in result.stdout
    assert "joins" not in result.stdout
