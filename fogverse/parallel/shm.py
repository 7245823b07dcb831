"""Shared-memory regions and the payload format that crosses them.

A :class:`SharedRegion` is an anonymous Linux memfd mapped into the process. Its file
descriptor travels to a worker over a Unix socket (``SCM_RIGHTS``), so nothing ever appears in
``/dev/shm``, no resource tracker is involved, and the kernel frees the memory when the last
descriptor and mapping are gone, even after a crash.

A payload is written into a region as::

    header | table of (offset, length) per buffer | pickle metadata | 64-byte aligned buffers

Values are pickled with protocol 5 and out-of-band buffers, so ndarrays (alone or nested in
tuples, lists and dicts) are copied once into the region and come back out as zero-copy views;
only the small metadata blob is pickled. Top-level ``bytes``/``bytearray``/``memoryview`` are
copied raw and read back as ``bytes``.

Security: these pickles only ever travel between a pool and its own worker processes, through
memory and sockets that the pool created. Never feed network bytes to :func:`read`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import struct
import weakref
from typing import Any

import numpy as np

__all__ = [
    "ALIGN",
    "INLINE_MAX",
    "NO_REGION",
    "Encoded",
    "SharedRegion",
    "align",
    "encode",
    "extent",
    "measure",
    "pack",
    "read",
    "write",
]

ALIGN = 64
"""Buffers start at multiples of this many bytes (cache lines; SIMD-friendly)."""

_KIND_NONE = 0
_KIND_PICKLE = 1
_KIND_BYTES = 2
_KIND_NDARRAY = 3

# dtypes whose ``dtype.str`` round-trips; others (structured, object) take the pickle path.
_FAST_KINDS = frozenset("biufcmMSU")
_dtype_cache: dict[bytes, np.dtype[Any]] = {}

# kind, number of buffers, metadata length, end (absolute offset just past the payload)
_HEAD = struct.Struct("<BxxxIQQ")
_ENTRY_SIZE = 16
_PAGE = mmap.PAGESIZE


_EMPTY_VIEW = memoryview(b"")


_TABLES = [struct.Struct(f"<{2 * n}Q") for n in range(9)]


def _table(count: int) -> struct.Struct:
    return _TABLES[count] if count < len(_TABLES) else struct.Struct(f"<{2 * count}Q")


def align(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) & -ALIGN


_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_shared(fd: int, size: int) -> tuple[memoryview, int]:
    # mmap.mmap would keep a duplicate of the descriptor for as long as the mapping lives (one
    # descriptor per slot in every worker); mapping through libc keeps none.
    address = _mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    owner = (ctypes.c_char * size).from_address(address)
    # Unmapped when the last view (memoryview slice, ndarray built on one) lets go of it;
    # never explicitly, since numpy keeps a reference to a buffer's owner, not an export.
    weakref.finalize(owner, _munmap, address, size).atexit = False
    return memoryview(owner).cast("B"), address


class SharedRegion:
    """An anonymous shared-memory file mapped read-write into this process.

    ``view`` is a memoryview of the whole mapping and ``address`` its start address. The
    mapping goes away with the last view of it, never before, so arrays handed out stay valid.
    """

    __slots__ = ("address", "fd", "size", "view")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.view, self.address = _map_shared(fd, size)

    @classmethod
    def create(cls, size: int, name: str = "fogverse") -> SharedRegion:
        """A new zero-filled region of at least ``size`` bytes (rounded up to whole pages)."""
        size = max(_PAGE, -(-size // _PAGE) * _PAGE)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> SharedRegion:
        """Map a region received from another process; takes ownership of ``fd`` and closes it."""
        try:
            region = cls(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        region.fd = -1
        return region

    def close(self) -> None:
        """Close the descriptor and drop this object's view of the mapping. Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.view = _EMPTY_VIEW


NO_REGION = SharedRegion.__new__(SharedRegion)
"""Stands for a region not created yet: size 0, no descriptor, nothing mapped."""
NO_REGION.fd, NO_REGION.size, NO_REGION.view, NO_REGION.address = -1, 0, _EMPTY_VIEW, 0


class Encoded:
    """A value split into pickle metadata and the raw buffers that travel beside it.

    ``private`` says the buffers are memory the value owns (``bytes``, ``bytearray``), which
    cannot alias a shared-memory region, so :func:`write` need not check.
    """

    __slots__ = ("buffers", "kind", "meta", "private")

    def __init__(
        self, kind: int, meta: bytes, buffers: list[memoryview], private: bool = False
    ) -> None:
        self.kind = kind
        self.meta = meta
        self.buffers = buffers
        self.private = private


_NONE = Encoded(_KIND_NONE, b"", [], True)

INLINE_MAX = 2048
"""Values that pickle to at most this many bytes (with no out-of-band buffer) travel inside the
task's frame instead of a slot: for them the slot's header, table and two copies cost more
than the pickle itself."""

_SCALARS = frozenset((int, float, bool, complex, type(None)))
_SIZED = frozenset((str, bytes))


def pack(value: Any) -> bytes | Encoded:
    """``value`` pickled whole when that is small (``<= INLINE_MAX`` bytes), else its
    :func:`encode` for a slot. Raises whatever pickling raises."""
    cls = type(value)
    if cls in _SCALARS:
        return pickle.dumps(value, protocol=5)
    if cls in _SIZED:
        if len(value) <= INLINE_MAX:
            small = pickle.dumps(value, protocol=5)
            if len(small) <= INLINE_MAX:
                return small
        return encode(value)
    enc = encode(value)
    if enc.kind == _KIND_PICKLE and not enc.buffers and len(enc.meta) <= INLINE_MAX:
        return enc.meta
    return enc


def encode(value: Any) -> Encoded:
    """Split ``value`` for :func:`write`. Raises whatever pickling raises."""
    if value is None:
        return _NONE
    cls = type(value)
    if cls is np.ndarray and value.flags.c_contiguous and value.dtype.kind in _FAST_KINDS:
        # A lone array is the common case (a frame, a tensor): skip pickle on both sides.
        meta = struct.pack(f"<B{value.ndim}q", value.ndim, *value.shape) + value.dtype.str.encode()
        return Encoded(_KIND_NDARRAY, meta, [memoryview(value.reshape(-1).view(np.uint8))])
    if cls is bytes or cls is bytearray:
        return Encoded(_KIND_BYTES, b"", [memoryview(value)], True)
    if cls is memoryview:
        view = value if value.c_contiguous else memoryview(value.tobytes())
        return Encoded(_KIND_BYTES, b"", [view.cast("B")])
    pickled: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=pickled.append)
    return Encoded(_KIND_PICKLE, meta, [p.raw() for p in pickled])


def measure(enc: Encoded) -> int:
    """Bytes :func:`write` needs at an aligned offset when nothing is referenced in place."""
    pos = _HEAD.size + _ENTRY_SIZE * len(enc.buffers) + len(enc.meta)
    for buf in enc.buffers:
        pos = align(pos) + buf.nbytes
    return pos


def _address(buf: memoryview) -> int:
    if not buf.readonly:
        probe = ctypes.c_char.from_buffer(buf)
        return ctypes.addressof(probe)
    return int(np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0])


def write(
    view: memoryview, offset: int, enc: Encoded, region_address: int = 0, keep_below: int = 0
) -> int:
    """Write ``enc`` into ``view`` at ``offset`` (a multiple of :data:`ALIGN`) if it fits.

    Returns the end offset; the payload was written only if that is ``<= len(view)``.
    ``region_address`` is the address of ``view`` (0: sources never alias it). A buffer lying
    wholly in ``view[:keep_below]`` is not copied: the table points at it where it is. Any
    other buffer that overlaps ``view`` is first copied aside, so writing never reads bytes it
    has already overwritten.
    """
    buffers = enc.buffers
    meta = enc.meta
    count = len(buffers)
    pos = offset + _HEAD.size + _ENTRY_SIZE * count + len(meta)
    entries: list[int] = []
    sources: list[Any] = []
    region_end = region_address + len(view)
    if enc.private:
        region_address = 0
    for buf in buffers:
        size = buf.nbytes
        source: memoryview | bytes = buf
        if region_address and size:
            addr = _address(buf)
            if addr < region_end and addr + size > region_address:
                rel = addr - region_address
                if rel >= 0 and rel + size <= keep_below:
                    entries += (rel, size)
                    continue
                source = bytes(buf)
        pos = align(pos)
        entries += (pos, size)
        sources.append((pos, size, source))
        pos += size
    if pos > len(view):
        return pos
    _HEAD.pack_into(view, offset, enc.kind, count, len(meta), pos)
    if count:
        _table(count).pack_into(view, offset + _HEAD.size, *entries)
    at = offset + _HEAD.size + _ENTRY_SIZE * count
    view[at : at + len(meta)] = meta
    for at, size, buf in sources:
        view[at : at + size] = buf
    return pos


def extent(view: memoryview, offset: int = 0) -> int:
    """The end offset recorded by the :func:`write` at ``offset``."""
    return _HEAD.unpack_from(view, offset)[3]


def read(view: memoryview, offset: int = 0) -> Any:
    """The value written at ``offset``; arrays in it are zero-copy views of ``view``."""
    kind, count, meta_len, _end = _HEAD.unpack_from(view, offset)
    if kind == _KIND_NONE:
        return None
    at = offset + _HEAD.size
    entries = _table(count).unpack_from(view, at)
    at += _ENTRY_SIZE * count
    if kind == _KIND_NDARRAY:
        meta = bytes(view[at : at + meta_len])
        ndim = meta[0]
        shape = struct.unpack_from(f"<{ndim}q", meta, 1)
        code = meta[1 + 8 * ndim :]
        dtype = _dtype_cache.get(code)
        if dtype is None:
            dtype = _dtype_cache[code] = np.dtype(code.decode())
        return np.ndarray(shape, dtype, buffer=view, offset=entries[0])
    if kind == _KIND_BYTES:
        start, size = entries
        return bytes(view[start : start + size])
    if kind != _KIND_PICKLE:
        raise ValueError(f"corrupt payload header (kind {kind})")
    buffers = [view[entries[i] : entries[i] + entries[i + 1]] for i in range(0, 2 * count, 2)]
    return pickle.loads(view[at : at + meta_len], buffers=buffers)
