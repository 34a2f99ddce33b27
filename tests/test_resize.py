"""`resize`: a decoded YUV picture is scaled with swscale in its own format (no RGB round trip),
anything else as RGB with OpenCV; both paths give the same sizes and close pictures."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.colour_tags import FROM_RGB, RGB_MATRIX, UNSPECIFIED
from engine.frame import Frame
from engine.planes import plane_rows
from engine.registry import register_stage
from engine.stage import MapStage
from stages.resize import Resize, _subsampling

from conftest import MEDIA, run_engine

CLIP = MEDIA / "anime-320x240.mp4"
TB = Fraction(1, 24)


@pytest.fixture(scope="module")
def decoded() -> list[av.VideoFrame]:
    """Six frames of the real clip, 40 apart (320x240 yuv420p, tags unspecified)."""
    with av.open(str(CLIP)) as container:
        return [f for i, f in enumerate(container.decode(video=0)) if i % 40 == 5][:6]


# (pix_fmt, colorspace, color_range): 8 and 10 bit, limited and full range, 4:2:0/4:2:2/4:4:4
VARIANTS = [("yuv420p", 2, 0), ("yuvj420p", 2, 2), ("yuv420p", 1, 2), ("yuv420p10le", 1, 1),
            ("yuv420p10le", 9, 2), ("yuv422p10le", 5, 1), ("yuv444p", 6, 1), ("yuv420p12le", 9, 1)]


def variant(picture: av.VideoFrame, pix_fmt: str, colorspace: int, color_range: int) -> av.VideoFrame:
    """The decoded picture in another format and encoding, tagged so (primaries, transfer too)."""
    out = picture.reformat(format=pix_fmt, dst_color_range=color_range or None)
    out.colorspace, out.color_range = colorspace, color_range
    out.color_primaries, out.color_trc = 9, 16
    return out


def deep(picture: av.VideoFrame) -> bool:
    return picture.format.components[0].bits > 8


def yuv_path(picture: av.VideoFrame, stage: Resize) -> Frame:
    frame = Frame.from_picture(0, 0, TB, picture, "rgb48le" if deep(picture) else "rgb24")
    return stage.process(frame)


def rgb_path(picture: av.VideoFrame, stage: Resize) -> av.VideoFrame:
    """The stage on the picture's RGB (what an earlier stage that changed pixels hands on), back
    in the picture's format the way the sink converts (VideoSink._picture)."""
    frame = Frame.from_picture(0, 0, TB, picture, "rgb48le" if deep(picture) else "rgb24")
    frame.data = frame.data  # the pixels are now an array: a changed frame
    out = stage.process(frame)
    assert out.picture is None
    data = out.data
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format="rgb48le" if data.dtype == np.uint16 else "rgb24")
    matrix = int(picture.colorspace)
    return rgb.reformat(format=picture.format.name, dst_colorspace=None if matrix in (UNSPECIFIED, RGB_MATRIX) else matrix,
                        dst_color_range=int(picture.color_range) or None, interpolation=FROM_RGB)


def plane_psnr(a: av.VideoFrame, b: av.VideoFrame) -> tuple[float, float]:
    """(luma, worse chroma) PSNR at the pictures' own depth."""
    bits = a.format.components[0].bits
    dtype, peak = ("<u2", (1 << bits) - 1) if bits > 8 else ("<u1", 255)
    scores = []
    for i in range(3):
        pa, pb = a.planes[i], b.planes[i]
        x = plane_rows(pa, dtype)[:pa.height, :pa.width].astype(np.float64)
        y = plane_rows(pb, dtype)[:pb.height, :pb.width].astype(np.float64)
        mse = ((x - y) ** 2).mean()
        scores.append(99.0 if mse == 0 else 10 * np.log10(peak ** 2 / mse))
    return scores[0], min(scores[1:])


# Luma / chroma PSNR floors of the YUV path against the RGB path, per option where it runs.
# Measured minima over these 6 frames x VARIANTS x YUV_SIZES and the encoded test's first 24
# frames (both tests print them with -s): area 44.6 / 39.8 dB shrinking, linear 43.8 / 45.6,
# cubic 40.2 / 44.5, lanczos 39.1 / 42.5 enlarging; each floor sits 1.5 dB or so below. Area's chroma is lowest at strong shrinks of
# 4:2:0 (96x72: 40-41 dB; 4:4:4 48.8): the RGB path's sink writes centred chroma where the
# decoded picture's is left-sited, and the YUV path keeps the picture's siting. What the floors
# catch: swscale's FAST_BILINEAR against OpenCV's linear was 17-30 dB, a shrinking cubic
# (swscale anti-aliases, OpenCV does not) 23-31 dB, an enlarging area 27-32 dB, a range or
# matrix mix-up far less.
FLOORS = {"area": (43.0, 38.5), "linear": (42.0, 44.0), "cubic": (38.5, 43.0), "lanczos": (37.5, 41.0)}
# sizes (from 320x240) where each option takes the YUV path: area shrinks, the others enlarge
YUV_SIZES = {"area": [(212, 160), (160, 120), (96, 72), (160, 240)], "linear": [(640, 480), (480, 360), (640, 240)],
             "cubic": [(640, 480), (480, 360), (640, 240)], "lanczos": [(640, 480), (480, 360), (640, 240)]}


@pytest.mark.parametrize("option", list(FLOORS))
def test_the_yuv_path_is_close_to_the_rgb_path_on_real_frames(decoded, option):
    worst: dict[tuple, tuple[float, float]] = {}
    for fmt in VARIANTS:
        for size in YUV_SIZES[option]:
            stage = Resize(width=size[0], height=size[1], interpolation=option)
            for picture in decoded:
                source = variant(picture, *fmt)
                out = yuv_path(source, stage).picture
                assert out is not None, (fmt, size)  # scaled in YUV
                luma, chroma = plane_psnr(out, rgb_path(source, stage))
                low = worst.get((fmt, size), (99.0, 99.0))
                worst[(fmt, size)] = (min(low[0], luma), min(low[1], chroma))
    print(option, {k: f"{v[0]:.1f}/{v[1]:.1f}" for k, v in worst.items()})
    floor_luma, floor_chroma = FLOORS[option]
    assert all(luma >= floor_luma and chroma >= floor_chroma for luma, chroma in worst.values()), worst


@pytest.mark.parametrize("fmt", VARIANTS)
def test_the_scaled_picture_keeps_format_matrix_range_and_tags(decoded, fmt):
    source = variant(decoded[0], *fmt)
    frame = yuv_path(source, Resize(width=160))
    out = frame.picture
    assert (out.format.name, out.width, out.height) == (fmt[0], 160, 120) and frame.shape == (120, 160, 3)
    assert (int(out.colorspace), int(out.color_range), int(out.color_primaries), int(out.color_trc)) == (
        fmt[1], fmt[2], 9, 16)
    assert frame.deep == deep(source) and frame.data.dtype == (np.uint16 if deep(source) else np.uint8)
    # the source picture's own tags are untouched (PyAV re-tags it during the scale)
    assert (int(source.colorspace), int(source.color_range), int(source.color_primaries)) == (fmt[1], fmt[2], 9)


@pytest.mark.parametrize("case", [
    dict(width=640, height=480, interpolation="area"),      # OpenCV's area enlarges by box overlap
    dict(width=160, height=120, interpolation="linear"),    # OpenCV's shrink is not anti-aliased
    dict(width=160, height=120, interpolation="cubic"),
    dict(width=160, height=120, interpolation="lanczos"),
    dict(width=640, height=120, interpolation="area"),      # one side up, one down
    dict(width=161, height=121), dict(width=161, height=120), dict(width=160, height=121),  # odd in 4:2:0
])
def test_where_swscale_differs_the_rgb_path_runs(decoded, case):
    frame = yuv_path(decoded[0], Resize(**case))
    assert frame.picture is None and frame.data.shape == (case["height"], case["width"], 3)


@pytest.mark.parametrize("pix_fmt", ["gray", "gray10le", "rgb24", "gbrp", "nv12", "p010le", "yuva420p"])
def test_grey_rgb_semi_planar_and_alpha_pictures_take_the_rgb_path(decoded, pix_fmt):
    source = decoded[0].reformat(format=pix_fmt)
    frame = Frame.from_picture(0, 0, TB, source, "rgb48le" if "10" in pix_fmt else "rgb24")
    assert Resize(width=160).process(frame).picture is None and frame.shape == (120, 160, 3)


def test_palette_and_packed_formats_are_not_scaled_in_yuv():
    for pix_fmt in ("pal8", "yuyv422", "uyvy422", "bgr0", "ya8"):
        assert _subsampling(av.VideoFormat(pix_fmt)) is None
    assert _subsampling(av.VideoFormat("yuv420p10le")) == (2, 2) and _subsampling(av.VideoFormat("yuv422p")) == (2, 1)


def test_odd_sizes_in_422_and_444(decoded):
    # 4:2:2 subsamples only across: an odd height scales in YUV, an odd width does not
    assert yuv_path(variant(decoded[0], "yuv422p10le", 1, 1), Resize(width=160, height=119)).picture is not None
    assert yuv_path(variant(decoded[0], "yuv422p10le", 1, 1), Resize(width=159, height=120)).picture is None
    assert yuv_path(variant(decoded[0], "yuv444p", 1, 1), Resize(width=159, height=119)).picture is not None


def test_sizes_scale_and_aspect(decoded):
    picture = decoded[0]
    for options, size in [({"scale": 0.5}, (160, 120)), ({"scale": 0.3}, (96, 72)), ({"width": 160}, (160, 120)),
                          ({"height": 60}, (80, 60)), ({"width": 200}, (200, 150))]:
        for path in (lambda s: yuv_path(picture, s).picture, lambda s: rgb_path(picture, s)):
            out = path(Resize(**options))
            assert (out.width, out.height) == size, (options, size)
    same = Frame.from_picture(0, 0, TB, picture, "rgb24")
    assert Resize(scale=1).process(same).picture is picture  # untouched


def test_a_resize_after_a_resize(decoded):
    first, second = Resize(width=240), Resize(width=160)  # 320x240 -> 240x180 -> 160x120
    for picture in decoded:
        frame = second.process(first.process(Frame.from_picture(0, 0, TB, picture, "rgb24")))
        assert frame.picture is not None and frame.shape == (120, 160, 3)
        rgb = Frame.from_picture(0, 0, TB, picture, "rgb24")
        rgb.data = rgb.data
        rgb = second.process(first.process(rgb))
        reference = av.VideoFrame.from_ndarray(rgb.data, format="rgb24").reformat(format="yuv420p", interpolation=FROM_RGB)
        luma, chroma = plane_psnr(frame.picture, reference)
        assert luma >= FLOORS["area"][0] and chroma >= FLOORS["area"][1], (luma, chroma)


def decoded_planes(path: Path) -> tuple[tuple, list[av.VideoFrame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        info = (stream.width, stream.height, cc.pix_fmt, int(cc.colorspace), int(cc.color_range),
                int(cc.color_primaries), int(cc.color_trc))
        return info, list(container.decode(stream))


@register_stage("test.as-rgb")
class AsRgb(MapStage):
    """Hands frames on as host RGB, the pixels unchanged (8 or 16 bit): what a stage that
    changed them leaves, so the resize after it takes the RGB path."""

    def process(self, frame: Frame) -> Frame:
        frame.data = frame.data
        return frame


def touched(pipeline: str) -> str:
    """The same pipeline through the RGB path."""
    return f"test.as-rgb,{pipeline}"


# the CLI subprocess imports this module for test.as-rgb
RGB_ENV = {"ENGINE_STAGE_MODULES": "test_resize", "PYTHONPATH": str(Path(__file__).resolve().parent)}


@pytest.fixture(scope="module")
def deep_full_clip(tmp_path_factory, decoded) -> Path:
    """24 real frames as 10-bit full-range BT.709 (FFV1, lossless: the tags and samples as made)."""
    path = tmp_path_factory.mktemp("resize") / "deep-full.mkv"
    with av.open(str(CLIP)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p10le"
        cc = stream.codec_context
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 2, 1, 1
        for i, picture in zip(range(24), src.decode(video=0)):
            frame = picture.reformat(format="yuv420p10le", dst_colorspace=1, dst_color_range=2)
            frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc = 1, 2, 1, 1
            frame.pts = None
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("source,pipeline,size", [
    ("clip", "resize:width=160", (160, 120)),
    ("clip", "resize:scale=1.5:interpolation=lanczos", (480, 360)),
    ("deep", "resize:height=180", (240, 180)),
    ("deep", "resize:width=640:interpolation=linear", (640, 480)),
])
def test_encoded_output_keeps_format_and_tags_and_matches_the_rgb_path(tmp_path, deep_full_clip, source, pipeline, size):
    src = CLIP if source == "clip" else deep_full_clip
    yuv, rgb = tmp_path / "yuv.mkv", tmp_path / "rgb.mkv"
    for out, pipe in ((yuv, pipeline), (rgb, touched(pipeline))):
        r = run_engine("stream", src, out, "--quiet", "--encoder", "ffv1", "--frames", "24",
                       "--pipeline", pipe, env=RGB_ENV)
        assert r.returncode == 0, r.stderr
    src_info, _ = decoded_planes(src)
    info, frames = decoded_planes(yuv)
    rgb_info, rgb_frames = decoded_planes(rgb)
    assert info == rgb_info == (*size, *src_info[2:]) and len(frames) == len(rgb_frames) == 24
    option = pipeline.split("interpolation=")[1] if "interpolation=" in pipeline else "area"
    scores = [plane_psnr(a, b) for a, b in zip(frames, rgb_frames)]
    luma, chroma = min(s[0] for s in scores), min(s[1] for s in scores)
    print(source, pipeline, f"{luma:.1f}/{chroma:.1f}")
    assert luma >= FLOORS[option][0] and chroma >= FLOORS[option][1], (luma, chroma)


def test_odd_size_into_x264_is_cropped_as_the_rgb_path_is(tmp_path):
    outs = []
    for name, pipe in (("yuv", "resize:width=161:height=121"), ("rgb", touched("resize:width=161:height=121"))):
        out = tmp_path / f"{name}.mp4"
        r = run_engine("stream", CLIP, out, "--frames", "12", "--encoder", "x264", "--pipeline", pipe, env=RGB_ENV)
        assert r.returncode == 0 and "cropped 161x121 to 160x120" in r.stderr, r.stderr
        outs.append(out)
    (info, frames), (rgb_info, rgb_frames) = decoded_planes(outs[0]), decoded_planes(outs[1])
    assert info == rgb_info and info[:3] == (160, 120, "yuv420p")
    # the odd size takes the RGB path: the same input to the same encoder
    assert all(a.to_ndarray().tobytes() == b.to_ndarray().tobytes() for a, b in zip(frames, rgb_frames))


def test_a_resize_after_dedup_shows_each_duplicate_its_references_picture(tmp_path):
    plain, deduped = tmp_path / "plain.mkv", tmp_path / "dedup.mkv"
    report = tmp_path / "r.json"
    assert run_engine("stream", CLIP, plain, "--quiet", "--encoder", "ffv1", "--frames", "96",
                      "--pipeline", "resize:width=160").returncode == 0
    r = run_engine("stream", CLIP, deduped, "--quiet", "--encoder", "ffv1", "--frames", "96",
                   "--pipeline", "dedup,resize:width=160", "--report", report)
    assert r.returncode == 0, r.stderr
    (_, a), (_, b) = decoded_planes(plain), decoded_planes(deduped)
    assert len(a) == len(b) == 96
    shown = [f.to_ndarray().tobytes() for f in b]
    own = [f.to_ndarray().tobytes() for f in a]
    # every output frame is its own resized picture (unique) or the previous output's (a duplicate)
    dups = 0
    for i in range(96):
        if shown[i] != own[i]:
            assert i and shown[i] == shown[i - 1], i
            dups += 1
    counters = next(s for s in json.loads(report.read_text())["stages"] if s["name"] == "dedup")["counters"]
    assert 0 < dups <= counters["exact_duplicates"] + counters["near_duplicates"]


def test_resume_segments_equal_the_single_pass(tmp_path):
    single, segmented = tmp_path / "single.mkv", tmp_path / "segmented.mkv"
    args = ["--quiet", "--encoder", "ffv1", "--frames", "72", "--pipeline", "dedup,resize:width=160"]
    assert run_engine("stream", CLIP, single, *args).returncode == 0
    r = run_engine("stream", CLIP, segmented, *args, "--resume", "--segment", "24f")
    assert r.returncode == 0, r.stderr
    (ia, a), (ib, b) = decoded_planes(single), decoded_planes(segmented)
    assert ia == ib and len(a) == len(b) == 72
    assert all(x.to_ndarray().tobytes() == y.to_ndarray().tobytes() for x, y in zip(a, b))
