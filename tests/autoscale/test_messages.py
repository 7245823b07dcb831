"""Control messages: versioned JSON that round-trips, and strict parsing of everything else."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogverse.autoscale.messages import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    Announce,
    AutoScaleRequest,
    DeployEvent,
    DeploySpec,
    Heartbeat,
    InvalidMessage,
    encode_message,
    parse_message,
)

NOW = time.time()


def _heartbeat(**overrides: object) -> bytes:
    d = {
        "v": SCHEMA_VERSION,
        "type": "heartbeat",
        "instance_id": "n-1",
        "ts": NOW,
        "since": NOW - 1,
        "interval": 1.0,
        "target_topic": "out",
        "total_messages": 3,
        "source_topic": "in",
        "group_id": "g",
        "final": False,
    }
    d.update(overrides)
    return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "message",
    [
        Heartbeat("n-1", NOW, "out", 5, NOW - 1, 0.5, "in", "g"),
        Heartbeat("n-1", NOW, None, 0, NOW, 1.0, final=True),
        AutoScaleRequest(
            "n-1", NOW, "in", "out", DeploySpec("LOCAL", "svc", 3, {"a": [1, 2]}), "g"
        ),
        Announce("n-1", NOW, "in", "out", "g", 0.5, "host", 123),
        DeployEvent("svc-1", NOW, "in", "out", "deploy", "LOCAL", "svc"),
        DeployEvent("svc-2", NOW, "in", "out", "stop", reason="lag wants 1; has 2"),
    ],
)
def test_messages_round_trip_with_version_instance_id_and_utc_epoch(message: object) -> None:
    raw = encode_message(message)  # type: ignore[arg-type]
    d = json.loads(raw)
    # Epoch seconds as given (NOW is taken at collection, possibly minutes before this runs).
    assert d["v"] == SCHEMA_VERSION and d["instance_id"] and abs(d["ts"] - NOW) < 1e-3
    assert parse_message(raw) == message


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (_heartbeat(v=2), "unsupported schema version 2"),
        (_heartbeat(v=...), "unsupported schema version None"),
        (_heartbeat(v=True), "unsupported schema version"),
        (_heartbeat(v="1"), "unsupported schema version"),
        (_heartbeat(type="shutdown"), "unknown message type"),
        (_heartbeat(type=...), "unknown message type"),
        (_heartbeat(instance_id=...), "missing field 'instance_id'"),
        (_heartbeat(instance_id=7), "'instance_id' must be a non-empty string"),
        (_heartbeat(instance_id=""), "'instance_id' must be a non-empty string"),
        (_heartbeat(instance_id="x" * 600), "'instance_id' must be a non-empty string"),
        (_heartbeat(ts="yesterday"), "'ts' must be a number"),
        (_heartbeat(ts=True), "'ts' must be a number"),
        (_heartbeat(ts=12.5), "'ts' out of range"),
        (_heartbeat(ts=...), "'ts' must be a number"),
        (_heartbeat(total_messages="3"), "'total_messages' must be an integer"),
        (_heartbeat(total_messages=1.5), "'total_messages' must be an integer"),
        (_heartbeat(total_messages=-1), "'total_messages' out of range"),
        (_heartbeat(total_messages=False), "'total_messages' must be an integer"),
        (_heartbeat(since=NOW + 10), "'since' is after 'ts'"),
        (_heartbeat(interval=0), "'interval' out of range"),
        (_heartbeat(final="yes"), "'final' must be a boolean"),
        (_heartbeat(target_topic=["a"]), "'target_topic' must be a non-empty string"),
        (
            b'{"v":1,"type":"auto_scale_request","instance_id":"a","ts":%d,"source_topic":"s",'
            b'"target_topic":"t","topic_configs":{"provider":"LOCAL","service_name":"x",'
            b'"max_instance":0}}' % int(NOW),
            "'max_instance' out of range",
        ),
        (
            b'{"v":1,"type":"auto_scale_request","instance_id":"a","ts":%d,"source_topic":"s",'
            b'"target_topic":"t","topic_configs":"LOCAL"}' % int(NOW),
            "must be an object",
        ),
        (
            b'{"v":1,"type":"auto_scale_request","instance_id":"a","ts":%d,"source_topic":"s",'
            b'"target_topic":"t","topic_configs":{"provider":"LOCAL","service_name":"x",'
            b'"max_instance":2,"extra_configs":[1]}}' % int(NOW),
            "'extra_configs' must be an object",
        ),
        (
            b'{"v":1,"type":"deploy","instance_id":"a","ts":%d,"source_topic":"s",'
            b'"target_topic":"t","action":"explode"}' % int(NOW),
            "'action' must be",
        ),
        (b'{"v":1,"type":"heartbeat","instance_id":"a","ts":1e400}', "out of range"),
        (b'{"v":1,"type":"heartbeat","instance_id":"a","ts":NaN}', "out of range"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidMessage, match=why):
        parse_message(raw)


def test_none_is_rejected() -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        parse_message(None)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_invalid_message(raw: bytes) -> None:
    with contextlib.suppress(InvalidMessage):
        parse_message(raw)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "type",
                "instance_id",
                "ts",
                "since",
                "total_messages",
                "target_topic",
                "interval",
                "final",
                "topic_configs",
                "source_topic",
                "action",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
    )
)
def test_arbitrary_json_objects_never_raise_anything_but_invalid_message(d: dict) -> None:
    for kind in ("heartbeat", "auto_scale_request", "announce", "deploy"):
        raw = json.dumps({**d, "v": 1, "type": kind}).encode()
        with contextlib.suppress(InvalidMessage):
            parse_message(raw)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("field", ["ts", "since", "interval"])
def test_an_integer_too_large_for_a_float_is_an_invalid_message_not_an_overflow(
    field: str,
) -> None:
    # JSON integers have no size limit (Python parses up to 4300 digits); float() of one
    # with 400 digits raises OverflowError, which the master does not catch.
    raw = _heartbeat(**{field: 0}).replace(
        f'"{field}": 0'.encode(), f'"{field}": 1{"0" * 400}'.encode()
    )
    with pytest.raises(InvalidMessage, match=f"'{field}' out of range"):
        parse_message(raw)
