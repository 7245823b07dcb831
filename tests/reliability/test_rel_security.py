"""SASL/SSL settings reach every Kafka client FogVerse creates (no broker needed).

Each client is really constructed with the configuration it was given, so librdkafka and
aiokafka themselves check the keys, and the configuration is recorded to prove the settings
arrived. The nodes' clients (confluent-kafka) take librdkafka's properties
(``security.protocol``, ``ssl.ca.location``...) or the seed's aiokafka keyword arguments,
which they translate; the add-ons' own aiokafka clients (the auto-scaling master's, the
heartbeat observer's) take aiokafka's keyword arguments (``security_protocol``,
``ssl_context``...): see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiokafka
import pytest

import fogverse.admin as kafka_admin
import fogverse.transport.confluent as confluent_transport
from fogverse import Consumer, ParallelConsumer, Producer

# aiokafka's names for the same settings.
SASL_SSL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "fog-node",
    "sasl_plain_password": "s3cret",
    "ssl_context": ssl.create_default_context(),
}
# librdkafka's names for the same settings (no CA file: the system's store is used).
SASL_SSL_RD = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "fog-node",
    "sasl.password": "s3cret",
    "ssl.endpoint.identification.algorithm": "https",
}
SERVERS = "127.0.0.1:1"  # never contacted: no client is started


def _has(kwargs: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(kwargs.get(k) is v or kwargs.get(k) == v for k, v in expected.items())


_SET_UP_READS = {"_sender"}


class Made:
    """Records the keyword arguments of every aiokafka client constructed through it; each
    one is constructed for real too, so that aiokafka checks them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def wrap(self, name: str, real: type) -> type:
        made = self

        class Recording:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                made.calls.append((name, kwargs))
                self._real = real(*args, **kwargs)

            def subscribe(self, *args: Any, **kwargs: Any) -> None:
                self._real.subscribe(*args, **kwargs)

            async def start(self) -> None:
                return None

            async def stop(self) -> None:
                await self._real.stop()

            def __getattr__(self, name: str) -> Any:
                # What the add-ons read while setting up (whether the producer's sender
                # died) comes from the real, unstarted client; anything that would talk to
                # a broker stops the test.
                if name in _SET_UP_READS:
                    return getattr(self._real, name)
                raise _Stop(f"{name}: the test stops here, once the client is made")

        return Recording

    def of(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for n, kwargs in self.calls if n == name]


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Made:
    made = Made()
    # The add-ons import the classes from aiokafka on first use.
    monkeypatch.setattr(
        aiokafka, "AIOKafkaConsumer", made.wrap("consumer", aiokafka.AIOKafkaConsumer)
    )
    monkeypatch.setattr(
        aiokafka, "AIOKafkaProducer", made.wrap("producer", aiokafka.AIOKafkaProducer)
    )
    return made


# The properties the seed's aiokafka keyword arguments (SASL_SSL) set in librdkafka.
SASL_SSL_FROM_SEED = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "fog-node",
    "sasl.password": "s3cret",
}
SPELLINGS = pytest.mark.parametrize(
    ("conf", "expected"),
    [
        pytest.param(SASL_SSL_RD, SASL_SSL_RD, id="librdkafka"),
        pytest.param(SASL_SSL, SASL_SSL_FROM_SEED, id="aiokafka-keywords"),
    ],
)


class MadeRd:
    """Records the configuration of every librdkafka client the nodes' transports make; each
    one is made for real too (librdkafka checks every property then), and closed at once:
    the transport's ``start()`` stops there, before anything talks to a broker."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def wrap(self, name: str, real: type) -> Any:
        def make(conf: dict[str, Any]) -> Any:
            self.calls.append((name, dict(conf)))
            client = real(conf)
            if name == "consumer":
                client.close()
            else:
                client.flush(0)
            del client  # the last reference: librdkafka's threads end
            raise _Stop(f"{name} made: the test stops here")

        return make

    def of(self, name: str) -> list[dict[str, Any]]:
        return [conf for n, conf in self.calls if n == name]


@pytest.fixture
def made_rd(monkeypatch: pytest.MonkeyPatch) -> MadeRd:
    made = MadeRd()
    # The transports use the classes they imported from confluent_kafka.
    monkeypatch.setattr(
        confluent_transport, "Consumer", made.wrap("consumer", confluent_transport.Consumer)
    )
    monkeypatch.setattr(
        confluent_transport, "Producer", made.wrap("producer", confluent_transport.Producer)
    )
    return made


async def _start(transport: Any) -> None:
    with pytest.raises(_Stop):
        await transport.start()


@SPELLINGS
@pytest.mark.parametrize("node_class", [Consumer, ParallelConsumer])
def test_a_consumer_nodes_clients_get_the_security_settings(
    made_rd: MadeRd, node_class: type, conf: dict[str, Any], expected: dict[str, Any]
) -> None:
    async def scenario() -> None:
        node = node_class(
            "in",
            SERVERS,
            "g",
            producer_topic="out",
            consumer_conf=dict(conf),
            producer_conf=dict(conf),
        )
        await _start(node.consumer)
        await _start(node.producer)

    asyncio.run(scenario())
    [consumer] = made_rd.of("consumer")
    [producer] = made_rd.of("producer")
    assert _has(consumer, expected) and _has(producer, expected)
    # Security settings never switch off what at-least-once depends on.
    assert consumer["enable.auto.commit"] is False


@SPELLINGS
def test_a_producer_nodes_client_gets_the_security_settings(
    made_rd: MadeRd, conf: dict[str, Any], expected: dict[str, Any]
) -> None:
    async def scenario() -> None:
        node = Producer("out", SERVERS, producer_conf=dict(conf))
        await _start(node.producer)

    asyncio.run(scenario())
    [producer] = made_rd.of("producer")
    assert _has(producer, expected)


def test_the_observers_producer_gets_the_security_settings(made: Made) -> None:
    from fogverse.autoscale import Observer

    async def scenario() -> None:
        observer = Observer(
            {"kafka_server": SERVERS, "producer_topic": "control", "producer_conf": SASL_SSL}
        )
        await observer._make_producer().stop()

    asyncio.run(scenario())
    assert _has(made.of("producer")[0], SASL_SSL)


def _start_master_clients(master: Any) -> None:
    """Run the master's Kafka start-up until the clients are made (it stops at the first
    use of the consumer beyond ``start``)."""

    async def scenario() -> None:
        with pytest.raises(_Stop):
            await master._start_kafka()
        for client in (master._consumer, master._producer):
            if client is not None:
                await client.stop()

    asyncio.run(scenario())


def test_the_masters_consumer_gets_the_security_settings(made: Made) -> None:
    from fogverse.autoscale import Master

    _start_master_clients(
        Master("control", "m", SERVERS, create_topic=False, consumer_conf=SASL_SSL)
    )
    assert _has(made.of("consumer")[0], SASL_SSL)


def test_the_master_passes_security_settings_to_its_producer_and_admin(
    made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master also makes a producer (``publish=True``) and an admin client (to create
    the control topic): both must get the settings too. Today they are built from the
    bootstrap servers alone, so such a master cannot run against a SASL/SSL cluster."""
    from fogverse.autoscale import Master

    admins: list[dict[str, Any]] = []

    class Admin:
        def __init__(self, servers: str, config: dict[str, Any] | None = None) -> None:
            admins.append(dict(config or {}))

        async def create_topic(self, *args: Any, **kwargs: Any) -> None:
            return None

    monkeypatch.setattr(kafka_admin, "KafkaAdmin", Admin)
    master = Master(
        "control",
        "m",
        SERVERS,
        publish=True,
        consumer_conf=SASL_SSL,
        producer_conf=SASL_SSL,  # proposed: the producer's own settings
        admin_conf=SASL_SSL_RD,  # proposed: librdkafka's names, for the admin client
    )
    _start_master_clients(master)
    assert admins == [SASL_SSL_RD]
    assert _has(made.of("producer")[0], SASL_SSL)


class _Stop(Exception):
    pass


def test_kafka_admin_gets_the_security_settings() -> None:
    from confluent_kafka import KafkaException

    kafka_admin.KafkaAdmin(SERVERS, SASL_SSL_RD)  # librdkafka accepts them...
    with pytest.raises(KafkaException, match=r"security\.protocol"):
        # ...and really reads them: a wrong value is refused.
        kafka_admin.KafkaAdmin(SERVERS, {**SASL_SSL_RD, "security.protocol": "BOGUS"})


def test_the_confluent_transports_get_the_security_settings() -> None:
    from fogverse.transport.confluent import ConfluentConsumerTransport, ConfluentProducerTransport

    consumer = ConfluentConsumerTransport(["in"], SERVERS, "g", config=SASL_SSL_RD)
    producer = ConfluentProducerTransport(SERVERS, config=SASL_SSL_RD)
    assert _has(consumer.config, SASL_SSL_RD) and _has(producer.config, SASL_SSL_RD)
    assert consumer.config["enable.auto.commit"] is False
    # librdkafka accepts them (it checks every property when a client is made).
    from confluent_kafka import Consumer as RdConsumer
    from confluent_kafka import Producer as RdProducer

    RdConsumer(consumer.config).close()
    RdProducer(producer.config).flush(0)


def test_dynamic_partitioning_gives_its_admin_client_the_security_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that joins through dynamic partitioning makes an admin client from the
    bootstrap servers (``ConsumerStart(servers)``, and ``ConsumerStart.from_env`` for the
    instances a deploy script starts). It must be able to get the cluster's security
    settings; today only a ready-made ``AdminClient`` can carry them."""
    from confluent_kafka import admin as confluent_admin

    from fogverse.partitions import ConsumerStart

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(confluent_admin, "AdminClient", lambda conf: seen.append(conf))
    start = ConsumerStart(SERVERS, admin_config=SASL_SSL_RD)  # proposed keyword
    start._client()
    assert _has(seen[0], SASL_SSL_RD)


def test_the_lag_workers_admin_gets_the_masters_admin_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The LAG_WORKER measures lag with an admin client and a group-offsets consumer it makes
    from the master's servers: both must get the master's ``admin_conf`` too, or lag-based
    scaling fails on a SASL/SSL cluster."""
    import confluent_kafka
    from confluent_kafka import admin as confluent_admin

    from fogverse.autoscale import LagWorker, Master

    seen: list[dict[str, Any]] = []
    consumers: list[dict[str, Any]] = []

    class Consumer:
        def __init__(self, conf: dict[str, Any]) -> None:
            consumers.append(conf)

        def committed(self, tps: list[Any], timeout: float) -> list[Any]:
            return []

        def close(self) -> None:
            pass

    monkeypatch.setattr(confluent_admin, "AdminClient", lambda conf: seen.append(conf))
    monkeypatch.setattr(confluent_kafka, "Consumer", Consumer)
    master = Master("control", "m", SERVERS, admin_conf=SASL_SSL_RD)

    async def scenario() -> LagWorker:
        worker = LagWorker()
        await worker.start(master)
        await worker.stop()
        return worker

    worker = asyncio.run(scenario())
    assert _has(seen[0], SASL_SSL_RD)
    assert worker.offsets is not None
    worker.offsets.committed("g", [], 1.0)
    assert _has(consumers[0], SASL_SSL_RD) and consumers[0]["group.id"] == "g"
