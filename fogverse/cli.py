"""The ``fogverse`` command: ``run``, ``broker``, ``master``, ``view``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

__all__ = ["exit_on_signal", "main", "positive_int"]


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1 (else a usage error, status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fogverse", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each feature registers its own sub-command so that this file stays a table of contents.
    from fogverse.autoscale.cli import register as register_master
    from fogverse.broker.cli import register as register_broker
    from fogverse.runner_cli import register as register_run
    from fogverse.view.cli import register as register_view

    register_run(sub)
    register_broker(sub)
    register_master(sub)
    register_view(sub)
    return parser


def exit_on_signal(signum: int, frame: object) -> None:
    """A signal handler that ends the command with status 128 + the signal's number."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    # As a container's PID 1 the process ignores a SIGTERM it has no handler for, and a stop
    # while the target's imports run (cv2, onnxruntime: seconds) would wait for the grace
    # period's SIGKILL. Nothing has been read yet then: end at once. A node's own handler
    # (drain, commit) replaces this one when it starts.
    signal.signal(signal.SIGTERM, exit_on_signal)
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
