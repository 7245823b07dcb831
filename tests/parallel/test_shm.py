"""Shared-memory regions and the payload format (fogverse/parallel/shm.py)."""

from __future__ import annotations

import gc
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fogverse.parallel import shm


@pytest.fixture
def region():
    r = shm.SharedRegion.create(4 << 20, "fogverse-test")
    yield r
    r.close()


def _shares(array: np.ndarray, region: shm.SharedRegion) -> bool:
    return np.shares_memory(array, np.frombuffer(region.view, np.uint8))


def _roundtrip(region: shm.SharedRegion, value, offset: int = 0):
    enc = shm.encode(value)
    end = shm.write(region.view, offset, enc, region.address)
    assert end <= region.size
    assert end == shm.extent(region.view, offset)
    return shm.read(region.view, offset)


def test_region_is_an_anonymous_memfd_never_in_dev_shm(region):
    target = os.readlink(f"/proc/self/fd/{region.fd}")
    assert target.startswith("/memfd:fogverse-test")
    assert not any("fogverse" in name for name in os.listdir("/dev/shm"))
    assert region.size >= 4 << 20 and region.size % os.sysconf("SC_PAGE_SIZE") == 0


def test_attach_maps_the_same_memory_and_takes_the_fd(region):
    other = shm.SharedRegion.attach(os.dup(region.fd))
    try:
        assert other.fd == -1 and other.size == region.size
        region.view[100:105] = b"hello"
        assert bytes(other.view[100:105]) == b"hello"
    finally:
        other.close()


def _mapped(name: str) -> bool:
    with open("/proc/self/maps") as maps:
        return any(f"memfd:{name}" in line for line in maps)


def test_close_is_idempotent_and_the_mapping_lives_as_long_as_its_views():
    r = shm.SharedRegion.create(4096, "fogverse-views")
    arr = _roundtrip(r, np.arange(10, dtype=np.int64))
    r.close()
    r.close()
    assert r.fd == -1
    assert _mapped("fogverse-views")
    assert arr.tolist() == list(range(10))
    del arr
    gc.collect()
    assert not _mapped("fogverse-views")


@pytest.mark.parametrize(
    "value",
    [
        np.zeros((720, 1280, 3), np.uint8),
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(3.5),
        np.array([1 + 2j, 3 - 1j]),
        np.array(["a", "bcd"]),
        np.arange(3).astype("datetime64[s]"),
        np.zeros(0, np.int16),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(20.0).reshape(4, 5)[:, ::2],  # not contiguous: pickled in-band
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ],
    ids=["frame", "f32", "0d", "complex", "str", "datetime", "empty", "fortran", "strided", "rec"],
)
def test_arrays_round_trip_with_dtype_and_shape(region, value):
    out = _roundtrip(region, value)
    assert type(out) is np.ndarray
    assert out.dtype == value.dtype and out.shape == value.shape
    np.testing.assert_array_equal(out, value)


def test_contiguous_arrays_come_back_as_writable_zero_copy_views(region):
    out = _roundtrip(region, np.arange(1000, dtype=np.int32))
    assert _shares(out, region)
    assert out.flags.writeable
    out[0] = 42
    assert shm.read(region.view)[0] == 42


def test_nested_structures_carry_their_arrays_out_of_band(region):
    a, b = np.ones((100, 100), np.float32), np.arange(50_000, dtype=np.uint8)
    value = {"boxes": (a, [b, "label"]), "n": 7}
    enc = shm.encode(value)
    assert len(enc.buffers) == 2 and len(enc.meta) < 1000  # the data is not in the pickle
    out = _roundtrip(region, value)
    assert out["n"] == 7 and out["boxes"][1][1] == "label"
    np.testing.assert_array_equal(out["boxes"][0], a)
    np.testing.assert_array_equal(out["boxes"][1][0], b)
    assert _shares(out["boxes"][0], region) and _shares(out["boxes"][1][0], region)


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview], ids=lambda f: f.__name__)
def test_top_level_bytes_like_come_back_as_bytes(region, make):
    data = bytes(range(256)) * 1000
    out = _roundtrip(region, make(data))
    assert type(out) is bytes and out == data


@pytest.mark.parametrize("value", [None, 5, "text", {"a": [1, 2]}, (b"in-a-tuple", 3)])
def test_plain_objects_round_trip(region, value):
    assert _roundtrip(region, value) == value


def test_buffers_are_aligned(region):
    out = _roundtrip(region, (np.ones(3, np.uint8), np.ones(5, np.float64)))
    for arr in out:
        assert arr.__array_interface__["data"][0] % shm.ALIGN == 0


def test_write_that_does_not_fit_reports_the_size_and_writes_nothing():
    r = shm.SharedRegion.create(4096)
    try:
        _roundtrip(r, "before")
        enc = shm.encode(np.zeros(10_000, np.uint8))
        end = shm.write(r.view, 0, enc, r.address)
        assert end > r.size
        assert end == shm.measure(enc)
        assert shm.read(r.view) == "before"
    finally:
        r.close()


def _written_input(region, value):
    """Write ``value`` as an input at 0 and return (views read back, offset for the output)."""
    data = _roundtrip(region, value)
    return data, shm.align(shm.extent(region.view))


@pytest.mark.parametrize(
    "pick",
    [
        lambda d: d,
        lambda d: d[10:],
        lambda d: (d[5:], d[:-5]),
        lambda d: {"x": d[3:7], "y": d},
    ],
    ids=["same", "slice", "overlapping-pair", "dict"],
)
def test_results_viewing_the_input_are_referenced_in_place(region, pick):
    original = np.arange(4096, dtype=np.int64)
    data, out_at = _written_input(region, original)
    result = pick(data)
    expected = pick(original.copy())
    enc = shm.encode(result)
    end = shm.write(region.view, out_at, enc, region.address, keep_below=out_at)
    assert end - out_at < 1024  # no array bytes were copied, only the table and metadata
    got = shm.read(region.view, out_at)
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, dict):
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    else:
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(shm.read(region.view), original)  # the input is intact


def test_in_place_modified_input_is_returned_without_a_copy(region):
    data, out_at = _written_input(region, np.arange(1000, dtype=np.float64))
    data *= 2
    end = shm.write(region.view, out_at, shm.encode(data), region.address, keep_below=out_at)
    assert end - out_at < 256
    np.testing.assert_array_equal(shm.read(region.view, out_at), np.arange(1000) * 2.0)


def test_sources_overlapping_the_destination_are_copied_aside_first(region):
    # A result that views the region where it is about to be written (e.g. an earlier result
    # submitted again as an input) must not be read after being overwritten.
    first = np.arange(10_000, dtype=np.int64)
    _roundtrip(region, (first, first[::-1].copy()), offset=4096)
    a, b = shm.read(region.view, 4096)
    value = (b, a)  # writing b first at offset 0 overlaps where a and b lie
    end = shm.write(region.view, 0, shm.encode(value), region.address)
    assert end <= region.size
    got = shm.read(region.view, 0)
    np.testing.assert_array_equal(got[0], first[::-1])
    np.testing.assert_array_equal(got[1], first)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes()),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=16),
    )
)
def test_any_numeric_array_round_trips(value):
    r = shm.SharedRegion.create(1 << 20)
    try:
        out = _roundtrip(r, value)
        assert out.dtype == value.dtype and out.shape == value.shape
        np.testing.assert_array_equal(out, value)
    finally:
        r.close()


@pytest.mark.parametrize(
    "value",
    [None, 7, 2**70, 3.5, True, 1j, "frame-17", b"x" * 1000, {"id": 3, "boxes": [(1, 2, 3, 4)]}],
)
def test_small_values_pack_to_one_pickle(value):
    packed = shm.pack(value)
    assert isinstance(packed, bytes) and len(packed) <= shm.INLINE_MAX
    assert pickle.loads(packed) == value


@pytest.mark.parametrize(
    "value",
    [
        np.zeros(4, np.uint8),  # arrays keep their zero-copy path, however small
        b"x" * (shm.INLINE_MAX + 1),
        "é" * shm.INLINE_MAX,  # short in characters, long in bytes
        {"frame": np.zeros(10, np.uint8)},
        list(range(2000)),
    ],
)
def test_arrays_and_large_values_pack_for_a_slot(value):
    assert isinstance(shm.pack(value), shm.Encoded)
