"""Duplicate skipping on synthetic clips with known repeat patterns, exact expectations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.registry import make_spec
from engine.runner import Pipeline
from engine.source import VideoSource
from engine.testing import CollectingSink, frame_index, index_frame
from make_clip import make_clip
from stages.dedup import block_difference


def run(path, stages):
    sink = CollectingSink()
    result = Pipeline(VideoSource(str(path)), [make_spec(n, o) for n, o in stages], sink).run()
    counters = {s.name: s.counters for s in result.stages}
    return sink.frames, counters


def held(pattern, frames):
    """Content index per frame for a hold pattern: (2,) = on twos, (1, 2, 3) = mixed."""
    out = []
    for content, hold in zip(itertools.count(), itertools.cycle(pattern)):
        out += [content] * hold
        if len(out) >= frames:
            return out[:frames]


def expected_dups(content):
    return [i for i in range(1, len(content)) if content[i] == content[i - 1]]


@pytest.mark.parametrize("pattern", [(2,), (3,), (1, 2, 3, 1, 4, 2)], ids=["twos", "threes", "mixed"])
@pytest.mark.parametrize("codec", ["libx264", "ffv1"])
def test_repeat_patterns_are_found_exactly(tmp_path, pattern, codec):
    content = held(pattern, 48)
    ext = ".mkv" if codec == "ffv1" else ".mp4"
    path = make_clip(tmp_path / f"c{ext}", 48, 128, 96, codec=codec,
                     image=lambda seq: index_frame(content[seq], 96, 128))
    frames, counters = run(path, [("dedup", {})])
    dups = [f.seq for f in frames if f.meta.get("dup_of") is not None]
    assert dups == expected_dups(content)
    for f in frames:  # each duplicate points at the start of its hold
        if f.meta.get("dup_of") is not None:
            assert content[f.meta["dup_of"]] == content[f.seq]
    kind = "exact_duplicates" if codec == "ffv1" else None
    d = counters["dedup"]
    assert d["unique"] == len(set(content))
    assert d.get("exact_duplicates", 0) + d.get("near_duplicates", 0) == len(dups)
    if kind:  # lossless: every repeat is bit-identical
        assert d["exact_duplicates"] == len(dups)
    assert [frame_index(f.data) for f in frames] == content  # output shows the right content


def _moving_dot(seq: int, stop_after: int = 20) -> np.ndarray:
    img = np.full((96, 128, 3), 90, np.uint8)
    x = 10 + min(seq, stop_after)  # moves 1 px a frame, then stands still
    img[40:44, x:x + 4] = 255  # 4×4 px, one pixel a frame: scores about 5 > threshold 4
    return img


def test_tiny_moving_region_is_always_a_change(tmp_path):
    path = make_clip(tmp_path / "dot.mp4", 30, 128, 96, image=_moving_dot)
    frames, _ = run(path, [("dedup", {})])
    dups = [f.seq for f in frames if f.meta.get("dup_of") is not None]
    assert dups == list(range(21, 30))  # moving: never skipped; standing: all skipped


def test_slow_fade_never_drifts_past_the_threshold(tmp_path):
    base = np.tile(np.linspace(40, 160, 128, dtype=np.float32), (96, 1))

    def fade(seq):  # brightens by half a level per frame
        return np.repeat((base + seq * 0.5).round().astype(np.uint8)[..., None], 3, axis=2)

    path = make_clip(tmp_path / "fade.mkv", 60, 128, 96, codec="ffv1", image=fade)
    frames, counters = run(path, [("dedup", {"threshold": "3"})])
    assert 0 < counters["dedup"].get("exact_duplicates", 0) + counters["dedup"].get("near_duplicates", 0) < 59
    gray = lambda a: a[..., 0]  # noqa: E731 - grey image: any channel is the luma
    for f in frames:
        truth = fade(f.seq)
        assert block_difference(gray(f.data), gray(truth), 16) < 3 + 1  # +1: rounding of luma


def test_max_run_caps_consecutive_duplicates(tmp_path):
    path = make_clip(tmp_path / "still.mkv", 30, 64, 48, codec="ffv1", image=lambda s: index_frame(0))
    frames, _ = run(path, [("dedup", {"max_run": "4"})])
    unique = [f.seq for f in frames if f.meta.get("dup_of") is None]
    assert unique == list(range(0, 30, 5))


def test_duplicates_skip_batch_and_window_stages_and_reuse_results(tmp_path):
    content = held((3,), 40)
    path = make_clip(tmp_path / "threes.mkv", 40, 64, 48, codec="ffv1",
                     image=lambda seq: index_frame(content[seq]))
    frames, counters = run(path, [
        ("dedup", {}), ("test.add", {"value": "1", "workers": "2"}),
        ("test.batch-add", {"value": "2", "batch_size": "4"}),
        ("test.window-sum", {"window_size": "5", "overlap": "1"})])
    n_unique = len(set(content))
    assert counters["test.add"]["added"] == n_unique
    batches = {k: v for k, v in counters["test.batch-add"].items() if k.startswith("batch_of_")}
    assert sum(int(k.rsplit("_", 1)[1]) * v for k, v in batches.items()) == n_unique
    for name in ("test.add", "test.batch-add", "test.window-sum"):
        assert counters[name]["skipped_duplicates"] == 40 - n_unique
    assert [f.seq for f in frames] == list(range(40))
    decoded, _ = run(path, [])
    for f in frames:  # each frame carries the processed result of its hold's first frame
        ref = f.meta.get("dup_of", f.seq)
        assert content[ref] == content[f.seq]
        expected = (decoded[ref].data.astype(np.int16) + 3).clip(0, 255)
        assert np.array_equal(f.data, expected), f.seq


def test_dedup_end_to_end_report_counts(tmp_path):
    from conftest import run_engine
    import json

    content = held((2,), 24)
    path = make_clip(tmp_path / "twos.mp4", 24, 64, 48, image=lambda seq: index_frame(content[seq]))
    out = tmp_path / "out.mp4"
    r = run_engine("stream", path, out, "--pipeline", "dedup,resize:scale=2", "--report",
                   tmp_path / "r.json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dedup"] == {"exact_duplicates": report["dedup"]["exact_duplicates"],
                               "near_duplicates": 12 - report["dedup"]["exact_duplicates"],
                               "frames_processed": 12, "frames": 24}
    from conftest import decoded_indices
    assert decoded_indices(out) == content
