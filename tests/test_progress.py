"""Reporters: plain log lines off a terminal, a rich table on one, nothing when quiet."""

from __future__ import annotations

import io

from engine.metrics import RunSnapshot, StageSnapshot
from engine.progress import LogReporter, NullReporter, RichReporter, make_reporter


def snapshot(done=50, total=200, elapsed=2.0):
    stages = [StageSnapshot("decode", "source", 1, done + 4, 0.5, 0.1, 1.2),
              StageSnapshot("resize", "map", 2, done + 2, 1.5, 0.2, 0.1, {"scaled": 7}, 3, 8),
              StageSnapshot("encode", "sink", 1, done, 1.9, 0.1, 0.0, {}, 1, 8)]
    return RunSnapshot(elapsed, done, total, stages)


def test_snapshot_rates():
    snap = snapshot()
    assert snap.fps == 25.0 and snap.eta_s == 6.0
    assert RunSnapshot(1.0, 0, None, []).eta_s is None


def test_log_reporter_lines_and_summary():
    out = io.StringIO()
    rep = LogReporter(out)
    rep.draw(snapshot(), [])
    rep.summary(snapshot(done=200, elapsed=8.0))
    text = out.getvalue()
    assert "50/200 frames  25.0 fps  eta 00:06  busiest encode" in text
    assert "done: 200 frames in 8.00 s (25.0 fps)" in text
    assert "scaled=7" in text


def test_rich_reporter_renders_stage_table():
    rep = RichReporter()
    rep.console.file = io.StringIO()
    rep.console.width = 160
    rep.summary(snapshot())
    text = rep.console.file.getvalue()
    for cell in ("decode", "resize", "encode", "3/8", "scaled=7"):
        assert cell in text


def test_reporter_choice():
    assert isinstance(make_reporter(quiet=True), NullReporter)
    assert isinstance(make_reporter(quiet=False, stream=io.StringIO()), LogReporter)


def test_model_stage_shows_where_it_runs():
    """A user watching a long job must see whether the model runs on the GPU, and how."""
    settings = {"device": "cuda:0", "precision": "fp16", "batch": 4, "tile": 0}
    stages = [StageSnapshot("upscale", "batch", 1, 10, 1.0, 0.0, 0.0, {"inferred": 10}, 0, 8, settings)]
    out = io.StringIO()
    LogReporter(out).summary(RunSnapshot(1.0, 10, 10, stages))
    assert "upscale [cuda:0 fp16 batch 4]" in out.getvalue()
    tiled = StageSnapshot("upscale", "batch", 1, 1, 1.0, 0.0, 0.0, {}, 0, 8, {**settings, "tile": 256})
    assert tiled.label == "upscale [cuda:0 fp16 batch 4 tile 256]"
    assert StageSnapshot("resize", "map", 1, 1, 0.1, 0.0, 0.0).label == "resize"
