"""Deploy scripts: how the master starts one more instance of a stage.

A deploy function is ``fn(logger, config: DeployConfig)``, sync (run off the event loop) or
async (awaited). It returns a handle whose ``stop()`` (sync or async) stops the instance it
started, or ``None`` when the deploy failed; a handle whose instance reports under an id of
its own choosing rather than ``instance_id`` (a Deployment's replica) says ``anonymous = True``.
Built-in providers: :class:`LocalDeployer` (a subprocess), :class:`DockerDeployer` (the
``docker`` SDK) and :class:`KubernetesDeployer` (the official ``kubernetes`` client); the last
two import their library only when built.

The command, image or manifest a built-in provider starts comes from the master's own
configuration (selected by ``service_name``), never from the control topic: anyone who can
write to that topic must not be able to make the master run a program of their choosing.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

__all__ = [
    "DeployConfig",
    "DeployFunction",
    "DeployScripts",
    "DockerDeployer",
    "KubernetesDeployer",
    "LocalDeployer",
    "LocalService",
    "build_deploy_scripts",
    "call_deploy_function",
    "stop_handle",
]

logger = logging.getLogger(__name__)


class DeployConfig(TypedDict, total=False):
    """What a deploy function is given: the seed's four keys, then what the master adds."""

    provider: str
    service_name: str
    max_instance: int
    extra_configs: dict[str, Any]
    instance_id: str
    """The id the new instance should report with (``FOGVERSE_INSTANCE_ID``)."""
    source_topic: str
    target_topic: str
    group_id: str | None
    current_instances: int
    control_topic: str | None
    """The master's topic (``FOGVERSE_OBSERVER_TOPIC`` for the new instance)."""
    control_servers: str | None


DeployFunction = Callable[[logging.Logger, DeployConfig], Any]

if TYPE_CHECKING:
    from fogverse.autoscale.deploy.docker import DockerDeployer
    from fogverse.autoscale.deploy.kubernetes import KubernetesDeployer
    from fogverse.autoscale.deploy.local import LocalDeployer, LocalService


class DeployScripts:
    """The deploy functions the master may call, by provider name (``'LOCAL'``, ...)."""

    def __init__(self) -> None:
        self._functions: dict[str, DeployFunction] = {}

    def set_deploy_functions(self, provider: str, fn: DeployFunction) -> None:
        """Register ``fn(logger, DeployConfig)`` for requests whose ``provider`` is
        ``provider``. It returns a handle with ``stop()`` (the master may stop the instance
        later, e.g. on scale-in) or ``None`` when it could not deploy; it may be a plain
        function (run in a thread) or a coroutine function."""
        if not callable(fn):
            raise TypeError(f"the deploy function for {provider!r} is not callable")
        self._functions[provider] = fn

    def get_deploy_function(self, provider: str) -> DeployFunction | None:
        return self._functions.get(provider)

    @property
    def providers(self) -> list[str]:
        return sorted(self._functions)

    def __len__(self) -> int:
        return len(self._functions)


def _is_async(fn: Any) -> bool:
    # An object whose __call__ is a coroutine function counts as async too.
    call = None if inspect.isfunction(fn) else inspect.getattr_static(type(fn), "__call__", None)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


async def call_deploy_function(
    fn: DeployFunction, log: logging.Logger, config: DeployConfig
) -> Any:
    """Await an async deploy function; run a sync one in a thread (it may block for long)."""
    if _is_async(fn):
        result = fn(log, config)
    else:
        result = await asyncio.to_thread(fn, log, config)
    if inspect.isawaitable(result):
        result = await result
    return result


async def stop_handle(handle: Any) -> None:
    """Stop an instance through whatever its deploy function returned."""
    stop = getattr(handle, "stop", None)
    if stop is None and callable(handle):
        stop = handle
    if stop is None:
        raise TypeError(f"deploy handle {handle!r} has no stop()")
    if _is_async(stop):
        await stop()
        return
    result = await asyncio.to_thread(stop)
    if inspect.isawaitable(result):
        await result


def _load_function(path: str) -> DeployFunction:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"deploy function {path!r} must look like 'package.module:function'")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{path} is not callable")
    return fn


def build_deploy_scripts(spec: Mapping[str, Any]) -> DeployScripts:
    """Deploy scripts from configuration (the ``deploy_scripts`` section of ``master.yaml``)::

    LOCAL: {type: local, services: {slow: {command: [python, -m, ...], env: {...}}}}
    DOCKER: {type: docker, base_url: "unix:///var/run/docker.sock", services: {...}}
    K8S: {type: kubernetes, namespace: default, services: {...}}
    MINE: {function: "package.module:deploy"}
    """
    scripts = DeployScripts()
    for provider, entry in spec.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"deploy_scripts.{provider} must be a mapping")
        entry = dict(entry)
        if "function" in entry:
            scripts.set_deploy_functions(provider, _load_function(str(entry.pop("function"))))
            if entry:
                raise ValueError(f"deploy_scripts.{provider}: unexpected keys {sorted(entry)}")
            continue
        kind = entry.pop("type", None)
        if kind == "local":
            from fogverse.autoscale.deploy.local import LocalDeployer as cls
        elif kind == "docker":
            from fogverse.autoscale.deploy.docker import DockerDeployer as cls  # type: ignore[assignment]
        elif kind == "kubernetes":
            from fogverse.autoscale.deploy.kubernetes import (  # type: ignore[assignment]
                KubernetesDeployer as cls,
            )
        else:
            raise ValueError(
                f"deploy_scripts.{provider}: 'type' must be local, docker or "
                f"kubernetes (or give 'function'), not {kind!r}"
            )
        scripts.set_deploy_functions(provider, cls(**entry))
    return scripts


_LAZY = {
    "LocalDeployer": "local",
    "LocalService": "local",
    "DockerDeployer": "docker",
    "KubernetesDeployer": "kubernetes",
}


def __getattr__(name: str) -> Any:
    # Providers load on first use: docker and kubernetes are optional dependencies.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
