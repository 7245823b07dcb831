"""``fogverse view``: a live page of a running pipeline (read-only; binds 127.0.0.1).

    fogverse view --frames video.frames --stage video.preprocess:video.frames:video.prep \
                  --control fogverse-autoscale

prints the page's address and serves until SIGINT/SIGTERM. ``--stage GROUP:IN[,IN]:[OUT]``
charts a consumer group's rates, lag and latency; ``--token`` (or ``--token auto``) makes
every request carry that token. The same figures are served as JSON at /api/figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from typing import Any

from fogverse.config import default_servers
from fogverse.view.config import DEFAULT_HOST, DEFAULT_PORT, StageSpec, ViewConfig

__all__ = ["register"]


def _config(args: argparse.Namespace) -> ViewConfig:
    token = secrets.token_urlsafe(16) if args.token == "auto" else args.token
    return ViewConfig(
        args.bootstrap or default_servers(),
        frames=list(args.frames),
        detections=args.detections,
        topics=list(args.topic),
        stages=[StageSpec.parse(s) for s in args.stage],
        control_topic=args.control,
        host=args.host,
        port=args.port,
        token=token,
        max_fps=args.max_fps,
    )


def _run(args: argparse.Namespace) -> int:
    from fogverse.app import run
    from fogverse.view.service import View

    try:
        config = _config(args)
    except ValueError as exc:
        print(f"fogverse view: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with View(config) as view:
            print(f"FogVerse live view: {view.url}", flush=True)
            await stop.wait()

    from aiokafka.errors import KafkaError

    try:
        run(main())
    except (KafkaError, OSError) as exc:  # Kafka unreachable, the port in use: not a bug
        print(f"fogverse view: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``view`` to the ``fogverse`` command's sub-commands."""
    p = subparsers.add_parser(
        "view",
        help="serve a live page of a pipeline's frames and figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bootstrap", help="Kafka host:port (default: FOGVERSE_BOOTSTRAP)")
    p.add_argument("--frames", action="append", default=[], help="image topic (repeatable)")
    p.add_argument("--detections", help="topic of JSON detections keyed like the frames")
    p.add_argument("--topic", action="append", default=[], help="chart this topic's rate too")
    p.add_argument(
        "--stage", action="append", default=[], help="GROUP:IN[,IN...][:OUT] (repeatable)"
    )
    p.add_argument("--control", help="the auto-scaling master's control topic")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    p.add_argument("--token", help="require this token on every request ('auto': random)")
    p.add_argument("--max-fps", type=float, default=15.0, help="frames/s sent to each browser")
    p.set_defaults(func=_run)
