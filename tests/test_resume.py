"""Segments and resume: the plan, context across cuts, kills at any moment, the join."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, decoded_indices, run_engine, sha256
from make_clip import add_side_streams, make_clip

from engine.errors import UserError
from engine.segments import FrameTable, plan_segments, scan_packets, verify_cut
from engine.range_source import RangeSource
from engine.testing import frame_index, index_frame

GOP = {"g": "8", "keyint_min": "8", "bf": "2", "sc_threshold": "0"}  # keyframes at 0, 8, 16, ...


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small clips made once: 48 frames at 64x48, keyframe every 8 frames, B-frames, AAC audio."""
    d = tmp_path_factory.mktemp("resume-media")
    video = make_clip(d / "video.mp4", 48, options=GOP)
    av_clip = add_side_streams(video, d / "av.mp4", [("eng", 0.0, 2.0)])
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 40, size=(48, 48, 64, 3), dtype=np.uint8)

    def noisy(seq: int) -> np.ndarray:  # content a temporal median really changes
        return np.clip(index_frame(seq).astype(np.int16) + noise[seq] - 20, 0, 255).astype(np.uint8)

    def held(seq: int) -> np.ndarray:  # drawings held for 4 frames, with ±1 codec-like noise
        base = index_frame(seq // 4).astype(np.int16)
        return np.clip(base + rng.integers(-1, 2, size=base.shape), 0, 255).astype(np.uint8)

    def held_lines(seq: int) -> np.ndarray:  # line art held for 3 frames: x264 rings along the lines
        img = np.full((48, 64, 3), 190, np.uint8)
        k = seq // 3
        img[:, 8 + k % 7 * 6:10 + k % 7 * 6] = 25
        img[10 + k % 5 * 5:12 + k % 5 * 5, :] = 40
        img[30:40, 40 + k % 3:48 + k % 3] = 120
        return img

    return {
        "video": video, "av": av_clip,
        "held-lines": make_clip(d / "held-lines.mp4", 48, image=held_lines, crf=32,
                                options={"g": "7", "keyint_min": "7"}),
        "noisy": make_clip(d / "noisy.mp4", 48, image=noisy, options=GOP),
        "held": make_clip(d / "held.mp4", 48, image=held, crf=0, options={"g": "5", "keyint_min": "5"}),
        "dir": d,
    }


def stream(inp, out, *extra, env=None, timeout=120):
    return run_engine("stream", inp, out, "--quiet", *extra, env=env, timeout=timeout)


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [f.pts * s.time_base for f in c.decode(s)]


def audio_packets(path: Path) -> list[tuple]:
    with av.open(str(path)) as c:
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(audio=0) if p.size]


# ---- the plan ------------------------------------------------------------------------------

def test_plan_cuts_at_verified_keyframes(media):
    table = scan_packets(str(media["video"]))
    assert len(table) == 48 and table.keyframes == [0, 8, 16, 24, 32, 40]
    assert table.pts == sorted(table.pts)
    plan = plan_segments(str(media["video"]), table, 12)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 16), (16, 32), (32, 48)]
    assert [s.start_pts for s in plan.segments] == [table.pts[0], table.pts[16], table.pts[32]]
    assert plan.merged == []


def test_a_keyframe_that_cannot_start_a_decode_merges_its_segment(media):
    """A keyframe flag on a frame that is not one (what an unrecovered open-GOP point looks
    like to a fresh decoder): the cut fails verification and its segment merges."""
    real = scan_packets(str(media["video"]))
    lying = FrameTable(real.pts, sorted({*real.keyframes, 12, 28}), real.time_base)
    assert verify_cut(str(media["video"]), lying, 12) is not None
    assert verify_cut(str(media["video"]), lying, 16) is None
    plan = plan_segments(str(media["video"]), lying, 12)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 16), (16, 32), (32, 48)]
    assert [m.split(":")[0] for m in plan.merged] == ["frame 12", "frame 28"]


def test_frame_range_decodes_exactly_the_range_with_global_seq(media):
    table = scan_packets(str(media["video"]))
    for first, stop in ((0, 5), (13, 30), (16, 17), (41, 48)):
        src = RangeSource(str(media["video"]), table.frame_range(first, stop))
        frames = list(src.frames())
        src.close()
        assert [f.seq for f in frames] == list(range(first, stop))
        assert [frame_index(f.data) for f in frames] == list(range(first, stop))
        assert [f.pts for f in frames] == table.pts[first:stop]


def test_context_rule_from_the_pipeline():
    from engine.registry import parse_pipeline
    from engine.segment_job import PipelineContext
    from engine.segments import Segment

    seg = Segment(3, 100, 200, 0)
    plain = PipelineContext.of(parse_pipeline("temporal-denoise:radius=2,test.window-sum:overlap=1"))
    assert (plain.overlap, plain.dup_run, plain.ordered) == (3, 0, False)
    assert plain.context_start(seg, None) == 97 and plain.context_stop(seg, 1000) == 203
    both = PipelineContext.of(parse_pipeline("dedup:max_run=3,temporal-denoise:radius=2"))
    assert (both.overlap, both.dup_run, both.keep_unique) == (2, 3, 3)
    # the 3rd last unique frame before the segment: its reference and 2 frames of context for it
    assert both.context_start(seg, [80, 84, 88, 92, 99]) == 88
    assert both.context_start(seg, [5]) == 5  # fewer unique frames exist: from the first
    assert both.context_stop(seg, 1000) == 200 + 2 * 4 and both.context_stop(seg, 204) == 204
    with pytest.raises(UserError, match="follows a window stage"):
        PipelineContext.of(parse_pipeline("temporal-denoise,dedup"))
    with pytest.raises(UserError, match="follows a window stage"):  # its windows would fall elsewhere
        PipelineContext.of(parse_pipeline("test.window-sum:overlap=0,dedup"))
    # a recurrent stage (windows of 6 stepping by 4): segments start and end on its windows
    rec = PipelineContext.of(parse_pipeline("test.recurrent-sum:window_size=6:overlap=1"))
    assert rec.context_start(seg, None, 0, 1000) == 96 and rec.context_stop(seg, 1000) == 202  # [96, 102) … [196, 202)
    assert rec.context_start(Segment(0, 0, 7, 0), None, 0, 9) == 0 and rec.context_stop(Segment(0, 0, 7, 0), 9) == 9
    # 211 frames: full windows up to [204, 210) (it emits 205..208), the last [208, 211) to the end
    last = Segment(4, 208, 211, 0)
    assert rec.context_start(last, None, 0, 211) == 204 and rec.context_stop(last, 211) == 211
    after = PipelineContext.of(parse_pipeline("dedup:max_run=3,test.recurrent-sum:window_size=6:overlap=1"))
    assert not after.speculative and after.keep_unique == 6  # a window back
    # the last unique frame before s is unique frame 41 (tail: 36..41). The unique count is not
    # known, so the stream's last window could start anywhere after 41 − 6: from 36 (seq 76)
    assert after.context_start(seg, [76, 80, 84, 88, 92, 99], tail_index=36) == 76
    assert after.unique_start(seg, [76, 80, 84, 88, 92, 99], tail_index=36) == 36
    with pytest.raises(ValueError, match="do not reach back"):  # a tail shorter than keep_unique
        after.context_start(seg, [80, 84, 88, 92, 99], tail_index=37)
    assert after.context_stop(seg, 1000) == 200 + 6 * 4
    for beside in ("temporal-denoise,test.recurrent-sum", "test.recurrent-sum,test.window-sum"):
        with pytest.raises(UserError, match="'test.recurrent-sum' \\(recurrent"):
            PipelineContext.of(parse_pipeline(beside))


def test_duplicate_marking_after_carried_state_is_refused_before_any_segment_runs(tmp_path):
    """diffusion-vsr,dedup was accepted and failed in segment 2 ('frame 0 is before frame 2,
    where the carried state stands'), after segment 1's hours of work."""
    pytest.importorskip("diffusers")
    from engine.models.diffusion_vsr_random import write_random_model
    from engine.registry import parse_pipeline
    from engine.segment_job import PipelineContext

    model = write_random_model(tmp_path / "m")
    with pytest.raises(UserError, match="'dedup' \\(duplicate marking\\) follows a window stage"):
        PipelineContext.of(parse_pipeline(f"diffusion-vsr:model={model},dedup"))


def test_segment_length_in_seconds_or_frames(media):
    from engine.segments import length_in_frames

    assert length_in_frames("10", Fraction(24000, 1001)) == 240
    assert length_in_frames("500f", None) == 500
    for bad in ("ten", "1e400", "infs", "nan"):  # 1e400 and infs overflowed into a traceback
        with pytest.raises(UserError, match="invalid --segment"):
            length_in_frames(bad, Fraction(24))


# ---- end to end ------------------------------------------------------------------------------

def test_resume_output_is_one_continuous_stream_with_audio_in_sync(media, tmp_path):
    out, plain = tmp_path / "out.mp4", tmp_path / "plain.mp4"
    r = stream(media["av"], out, "--resume", "--segment", "12f", "--encoder", "x264",
               "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert stream(media["av"], plain, "--encoder", "x264").returncode == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["segments"]["total"] == 3 and report["segments"]["done"] == 3
    assert report["output_video"]["path"] == str(out) and report["output_video"]["codec"] == "h264"
    assert decoded_indices(out) == list(range(48))
    assert times(out) == times(media["av"])  # every frame at its input time: no gap, no overlap
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert sum(1 for p in c.demux(video=0) if p.size) == 48
    assert audio_packets(out) == audio_packets(plain) == audio_packets(media["av"])
    assert not (tmp_path / ".out.mp4.engine-work").exists()  # parts removed once joined


@pytest.mark.parametrize("kind", ["bframes", "open-gop", "hevc", "vfr", "short"])
def test_segmented_frames_equal_the_input(media, tmp_path, kind):
    """Lossless output: every frame identical to the unsegmented run and at its input pts."""
    d = media["dir"]
    if kind == "bframes":
        clip = media["video"]
    elif kind == "open-gop":
        clip = make_clip(d / "open.mp4", 40, options={**GOP, "x264-params": "open-gop=1"})
    elif kind == "hevc":
        clip = make_clip(d / "hevc.mp4", 40, codec="libx265",
                         options={"x265-params": "log-level=error:keyint=8:min-keyint=8:open-gop=1:bframes=2"})
    elif kind == "vfr":
        steps = [40 if i % 3 else 17 for i in range(40)]
        clip = make_clip(d / "vfr.mkv", 40, pts_ms=list(np.cumsum([0] + steps[:-1])), options=GOP)
    else:
        clip = make_clip(d / "short.mp4", 10, options=GOP)
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    assert stream(clip, seg, "--resume", "--segment", "10f", "--encoder", "ffv1").returncode == 0
    assert stream(clip, plain, "--encoder", "ffv1").returncode == 0
    n = len(scan_packets(str(clip)))
    a, b = frames_of(seg), frames_of(plain)
    assert len(a) == len(b) == n
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert times(seg) == times(plain)


@pytest.mark.parametrize("encoder", ["x264", "x265"])
def test_b_frame_segments_join_into_matroska(media, tmp_path, encoder):
    """Matroska stores no dts, so a segment's first B-frame-reordered packets come back without
    one; the join must give them theirs (it used to fail with "Invalid argument")."""
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    r = stream(media["video"], seg, "--resume", "--segment", "16f", "--encoder", encoder,
               "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["total"] == 3
    assert stream(media["video"], plain, "--encoder", encoder).returncode == 0
    assert times(seg) == times(plain)
    assert decoded_indices(seg) == list(range(48))
    with av.open(str(seg)) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size and p.dts is not None]
        rate = c.streams.video[0].average_rate
    assert dts == sorted(set(dts))  # increasing across the joins
    with av.open(str(plain)) as c:  # the join wrote no default duration: 24000 fps for 23.976
        assert rate == c.streams.video[0].average_rate == Fraction(24000, 1001)


@pytest.mark.parametrize("ext", ["mp4", "mov", "mkv"])
def test_variable_frame_rate_b_frame_segments_join(media, tmp_path, ext):
    """x264 makes up a segment's first dts from that segment's own frame gaps; with a dropped
    frame every 10 they fell before the previous segment's last dts, and every --resume of a
    phone recording into .mp4 failed at the join ("dts ... after ... at the join")."""
    steps = [67 if i % 10 == 9 else 33 for i in range(96)]
    clip = make_clip(tmp_path / "drop.mp4", 96, pts_ms=list(np.cumsum([0] + steps[:-1])), options={"g": "12"})
    seg, plain = tmp_path / f"seg.{ext}", tmp_path / f"plain.{ext}"
    r = stream(clip, seg, "--resume", "--segment", "12f", "--encoder", "x264")
    assert r.returncode == 0, r.stderr
    assert stream(clip, plain, "--encoder", "x264").returncode == 0
    assert times(seg) == times(plain) == times(clip)
    assert decoded_indices(seg) == list(range(96))
    with av.open(str(seg)) as c:
        packets = [(p.pts, p.dts) for p in c.demux(video=0) if p.size]
    dts = [d for _, d in packets if d is not None]
    assert dts == sorted(set(dts)) and all(d <= p for p, d in packets if d is not None)


def test_a_last_segment_of_two_matroska_packets_joins(tmp_path):
    """Keyframes at 0, 12, 24, 36, 48 of 50: the last segment is two packets that Matroska
    gives back with no dts at all; the join crashed with a traceback ("Invalid argument")."""
    clip = make_clip(tmp_path / "v50.mp4", 50, options={"g": "12", "keyint_min": "12", "sc_threshold": "0"})
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    r = stream(clip, seg, "--resume", "--segment", "24f", "--encoder", "x264")
    assert r.returncode == 0, r.stderr
    assert stream(clip, plain, "--encoder", "x264").returncode == 0
    assert times(seg) == times(plain) and decoded_indices(seg) == list(range(50))


def test_a_cut_on_half_a_millisecond_keeps_its_times(tmp_path):
    """At 24000/1001 fps frame 60 starts at 2502.5 ms; the segment's muxer rounds it away from
    zero (FFmpeg), and the join's check rounded it to even and moved the whole segment 1 ms."""
    clip = make_clip(tmp_path / "c.mp4", 72, options={"g": "10", "keyint_min": "10", "sc_threshold": "0"})
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    assert stream(clip, seg, "--resume", "--segment", "10f", "--encoder", "ffv1").returncode == 0
    assert stream(clip, plain, "--encoder", "ffv1").returncode == 0
    assert times(seg) == times(plain)


@pytest.mark.parametrize("pipeline, clip", [("temporal-denoise:radius=2", "noisy"),
                                            ("dedup:max_run=2", "held"),
                                            ("dedup:max_run=2,temporal-denoise:radius=1", "held"),
                                            ("dedup", "held-lines"),
                                            ("dedup,upscale:model=animevideov3-x2", "held")])
def test_context_across_cuts_gives_the_unsegmented_frames(media, tmp_path, pipeline, clip):
    """Window stages and dedup decide exactly as in one pass, whatever the cuts (every 5 frames,
    inside runs of held drawings and inside temporal windows). held-lines: lossy line art whose
    repeats dedup judges against its codec noise (near, not exact duplicates). upscale: the model
    hands the sink YUV pictures it converted itself; a segment must be offered that too (it
    used to convert in the sink, up to 6 levels off)."""
    clip = media[clip]
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    r = stream(clip, seg, "--resume", "--segment", "4f", "--encoder", "ffv1", "--pipeline", pipeline,
               "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["total"] >= 6
    r = stream(clip, plain, "--encoder", "ffv1", "--pipeline", pipeline, "--report", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    segmented, single = (json.loads((tmp_path / n).read_text()) for n in ("r.json", "p.json"))
    # the figures a single pass reports are there: stages (context frames included, and said),
    # the encoder as it ran
    assert [st["name"] for st in segmented["stages"]] == [st["name"] for st in single["stages"]]
    assert segmented["stages_cover"]["frames"] == 48 and segmented["stages_cover"]["context_frames"] > 0
    # the encoder is given only each segment's own frames: its row counts those (it counted context too)
    assert segmented["stages"][-1]["name"] == "encode" and segmented["stages"][-1]["items"] == 48
    assert segmented["encoder"]["codec"] == single["encoder"]["codec"] == "ffv1"
    if "dedup" in pipeline:  # the clip must exercise dedup for the comparison to mean anything
        dedup = single["dedup"]
        assert dedup["frames_processed"] < 40
        # counted on each segment's own frames: the single pass's decisions, not context twice
        assert segmented["dedup"] == {k: v for k, v in dedup.items() if k != "noise"}  # noise: one pass only
        if clip == media["held-lines"]:
            assert dedup["near_duplicates"] >= 10 and dedup["noise"]["pairs"] >= 10
    a, b = frames_of(seg), frames_of(plain)
    assert len(a) == len(b) == 48
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]
    assert differ == []


class _Seq:
    """A frame for the windowing rule alone: which window [first, last] computed it."""

    def __init__(self, seq, dup_of=None):
        self.seq, self.meta, self.window = seq, ({} if dup_of is None else {"dup_of": dup_of}), None

    def with_data(self, window):
        out = _Seq(self.seq)
        out.meta, out.window = self.meta, window
        return out


def _windows_of(size: int, overlap: int, seqs: list[int]) -> dict[int, tuple[int, int]]:
    """The runner's own windowing over unique frames `seqs`: the window each frame came from."""
    from engine.metrics import WorkerMetrics
    from engine.runner import Pipeline

    class Stage:
        window_size = size
        overlap = 0

        def process_window(self, frames):
            return [(frames[0].seq, frames[-1].seq)] * len(frames)

    stage = Stage()
    stage.overlap = overlap
    came: dict[int, tuple[int, int]] = {}
    runner = type("Runner", (), {"_emit": lambda self, out, metrics, f: came.__setitem__(f.seq, f.window)})()
    Pipeline._drive_window(runner, stage, iter(_Seq(q) for q in seqs), None, WorkerMetrics())
    return came


@given(size=st.integers(3, 12), overlap_share=st.floats(0, 0.99), dup_run=st.integers(0, 4),
       frames=st.integers(1, 60), segment=st.integers(1, 20), seed=st.integers(0, 10**6))
@settings(max_examples=400, deadline=None)
def test_recurrent_windows_of_every_segment_are_the_single_passes(size, overlap_share, dup_run, frames,
                                                                  segment, seed):
    """The rule itself, over random windows, clip lengths, cuts and holds: every frame a segment
    encodes (and every duplicate's reference) comes from the window the single pass computed it
    in, including the stream's last window, which runs to the end. The last segments of a clip
    whose length left its last window longer than a step got a window the single pass never runs."""
    from engine.registry import parse_pipeline
    from engine.segment_job import PipelineContext, TrimmingSink
    from engine.segments import Segment

    overlap = int(overlap_share * (size - 1) / 2)
    rng = random.Random(seed)
    unique, q = [], 0
    while q < frames:
        unique.append(q)
        q += 1 + (rng.randint(0, dup_run) if dup_run else 0)
    is_unique = set(unique)
    marking = f"dedup:max_run={dup_run}," if dup_run else ""
    context = PipelineContext.of(parse_pipeline(f"{marking}test.recurrent-sum:window_size={size}:overlap={overlap}"))
    single = _windows_of(size, overlap, unique)
    previous = None
    for index, start in enumerate(range(0, frames, segment)):
        seg = Segment(index, start, min(frames, start + segment), 0)
        tail, tail_index = previous or (None, 0)
        c = context.context_start(seg, tail, tail_index, frames)
        first = context.unique_start(seg, tail, tail_index, frames)
        stop = context.context_stop(seg, frames)
        assert c in is_unique and unique.index(c) == first
        mine = _windows_of(size, overlap, [f for f in range(c, stop) if f in is_unique])
        for f in range(seg.start, seg.end):
            reference = max(u for u in unique if u <= f)
            assert mine.get(reference) == single[reference], (index, f, reference)

        class Discard:
            def write(self, frame):
                pass

        sink = TrimmingSink(Discard(), seg.start, seg.end, context.keep_unique, first)
        for f in range(c, stop):
            sink.write(_Seq(f, None if f in is_unique else 0))
        previous = (list(sink.tail_unique), sink.tail_index)


@pytest.mark.parametrize("dedup", [False, True])
def test_a_recurrent_stage_cuts_where_a_single_pass_puts_its_windows(tmp_path, dedup):
    """BasicVSR++ propagates through its whole window: `overlap` frames of context are not
    enough, a frame's result depends on where its window starts. Segments (every 7 frames,
    windows of 6 stepping by 4) start and end where the single pass's windows fall, counted
    in unique frames after dedup, so the frames are the single pass's (they differed by up
    to 3 levels from the 5th frame on)."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "tests"))
    from test_basicvsrpp import _mmagic_checkpoint, random_net

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 30, size=(30, 64, 64, 3), dtype=np.uint8)

    def image(seq: int) -> np.ndarray:  # held drawings (with dedup: runs of 2 and 3), moving
        k = seq * 2 // 5 if dedup else seq
        base = np.roll(index_frame(k % 48, 64, 64), 2 * k, axis=1).astype(np.int16)
        return np.clip(base + (noise[k] if not dedup else 0) - 15, 0, 255).astype(np.uint8)

    clip = make_clip(tmp_path / "in.mkv", 30, 64, 64, codec="ffv1", image=image, options={"g": "1"})
    weights = _mmagic_checkpoint(random_net(8, 1), tmp_path / "c8n1.pth")
    pipeline = ("dedup:max_run=3," if dedup else "") + \
        f"basicvsrpp:checkpoint={weights}:window=6:overlap=1:device=cpu"
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    r = stream(clip, seg, "--resume", "--segment", "7f", "--encoder", "ffv1", "--pipeline", pipeline,
               "--report", tmp_path / "r.json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["total"] >= 4
    r = stream(clip, plain, "--encoder", "ffv1", "--pipeline", pipeline, "--report", tmp_path / "p.json",
               timeout=300)
    assert r.returncode == 0, r.stderr
    if dedup:  # the clip must make dedup skip frames, or the unique-frame grid is not tested
        assert json.loads((tmp_path / "p.json").read_text())["dedup"]["frames_processed"] <= 15
    a, b = frames_of(seg), frames_of(plain)
    assert len(a) == len(b) == 30
    assert [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)] == []


# ---- kills --------------------------------------------------------------------------------

ENCODERS = {"x264": ("out.mp4", ["--encoder", "x264"]), "ffv1": ("out.mkv", ["--encoder", "ffv1"])}


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory):
    """Uninterrupted segmented runs, one per encoder: what every resumed run must equal."""
    d = tmp_path_factory.mktemp("reference")
    refs = {}
    for name, (out, args) in ENCODERS.items():
        r = stream(media["av"], d / out, "--resume", "--segment", "12f", *args)
        assert r.returncode == 0, r.stderr
        refs[name] = sha256(d / out)
    return refs


def resume_after(media, tmp_path, encoder, crash_at):
    out_name, args = ENCODERS[encoder]
    out = tmp_path / out_name
    killed = stream(media["av"], out, "--resume", "--segment", "12f", *args,
                    env={"ENGINE_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    report = tmp_path / "r.json"
    r = stream(media["av"], out, "--resume", "--segment", "12f", *args, "--report", report)
    assert r.returncode == 0, r.stderr
    return out, json.loads(report.read_text())


@pytest.mark.parametrize("encoder,crash_at,reused", [
    ("x264", "segment-frame:5", 0),     # inside the first segment
    ("x264", "segment-frame:20", 1),    # inside the second: the first is kept
    ("x264", "segment-done:2", 1),      # second file complete, not yet recorded: redone
    ("x264", "manifest-write:1", 0),    # the first manifest half written: no manifest.json yet
    ("x264", "manifest-rename:1", 0),   # the first manifest complete but not renamed
    ("x264", "manifest-write:3", 1),    # half a temporary manifest on disk
    ("x264", "manifest-rename:4", 2),   # complete temporary manifest, not yet renamed
    ("x264", "join-packet:30", 3),      # during the join
    ("x264", "join-rename:1", 3),       # joined and checked, not yet renamed
    ("ffv1", "segment-frame:40", 2),
    ("ffv1", "manifest-write:2", 0),
    ("ffv1", "join-packet:10", 3),
])
def test_killed_at_any_point_resumes_to_the_same_bytes(media, tmp_path, reference, encoder, crash_at, reused):
    out, report = resume_after(media, tmp_path, encoder, crash_at)
    assert sha256(out) == reference[encoder]
    assert report["segments"]["reused"] == reused  # work lost: at most the segment in flight
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, "r.json"])  # no strays left


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_kill_9_at_random_moments(media, tmp_path, reference, encoder):
    """SIGKILL from outside at random delays (seeded), then resume: always the same bytes."""
    out_name, args = ENCODERS[encoder]
    out = tmp_path / out_name
    rng = random.Random(f"kill-{encoder}")
    cmd = [sys.executable, "-m", "engine", "stream", str(media["av"]), str(out), "--quiet",
           "--pipeline", "none", "--resume", "--segment", "12f", *args]
    started = time.perf_counter()
    subprocess.run([*cmd[:5], str(tmp_path / f"timed{out.suffix}"), *cmd[6:]], cwd=ROOT, check=True)
    whole = time.perf_counter() - started  # kill moments spread over a whole run, on any machine
    codes = []
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 0.95) * whole)  # the kill moment, not a synchronisation
        proc.send_signal(signal.SIGKILL)
        codes.append(proc.wait())
    assert -signal.SIGKILL in codes  # at least one kill landed before the job ended
    r = stream(media["av"], out, "--resume", "--segment", "12f", *args)
    assert r.returncode == 0, r.stderr
    assert sha256(out) == reference[encoder]


def test_damaged_segment_is_redone_and_only_it(media, tmp_path, reference):
    out_name, args = ENCODERS["x264"]
    out = tmp_path / out_name
    killed = stream(media["av"], out, "--resume", "--segment", "12f", *args,
                    env={"ENGINE_CRASH_AT": "join-packet:1"})
    assert killed.returncode == -signal.SIGKILL
    work = tmp_path / f".{out_name}.engine-work"
    seg1, seg2 = work / "segment-00001.mp4", work / "segment-00002.mp4"
    data = bytearray(seg1.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other hash
    seg1.write_bytes(bytes(data))
    r = stream(media["av"], out, "--resume", "--segment", "12f", *args, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    listed = json.loads((tmp_path / "r.json").read_text())["segments"]["list"]
    assert [s["reused"] for s in listed] == [True, False, True]
    assert sha256(out) == reference["x264"]
    killed = stream(media["av"], out, "--resume", "--segment", "12f", *args,
                    env={"ENGINE_CRASH_AT": "join-packet:1"})
    seg2.write_bytes(seg2.read_bytes()[:-100])  # truncated
    r = stream(media["av"], out, "--resume", "--segment", "12f", *args, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    listed = json.loads((tmp_path / "r.json").read_text())["segments"]["list"]
    assert [s["reused"] for s in listed] == [True, True, False]
    assert sha256(out) == reference["x264"]


# ---- a different job is never mixed in -------------------------------------------------------

def test_changed_input_or_option_is_a_clear_error(media, tmp_path):
    clip = tmp_path / "in.mp4"
    clip.write_bytes(Path(media["av"]).read_bytes())
    out = tmp_path / "out.mp4"
    killed = stream(clip, out, "--resume", "--segment", "12f", "--encoder", "x264",
                    env={"ENGINE_CRASH_AT": "segment-frame:20"})
    assert killed.returncode == -signal.SIGKILL
    r = stream(clip, out, "--resume", "--segment", "12f", "--encoder", "x264", "--crf", "30")
    assert r.returncode == 2 and "encoder options changed" in r.stderr
    r = stream(clip, out, "--resume", "--segment", "8f", "--encoder", "x264")
    assert r.returncode == 2 and "segment plan changed" in r.stderr
    os.utime(clip, ns=(time.time_ns(), time.time_ns() + 10**9))
    r = stream(clip, out, "--resume", "--segment", "12f", "--encoder", "x264")
    assert r.returncode == 2 and "input file changed (mtime_ns)" in r.stderr
    assert r.stderr.count("\n") == 1 and not out.exists()


def test_work_directory_in_use_is_refused(media, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with open(work / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        r = stream(media["video"], tmp_path / "o.mp4", "--resume", "--work-dir", work)
    assert r.returncode == 2 and "in use by another engine process" in r.stderr


def test_a_work_directory_with_other_files_is_refused_and_left_alone(media, tmp_path):
    # the job deletes what it does not recognise in its work directory, and the directory when
    # done: `--work-dir ~/Videos` must not cost the user their files (nor the input beside them)
    work = tmp_path / "videos"
    (work / "photos").mkdir(parents=True)
    (work / "photos" / "a.jpg").write_bytes(b"jpeg")
    shutil.copy(media["video"], work / "other.mp4")
    r = stream(media["video"], tmp_path / "o.mp4", "--resume", "--work-dir", work)
    assert r.returncode == 2 and "holds files that are not the engine's (other.mp4, ...)" in r.stderr
    assert r.stderr.count("\n") == 1
    assert sorted(p.name for p in work.iterdir()) == ["other.mp4", "photos"]
    assert (work / "photos" / "a.jpg").read_bytes() == b"jpeg" and not (tmp_path / "o.mp4").exists()
    # an empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    r = stream(media["video"], tmp_path / "o.mp4", "--resume", "--work-dir", empty)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.mp4").exists()


def test_an_output_or_input_inside_the_work_directory_is_refused(media, tmp_path):
    # the work directory is removed when the job finishes: the output in it went too, after "done"
    work = tmp_path / "work"
    work.mkdir()
    r = stream(media["video"], work / "o.mkv", "--resume", "--work-dir", work)
    assert r.returncode == 2 and "the output is inside the work directory" in r.stderr
    assert r.stderr.count("\n") == 1 and work.is_dir() and not list(work.iterdir())
    r = stream(media["video"], tmp_path / "o.mkv", "--resume", "--work-dir", tmp_path)  # `--work-dir .`
    assert r.returncode == 2 and "the output is inside the work directory" in r.stderr
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media["video"], videos / "in.mp4")
    os.symlink(videos, tmp_path / "link")  # the same directory by another name
    r = stream(tmp_path / "link" / "in.mp4", tmp_path / "o.mkv", "--resume", "--work-dir", videos)
    assert r.returncode == 2 and "the input is inside the work directory" in r.stderr
    assert not (tmp_path / "o.mkv").exists() and sorted(p.name for p in videos.iterdir()) == ["in.mp4"]


def test_a_refused_work_directory_loses_the_killed_joins_partial(media, tmp_path):
    # told to delete the work directory, the user would otherwise keep a hidden partial output
    out = tmp_path / "o.mp4"
    killed = stream(media["video"], out, "--resume", "--segment", "16f",
                    env={"ENGINE_CRASH_AT": "join-packet:30"})
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".o.partial-*")]
    r = stream(media["video"], out, "--resume", "--segment", "8f")
    assert r.returncode == 2 and "belongs to another job" in r.stderr
    assert not list(tmp_path.glob(".o.partial-*")) and not out.exists()


def test_segment_options_need_resume_and_a_video_output(media, tmp_path):
    r = stream(media["video"], tmp_path / "o.mp4", "--segment", "10")
    assert r.returncode == 2 and "--segment and --work-dir need --resume" in r.stderr
    r = stream(media["video"], tmp_path / "%04d.png", "--resume")
    assert r.returncode == 2 and "not an image sequence" in r.stderr


def test_strays_are_deleted_and_recorded_segments_kept(media, tmp_path):
    out = tmp_path / "o.mkv"
    work = tmp_path / ".o.mkv.engine-work"
    args = ("--resume", "--segment", "12f", "--encoder", "ffv1")
    assert stream(media["video"], out, *args, env={"ENGINE_CRASH_AT": "segment-frame:30"}).returncode < 0
    assert any(".partial-" in name for name in os.listdir(work))  # segment 1, half written
    (work / "segment-00007.mkv").write_bytes(b"not in the manifest")
    assert stream(media["video"], out, *args, env={"ENGINE_CRASH_AT": "join-packet:1"}).returncode < 0
    assert sorted(os.listdir(work)) == ["lock", "manifest.json", "segment-00000.mkv",
                                        "segment-00001.mkv", "segment-00002.mkv"]
    manifest = json.loads((work / "manifest.json").read_text())
    assert sorted(manifest["segments"]) == ["0", "1", "2"]
    assert [manifest["segments"][i]["sha256"] for i in "012"] == [
        sha256(work / f"segment-0000{i}.mkv") for i in "012"]
    assert stream(media["video"], out, *args).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["o.mkv"]  # the killed join's partial is gone too


def test_model_weights_are_part_of_the_job_key(tmp_path):
    from engine.manifest import pipeline_identity
    from engine.registry import parse_pipeline

    import zipfile

    def save(content: bytes) -> None:  # a zip archive, as torch.save writes: the stage checks that much
        with zipfile.ZipFile(weights, "w") as z:
            z.writestr("net/data.pkl", content)

    weights = tmp_path / "net.pth"
    save(b"one")
    specs = parse_pipeline(f"upscale:model={weights}")
    before = pipeline_identity(specs)
    assert before[0]["weights"] == {str(weights): sha256(weights)}
    save(b"two")
    assert pipeline_identity(specs) != before


def test_frames_limit_with_resume(media, tmp_path):
    seg, plain = tmp_path / "seg.mkv", tmp_path / "plain.mkv"
    assert stream(media["av"], seg, "--resume", "--segment", "12f", "--frames", "30",
                  "--encoder", "ffv1").returncode == 0
    assert stream(media["av"], plain, "--frames", "30", "--encoder", "ffv1").returncode == 0
    assert decoded_indices(seg) == list(range(30))
    assert audio_packets(seg) == audio_packets(plain)


def test_progress_counts_segments(media, tmp_path):
    out = tmp_path / "o.mp4"
    killed = stream(media["video"], out, "--resume", "--segment", "12f",
                    env={"ENGINE_CRASH_AT": "segment-frame:20"})
    assert killed.returncode == -signal.SIGKILL
    r = run_engine("stream", media["video"], out, "--resume", "--segment", "12f")
    assert r.returncode == 0, r.stderr
    assert "done: segments 3/3 (1 reused, 0 pending)  32 frames" in r.stderr


def test_the_summary_adds_up_every_segments_stages(media, tmp_path):
    """The display's stage figures are the whole run's, as the report's are: they were the
    running segment's alone (per-stage fps fell at each cut, and the summary listed none)."""
    report = tmp_path / "r.json"
    r = run_engine("stream", media["video"], tmp_path / "o.mp4", "--pipeline", "dedup", "--resume",
                   "--segment", "16f", "--report", report)
    assert r.returncode == 0, r.stderr
    said = r.stderr + r.stdout
    decoded = int(re.search(r"decode +(\d+) items", said).group(1))
    context = int(re.search(r"stage counts include (\d+) context frames", said).group(1))
    stages = json.loads(report.read_text())["stages"]
    assert decoded == stages[0]["items"] == 48 + context and context > 0
    unique = int(re.search(r"unique=(\d+)", said).group(1))
    assert unique == next(s for s in stages if s["name"] == "dedup")["counters"]["unique"] > 16


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to change the count between runs")
def test_resumed_on_fewer_cpus_gives_the_same_bytes(media, tmp_path):
    """x264's bitstream depends on its thread count, which it takes from the CPUs it finds.
    The job fixes the count when it is planned (engine/encoders.py `with_fixed_threads`), so a
    job killed on this machine and finished with one CPU equals the uninterrupted run."""
    from engine.sink import encoder_settings
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, size=(192, 512, 3), dtype=np.uint8)
    clip = make_clip(media["dir"] / "wide.mp4", 36, width=256, height=192, options=GOP,
                     image=lambda seq: np.ascontiguousarray(texture[:, seq * 4: seq * 4 + 256]))
    args = ["--resume", "--segment", "16f", "--encoder", "x264", "--pipeline", "none"]
    whole = tmp_path / "whole.mp4"
    r = stream(clip, whole, *args)
    assert r.returncode == 0, r.stderr
    with av.open(str(whole)) as c:
        threads = encoder_settings(bytes(next(c.demux(video=0))))["threads"]
    assert int(threads) == len(os.sched_getaffinity(0)) * 3 // 2 > 1  # x264's own count here

    out = tmp_path / "out.mp4"
    killed = stream(clip, out, *args, env={"ENGINE_CRASH_AT": "segment-frame:20"})
    assert killed.returncode == -signal.SIGKILL
    one_cpu = subprocess.run([sys.executable, "-m", "engine", "stream", str(clip), str(out), "--quiet",
                              *args, "--report", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    assert one_cpu.returncode == 0, one_cpu.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["reused"] == 1
    assert sha256(out) == sha256(whole)


def test_the_plan_note_says_how_long_the_segments_really_are(tmp_path):
    # cuts fall on keyframes: one 48-frame GOP cannot be cut into 12-frame segments
    one_gop = make_clip(tmp_path / "gop.mp4", 48, options={"g": "48", "sc_threshold": "0"})
    r = run_engine("stream", one_gop, tmp_path / "o.mkv", "--pipeline", "none", "--resume", "--segment", "12f")
    assert r.returncode == 0, r.stderr
    assert "segments: 1 of 48 frames (asked 12; cuts fall on keyframes)" in r.stderr + r.stdout
    eight = make_clip(tmp_path / "eight.mp4", 48, options=GOP)
    r = run_engine("stream", eight, tmp_path / "e.mkv", "--pipeline", "none", "--resume", "--segment", "16f")
    assert r.returncode == 0, r.stderr
    assert "segments: 3 of 16 frames in" in r.stderr + r.stdout


def test_a_stopping_segment_says_so_in_the_jobs_progress():
    from types import SimpleNamespace

    from engine.metrics import RunSnapshot
    from engine.resume import _Progress, _snapshot

    segment = SimpleNamespace(frames_written=3, snapshot=lambda: RunSnapshot(1.0, 3, 10, [], stopping="interrupted"))
    progress = _Progress(started=0.0, frames_total=10, view=(0, [], segment))
    assert _snapshot(progress).stopping == "interrupted"  # was dropped: "eta --:--" until the threads gave up


def test_a_full_disk_names_the_work_dir_or_the_output_and_recorded_segments_are_kept(media, tmp_path):
    """Writes fail as the user's problem (exit 2, one line): a segment's names --resume's work
    directory (not a file hidden in it), the join's names the output; what is recorded is reused."""
    import resource

    out, work = tmp_path / "big.mkv", tmp_path / "work"
    args = [sys.executable, "-m", "engine", "stream", str(media["video"]), str(out), "--pipeline", "none",
            "--encoder", "ffv1", "--quiet", "--resume", "--segment", "8f", "--work-dir", str(work)]

    def run(limit):  # RLIMIT_FSIZE: any file past `limit` bytes fails with EFBIG, as a full disk would
        return subprocess.run(args + ["--report", str(tmp_path / "r.json")], capture_output=True, text=True,
                              cwd=ROOT, timeout=120,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))

    segment = run(1000)  # an 8-frame FFV1 segment is ~4 kB
    assert segment.returncode == 2 and segment.stderr.count("\n") == 1, segment.stderr
    assert segment.stderr.startswith(f"engine: error: cannot write --resume's work directory {work}: "
                                     "File too large (the segments recorded there are kept")
    joined = run(20_000)  # every segment fits; the 48-frame output (~29 kB) does not
    assert joined.returncode == 2 and joined.stderr == f"engine: error: cannot write output {out}: File too large\n"
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "partial" in p]
    assert run(1 << 30).returncode == 0
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["reused"] == 6
    assert decoded_indices(out) == list(range(48))


def test_a_second_run_is_refused_while_the_first_removes_its_work_dir(media, tmp_path):
    """The lock was released before the spent work directory was removed: a second run of the
    same job took it then, reused every segment and failed in its join as they were deleted
    ("cannot write output ...: No such file or directory")."""
    out = tmp_path / "out.mkv"
    args = ["stream", str(media["video"]), str(out), "--quiet", "--resume", "--segment", "16f",
            "--encoder", "ffv1", "--pipeline", "resize:scale=0.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGINE_CRASH_AT": "work-dir-removal:1:STOP"}
    first = subprocess.Popen([sys.executable, "-m", "engine", *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:  # the join has committed the output
            time.sleep(0.05)
        time.sleep(0.5)  # and has stopped itself at the removal
        assert out.exists() and first.poll() is None
        second = run_engine(*args)
        assert second.returncode == 2 and "is in use by another engine process" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
        rc = first.wait(60)
    assert rc == 0, first.stderr.read().decode()
    assert decoded_indices(out) == list(range(48))
    assert not [p for p in tmp_path.iterdir() if p != out]  # the work directory is gone


# ---- batches -------------------------------------------------------------------------------

BATCH = ("--pipeline", "resize:scale=0.5", "--encoder", "ffv1", "--resume", "--segment", "16f")  # 3 segments each


def batch_dir(media, tmp_path) -> tuple[Path, Path]:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.mkv", "b.mkv", "c.mkv"):
        shutil.copy(media["av"], inputs / name)
    return inputs, tmp_path / "out"


def committed(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.iterdir()) if p.is_file()}


def records(tmp_path: Path) -> list[str]:
    """The batch's record of finished inputs (and any partial of it), wherever under tmp_path."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*engine-batch*"))


def rerun(inputs, out, report, *extra):
    r = run_engine("stream", inputs, out, *BATCH, *extra, "--report", report)
    assert r.returncode == 0, r.stderr
    return r, json.loads(report.read_text())["inputs"]


@pytest.mark.parametrize("crash_at, kept, reused_c", [
    ("segment-done:8", ["a.mkv", "b.mkv"], 1),      # in the third input: its first segment kept
    ("work-dir-removal:2", ["a.mkv", "b.mkv"], 0),  # b recorded, its work directory still there
    ("batch-record-write:2", ["a.mkv"], None),      # half b's record written: b re-joined
])
def test_a_killed_batch_keeps_the_inputs_it_finished(media, tmp_path, crash_at, kept, reused_c):
    """A batch under --resume killed in its third input redid the first two from scratch on
    the rerun (0 segments reused, outputs rewritten): their work directories had gone."""
    inputs, out = batch_dir(media, tmp_path)
    killed = stream(inputs, out, *BATCH, env={"ENGINE_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = committed(out)
    r, reports = rerun(inputs, out, tmp_path / "r.json")
    after = committed(out)
    for name in kept:  # the same file, not rewritten
        assert after[name] == before[name]
        assert f"kept from an earlier run: {inputs / name} → {out / name}" in r.stderr
    assert [x.get("kept", False) for x in reports] == [n in kept for n in ("a.mkv", "b.mkv", "c.mkv")]
    if reused_c is not None:
        assert reports[2]["segments"]["reused"] == reused_c and reports[2]["segments"]["total"] == 3
    else:  # b's segments were all there: re-joined, not re-encoded
        assert reports[1]["segments"]["reused"] == 3
    assert after["a.mkv"][1] == after["b.mkv"][1] == after["c.mkv"][1]  # one input, one result
    # the whole batch finished: no record, no work directory, nothing in OUT_DIR but outputs
    assert records(tmp_path) == [] and sorted(os.listdir(out)) == ["a.mkv", "b.mkv", "c.mkv"]
    assert sorted(os.listdir(tmp_path)) == ["in", "out", "r.json"]
    # a rerun of the finished batch does everything again, as a finished --resume job's does
    r, reports = rerun(inputs, out, tmp_path / "r.json")
    assert "kept from an earlier run" not in r.stderr and not any(x.get("kept") for x in reports)
    assert all(committed(out)[n][0] > after[n][0] for n in after) and records(tmp_path) == []


def test_a_batch_redoes_an_output_changed_since_it_was_recorded(media, tmp_path):
    inputs, out = batch_dir(media, tmp_path)
    assert stream(inputs, out, *BATCH, env={"ENGINE_CRASH_AT": "segment-done:8"}).returncode == -signal.SIGKILL
    before = committed(out)
    (out / "a.mkv").write_bytes(before["a.mkv"][1])  # rewritten in place: same bytes, another mtime
    r, reports = rerun(inputs, out, tmp_path / "r.json")
    assert f"{out / 'a.mkv'} is done again: its output was replaced, changed or removed since" in r.stderr
    assert [x.get("kept", False) for x in reports] == [False, True, False]
    assert reports[0]["segments"]["reused"] == 0 and committed(out)["b.mkv"] == before["b.mkv"]


def test_a_batch_rerun_with_another_option_redoes_every_input(media, tmp_path):
    """b's output was recorded and its work directory not yet removed when the batch was
    killed: another option's rerun redoes a and b (that work directory, spent, goes: it
    was refused as another job's) and c."""
    inputs, out = batch_dir(media, tmp_path)
    killed = stream(inputs, out, *BATCH, env={"ENGINE_CRASH_AT": "work-dir-removal:2"})
    assert killed.returncode == -signal.SIGKILL and (out / ".b.mkv.engine-work").is_dir()
    before = committed(out)
    r, reports = rerun(inputs, out, tmp_path / "r.json", "--pipeline", "resize:scale=0.5,resize:scale=1")
    assert "kept from an earlier run" not in r.stderr and not any(x.get("kept") for x in reports)
    assert f"{out / 'b.mkv'} is done again: the pipeline or its weights changed" in r.stderr
    assert all(committed(out)[n][0] > before[n][0] for n in before)
    assert records(tmp_path) == [] and sorted(os.listdir(out)) == ["a.mkv", "b.mkv", "c.mkv"]


def test_a_spent_work_dir_loses_its_manifest_last_and_its_lock_after(tmp_path, monkeypatch):
    """Removed in directory order, a kill mid-way could leave segments without the manifest,
    and the rerun refused its own work directory as holding files that are not the engine's."""
    from engine.resume import remove_locked_work_dir

    work = tmp_path / "work"
    work.mkdir()
    for name in ["manifest.json", "lock", "seg-0000.mkv", "seg-0001.mkv", "state-0000.npz", "zz.mkv"]:
        (work / name).write_bytes(b"x")
    removed = []
    real = os.unlink
    monkeypatch.setattr(os, "unlink", lambda path, *a, **k: (removed.append(os.path.basename(path)),
                                                            real(path, *a, **k))[1])
    remove_locked_work_dir(str(work))
    assert removed[-2:] == ["manifest.json", "lock"]
    assert sorted(removed) == sorted(["manifest.json", "lock", "seg-0000.mkv", "seg-0001.mkv",
                                      "state-0000.npz", "zz.mkv"])
    assert not work.exists()
