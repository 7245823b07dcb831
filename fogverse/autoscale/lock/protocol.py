"""Wire format of the lock service: length-prefixed JSON frames and the message schema.

A frame is a 4-byte big-endian body length followed by a UTF-8 JSON object. Every request is
``{"v": 1, "op": ..., "id": n, ...}`` and every reply is ``{"v": 1, "id": n, "ok": bool, ...}``;
a failed reply carries ``"error"`` (a code from :class:`ErrorCode`) and ``"detail"`` (text).

Requests:

========  ===================================================  ==============================
op        fields                                               ok reply adds
========  ===================================================  ==============================
hello     ``token`` (str, optional), ``client`` (str, opt.)    ``ops``, server limits
acquire   ``name``, ``lease_ms`` (opt.), ``wait_ms`` (opt.,    ``name``, ``fence``,
          null or absent = wait until granted)                 ``lease_ms``
renew     ``name``, ``fence``, ``lease_ms`` (opt.)             ``lease_ms``
release   ``name``, ``fence``                                  --
cancel    ``acquire_id`` (id of this connection's acquire)     ``withdrawn`` (bool)
ping      --                                                   --
========  ===================================================  ==============================

``cancel`` withdraws an acquire that is still queued: the acquire is answered first, with error
``cancelled``, so every acquire gets exactly one reply. An acquire already answered (granted,
timed out) is left alone and ``withdrawn`` is false; a grant the caller no longer wants is given
back with ``release``. The hello reply lists the server's ``ops``: a client sends ``cancel``
only to a server that lists it (older ones close the connection on an unknown op).
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER",
    "MAX_ID",
    "MAX_NAME_CHARS",
    "MAX_TOKEN_CHARS",
    "OPS",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameTimeout",
    "FrameTooLarge",
    "IdleTimeout",
    "ProtocolError",
    "Request",
    "check_text",
    "decode_body",
    "encode_frame",
    "error_reply",
    "ok_reply",
    "parse_request",
    "read_frame",
    "seconds_to_ms",
]

PROTOCOL_VERSION: Final = 1
HEADER: Final = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024
MAX_NAME_CHARS: Final = 256
MAX_TOKEN_CHARS: Final = 1024
# Largest id/fence/duration accepted: JSON numbers beyond 2**53 lose precision in many clients.
MAX_ID: Final = 2**53 - 1
OPS: Final = frozenset({"hello", "acquire", "renew", "release", "cancel", "ping"})


class ErrorCode(StrEnum):
    """Machine-readable ``error`` values of a failed reply."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    FRAME_TIMEOUT = "frame_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    AUTH_REQUIRED = "auth_required"
    AUTH_FAILED = "auth_failed"
    TIMEOUT = "timeout"
    NOT_HELD = "not_held"
    CANCELLED = "cancelled"
    TOO_MANY_PENDING = "too_many_pending"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A frame or message that breaks the protocol; the connection is closed after the reply."""

    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(
        self, detail: str, *, code: ErrorCode | None = None, request_id: int | None = None
    ) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code
        self.detail = detail
        self.request_id = request_id


class FrameTooLarge(ProtocolError):
    code = ErrorCode.FRAME_TOO_LARGE


class FrameTimeout(ProtocolError):
    code = ErrorCode.FRAME_TIMEOUT


class IdleTimeout(ProtocolError):
    code = ErrorCode.IDLE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request; fields an op does not use are None."""

    op: str
    id: int
    name: str | None = None
    fence: int | None = None
    lease_ms: int | None = None
    wait_ms: int | None = None
    token: str | None = None
    client: str | None = None
    acquire_id: int | None = None


def encode_frame(message: Mapping[str, Any], *, max_frame_bytes: int | None = None) -> bytes:
    """Serialise ``message`` into one frame (header + body)."""
    # ASCII output: escapes cannot fail to encode, whatever strings a peer managed to send.
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii")
    if max_frame_bytes is not None and len(body) > max_frame_bytes:
        raise FrameTooLarge(f"frame body of {len(body)} bytes exceeds {max_frame_bytes}")
    return HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a frame body into a JSON object, or raise :class:`ProtocolError`."""
    try:
        text = body.decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"body is not UTF-8: {exc.reason}", code=ErrorCode.BAD_JSON) from None
    except (ValueError, RecursionError) as exc:
        # RecursionError: deeply nested arrays; ValueError also covers over-long integers.
        raise ProtocolError(f"body is not JSON: {exc}", code=ErrorCode.BAD_JSON) from None
    if not isinstance(obj, dict):
        raise ProtocolError("body must be a JSON object", code=ErrorCode.BAD_REQUEST)
    return obj


async def read_frame(
    reader: asyncio.StreamReader,
    *,
    max_frame_bytes: int,
    idle_timeout: float | None = None,
    frame_timeout: float | None = None,
) -> bytes:
    """Read one frame body.

    ``idle_timeout`` bounds the wait for the first byte of a frame; ``frame_timeout`` bounds the
    rest of it, so a peer that drips a frame byte by byte cannot hold the connection. The length
    is checked before any of the body is read. A clean end of stream between frames raises
    :class:`EOFError`; one inside a frame raises :class:`asyncio.IncompleteReadError`.
    """
    try:
        async with asyncio.timeout(idle_timeout):
            first = await reader.read(1)
    except TimeoutError:
        raise IdleTimeout(f"no frame started within {idle_timeout:g} s") from None
    if not first:
        raise EOFError("connection closed")
    try:
        async with asyncio.timeout(frame_timeout):
            (length,) = HEADER.unpack(first + await reader.readexactly(HEADER.size - 1))
            if length > max_frame_bytes:
                raise FrameTooLarge(f"frame body of {length} bytes exceeds {max_frame_bytes}")
            return await reader.readexactly(length)
    except TimeoutError:
        raise FrameTimeout(f"frame not completed within {frame_timeout:g} s") from None


def _int_field(obj: Mapping[str, Any], key: str, *, required: bool, minimum: int) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"missing field {key!r}")
        return None
    # bool is an int subclass; JSON true must not pass for 1.
    if type(value) is not int or not minimum <= value <= MAX_ID:
        raise ProtocolError(f"field {key!r} must be an integer in [{minimum}, {MAX_ID}]")
    return value


def check_text(value: object, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """Return ``value`` if it is a string the protocol accepts, else raise ValueError."""
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise ValueError(f"{what} must be a string of 1..{max_chars} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON lets "\ud800" through; a lone surrogate is not text and cannot be re-encoded.
            raise ValueError(f"{what} is not valid Unicode") from None
    return value


def _str_field(
    obj: Mapping[str, Any], key: str, *, required: bool, max_chars: int = MAX_NAME_CHARS
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"missing field {key!r}")
        return None
    try:
        return check_text(value, f"field {key!r}", max_chars)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def parse_request(obj: Mapping[str, Any]) -> Request:
    """Validate a decoded request. Unknown extra fields are ignored (forward compatibility)."""
    raw_id = obj.get("id")
    request_id = raw_id if type(raw_id) is int and 0 <= raw_id <= MAX_ID else None
    try:
        version = obj.get("v")
        if type(version) is not int:
            raise ProtocolError("field 'v' must be an integer")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {version} not supported (server speaks {PROTOCOL_VERSION})",
                code=ErrorCode.UNSUPPORTED_VERSION,
            )
        if request_id is None:
            raise ProtocolError(f"field 'id' must be an integer in [0, {MAX_ID}]")
        op = obj.get("op")
        if not isinstance(op, str):
            raise ProtocolError("field 'op' must be a string")
        if op not in OPS:
            raise ProtocolError(f"unknown op {op[:40]!r}", code=ErrorCode.UNKNOWN_OP)
        if op == "hello":
            return Request(
                op,
                request_id,
                token=_str_field(obj, "token", required=False, max_chars=MAX_TOKEN_CHARS),
                client=_str_field(obj, "client", required=False),
            )
        if op == "ping":
            return Request(op, request_id)
        if op == "cancel":
            acquire_id = _int_field(obj, "acquire_id", required=True, minimum=0)
            return Request(op, request_id, acquire_id=acquire_id)
        name = _str_field(obj, "name", required=True)
        if op == "acquire":
            return Request(
                op,
                request_id,
                name=name,
                lease_ms=_int_field(obj, "lease_ms", required=False, minimum=1),
                wait_ms=_int_field(obj, "wait_ms", required=False, minimum=0),
            )
        fence = _int_field(obj, "fence", required=True, minimum=0)
        lease_ms = _int_field(obj, "lease_ms", required=False, minimum=1) if op == "renew" else None
        return Request(op, request_id, name=name, fence=fence, lease_ms=lease_ms)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def ok_reply(request_id: int | None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, **fields}


def error_reply(request_id: int | None, code: ErrorCode, detail: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": str(code),
        "detail": detail,
    }


def seconds_to_ms(seconds: float) -> int:
    """Round a duration up to whole milliseconds (at least 1) for the wire."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be a positive finite number of seconds, got {seconds!r}")
    return min(MAX_ID, max(1, math.ceil(seconds * 1000)))
