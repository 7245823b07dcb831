"""Nodes the auto-scaling tests start as real processes (through the LOCAL provider).

Configured by environment, as a deployment would be: the LOCAL (or DOCKER) provider sets
CONSUMER_TOPIC, PRODUCER_TOPIC, GROUP_ID, FOGVERSE_INSTANCE_ID and the observer's topic and
servers. The engine tests run the same file in containers of the node image.
"""

from __future__ import annotations

import asyncio
import os

from fogverse import Consumer
from fogverse.autoscale import enable_heartbeats


class SlowStage(Consumer):
    """Passes each message on after 50 ms of work: ≈ 20 messages/s per instance.

    Reports through an attached observer and, like the seed's nodes, sends its auto-scale
    request from ``start_consumer``.
    """

    work_seconds = float(os.environ.get("SLOW_STAGE_SECONDS", "0.05"))

    def __init__(self) -> None:
        super().__init__(consumer_conf={"metadata_max_age_ms": 5000})
        self.observer = enable_heartbeats(self, True)

    async def start_consumer(self) -> None:
        await super().start_consumer()
        self.observer.send_auto_scale_request(
            source_topic=self.consumer_topic[0],
            target_topic=self.producer_topic,
            topic_configs={
                "provider": os.environ.get("SLOW_STAGE_PROVIDER", "LOCAL"),
                "service_name": "slow",
                "max_instance": int(os.environ.get("SLOW_STAGE_MAX", "4")),
                "extra_configs": {},
            },
        )

    async def process(self, data):
        await asyncio.sleep(self.work_seconds)
        return data
