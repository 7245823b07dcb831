"""Colour order, layout, float conversion, normalisation and batching, checked element-wise."""

from __future__ import annotations

import numpy as np
import pytest

from processors import Batch, BGRToRGB, HWCToCHW, Normalize, ToFloat


def _constant_channels(h: int = 6, w: int = 5, dtype=np.uint8) -> np.ndarray:
    frame = np.empty((h, w, 3), dtype)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30
    return frame


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int32])
def test_bgr_to_rgb_hwc(dtype) -> None:
    frame = _constant_channels(dtype=dtype)
    out = BGRToRGB().process(frame)
    assert out.dtype == dtype and out.shape == frame.shape
    assert (out[..., 0] == 30).all() and (out[..., 1] == 20).all() and (out[..., 2] == 10).all()
    assert out.flags.c_contiguous
    assert (frame[..., 0] == 10).all()  # input untouched


def test_bgr_to_rgb_chw_and_batched() -> None:
    chw = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 20, 30)])
    out = BGRToRGB("CHW").process(chw)
    assert [int(out[c, 0, 0]) for c in range(3)] == [30, 20, 10]
    assert out.flags.c_contiguous
    nchw = np.stack([chw, chw])
    out4 = BGRToRGB("CHW").process(nchw)
    assert [int(out4[1, c, 2, 3]) for c in range(3)] == [30, 20, 10]
    nhwc = np.stack([_constant_channels(), _constant_channels()])
    assert BGRToRGB().process(nhwc)[1, 2, 3].tolist() == [30, 20, 10]


def test_bgr_to_rgb_twice_is_identity(make_frame) -> None:
    frame = make_frame(31, 17, 3)
    np.testing.assert_array_equal(BGRToRGB().process(BGRToRGB().process(frame)), frame)


def test_bgr_to_rgb_rejects_other_channel_counts(make_frame) -> None:
    with pytest.raises(ValueError):
        BGRToRGB().process(make_frame(4, 4, 4))
    with pytest.raises(ValueError):
        BGRToRGB().process(make_frame(4, 4, 0))
    with pytest.raises(ValueError):
        BGRToRGB("NCHW")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_hwc_to_chw_by_indexing(make_frame, dtype, channels) -> None:
    frame = make_frame(7, 11, channels, seed=channels).astype(dtype)
    out = HWCToCHW().process(frame)
    assert out.shape == (channels, 7, 11) and out.dtype == dtype
    assert out.flags.c_contiguous
    for c in range(channels):
        for y, x in [(0, 0), (6, 10), (3, 4), (5, 1)]:
            assert out[c, y, x] == frame[y, x, c]


def test_hwc_to_chw_grayscale_and_batch(make_frame) -> None:
    gray = make_frame(5, 6, 0)
    out = HWCToCHW().process(gray)
    assert out.shape == (1, 5, 6) and out[0, 4, 5] == gray[4, 5]
    batch = np.stack([make_frame(5, 6, 3, seed=s) for s in range(2)])
    out4 = HWCToCHW().process(batch)
    assert out4.shape == (2, 3, 5, 6) and out4.flags.c_contiguous
    assert out4[1, 2, 4, 5] == batch[1, 4, 5, 2]
    with pytest.raises(ValueError):
        HWCToCHW().process(np.zeros(3))


def test_to_float_is_exactly_x_over_255() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frame = np.stack([values, values[::-1], values.T], axis=-1)
    out = ToFloat().process(frame)
    assert out.dtype == np.float32 and out.shape == frame.shape
    expected = (frame.astype(np.float64) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0.0 and out.max() == 1.0


def test_to_float_other_scales_and_dtypes() -> None:
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(ToFloat(scale=1.0).process(values), values.astype(np.float32))
    np.testing.assert_allclose(ToFloat(scale=0.5).process(values), values / 2.0)
    u16 = np.array([[0, 1000, 65535]], np.uint16)
    out = ToFloat(scale=1 / 65535).process(u16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, u16 / 65535.0, rtol=1e-6)


def test_to_float_non_contiguous_input(make_frame) -> None:
    frame = make_frame(10, 12, 3)
    view = frame[::2, ::3]
    expected = (view.astype(np.float64) / 255).astype(np.float32)
    np.testing.assert_array_equal(ToFloat().process(view), expected)


def test_normalize_chw_manual_arithmetic() -> None:
    rng = np.random.default_rng(0)
    chw = rng.random((3, 8, 9), dtype=np.float32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = Normalize(mean, std).process(chw)
    assert out.dtype == np.float32 and out.shape == chw.shape
    for c in range(3):
        for y, x in [(0, 0), (7, 8), (4, 2)]:
            expected = (float(chw[c, y, x]) - mean[c]) / std[c]
            assert out[c, y, x] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    nchw = np.stack([chw, chw * 0.5])
    out4 = Normalize(mean, std).process(nchw)
    assert out4[1, 2, 3, 4] == pytest.approx((chw[2, 3, 4] * 0.5 - mean[2]) / std[2], rel=1e-5)


def test_normalize_hwc_and_uint8() -> None:
    frame = _constant_channels()
    out = Normalize((10, 10, 10), (1, 2, 4), layout="HWC").process(frame)
    assert out.dtype == np.float32
    assert out[0, 0].tolist() == [0.0, 5.0, 5.0]
    assert Normalize(0.5, 0.25, layout="HWC").process(np.ones((2, 2, 3)))[1, 1, 2] == 2.0


def test_normalize_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Normalize((0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError):
        Normalize((0, 0), (1, 1, 1))
    with pytest.raises(ValueError):
        Normalize((0, 0, 0), (1, 1, 1)).process(np.zeros((4, 5, 6), np.float32))


def test_normalize_does_not_modify_input() -> None:
    chw = np.ones((3, 4, 4), np.float32)
    Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).process(chw)
    assert (chw == 1).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_float_results_are_c_contiguous_for_a_transposed_input(make_frame, dtype) -> None:
    chw = make_frame(6, 7, 3).astype(dtype).transpose(2, 0, 1)  # an HWC frame seen as CHW
    scaled = ToFloat().process(chw)
    normalized = Normalize((1, 2, 3), (2, 2, 2)).process(chw)
    assert scaled.flags.c_contiguous and normalized.flags.c_contiguous
    np.testing.assert_allclose(scaled, chw / 255, rtol=1e-6)
    np.testing.assert_allclose(normalized, (chw - [[[1]], [[2]], [[3]]]) / 2, rtol=1e-6)


def test_batch_stacks_in_order(make_frame) -> None:
    items = [make_frame(4, 5, 3, seed=s).transpose(2, 0, 1) for s in range(3)]
    out = Batch().process(items)
    assert out.shape == (3, 3, 4, 5)
    for i, item in enumerate(items):
        np.testing.assert_array_equal(out[i], item)
    assert Batch().process(tuple(items)).shape == (3, 3, 4, 5)


def test_batch_rejects_bad_input(make_frame) -> None:
    with pytest.raises(ValueError):
        Batch().process([])
    with pytest.raises(ValueError):
        Batch().process([make_frame(4, 5, 3), make_frame(5, 4, 3)])
    with pytest.raises(TypeError):
        Batch().process(make_frame(4, 5, 3))
