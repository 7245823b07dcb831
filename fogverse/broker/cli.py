"""``fogverse broker start|stop|status``: a detached local Kafka broker for demos and benchmarks.

``start --brokers 3`` starts a replicated cluster instead (see :mod:`fogverse.broker.cluster`):
the bootstrap address then lists every node.

``run`` starts one in the foreground instead and stops it on SIGTERM or SIGINT: the command of a
broker container, or of any supervisor that keeps its own processes.

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
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fogverse.broker.cluster import CLUSTER_HEAP, LocalKafkaCluster
from fogverse.broker.launcher import (
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    LocalKafka,
    cache_root,
    pid_alive,
    terminate_pid,
)
from fogverse.cli import exit_on_signal, positive_int

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
    start.add_argument(
        "--brokers",
        type=positive_int,
        default=1,
        help="nodes: 3 gives a replicated cluster (default: 1)",
    )
    start.add_argument(
        "--heap", help=f"JVM heap per node, e.g. 512m (default: 256m, {CLUSTER_HEAP} in a cluster)"
    )
    start.add_argument("--version", default=DEFAULT_KAFKA_VERSION, help="Apache Kafka version")
    start.add_argument("--timeout", type=float, default=120.0, help="start-up deadline, seconds")
    start.set_defaults(func=_start)

    run = sub.add_parser("run", help="run a broker in the foreground until SIGTERM/SIGINT")
    run.add_argument("--port", type=int, help="client port (default: a free one)")
    run.add_argument("--controller-port", type=int, help="KRaft controller port")
    run.add_argument("--data-dir", type=Path, help="keep the data here (default: temporary)")
    run.add_argument("--heap", default="256m", help="JVM heap, e.g. 512m (default: 256m)")
    run.add_argument("--version", default=DEFAULT_KAFKA_VERSION, help="Apache Kafka version")
    run.add_argument("--timeout", type=float, default=120.0, help="start-up deadline, seconds")
    run.set_defaults(func=_run)

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


def _nodes(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded JVMs: a cluster's nodes, or the one broker."""
    return state.get("nodes") or [state]


def _alive(state: dict[str, Any]) -> bool:
    """Whether any recorded JVM still runs."""
    return any(_node_alive(node) for node in _nodes(state))


def _node_alive(state: dict[str, Any]) -> bool:
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
        shutil.rmtree(state.get("cluster_dir") or state["data_dir"], ignore_errors=True)
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit: a detached JVM is stopped unless it was recorded."""
    previous = {sig: signal.signal(sig, exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _start(args: argparse.Namespace) -> int:
    with _signals_raise(), _locked_state() as path:
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
        if args.brokers > 1:
            return _start_cluster(args, path)
        broker = LocalKafka(
            port=args.port,
            controller_port=args.controller_port,
            data_dir=args.data_dir,
            version=args.version,
            heap=args.heap or "256m",
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
        _record(path, state, broker)
        logger.info("Broker %s (pid %s), log %s", broker.bootstrap, broker.pid, broker.log_path)
        sys.stdout.write(f"{broker.bootstrap}\n")
        return 0


def _record(path: Path, state: dict[str, Any], started: LocalKafka | LocalKafkaCluster) -> None:
    """Write ``state``; what could not be recorded is stopped, as nothing would know to."""
    try:
        _write(path, state)
    except BaseException:
        started.stop(0)
        raise


def _run(args: argparse.Namespace) -> int:
    broker = LocalKafka(
        port=args.port,
        controller_port=args.controller_port,
        data_dir=args.data_dir,
        version=args.version,
        heap=args.heap,
        start_timeout=args.timeout,
    )
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        broker.start()
    except BrokerError as exc:
        logger.error("%s", exc)
        return 1
    try:
        logger.info("Broker %s (pid %s), log %s", broker.bootstrap, broker.pid, broker.log_path)
        sys.stdout.write(f"{broker.bootstrap}\n")
        sys.stdout.flush()
        while not stopping.wait(1.0):
            if not broker.is_running():
                logger.error("the broker exited on its own; log: %s", broker.log_path)
                return 1
        return 0
    finally:
        broker.stop()


def _start_cluster(args: argparse.Namespace, path: Path) -> int:
    if args.port or args.controller_port:
        logger.error("--port and --controller-port name one broker; a cluster picks free ports")
        return 2
    cluster = LocalKafkaCluster(
        args.brokers,
        data_dir=args.data_dir,
        version=args.version,
        heap=args.heap or CLUSTER_HEAP,
        start_timeout=args.timeout,
        detached=True,
    )
    try:
        cluster.start()
    except BrokerError as exc:
        logger.error("%s", exc)
        return 1
    assert cluster.data_dir is not None
    nodes = [
        {
            "pid": node.pid,
            "bootstrap": node.bootstrap,
            "port": node.port,
            "controller_port": node.controller_port,
            "data_dir": str(node.data_dir),
            "log": str(node.log_path),
        }
        for node in cluster.nodes
    ]
    state = {
        **nodes[0],
        "bootstrap": cluster.bootstrap,
        "nodes": nodes,
        "cluster_dir": str(cluster.data_dir),
        "owns_data_dir": cluster.owns_data_dir,
        "version": cluster.version,
        "started_at": time.time(),
    }
    _record(path, state, cluster)
    logger.info("Cluster of %d at %s, data %s", args.brokers, cluster.bootstrap, cluster.data_dir)
    sys.stdout.write(f"{cluster.bootstrap}\n")
    return 0


def _write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _stop(args: argparse.Namespace) -> int:
    with _locked_state() as path:
        state = _read(path)
        if state is None:
            logger.info("No broker recorded in %s", path)
            return 0
        if _alive(state):
            try:
                for node in _nodes(state):
                    if _node_alive(node):
                        terminate_pid(int(node["pid"]), timeout=args.timeout)
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
            nodes = _nodes(state)
            pids = ",".join(str(n["pid"]) if _node_alive(n) else "down" for n in nodes)
            data = state.get("cluster_dir") or state["data_dir"]
            sys.stdout.write(f"running {state['bootstrap']} pid={pids} data={data}\n")
            return 0
        sys.stdout.write("stopped\n")
        return EXIT_NOT_RUNNING
