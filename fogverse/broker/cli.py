"""``fogverse broker start|stop|status``: a detached local Kafka broker for demos and benchmarks.

``start`` writes the bootstrap address to stdout, so ``export FOGVERSE_BOOTSTRAP=$(fogverse broker
start)`` works. The broker's pid, ports and data directory are kept in ``broker.json`` under
``$FOGVERSE_STATE_DIR`` (default: the FogVerse cache directory, ``~/.cache/fogverse``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fogverse.broker.launcher import (
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    LocalKafka,
    cache_root,
    pid_alive,
    terminate_pid,
)

__all__ = ["register", "state_dir"]

logger = logging.getLogger(__name__)

#: ``status`` exit code when no broker runs (the LSB convention for "program is not running").
EXIT_NOT_RUNNING = 3


def state_dir() -> Path:
    """Where the CLI records its broker: ``$FOGVERSE_STATE_DIR`` or the FogVerse cache dir."""
    override = os.environ.get("FOGVERSE_STATE_DIR")
    return Path(override).expanduser() if override else cache_root()


def register(subparsers: Any) -> None:
    """Add the ``broker`` command to the ``fogverse`` parser's sub-commands."""
    parser = subparsers.add_parser(
        "broker",
        help="run a local single-node Kafka broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="broker_command", required=True)

    start = sub.add_parser("start", help="start a detached broker and print its bootstrap address")
    start.add_argument("--port", type=int, help="client port (default: a free one)")
    start.add_argument("--controller-port", type=int, help="KRaft controller port")
    start.add_argument("--data-dir", type=Path, help="keep the data here (default: temporary)")
    start.add_argument("--heap", default="256m", help="JVM heap, e.g. 512m (default: %(default)s)")
    start.add_argument("--version", default=DEFAULT_KAFKA_VERSION, help="Apache Kafka version")
    start.add_argument("--timeout", type=float, default=120.0, help="start-up deadline, seconds")
    start.set_defaults(func=_start)

    stop = sub.add_parser("stop", help="stop the broker started by `fogverse broker start`")
    stop.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGKILL")
    stop.set_defaults(func=_stop)

    status = sub.add_parser("status", help="report whether the broker runs (exit 3 if not)")
    status.set_defaults(func=_status)


@contextlib.contextmanager
def _locked_state() -> Iterator[Path]:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # Serialises concurrent start/stop commands on the same state file.
    with open(directory / "broker.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield directory / "broker.json"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable broker state %s: %s", path, exc)
        return None


def _alive(state: dict[str, Any]) -> bool:
    pid = int(state["pid"])
    if not pid_alive(pid):
        return False
    # Guard against pid reuse: the process must still be the JVM on our data directory.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    props = os.fsencode(os.path.join(state["data_dir"], "server.properties"))
    return b"kafka.Kafka" in cmdline and props in cmdline


def _forget(path: Path, state: dict[str, Any]) -> None:
    if state.get("owns_data_dir"):
        shutil.rmtree(state["data_dir"], ignore_errors=True)
    path.unlink(missing_ok=True)


def _start(args: argparse.Namespace) -> int:
    with _locked_state() as path:
        state = _read(path)
        if state is not None:
            if _alive(state):
                logger.info(
                    "A broker already runs at %s (pid %s)", state["bootstrap"], state["pid"]
                )
                sys.stdout.write(f"{state['bootstrap']}\n")
                return 0
            logger.info("Removing the record of a broker that is gone (pid %s)", state["pid"])
            _forget(path, state)
        broker = LocalKafka(
            port=args.port,
            controller_port=args.controller_port,
            data_dir=args.data_dir,
            version=args.version,
            heap=args.heap,
            start_timeout=args.timeout,
            detached=True,
        )
        try:
            broker.start()
        except BrokerError as exc:
            logger.error("%s", exc)
            return 1
        assert broker.data_dir is not None
        state = {
            "pid": broker.pid,
            "bootstrap": broker.bootstrap,
            "port": broker.port,
            "controller_port": broker.controller_port,
            "data_dir": str(broker.data_dir),
            "owns_data_dir": broker.owns_data_dir,
            "log": str(broker.log_path),
            "version": broker.version,
            "started_at": time.time(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)
        logger.info("Broker %s (pid %s), log %s", broker.bootstrap, broker.pid, broker.log_path)
        sys.stdout.write(f"{broker.bootstrap}\n")
        return 0


def _stop(args: argparse.Namespace) -> int:
    with _locked_state() as path:
        state = _read(path)
        if state is None:
            logger.info("No broker recorded in %s", path)
            return 0
        if _alive(state):
            try:
                terminate_pid(int(state["pid"]), timeout=args.timeout)
            except BrokerError as exc:
                logger.error("%s", exc)
                return 1
            logger.info("Stopped the broker at %s (pid %s)", state["bootstrap"], state["pid"])
        _forget(path, state)
        sys.stdout.write("stopped\n")
        return 0


def _status(args: argparse.Namespace) -> int:
    with _locked_state() as path:
        state = _read(path)
        if state is not None and _alive(state):
            sys.stdout.write(
                f"running {state['bootstrap']} pid={state['pid']} data={state['data_dir']}\n"
            )
            return 0
        sys.stdout.write("stopped\n")
        return EXIT_NOT_RUNNING
