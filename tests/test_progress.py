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


def rendered_summary(width, snap=None):
    rep = RichReporter()
    rep.console.file = io.StringIO()
    rep.console.width = width
    rep.summary(snap or snapshot())
    return rep.console.file.getvalue()


def test_rich_reporter_renders_stage_table():
    text = rendered_summary(160)
    for cell in ("decode", "resize", "encode", "3/8", "scaled=7"):
        assert cell in text


def test_a_narrow_summary_still_gives_the_counters():
    text = rendered_summary(40)
    assert "counters" not in text and "resize: scaled=7" in text  # the compact table has no such column
    assert "resize: scaled" not in rendered_summary(100)  # there the table holds them


def test_reporter_choice(monkeypatch):
    assert isinstance(make_reporter(quiet=True), NullReporter)
    assert isinstance(make_reporter(quiet=False, stream=io.StringIO()), LogReporter)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(make_reporter(quiet=False, stream=Terminal()), RichReporter)
    monkeypatch.setenv("TERM", "dumb")  # rich's live display draws nothing there: plain lines
    assert isinstance(make_reporter(quiet=False, stream=Terminal()), LogReporter)


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


def test_a_call_in_progress_counts_as_busy():
    # a stage stuck in one long call must read as the busiest, not the idlest
    import time

    from engine.metrics import WorkerMetrics, aggregate

    stuck, quick = WorkerMetrics(), WorkerMetrics()
    quick.busy_s = 0.05
    with stuck.busy(7):
        time.sleep(0.1)
        assert aggregate("model", "batch", [stuck]).busy_s >= 0.1 > aggregate("resize", "map", [quick]).busy_s
    assert aggregate("model", "batch", [stuck]).busy_s == stuck.busy_s  # counted once when done


def _gpu(index=0, util=50, used=1000):
    from engine.gpu import GpuSample

    return GpuSample(index, "Test GPU", util, used, 8000)


def test_gpu_record_summarises_every_sample_and_keeps_a_bounded_timed_series():
    from engine.gpu import GpuRecord

    record = GpuRecord(max_points=10)
    for i in range(1000):  # a long job: 1000 samples of two GPUs
        record.add(i * 0.5, [_gpu(0, util=i % 101, used=1000 + i), _gpu(1, util=10)])
    summary = {g["index"]: g for g in record.summary()}
    assert summary[0]["samples"] == summary[1]["samples"] == 1000  # every sample, not only those kept
    assert summary[0]["util_max_pct"] == 100 and summary[0]["memory_max_mib"] == 1999
    assert summary[0]["util_mean_pct"] == round(sum(i % 101 for i in range(1000)) / 1000, 1)
    assert summary[1]["util_mean_pct"] == 10
    assert len(record.series) <= 10
    times = [t for t, _ in record.series]
    steps = {round(b - a, 6) for a, b in zip(times, times[1:])}
    assert len(steps) == 1 and times[0] == 0.0  # evenly spaced from the start
    doc = record.as_dict("555.1", 0.5)
    assert doc["interval_s"] == steps.pop() and doc["driver"] == "555.1"
    assert doc["samples"][1]["gpus"] == [[0, record.series[1][1][0].utilization_pct,
                                          record.series[1][1][0].memory_used_mib], [1, 10, 1000]]


def test_gpu_recorder_samples_at_start_and_stop_even_for_a_short_run(monkeypatch):
    import engine.gpu as gpu

    class FakeMonitor:
        available = True

        def __init__(self):
            self.calls = 0

        def sample(self):
            self.calls += 1
            return [_gpu(util=self.calls)]

        def driver(self):
            return "555.1"

        def close(self):
            pass

    monkeypatch.setattr(gpu, "GpuMonitor", FakeMonitor)
    with gpu.GpuRecorder(interval_s=60) as recorder:  # the run ends long before one interval
        pass
    report = recorder.report()
    assert [s["gpus"][0][1] for s in report["samples"]] == [1, 2]
    assert report["driver"] == "555.1" and report["gpus"][0]["samples"] == 2
    quiet = NullReporter(record_gpu=True)  # --quiet --report: samples still taken
    quiet.start(lambda: snapshot())
    quiet.stop(None)
    assert quiet.gpu_report()["gpus"][0]["samples"] == 2
    assert NullReporter().gpu_report() is None  # plain --quiet: no NVML at all


def test_eta_follows_the_recent_rate_not_the_run_average():
    # the sample's duplicates all come early: 100 frames in the first 10 s, then 2 fps
    from engine.metrics import RateWindow

    window = RateWindow()
    snap = None
    for t in range(0, 71, 5):
        done = 10 * t if t <= 10 else 100 + 2 * (t - 10)
        snap = window.annotate(RunSnapshot(float(t), done, 400, []))
    assert snap.fps == 220 / 70  # the average, for the summary
    assert snap.current_fps == 2.0  # the last 30 s
    assert snap.eta_s == (400 - 220) / 2.0  # the average said 57 s, the truth is 90 s
    first = RateWindow().annotate(RunSnapshot(1.0, 5, 100, []))
    assert first.recent_fps is None and first.eta_s == 95 / 5.0  # too little history yet


def test_live_display_fits_80_columns():
    """At 80 columns the header (fps, ETA), the device label and the counters' figures all show."""
    settings = {"device": "cuda:0", "precision": "fp16", "batch": 4, "tile": 0}
    stages = [StageSnapshot("dedup", "map", 1, 60, 1.0, 0.0, 0.0,
                            {"exact_duplicates": 14, "near_duplicates": 38, "unique": 8}, 0, 8),
              StageSnapshot("upscale", "batch", 1, 10, 1.0, 0.0, 0.0, {"inferred": 10}, 0, 8, settings)]
    rep = RichReporter()
    rep.console.file = io.StringIO()
    rep.console.width = 80
    snap = RunSnapshot(61.0, 12345, 99999, stages)
    rep.console.print(rep.view(snap, []))
    live = rep.console.file.getvalue()
    assert "12345/99999 frames  202.4 fps  elapsed 01:01  eta 07:13" in live
    assert live.splitlines()[1].strip("━ ") == ""  # the bar has its own line
    rep.summary(snap)
    text = rep.console.file.getvalue()

    def column(n):  # a long cell wraps onto more lines inside its own column
        cells = (line.split("│")[n].strip() for line in text.splitlines() if line.startswith("│"))
        return " ".join(c for c in cells if c)

    assert "upscale [cuda:0 fp16 batch 4]" in column(1)
    assert "…" not in text and "exact_duplicates=14near_duplicates=38" in column(8).replace(" ", "")
    assert "0/8" in text  # an empty queue is 0 of 8, not blank


def test_an_empty_queue_reports_its_capacity():
    from engine.registry import make_spec
    from engine.runner import Pipeline, RunnerOptions
    from engine.testing import CollectingSink, ListSource

    pipeline = Pipeline(ListSource(3), [make_spec("resize", {"scale": "1", "queue": "5"})],
                        CollectingSink(), RunnerOptions())
    pipeline.run()
    capacities = [s.queue_capacity for s in pipeline.snapshot().stages]
    assert capacities[1:] == [5, capacities[-1]] and capacities[-1] > 0  # empty now, capacity still there


def test_a_stopping_run_says_so_once_and_at_once():
    import time

    out = io.StringIO()
    rep = LogReporter(out)  # a line every 5 s otherwise
    state = {"stopping": None}
    rep.start(lambda: RunSnapshot(1.0, 10, 100, [], stopping=state["stopping"]))
    time.sleep(0.1)
    state["stopping"] = "interrupted"
    deadline = time.monotonic() + 2
    while "stopping" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    rep.stop(None)
    assert out.getvalue().count("[engine] stopping (interrupted): waiting for the stages to end") == 1


def test_a_narrow_terminal_keeps_the_figures_that_fit():
    text = rendered_summary(40)
    assert "stage" in text and "items" in text and "3/8" in text and "resize" in text
    assert "blocked" not in text and "…" not in text


def test_a_guessed_total_is_marked_and_gives_no_eta_past_its_end():
    snap = RunSnapshot(2.0, 50, 97, [], total_estimated=True)
    out = io.StringIO()
    LogReporter(out).draw(snap, [])
    assert "50/~97 frames" in out.getvalue() and snap.eta_s is not None
    past = RunSnapshot(6.0, 110, 97, [], total_estimated=True)
    assert past.eta_s is None  # was 00:00 for the last third of a variable-rate file
    assert RunSnapshot(6.0, 97, 97, []).eta_s == 0.0  # a known total reached is the end


def test_a_matroska_inputs_total_is_counted_from_its_packets(tmp_path):
    from make_clip import make_clip

    from engine.source import VideoSource

    # 24 frames at 10 fps then 96 at ~60: duration × average rate guesses 97
    pts = [i * 100 for i in range(24)] + [2400 + i * 17 for i in range(96)]
    path = make_clip(tmp_path / "vfr.mkv", 120, 64, 48, pts_ms=pts)
    guessed = VideoSource(str(path))
    assert guessed.frames_estimated and guessed.frames_total != 120
    guessed.close()
    source = VideoSource(str(path), count_frames=True)
    source._count._thread.join(30)
    assert (source.frames_total, source.frames_estimated) == (120, False)
    source.close()
    capped = VideoSource(str(path), max_frames=110, count_frames=True)
    capped._count._thread.join(30)
    assert capped.frames_total == 110
    capped.close()
    early = VideoSource(str(path), count_frames=True)
    early.close()  # the job ended first: the count stops with it, no thread left behind
    assert not early._count._thread.is_alive()
