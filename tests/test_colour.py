"""engine/colour.py against FFmpeg's own conversion (PyAV → swscale, accurate mode), both ways.

Content: a real anime frame and a random smooth image with a saturated block (sharp chroma
edges), in every handled pixel format, matrix and range. "One level" is one step of the
8-bit scale: swscale's 16-bit RGB puts limited-range white at 65280 rather than 65535, so
10-bit references are read as rgb24 (YUV → RGB) or fed as float RGB (RGB → YUV), and a
10-bit sample may then differ by up to one 8-bit step (4 ten-bit levels), as swscale rounds twice.
"""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import Interpolation

from engine import colour

MEDIA = os.path.join(os.path.dirname(__file__), "media", "anime-320x240.mp4")
TO_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
TO_YUV = Interpolation.AREA | Interpolation.ACCURATE_RND
ENCODINGS = [(5, 1), (1, 1), (9, 1), (5, 2), (1, 2), (9, 2)]  # (AVColorSpace, AVColorRange)
FORMATS = ["yuv420p", "yuv422p", "yuv444p", "nv12", "yuv420p10le", "yuv422p10le", "yuv444p10le", "p010le"]


def _real_frame() -> np.ndarray:
    with av.open(MEDIA) as container:
        for i, picture in enumerate(container.decode(video=0)):
            if i == 30:
                return picture.to_ndarray(format="rgb24")


def _smooth_frame(seed: int = 0, height: int = 98, width: int = 134) -> np.ndarray:
    """Random colours on a coarse grid, bilinearly enlarged, plus a saturated block; odd-ish size."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 12 + 2, width // 12 + 2)))
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    image = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image[30:60, 40:90] = (250, 12, 20)
    return image


@pytest.fixture(scope="module", params=["real", "smooth"])
def rgb_image(request) -> np.ndarray:
    return _real_frame() if request.param == "real" else _smooth_frame()


def _picture(rgb: np.ndarray, pix_fmt: str, cs: int, rng: int) -> av.VideoFrame:
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=pix_fmt, dst_colorspace=cs, dst_color_range=rng, interpolation=TO_YUV)
    picture.colorspace, picture.color_range = cs, rng
    return picture


def _tensors(planes: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(p))[None] for p in planes]


@pytest.mark.parametrize("pix_fmt", FORMATS)
@pytest.mark.parametrize("cs,rng", ENCODINGS)
def test_yuv_to_rgb_matches_ffmpeg(rgb_image, pix_fmt, cs, rng):
    h, w = rgb_image.shape[:2]
    even = rgb_image[: h - h % 2, : w - w % 2]  # 4:2:x encoders need even sizes
    picture = _picture(even, pix_fmt, cs, rng)
    fmt, _ = colour.spec_for(picture)
    spec = colour.ColourSpec.of(cs, rng, pix_fmt, chroma_left=False)  # a made frame: location unspecified
    reference = picture.to_ndarray(format="rgb24", interpolation=TO_RGB, src_colorspace=cs, src_color_range=rng)
    ours = colour.yuv_to_rgb(_tensors(colour.picture_planes(picture, fmt)), fmt, spec)
    ours = (ours[0].permute(1, 2, 0) * 255).round().numpy()
    diff = np.abs(ours - reference)
    assert diff.max() <= 1, f"max {diff.max()}, mean {diff.mean():.4f}"


@pytest.mark.parametrize("pix_fmt", FORMATS)
@pytest.mark.parametrize("cs,rng", ENCODINGS)
def test_rgb_to_yuv_matches_ffmpeg(rgb_image, pix_fmt, cs, rng):
    h, w = rgb_image.shape[:2]
    even = rgb_image[: h - h % 2, : w - w % 2].astype(np.float32) / 255
    reference = av.VideoFrame.from_ndarray(np.ascontiguousarray(even), format="gbrpf32le").reformat(
        format=pix_fmt, dst_colorspace=cs, dst_color_range=rng, interpolation=TO_YUV)
    fmt = colour.FORMATS[pix_fmt]
    spec = colour.ColourSpec.of(cs, rng, pix_fmt)
    ours = colour.rgb_to_yuv(torch.from_numpy(even).permute(2, 0, 1)[None], fmt, spec)
    tolerance = 1 << max(0, fmt.bits - 8)  # one 8-bit step (see the module docstring)
    for index, (plane, expected) in enumerate(zip(ours, colour.picture_planes(reference, fmt))):
        assert plane.dtype == (torch.uint8 if fmt.bits == 8 else torch.uint16)
        diff = np.abs(plane[0].numpy().astype(np.int64) - expected.astype(np.int64)) >> fmt.shift
        assert diff.max() <= tolerance, f"plane {index}: max {diff.max()}, mean {diff.mean():.4f}"


def test_decoded_h264_chroma_is_left_sited():
    """A real decoder's picture (chroma location "left") converts as swscale converts it."""
    with av.open(MEDIA) as container:
        for i, picture in enumerate(container.decode(video=0)):
            if i == 100:
                break
    fmt, spec = colour.spec_for(picture)
    assert spec.chroma_left and spec.matrix == "bt601" and not spec.full_range  # unspecified: swscale's 601
    reference = picture.to_ndarray(format="rgb24", interpolation=TO_RGB)
    ours = colour.yuv_to_rgb(_tensors(colour.picture_planes(picture, fmt)), fmt, spec)
    diff = np.abs((ours[0].permute(1, 2, 0) * 255).round().numpy() - reference)
    assert diff.max() <= 1, f"max {diff.max()}, mean {diff.mean():.4f}"
    centred = colour.yuv_to_rgb(_tensors(colour.picture_planes(picture, fmt)), fmt,
                                colour.ColourSpec.of(2, 0, chroma_left=False))
    assert np.abs((centred[0].permute(1, 2, 0) * 255).round().numpy() - reference).max() > 1  # siting matters


def test_round_trip_keeps_the_picture():
    """YUV → RGB → YUV of real content gives back the decoder's planes (to within rounding)."""
    picture = _picture(_real_frame(), "yuv420p", 1, 1)
    fmt, spec = colour.spec_for(picture)
    planes = colour.picture_planes(picture, fmt)
    back = colour.rgb_to_yuv(colour.yuv_to_rgb(_tensors(planes), fmt, spec), fmt, spec)
    luma = np.abs(back[0][0].numpy().astype(int) - planes[0])
    assert (luma > 1).mean() < 0.01  # out-of-gamut YUV is clipped to the RGB cube: 0.15 % here
    # chroma: upsampling then averaging is a mild blur, not a shift
    assert np.abs(back[1][0].numpy().astype(int) - planes[1]).mean() < 1.0


def test_odd_sizes_and_padded_lines():
    """4:4:4 at an odd size, and planes whose line size exceeds their width, come out whole."""
    rgb = _smooth_frame(1, 37, 51)
    picture = _picture(rgb, "yuv444p", 1, 1)
    fmt, spec = colour.spec_for(picture)
    planes = colour.picture_planes(picture, fmt)
    assert planes[0].shape == (37, 51) and picture.planes[0].line_size > 51
    out = colour.yuv_to_rgb(_tensors(planes), fmt, spec)
    assert out.shape == (1, 3, 37, 51)
    wrapped = colour.planes_to_picture([p[0].numpy() for p in colour.rgb_to_yuv(out, fmt, spec)], fmt)
    assert wrapped.format.name == "yuv444p" and (wrapped.width, wrapped.height) == (51, 37)
    assert np.array_equal(colour.picture_planes(wrapped, fmt)[0], colour.rgb_to_yuv(out, fmt, spec)[0][0].numpy())


def test_unhandled_matrix_is_refused():
    picture = _picture(_smooth_frame(), "yuv420p", 1, 1)
    picture.colorspace = 8  # YCgCo
    assert colour.spec_for(picture) is None
    assert colour.spec_for(av.VideoFrame(16, 16, "rgb24")) is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "nv12", "yuv420p10le"])
def test_device_agrees_with_cpu(pix_fmt):
    picture = _picture(_real_frame(), pix_fmt, 1, 1)
    fmt, spec = colour.spec_for(picture)
    planes = _tensors(colour.picture_planes(picture, fmt))
    cpu = colour.yuv_to_rgb(planes, fmt, spec)
    gpu = colour.yuv_to_rgb([p.cuda() for p in planes], fmt, spec).cpu()
    assert (cpu - gpu).abs().max() * 255 <= 1
    back_cpu = colour.rgb_to_yuv(cpu, fmt, spec)
    back_gpu = colour.rgb_to_yuv(cpu.cuda(), fmt, spec)
    for a, b in zip(back_cpu, back_gpu):
        assert (a.int() - b.cpu().int()).abs().max() <= 1 << fmt.shift
