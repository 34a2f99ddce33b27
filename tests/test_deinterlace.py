"""--deinterlace: bwdif on the decoded pictures, one frame per frame, the input's timestamps,
and the same pixels whether the video runs in one pass or in segments."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from engine.deinterlace import Deinterlacer
from engine.source import VideoSource
from tests.conftest import run_engine

W, H = 128, 96


def scene(t: int) -> np.ndarray:
    """A bar moving 3 px per field over a stripe texture (one picture per field time)."""
    img = np.full((H, W, 3), 30, np.uint8)
    img[::8] = 90
    x = (8 + 3 * t) % (W - 10)
    img[:, x:x + 10] = 220
    return img


def woven(i: int, tff: bool = True) -> np.ndarray:
    """Frame i: the first field's rows (even for top field first) from field time 2i, the
    second's from 2i+1."""
    first, second = scene(2 * i), scene(2 * i + 1)
    out = first if tff else second
    out[1::2] = (second if tff else first)[1::2]
    return out


def error_to_first_fields(frames: list[np.ndarray]) -> float:
    """Mean error against the progressive pictures at each frame's first field time (what
    bwdif, one frame per frame, reconstructs)."""
    return float(np.mean([np.abs(f.astype(float) - scene(2 * i)).mean() for i, f in enumerate(frames)]))


def write_interlaced(path, tff: bool, frames: int = 30):
    """Interlaced H.264 whose frames carry their field order (libx264 takes it from each
    frame's flags, which `setfield` sets: PyAV cannot)."""
    flags = av.filter.Graph()
    src = flags.add_buffer(width=W, height=H, format="yuv420p", time_base=Fraction(1, 25))
    field = flags.add("setfield", "tff" if tff else "bff")
    out = flags.add("buffersink")
    src.link_to(field)
    field.link_to(out)
    flags.configure()
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.options = {"flags": "+ildct+ilme", "crf": "8", "g": "6", "preset": "ultrafast"}
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(woven(i, tff), format="rgb24").reformat(format="yuv420p")
            picture.pts, picture.time_base = i, Fraction(1, 25)
            flags.push(picture)
            c.mux(s.encode(flags.pull()))
        c.mux(s.encode(None))
    return path


@pytest.fixture(scope="module")
def interlaced(tmp_path_factory):
    return write_interlaced(tmp_path_factory.mktemp("deinterlace") / "tff.mkv", tff=True)


def decoded(path) -> tuple[list[np.ndarray], list[int]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [f.pts for f in frames]


@pytest.mark.parametrize("tff", [True, False], ids=["top-first", "bottom-first"])
def test_deinterlacing_follows_each_frames_field_order_and_keeps_every_timestamp(interlaced, tmp_path, tff):
    src = interlaced if tff else write_interlaced(tmp_path / "bff.mkv", tff=False)
    woven_out, deint_out = tmp_path / "woven.mkv", tmp_path / "deint.mkv"
    assert run_engine("stream", src, woven_out, "--encoder", "ffv1").returncode == 0
    r = run_engine("stream", src, deint_out, "--encoder", "ffv1", "--deinterlace", "auto",
                   "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    woven_px, woven_pts = decoded(woven_out)
    deint_px, deint_pts = decoded(deint_out)
    assert deint_pts == woven_pts and len(deint_pts) == 30
    # the woven frames mix two times; deinterlaced ones show the first field's (the wrong
    # parity would show the second's, as far off as the woven frames)
    before, after = error_to_first_fields(woven_px), error_to_first_fields(deint_px)
    assert after < before / 3, (before, after)
    assert "note: deinterlaced 30 of 30 frames (bwdif" in r.stderr
    assert "the input is interlaced" not in r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["deinterlace"] == {"mode": "auto", "filter": "bwdif", "frames": 30,
                                     "flagged_interlaced": 30, "deinterlaced": 30}


def test_auto_leaves_progressive_input_untouched(clip, tmp_path):
    src = clip(frames=12, width=64, height=48)
    plain, auto = tmp_path / "plain.mkv", tmp_path / "auto.mkv"
    assert run_engine("stream", src, plain, "--encoder", "ffv1").returncode == 0
    r = run_engine("stream", src, auto, "--encoder", "ffv1", "--deinterlace", "auto")
    assert r.returncode == 0, r.stderr
    assert "no frame is flagged interlaced, so none was deinterlaced" in r.stderr
    a, b = decoded(plain)[0], decoded(auto)[0]
    assert len(a) == len(b) == 12 and all(np.array_equal(x, y) for x, y in zip(a, b))
    # `all` filters them anyway (a video flagged wrong): the pixels change
    forced = tmp_path / "all.mkv"
    assert run_engine("stream", src, forced, "--encoder", "ffv1", "--deinterlace", "all").returncode == 0
    assert not all(np.array_equal(x, y) for x, y in zip(a, decoded(forced)[0]))


def test_deinterlacer_keeps_seq_pts_meta_and_depth(clip):
    src = VideoSource(str(clip(frames=5, width=64, height=48, codec="libx265", pix_fmt="yuv420p10le")))
    try:
        raw = list(src.frames())
        for f in raw:
            f.meta["mark"] = f.seq
        src.close()
        src = VideoSource(src.path)
        again = list(src.frames())
        for f in again:
            f.meta["mark"] = f.seq
        out = list(Deinterlacer("all").frames(iter(again)))
    finally:
        src.close()
    assert [(f.seq, f.pts, f.meta["mark"]) for f in out] == [(f.seq, f.pts, f.seq) for f in raw]
    assert out[0].picture.format.name == "yuv420p10le" and out[0].data.dtype == np.uint16


@pytest.mark.parametrize("pipeline", ["none", "dedup"])
def test_segments_give_the_single_pass_pixels(interlaced, tmp_path, pipeline):
    """Each segment decodes a frame either side for bwdif's taps: a cut changes no pixel."""
    single, segmented = tmp_path / "single.mkv", tmp_path / "segmented.mkv"
    common = ("--encoder", "ffv1", "--deinterlace", "all", "--pipeline", pipeline)
    one = run_engine("stream", interlaced, single, *common, "--report", tmp_path / "one.json")
    assert one.returncode == 0, one.stderr
    r = run_engine("stream", interlaced, segmented, *common, "--resume", "--segment", "6f",
                   "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["segments"]["total"] == 5
    # the segments' counts add up to the single pass's (context frames are not counted twice)
    assert report["deinterlace"] == json.loads((tmp_path / "one.json").read_text())["deinterlace"]
    assert report["deinterlace"]["deinterlaced"] == 30
    assert r.stderr.count("note: deinterlaced 30 of 30 frames (bwdif") == 1
    a, b = decoded(single), decoded(segmented)
    assert a[1] == b[1]
    different = [i for i, (x, y) in enumerate(zip(a[0], b[0])) if not np.array_equal(x, y)]
    assert different == []


def test_a_size_change_restarts_the_filter_and_segments_still_match(tmp_path):
    """bwdif's graph holds one size: at a change the frames before take the end-of-stream rule,
    a new graph starts, and the frames are then held at the first size (engine/frame_size.py)."""
    frames = decoded(write_interlaced(tmp_path / "a.mkv", tff=True, frames=8))[0]  # woven fields
    directory = tmp_path / "seq"
    directory.mkdir()
    for i, img in enumerate(frames + [np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in frames]):
        av.VideoFrame.from_ndarray(img, format="rgb24").to_image().save(directory / f"{i:04d}.png")
    pattern = directory / "%04d.png"
    common = ("--encoder", "ffv1", "--deinterlace", "all", "--fps", "25")
    single, segmented, alone = tmp_path / "single.mkv", tmp_path / "segmented.mkv", tmp_path / "alone.mkv"
    r = run_engine("stream", pattern, single, *common)
    assert r.returncode == 0, r.stderr
    assert "8 frame(s) from seq 8 on had another size (256x192) than the first frame's 128x96" in r.stderr
    r = run_engine("stream", pattern, segmented, *common, "--resume", "--segment", "3f")
    assert r.returncode == 0, r.stderr
    assert run_engine("stream", pattern, alone, *common, "--frames", "8").returncode == 0
    a, b, c = decoded(single)[0], decoded(segmented)[0], decoded(alone)[0]
    assert len(a) == len(b) == 16 and all(x.shape == (96, 128, 3) for x in a)
    assert [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)] == []
    # the frames before the change are those of the first size alone, ended there
    assert all(np.array_equal(x, y) for x, y in zip(a[:8], c))


def test_resume_refuses_a_changed_deinterlace_mode(interlaced, tmp_path):
    out, work = tmp_path / "out.mkv", tmp_path / "work"
    env = {"ENGINE_CRASH_AT": "segment-done:2"}
    first = run_engine("stream", interlaced, out, "--encoder", "ffv1", "--deinterlace", "all",
                       "--resume", "--segment", "6f", "--work-dir", work, env=env)
    assert first.returncode != 0 and not out.exists()
    r = run_engine("stream", interlaced, out, "--encoder", "ffv1", "--resume", "--segment", "6f",
                   "--work-dir", work)
    assert r.returncode == 2
    assert "the decoding options changed (--deinterlace, --fps)" in r.stderr


def test_probe_names_the_field_order(interlaced, clip, tmp_path):
    r = run_engine("probe", interlaced)
    assert r.returncode == 0 and "interlaced, top field first (12 of 12 frames sampled): the frames' own" in r.stdout
    # libx264 writes top-first in its header whatever its frames say: probe said top first
    bottom = write_interlaced(tmp_path / "bff.mkv", tff=False, frames=6)
    r = run_engine("probe", bottom)
    assert "interlaced, bottom field first (6 of 6 frames sampled)" in r.stdout
    assert "the stream's header says interlaced, top field first" in r.stdout
    r = run_engine("probe", clip(frames=4), "--json")
    assert json.loads(r.stdout)["scan"] == "progressive"
    assert json.loads(r.stdout)["frame_scan"] == "progressive (4 of 4 frames sampled)"


def test_a_picture_too_small_for_bwdif_is_refused_in_one_line(clip, tmp_path):
    r = run_engine("stream", clip(frames=3, width=16, height=2), tmp_path / "o.mkv", "--deinterlace", "auto")
    assert r.returncode == 2 and "--deinterlace needs a picture at least 3 rows high" in r.stderr, r.stderr
