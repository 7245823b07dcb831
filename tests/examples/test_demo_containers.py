"""The containerised demo (deploy/demo/run.py, what ``make demo-containers`` runs) from end to
end on podman: broker, detector, sink, live view and camera, each a container of the images
deploy/image/build.py builds; the run must end with every frame accounted for and leave no
container or engine process behind."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import psutil
import pytest
from podman_engine import BUILD_TIMEOUT, PodmanService

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "deploy" / "demo" / "run.py"
FRAMES = 20

pytestmark = pytest.mark.slow


# The run builds the images first when they are missing (minutes on a fresh machine).
@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_the_demo_as_containers_ends_with_every_frame_out(tmp_path: Path) -> None:
    run_id = f"t{uuid.uuid4().hex[:8]}"
    leftovers = PodmanService(("fogverse.demo", run_id))
    args = ["--frames", str(FRAMES), "--fps", "20", "--output-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, str(RUN), *args, "--run-id", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    family: list[psutil.Process] = []
    try:
        out, _ = proc.communicate(timeout=BUILD_TIMEOUT + 540)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                family = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait()
            for child in family:
                with contextlib.suppress(psutil.Error):
                    child.kill()
        left = leftovers.remove_containers()
        leftovers.stop()
    assert proc.returncode == 0, out[-6000:]
    assert not left, f"containers outlived the run: {left}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["lost"]) == (FRAMES, FRAMES, 0)
    assert "exit statuses: {'sink': 0, 'camera': 0, 'view': 0, 'detector': 0, 'broker': 0}" in out
    assert "live view: http://127.0.0.1:" in out
    video = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    try:
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    finally:
        video.release()
