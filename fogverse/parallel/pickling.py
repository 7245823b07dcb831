"""Pickling the processor once per pool, and naming what in it cannot be pickled."""

from __future__ import annotations

from typing import Any

import cloudpickle

from fogverse.parallel.errors import ProcessorPickleError
from fogverse.processor import Processor

__all__ = ["pickle_processor"]


def pickle_processor(processor: Processor) -> bytes:
    try:
        return cloudpickle.dumps(processor, protocol=5)
    except Exception as exc:
        path, culprit, cause = _find_unpicklable(processor, "", exc, 0)
        raise ProcessorPickleError(path or "<processor>", type(culprit).__name__, cause) from exc


def _find_unpicklable(
    obj: Any, path: str, cause: BaseException, depth: int
) -> tuple[str, Any, BaseException]:
    """Descend into the first attribute (or item) that fails to pickle on its own."""
    if depth > 6:
        return path, obj, cause
    children: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    else:
        attrs = dict(getattr(obj, "__dict__", None) or {})
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                attrs[name] = getattr(obj, name)
        children = [(f"{path}.{k}" if path else k, v) for k, v in attrs.items()]
    for child_path, value in children:
        try:
            cloudpickle.dumps(value, protocol=5)
        except Exception as exc:
            return _find_unpicklable(value, child_path, exc, depth + 1)
    return path, obj, cause
