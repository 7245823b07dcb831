"""A single-node Apache Kafka (KRaft) broker assembled from Maven Central jars, for tests and demos.

The jars are gathered once with Maven into a cache directory; each broker gets its own data
directory, fixed ports on 127.0.0.1, a small heap and only the quick JIT compiler (C1). A broker
started through :class:`LocalKafka` never outlives its owner: the JVM is killed by the kernel
when the thread that spawned it exits (``PR_SET_PDEATHSIG``, Linux) and by an ``atexit`` handler
on a normal interpreter exit.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "INSTALL_HINT",
    "BrokerError",
    "BrokerUnavailable",
    "LocalKafka",
    "cache_root",
    "pid_alive",
    "resolve_jars",
    "stop_all",
    "terminate_pid",
]

logger = logging.getLogger(__name__)

#: Kafka release used when none is given; keep equal to ``kafka.version`` in pom.xml.
DEFAULT_KAFKA_VERSION = "4.3.1"

INSTALL_HINT = (
    "install a Java runtime (17 or newer) and Maven, "
    "e.g. on Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven"
)

_POM = Path(__file__).with_name("pom.xml")
_HOST = "127.0.0.1"
# Admin clients that poll a starting broker log only errors, not every refused connection.
_QUIET = {"log_level": 3}
_META_FILE = "local-kafka.json"
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The local broker could not be prepared, started or stopped."""


class BrokerUnavailable(BrokerError):
    """A tool the local broker needs (``java``, ``mvn``) is not installed."""


def cache_root() -> Path:
    """Directory holding FogVerse's caches: ``$FOGVERSE_CACHE_DIR`` or ``~/.cache/fogverse``."""
    override = os.environ.get("FOGVERSE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fogverse"


def _jar_dir_complete(path: Path, version: str) -> bool:
    return (path / f"kafka_2.13-{version}.jar").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def resolve_jars(
    version: str = DEFAULT_KAFKA_VERSION,
    *,
    root: Path | None = None,
    timeout: float = 900.0,
) -> Path:
    """Return a directory holding every runtime jar of Kafka ``version``, gathering it if needed.

    Maven resolves into a private temporary directory which is then renamed into place, so the
    cache directory either exists complete or not at all; a file lock makes concurrent callers
    (other processes included) wait for one resolution instead of racing.
    """
    root = cache_root() if root is None else root
    final = root / f"kafka-{version}"
    if _jar_dir_complete(final, version):
        return final
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(
            f"Maven (mvn) is needed once to download Kafka's jars; {INSTALL_HINT}"
        )
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".kafka-{version}.lock"):
        if _jar_dir_complete(final, version):
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".kafka-{version}.", dir=root))
        try:
            # Maven may write next to the POM; work on a copy so the installed package stays
            # untouched (it can be read-only).
            pom = staging / "pom.xml"
            shutil.copyfile(_POM, pom)
            jars = staging / "jars"
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={jars}",
            ]
            logger.info("Gathering Apache Kafka %s jars with Maven into %s", version, final)
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=staging,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(f"Maven did not finish within {timeout:.0f} s") from exc
            output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
            if proc.returncode != 0 or not _jar_dir_complete(jars, version):
                raise BrokerError(
                    f"Maven could not gather Kafka {version} (exit code {proc.returncode}); "
                    f"is Maven Central reachable?\n{output[-4000:]}"
                )
            os.rename(jars, final)
            logger.info(
                "Gathered %d jars in %.1f s",
                sum(1 for _ in final.glob("*.jar")),
                time.monotonic() - started,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _find_java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def _free_ports(count: int) -> list[int]:
    # Keep every socket open until all are bound so the ports are distinct.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((_HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _saved_ports(data_dir: Path) -> tuple[int, int] | None:
    """The client and controller ports a formatted data directory was created with: the KRaft
    voter set records the controller endpoint at format time, so it starts only on those."""
    meta = data_dir / _META_FILE
    if not (meta.exists() and (data_dir / "logs" / "meta.properties").exists()):
        return None
    saved = json.loads(meta.read_text())
    return int(saved["port"]), int(saved["controller_port"])


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not sys.platform.startswith("linux")
    # The command name in parentheses may itself contain spaces or parentheses.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def terminate_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a process that is not our child: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise BrokerError(f"process {pid} did not exit after SIGKILL")


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when the spawning thread exits."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork() and prctl(); then nobody would kill us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


_live: set[LocalKafka] = set()
_live_lock = threading.Lock()


def stop_all() -> int:
    """Stop every :class:`LocalKafka` of this process still holding a JVM or a temporary dir."""
    with _live_lock:
        brokers = list(_live)
    for broker in brokers:
        try:
            broker.stop()
        except Exception:
            logger.exception("Could not stop %r", broker)
    return len(brokers)


atexit.register(stop_all)


class LocalKafka:
    """One combined broker/controller Kafka node on 127.0.0.1.

    ``port``/``controller_port`` default to free ports picked at the first :meth:`start` and kept
    for the object's life, so :meth:`restart` brings the broker back at the same address with the
    same data. ``data_dir`` defaults to a temporary directory removed by :meth:`stop`; a directory
    you pass is kept, and a later broker on it reuses its ports and data.

    The JVM is killed by the kernel when the *thread* that called :meth:`start` (or
    :meth:`restart`) exits, not only when the process does: start it from a thread that lives as
    long as the broker should (normally the main thread). ``detached=True`` disables this and
    the ``atexit`` stop, for brokers that must outlive this process (the ``fogverse broker``
    command).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        version: str = DEFAULT_KAFKA_VERSION,
        heap: str = "256m",
        properties: Mapping[str, Any] | None = None,
        log_level: str = "INFO",
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        cache_dir: str | os.PathLike[str] | None = None,
        detached: bool = False,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.version = version
        self.heap = heap
        self.properties = dict(properties or {})
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached
        # A node of a cluster (see fogverse.broker.cluster): its id, the static controller
        # quorum (``id@host:port,...``) and the cluster id every node is formatted with.
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id
        self._cache_root = Path(cache_dir) if cache_dir is not None else None
        self._user_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._data_dir: Path | None = self._user_data_dir
        self._port = port
        self._controller_port = controller_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._lock = threading.RLock()

    # -- addresses and paths -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` of the PLAINTEXT listener (known once started)."""
        if self._port is None:
            raise BrokerError("the broker has not been started yet; its port is not chosen")
        return f"{_HOST}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def controller_port(self) -> int | None:
        return self._controller_port

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def owns_data_dir(self) -> bool:
        """True when the data directory is a temporary one this object created."""
        return self._data_dir is not None and self._data_dir != self._user_data_dir

    @property
    def log_path(self) -> Path | None:
        """The broker's log4j log file."""
        return None if self._data_dir is None else self._data_dir / "broker.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<LocalKafka {self.version} port={self._port} pid={self.pid} {state}>"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> LocalKafka:
        """Start the broker and return once it answers metadata requests (no-op if running).

        ``wait=False`` returns once the JVM is spawned: the nodes of a cluster can serve only
        once a quorum of them runs, so they are all spawned first, then :meth:`wait_ready`."""
        with self._lock:
            if self.is_running():
                return self
            self._terminate(0)  # reap a JVM that died on its own
            java = _find_java()
            root = self._cache_root if self._cache_root is not None else cache_root()
            cached = _jar_dir_complete(root / f"kafka-{self.version}", self.version)
            missing = [] if java else ["java"]
            if not cached and shutil.which("mvn") is None:
                missing.append("mvn")
            if missing:
                raise BrokerUnavailable(
                    f"{' and '.join(missing)} not found on PATH; the local Kafka broker needs "
                    f"them: {INSTALL_HINT}"
                )
            assert java is not None
            jars = resolve_jars(self.version, root=root)
            if not self.detached:
                with _live_lock:
                    _live.add(self)
            try:
                self._start_locked(java, jars, wait)
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self, timeout: float | None = None, *, keep_data: bool = False) -> None:
        """Stop the broker: SIGTERM, SIGKILL after ``timeout`` s (``0``: kill at once).

        A temporary data directory is removed unless ``keep_data``; a following :meth:`start`
        then begins with an empty cluster on the same ports.
        """
        with self._lock:
            self._terminate(self.stop_timeout if timeout is None else timeout)
            if keep_data:
                if not self.owns_data_dir:
                    # Nothing of ours is left to clean up at exit (a cluster's nodes).
                    with _live_lock:
                        _live.discard(self)
                return
            if self.owns_data_dir and self._data_dir is not None:
                shutil.rmtree(self._data_dir, ignore_errors=True)
                self._data_dir = None
            with _live_lock:
                _live.discard(self)

    def wait_ready(self) -> None:
        """Wait (``start_timeout``) until a broker spawned by ``start(wait=False)`` serves."""
        with self._lock:
            try:
                self._wait_ready(time.monotonic() + self.start_timeout)
            except BaseException:
                self.stop(0, keep_data=True)
                raise

    def restart(self, *, kill: bool = False) -> LocalKafka:
        """Stop and start again on the same ports with the same data.

        ``kill=True`` uses SIGKILL to simulate a crash instead of a controlled shutdown. The
        restarted broker then waits for its previous registration to expire
        (``broker.session.timeout.ms``, 9 s by default; pass a smaller value in ``properties``
        to make crash restarts quicker).
        """
        with self._lock:
            self.stop(0 if kill else None, keep_data=True)
            return self.start()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------

    def _start_locked(self, java: str, jars: Path, wait: bool = True) -> None:
        started = time.monotonic()
        data_dir = self._prepare_data_dir()
        fresh = not (data_dir / "logs" / "meta.properties").exists()
        # Ports we chose ourselves may be taken by someone else before the JVM binds them;
        # a fresh cluster can simply try other ones.
        retry_ports = fresh and self._port is None and self._controller_port is None
        # A port something already serves (another broker, or one on this data directory) would
        # answer our readiness checks in place of our JVM, which cannot bind it.
        for port in (self._port, self._controller_port):
            if port is not None and _port_open(port):
                raise BrokerError(f"port {port} on {_HOST} is already in use (data {data_dir})")
        for attempt in range(3 if retry_ports else 1):
            if self._port is None or self._controller_port is None:
                ports = _free_ports(2)
                self._port = self._port or ports[0]
                self._controller_port = self._controller_port or ports[1]
            self._write_config(data_dir)
            if not (data_dir / "logs" / "meta.properties").exists():
                self._format(java, jars, data_dir)
            self._spawn(java, jars, data_dir)
            if not wait:
                return
            try:
                self._wait_ready(time.monotonic() + self.start_timeout)
            except BrokerError as exc:
                self._terminate(0)
                if attempt < 2 and retry_ports and "Address already in use" in str(exc):
                    logger.info(
                        "Port %s or %s was taken; retrying", self._port, self._controller_port
                    )
                    shutil.rmtree(data_dir / "logs", ignore_errors=True)
                    self._port = self._controller_port = None
                    continue
                raise
            break
        logger.info(
            "Kafka %s serving at %s (pid %s, data %s) after %.1f s",
            self.version,
            self.bootstrap,
            self.pid,
            data_dir,
            time.monotonic() - started,
        )

    def _prepare_data_dir(self) -> Path:
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="fogverse-kafka-")).resolve()
        data_dir = self._data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        saved = _saved_ports(data_dir)
        if saved is not None:
            for attr, key, port in zip(
                ("_port", "_controller_port"), ("port", "controller_port"), saved, strict=True
            ):
                current = getattr(self, attr)
                if current is None:
                    setattr(self, attr, port)
                elif current != port:
                    raise BrokerError(f"{data_dir} was created with {key}={port}, not {current}")
        return data_dir

    def _config(self, data_dir: Path) -> dict[str, Any]:
        port, cport = self._port, self._controller_port
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
            "controller.listener.names": "CONTROLLER",
            **(
                {"controller.quorum.voters": self.voters}
                if self.voters
                else {"controller.quorum.bootstrap.servers": f"{_HOST}:{cport}"}
            ),
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data_dir / "logs"),
            # The internal topics default to RF 3 / min ISR 2, which one node cannot satisfy.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "default.replication.factor": 1,
            "group.initial.rebalance.delay.ms": 0,
            # The cleaner's default 128 MiB buffer would not fit the small heap.
            "log.cleaner.dedupe.buffer.size": 2097152,
            "auto.create.topics.enable": "true",
        }
        props.update(self.properties)
        return props

    def _write_config(self, data_dir: Path) -> None:
        props = self._config(data_dir)
        text = "".join(f"{k}={_prop_value(v)}\n" for k, v in props.items())
        (data_dir / "server.properties").write_text(text)
        (data_dir / "log4j2.properties").write_text(
            _LOG4J2_TEMPLATE.format(log=data_dir / "broker.log", level=self.log_level.upper())
        )
        (data_dir / _META_FILE).write_text(
            json.dumps(
                {
                    "port": self._port,
                    "controller_port": self._controller_port,
                    "version": self.version,
                }
            )
        )

    def _jvm_args(self, data_dir: Path) -> list[str]:
        return [
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+ExitOnOutOfMemoryError",
            # The quick compiler only. A broker that lives minutes to hours on the machine its
            # clients run on spent more CPU in C2's compiler threads than on its own work (>= 13.0
            # against 22.6 s in its first 70 s of traffic, still 0.1-0.2 ms per 720p frame
            # after a minute) and its requests cost it no less for it (C1 only: 0.9 s
            # compiling, 23.4 s working): benchmarks/README.md, "The broker's compiler".
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={data_dir}",
        ]

    def _format(self, java: str, jars: Path, data_dir: Path) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        cmd = [
            java,
            *self._jvm_args(data_dir),
            "-cp",
            f"{jars}/*",
            "kafka.tools.StorageTool",
            "format",
            # A static quorum (controller.quorum.voters) is formatted as it is; one node
            # alone bootstraps a dynamic quorum of itself.
            *(() if self.voters else ("--standalone",)),
            # One id in 64 starts with "-": as a separate argument it would read as an option.
            f"--cluster-id={cluster_id}",
            "-c",
            str(data_dir / "server.properties"),
        ]
        proc = subprocess.run(
            cmd, cwd=data_dir, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
        )
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        if proc.returncode != 0:
            raise BrokerError(f"formatting {data_dir} failed (exit {proc.returncode}):\n{output}")
        logger.debug("Formatted %s as cluster %s", data_dir, cluster_id)

    def _spawn(self, java: str, jars: Path, data_dir: Path) -> None:
        cmd = [
            java,
            *self._jvm_args(data_dir),
            "-cp",
            f"{jars}/*",
            "kafka.Kafka",
            str(data_dir / "server.properties"),
        ]
        self._out = open(data_dir / "jvm.out", "ab")  # noqa: SIM115 - lives as long as the JVM
        self._proc = subprocess.Popen(
            cmd,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.detached else _die_with_parent(),
            start_new_session=self.detached,
        )
        logger.debug("Spawned Kafka JVM pid %s", self._proc.pid)

    def _failure_details(self) -> str:
        assert self._data_dir is not None
        out = _tail(self._data_dir / "jvm.out", 2000).strip()
        log = _tail(self._data_dir / "broker.log", 64_000)
        # The cause is logged first; the tail is mostly the orderly shutdown that follows it.
        errors = [
            line
            for line in log.splitlines()
            if " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")
        ][:12]
        return (
            f"\n--- jvm.out (tail) ---\n{out}"
            f"\n--- broker.log errors ---\n" + "\n".join(errors) + "\n"
            f"--- broker.log (tail) ---\n{log[-1500:].strip()}"
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self._port is not None
        # With a fixed port, Kafka opens its listener only once it can serve requests.
        while not _port_open(self._port):
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"Kafka exited with code {code} while starting{self._failure_details()}"
                )
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"Kafka did not open port {self._port} within {self.start_timeout:.0f} s"
                    f"{self._failure_details()}"
                )
            time.sleep(0.05)
        from fogverse.admin import admin_client

        admin = admin_client(self.bootstrap, _QUIET)
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    metadata = admin.list_topics(timeout=max(0.5, min(5.0, remaining)))
                    # Only our cluster counts: another broker may have taken the port first.
                    # (Unknown when the user moved log.dirs: then any answer does, as before.)
                    ours = self._disk_cluster_id()
                    if metadata.brokers and ours in (None, metadata.cluster_id):
                        return
                except Exception as exc:
                    logger.debug("Broker not answering metadata yet: %s", exc)
                code = self._proc.poll()
                if code is not None or remaining <= 0:
                    what = "did not answer" if code is None else f"exited ({code}) before answering"
                    raise BrokerError(
                        f"Kafka at {self.bootstrap} {what} metadata requests"
                        f"{self._failure_details()}"
                    )
        finally:
            del admin

    def _disk_cluster_id(self) -> str | None:
        assert self._data_dir is not None
        with contextlib.suppress(OSError):
            for line in (self._data_dir / "logs" / "meta.properties").read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.partition("=")[2].strip()
        return None

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                started = time.monotonic()
                if timeout > 0:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        logger.warning("Kafka pid %s ignored SIGTERM for %.0f s", proc.pid, timeout)
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                logger.info("Kafka pid %s stopped in %.1f s", proc.pid, time.monotonic() - started)
            else:
                proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _prop_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Broker logs go to a file in the data directory, never to our stdout. The request, partition
# state and configuration-dump loggers are the chatty ones; the root level is configurable.
_LOG4J2_TEMPLATE = """\
status = warn
name = fogverse-local-kafka
shutdownHook = disable
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
"""
