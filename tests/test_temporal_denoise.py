"""temporal-denoise: a true per-pixel median over the frames it uses, at the video's ends too, and its options."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.errors import UserError
from engine.frame import Frame
from engine.registry import make_spec
from engine.runner import Pipeline, RunnerOptions
from engine.testing import CollectingSink, ImagesSource


def _frame(seq: int, image: np.ndarray) -> Frame:
    return Frame.from_array(seq, seq * 1001, Fraction(1, 24000), image)


def _denoise(images: list[np.ndarray], **options) -> list[np.ndarray]:
    spec = make_spec("temporal-denoise", {k: str(v) for k, v in options.items()})
    sink = CollectingSink()
    Pipeline(ImagesSource(images), [spec], sink, RunnerOptions(join_timeout_s=5)).run()
    return [f.data for f in sink.frames]


def test_the_ends_are_a_median_not_a_mean_of_two():
    """The first and last frames had the mean of two frames, rounded down: [11, 200] gave 105."""
    images = [np.full((2, 2, 3), v, np.uint8) for v in (11, 200, 50)]
    stage = make_spec("temporal-denoise", {"radius": "1"}).build()
    out = stage.process_window([_frame(i, im) for i, im in enumerate(images)])
    assert [int(o[0, 0, 0]) for o in out] == [11, 50, 50]  # ends as they are; the middle the median of 3


@pytest.mark.parametrize("radius, window", [(1, 3), (2, 5), (2, 7)])
def test_every_output_is_the_median_of_the_frames_within_the_radius_it_can_have(radius, window):
    """Through the runner's overlapping windows: each frame's median over the frames within
    radius on both sides, the radius shrunk symmetrically at the ends; every value an input's."""
    rng = np.random.default_rng(radius * 10 + window)
    images = [rng.integers(0, 65536, (4, 6, 3), dtype=np.uint16) for _ in range(11)]
    got = _denoise(images, radius=radius, window_size=window)
    stack = np.stack(images)
    assert len(got) == len(images)
    for i, image in enumerate(got):
        r = min(radius, i, len(images) - 1 - i)
        expected = np.sort(stack[i - r:i + r + 1], axis=0)[r]  # the middle one of 2r+1
        assert image.dtype == np.uint16 and np.array_equal(image, expected), i


@pytest.mark.parametrize("options, message", [
    ({"window_size": "2"}, "window_size must be more than 2 × radius = 2 frames (each frame needs 1 on "
                           "either side), got 2"),
    ({"window_size": "0"}, "window_size must be more than 2 × radius = 2 frames"),
    ({"window_size": "8", "radius": "4"}, "more than 2 × radius = 8 frames"),
    ({"window_size": "513"}, "window_size must be at most 512 frames, got 513"),
])
def test_window_size_is_checked_against_the_radius(options, message):
    with pytest.raises(UserError) as info:
        make_spec("temporal-denoise", options).build()
    assert message in str(info.value) and "overlap" not in str(info.value)


def test_the_default_window_holds_eight_frames_beyond_the_radius():
    stage = make_spec("temporal-denoise", {"radius": "3"}).build()
    assert (stage.window_size, stage.overlap) == (14, 3)
