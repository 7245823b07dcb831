"""The original FogVerse README's code runs with only its imports changed, on the real broker.

Each ``SEED_*`` string below is a snippet of the original README (``shared/seeds/``), copied
character for character. What a test adds around a snippet is what the README leaves to its
reader, never a change to the snippet's own lines:

- imports, written as ``fogverse`` ones (``from auto_scale import ...`` becomes
  ``from fogverse.autoscale import ...``), including the names the README uses without
  importing them (``DeployScripts``, ``Logger``, ``uuid4``, ...);
- where it runs: the addresses ``'localhost:9092'`` / ``'localhost'`` become the test
  broker's and the lock port ``4242`` a free one (:func:`deployed`; a deployment's settings,
  not code), and ``FOGVERSE_BOOTSTRAP`` / ``FOGVERSE_OBSERVER_TOPIC`` say where the seed's
  ``observer()``, which it builds without its config, reports;
- the class the README's method overrides go into, and the objects it says to inject
  (``self.observer``, ``self.consumer_start``).

One snippet cannot run as printed at all: the custom ``Master(...)`` call puts two of its
commas inside comments, a ``SyntaxError`` in any Python; its test moves those two commas in
front of the comments and says so.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import socket
import textwrap
import uuid
from typing import Any

import pytest
from backends import produce_kafka
from polling import until

# ---- the seed's snippets, verbatim ------------------------------------------------------

SEED_MASTER = """
auto_scale_component = AutoScaleComponent()

conf : MasterAutoScalerConfig = {
    'consumer_topic' : 'test',
    'consumer_server' : 'localhost:9092',
    'consumer_group_id' : 'test',
    'auto_deployer_config' : {
        'deploy_delay' : 30,
        'after_heartbeat_delay' : 30
    },
    'statistic_worker_config': {
        'z_value' : 1.5,
        'refresh_rate' : 1,
        'maximum_seconds' : 600
    },
    'included_worker' : [Worker.AUTO_DEPLOYER, Worker.DISTRIBUTED_LOCK_WORKER, Worker.STATISTIC_WORKER, Worker.INPUT_OUTPUT_WORKER],
    'distributed_worker_config' : {
        'master_host' : 'localhost',
        'master_port' : 4242
    },
    'input_output_worker_config' : {
        'refresh_rate_second': 60,
        'input_output_ratio_threshold': 0.7
    }
}

deploy_scripts = DeployScripts()

master = auto_scale_component.master_auto_scaler(conf, deploy_scripts)

await master.run()
"""  # noqa: E501

SEED_CUSTOM_MASTER = """
master = Master(
    consumer_topic=topic,
    consumer_group_id=group_id,
    consumer_servers=server,
    observers=[] # your own observer,
    possible_data_types=[] # possible data types from that observer could receive
)
"""

SEED_OBSERVER = """

auto_scale_component = AutoScaleComponent()

observer_conf : ObserverConfig = {
    'kafka_server' : 'localhost',
    'producer_topic': 'test'
}

observer = auto_scale_component.observer()
"""

SEED_SEND = """
async def send(self, data, topic=None, key=None, headers=None, callback=None):
    result = await super().send(data, topic, key, headers, callback)
    self.observer.send_heartbeat(self.producer_topic, total_messages=1)
    return result
"""

SEED_START_CONSUMER = """
    async def start_consumer(self):
        result = await super().start_consumer()

        self.observer.send_auto_scale_request(
            source_topic=self.consumer_topic,
            target_topic=self.producer_topic,
            topic_configs={
                'provider' : 'LOCAL',
                'service_name' : 'test',
                'max_instance' : 3,
                'extra_configs' : {
                    'test' : "halo"
                }
            }
        )

        return result
"""

SEED_DEPLOY = """

def _local_deployment(logger: Logger, configs: DeployConfig):
    logger.info(configs['extra_configs']['test'])
    logger.info("No implementation were made")
    return None

deploy_scripts = DeployScripts()
deploy_scripts.set_deploy_functions('LOCAL', _local_deployment)
"""

SEED_CONSUMER_START = """
kafka_admin = AdminClient(
    conf={
        "bootstrap.servers": "localhost"
    },
)
consumer_start = ConsumerStart(
    kafka_admin,
    sleep_time=3,
    master_host='localhost',
    master_port=4242,
    initial_total_partition=1
)
"""

SEED_PARTITION_START_CONSUMER = """
async def start_consumer(self):
    await self.consumer_start.start_with_distributed_lock(
        self.consumer,
        self.consumer_topic,
        self.group_id,
        str(uuid4()),
    )
"""

SEED_RUN_CONTRACT = """
async def run(self, process_number : int, max_running_task : int, processor : Processor):
"""

# ---- the imports, as a port writes them -------------------------------------------------

IMPORTS_MASTER = (
    "from fogverse.autoscale import AutoScaleComponent, MasterAutoScalerConfig, Worker\n"
    "from fogverse.autoscale import DeployScripts\n"
)
IMPORTS_CUSTOM_MASTER = "from fogverse.autoscale import Master\n"
IMPORTS_NODE = (
    "from fogverse import Consumer\n"
    "from fogverse.autoscale import AutoScaleComponent, ObserverConfig\n"
)
IMPORTS_DEPLOY = (
    "from logging import Logger\nfrom fogverse.autoscale import DeployConfig, DeployScripts\n"
)
IMPORTS_PARTITIONS = (
    "from uuid import uuid4\n"
    "from confluent_kafka.admin import AdminClient\n"
    "from fogverse import Consumer\n"
    "from fogverse.partitions import ConsumerStart\n"
)


def deployed(snippet: str, bootstrap: str, lock_port: int) -> str:
    """The snippet pointed at the test's broker and lock port (addresses only)."""
    out = snippet.replace("'localhost:9092'", repr(bootstrap))
    out = out.replace("'kafka_server' : 'localhost'", f"'kafka_server' : {bootstrap!r}")
    out = out.replace('"bootstrap.servers": "localhost"', f'"bootstrap.servers": {bootstrap!r}')
    return out.replace("4242", str(lock_port))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_snippet(code: str, namespace: dict[str, Any], name: str) -> Any:
    """Execute ``code`` in ``namespace``; a coroutine if it has a top-level ``await``."""
    compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return eval(compiled, namespace)


def node_class(name: str, imports: str, *methods: str) -> type:
    """The README's method overrides in a ``Consumer`` subclass, as it tells the reader."""
    body = "".join(textwrap.indent(textwrap.dedent(m), "    ") for m in methods)
    namespace: dict[str, Any] = {}
    exec(imports + f"\nclass {name}(Consumer):\n{body}", namespace)
    return namespace[name]


# ---- the tests ----------------------------------------------------------------------------


def test_the_seed_master_and_node_snippets_run_together_on_the_broker(
    kafka_bootstrap: str, new_topic: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master snippet runs (to ``await master.run()``); a node made of the README's
    ``send`` and ``start_consumer`` overrides, with the README's observer, registers its stage
    (its ``consumer_topic`` is a list) and its heartbeats reach the master."""
    monkeypatch.setenv("FOGVERSE_BOOTSTRAP", kafka_bootstrap)
    # The seed builds its observer without the config it writes: the observer then reports
    # where the environment says; the seed's note says that must be the master's topic.
    monkeypatch.setenv("FOGVERSE_OBSERVER_TOPIC", "test")
    port = _free_port()
    source, target = new_topic(prefix="seed-in"), new_topic(prefix="seed-out")

    async def scenario() -> None:
        ns: dict[str, Any] = {}
        exec(IMPORTS_MASTER, ns)
        master_run = asyncio.ensure_future(
            run_snippet(deployed(SEED_MASTER, kafka_bootstrap, port), ns, "seed:master")
        )
        await until(lambda: "master" in ns or master_run.done(), 30, "the master built")
        master = ns["master"]
        try:
            await until(lambda: master.ready.is_set() or master_run.done(), 120, "the master ready")
            assert not master_run.done(), master_run.exception()
            assert master.lock_server is not None and master.deployer is not None

            node_ns: dict[str, Any] = {}
            exec(IMPORTS_NODE, node_ns)
            run_snippet(deployed(SEED_OBSERVER, kafka_bootstrap, port), node_ns, "seed:observer")
            seed_node = node_class("SeedNode", IMPORTS_NODE, SEED_SEND, SEED_START_CONSUMER)
            group = f"seed-{uuid.uuid4().hex[:6]}"
            node = seed_node(source, kafka_bootstrap, group, producer_topic=target)
            node.observer = node_ns["observer"]  # "you need to inject observer to your class"
            assert isinstance(node.consumer_topic, list)
            await produce_kafka(kafka_bootstrap, source, [(None, b"frame", [])] * 5)
            task = asyncio.create_task(node.run())
            try:
                await until(
                    lambda: (source, target) in master.state.stages or task.done(),
                    120,
                    "the node's stage registered with the master",
                )
                assert not task.done(), task.exception()
                stage = master.state.stages[(source, target)]
                assert stage.spec.provider == "LOCAL" and stage.spec.max_instance == 3
                assert stage.spec.extra_configs == {"test": "halo"}
                instance = node.observer.instance_id
                await until(
                    lambda: instance in master.state.instances,
                    120,
                    "the node's heartbeats at the master",
                )
            finally:
                node.stop()
                await task
                await node.observer.close()
        finally:
            master.stop()
            await asyncio.wait_for(master_run, 60)

    asyncio.run(scenario())


def test_the_seed_deploy_script_is_called_as_the_master_calls_it(caplog) -> None:
    ns: dict[str, Any] = {}
    exec(IMPORTS_DEPLOY, ns)
    run_snippet(SEED_DEPLOY, ns, "seed:deploy")
    fn = ns["deploy_scripts"].get_deploy_function("LOCAL")
    assert fn is ns["_local_deployment"]
    config = {
        "provider": "LOCAL",
        "service_name": "test",
        "max_instance": 3,
        "extra_configs": {"test": "halo"},
    }
    with caplog.at_level(logging.INFO, logger="seed"):
        assert fn(logging.getLogger("seed"), config) is None
    assert [r.getMessage() for r in caplog.records] == ["halo", "No implementation were made"]


def test_the_seed_custom_master_builds_with_its_two_commas_out_of_its_comments() -> None:
    with pytest.raises(SyntaxError):
        compile(SEED_CUSTOM_MASTER, "seed:custom-master", "exec")
    # The one change beyond imports: the commas the README wrote inside two comments.
    fixed = SEED_CUSTOM_MASTER.replace(
        "observers=[] # your own observer,", "observers=[], # your own observer"
    )
    ns: dict[str, Any] = {"topic": "control", "group_id": "master", "server": "localhost:9092"}
    exec(IMPORTS_CUSTOM_MASTER, ns)
    run_snippet(fixed, ns, "seed:custom-master")
    assert type(ns["master"]).__name__ == "Master"


def test_the_seed_dynamic_partition_consumer_joins_through_the_masters_lock(
    kafka_bootstrap: str, new_topic: Any
) -> None:
    """``ConsumerStart`` as the README builds it, and its ``start_consumer`` override, join a
    consumer through a lock service (the master's DISTRIBUTED_LOCK_WORKER)."""
    from fogverse.autoscale import AutoScaleComponent, Worker

    port = _free_port()
    topic = new_topic(prefix="seed-dyn")

    async def scenario() -> None:
        master = AutoScaleComponent().master_auto_scaler(
            {
                "included_worker": [Worker.DISTRIBUTED_LOCK_WORKER],
                "distributed_worker_config": {"master_host": "localhost", "master_port": port},
            }
        )
        master_run = asyncio.create_task(master.run())
        ns: dict[str, Any] = {}
        exec(IMPORTS_PARTITIONS, ns)
        try:
            await until(lambda: master.ready.is_set(), 60, "the lock service")
            run_snippet(deployed(SEED_CONSUMER_START, kafka_bootstrap, port), ns, "seed:dyn")
            seed_node = node_class("DynNode", IMPORTS_PARTITIONS, SEED_PARTITION_START_CONSUMER)
            node = seed_node(topic, kafka_bootstrap, f"seed-dyn-{uuid.uuid4().hex[:6]}")
            node.consumer_start = ns["consumer_start"]
            seen: list[bytes] = []

            def process(data: Any) -> None:
                seen.append(data)

            node.process = process
            task = asyncio.create_task(node.run())
            try:
                await produce_kafka(kafka_bootstrap, topic, [(None, b"m", [])] * 3)
                await until(lambda: len(seen) == 3 or task.done(), 120, "3 messages read")
                assert not task.done(), task.exception()
            finally:
                node.stop()
                await task
        finally:
            master.stop()
            await asyncio.wait_for(master_run, 60)

    asyncio.run(scenario())


def test_the_seed_run_contract_is_parallel_runnables() -> None:
    from fogverse import ParallelRunnable, Processor

    namespace: dict[str, Any] = {"Processor": Processor}
    exec(SEED_RUN_CONTRACT + "    pass\n", namespace)
    seed = inspect.signature(namespace["run"])
    ours = inspect.signature(ParallelRunnable.run)
    assert list(seed.parameters) == list(ours.parameters)
