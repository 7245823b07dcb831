"""Hostile input through running nodes on the real broker: whatever anyone writes to a topic
is decoded into a plain value or dead-lettered with a clear error; it is never executed and
never stops a node. The codecs' and the lock protocol's own fuzzing is in tests/test_codec.py
and tests/autoscale/lock/; here the same kinds of input go through the whole node.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from backends import committed_kafka, produce_kafka, read_kafka
from rel_harness import Nodes, Reader, Tally, id_of, node_env, until

from fogverse import Consumer, ParallelConsumer
from fogverse.codec import NDArrayCodec
from processors import Compose, DecodeImage, Letterbox

ERR = "fogverse.error."
ALLOWED_DTYPES = {o + t for t in ("i1", "u1", "b1") for o in "|<>"} | {
    o + t for t in ("i2", "i4", "i8", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16") for o in "<>"
}
PLAIN_TYPES = {"ndarray", "bytes", "str", "dict", "list", "int", "float", "bool", "NoneType"}


class Evil:
    """Unpickling this runs a shell command that creates ``path``: proof of execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def _image(h: int = 32, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7 + y * 3 + 40 * c) % 256 for c in range(3)], -1).astype(np.uint8)


JPEG = cv2.imencode(".jpg", _image())[1].tobytes()
PNG = cv2.imencode(".png", _image())[1].tobytes()
FVND = NDArrayCodec().encode(np.arange(16, dtype=np.int32).reshape(4, 4))


def _fvnd_with(header: dict[str, Any] | bytes, body: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return b"FVND\x01" + struct.pack("<I", len(raw)) + raw + body


def _jpeg_with_size(width: int, height: int) -> bytes:
    i = JPEG.find(b"\xff\xc0") + 5  # marker, length, precision
    return JPEG[:i] + struct.pack(">HH", height, width) + JPEG[i + 4 :]


def _png_with_size(width: int, height: int) -> bytes:
    ihdr = bytearray(PNG[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    return PNG[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + PNG[33:]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        i = rng.randrange(min(len(out), 96)) if rng.random() < 0.6 else rng.randrange(len(out))
        op = rng.choice(["flip", "set", "insert", "delete"])
        if op == "flip":
            out[i] ^= rng.randint(1, 255)
        elif op == "set":
            out[i] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xC0, 0xD8, 0xD9, 0xDA, 0xFF])
        elif op == "insert":
            out[i:i] = rng.randbytes(rng.randint(1, 16))
        else:
            del out[i : i + rng.randint(1, 16)]
    return bytes(out)


CT = "content-type"
HOSTILE_DTYPES = [
    "|O",
    "|O8",
    "O",
    "<U4",
    "|V8",
    "|S4",
    "<M8[s]",
    "<m8",
    "<f16",
    "float64",
    7,
    None,
]


def hostile_inputs(sentinel: Path, n: int = 2000, seed: int = 7) -> list[tuple[str, bytes, list]]:
    """``(expectation, payload, headers)``: ``valid:<description>`` must come out decoded as
    described, ``reject`` must be dead-lettered, ``bytes`` may only come out as raw bytes,
    ``any`` may come out as any plain value or be dead-lettered."""
    rng = random.Random(seed)
    evil = [pickle.dumps(Evil(sentinel), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    buf = _npy_object_array()

    def valid_array() -> tuple[str, bytes, list]:
        dtype = rng.choice(sorted(ALLOWED_DTYPES))
        shape = [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]
        arr = np.zeros(shape, dtype=dtype)
        desc = {"type": "ndarray", "dtype": np.dtype(dtype).str, "shape": shape}
        headers = rng.choice([[], [(CT, b"application/x-fogverse-ndarray")], [(CT, b"\xff\xfe")]])
        return "valid:" + json.dumps(desc), NDArrayCodec().encode(arr), headers

    image_desc = json.dumps({"type": "ndarray", "dtype": "|u1", "shape": [32, 32, 3]})
    makers = [
        # Valid payloads, some under odd but harmless headers: decoded as what they are.
        valid_array,
        lambda: (
            "valid:" + image_desc,
            JPEG,
            rng.choice([[], [(CT, b"image/jpeg")], [(CT, None)]]),
        ),
        lambda: (
            "valid:" + image_desc,
            PNG,
            rng.choice([[], [(CT, b"image/png")], [("cam", None)]]),
        ),
        lambda: (
            'valid:{"type": "dict", "len": 1}',
            b'{"a": [1, 2]}',
            [(CT, b"application/json")],
        ),
        lambda: (
            'valid:{"type": "str", "len": 4}',
            "h\u00e9llo"[:4].encode(),
            [(CT, b"text/plain")],
        ),
        # Pickles: never unpickled; opaque bytes at most, an error under a codec's type.
        lambda: ("bytes", rng.choice(evil), rng.choice([[], [(CT, b"application/python-pickle")]])),
        lambda: ("reject", rng.choice(evil), [(CT, b"application/x-fogverse-ndarray")]),
        lambda: ("reject", rng.choice(evil), [(CT, b"application/json")]),
        lambda: ("bytes", buf, rng.choice([[], [(CT, b"application/x-npy")]])),
        # Wrong dtype and shape descriptions.
        lambda: (
            "reject",
            _fvnd_with({"dtype": rng.choice(HOSTILE_DTYPES), "shape": [2]}, b"\0" * 16),
            [],
        ),
        lambda: (
            "reject",
            _fvnd_with({"dtype": "<i4", "shape": rng.choice(_BAD_SHAPES)}, b"\0" * 64),
            rng.choice([[], [(CT, b"application/x-fogverse-ndarray")]]),
        ),
        lambda: ("reject", _fvnd_with(rng.choice(_BAD_HEADERS)), []),
        # Truncated images (with or without their content type) and decompression bombs.
        lambda: (
            "reject",
            JPEG[: rng.randrange(3, len(JPEG) - 1)],
            rng.choice([[], [(CT, b"image/jpeg")]]),
        ),
        lambda: (
            "reject",
            PNG[: rng.randrange(8, len(PNG) - 1)],
            rng.choice([[], [(CT, b"image/png")]]),
        ),
        lambda: ("reject", rng.choice(_BOMBS), []),
        # Text and JSON that are not what their content type says.
        lambda: ("reject", rng.choice(_BAD_JSON), [(CT, b"application/json")]),
        lambda: (
            "reject",
            b"\xff\xfe\xc3\x28" + rng.randbytes(8),
            [(CT, b"text/plain; charset=utf-8")],
        ),
        # Mutated valid payloads and plain garbage, under every kind of content type.
        lambda: ("any", _mutate(rng, rng.choice([JPEG, PNG, FVND])), rng.choice(_ANY_HEADERS)),
        lambda: ("any", rng.randbytes(rng.randint(0, 300)), rng.choice(_ANY_HEADERS)),
    ]
    return [rng.choice(makers)() for _ in range(n)]


_BAD_SHAPES = [[-1, 4], [2**40, 2**40], [3, 3], ["4", 4], [4.0, 4], [True, 4], [0, -5], 16, None]
_BAD_SHAPES += [[1] * 33, [2**62, 2**62, 4]]
_BAD_HEADERS = [
    b"\xff\xfe",
    b"[]",
    b"{",
    b"[" * 5000 + b"]" * 5000,
    json.dumps({"dtype": "<i4"}).encode(),
    json.dumps({"shape": [1]}).encode(),
    json.dumps({"dtype": "<i4", "shape": [1], "fortran_order": True}).encode() + b"\0\0\0\0x",
]
_BOMBS = [_jpeg_with_size(65535, 65535), _jpeg_with_size(16000, 16000)]
_BOMBS += [_png_with_size(100_000, 100_000), _png_with_size(2**31 - 1, 2**31 - 1)]
_BAD_JSON = [b"{" * 100_000, b'{"a": ', b"\xff\xfe{}", b"[1, 2", b"nul", b'{"a": 1}}']
_ANY_HEADERS = [
    [],
    [(CT, b"image/jpeg")],
    [(CT, b"image/png")],
    [(CT, b"application/x-fogverse-ndarray")],
    [(CT, b"application/json")],
    [(CT, b"text/plain; charset=latin-1")],
    [(CT, b"application/json; charset=utf-16")],
    [(CT, b"\x80\x81\xfe\xff")],
    [(CT, None)],
    [(CT, b"image/jpeg"), (CT, b"text/plain")],
    [("cam", b"\xff" * 64), ("frame", b"-1"), ("timestamp", b"NaN")],
]


def _npy_object_array() -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return out.getvalue()


def test_generated_hostile_payloads_through_a_running_node(kafka_bootstrap, new_topic, tmp_path):
    sentinel = tmp_path / "executed"
    inputs = hostile_inputs(sentinel)
    src, out, dlq = new_topic(), new_topic(), new_topic()
    tally = Tally(f"hostile input: {len(inputs)} generated payloads through a Consumer node")
    outputs: dict[int, list[dict]] = collections.defaultdict(list)
    dead: dict[int, list[dict[str, bytes]]] = collections.defaultdict(list)
    nodes = Nodes(tmp_path)

    def on_record(topic: str, m: Any) -> None:
        i = id_of(None, m.headers or ())
        if topic == out:
            outputs[i].append(json.loads(m.value))
        else:
            dead[i].append(dict(m.headers))

    async def scenario() -> None:
        items = [
            (str(i).encode(), value, [*headers, ("id", str(i).encode())])
            for i, (_, value, headers) in enumerate(inputs)
        ]
        await produce_kafka(kafka_bootstrap, src, items)
        tally.sent.update(range(len(items)))
        async with Reader(kafka_bootstrap, {out: tally.out, dlq: tally.dead}) as reader:
            reader.on_record = on_record
            env = node_env(kafka_bootstrap, src, out, f"g-{uuid.uuid4().hex[:6]}")
            node = nodes.start("Describe", {**env, "DEAD_LETTER_TOPIC": dlq}, "describe")
            await until(
                lambda: tally.sent <= (tally.out.keys() | tally.dead.keys()),
                90,
                "every input decoded or dead-lettered",
            )
            await asyncio.sleep(1.0)
            assert node.poll() is None, nodes.log(node)
            assert nodes.kill(node, 15) == 0, nodes.log(node)
        log = nodes.log(node)
        assert "Traceback" not in log, log[-3000:]

    try:
        asyncio.run(scenario())
    finally:
        nodes.cleanup()
    assert not sentinel.exists(), "a pickle payload was executed"
    kinds = collections.Counter(exp.split(":")[0] for exp, _, _ in inputs)
    for i, (expectation, _, _) in enumerate(inputs):
        got, failed = outputs.get(i, []), dead.get(i, [])
        assert len(got) + len(failed) == 1, f"input {i} ({expectation}): {got} {failed}"
        for desc in got:
            assert desc["type"] in PLAIN_TYPES, f"input {i} decoded into {desc}"
            if desc["type"] == "ndarray":
                assert desc["dtype"] in ALLOWED_DTYPES, f"input {i} decoded into {desc}"
        for headers in failed:
            assert headers[ERR + "stage"] == b"decode", headers
            assert headers[ERR + "type"] == b"DecodeError", headers
            assert headers[ERR + "message"], headers
        if expectation.startswith("valid:"):
            assert got == [json.loads(expectation[6:])], f"input {i}: {got} {failed}"
        elif expectation == "reject":
            assert failed, f"input {i} should have been refused, came out as {got}"
        elif expectation == "bytes":
            assert not got or got[0]["type"] == "bytes", f"input {i} came out as {got}"
    tally.notes = (
        f"{kinds['valid']} valid, {kinds['reject']} that must be refused, "
        f"{kinds['bytes']} pickles/npy, {kinds['any']} mutated or random; "
        "no pickle executed, the node never stopped"
    )
    # Refused on purpose: an input is accounted for by its output or its dead letter.
    tally.dead = collections.Counter({i: len(d) for i, d in dead.items() if d})
    tally.out = collections.Counter({**{i: 1 for i in outputs}, **{i: 1 for i in dead}})
    tally.report()
    tally.assert_nothing_lost()


# ---- the parallel image path: decoding happens in the workers ---------------------------------


async def _run_until(node: Any, until_done, timeout: float = 90.0, *args: Any) -> None:
    task = asyncio.create_task(node.run(*args))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await until_done():
            if task.done():
                task.result()
                raise AssertionError("the node stopped")
            assert loop.time() < deadline, "timed out"
            await asyncio.sleep(0.2)
        assert not task.done(), "the node stopped"
    finally:
        node.stop()
        await asyncio.wait_for(task, 60)


def _frames(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Valid, truncated and corrupted JPEG frames."""
    out = []
    for _ in range(n):
        kind = rng.choice(["valid", "valid", "truncated", "mutated", "garbage"])
        if kind == "valid":
            out.append((kind, JPEG))
        elif kind == "truncated":
            out.append((kind, JPEG[: rng.randrange(3, len(JPEG) - 1)]))
        elif kind == "mutated":
            out.append((kind, _mutate(rng, JPEG)))
        else:
            out.append((kind, b"\xff\xd8\xff" + rng.randbytes(rng.randint(0, 200))))
    return out


def test_corrupt_frames_in_the_parallel_image_path(kafka_bootstrap, new_topic):
    rng = random.Random(11)
    frames = _frames(rng, 400)
    src, out = new_topic(partitions=2), new_topic()
    items = [
        (str(i).encode(), data, [(CT, b"image/jpeg"), ("id", str(i).encode())])
        for i, (_, data) in enumerate(frames)
    ]
    asyncio.run(produce_kafka(kafka_bootstrap, src, items))
    node = ParallelConsumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    processor = Compose(DecodeImage(), Letterbox(16))
    counted: dict[str, list] = {}

    async def done() -> bool:
        counted["out"] = await read_kafka(kafka_bootstrap, out, 1, timeout=0.3)
        counted["dead"] = await read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=0.3)
        return len(counted["out"]) + len(counted["dead"]) >= len(frames)

    asyncio.run(_run_until(node, done, 90.0, 2, 8, processor))
    ids_out = collections.Counter(id_of(None, r.headers) for r in counted["out"])
    ids_dead = collections.Counter(id_of(None, r.headers) for r in counted["dead"])
    assert sorted(ids_out + ids_dead) == list(range(len(frames)))
    for i, (kind, _) in enumerate(frames):
        if kind == "valid":
            assert i in ids_out, f"valid frame {i} was dead-lettered"
        if kind == "truncated":
            assert i in ids_dead, f"truncated frame {i} was not refused"
    for r in counted["dead"]:
        h = dict(r.headers)
        assert h[ERR + "stage"] == b"process", h
        message = h[ERR + "message"]
        assert any(m in message for m in (b"jpeg decode", b"JPEG payload", b"image payload")), h
    assert node.pool.stats.get("restarts", 0) == 0, "a corrupt frame crashed a worker"
    Tally(
        "hostile input: 400 valid/truncated/corrupt JPEG frames decoded in ParallelConsumer "
        "workers",
        sent=set(range(len(frames))),
        out=ids_out + ids_dead,
        dead=ids_dead,
        notes=f"{len(ids_dead)} refused by the workers with the decoder's error, no worker crashed",
    ).report()


def test_an_image_bomb_is_refused_before_a_worker_decodes_it(kafka_bootstrap, new_topic):
    """A 600-byte JPEG whose header claims 9000x9000 pixels: the codec refuses it (pixel
    budget), and the worker's decoder must too instead of allocating 243 MB for it."""
    src, out = new_topic(), new_topic()
    bomb = _jpeg_with_size(9000, 9000)
    items = [(b"bomb", bomb, [(CT, b"image/jpeg"), ("id", b"0")])]
    items += [(b"ok", JPEG, [(CT, b"image/jpeg"), ("id", b"1")])]
    asyncio.run(produce_kafka(kafka_bootstrap, src, items))
    node = ParallelConsumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    got: dict[str, list] = {}

    async def done() -> bool:
        got["out"] = await read_kafka(kafka_bootstrap, out, 1, timeout=0.3)
        got["dead"] = await read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=0.3)
        return len(got["out"]) + len(got["dead"]) >= 2

    asyncio.run(_run_until(node, done, 90.0, 1, 2, Compose(DecodeImage(), Letterbox(16))))
    assert [r.key for r in got["out"]] == [b"ok"]
    assert [r.key for r in got["dead"]] == [b"bomb"], "the bomb was decoded"
    message = dict(got["dead"][0].headers)[ERR + "message"]
    assert b"pixels" in message or b"exceeds" in message, message


# ---- oversized messages -------------------------------------------------------------------------


class Inflate(Consumer):
    """``inflate:N`` becomes N bytes of output; anything else passes through."""

    def process(self, data: Any) -> Any:
        if isinstance(data, bytes) and data.startswith(b"inflate:"):
            return b"x" * int(data[8:])
        return data


class Refuse(Consumer):
    """Fails on every input larger than a kilobyte."""

    def process(self, data: Any) -> Any:
        if len(data) > 1024:
            raise ValueError("refused: this input is too large")
        return data


def _run_node(node: Any, expected_out: int, out: str, dlq: str) -> tuple[list, list]:
    got: dict[str, list] = {}

    async def done() -> bool:
        got["out"] = await read_kafka(node.consumer_servers, out, 1, timeout=0.3)
        got["dead"] = await read_kafka(node.consumer_servers, dlq, 1, timeout=0.3)
        return len(got["out"]) >= expected_out and len(got["dead"]) >= 1

    asyncio.run(_run_until(node, done, 60.0))
    return got["out"], got["dead"]


async def _count(bootstrap: str, topic: str, n: int) -> bool:
    return len(await read_kafka(bootstrap, topic, n, timeout=0.5)) >= n


def _keys(records: list) -> list[bytes]:
    return [r.key for r in records]


def test_an_output_over_the_producers_limit_is_dead_lettered_and_the_node_goes_on(
    kafka_bootstrap, new_topic
):
    src, out = new_topic(), new_topic()
    items = [(b"big", b"inflate:2000000", [])] + [(b"n%d" % i, b"ok", []) for i in range(20)]
    asyncio.run(produce_kafka(kafka_bootstrap, src, items))
    node = Inflate(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    got, dead = _run_node(node, 20, out, f"{src}.dlq")
    assert _keys(got) == [b"n%d" % i for i in range(20)]
    assert _keys(dead) == [b"big"]
    headers = dict(dead[0].headers)
    # librdkafka refuses it against message.max.bytes: the error carries librdkafka's name.
    assert headers[ERR + "type"] == b"KafkaDeliveryError"
    assert b"MSG_SIZE_TOO_LARGE" in headers[ERR + "message"]


def test_an_output_the_broker_refuses_as_too_large_does_not_poison_later_outputs(
    kafka_bootstrap, new_topic
):
    """The output topic takes at most 100 KB a message; the producer's own limit is 1 MB, so
    the broker is the one to refuse a 300 KB output. That output is dead-lettered; the ones
    around and after it must still be delivered (librdkafka fails every record of the batch
    the broker refused; the transport sends them again one per request, so that only the
    oversized one fails)."""
    src, out = new_topic(), new_topic(config={"max.message.bytes": 100_000})
    ok = [(b"n%d" % i, b"ok", []) for i in range(25)]
    asyncio.run(produce_kafka(kafka_bootstrap, src, [*ok[:5], (b"big", b"inflate:300000", [])]))
    node = Inflate(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)

    async def run() -> tuple[list, list]:
        task = asyncio.create_task(node.run())
        try:
            # The first outputs are through before the oversized one is refused, so the
            # producer's sequence for the partition is under way when it happens.
            dlq = f"{src}.dlq"
            await until(lambda: _count(kafka_bootstrap, dlq, 1), 60, "the dead letter")
            await produce_kafka(kafka_bootstrap, src, ok[5:])

            async def settled() -> bool:
                got = await read_kafka(kafka_bootstrap, out, 1, timeout=0.5)
                dead = await read_kafka(kafka_bootstrap, dlq, 1, timeout=0.5)
                return len(got) + len(dead) >= len(ok) + 1

            await until(settled, 60, "every input delivered or dead-lettered")
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return (
            await read_kafka(kafka_bootstrap, out, len(ok), timeout=2),
            await read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=2),
        )

    got, dead = asyncio.run(run())
    reasons = {r.key: dict(r.headers)[ERR + "message"][:60] for r in dead}
    assert _keys(dead) == [b"big"], reasons
    assert _keys(got) == [k for k, _, _ in ok]


def _assert_dead_letter_without_payload(record: Any, offset: int) -> None:
    """The error headers are all there; only the payload was dropped, and it says so."""
    headers = dict(record.headers)
    assert record.value == b"", len(record.value)
    assert headers[ERR + "payload"].startswith(b"dropped: "), headers[ERR + "payload"]
    assert headers[ERR + "stage"] == b"process"
    assert headers[ERR + "type"] == b"ValueError"
    assert b"refused: this input is too large" in headers[ERR + "message"]
    assert b"Traceback" in headers[ERR + "traceback"]
    assert headers[ERR + "offset"] == str(offset).encode()


def test_an_input_too_large_to_dead_letter_with_its_error_does_not_stop_the_node(
    kafka_bootstrap, new_topic
):
    """A near-limit input whose processing fails: its dead letter (the input plus the error
    headers) is over the producer's 1 MB limit. The node must dead-letter what it can (the
    error without the payload) and go on; stopping instead would stop it again at every
    restart, on the same input, for ever. librdkafka refuses it (MSG_SIZE_TOO_LARGE) before
    it reaches the broker; the node learns it from the record's ack."""
    src, out = new_topic(), new_topic()
    big = b"a" * 1_048_000

    async def produce() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2**21)
        await producer.start()
        try:
            await producer.send_and_wait(src, big, key=b"big")
            for i in range(5):
                await producer.send_and_wait(src, b"ok", key=b"n%d" % i)
        finally:
            await producer.stop()

    asyncio.run(produce())
    group = f"g-{uuid.uuid4().hex[:6]}"
    node = Refuse(src, kafka_bootstrap, group, producer_topic=out)
    _run_node(node, 5, out, f"{src}.dlq")
    got = asyncio.run(read_kafka(kafka_bootstrap, out, 5, timeout=5, settle=0.5))
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=5, settle=0.5))
    assert _keys(got) == [b"n%d" % i for i in range(5)]
    assert _keys(dead) == [b"big"]
    _assert_dead_letter_without_payload(dead[0], 0)
    assert committed_kafka(kafka_bootstrap, group, src) == 6


def test_a_dead_letter_the_broker_refuses_as_too_large_goes_without_its_payload(
    kafka_bootstrap, new_topic
):
    """The dead-letter topic takes at most 20 KB a message; the producers' own limits are
    1 MB, so the broker is the one to refuse the 300 KB dead letter of a failed input, and
    the refusal arrives through the record's ack, not from ``send()``. The node must send it
    again without the payload, with its error headers, and go on: the next failed input,
    whose dead letter fits, keeps its payload, and every input is accounted for and
    committed."""
    src, out = new_topic(), new_topic()
    dlq = new_topic(config={"max.message.bytes": 20_000})
    first = [(b"n0", b"ok", []), (b"big", b"a" * 300_000, []), (b"n1", b"ok", [])]
    then = [(b"small", b"b" * 2_000, []), (b"n2", b"ok", [])]
    asyncio.run(produce_kafka(kafka_bootstrap, src, first))
    group = f"g-{uuid.uuid4().hex[:6]}"
    node = Refuse(src, kafka_bootstrap, group, producer_topic=out, dead_letter_topic=dlq)

    async def run() -> None:
        task = asyncio.create_task(node.run())
        try:

            async def settled(outputs: int, dead_letters: int) -> bool:
                if task.done():
                    task.result()
                    raise AssertionError("the node stopped")
                got = await read_kafka(kafka_bootstrap, out, outputs, timeout=0.3)
                dead = await read_kafka(kafka_bootstrap, dlq, dead_letters, timeout=0.3)
                return len(got) >= outputs and len(dead) >= dead_letters

            # The next failed input comes once the refused dead letter went again, so the
            # two are never in one producer batch (librdkafka refuses a batch as a whole).
            await until(lambda: settled(2, 1), 60, "the big input's dead letter")
            await produce_kafka(kafka_bootstrap, src, then)
            await until(lambda: settled(3, 2), 60, "the small input's dead letter")
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)

    asyncio.run(run())
    got = asyncio.run(read_kafka(kafka_bootstrap, out, 3, timeout=5, settle=0.5))
    dead = asyncio.run(read_kafka(kafka_bootstrap, dlq, 2, timeout=5, settle=0.5))
    assert _keys(got) == [b"n0", b"n1", b"n2"]
    assert _keys(dead) == [b"big", b"small"]
    assert len(got) + len(dead) == len(first) + len(then)
    _assert_dead_letter_without_payload(dead[0], 1)
    small = dict(dead[1].headers)
    assert dead[1].value == b"b" * 2_000 and ERR + "payload" not in small
    assert small[ERR + "offset"] == b"3"
    assert committed_kafka(kafka_bootstrap, group, src) == len(first) + len(then)


class Strict(Consumer):
    """Refuses inputs without a value."""

    def process(self, data: Any) -> Any:
        if data is None:
            raise ValueError("an input without a value")
        return data


def test_a_record_with_neither_key_nor_value_is_dead_lettered_not_fatal(kafka_bootstrap, new_topic):
    """Kafka accepts a record with neither key nor value (aiokafka's producer refuses to
    write one, so librdkafka's writes it here); a node that fails on it must dead-letter
    it."""
    from confluent_kafka import Producer as RdProducer

    src, out = new_topic(), new_topic()
    producer = RdProducer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(src, None)
    producer.produce(src, b"ok", b"after")
    assert producer.flush(30) == 0
    node = Strict(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    got, dead = _run_node(node, 1, out, f"{src}.dlq")
    assert _keys(got) == [b"after"]
    assert len(dead) == 1 and dict(dead[0].headers)[ERR + "offset"] == b"0"


# ---- headers that are not UTF-8 at all ----------------------------------------------------------

# Kafka's header keys are strings on the wire, but nothing stops a producer from writing bytes
# that are not UTF-8. confluent-kafka cannot hand such a record over as it is: it fails the
# record's headers(), though it reads the rest of the record and of its batch. (The add-ons'
# aiokafka readers fail the whole fetch: see the master's test below.) This writes such
# records through aiokafka's pure-Python record builder: a JSON list of [partition, key, evil]
# is sent in one go, so records sent together share a producer batch.
_RAW_HEADER_PRODUCER = """
import asyncio, json, sys
from aiokafka import AIOKafkaProducer

class RawKey(str):
    def __new__(cls, raw):
        key = super().__new__(cls, raw.decode("latin-1"))
        key.raw = raw
        return key

    def encode(self, *args, **kwargs):
        return self.raw

async def main(bootstrap, topic, spec):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        futures = []
        for partition, key, evil in json.loads(spec):
            headers = [(RawKey(b"\\xff\\xfecontent-type"), b"x")] if evil else [("id", b"1")]
            futures.append(await producer.send(
                topic, key.encode(), key=key.encode(), partition=partition, headers=headers
            ))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:4]))
"""


def _send_raw(bootstrap: str, topic: str, spec: list[tuple[int, str, bool]]) -> None:
    subprocess.run(
        [sys.executable, "-c", _RAW_HEADER_PRODUCER, bootstrap, topic, json.dumps(spec)],
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        check=True,
        timeout=60,
    )


def test_a_header_key_that_is_not_utf8_is_dead_lettered_not_fatal(kafka_bootstrap, new_topic):
    src, out = new_topic(), new_topic()
    _send_raw(kafka_bootstrap, src, [(0, "before", False)])
    _send_raw(kafka_bootstrap, src, [(0, "evil", True)])
    _send_raw(kafka_bootstrap, src, [(0, "after", False)])
    node = Consumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    got, dead = _run_node(node, 2, out, f"{src}.dlq")
    assert _keys(got) == [b"before", b"after"]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers[ERR + "offset"] == b"1"
    assert headers[ERR + "type"] == b"UnreadableRecordError"
    assert b"UnicodeDecodeError" in headers[ERR + "message"]
    # librdkafka reads the payload; only the headers are lost.
    assert dead[0].key == b"evil" and dead[0].value == b"evil"


def test_an_unparseable_record_loses_no_other_partitions_records(kafka_bootstrap, new_topic):
    """One unparseable record among many of three partitions, fetched together: only it is
    dead-lettered; the records fetched with it, of its partition and of the others, all come
    out, none skipped and committed past."""
    src, out = new_topic(partitions=3), new_topic()
    n = 90
    _send_raw(kafka_bootstrap, src, [(i % 3, f"a{i}", False) for i in range(n)])
    _send_raw(kafka_bootstrap, src, [(2, "evil", True)])
    _send_raw(kafka_bootstrap, src, [(i % 3, f"b{i}", False) for i in range(n)])
    node = Consumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    got, dead = _run_node(node, 2 * n, out, f"{src}.dlq")
    expected = {f"{p}{i}".encode() for p in "ab" for i in range(n)}
    assert expected <= set(_keys(got)), f"lost: {sorted(expected - set(_keys(got)))[:10]}"
    assert len(dead) == 1 and dict(dead[0].headers)[ERR + "partition"] == b"2"


def test_records_batched_with_an_unparseable_one_are_delivered_or_dead_lettered(
    kafka_bootstrap, new_topic
):
    """The records in the same producer batch as an unparseable one are read and delivered
    (confluent-kafka parses each record's headers apart); only that one is dead-lettered."""
    src, out = new_topic(), new_topic()
    _send_raw(kafka_bootstrap, src, [(0, "k0", False), (0, "evil", True), (0, "k2", False)])
    _send_raw(kafka_bootstrap, src, [(0, "k3", False)])
    node = Consumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    got, dead = _run_node(node, 3, out, f"{src}.dlq")
    assert _keys(got) == [b"k0", b"k2", b"k3"]
    # Read to the end of the topic, so a late extra dead letter would show.
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=5, settle=1.0))
    assert [int(dict(r.headers)[ERR + "offset"]) for r in dead] == [1]


def test_a_header_key_that_is_not_utf8_does_not_stop_the_master(kafka_bootstrap, new_topic):
    from fogverse.autoscale import Master
    from fogverse.autoscale.messages import encode_message

    control = new_topic()
    _send_raw(kafka_bootstrap, control, [(0, "{}", True)])

    async def scenario() -> Master:
        master = Master(control, "rel", kafka_bootstrap, [], lookback_seconds=30)
        run = asyncio.create_task(master.run())
        beat = encode_message(_beat("after", 1))
        await produce_kafka(kafka_bootstrap, control, [(None, beat, [])])
        try:
            await until(
                lambda: run.done() or "after" in master.state.instances, 30, "the heartbeat"
            )
            assert not run.done(), f"the master stopped: {run.exception()!r}"
        finally:
            master.stop()
            await asyncio.gather(run, return_exceptions=True)
        return master

    master = asyncio.run(scenario())
    assert master.invalid_messages >= 1


# ---- the control topic and the lock service port ---------------------------------------------


def _beat(instance: str, count: int) -> Any:
    import time

    from fogverse.autoscale.messages import Heartbeat

    ts = time.time()
    return Heartbeat(instance, ts, "out", count, ts - 1, 1.0, "in", "g")


def _control_garbage(rng: random.Random, n: int) -> list[bytes]:

    from fogverse.autoscale.messages import encode_message

    valid = encode_message(_beat("x", 1))
    makers = [
        lambda: rng.randbytes(rng.randint(0, 200)),
        lambda: _mutate(rng, valid),
        lambda: valid[: rng.randrange(len(valid))],
        lambda: b"[" * rng.randint(1, 200_000),
        lambda: json.dumps(
            {
                **json.loads(valid),
                rng.choice(["ts", "v", "type", "total_messages"]): rng.choice(
                    [None, "x", -1, 2**80, 1e308, [], {}, True]
                ),
            }
        ).encode(),
        lambda: json.dumps(rng.choice([[], "s", 1, None, {"v": 1}])).encode(),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_generated_garbage_on_the_control_topic_never_stops_the_master(kafka_bootstrap, new_topic):

    from fogverse.autoscale import Master
    from fogverse.autoscale.messages import encode_message

    control = new_topic()
    rng = random.Random(5)
    garbage = _control_garbage(rng, 2000)
    values: list[bytes] = []
    for k, g in enumerate(garbage):
        values.append(g)
        if k % 20 == 0:
            values.append(encode_message(_beat(f"ctl-{k}", k)))
    beats = {f"ctl-{k}" for k in range(0, len(garbage), 20)}
    seen: set[str] = set()

    class Recorder:
        def on_message(self, message: Any) -> None:
            seen.add(message.instance_id)

    async def scenario() -> Master:
        master = Master(control, "rel", kafka_bootstrap, [Recorder()], lookback_seconds=60)
        run = asyncio.create_task(master.run())
        await produce_kafka(kafka_bootstrap, control, [(None, v, []) for v in values])
        try:
            await until(lambda: run.done() or beats <= seen, 60, "every valid heartbeat")
            await until(
                lambda: run.done() or master.messages + master.invalid_messages >= len(values),
                30,
                "every control message",
            )
            assert not run.done(), f"the master stopped: {run.exception()!r}"
        finally:
            master.stop()
            await asyncio.gather(run, return_exceptions=True)
        return master

    master = asyncio.run(scenario())
    assert master.messages + master.invalid_messages == len(values)
    assert master.invalid_messages >= len(garbage) * 0.9
    print(
        f"\ncontrol topic: {len(values)} messages, {master.invalid_messages} refused as "
        f"invalid, {master.messages} valid; the master never stopped"
    )


def test_garbage_at_the_lock_port_while_nodes_join(kafka_bootstrap, new_topic):
    """Thousands of connections sending random bytes and malformed frames to the lock
    service while two nodes join their group through it: both join, nothing is lost."""
    from fogverse.autoscale.lock import LockClient, LockServer
    from fogverse.partitions import ConsumerStart

    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    tally = Tally("hostile input at the lock service port during dynamic-partition joins")
    rng = random.Random(3)
    n = 300

    async def flood(port: int, count: int) -> int:
        sent = 0
        for _ in range(count):
            data = rng.choice(
                [
                    rng.randbytes(rng.randint(1, 64)),
                    struct.pack(">I", rng.randint(0, 2**32 - 1)) + rng.randbytes(8),
                    struct.pack(">I", 11) + b'{"op":"acq',
                    struct.pack(">I", 2) + b"\xff\xfe",
                ]
            )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                await writer.drain()
                writer.close()
                sent += 1
            except OSError:
                pass
        return sent

    async def scenario() -> int:
        server = LockServer("127.0.0.1", 0)
        await server.start()
        nodes = []
        tasks = []
        try:
            floods = [asyncio.create_task(flood(server.port, 500)) for _ in range(4)]
            await produce_kafka(
                kafka_bootstrap,
                src,
                [(None, f"m{i}".encode(), [("id", str(i).encode())]) for i in range(n)],
            )
            tally.sent.update(range(n))
            async with Reader(kafka_bootstrap, {out: tally.out}):
                for _ in range(2):
                    node = Consumer(src, kafka_bootstrap, group, producer_topic=out)
                    node.dynamic_partitions = ConsumerStart(
                        kafka_bootstrap, 0.5, "127.0.0.1", server.port, lock_lease=5.0
                    )
                    nodes.append(node)
                    tasks.append(asyncio.create_task(node.run()))
                await until(lambda: tally.sent <= tally.out.keys(), 60, "every message")
            sent = sum(await asyncio.gather(*floods))
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            # The service still grants locks to a well-behaved client.
            async with LockClient("127.0.0.1", server.port) as client:
                grant = await client.acquire("after-the-flood", lease=1, timeout=5)
                await client.release(grant)
            return sent
        finally:
            for node in nodes:
                node.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.stop()

    sent = asyncio.run(scenario())
    tally.notes = f"{sent} garbage connections during the joins; both nodes joined"
    tally.report()
    tally.assert_nothing_lost()
