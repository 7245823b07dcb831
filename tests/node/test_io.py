"""Pipeline behaviour that must hold on Kafka and on the in-memory broker alike."""

from __future__ import annotations

import asyncio
import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
from backends import Backend

from fogverse import Consumer, Producer, Record
from fogverse.codec import Codec, NDArrayCodec


class FrameSource(Producer):
    """Produces ``n`` frames numbered by key, with the video headers, then ends."""

    def __init__(self, n: int, **kw):
        super().__init__(**kw)
        self.n = n
        self.i = 0

    async def receive(self):
        if self.i >= self.n:
            raise StopAsyncIteration
        i, self.i = self.i, self.i + 1
        headers = [("cam", b"cam-1"), ("frame", str(i).encode()), ("timestamp", b"1700000000.5")]
        return Record(value=f"frame-{i}".encode(), key=str(i).encode(), headers=headers)


class Upper(Consumer):
    def process(self, data):
        if data == b"frame-3":
            raise ValueError("frame 3 is cursed")
        return data.upper()


async def _run_until(nodes, done, timeout=60.0):
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await done():
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()
            assert asyncio.get_running_loop().time() < deadline, "pipeline did not finish"
            await asyncio.sleep(0.05)
    finally:
        for n in nodes:
            n.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


def test_chain_preserves_keys_headers_and_dead_letters_failures(backend: Backend):
    async def main():
        src, mid = backend.topic(), backend.topic()
        out, dlq = backend.topic(), f"{src}.dlq"
        n = 20
        group = f"g-{uuid.uuid4().hex[:6]}"
        nodes = [
            FrameSource(n, producer_topic=src, producer_servers=backend.servers),
            Upper(src, backend.servers, group, producer_topic=mid),
            Consumer(mid, backend.servers, group + "b", producer_topic=out),
        ]

        async def done():
            return len(await backend.read(out, n - 1, timeout=0.5)) >= n - 1

        await _run_until(nodes, done)
        outputs = await backend.read(out, n - 1)
        dead = await backend.read(dlq, 1)
        return outputs, dead

    outputs, dead = asyncio.run(main())
    assert sorted(r.value for r in outputs) == sorted(
        f"FRAME-{i}".encode() for i in range(20) if i != 3
    )
    for r in outputs:
        i = int(r.key)
        assert r.value == f"FRAME-{i}".encode()
        h = dict(r.headers)
        assert h["cam"] == b"cam-1" and h["frame"] == str(i).encode()
        assert h["timestamp"] == b"1700000000.5"
    assert len(dead) == 1
    h = dict(dead[0].headers)
    assert dead[0].value == b"frame-3" and dead[0].key == b"3"
    assert h["fogverse.error.stage"] == b"process"
    assert h["fogverse.error.type"] == b"ValueError"
    assert b"frame 3 is cursed" in h["fogverse.error.message"]
    assert b"Traceback" in h["fogverse.error.traceback"]
    assert h["cam"] == b"cam-1"


def test_corrupt_image_and_pickle_payload_are_dead_lettered_never_executed(
    backend: Backend, tmp_path: Path
):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    frame = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)

    class Sum(Consumer):
        def process(self, data):
            assert isinstance(data, np.ndarray)
            return int(data.sum())

    async def main():
        src, out = backend.topic(), backend.topic()
        items = [
            (b"0", pickle.dumps(Evil()), [("content-type", b"application/x-fogverse-ndarray")]),
            (b"1", b"\xff\xd8\xff\xe0garbage-not-a-jpeg", [("content-type", b"image/jpeg")]),
            (b"2", pickle.dumps(Evil()), []),
            (b"3", NDArrayCodec().encode(frame), []),
        ]
        await backend.produce(src, items)
        node = Sum(
            src,
            backend.servers,
            f"g-{uuid.uuid4().hex[:6]}",
            producer_topic=out,
            output_codec="json",
        )

        async def done():
            return (
                len(await backend.read(out, 1, timeout=0.2)) >= 1
                and len(await backend.read(f"{src}.dlq", 3, timeout=0.2)) >= 3
            )

        await _run_until([node], done)
        return await backend.read(out, 1), await backend.read(f"{src}.dlq", 3)

    outputs, dead = asyncio.run(main())
    assert [r.value for r in outputs] == [str(int(frame.sum())).encode()]
    assert sorted(r.key for r in dead) == [b"0", b"1", b"2"]
    stages = {r.key: dict(r.headers)["fogverse.error.stage"] for r in dead}
    # Declared as an ndarray or a JPEG: rejected by the decoder. Undeclared: it reaches the
    # processor as inert bytes (auto never unpickles), which rejects it.
    assert stages == {b"0": b"decode", b"1": b"decode", b"2": b"process"}
    assert not marker.exists(), "a pickle payload was executed"


def test_filter_none_sends_nothing_and_commits(backend: Backend):
    class Evens(Consumer):
        def process(self, data):
            return data if int(data) % 2 == 0 else None

    async def main():
        src, out = backend.topic(), backend.topic()
        await backend.produce(src, [(None, str(i).encode(), []) for i in range(10)])
        node = Evens(src, backend.servers, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)

        async def done():
            return len(await backend.read(out, 5, timeout=0.2)) >= 5

        await _run_until([node], done)
        return await backend.read(out, 5)

    outputs = asyncio.run(main())
    assert sorted(int(r.value) for r in outputs) == [0, 2, 4, 6, 8]


class _SeenCodec(Codec):
    """Bytes as they are; records the content type each decode was given."""

    name = "seen"

    def __init__(self, content_type: str | None, *, labelled: bool = True) -> None:
        if labelled:  # an input-only codec of a user's may not say (Codec declares no default)
            self.content_type = content_type  # type: ignore[misc]
        self.given: list[object] = []

    def encode(self, obj):
        return bytes(obj)

    def decode(self, data, content_type=None):
        self.given.append(content_type)
        return bytes(data)


@pytest.mark.parametrize("loop", ["batch", "message"])
def test_the_content_type_header_reaches_only_codecs_without_a_fixed_one(
    backend: Backend, loop: str
):
    # Codec.decode: a codec of one format trusts its own check of the bytes, so nodes do not
    # look the header up for it; one that picks the format per message (auto) gets it.
    class Forward(Consumer):
        if loop == "message":  # any hook makes the node take its message-at-a-time loop

            def _after_decode(self, data):
                return None

    async def main():
        src, out = backend.topic(), backend.topic()
        header = [("content-type", b"application/octet-stream")]
        await backend.produce(src, [(None, str(i).encode(), header) for i in range(4)])
        fixed, free = _SeenCodec("application/octet-stream"), _SeenCodec(None)
        unlabelled = _SeenCodec(None, labelled=False)
        for codec in (fixed, free, unlabelled):
            node = Forward(
                src,
                backend.servers,
                f"g-{uuid.uuid4().hex[:6]}",
                producer_topic=out,
                input_codec=codec,
                output_codec="bytes",
            )

            async def done(codec=codec):
                return len(codec.given) >= 4

            await _run_until([node], done)
        return fixed.given, free.given, unlabelled.given

    fixed, free, unlabelled = asyncio.run(main())
    assert fixed == [None] * 4
    assert free == [b"application/octet-stream"] * 4
    assert unlabelled == [b"application/octet-stream"] * 4


def test_hooks_run_in_order_sync_and_async(backend: Backend):
    calls: list[str] = []

    class Hooked(Consumer):
        def _before_receive(self):
            calls.append("before_receive") if not calls or calls[-1] != "before_receive" else None

        async def _after_receive(self, message):
            calls.append("after_receive")

        def _before_decode(self, value):
            calls.append("before_decode")

        async def _after_decode(self, data):
            calls.append("after_decode")

        def _before_process(self, data):
            calls.append("before_process")

        def _after_process(self, result):
            calls.append("after_process")

        async def _before_encode(self, result):
            calls.append("before_encode")

        def _after_encode(self, out):
            calls.append("after_encode")

        def _before_send(self, out):
            calls.append("before_send")

        async def _after_send(self, out):
            calls.append("after_send")

    async def main():
        src, out = backend.topic(), backend.topic()
        await backend.produce(src, [(None, b"x", [])])
        node = Hooked(src, backend.servers, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)

        async def done():
            return len(await backend.read(out, 1, timeout=0.2)) >= 1

        await _run_until([node], done)

    asyncio.run(main())
    i = calls.index("after_receive")
    assert calls[i : i + 10] == [
        "after_receive",
        "before_decode",
        "after_decode",
        "before_process",
        "after_process",
        "before_encode",
        "after_encode",
        "before_send",
        "after_send",
        "before_receive",
    ]


def test_environment_overrides_constructor(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONSUMER_TOPIC", "a,b")
    monkeypatch.setenv("PRODUCER_TOPIC", "out")
    monkeypatch.setenv("GROUP_ID", "grp")
    monkeypatch.setenv("CONSUMER_SERVERS", "memory://env")

    class Preset(Consumer):
        def __init__(self):
            self.consumer_topic = "ignored"
            self.producer_topic = "ignored"
            Consumer.__init__(self)

    node = Preset()
    assert node.consumer_topic == ["a", "b"]
    assert node.producer_topic == "out"
    assert node.group_id == "grp"
    assert node.consumer_servers == "memory://env"
    assert node.producer_servers == "memory://env"
    monkeypatch.delenv("PRODUCER_TOPIC")
    assert Preset().producer_topic == "ignored"
