"""YoloPreprocess: identical to the composed steps, and right by independent arithmetic."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from processors import (
    BGRToRGB,
    Compose,
    DecodeImage,
    HWCToCHW,
    Letterbox,
    ToFloat,
    YoloPreprocess,
    letterbox_params,
)


def _composed(size=640, pad_value=114, stride=None, scaleup=True, decode=False) -> Compose:
    steps = [DecodeImage()] if decode else []
    steps += [
        Letterbox(size, pad_value=pad_value, stride=stride, scaleup=scaleup),
        BGRToRGB(),
        HWCToCHW(),
        ToFloat(),
    ]
    return Compose(*steps)


@pytest.mark.parametrize(
    ("src_hw", "kwargs"),
    [
        ((720, 1280), {}),
        ((480, 640), {}),
        ((640, 640), {}),  # no resize, no padding
        ((333, 517), {"size": (320, 480)}),
        ((1080, 1920), {"stride": 32}),
        ((1280, 720), {"size": 416, "stride": 32}),
        ((240, 320), {"scaleup": False}),
        ((101, 99), {"size": 64, "pad_value": 0}),
        ((10, 2000), {}),  # extreme aspect: 640x3 content
    ],
)
def test_fused_equals_composed_exactly(make_frame, src_hw, kwargs) -> None:
    frame = make_frame(*src_hw, 3, seed=sum(src_hw))
    fused = YoloPreprocess(**kwargs).process(frame)
    composed = _composed(**kwargs).process(frame)
    assert fused.dtype == np.float32 and fused.flags.c_contiguous
    assert fused.shape == composed.shape
    np.testing.assert_array_equal(fused, composed)


def test_720p_values_by_independent_arithmetic(frame_720p: np.ndarray) -> None:
    out = YoloPreprocess().process(frame_720p)
    assert out.shape == (3, 640, 640)
    pad = np.float32(114 / 255)
    assert (out[:, :140, :] == pad).all() and (out[:, 500:, :] == pad).all()
    resized = cv2.resize(frame_720p, (640, 360), interpolation=cv2.INTER_LINEAR)
    for c, src_channel in enumerate((2, 1, 0)):  # RGB planes from BGR channels
        expected = (resized[..., src_channel].astype(np.float64) / 255).astype(np.float32)
        np.testing.assert_array_equal(out[c, 140:500, :], expected)


def test_channel_order_on_constant_channels() -> None:
    frame = np.empty((720, 1280, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    out = YoloPreprocess().process(frame)
    centre = out[:, 320, 320]
    np.testing.assert_array_equal(centre, np.float32([30 / 255, 20 / 255, 10 / 255]))


def test_batch_dim(frame_720p: np.ndarray) -> None:
    single = YoloPreprocess().process(frame_720p)
    batched = YoloPreprocess(batch_dim=True).process(frame_720p)
    assert batched.shape == (1, 3, 640, 640) and batched.flags.c_contiguous
    np.testing.assert_array_equal(batched[0], single)


def test_decode_path(frame_720p: np.ndarray, jpeg_720p: bytes) -> None:
    fused = YoloPreprocess(decode=True, reduced_decode=False).process(jpeg_720p)
    composed = _composed(decode=True).process(jpeg_720p)
    np.testing.assert_array_equal(fused, composed)
    # With the reduced decode (the default), the same as the composed steps decoding at the
    # size the letterbox needs.
    reduced = YoloPreprocess(decode=True).process(jpeg_720p)
    steps = _composed().steps
    np.testing.assert_array_equal(reduced, Compose(DecodeImage(fit=640), *steps).process(jpeg_720p))
    with pytest.raises(ValueError):
        YoloPreprocess(decode=True).process(jpeg_720p[:1000])


def test_process_with_params(frame_720p: np.ndarray) -> None:
    out, params = YoloPreprocess(stride=32).process_with_params(frame_720p)
    assert params == letterbox_params((720, 1280), 640, stride=32)
    assert out.shape == (3, *params.out_hw) == (3, 384, 640)
    assert YoloPreprocess(stride=32).params((720, 1280)) == params


def test_rejects_wrong_frames(make_frame) -> None:
    for bad in (
        make_frame(10, 10, 0),
        make_frame(10, 10, 4),
        make_frame(10, 10, 3).astype(np.float32),
        b"\xff\xd8 not decoded",
    ):
        with pytest.raises(ValueError):
            YoloPreprocess().process(bad)


def test_rejects_bad_settings() -> None:
    for kwargs in ({"pad_value": 300}, {"pad_value": 0.5}, {"size": 0}, {"stride": -32}):
        with pytest.raises(ValueError):
            YoloPreprocess(**kwargs)


def test_input_not_modified(frame_720p: np.ndarray) -> None:
    before = frame_720p.copy()
    YoloPreprocess().process(frame_720p)  # frame_720p is read-only: a write would raise
    np.testing.assert_array_equal(frame_720p, before)


def test_non_contiguous_frames(make_frame) -> None:
    big = make_frame(720, 1280, 3, seed=9)
    for view in (big[::2, ::2], big[:, :, ::-1], big[100:600, 200:1100]):
        np.testing.assert_array_equal(
            YoloPreprocess().process(view), _composed().process(np.ascontiguousarray(view))
        )


def test_values_kept_if_cv2_does_not_write_in_place(
    frame_720p: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = YoloPreprocess().process(frame_720p)
    real_lut = cv2.LUT
    monkeypatch.setattr(cv2, "LUT", lambda src, lut, dst=None: real_lut(src, lut))
    np.testing.assert_array_equal(YoloPreprocess().process(frame_720p), expected)


@pytest.mark.parametrize("batch_dim", [False, True])
def test_in_a_pool_the_tensor_is_built_in_the_slot_not_copied_there(
    frame_720p: np.ndarray, batch_dim: bool
) -> None:
    """A 640x640 tensor is 4.9 MB: copying it into shared memory after building it cost a
    worker about a tenth of its time per frame. It must be written where it is returned."""
    import asyncio

    from fogverse.parallel import WorkerPool, shm

    pre = YoloPreprocess(640, batch_dim=batch_dim)
    expected = pre.process(frame_720p)

    async def main() -> None:
        async with WorkerPool(pre, 1, 1) as pool:
            for i in range(3):
                handle = await pool.submit(frame_720p)
                got = await handle
                np.testing.assert_array_equal(got, expected)
                if i >= 1:  # the slot has grown to fit input and output by now
                    start = got.__array_interface__["data"][0]
                    offset = start - handle._slot.region.address
                    # Right after the input: where output_array() puts it, not behind the
                    # result's header, where a copy would go.
                    assert offset == shm.align(shm.measure(shm.encode(frame_720p)))
                handle.release()

    asyncio.run(asyncio.wait_for(main(), 60))
