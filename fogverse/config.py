"""Where a node's settings come from: environment, constructor, attributes, defaults.

The seed's users configure nodes by setting attributes before calling ``__init__`` and by
environment variables (CONSUMER_TOPIC, CONSUMER_SERVERS, PRODUCER_TOPIC, PRODUCER_SERVERS,
GROUP_ID, CLIENT_ID) at deploy time, so the environment wins: one image, many deployments.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEFAULT_SERVERS", "default_servers", "resolve", "split_topics"]

DEFAULT_SERVERS = "localhost:9092"

_UNSET: Any = object()


def resolve(
    obj: object, attr: str, arg: Any = None, *, env: str | None = None, default: Any = None
) -> Any:
    """Environment variable > constructor argument > attribute preset on ``obj`` > default."""
    if env is not None:
        value = os.environ.get(env)
        if value:
            return value
    if arg is not None:
        return arg
    preset = getattr(obj, attr, _UNSET)
    if preset is not _UNSET and preset is not None:
        return preset
    return default


def default_servers() -> str:
    """FOGVERSE_BOOTSTRAP (set by ``fogverse broker start`` users and CI) or localhost."""
    return os.environ.get("FOGVERSE_BOOTSTRAP") or DEFAULT_SERVERS


def split_topics(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return [str(t) for t in value]
