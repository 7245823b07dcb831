"""Every ``python`` example in the README and the guides runs, so no example rots.

The blocks of one page run in order in one namespace, as a reader would type them. Nodes run
on the in-memory broker (``FOGVERSE_BOOTSTRAP=memory://...``): Kafka is not the point of an
example, and FogVerse's Kafka behaviour is tested against the real broker elsewhere. The
current directory holds a stand-in ``yolov8n.onnx`` (a one-class model in the YOLOv8 layout),
so the detection examples run their real code paths.

``fogverse.run`` is replaced by a bounded run: it runs the same nodes, feeds a few JPEG frames
to the input topics of a pipeline that has no producer of its own, and stops the nodes once
every input has been processed and committed (or when they stop themselves). A dead letter
fails the example.

A block that cannot run here starts with a ``# not run: <why>`` comment, visible on the page.
"""

from __future__ import annotations

import ast
import asyncio
import re
import shutil
import textwrap
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from onnx_models import square_finder

import fogverse
import fogverse.app
from fogverse import MemoryBroker

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
NOT_RUN = "# not run:"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_NODE_ENV = ("CONSUMER_SERVERS", "PRODUCER_SERVERS", "CONSUMER_TOPIC", "PRODUCER_TOPIC")
_GROUP_ENV = ("GROUP_ID", "CLIENT_ID", "FOGVERSE_PROFILE")


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(line, code)`` of each fenced ``python``/``py`` block, dedented (blocks may sit in
    list items)."""
    blocks: list[tuple[int, str]] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m["lang"]:
            i += 1
            continue
        start, indent = i, m["indent"]
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        if m["lang"] in ("python", "py"):
            text = "\n".join(b[len(indent) :] if b.startswith(indent) else b for b in body)
            blocks.append((start + 1, textwrap.dedent(text)))
    return blocks


def _runs(code: str) -> bool:
    return not code.lstrip().startswith(NOT_RUN)


def _pages_with_examples() -> list[Path]:
    return [p for p in PAGES if python_blocks(p)]


def _pages_that_run() -> list[Path]:
    return [p for p in PAGES if any(_runs(code) for _, code in python_blocks(p))]


def _frame_jpeg(i: int) -> bytes:
    frame = np.full((360, 640, 3), 40, np.uint8)
    cv2.rectangle(frame, (100 + i * 10, 80), (220 + i * 10, 200), (0, 0, 255), -1)
    ok, buf = cv2.imencode(".jpg", frame)
    assert ok
    return buf.tobytes()


def _node_of(item: Any) -> tuple[Any, Any]:
    """(node, awaitable) for a node or a node's ``run(...)`` coroutine."""
    if asyncio.iscoroutine(item):
        return item.cr_frame.f_locals.get("self"), item
    return item, item.run()


def _is_consumer(node: Any) -> bool:
    return bool(getattr(node, "consumer_topic", None))


def _broker(node: Any) -> MemoryBroker:
    return MemoryBroker.for_servers(node.consumer_servers)


def _settled(consumers: list[Any]) -> bool:
    for node in consumers:
        broker = _broker(node)
        group = broker.groups.get(node.group_id)
        for topic in node.consumer_topic:
            parts = broker.topics.get(topic)
            if not parts or not any(parts) or group is None:
                return False
            if any(group.committed.get((topic, p), 0) < len(log) for p, log in enumerate(parts)):
                return False
    return True


def bounded_run(*nodes_or_coros: Any) -> None:
    """What ``fogverse.run`` does for an example: run the nodes together, then stop them once
    everything they were given has been processed and committed."""

    async def main() -> None:
        # Each run has its own event loop, and a broker's change event binds to the loop
        # that first waits on it: give the brokers earlier examples used a fresh one.
        for broker in MemoryBroker._registry.values():
            broker._notify()
        entries = [_node_of(item) for item in nodes_or_coros]
        tasks = [(node, asyncio.ensure_future(aw)) for node, aw in entries]
        consumers = [node for node, _ in tasks if _is_consumer(node)]
        producers = [task for node, task in tasks if not _is_consumer(node)]
        if not producers:
            for node in consumers:
                for topic in node.consumer_topic:
                    broker = _broker(node)
                    if not broker.records(topic):
                        for i in range(3):
                            key = str(i).encode()
                            broker.append(topic, _frame_jpeg(i), key, [("cam", b"0")])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        pending = [task for _, task in tasks]
        while any(not t.done() for t in pending):
            for t in pending:
                if t.done() and t.exception() is not None:
                    for node, _ in tasks:
                        node.stop()
                    raise t.exception()
            if all(t.done() for t in producers) and _settled(consumers):
                for node, _ in tasks:
                    node.stop()
                break
            assert loop.time() < deadline, "the example's nodes did not finish their inputs"
            await asyncio.wait([t for t in pending if not t.done()], timeout=0.1)
        await asyncio.gather(*pending)
        for node in consumers:
            broker = _broker(node)
            for topic in list(broker.topics):
                if topic.endswith(".dlq") and broker.records(topic):
                    headers = dict(broker.records(topic)[0].headers)
                    pytest.fail(f"the example dead-lettered input: {headers}")

    asyncio.run(main())


@pytest.fixture
def example_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"docs-{uuid.uuid4().hex[:8]}"
    MemoryBroker.reset()
    monkeypatch.setenv("FOGVERSE_BOOTSTRAP", f"memory://{name}")
    for var in (*_NODE_ENV, *_GROUP_ENV):
        monkeypatch.delenv(var, raising=False)
    shutil.copy(square_finder(), tmp_path / "yolov8n.onnx")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fogverse, "run", bounded_run)
    monkeypatch.setattr(fogverse.app, "run", bounded_run)
    yield name
    MemoryBroker.reset()


def test_the_not_run_convention_is_rare_and_says_why() -> None:
    """Examples that cannot run here stay few, and each one says why on the page."""
    skipped = []
    total = 0
    for page in _pages_with_examples():
        for line, code in python_blocks(page):
            total += 1
            first = code.lstrip().splitlines()[0]
            if not _runs(code):
                assert len(first) > len(NOT_RUN) + 8, f"{page.name}:{line} gives no reason"
                skipped.append(f"{page.name}:{line}")
    assert total >= 15, total
    assert len(skipped) <= total // 3, skipped


@pytest.mark.parametrize("page", _pages_that_run(), ids=lambda p: p.name)
def test_every_python_example_on_the_page_runs(page: Path, example_world: str) -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for line, code in python_blocks(page):
        if not _runs(code):
            continue
        compiled = compile(
            code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        result = eval(compiled, namespace)
        if asyncio.iscoroutine(result):
            asyncio.run(asyncio.wait_for(result, 90))
