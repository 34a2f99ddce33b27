"""Inputs with broken timestamps, and truncated Matroska: repaired visibly, or refused up front.

Every input here is made by the test (tools/make_clip.py): index frames, so each output frame
proves which input frame it is, and a 440 Hz AAC track, so audio sync can be measured.
"""

from __future__ import annotations

import json
from fractions import Fraction

import av
import pytest

from conftest import decoded_indices, run_engine
from make_clip import add_side_streams, concat_bytes, make_clip, rewrite_video_pts

FPS = 24
STEP_MS = 1000 / FPS


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    video = make_clip(d / "v.mp4", 48, 64, 48, fps=FPS)
    good = add_side_streams(video, d / "good.mkv", [("eng", 0.0, 2.0)])
    vfr_ms = [round(sum(1000 / (24 if k % 10 < 5 else 30) for k in range(i))) for i in range(48)]
    vfr = add_side_streams(make_clip(d / "vfr.mkv", 48, 64, 48, pts_ms=vfr_ms), d / "vfr_a.mkv",
                           [("eng", 0.0, 2.0)])
    made = {
        "good": good,
        "zero": rewrite_video_pts(good, d / "zero.mkv", lambda n, pts: 0),
        # frame 20 carries frame 19's pts
        "repeat": rewrite_video_pts(good, d / "repeat.mkv", lambda n, pts: pts),
        "vfr": vfr,
        "raw": make_clip(d / "raw.h264", 24, 64, 48, fps=FPS),  # elementary stream: no pts at all
    }
    originals = _video_pts(good)
    made["repeat"] = rewrite_video_pts(good, d / "repeat.mkv",
                                       lambda n, pts: originals[19] if n == 20 else pts)
    vfr_pts = _video_pts(vfr)
    made["vfr_broken"] = rewrite_video_pts(vfr, d / "vfr_broken.mkv",  # frames 30-34 all at frame 29's pts
                                           lambda n, pts: vfr_pts[29] if 30 <= n <= 34 else pts)
    made["concat"] = concat_bytes([as_ts(good, d / "half.ts")] * 2, d / "concat.ts")  # every stream jumps back at frame 48
    made["originals"], made["vfr_pts"] = originals, vfr_pts
    return made


def as_ts(src, dst):
    """`src`'s streams remuxed into MPEG-TS (whose parts `cat` joins)."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        outs = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.dts is not None:
                packet.stream = outs[packet.stream.index]
                o.mux(packet)
    return dst


def _video_pts(path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def _times(path):
    """(video frame times, audio packet (start, end) times) in seconds."""
    with av.open(str(path)) as c:
        video = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    audio = []
    with av.open(str(path)) as c:
        if c.streams.audio:
            for p in c.demux(c.streams.audio[0]):
                if p.pts is not None and p.size and p.duration:  # not the AAC priming packet
                    audio.append((float(p.pts * p.time_base), float((p.pts + p.duration) * p.time_base)))
    return video, audio


def _stream(src, out, *extra):
    report = out.with_suffix(".json")
    result = run_engine("stream", src, out, "--encoder", "ffv1", "--report", report, *extra)
    return result, (json.loads(report.read_text()) if report.exists() else None)


def _assert_in_sync(video, audio, frames):
    """Audio covers the video from start to end without a gap, within one frame."""
    frame = 1 / FPS
    assert abs(audio[0][0] - video[0]) < frame
    assert abs(audio[-1][1] - (video[-1] + frame)) < frame
    gaps = [b[0] - a[1] for a, b in zip(audio, audio[1:])]
    assert max(abs(g) for g in gaps) < 0.002, "audio has a hole or an overlap"
    assert len(video) == frames


def test_all_zero_pts_are_regenerated_from_the_frame_rate(media, tmp_path):
    out = tmp_path / "out.mkv"
    result, report = _stream(media["zero"], out)
    assert result.returncode == 0, result.stderr
    assert "repaired the timestamps of 47 video frames" in result.stdout + result.stderr
    assert report["timestamps"]["video_frames_repaired"] == 47
    assert report["timestamps"]["first_repaired_seq"] == 1
    assert decoded_indices(out) == list(range(48))
    video, audio = _times(out)
    # regenerated from the anchor, rounded once: no drift from 41 ms block durations
    assert [round(t * 1000) for t in video] == [round(k * STEP_MS) for k in range(48)]
    _assert_in_sync(video, audio, 48)


def test_one_repeated_pts_is_the_only_frame_changed(media, tmp_path):
    out = tmp_path / "out.mkv"
    result, report = _stream(media["repeat"], out)
    assert result.returncode == 0, result.stderr
    assert report["timestamps"]["video_frames_repaired"] == 1
    assert report["timestamps"]["first_repaired_seq"] == 20
    original = media["originals"]
    repaired = _video_pts(out)
    assert repaired[:20] == original[:20] and repaired[21:] == original[21:]
    assert original[19] < repaired[20] < original[21]
    assert decoded_indices(out) == list(range(48))


def test_backward_jump_in_every_stream_continues_the_timeline(media, tmp_path):
    out = tmp_path / "out.mkv"
    result, report = _stream(media["concat"], out)
    assert result.returncode == 0, result.stderr
    ts = report["timestamps"]
    assert ts["video_frames_repaired"] == 48 and ts["first_repaired_seq"] == 48
    assert sum(ts["packets_repaired"].values()) > 0  # the audio jumped back too
    assert decoded_indices(out) == list(range(48)) * 2
    video, audio = _times(out)
    steps = [b - a for a, b in zip(video, video[1:])]
    assert max(steps) < 1.5 / FPS and min(steps) > 0.5 / FPS  # one continuous 4 s timeline
    _assert_in_sync(video, audio, 96)


def test_concatenated_parts_with_longer_audio_never_drift(media, tmp_path):
    """Each part's AAC runs ~30 ms past its 2 s of video (priming, padding): continuing every
    stream from where it stood drifted the audio that much later at every join (130 ms after
    five parts). Each part's audio now starts where its video does, late by under one packet."""
    d = tmp_path
    video = make_clip(d / "v.mp4", 48, 64, 48, fps=FPS)
    longer = add_side_streams(video, d / "longer.mkv", [("eng", 0.0, 2.03)])
    part = as_ts(longer, d / "part.ts")
    with av.open(str(part)) as c:
        a = c.streams.audio[0]
        pkts = [p for p in c.demux(a) if p.size and p.pts is not None]
        part_audio = float((pkts[-1].pts + pkts[-1].duration - pkts[0].pts) * a.time_base)
    assert part_audio > 2.02  # longer than the part's video by more than one packet
    out = d / "out.mkv"
    result, report = _stream(concat_bytes([part] * 5, d / "cat.ts"), out)
    assert result.returncode == 0, result.stderr
    video_t, audio = _times(out)
    assert len(video_t) == 240
    packet_s = 1024 / 48000
    # the last part's audio starts with its video (at 8 s) and runs its own length, give or take a packet
    assert abs(audio[-1][1] - (video_t[192] + part_audio)) < packet_s
    gaps = [b[0] - a[1] for a, b in zip(audio, audio[1:])]
    assert max(abs(g) for g in gaps) < 0.002, "audio has a hole or an overlap"
    assert "overlapped the part before it" in result.stderr  # the audio that would not fit, said
    assert sum(report["timestamps"]["packets_dropped"].values()) >= 4  # one a join at least


def test_missing_pts_get_a_regular_timeline(media, tmp_path):
    out = tmp_path / "out.mkv"
    result, report = _stream(media["raw"], out)
    assert result.returncode == 0, result.stderr
    assert report["timestamps"]["video_frames_repaired"] == 24
    assert decoded_indices(out) == list(range(24))
    video, _ = _times(out)
    steps = {round(b - a, 3) for a, b in zip(video, video[1:])}
    assert len(steps) <= 2 and video[0] == 0.0  # one step (two after ms rounding)


def test_vfr_keeps_its_timestamps_outside_the_broken_stretch(media, tmp_path):
    out = tmp_path / "out.mkv"
    result, report = _stream(media["vfr_broken"], out)
    assert result.returncode == 0, result.stderr
    assert report["timestamps"]["video_frames_repaired"] == 5
    good, repaired = media["vfr_pts"], _video_pts(out)
    assert repaired[:30] == good[:30] and repaired[35:] == good[35:]  # variable rate kept as is
    assert all(a < b for a, b in zip(repaired, repaired[1:]))
    # the broken stretch is spaced like the frames before it, not squeezed into ticks
    interval = good[29] - good[28]
    assert [b - a for a, b in zip(repaired[29:35], repaired[30:35])] == [interval] * 5
    # the audio (2 s, longer than this video) is untouched: its own timestamps, all of them
    assert _times(out)[1] == _times(media["vfr_broken"])[1]


@pytest.mark.parametrize("name,reason", [("zero", "repeats pts"), ("repeat", "repeats pts"),
                                         ("concat", "goes back"), ("raw", "no timestamp")])
def test_refuse_mode_stops_before_any_output(media, tmp_path, name, reason):
    out = tmp_path / "out.mkv"
    result, _ = _stream(media[name], out, "--timestamps", "refuse")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken timestamps" in lines[0] and reason in lines[0]
    assert not list(tmp_path.iterdir()), "nothing may be written"


def test_probe_says_the_timestamps_are_broken(media):
    result = run_engine("probe", media["zero"])
    assert result.returncode == 0 and "48 video frames" in result.stdout
    assert "broken timestamps: video packet 1 repeats pts 0" in result.stdout
    assert "broken timestamps" not in run_engine("probe", media["vfr"]).stdout


def test_refuse_mode_accepts_good_and_vfr_input(media, tmp_path):
    for name in ("good", "vfr"):
        result, report = _stream(media[name], tmp_path / f"{name}.mkv", "--timestamps", "refuse")
        assert result.returncode == 0, result.stderr
        assert report["timestamps"]["video_frames_repaired"] == 0


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_matroska_is_an_error_up_front_or_kept_on_request(media, tmp_path, fraction):
    data = media["good"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * fraction)])
    readable = len(decoded_indices(cut))
    assert 0 < readable < 48

    out = tmp_path / "out.mkv"
    result, _ = _stream(cut, out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "--allow-truncated" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]

    result, report = _stream(cut, out, "--allow-truncated")
    assert result.returncode == 0, result.stderr
    assert any("truncated" in n for n in report["notes"])
    assert decoded_indices(out) == list(range(readable))
    video, audio = _times(out)
    assert abs(audio[0][0] - video[0]) < 1 / FPS


def test_frames_beyond_a_truncation_are_still_refused(media, tmp_path):
    # --frames N skips the up-front check (a cut after frame N does not matter), but a video
    # that ends before N frames must not pass as a short one
    data = media["good"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    readable = len(decoded_indices(cut))
    out = tmp_path / "out.mkv"
    result, _ = _stream(cut, out, "--frames", "200")
    assert result.returncode == 2 and "truncated" in result.stderr, result.stderr
    assert not out.exists()
    result, _ = _stream(cut, out, "--frames", str(readable - 2))
    assert result.returncode == 0, result.stderr
    assert decoded_indices(out) == list(range(readable - 2))
    result, _ = _stream(media["good"], tmp_path / "whole.mkv", "--frames", "200")  # short, not cut
    assert result.returncode == 0, result.stderr
    assert len(decoded_indices(tmp_path / "whole.mkv")) == 48


def _faststart(src, dst):
    """`src` remuxed with its index (moov) at the front: cut short, the index still lists
    every frame, which is how an interrupted download of a web MP4 looks."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "+faststart"}) as o:
        outs = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.dts is not None:
                packet.stream = outs[packet.stream.index]
                o.mux(packet)
    return dst


def test_truncated_front_index_mp4_keeps_the_same_frames_with_or_without_resume(tmp_path):
    whole = _faststart(make_clip(tmp_path / "v.mp4", 48, 64, 48, fps=FPS, options={"g": "8"}),
                       tmp_path / "fast.mp4")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with av.open(str(cut)) as c:
        assert c.streams.video[0].frames == 48  # the index promises all of them
    kept = {}
    for extra in ((), ("--resume", "--segment", "16f")):
        out = tmp_path / f"out{len(extra)}.mkv"
        r = run_engine("stream", cut, out, "--encoder", "ffv1", "--quiet", *extra)
        assert r.returncode == 2 and "truncated" in r.stderr, r.stderr
        r = run_engine("stream", cut, out, "--encoder", "ffv1", "--quiet", "--allow-truncated", *extra)
        assert r.returncode == 0, r.stderr  # --resume used to fail on the frames the index lists
        kept[extra] = decoded_indices(out)
    assert 8 < len(kept[()]) < 48
    assert kept[()] == list(range(len(kept[()])))
    assert kept[("--resume", "--segment", "16f")] == kept[()]
    # --frames past the cut: refused up front under --resume too, kept with --allow-truncated
    past = str(len(kept[()]) + 10)
    out = tmp_path / "past.mkv"
    r = run_engine("stream", cut, out, "--encoder", "ffv1", "--quiet", "--frames", past, "--resume",
                   "--segment", "16f")
    assert r.returncode == 2 and "truncated" in r.stderr and "--allow-truncated" in r.stderr, r.stderr
    assert not out.exists() and not (tmp_path / ".past.mkv.engine-work").exists()
    r = run_engine("stream", cut, out, "--encoder", "ffv1", "--quiet", "--frames", past, "--resume",
                   "--segment", "16f", "--allow-truncated")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(out) == kept[()]
    r = run_engine("stream", cut, tmp_path / "before.mkv", "--encoder", "ffv1", "--quiet", "--frames", "8",
                   "--resume", "--segment", "16f")  # a cut after frame N does not matter
    assert r.returncode == 0, r.stderr
    assert decoded_indices(tmp_path / "before.mkv") == list(range(8))


def test_complete_files_are_not_called_truncated(media, tmp_path):
    # audio longer than the video is not truncation: the data end is taken over all streams
    longer = add_side_streams(make_clip(tmp_path / "v.mp4", 24, 64, 48, fps=FPS), tmp_path / "long.mkv",
                              [("eng", 0.0, 3.0)])
    for src in (media["good"], media["vfr"], longer):
        result, _ = _stream(src, tmp_path / f"out-{src.stem}.mkv")
        assert result.returncode == 0, result.stderr
        assert "truncated" not in result.stderr


def _hide_leading_frames(src, dst, hidden: int):
    """`src`'s video remuxed into MP4 with its first `hidden` frames moved before time 0: the
    muxer writes an edit list that hides them (what `ffmpeg -ss T -c copy` and editors make).
    The packets stay, as the pictures after them need them to decode."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        packets = [p for p in inp.demux(stream) if p.size]
        order = sorted(p.pts for p in packets)
        shift = order[hidden]
        for p in packets:
            p.pts -= shift
            p.dts -= shift
            p.stream = copy
            out.mux(p)
    return dst


def test_frames_an_edit_list_hides_are_not_called_missing(tmp_path):
    clip = _hide_leading_frames(make_clip(tmp_path / "v.mp4", 48, 64, 48, fps=FPS), tmp_path / "edit.mp4", 3)
    with av.open(str(clip)) as c:  # the file declares every packet; decoding shows 45 frames
        assert c.streams.video[0].frames == 48
        assert sum(1 for _ in c.decode(video=0)) == 45
    outs = []
    for extra in ((), ("--resume", "--segment", "12f")):
        out = tmp_path / f"out{len(extra)}.mkv"
        result, _ = _stream(clip, out, *extra)
        assert result.returncode == 0, result.stderr
        assert "truncated" not in result.stderr
        outs.append(decoded_indices(out))
    assert outs[0] == outs[1] == list(range(3, 48))


def test_repair_rule_unit():
    from engine.timestamps import TimestampRepair, frame_step

    step = frame_step(Fraction(24000, 1001), Fraction(1, 1000))
    repair = TimestampRepair(step)
    out = [repair(p) for p in [0, 0, 0, 0, None, 500, 400, 600]]
    # anchored at 0: 41.708 ms a frame, rounded once per frame from the anchor
    assert out[:5] == [0, 42, 83, 125, 167]
    assert out[5] == 500 and out[6] == 542 and out[7] == 600
    assert repair.repaired == 5 and repair.first_bad == 1
    refusing = TimestampRepair(step, refuse=True)
    refusing(0)
    with pytest.raises(Exception, match="repeats pts 0"):
        refusing(0)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_still_image_is_one_frame_not_a_truncated_video(tmp_path, ext):
    # the JPEG was refused as "truncated: its data ends before the last 0.0 s of the 0.040 s"
    import cv2

    from engine.testing import index_frame

    still = tmp_path / f"still{ext}"  # FFmpeg probes this one as image2, with one frame's duration
    cv2.imwrite(str(still), index_frame(3, 120, 160))
    out = tmp_path / "o.mp4"
    r = run_engine("stream", still, out, "--quiet")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 1


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
@pytest.mark.parametrize("video_s, audio_s", [(0.5, 0.0), (5.0, 5.0), (1.0, None)])
def test_an_input_that_does_not_start_at_0_is_whole_and_a_cut_one_is_not(tmp_path, ext, video_s, audio_s):
    """Matroska declares where its data ends, not how long it lasts: an offset start was
    refused as truncated ("declares 7.021 s but its data ends at 2.005 s")."""
    pts = [round(video_s * 1000 + i * STEP_MS) for i in range(48)]
    video = make_clip(tmp_path / f"v{ext}", 48, 64, 48, pts_ms=pts)
    src = add_side_streams(video, tmp_path / f"in{ext}", [] if audio_s is None else [("eng", audio_s, 2.0)])
    for extra in ((), ("--resume", "--segment", "12f")):
        out = tmp_path / f"out{len(extra)}.mkv"
        result, _ = _stream(src, out, *extra)
        assert result.returncode == 0, result.stderr
        assert "truncated" not in result.stderr
        assert decoded_indices(out) == list(range(48))
    if ext == ".mkv":  # an MP4 cut short has lost its index (its moov is at the end)
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(src.read_bytes()[: src.stat().st_size * 6 // 10])
        result, _ = _stream(cut, tmp_path / "cut-out.mkv")
        assert result.returncode == 2 and "truncated" in result.stderr, result.stderr


def test_a_matroska_track_duration_is_read_as_its_writer_meant_it():
    from types import SimpleNamespace

    from engine.completeness import declared_video_seconds

    def track(**tags):  # starting at 1 s, DURATION 00:00:03
        return SimpleNamespace(metadata={"DURATION": "00:00:03.000000000", **tags}, start_time=1000,
                               time_base=Fraction(1, 1000), duration=None)

    assert declared_video_seconds(track()) == pytest.approx(2.0)  # FFmpeg's: where the track ends
    assert declared_video_seconds(track(_STATISTICS_WRITING_APP="mkvmerge v80")) == pytest.approx(3.0)  # a span
    assert declared_video_seconds(track(DURATION="00:00:00.500000000")) == pytest.approx(0.5)  # ends before 1 s


def test_a_hole_in_a_constant_rate_matroska_is_said(clip, tmp_path):
    """Matroska's demuxer skips damaged data without an error: 9.7 s of a film left the output
    with exit 0 and nothing said. The hole is named; a whole file has no such note."""
    good = clip(frames=720, width=32, height=32, ext=".mkv")
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle:middle + len(data) // 5] = bytes(len(data) // 5)  # a bad sector, a broken copy
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    r = run_engine("stream", bad, tmp_path / "out.mkv")
    assert r.returncode == 0, r.stderr
    assert "note: the video's timestamps skip" in r.stderr and "missing from the input" in r.stderr
    # --resume says it from its plan (the packets' table), before its own check refuses the
    # damaged stretch (a frame there decodes to other timestamps than its packet's)
    r = run_engine("stream", bad, tmp_path / "seg.mkv", "--resume", "--segment", "120f")
    assert r.stderr.count("note: the video's timestamps skip") == 1, r.stderr
    assert r.returncode == 2 and "input decodes differently from its packets" in r.stderr.splitlines()[-1]
    r = run_engine("stream", good, tmp_path / "whole.mkv")
    assert r.returncode == 0 and "skip" not in r.stderr, r.stderr
