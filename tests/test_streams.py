"""Audio, subtitle and other streams: copied packet for packet, in sync, never dropped silently."""

from __future__ import annotations

import av
import pytest

from conftest import MEDIA, decoded_indices, run_engine
from make_clip import add_side_streams

FRAME_S = 1001 / 24000
SRT = "1\n00:00:00,500 --> 00:00:01,200\nHello\n\n2\n00:00:01,300 --> 00:00:01,900\nWorld\n"


def span(path, index):
    """(first packet time, end of last packet, packet count) of stream `index`, from packets."""
    with av.open(str(path)) as c:
        stream = c.streams[index]
        times = [(float(p.pts * p.time_base), float((p.pts + (p.duration or 0)) * p.time_base))
                 for p in c.demux(stream) if p.pts is not None]
    return min(t[0] for t in times), max(t[1] for t in times), len(times)


def streams(path):
    with av.open(str(path)) as c:
        return [(s.type, s.metadata.get("language")) for s in c.streams]


@pytest.fixture(scope="module")
def multi(clip, clip_dir):
    video = clip(frames=48)
    return add_side_streams(video, clip_dir / "multi.mkv", [("eng", 0.0, 2.0), ("jpn", 0.5, 3.0)], SRT,
                            font=b"not really a font" * 10)


def test_two_audio_tracks_and_subtitles_survive_in_mkv(multi, tmp_path):
    out = tmp_path / "out.mkv"
    r = run_engine("stream", multi, out)
    assert r.returncode == 0, r.stderr
    assert streams(out) == streams(multi)
    assert [t for t, _ in streams(out)] == ["video", "audio", "audio", "subtitle", "attachment"]
    with av.open(str(out)) as c:
        font = c.streams[4]
        assert (font.name, bytes(font.data)) == ("font.ttf", b"not really a font" * 10)
    for index in (1, 2, 3):
        start_in, end_in, n_in = span(multi, index)
        start_out, end_out, n_out = span(out, index)
        assert n_out == n_in
        assert start_out == pytest.approx(start_in, abs=FRAME_S)
        assert end_out == pytest.approx(end_in, abs=FRAME_S)
    assert decoded_indices(out) == list(range(48))


def test_mp4_skips_what_it_cannot_hold_and_says_so(multi, tmp_path):
    out = tmp_path / "out.mp4"
    r = run_engine("stream", multi, out)
    assert r.returncode == 0, r.stderr
    assert [t for t, _ in streams(out)] == ["video", "audio", "audio"]
    assert "not carried to the output: stream #3" in r.stderr and "use .mkv" in r.stderr
    assert "stream #4 (attachment font.ttf): .mp4 cannot hold attachments" in r.stderr


def test_audio_longer_than_video_is_kept_whole(clip, clip_dir, tmp_path):
    src = add_side_streams(clip(frames=24), clip_dir / "long-audio.mkv", [("eng", 0.0, 3.0)])
    out = tmp_path / "out.mkv"
    assert run_engine("stream", src, out, "--quiet").returncode == 0
    assert span(out, 1)[1] == pytest.approx(span(src, 1)[1], abs=FRAME_S)
    assert span(out, 1)[1] > 2.9


def test_frame_limit_cuts_audio_where_the_video_ends(multi, tmp_path):
    out = tmp_path / "out.mkv"
    assert run_engine("stream", multi, out, "--frames", "12", "--quiet").returncode == 0
    _, video_end, frames = span(out, 0)
    _, audio_end, _ = span(out, 1)
    assert frames == 12
    assert audio_end == pytest.approx(12 * FRAME_S, abs=FRAME_S)


@pytest.mark.parametrize("name", ["anime-320x240.mp4", "anime-1080p.mp4"])
def test_real_clip_audio_in_sync(tmp_path, name):
    src = MEDIA / name
    out = tmp_path / "out.mp4"
    assert run_engine("stream", src, out, "--preset", "ultrafast", "--quiet").returncode == 0
    for index in (0, 1):
        start_in, end_in, n_in = span(src, index)
        start_out, end_out, n_out = span(out, index)
        assert n_out == n_in
        assert (start_out, end_out) == pytest.approx((start_in, end_in), abs=FRAME_S)


def test_image_sequence_says_audio_is_not_written(tmp_path):
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", tmp_path / "f" / "%04d.png", "--frames", "3")
    assert r.returncode == 0, r.stderr
    assert "not carried to the output: stream #1 (aac audio" in r.stderr
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["0001.png", "0002.png", "0003.png"]


def test_vfr_video_with_offset_audio_stays_in_sync(clip, clip_dir, tmp_path):
    pts = (0, 40, 80, 150, 190, 300, 333, 366, 500, 520, 540, 700)
    video = clip(frames=len(pts), ext=".mkv", pts_ms=pts)
    src = add_side_streams(video, clip_dir / "vfr-audio.mkv", [("eng", 0.25, 0.5)])
    out = tmp_path / "out.mp4"
    assert run_engine("stream", src, out, "--quiet", "--pipeline", "resize:scale=1").returncode == 0
    assert span(out, 1)[:2] == pytest.approx(span(src, 1)[:2], abs=FRAME_S)
    assert span(out, 0)[0] == pytest.approx(0.0, abs=1e-6)
