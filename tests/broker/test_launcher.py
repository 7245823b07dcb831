"""The local Kafka launcher, its CLI and the shared Kafka fixtures, against real brokers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest
from polling import wait_until

from fogverse.broker import (
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    BrokerUnavailable,
    LocalKafka,
    pid_alive,
    resolve_jars,
)

POM = Path(__file__).resolve().parents[2] / "fogverse" / "broker" / "pom.xml"
HINT = "apt-get install openjdk-17-jre-headless maven"
needs_tools = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None, reason="needs java and mvn"
)


def _kill_jvms_under(path: Path) -> None:
    """Last-resort cleanup: SIGKILL any Kafka JVM whose command line mentions ``path``."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "kafka.Kafka" in cmdline and any(str(path) in arg for arg in cmdline):
            proc.kill()


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def test_default_version_matches_pom() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text == DEFAULT_KAFKA_VERSION


def test_missing_java_and_maven_are_named_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    cache = tmp_path / "cache"

    with pytest.raises(BrokerUnavailable) as both:
        LocalKafka(cache_dir=cache).start()
    assert "java and mvn" in str(both.value) and HINT in str(both.value)

    with pytest.raises(BrokerUnavailable) as mvn:
        resolve_jars(root=cache)
    assert "Maven" in str(mvn.value) and HINT in str(mvn.value)

    # With the jars cached, Maven is not needed and only java is reported.
    (cache / f"kafka-{DEFAULT_KAFKA_VERSION}").mkdir(parents=True)
    (cache / f"kafka-{DEFAULT_KAFKA_VERSION}" / f"kafka_2.13-{DEFAULT_KAFKA_VERSION}.jar").touch()
    with pytest.raises(BrokerUnavailable) as java:
        LocalKafka(cache_dir=cache).start()
    assert str(java.value).startswith("java not found")


def test_cli_start_without_java_fails_cleanly(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "JAVA_HOME"},
        "PATH": str(tmp_path),
        "FOGVERSE_STATE_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "fogverse", "broker", "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert HINT in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "state" / "broker.json").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count", ["0", "-3", "two"])
def test_cli_start_refuses_a_broker_count_below_one(tmp_path: Path, count: str) -> None:
    # It used to start a single broker for any count below 2.
    env = {**os.environ, "FOGVERSE_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "fogverse", "broker", "start", "--brokers", count],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "argument --brokers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "broker.json").exists()


_RESOLVE = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from fogverse.broker import resolve_jars
print(resolve_jars(root=Path(sys.argv[1])))
"""


@needs_tools
def test_concurrent_resolution_gathers_once_into_place(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RESOLVE, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=100) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    final = tmp_path / f"kafka-{DEFAULT_KAFKA_VERSION}"
    assert {out.strip() for out, _ in outputs} == {str(final)}
    assert sum(err.count("Gathering Apache Kafka") for _, err in outputs) == 1
    jars = {p.name for p in final.glob("*.jar")}
    assert f"kafka_2.13-{DEFAULT_KAFKA_VERSION}.jar" in jars
    assert any(name.startswith("log4j-slf4j-impl-") for name in jars)
    # Only the finished directory and the lock remain: no half-resolved staging directories.
    assert {p.name for p in tmp_path.iterdir()} == {final.name, f".{final.name}.lock"}


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(400)  # three broker starts: 107 s at load average 47
def test_start_restart_and_stop_keep_address_and_data() -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    # A short broker session lets the crash restart re-register quickly.
    broker = LocalKafka(
        properties={"broker.session.timeout.ms": 2000, "broker.heartbeat.interval.ms": 500}
    )
    with broker:
        bootstrap, data_dir, pids = broker.bootstrap, broker.data_dir, [broker.pid]
        assert broker.is_running() and bootstrap.startswith("127.0.0.1:")
        assert data_dir is not None and broker.owns_data_dir
        assert broker.log_path is not None and broker.log_path.stat().st_size > 0

        topic = f"lifecycle-{uuid.uuid4().hex[:8]}"
        admin = _admin(bootstrap)  # must outlive its futures
        admin.create_topics([NewTopic(topic, 1)])[topic].result(timeout=30)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, b"survives restarts")
        assert producer.flush(30) == 0
        del producer

        for kill in (False, True):
            broker.restart(kill=kill)
            assert broker.bootstrap == bootstrap and broker.data_dir == data_dir
            assert broker.is_running() and broker.pid not in pids
            assert not pid_alive(pids[-1])
            pids.append(broker.pid)

        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False}
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + 30
            message = None
            while message is None and time.monotonic() < deadline:
                message = consumer.poll(1.0)
            assert message is not None and message.error() is None
            assert message.value() == b"survives restarts"
        finally:
            consumer.close()

    assert not broker.is_running()
    assert not data_dir.exists()
    assert all(not pid_alive(pid) for pid in pids)


@needs_tools
@pytest.mark.kafka
def test_early_jvm_exit_raises_with_the_log_cause(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        broker = LocalKafka(port=taken.getsockname()[1])
        with pytest.raises(BrokerError, match="Address already in use"):
            broker.start()
    assert not broker.is_running()
    assert broker.data_dir is None  # the temporary data directory is removed again


_OWNER = """
import sys
from fogverse.broker import LocalKafka
# An orderly shutdown may take a loaded machine well over the default 5 s before SIGKILL.
broker = LocalKafka(data_dir=sys.argv[1], stop_timeout=90)
broker.start()
print(broker.pid, flush=True)
if sys.argv[2] == "wait":
    sys.stdin.read()
"""


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ending", ["sigkill", "exit"])
def test_jvm_does_not_outlive_its_owner(tmp_path: Path, ending: str) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _OWNER,
            str(tmp_path / "data"),
            "wait" if ending == "sigkill" else "",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    jvm = None
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line.strip().isdigit(), "the owner process failed to start a broker"
        jvm = int(line)
        if ending == "sigkill":
            assert pid_alive(jvm)
            owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=120)
        wait_until(
            lambda: not pid_alive(jvm),
            60,
            "the Kafka JVM to exit with the process that started it",
            interval=0.05,
        )
        if ending == "exit":
            # A normal exit stops the broker in an orderly way (atexit), not by the kernel's kill.
            log = (tmp_path / "data" / "broker.log").read_text()
            assert "shut down completed (kafka.server.BrokerServer)" in log
    finally:
        owner.kill()
        owner.wait()
        if jvm is not None and pid_alive(jvm):
            os.kill(jvm, signal.SIGKILL)
        _kill_jvms_under(tmp_path)


@needs_tools
@pytest.mark.kafka
def test_cli_start_status_stop(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    # TMPDIR puts the broker's temporary data directory under tmp_path, where cleanup finds it.
    env = {**os.environ, "FOGVERSE_STATE_DIR": str(state_dir), "TMPDIR": str(tmp_path)}

    def broker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fogverse", "broker", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
        )

    pid = None
    try:
        started = broker("start")
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap.startswith("127.0.0.1:")
        state = json.loads((state_dir / "broker.json").read_text())
        pid, data_dir = state["pid"], Path(state["data_dir"])
        assert state["bootstrap"] == bootstrap and data_dir.is_relative_to(tmp_path)
        assert pid_alive(pid), "the broker must outlive the `start` command"

        again = broker("start")
        assert again.returncode == 0 and again.stdout.strip() == bootstrap
        assert "already runs" in again.stderr
        assert json.loads((state_dir / "broker.json").read_text())["pid"] == pid

        status = broker("status")
        assert status.returncode == 0 and status.stdout.startswith(f"running {bootstrap}")
        assert _admin(bootstrap).list_topics(timeout=10).brokers

        stopped = broker("stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: not pid_alive(pid), 20, "the stopped broker to exit", interval=0.05)
        assert not data_dir.exists()
        assert not (state_dir / "broker.json").exists()

        after = broker("status")
        assert after.returncode == 3 and after.stdout.strip() == "stopped"
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        _kill_jvms_under(tmp_path)


@needs_tools
@pytest.mark.kafka
def test_cli_run_serves_in_the_foreground_until_sigterm(tmp_path: Path) -> None:
    """``fogverse broker run``: a container's broker; SIGTERM stops the JVM and exits 0."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogverse", "broker", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        bootstrap = proc.stdout.readline().strip()  # blocks until the broker answers
        assert bootstrap.startswith("127.0.0.1:"), bootstrap
        assert _admin(bootstrap).list_topics(timeout=10).brokers
        jvms = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert jvms
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_until(lambda: not any(pid_alive(p) for p in jvms), 20, "the JVM to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_jvms_under(tmp_path)


def test_session_fixtures_share_one_broker(kafka_bootstrap: str, kafka_admin) -> None:
    metadata = kafka_admin.list_topics(timeout=10)
    assert metadata.brokers
    if not os.environ.get("FOGVERSE_BOOTSTRAP"):
        assert kafka_bootstrap.startswith("127.0.0.1:")


def test_local_kafka_fixture_is_the_session_broker(
    local_kafka: LocalKafka, kafka_bootstrap
) -> None:
    assert local_kafka.is_running() and local_kafka.bootstrap == kafka_bootstrap


def test_the_broker_jvm_runs_only_the_quick_compiler(local_kafka: LocalKafka) -> None:
    """A local broker shares its machine with the clients it serves: C2's compiler threads
    cost it more CPU than its own work for minutes (benchmarks/README.md), so it has none."""
    assert local_kafka.pid is not None
    names = set()
    for task in Path(f"/proc/{local_kafka.pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:  # the JVM ends idle compiler threads as it goes
            continue
    compilers = sorted(n for n in names if "CompilerThre" in n)
    assert compilers, f"no JIT compiler thread found among {sorted(names)}"
    assert all(n.startswith("C1 ") for n in compilers), compilers


def test_new_topic_is_unique_and_ready(new_topic, kafka_admin) -> None:
    from confluent_kafka.admin import ConfigResource

    name = new_topic(partitions=3, prefix="fixture", config={"retention.ms": "60000"})
    other = new_topic()
    assert name != other and name.startswith("fixture-") and other.startswith("t-")
    partitions = kafka_admin.list_topics(topic=name, timeout=10).topics[name].partitions
    assert len(partitions) == 3 and all(p.leader >= 0 for p in partitions.values())
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = kafka_admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["retention.ms"].value == "60000"


def test_single_node_groups_and_transactions_work(kafka_bootstrap: str, new_topic) -> None:
    """The internal topics (offsets, transaction state) are usable on one node."""
    from confluent_kafka import Consumer, Producer

    topic = new_topic(partitions=2)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(4):
        producer.produce(topic, str(i).encode(), partition=i % 2)
    producer.commit_transaction(30)

    for protocol in ("classic", "consumer"):
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"g-{protocol}-{uuid.uuid4().hex[:8]}",
                "group.protocol": protocol,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.subscribe([topic])
            seen: set[bytes] = set()
            deadline = time.monotonic() + 30
            while len(seen) < 4 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    seen.add(message.value())
            assert seen == {b"0", b"1", b"2", b"3"}, protocol
            assert consumer.commit(asynchronous=False)
        finally:
            consumer.close()


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["its port", "its data dir"])
def test_start_fails_when_another_broker_serves_the_port(
    local_kafka: LocalKafka, tmp_path: Path, where: str
) -> None:
    """A second broker whose JVM cannot bind must not report the first one's answers as its own."""
    if where == "its port":
        other = LocalKafka(port=local_kafka.port, data_dir=tmp_path / "data")
    else:
        other = LocalKafka(data_dir=local_kafka.data_dir)
    try:
        with pytest.raises(BrokerError, match="already in use"):
            other.start()
        assert not other.is_running()
    finally:
        other.stop(0)
        _kill_jvms_under(tmp_path)
    assert local_kafka.is_running()
    assert _admin(local_kafka.bootstrap).list_topics(timeout=10).brokers


def _jvms_under(path: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "kafka.Kafka" in (p.info["cmdline"] or [])
        and any(str(path) in arg for arg in p.info["cmdline"])
    ]


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_cli_start_terminated_during_start_up_leaves_no_jvm(tmp_path: Path) -> None:
    """SIGTERM to ``fogverse broker start`` (e.g. ``timeout``) before it recorded the broker."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "FOGVERSE_STATE_DIR": str(state_dir), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogverse", "broker", "start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    jvms: list[int] = []
    try:
        wait_until(
            lambda: jvms.extend(_jvms_under(tmp_path)) or jvms, 60, "the JVM to spawn", interval=0.1
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert proc.returncode != 0
        wait_until(
            lambda: not any(pid_alive(p) for p in jvms), 30, "the JVM to exit", interval=0.05
        )
        assert not (state_dir / "broker.json").exists()
        assert not list(tmp_path.glob("fogverse-kafka-*")), "temporary data dir left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_jvms_under(tmp_path)
