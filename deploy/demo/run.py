"""Run the video demo as containers, from a fresh clone: ``make demo-containers``.

    python deploy/demo/run.py                     # 300 frames at 10 frames/s
    python deploy/demo/run.py --frames 60 --fps 20

Builds the images if needed (deploy/image/build.py --broker), starts ``podman system
service`` on a private socket and, through its Docker-compatible API (the docker SDK, as the
DOCKER deploy provider does), the services of deploy/demo/compose.yaml in ``depends_on``
order: the broker (then the two topics), the detector, the sink, the live view (its URL is
printed) and the camera. It waits for the sink's verdict, stops the rest with SIGTERM and
removes every container. Exits with the sink's status: 0 when every frame the camera sent
came out annotated (examples/output/containers/summary.json says so), 1 when any was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(__file__).with_name("compose.yaml")
sys.path.insert(0, str(ROOT / "deploy" / "image"))
sys.path.insert(0, str(ROOT / "deploy" / "podman"))

import build  # noqa: E402
from podman_service import PodmanService  # noqa: E402

LABEL = "fogverse.demo"
UID = 10001  # the image's user (deploy/image/Containerfile): the sink writes the output
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def substitute(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${NAME}`` and ``${NAME:-default}``, everywhere in the file."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: variables.get(m[1]) or m[2] or "", value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def start_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise SystemExit(f"compose.yaml: depends_on cycle through {name}")
        for dep in services[name].get("depends_on", []):
            visit(dep, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def volumes(entries: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for entry in entries:
        host, bind, *mode = entry.split(":")
        out[host] = {"bind": bind, "mode": mode[0] if mode else "rw"}
    return out


def wait_for_broker(bootstrap: str, container: Any, timeout: float = 180.0) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except Exception:
            pass
        container.reload()
        if container.status == "exited":
            raise SystemExit(f"the broker exited:\n{container.logs().decode()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the broker did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def create_topics(bootstrap: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [NewTopic(n, num_partitions=1, replication_factor=1) for n in names]
    futures = admin.create_topics(topics)
    for future in futures.values():
        future.result(timeout=60)


def follow(container: Any, name: str) -> threading.Thread:
    """Copy a container's output to ours, each line prefixed with its service's name."""

    def copy() -> None:
        try:
            for line in container.logs(stream=True, follow=True):
                sys.stdout.write(f"{name:>8} | {line.decode(errors='replace')}")
                sys.stdout.flush()
        except Exception:
            pass  # the container was removed

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def run(args: argparse.Namespace) -> int:
    node_image = build.build()
    broker_image = build.build_broker(node_image)
    output = args.output_dir.resolve()
    output.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "latency.csv", "annotated.mp4"):
        (output / stale).unlink(missing_ok=True)
    if os.geteuid() == 0:
        os.chown(output, UID, UID)
    else:
        output.chmod(0o777)
    run_id = args.run_id or uuid.uuid4().hex[:8]
    variables = {
        "NODE_IMAGE": node_image,
        "BROKER_IMAGE": broker_image,
        "BROKER_PORT": str(free_port()),
        "VIEW_PORT": str(args.view_port or free_port()),
        "DEMO_PREFIX": f"demo-{run_id}",
        "FRAMES": str(args.frames),
        "FPS": str(args.fps),
        "OUTPUT_DIR": str(output),
    }
    spec = substitute(yaml.safe_load(COMPOSE.read_text()), variables)
    services = spec["services"]
    bootstrap = f"127.0.0.1:{variables['BROKER_PORT']}"
    prefix = variables["DEMO_PREFIX"]
    codes: dict[str, int] = {}
    with PodmanService((LABEL, run_id)) as client:
        started: dict[str, Any] = {}
        for name in start_order(services):
            svc = services[name]
            container = client.containers.run(
                svc["image"],
                svc.get("command"),
                entrypoint=svc.get("entrypoint"),
                environment=svc.get("environment", {}),
                volumes=volumes(svc.get("volumes", [])),
                network_mode=svc.get("network_mode"),
                labels={LABEL: run_id, "fogverse.demo.service": name},
                name=f"{spec.get('name', 'fogverse-demo')}-{name}-{run_id}",
                detach=True,
            )
            started[name] = container
            follow(container, name)
            log(f"started {name} ({container.id[:12]})")
            if name == "broker":
                wait_for_broker(bootstrap, container)
                create_topics(bootstrap, [f"{prefix}.frames", f"{prefix}.detections"])
                log(f"broker ready at {bootstrap}")
            if name == "view":
                log(f"live view: http://127.0.0.1:{variables['VIEW_PORT']}/")
        sink = started["sink"]
        deadline = time.monotonic() + args.frames / args.fps + args.timeout
        while True:
            sink.reload()
            if sink.status == "exited":
                break
            for name, container in started.items():
                container.reload()
                if name not in ("sink", "camera") and container.status == "exited":
                    log(f"{name} exited early (status {container.attrs['State']['ExitCode']})")
            if time.monotonic() > deadline:
                log("the sink did not finish in time; stopping it")
                sink.stop(timeout=30)
                break
            time.sleep(1.0)
        codes["sink"] = int(sink.wait(timeout=60)["StatusCode"])
        for name in reversed(list(started)):
            container = started[name]
            if name != "sink":
                container.stop(timeout=30)  # SIGTERM: the nodes drain, commit and exit 0
                codes[name] = int(container.wait(timeout=60)["StatusCode"])
    summary_path = output / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    log(f"exit statuses: {codes}")
    if summary is not None:
        log(
            f"frames in {summary['frames_in']}, out {summary['frames_out']}, "
            f"lost {summary['lost']}, duplicates {summary['duplicates']}; "
            f"annotated video, latency.csv and summary.json in {output}"
        )
    ok = summary is not None and summary["lost"] == 0 and codes.get("camera") == 0
    return codes["sink"] if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=300, help="frames the camera sends")
    p.add_argument("--fps", type=float, default=10.0, help="the camera's frames per second")
    p.add_argument("--view-port", type=int, help="the live view's port (default: a free one)")
    p.add_argument("--output-dir", type=Path, default=ROOT / "examples" / "output" / "containers")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the sink may take past the feed"
    )
    p.add_argument("--run-id", help=f"the containers' {LABEL} label (default: a fresh one)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
