"""The runner with test doubles: every kind of stage, parallel workers, every kind of failure."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.testing as doubles
from engine.errors import StageError, UserError
from engine.registry import make_spec
from engine.runner import Pipeline, RunnerOptions
from engine.testing import CollectingSink, ListSource, index_frame


def run(count, stages, sink=None, **source_kw):
    source = ListSource(count, **source_kw)
    sink = sink or CollectingSink()
    specs = [make_spec(name, opts) for name, opts in stages]
    result = Pipeline(source, specs, sink, RunnerOptions(join_timeout_s=5)).run()
    return result, sink, source


def assert_exact(sink, count, added=0):
    assert [f.seq for f in sink.frames] == list(range(count))
    assert [f.pts for f in sink.frames] == [i * 1001 for i in range(count)]
    for f in sink.frames:
        expected = index_frame(f.seq).astype(np.int16) + added
        assert np.array_equal(f.data, expected.clip(0, 255).astype(np.uint8)), f"seq {f.seq}"


def test_no_stage_passes_every_frame_once():
    result, sink, source = run(30, [])
    assert_exact(sink, 30)
    assert (result.frames_in, result.frames_out) == (30, 30)
    assert sink.committed and sink.finished_with == 30 and source.closed


@pytest.mark.parametrize("count", [1, 3, 4, 5, 17])
def test_map_then_batch_apply_once_each(count):
    result, sink, _ = run(count, [("test.add", {"value": "2"}),
                                  ("test.batch-add", {"value": "3", "batch_size": "4"})])
    assert_exact(sink, count, added=5)
    batch = next(s for s in result.stages if s.name == "test.batch-add")
    sizes = {k: v for k, v in batch.counters.items() if k.startswith("batch_of_")}
    assert sum(int(k.split("_")[-1]) * v for k, v in sizes.items()) == count
    assert sizes.get("batch_of_4", 0) == count // 4  # only the last batch may be short


@given(count=st.integers(1, 40), size=st.integers(1, 9), overlap=st.integers(0, 4))
@settings(max_examples=60, deadline=None)
def test_window_emits_each_frame_exactly_once(count, size, overlap):
    if size <= 2 * overlap:
        return
    result, sink, _ = run(count, [("test.window-sum", {"window_size": size, "overlap": overlap})])
    assert_exact(sink, count)


@given(workers=st.integers(2, 4), count=st.integers(1, 60), seed=st.integers(0, 10**6))
@settings(max_examples=15, deadline=None)
def test_window_stage_after_parallel_workers_sees_frames_in_order(workers, count, seed):
    # test.window-sum raises if a window is out of seq order
    _, sink, _ = run(count, [("test.jitter", {"max_ms": "1.5", "seed": seed, "workers": workers}),
                             ("test.window-sum", {"window_size": "5", "overlap": "1"})])
    assert_exact(sink, count)


@given(workers=st.integers(2, 4), count=st.integers(1, 60), seed=st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_parallel_workers_with_random_delays_never_reorder_lose_or_duplicate(workers, count, seed):
    _, sink, _ = run(count, [("test.jitter", {"max_ms": "1.5", "seed": seed, "workers": workers}),
                             ("test.add", {"value": "1", "workers": str(workers)})])
    assert_exact(sink, count, added=1)


@pytest.mark.parametrize("name,opts,seqs", [
    ("test.fail-map", {"at": "7"}, {7}),
    # a batch is named by its smallest seq, a window by its first unemitted frame; with two
    # upstream workers the batch holding 9 usually starts at 6 to 9, but a worker descheduled
    # on a loaded machine can deliver a frame a dozen frames late (seen: 9 in a batch after 25)
    ("test.fail-batch", {"at": "9"}, set(range(10))),
    ("test.fail-window", {"at": "9"}, {6, 7, 8, 9}),
])
def test_failure_in_each_kind_of_stage_cancels_cleanly(name, opts, seqs):
    sink = CollectingSink()
    with pytest.raises(StageError) as info:
        run(200, [("test.add", {"workers": "2"}), (name, opts), ("test.add", {})], sink=sink)
    assert info.value.stage == name
    assert info.value.seq in seqs
    assert "failure injected" in str(info.value) and info.value.__cause__ is not None
    assert sink.aborted >= 1 and not sink.committed
    assert not [t for t in threading.enumerate() if t.name.startswith("engine-")]


@pytest.mark.parametrize("phase", ["open", "flush"])
def test_failure_in_open_or_flush(phase):
    sink = CollectingSink()
    with pytest.raises(StageError, match=f"failure injected in {phase}"):
        run(10, [("test.fail-map", {"phase": phase})], sink=sink)
    assert not sink.committed and sink.aborted


def test_source_failure_names_the_source_and_seq():
    sink = CollectingSink()
    with pytest.raises(StageError) as info:
        run(50, [("test.add", {})], sink=sink, fail_at=20)
    assert info.value.stage == "decode" and info.value.seq == 20
    assert not sink.committed


def test_sink_failure_names_the_sink_and_seq():
    sink = CollectingSink(fail_at=11)
    with pytest.raises(StageError) as info:
        run(50, [("test.add", {})], sink=sink)
    assert (info.value.stage, info.value.seq) == ("collect", 11)
    assert not sink.committed


def test_a_commit_that_fails_is_a_one_line_error_and_aborts():
    # everything ran, then the output could not be put in place (its path became a
    # directory, the disk went read-only): the user gets a UserError, the partial goes
    class RefusingSink(CollectingSink):
        def commit(self):
            raise IsADirectoryError(21, "Is a directory", "/videos/out.mp4")

    sink = RefusingSink()
    with pytest.raises(UserError, match="cannot put the output in place at /videos/out.mp4: Is a directory"):
        run(10, [("test.add", {})], sink=sink)
    assert sink.aborted == 1 and len(sink.frames) == 10


@pytest.mark.parametrize("after", [[], [("test.window-sum", {"window_size": 6, "overlap": 1})]])
def test_a_slow_worker_holds_its_siblings_back_instead_of_looking_lost(after):
    """One of two workers stuck on frame 5: the other must wait for it at the stage's gate
    (bounded lead) rather than run on until the reorder window downstream calls 5 lost."""
    import time
    doubles.RELEASE_STALLED.clear()
    sink = CollectingSink()
    specs = [make_spec("test.stall", {"at": "5", "workers": "2"})] + [make_spec(n, o) for n, o in after]
    pipeline = Pipeline(ListSource(300), specs, sink, RunnerOptions(join_timeout_s=5))
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(_result_or_error(pipeline.run)))
    runner.start()
    try:
        stalled = pipeline._nodes[1]
        emitted = -1
        for _ in range(100):  # until the fast worker stops: the gate holds it
            time.sleep(0.1)
            now = sum(m.items for m in stalled.metrics)
            if now == emitted:
                break
            emitted = now
        assert not outcome, f"the run ended while frame 5 was still being processed: {outcome}"
        gate = stalled.gate
        assert 5 < emitted <= 5 + gate.lead + 2, "the fast worker ran on past the gate's lead"
    finally:
        doubles.RELEASE_STALLED.set()
        runner.join(10)
    assert not runner.is_alive()
    assert not isinstance(outcome[0], BaseException), outcome[0]
    assert_exact(sink, 300)


@given(count=st.integers(1, 80), seed=st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_gated_parallel_batches_with_duplicates_never_deadlock(count, seed):
    """Two workers each holding batches in flight, duplicates passing them: the gate's
    holder of the oldest frame always moves on, so the run ends with every frame once."""
    result, sink, _ = run(count, [("test.mark-dups", {"every": 3}),
                                  ("test.jitter", {"max_ms": "1", "seed": seed, "workers": "2"}),
                                  ("test.lagging-batch", {"value": "2", "batch_size": "3", "lag": 2,
                                                          "workers": "2"})])
    assert [f.seq for f in sink.frames] == list(range(count))


class _SlowFinishSink(CollectingSink):
    """A sink whose finish takes 1.5 s (re-reading a long output), with or without signs of progress."""

    def __init__(self, heartbeats: bool):
        super().__init__()
        self.heartbeat = None
        self.heartbeats = heartbeats

    def finish(self, frames):
        import time
        for _ in range(15):
            time.sleep(0.1)
            if self.heartbeats:
                self.heartbeat()
        super().finish(frames)


def test_a_finish_that_makes_progress_is_not_a_stall():
    """The watchdog must not take a long re-read of the output for a hang and remove it."""
    sink = _SlowFinishSink(heartbeats=True)
    Pipeline(ListSource(5), [], sink, RunnerOptions(stall_timeout_s=0.5)).run()
    assert sink.finished_with == 5 and sink.committed and not sink.aborted


def test_a_finish_with_no_progress_is_still_a_stall():
    sink = _SlowFinishSink(heartbeats=False)
    with pytest.raises(StageError, match="stalled"):
        Pipeline(ListSource(5), [], sink, RunnerOptions(stall_timeout_s=0.5)).run()
    assert not sink.committed and sink.aborted


def test_a_stop_cuts_the_output_re_read_short():
    """The re-read is the one long step of finish that can stop: at a stop it does, and the
    sink thread ends at once, so the partial can go."""
    sink = _SlowFinishSink(heartbeats=True)
    pipeline = Pipeline(ListSource(5), [], sink, RunnerOptions(join_timeout_s=5))
    threading.Timer(0.3, lambda: pipeline.token.cancel(RuntimeError("boom"))).start()
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run()
    assert sink.finished_with is None and sink.aborted == 1 and not sink.committed


def test_the_partial_is_never_removed_under_a_sink_still_writing_it():
    """A failure while the sink is in a long flush, past the join's grace period: abort runs
    when the sink thread ends, not beside it (closing containers another thread is inside)."""
    import time
    events = []

    class SlowFlushSink(CollectingSink):
        def finish(self, frames):
            events.append("finish starts")
            time.sleep(1.0)
            events.append("finish ends")

        def abort(self):
            events.append("abort")
            super().abort()

    sink = SlowFlushSink()
    pipeline = Pipeline(ListSource(5), [], sink, RunnerOptions(join_timeout_s=0.2))
    threading.Timer(0.3, lambda: pipeline.token.cancel(RuntimeError("boom"))).start()
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run()
    for thread in pipeline._threads:
        thread.join(5)
    assert events == ["finish starts", "finish ends", "abort"]
    assert not sink.committed


class _CloseFails(doubles.FailMap):
    """test.fail-map whose close raises too (a sticky CUDA error raised again on close)."""

    closed = 0

    def close(self):
        type(self).closed += 1
        raise RuntimeError("close failed too")


class _OpenFails(_CloseFails):
    def open(self, ctx):
        raise RuntimeError("open failed half-way")


@pytest.mark.parametrize("stage", [_CloseFails, _OpenFails])
def test_the_first_error_wins_over_a_failing_close(monkeypatch, stage):
    """A stage's close after its failure (or after a failed open, which is closed too) must
    not replace the failure the user needs to hear."""
    from engine import registry
    monkeypatch.setattr(stage, "closed", 0)
    monkeypatch.setitem(registry._STAGES, "test.close-fails", stage)
    with pytest.raises(StageError) as info:
        Pipeline(ListSource(20), [make_spec("test.close-fails", {"at": "3"})], CollectingSink()).run()
    assert "close failed" not in str(info.value)
    assert ("open failed" if stage is _OpenFails else "injected at seq 3") in str(info.value)
    assert stage.closed == 1


def test_the_first_error_wins_over_a_failing_source_close():
    class Source(ListSource):
        def close(self):
            raise OSError("container close failed")

    with pytest.raises(StageError) as info:
        Pipeline(Source(20, fail_at=4), [], CollectingSink()).run()
    assert "close failed" not in str(info.value)


def test_the_first_error_wins_over_a_failing_abort():
    class Sink(CollectingSink):
        def abort(self):
            super().abort()
            raise OSError(30, "Read-only file system")

    with pytest.raises(StageError, match="injected at seq 3") as info:
        Pipeline(ListSource(20), [make_spec("test.fail-map", {"at": "3"})], Sink()).run()
    assert any("could not be removed" in note for note in info.value.__notes__)


@pytest.mark.parametrize("kind", ["test.add", "test.batch-add", "test.window-sum"])
def test_a_stage_hung_in_close_is_a_stall(monkeypatch, kind):
    """A model runtime that never returns from teardown: the watchdog names it, the run ends."""
    from engine import registry
    base = registry._STAGES[kind]
    hung = type("HungClose", (base,), {"close": lambda self: doubles.RELEASE_STALLED.wait()})
    monkeypatch.setitem(registry._STAGES, "test.hung-close", hung)
    doubles.RELEASE_STALLED.clear()
    sink = CollectingSink()
    try:
        with pytest.raises(StageError, match="stalled") as info:
            Pipeline(ListSource(12), [make_spec("test.hung-close", {})], sink,
                     RunnerOptions(stall_timeout_s=0.5, join_timeout_s=0.5)).run()
        assert info.value.stage == "test.hung-close"
        assert not sink.committed and sink.aborted
    finally:
        doubles.RELEASE_STALLED.set()


def _result_or_error(call):
    try:
        return call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc


@pytest.mark.parametrize("count, windows", [(5, 1), (6, 2), (7, 2), (10, 3), (11, 3)])
def test_the_last_window_is_always_shorter_than_a_full_one(count, windows):
    """Windows of 6 sharing 2 frames (steps of 4): a full window runs at once, so the stream's
    last window is a shorter one (inpaint and text-mask tell it by its length), and a stream
    ending on a full window gets a 2-frame last one. Every frame leaves once either way."""
    result, sink, _ = run(count, [("test.window-sum", {"window_size": 6, "overlap": 1})])
    assert_exact(sink, count)
    stage = next(s for s in result.stages if s.name == "test.window-sum")
    assert stage.counters["windows"] == windows


def test_a_long_window_call_that_reports_progress_is_not_a_stall(monkeypatch):
    """One window through a recurrent model is one long call (an hour on the CPU): a stage
    that calls StageContext.progress as it goes is timed by the gaps, not the whole call."""
    import time
    from engine import registry
    from engine.stage import WindowStage

    class Slow(WindowStage):
        steps = 8

        def __init__(self, progress: bool = True):
            super().__init__(window_size=4, overlap=0)
            self.reports = progress

        def open(self, ctx):
            self.progress = ctx.progress if self.reports else (lambda: None)

        def process_window(self, frames):
            for _ in range(self.steps):  # 0.8 s a call, steps of 0.1 s
                time.sleep(0.1)
                self.progress()
            return [f.data for f in frames]

    monkeypatch.setitem(registry._STAGES, "test.slow-window", Slow)
    sink = CollectingSink()
    Pipeline(ListSource(8), [make_spec("test.slow-window", {})], sink, RunnerOptions(stall_timeout_s=0.4)).run()
    assert_exact(sink, 8)
    with pytest.raises(StageError, match="stalled"):
        Pipeline(ListSource(8), [make_spec("test.slow-window", {"progress": "false"})], CollectingSink(),
                 RunnerOptions(stall_timeout_s=0.4, join_timeout_s=2)).run()


def test_stalled_stage_is_reported_not_waited_for():
    doubles.RELEASE_STALLED.clear()
    sink = CollectingSink()
    try:
        with pytest.raises(StageError, match="stalled") as info:
            Pipeline(ListSource(40), [make_spec("test.stall", {"at": "5"})], sink,
                     RunnerOptions(stall_timeout_s=0.5, join_timeout_s=0.5)).run()
        assert (info.value.stage, info.value.seq) == ("test.stall", 5)
        assert not sink.committed and sink.aborted
    finally:
        doubles.RELEASE_STALLED.set()  # let the abandoned thread finish


@pytest.mark.parametrize("count", [1, 4, 9, 30])
@pytest.mark.parametrize("lag", [0, 1, 3])
def test_batches_held_in_flight_come_back_once_in_order(count, lag):
    result, sink, _ = run(count, [("test.lagging-batch", {"value": "3", "batch_size": "4", "lag": lag}),
                                  ("test.add", {"value": "1"})])
    assert_exact(sink, count, added=4)


def test_in_flight_batches_with_duplicates_overtaking():
    """Duplicates skip the lagging stage and reach the sink long before their neighbours."""
    result, sink, _ = run(40, [("test.mark-dups", {"every": 3}),
                               ("test.lagging-batch", {"value": "2", "batch_size": "4", "lag": 3})])
    assert [f.seq for f in sink.frames] == list(range(40))
    for f in sink.frames:
        reference = f.seq - f.seq % 3  # a duplicate shows its reference's processed pixels
        expected = (index_frame(reference).astype(np.int16) + 2).clip(0, 255).astype(np.uint8)
        assert np.array_equal(f.data, expected), f"seq {f.seq}"


def test_stage_returning_batches_out_of_order_is_an_error():
    class Swapper(doubles.LaggingBatch):
        def drain_batches(self):
            return super().drain_batches()[::-1]

    from engine.registry import register_stage
    register_stage("test.swapper")(Swapper)
    with pytest.raises(StageError, match="must return its input frames"):
        run(12, [("test.swapper", {"lag": 2})])


def test_stage_returning_wrong_frames_is_an_error():
    class Dropper(doubles.AddBatch):
        def process_batch(self, frames):
            return frames[:-1]

    from engine.registry import register_stage
    register_stage("test.dropper")(Dropper)
    with pytest.raises(StageError, match="must return its input frames"):
        run(8, [("test.dropper", {})])


def test_memory_is_bounded_by_channel_capacity():
    """Backpressure: a slow sink holds the source back; nothing piles up in between."""
    seen_in_flight = []

    class SlowSink(CollectingSink):
        def write(self, frame):
            seen_in_flight.append(frame.seq)
            super().write(frame)
            frame._data = None  # pixels leave with the write, as with a real encoder

    source = ListSource(300)
    pipeline = Pipeline(source, [make_spec("test.jitter", {"max_ms": "0.5", "queue": "3"})],
                        SlowSink(), RunnerOptions(sink_queue=2))
    peak = []

    def watch():
        while not pipeline.token.cancelled and len(seen_in_flight) < 300:
            snap = pipeline.snapshot()
            peak.append(snap.stages[0].items - snap.frames_done)
            threading.Event().wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    pipeline.run()
    watcher.join()
    # decoded but not yet written: at most the two channels, one frame in each worker, one held
    assert max(peak) <= 3 + 2 + 1 + 2
    assert [f.seq for f in pipeline.sink.frames] == list(range(300))


def test_opencv_threads_are_set_for_a_run_and_restored_after():
    import cv2

    from engine.registry import register_stage
    from engine.stage import MapStage

    seen = []

    class RecordsOpenCVThreads(MapStage):
        name = "test.opencv-threads"

        def process(self, frame):
            seen.append(cv2.getNumThreads())
            return frame

    register_stage("test.opencv-threads")(RecordsOpenCVThreads)
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        spec = [make_spec("test.opencv-threads", {})]
        Pipeline(ListSource(4), spec, CollectingSink(), RunnerOptions(opencv_threads=1)).run()
        assert seen == [1] * 4
        assert cv2.getNumThreads() == 3  # the caller's setting comes back
        seen.clear()
        Pipeline(ListSource(2), spec, CollectingSink(), RunnerOptions()).run()
        cv2.setNumThreads(-1)
        assert seen == [cv2.getNumThreads()] * 2  # the default, 0: OpenCV's own
    finally:
        cv2.setNumThreads(before)


def test_opencv_setting_comes_back_after_a_failed_run_and_after_overlapping_runs():
    import cv2

    from engine.runner import opencv_thread_setting

    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        with pytest.raises(StageError):
            Pipeline(ListSource(6), [make_spec("test.fail-map", {"at": "2"})], CollectingSink(),
                     RunnerOptions(opencv_threads=1, join_timeout_s=5)).run()
        assert cv2.getNumThreads() == 3
        # two runs that overlap, the first one ending first: the setting holds until the last
        first, second = opencv_thread_setting(1), opencv_thread_setting(1)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert cv2.getNumThreads() == 1
        second.__exit__(None, None, None)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


@pytest.mark.parametrize("pipeline, size", [
    ([("resize", {"scale": "2"}), ("resize", {"scale": "0.5"})], (64, 48)),
    ([("resize", {"width": "128"}), ("resize", {"height": "24"})], (32, 24)),
])
def test_resize_sizes_each_frame_from_its_input_not_the_source(pipeline, size):
    # the stage context gives the source's size; a stage before resize (another resize, an
    # upscale) changes it, and the second resize must scale what it is given
    _, sink, _ = run(3, pipeline)
    assert {f.data.shape[1::-1] for f in sink.frames} == {size}


def test_each_stage_opens_with_its_own_input_size():
    # a model stage after a resize plans its memory for the frames it will get, not the source's
    from engine.registry import register_stage
    from engine.stage import MapStage

    opened = []

    class RecordsSize(MapStage):
        name = "test.records-size"

        def open(self, ctx):
            self.size = (ctx.width, ctx.height)
            opened.append(self.size)

        def process(self, frame):
            assert (frame.shape[1], frame.shape[0]) == self.size
            return frame

    register_stage("test.records-size")(RecordsSize)
    specs = [make_spec("test.records-size", {}), make_spec("resize", {"width": "32"}),
             make_spec("test.records-size", {}), make_spec("resize", {"scale": "3"}),
             make_spec("test.records-size", {})]
    sink = CollectingSink()
    Pipeline(ListSource(3), specs, sink, RunnerOptions()).run()
    assert sorted(opened) == sorted([(64, 48), (32, 24), (96, 72)])
    assert sink.frames[0].shape[:2] == (72, 96)


def test_duplicates_showing_one_picture_convert_it_once_whatever_the_threads(monkeypatch):
    """PyAV keeps one reformatter per picture and is not thread-safe: the sink's savers and
    converters converting a reference's picture for its duplicates at once segfaulted or hung
    (dedup into PNG or ProRes), and each duplicate converted it again."""
    from fractions import Fraction

    import av

    import engine.frame as frame_module
    from engine.frame import Frame

    calls = []
    real = frame_module.rgb_array

    def counting(picture, pixel_format):
        calls.append(threading.get_ident())
        return real(picture, pixel_format)

    monkeypatch.setattr(frame_module, "rgb_array", counting)
    picture = av.VideoFrame.from_ndarray(index_frame(7), format="rgb24").reformat(format="yuv420p")
    reference = Frame.from_picture(0, 0, Fraction(1, 24), picture, "rgb24")
    reference.share_pixels()
    duplicates = [Frame(seq=i, pts=i, time_base=Fraction(1, 24)) for i in range(1, 9)]
    for dup in duplicates:
        dup.reuse_pixels(reference)
    start = threading.Barrier(len(duplicates) + 1)
    results = {}

    def read(frame):
        start.wait()
        results[frame.seq] = frame.data

    threads = [threading.Thread(target=read, args=(f,)) for f in [reference, *duplicates]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert all(results[f.seq] is results[0] for f in duplicates)
    # a conversion of another kind (the sink's, to the encoder's format) is shared the same way
    made = [reference.converted("encode", lambda: object()) for _ in range(2)]
    assert made[0] is made[1] is duplicates[3].converted("encode", lambda: object())


def test_a_suspended_process_is_not_a_stalled_stage(monkeypatch):
    """The watchdog's clock ran on while the process was stopped (Ctrl-Z, SIGSTOP): resumed
    after more than --stall-timeout, the job failed as "stalled" in whatever call was open.
    Here the clock jumps 5 s inside one call, as it does for a process stopped that long."""
    import time as time_module

    from engine.frame import Frame
    from engine.registry import register_stage
    from engine.stage import MapStage

    real = time_module.perf_counter
    jump = [0.0]
    monkeypatch.setattr(time_module, "perf_counter", lambda: real() + jump[0])

    @register_stage("test.suspended-once")
    class SuspendedOnce(MapStage):
        def process(self, frame: Frame) -> Frame:
            if frame.seq == 5:
                time_module.sleep(0.1)
                jump[0] += 5.0  # stopped for 5 s, mid-call
                time_module.sleep(0.3)
            return frame

    source = ListSource(12)
    sink = CollectingSink()
    Pipeline(source, [make_spec("test.suspended-once", {})], sink,
             RunnerOptions(join_timeout_s=5, stall_timeout_s=1.0)).run()
    assert [f.seq for f in sink.frames] == list(range(12))
    # a call really stuck past the limit still fails
    with pytest.raises(StageError, match="stalled: no result for 1 s"):
        Pipeline(ListSource(12), [make_spec("test.jitter", {"max_ms": 1500, "seed": 1})], CollectingSink(),
                 RunnerOptions(join_timeout_s=5, stall_timeout_s=1.0)).run()
