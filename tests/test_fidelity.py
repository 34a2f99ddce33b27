"""Output faithful to the input: timestamps, frame rate, bit depth, colour tags, rotation."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import MEDIA, decoded_pts, run_engine
from engine.testing import frame_index


def video_stream_info(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        frames = [f for f in c.decode(s)]
        return {"pix_fmt": cc.format.name, "codec": cc.name, "rate": s.average_rate,
                "tags": (int(cc.colorspace), int(cc.color_primaries), int(cc.color_trc), int(cc.color_range)),
                "rotation": frames[0].rotation, "frames": len(frames),
                "indices": [frame_index(f.to_ndarray(format="rgb48le")) for f in frames]}


def test_variable_frame_rate_keeps_every_timestamp(clip, tmp_path):
    pts = [0, 40, 80, 150, 190, 300, 333, 366, 500, 520, 540, 700]
    src = clip(frames=len(pts), ext=".mkv", pts_ms=tuple(pts))
    for ext in (".mkv", ".mp4"):
        out = tmp_path / f"out{ext}"
        r = run_engine("stream", src, out, "--quiet", "--pipeline", "resize:scale=1")
        assert r.returncode == 0, r.stderr
        assert decoded_pts(out) == pytest.approx([p / 1000 for p in pts], abs=1e-6)


@pytest.mark.parametrize("pipeline", ["none", "resize:scale=1"])
def test_10bit_hevc_stays_10bit(clip, tmp_path, pipeline):
    src = clip(frames=12, width=64, height=48, codec="libx265", pix_fmt="yuv420p10le")
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out, "--pipeline", pipeline)
    assert r.returncode == 0, r.stderr
    assert "yuv420p10le" in r.stderr  # the chosen encoder's format is reported
    info = video_stream_info(out)
    assert info["pix_fmt"] == "yuv420p10le" and info["codec"] == "hevc"
    assert info["indices"] == list(range(12))


def test_10bit_frames_reach_stages_as_uint16(clip):
    from engine.source import VideoSource

    src = VideoSource(str(clip(frames=3, codec="libx265", pix_fmt="yuv420p10le")))
    frame = next(src.frames())
    assert frame.data.dtype == np.uint16 and frame.data.max() > 255
    src.close()


def test_8bit_stays_8bit(clip, tmp_path):
    out = tmp_path / "out.mp4"
    assert run_engine("stream", clip(frames=6), out, "--quiet").returncode == 0
    assert video_stream_info(out)["pix_fmt"] == "yuv420p"


def planes(path) -> tuple[str, int, list[list[np.ndarray]]]:
    """The decoded pictures' format, range and samples, plane by plane (no conversion)."""
    with av.open(str(path)) as c:
        pictures = list(c.decode(video=0))
    return pictures[0].format.name, int(pictures[0].color_range), [
        [np.frombuffer(bytes(p), np.uint8).reshape(-1, p.line_size)[:p.height, :p.width] for p in f.planes]
        for f in pictures]


@pytest.mark.parametrize("encoder,ext", [("x264", ".mp4"), ("ffv1", ".mkv")])
def test_full_range_yuvj_input_is_passed_through_losslessly(clip, tmp_path, encoder, ext):
    """yuvj420p (MJPEG, phone video) is yuv420p at full range: lossless output keeps every
    sample. It went through RGB (x264: a level off) and FFV1 chose 4:4:4 for it."""
    src = clip(frames=6, pix_fmt="yuvj420p", crf=0)
    out = tmp_path / f"out{ext}"
    r = run_engine("stream", src, out, "--quiet", "--pipeline", "none", "--encoder", encoder,
                   *(["--crf", "0"] if encoder == "x264" else []))
    assert r.returncode == 0, r.stderr
    (_, in_range, a), (fmt, out_range, b) = planes(src), planes(out)
    assert in_range == out_range == 2 and fmt in ("yuv420p", "yuvj420p")
    assert len(a) == len(b) == 6
    assert all(np.array_equal(x, y) for fa, fb in zip(a, b) for x, y in zip(fa, fb))


@pytest.mark.parametrize("encoder,ext", [("x264", ".mp4"), ("prores", ".mov"), ("ffv1", ".mkv")])
@pytest.mark.parametrize("pipeline", ["none", "resize:scale=1"])
def test_colour_tags_are_copied(clip, tmp_path, pipeline, encoder, ext):
    # ProRes writes each frame's primaries and transfer into its header: a picture converted
    # from RGB carries neither, and BT.709 (or PQ) came out unspecified
    src = clip(frames=6, width=128, height=96, bt709=True)
    out = tmp_path / f"out{ext}"
    r = run_engine("stream", src, out, "--quiet", "--pipeline", pipeline, "--encoder", encoder)
    assert r.returncode == 0, r.stderr
    assert video_stream_info(src)["tags"] == (1, 1, 1, 1)
    assert video_stream_info(out)["tags"] == (1, 1, 1, 1)
    with av.open(str(out)) as c:  # the decoded pictures too, not only the stream's fields
        first = next(c.decode(video=0))
        assert (int(first.color_primaries), int(first.color_trc)) == (1, 1)
    assert video_stream_info(out)["indices"] == list(range(6))


def rgb_picture(seq):
    rgb = np.zeros((48, 64, 3), np.uint8)  # saturated colours: a wrong matrix is far off
    rgb[:, :, 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    rgb[:, :, 1] = 200 - 10 * seq
    rgb[24:, :, 2] = 220
    return rgb


@pytest.mark.parametrize("pipeline", ["none", "resize:scale=1"])
def test_rgb_coded_input_is_tagged_as_the_matrix_it_is_converted_with(clip, tmp_path, pipeline):
    # PNG in .mov is RGB-coded (matrix "RGB"); a 4:2:0 stream tagged so is not valid H.264,
    # and FFV1, which can hold RGB, got 4:4:4 YUV instead of the lossless copy
    src = clip(frames=4, ext=".mov", codec="png", pix_fmt="rgb24", image=rgb_picture)

    def pictures(path):
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]

    out = tmp_path / "out.mp4"
    assert run_engine("stream", src, out, "--pipeline", pipeline).returncode == 0
    info = video_stream_info(out)
    assert (info["pix_fmt"], info["tags"][0], info["tags"][3]) == ("yuv420p", 1, 1)  # BT.709, limited
    assert np.abs(np.array(pictures(out)) - np.array(pictures(src))).mean() < 3
    lossless = tmp_path / "out.mkv"
    assert run_engine("stream", src, lossless, "--encoder", "ffv1", "--pipeline", pipeline).returncode == 0
    assert video_stream_info(lossless)["pix_fmt"] == "bgr0"
    assert np.array_equal(pictures(lossless), pictures(src))


def hdr_of_first_frame(path):
    from engine.hdr import hdr_static_of

    with av.open(str(path)) as c:
        return hdr_static_of(next(c.decode(video=0)))


@pytest.mark.parametrize("pipeline", ["none", "resize:width=32:height=24"])
def test_hdr10_metadata_is_kept_by_x265(clip, tmp_path, pipeline):
    src = clip(frames=6, codec="libx265", pix_fmt="yuv420p10le", hdr10=True)
    hdr = hdr_of_first_frame(src)
    assert hdr is not None and hdr.max_cll == 1000 and hdr.luminance[1] == 1000
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out, "--pipeline", pipeline)  # auto: x265 for 10-bit here
    assert r.returncode == 0, r.stderr
    assert "libx265" in r.stderr and "HDR10" not in r.stderr
    assert hdr_of_first_frame(out) == hdr
    assert video_stream_info(out)["tags"] == (9, 9, 16, 1)


def test_hdr10_metadata_an_encoder_cannot_take_is_said(clip, tmp_path):
    src = clip(frames=6, codec="libx265", pix_fmt="yuv420p10le", hdr10=True)
    out = tmp_path / "out.mov"
    r = run_engine("stream", src, out, "--encoder", "prores")
    assert r.returncode == 0, r.stderr
    assert "HDR10 metadata" in r.stderr and "--encoder x265" in r.stderr
    assert video_stream_info(out)["tags"] == (9, 9, 16, 1)  # PQ is still PQ
    probed = run_engine("probe", src)
    assert "HDR10: mastering display 0.0001-1000 cd/m2, MaxCLL 1000, MaxFALL 400" in probed.stdout


def test_hdr10_metadata_turns_back_into_x265s_own_options():
    from make_clip import HDR10_PARAMS

    from engine.hdr import HdrStatic

    hdr = HdrStatic(primaries=((Fraction(17, 25), Fraction(8, 25)), (Fraction(53, 200), Fraction(69, 100)),
                               (Fraction(3, 20), Fraction(3, 50))),
                    white_point=(Fraction(3127, 10000), Fraction(329, 1000)),
                    luminance=(Fraction(1, 10000), Fraction(1000)), max_cll=1000, max_fall=400)
    assert ":".join(hdr.x265_params()) == HDR10_PARAMS
    assert HdrStatic(max_cll=500, max_fall=None).x265_params() == ["max-cll=500,0"]


def test_dynamic_hdr_metadata_is_named_and_said_to_be_dropped():
    from types import SimpleNamespace

    from engine.encoders import choose_encoder
    from engine.hdr import hdr_static_of
    from engine.sink import VideoSink
    from engine.source import VideoInfo
    from engine.streamcopy import CopyPlan

    class Side:  # side data as PyAV hands it over: a type and bytes
        def __init__(self, name):
            self.type = SimpleNamespace(name=name)

        def __bytes__(self):
            return b"\0" * 16

    picture = SimpleNamespace(side_data=[Side("DYNAMIC_HDR_PLUS"), Side("DOVI_RPU_BUFFER"), Side("DOVI_METADATA")])
    hdr = hdr_static_of(picture)
    assert hdr.dynamic == ("HDR10+", "Dolby Vision") and hdr.x265_params() == []
    info = VideoInfo(64, 48, "yuv420p10le", 10, Fraction(1, 24), Fraction(24), 0, None, "hevc", 9, 1, 9, 16, hdr=hdr)
    sink = VideoSink("/tmp/never.mkv", choose_encoder("x265", ".mkv", 10), info, input_path="/dev/null",
                     copy_plan=CopyPlan())
    assert sink.notes == ["note: the input's HDR10+ and Dolby Vision metadata is not carried (the output is plain HDR10)"]


def test_rotation_is_honoured(clip, tmp_path):
    src = clip(frames=6, rotation=90)
    out = tmp_path / "out.mp4"
    assert run_engine("stream", src, out, "--quiet").returncode == 0
    assert video_stream_info(src)["rotation"] == 90
    assert video_stream_info(out)["rotation"] == 90


@pytest.mark.parametrize("ext, pipeline, frame_size, sar", [
    (".mp4", "none", (320, 240), (4, 3)),
    (".mkv", "resize:scale=2", (640, 480), (4, 3)),            # a uniform scale keeps the pixel shape
    (".mov", "resize:width=640:height=240", (640, 240), (2, 3)),  # stretched: pixels narrow to match
])
def test_anamorphic_video_keeps_its_display_shape(tmp_path, ext, pipeline, frame_size, sar):
    # the shipped sample is 320x240 shown as 16:9; its output used to play as 4:3
    src = MEDIA / "anime-320x240.mp4"
    out = tmp_path / f"out{ext}"
    r = run_engine("stream", src, out, "--quiet", "--frames", "6", "--encoder", "prores" if ext == ".mov" else "auto",
                   "--pipeline", pipeline)
    assert r.returncode == 0, r.stderr
    with av.open(str(src)) as c:
        assert c.streams.video[0].display_aspect_ratio == Fraction(16, 9)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == frame_size
        assert s.sample_aspect_ratio == Fraction(*sar)
        assert Fraction(s.width, s.height) * s.sample_aspect_ratio == Fraction(16, 9)


def test_a_stage_in_rgb_gets_the_exact_conversion_and_hands_back_the_same_luma(tmp_path):
    """swscale's default YUV -> RGB rounds down and takes the nearest chroma: a stage saw the
    real clip 1 level dark on average (up to 16 off at colour edges), and a frame through an
    RGB stage that changed nothing came out 1.1 levels darker in FFV1 (3 % of luma exact)."""
    import torch

    from engine.colour import picture_planes, spec_for, yuv_to_rgb
    from engine.frame import Frame

    src = MEDIA / "anime-320x240.mp4"
    with av.open(str(src)) as c:
        picture = next(c.decode(video=0))
        fmt, spec = spec_for(picture)
        exact = yuv_to_rgb([torch.from_numpy(np.array(p))[None].float() for p in picture_planes(picture, fmt)],
                           fmt, spec)[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).numpy()
        seen = Frame.from_picture(0, 0, Fraction(1, 24), picture, "rgb24").data.astype(int)
    assert np.abs(seen - exact).max() <= 1 and abs((seen - exact).mean()) < 0.02
    live = MEDIA / "live-handheld-426x240.mkv"  # natural colours: 1.6 % of pixels clip in 8-bit RGB
    out = tmp_path / "out.mkv"
    r = run_engine("stream", live, out, "--quiet", "--frames", "6", "--encoder", "ffv1", "--pipeline", "test.add:value=0",
                   env={"ENGINE_STAGE_MODULES": "engine.testing"})
    assert r.returncode == 0, r.stderr
    with av.open(str(live)) as a, av.open(str(out)) as b:
        for x, y in zip(a.decode(video=0), b.decode(video=0)):
            assert y.format.name == "yuv420p"
            lx, ly = x.to_ndarray()[:240].astype(int), y.to_ndarray()[:240].astype(int)
            assert (lx == ly).mean() > 0.98 and abs((ly - lx).mean()) < 0.05  # was 3 % exact, 1.1 dark


@pytest.mark.parametrize("pipeline", ["none", "test.add:value=0"])
def test_limited_range_grey_keeps_its_levels_in_yuv(tmp_path, pipeline):
    """swscale takes every grey picture as full range: limited grey written as YUV came out
    squeezed (16 -> 30, 235 -> 218), straight and through an RGB stage."""
    src = tmp_path / "grey.mkv"
    bands = np.array([16, 60, 128, 200, 235] * 13, np.uint8)[:64]
    with av.open(str(src), "w") as c:
        s = c.add_stream("ffv1", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "gray"
        s.codec_context.color_range = 1  # limited ("tv")
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.tile(bands, (48, 1)), format="gray")
            f.pts, f.color_range = i, 1
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out, "--quiet", "--encoder", "x264", "--crf", "10", "--pipeline", pipeline,
                   env={"ENGINE_STAGE_MODULES": "engine.testing"})
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert int(c.streams.video[0].codec_context.color_range) == 1
        frame = next(c.decode(video=0))
        luma = frame.to_ndarray()[:48].astype(int)
    assert np.abs(luma - bands[None, :].astype(int)).max() <= 2


@pytest.mark.parametrize("encoder", ["x264", "x265"])
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p", "yuv420p10le", "yuv422p10le"])
def test_crf_0_is_lossless_in_the_inputs_own_format(tmp_path, encoder, pix_fmt):
    """x264's crf 0 is lossless at 8 bits only (10-bit came back up to 5 levels off) and went
    to 4:2:0 whatever the input; x265's crf 0 is not lossless at all."""
    from make_clip import make_clip

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    src = make_clip(tmp_path / "src.mkv", 3, codec="ffv1", pix_fmt=pix_fmt, image=lambda s: images[s])
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out, "--quiet", "--encoder", encoder, "--crf", "0")
    assert r.returncode == 0, r.stderr
    dtype = "<u2" if pix_fmt.endswith("le") else np.uint8
    with av.open(str(src)) as a, av.open(str(out)) as b:
        for x, y in zip(a.decode(video=0), b.decode(video=0)):
            assert y.format.name == pix_fmt
            for p, q in zip(x.planes, y.planes):
                step = np.dtype(dtype).itemsize
                pa = np.frombuffer(p, dtype).reshape(-1, p.line_size // step)[:p.height, :p.width]
                qa = np.frombuffer(q, dtype).reshape(-1, q.line_size // step)[:q.height, :q.width]
                assert np.array_equal(pa, qa)


@pytest.mark.parametrize("ext", [".mov", ".mkv"])
def test_prores_frames_carry_the_outputs_matrix(clip, tmp_path, ext):
    """ProRes writes each frame's matrix into its header: a frame converted from RGB had none,
    so a BT.601 source read back as unspecified (players take BT.709 at HD: 26 levels off)."""
    from make_clip import make_clip

    src = make_clip(tmp_path / "bt601.mp4", 3, options={
        "x264-params": "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m"})
    assert video_stream_info(src)["tags"][:3] == (6, 6, 6)
    out = tmp_path / f"out{ext}"
    r = run_engine("stream", src, out, "--quiet", "--encoder", "prores", "--pipeline", "test.add:value=0",
                   env={"ENGINE_STAGE_MODULES": "engine.testing"})
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert (int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc)) == (6, 6, 6)


@pytest.mark.parametrize("encoder, said", [("ffv1", True), ("prores", True), ("x264", False)])
def test_a_pixel_shape_matroska_cannot_hold_is_said(tmp_path, encoder, said):
    """FFV1 and ProRes carry no pixel aspect ratio in their bitstream and PyAV cannot set
    Matroska's display size: the output plays with square pixels, which was silent."""
    out = tmp_path / "out.mkv"
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", out, "--frames", "3", "--encoder", encoder)
    assert r.returncode == 0, r.stderr
    note = "the pixels are 4:3 (shown as 427x240)"
    assert (note in r.stderr) == said, r.stderr
    with av.open(str(out)) as c:  # what the note is about: read back without the shape, or with it
        assert (c.streams.video[0].sample_aspect_ratio is None) == said


def test_output_aspect_ratio_fits_the_bitstream_fields():
    from engine.sink import output_aspect_ratio

    assert output_aspect_ratio(None, (720, 480), (1440, 960)) is None
    assert output_aspect_ratio(Fraction(32, 27), (720, 480), (853, 480)) == Fraction(32 * 720, 27 * 853)
    assert output_aspect_ratio(Fraction(4, 3), (720, 480), (960, 480)) is None  # square now
    odd = output_aspect_ratio(Fraction(65521, 65519), (1001, 999), (997, 1003))
    assert odd.numerator <= 65535 and odd.denominator <= 65535
    assert abs(odd - Fraction(65521, 65519) * Fraction(1001 * 1003, 997 * 999)) < 1e-6


@pytest.mark.parametrize("pipeline", ["none", "resize:scale=1"])
def test_full_range_input_to_prores_is_converted_to_limited_range(clip, tmp_path, pipeline):
    # ProRes cannot signal full range: decoders read it as limited, so full-range samples
    # under that tag came out with stretched levels (input 16..182 read back as 62..732 of 1023)
    src = tmp_path / "full.mp4"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        s.codec_context.color_range = 2
        for i in range(4):
            rgb = np.full((48, 64, 3), 40 + 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                    format="yuvj420p", dst_color_range=2)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = tmp_path / "out.mov"
    r = run_engine("stream", src, out, "--encoder", "prores", "--pipeline", pipeline)
    assert r.returncode == 0, r.stderr
    assert "limited range" in r.stderr

    def grey(path):
        with av.open(str(path)) as c:
            return [float(f.to_ndarray(format="rgb24").mean()) for f in c.decode(video=0)]

    with av.open(str(out)) as c:
        assert int(c.streams.video[0].codec_context.color_range) == 1
    assert grey(out) == pytest.approx(grey(src), abs=2.5)  # limited range: 219 levels of 255


# FFmpeg's ProRes decoder reports 4444 as 12-bit whatever the encoder wrote
@pytest.mark.parametrize("profile,pix_fmt", [("hq", "yuv422p10le"), ("4444", "yuv444p12le")])
def test_prores_profiles(clip, tmp_path, profile, pix_fmt):
    out = tmp_path / "out.mov"
    r = run_engine("stream", clip(frames=4), out, "--encoder", "prores", "--prores-profile", profile)
    assert r.returncode == 0, r.stderr
    info = video_stream_info(out)
    assert (info["codec"], info["pix_fmt"], info["indices"]) == ("prores", pix_fmt, [0, 1, 2, 3])


def test_frame_rate_of_real_clip_is_exact(tmp_path):
    out = tmp_path / "out.mkv"
    assert run_engine("stream", MEDIA / "anime-1080p.mp4", out, "--quiet", "--preset", "ultrafast",
                      "--frames", "48").returncode == 0
    with av.open(str(MEDIA / "anime-1080p.mp4")) as c:
        expected = c.streams.video[0].average_rate
    with av.open(str(out)) as c:
        assert c.streams.video[0].guessed_rate == expected


def test_12_bit_input_written_at_10_bits_is_said_and_ffv1_keeps_it(clip, tmp_path):
    src = clip(frames=4, ext=".mkv", codec="ffv1", pix_fmt="yuv420p12le")
    r = run_engine("stream", src, tmp_path / "out.mkv")
    assert r.returncode == 0, r.stderr
    assert "note: the input is 12-bit; x265 writes 10 bits (--encoder ffv1 (.mkv) keeps it)" in r.stderr
    kept = run_engine("stream", src, tmp_path / "kept.mkv", "--encoder", "ffv1")
    assert kept.returncode == 0 and "-bit" not in kept.stderr
    assert video_stream_info(tmp_path / "kept.mkv")["pix_fmt"] == "yuv420p12le"


def test_interlaced_input_is_said_to_be_written_progressive(tmp_path):
    src = tmp_path / "interlaced.mkv"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.options = {"flags": "+ildct+ilme", "x264-params": "tff=1"}  # interlaced coding
        for i in range(4):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            c.mux(s.encode(picture.reformat(format="yuv420p")))
        c.mux(s.encode(None))
    r = run_engine("stream", src, tmp_path / "out.mp4")
    assert r.returncode == 0, r.stderr
    assert "note: the input is interlaced" in r.stderr and "--deinterlace auto deinterlaces them" in r.stderr


def test_the_output_check_reports_progress_as_it_reads(clip):
    """The re-read after closing calls back as it goes, so the stall watchdog can tell a long
    output (an hour of 4K ProRes) from a hung one."""
    from engine.sink import check_written
    path = clip(frames=600, width=16, height=16)
    calls = []
    check_written(str(path), 600, 1, progress=lambda: calls.append(1))
    assert len(calls) == 600 // 256
    with pytest.raises(Exception, match="599 written"):
        check_written(str(path), 599, 1)


PATCHES = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (200, 200, 30)]


def patch_means(pictures) -> list[np.ndarray]:
    """Each flat picture's colour as 8-bit RGB, by BT.709 limited-range arithmetic on its mean
    Y'CbCr (taken YUV -> YUV, which swscale gets right): independent of the RGB path under test."""
    means = []
    for f in pictures:
        y, cb, cr = (f.reformat(format="yuv444p16le").to_ndarray().reshape(-1, 3).mean(0)
                     if f.format.name != "yuv444p16le" else f.to_ndarray().reshape(-1, 3).mean(0)) / 256.0
        y, cb, cr = (y - 16) / 219, (cb - 128) / 224, (cr - 128) / 224
        kr, kb = 0.2126, 0.0722
        r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
        g = (y - kr * r - kb * b) / (1 - kr - kb)
        means.append(np.clip(np.array([r, g, b]) * 255, 0, 255))
    return means


def patch_pictures(pix_fmt: str) -> list[av.VideoFrame]:
    return [av.VideoFrame.from_ndarray(np.full((48, 64, 3), colour, np.uint8), format="rgb24").reformat(
        format=pix_fmt, dst_colorspace=1, dst_color_range=1) for colour in PATCHES]


@pytest.mark.parametrize("pix_fmt", ["yuv420p10le", "p010le", "yuv420p12le", "yuv422p10le", "yuv420p"])
def test_a_stage_sees_a_deep_4_2_0_pictures_colours(pix_fmt):
    """swscale's packed 16-bit RGB from 4:2:0 under full chroma interpolation is wrong: the
    10-bit green patch reached stages (and PNG / ProRes outputs) as (0, 4, 96)."""
    from engine.frame import Frame

    for picture, colour in zip(patch_pictures(pix_fmt), PATCHES):
        frame = Frame.from_picture(0, 0, Fraction(1, 24), picture, "rgb24" if pix_fmt == "yuv420p" else "rgb48le")
        scale = 257 if frame.deep else 1
        assert np.abs(frame.data.reshape(-1, 3).mean(0) / scale - colour).max() < 2.0, (pix_fmt, colour)


@pytest.fixture(scope="module")
def patches_10bit(tmp_path_factory):
    """Four flat colour frames, 10-bit 4:2:0 BT.709, x265 lossless."""
    path = tmp_path_factory.mktemp("patches") / "patches.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx265", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p10le"
        s.codec_context.options = {"x265-params": "lossless=1:log-level=error"}
        s.codec_context.colorspace = s.codec_context.color_primaries = s.codec_context.color_trc = 1
        s.codec_context.color_range = 1
        for i, picture in enumerate(patch_pictures("yuv420p10le")):
            picture.pts = i
            c.mux(s.encode(picture))
        c.mux(s.encode(None))
    return path


@pytest.mark.parametrize("pipeline,encoder,ext", [("none", "prores", ".mov"), ("resize:width=32", "ffv1", ".mkv"),
                                                  ("resize:width=32", "x265", ".mp4")])
def test_10bit_4_2_0_keeps_its_colours_through_rgb(patches_10bit, tmp_path, pipeline, encoder, ext):
    """A 10-bit 4:2:0 input (HEVC Main10) into ProRes, or through any stage, goes through host RGB."""
    out = tmp_path / f"out{ext}"
    r = run_engine("stream", patches_10bit, out, "--quiet", "--pipeline", pipeline, "--encoder", encoder)
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c, av.open(str(patches_10bit)) as i:
        means, wanted = patch_means(c.decode(video=0)), patch_means(i.decode(video=0))
    assert len(means) == len(wanted) == len(PATCHES)
    for mean, colour in zip(means, wanted):
        assert np.abs(mean - colour).max() < 2.0, (mean, colour)


def test_10bit_4_2_0_keeps_its_colours_in_16bit_png(patches_10bit, tmp_path):
    import cv2

    r = run_engine("stream", patches_10bit, tmp_path / "png" / "%02d.png", "--quiet", "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "png").glob("*.png"))
    with av.open(str(patches_10bit)) as i:
        wanted = patch_means(i.decode(video=0))
    assert len(files) == len(wanted) == len(PATCHES)
    for path, colour in zip(files, wanted):
        rgb = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]
        assert rgb.dtype == np.uint16
        assert np.abs(rgb.reshape(-1, 3).mean(0) / 257 - colour).max() < 2.0, colour


def test_ffv1_keeps_alpha_on_the_frames_no_stage_changes_and_says_so(tmp_path):
    """The note said "the output has no alpha" while FFV1 kept the input's yuva444p12le (with
    a stage that changes pixels the plane comes out opaque: stages see RGB)."""
    src = tmp_path / "alpha.mov"
    ramp = np.linspace(0, 255, 64).astype(np.uint8)[None, :].repeat(48, 0)
    with av.open(str(src), "w") as c:
        s = c.add_stream("prores_ks", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuva444p10le"
        s.codec_context.options = {"profile": "4"}
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.dstack([np.full((48, 64, 3), 128, np.uint8), ramp]),
                                           format="rgba").reformat(format="yuva444p10le")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    with av.open(str(src)) as c:
        source_planes = [bytes(p) for p in next(c.decode(video=0)).planes]
    for pipeline, said, exact in [
            ("none", "no stage runs, and the output keeps it", True),
            ("dedup", "the output keeps it on frames no stage changes", True),  # dedup hands pictures on
            ("resize:width=32", "a frame a stage changes gets an opaque alpha", False)]:
        out = tmp_path / f"{pipeline[:4]}.mkv"
        r = run_engine("stream", src, out, "--encoder", "ffv1", "--pipeline", pipeline)
        assert r.returncode == 0, r.stderr
        assert said in r.stderr
        with av.open(str(out)) as c:
            picture = next(c.decode(video=0))
        assert picture.format.name == "yuva444p12le"  # ProRes 4444 decodes to 12 bits
        alpha = np.frombuffer(bytes(picture.planes[3]), np.uint16).reshape(picture.height, -1)[:, :picture.width]
        if exact:
            assert [bytes(p) for p in picture.planes] == source_planes
        else:
            assert alpha.min() == alpha.max() == 4095  # opaque, as the note says


def test_rgba_png_frames_keep_their_alpha_in_ffv1(tmp_path):
    """RGBA PNG frames (the commonest alpha input) went to FFV1 as bgr0, alpha dropped."""
    import cv2

    (tmp_path / "in").mkdir()
    frames = [np.dstack([np.full((48, 64, 3), 40 * i, np.uint8),
                         np.linspace(0, 255, 64).astype(np.uint8)[None, :].repeat(48, 0)]) for i in range(3)]
    for i, rgba in enumerate(frames):
        cv2.imwrite(str(tmp_path / "in" / f"{i + 1:04d}.png"), rgba[..., [2, 1, 0, 3]])
    out = tmp_path / "out.mkv"
    r = run_engine("stream", tmp_path / "in" / "%04d.png", out, "--fps", "24", "--encoder", "ffv1",
                   "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        fmt = c.streams.video[0].codec_context.format.name
        decoded = [f.to_ndarray(format="rgba") for f in c.decode(video=0)]
    assert fmt == "bgra"
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames)) and len(decoded) == 3