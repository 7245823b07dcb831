"""The node's extension point: a :class:`Plugin` rides on a node's lifecycle.

Add-ons (the auto-scaling heartbeats, dynamic partitions, the live view's profiles) attach to a
node through this module and nothing else: the node never imports them. A plugin joins a node
in one of two ways:

- explicitly, ``node.plugins.append(plugin)`` (what ``Observer.attach(node)`` does);
- by discovery: a package names a factory under the ``fogverse.plugins`` entry point group;
  each node calls every factory with itself when it starts, and keeps what it returns (a
  factory returns ``None`` when its environment or the node's settings do not ask for it).
  FogVerse's own add-ons register theirs in its ``pyproject.toml``.

Every hook is optional (the base class's do nothing); the node calls only the ones a plugin
overrides, so a plugin that counts outputs costs nodes without it nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Final

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "discover", "overrides"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "fogverse.plugins"


class Plugin:
    """Hooks a node calls at its lifecycle points; override the ones you need.

    ``node`` is the :class:`~fogverse.Runnable` the plugin rides on. Hooks run on the node's
    event loop; the async ones are awaited in the node's own start and close steps.
    """

    async def on_start(self, node: Any) -> None:
        """Before the node's producer and consumer start (their settings may still change)."""

    async def start_consumer(self, node: Any) -> bool:
        """Start ``node.consumer`` yourself (join its group your own way) and return ``True``,
        or return ``False`` to leave it to the node. The first plugin that returns ``True``
        has started it."""
        return False

    def on_send(self, node: Any, topic: str, count: int) -> None:
        """``count`` records were just handed to the node's producer for ``topic``. Called on
        the hot path: keep it to a few cheap operations, never I/O. An exception here is
        logged; the records were sent all the same."""

    async def on_stop(self, node: Any) -> None:
        """The node is closing: after its consumer stopped, before its producer stops. An
        exception here is logged and does not keep the node from closing."""


def overrides(plugin: Plugin, hook: str) -> bool:
    """Whether ``plugin`` does something at ``hook`` (its class overrides the base's)."""
    return getattr(type(plugin), hook, None) is not getattr(Plugin, hook)


@functools.cache
def _factories() -> tuple[Callable[[Any], Plugin | None], ...]:
    found = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            found.append(ep.load())
        except Exception:
            # A broken add-on must not stop every node in the environment from running.
            logger.exception("plugin factory %s (%s) failed to load; skipped", ep.name, ep.value)
    return tuple(found)


def discover(node: Any, attached: Iterable[Plugin] = ()) -> list[Plugin]:
    """``attached`` followed by what the discovered factories give ``node``, each once."""
    plugins: list[Plugin] = []
    for plugin in [*attached, *(factory(node) for factory in _factories())]:
        if plugin is not None and all(plugin is not p for p in plugins):
            plugins.append(plugin)
    return plugins
