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


def test_a_fade_changes_each_frame_it_moves_a_level(tmp_path):
    """Test 1 alone let a fade through in steps of its threshold (4 levels at 0.7 a frame:
    a visible stair); the tone guard keeps every output within a level of its frame."""
    base = np.tile(np.linspace(40, 160, 128, dtype=np.float32), (96, 1))

    def fade(seq):
        return np.repeat((base + seq * 0.7).round().astype(np.uint8)[..., None], 3, axis=2)

    path = make_clip(tmp_path / "fade.mp4", 48, 128, 96, crf=18, image=fade)
    frames, counters = run(path, [("dedup", {})])
    decoded, _ = run(path, [])
    for f, truth in zip(frames, decoded):
        shown = decoded[f.meta.get("dup_of", f.seq)].data
        assert abs(float(shown[..., 1].mean()) - float(truth.data[..., 1].mean())) < 1.0 + 0.5, f.seq
    assert counters["dedup"]["unique"] >= 24  # at most one frame in two skipped


_RED, _GREEN = (200, 60, 60), (40, 145, 40)  # luma 102 and 102: a change of colour alone


def _colour_square(seq: int) -> np.ndarray:
    img = np.full((96, 128, 3), 128, np.uint8)
    img[20:70, 30:90] = _RED if seq // 8 % 2 == 0 else _GREEN
    return img


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p", "yuv420p10le"])
def test_a_change_of_colour_alone_is_a_change(tmp_path, pix_fmt):
    codec = "libx264" if pix_fmt != "yuv420p10le" else "ffv1"
    path = make_clip(tmp_path / f"colour{'.mp4' if codec == 'libx264' else '.mkv'}", 48, 128, 96,
                     codec=codec, pix_fmt=pix_fmt, image=_colour_square)
    frames, counters = run(path, [("dedup", {})])
    assert counters["dedup"]["unique"] >= 6  # each switch of colour at least (max_run adds more)
    for f in frames:
        ref = f.meta.get("dup_of", f.seq)
        assert ref // 8 == f.seq // 8, (f.seq, ref)  # never the square's other colour
    assert counters["dedup"]["near_duplicates"] + counters["dedup"]["exact_duplicates"] > 30


def test_chroma_reads_deep_and_semi_planar_pictures_as_8_bit():
    from fractions import Fraction

    import av
    from engine.frame import Frame
    from stages.dedup import chroma

    rgb = _colour_square(0)
    as_8bit = chroma(Frame.from_picture(0, 0, Fraction(1, 24), av.VideoFrame.from_ndarray(
        rgb, format="rgb24").reformat(format="yuv420p"), "yuv420p"))
    for fmt in ("nv12", "yuv420p10le"):
        picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
        planes = chroma(Frame.from_picture(0, 0, Fraction(1, 24), picture, fmt))
        for got, want in zip(planes, as_8bit):
            assert got.shape == want.shape == (48, 64)
            assert np.abs(got.astype(int) - want).max() <= 1, fmt
    grey = av.VideoFrame.from_ndarray(rgb[..., 0], format="gray")
    assert chroma(Frame.from_picture(0, 0, Fraction(1, 24), grey, "gray")) is None


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
    assert report["dedup"].pop("noise")["pairs"] == report["dedup"]["near_duplicates"]
    assert report["dedup"] == {"exact_duplicates": report["dedup"]["exact_duplicates"],
                               "near_duplicates": 12 - report["dedup"]["exact_duplicates"],
                               "frames_processed": 12, "frames": 24}
    from conftest import decoded_indices
    assert decoded_indices(out) == content


def _sparse_diffs(seed: int, count: int):
    """Difference images like codec noise: mostly 0–3, scattered spikes, faint full lines."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = int(rng.integers(1, 160)), int(rng.integers(1, 200))
        diff = rng.integers(0, 4, (h, w)).astype(np.uint8)
        k = int(rng.integers(0, 30))
        diff[rng.integers(0, h, k), rng.integers(0, w, k)] = rng.integers(0, 256, k)
        if rng.random() < 0.3:
            diff[rng.integers(0, h), :] = rng.integers(0, 12)
        if rng.random() < 0.3:
            diff[:, rng.integers(0, w)] = rng.integers(0, 12)
        yield rng, diff


def test_sparse_line_test_gives_the_full_line_test_answer():
    from stages.dedup import line_difference, line_reaches

    for rng, diff in _sparse_diffs(1, 1500):
        length = int(rng.integers(2, 20))
        threshold = float(rng.choice([0, 0.5, 1, 2.5, 4.5, 5, 7, 20, 300]))
        full = line_difference(diff, np.zeros_like(diff), length)
        assert line_reaches(diff, length, threshold) == (full >= threshold), (diff.shape, length)


@pytest.mark.parametrize("block", [2, 8, 12, 16])
def test_region_max_is_the_whole_image_filter_there(block):
    from stages.dedup import _block_means, _line_sums, _region_max

    for rng, diff in _sparse_diffs(2, 300):
        h, w = diff.shape
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        # float means are exact when block² is a power of two (else: see Dedup._is_near)
        pow2 = block & (block - 1) == 0
        for reach, filters, exact in ((block, lambda a: [_block_means(a, block)], pow2),
                                      (12, lambda a: _line_sums(a, 12), True)):
            ys, xs = slice(max(0, y0 - reach), y1 + reach), slice(max(0, x0 - reach), x1 + reach)
            whole = max(float(out[ys, xs].max()) for out in filters(diff))
            assert _region_max(diff, y0, y1, x0, x1, reach, filters) == \
                (whole if exact else pytest.approx(whole, rel=2 ** -21))


@pytest.mark.parametrize("analysis_width, line_threshold", [(960, None), (150, None), (960, 0)])
def test_near_duplicate_decision_is_the_scores_against_the_thresholds(analysis_width, line_threshold):
    from stages.dedup import Dedup  # 150: 12×12 windows after resizing; 0: every frame a change

    stage = Dedup(analysis_width=analysis_width, line_threshold=line_threshold)
    decisions = set()
    for rng, diff in _sparse_diffs(3, 600):
        ref = rng.integers(0, 256, diff.shape).astype(np.uint8)
        cur = np.where(rng.random(diff.shape) < 0.5, ref.astype(int) + diff, ref.astype(int) - diff)
        cur = cur.clip(0, 255).astype(np.uint8)
        stage._ref_full, (stage._ref_luma, _) = ref, stage.analysis(ref)
        small, block = stage.analysis(cur)
        s = stage.scores(small, stage._ref_luma, block, cur, ref)
        expected = stage.near_by_scores(s)
        assert expected == (s["block"] < stage.threshold and s["tone"] < stage.tone_threshold and (
            s["line"] < stage.line_threshold or s["signed"] < stage.line_threshold * 2 / 3))
        assert stage._is_near(small, block, cur) == expected, s
        decisions.add((s["block"] < stage.threshold, s["line"] < stage.line_threshold, expected))
    if line_threshold == 0:
        assert {near for _, _, near in decisions} == {False}
        return
    # every path was taken: test 1 fails; test 2 fails both ways; the unsigned or the signed passes
    assert decisions >= {(False, False, False), (True, False, False), (True, False, True),
                         (True, True, True)}


@pytest.mark.parametrize("options", [{"line_length": 129}, {"line_length": 1}, {"threshold": -1},
                                     {"max_run": 0}, {"caution": 0}, {"caution": 11}, {"block": 257},
                                     {"threshold": 300}, {"line_threshold": 257}, {"tone_threshold": -1},
                                     {"colour_threshold": 257}])
def test_options_outside_what_the_statistic_supports_are_refused(options):
    from stages.dedup import Dedup

    with pytest.raises(ValueError):
        Dedup(**options)
    Dedup(line_length=128)  # uint16 window sums still hold 255 × 2 × 128


def _drawing(h: int = 96, w: int = 128) -> np.ndarray:
    img = np.full((h, w), 200, np.uint8)
    img[:, 40:43] = 30   # drawn lines of contrast 170
    img[50:53, :] = 30
    return img


def test_flicker_along_shared_edges_is_discounted_but_a_new_faint_line_is_not():
    from stages.dedup import Dedup

    stage = Dedup()
    ref = _drawing(96, 1920)  # the full discount holds from twice the analysis width
    small, block = stage.analysis(ref)
    flicker = ref.copy()  # the edge pixels beside the line move by 12: codec ringing
    flicker[:, 39] -= 12
    flicker[:, 43] -= 12
    s = stage.scores(small, small, block, flicker, ref)
    assert s["line"] <= 1  # 12 < 0.15 × the shared contrast (170): discounted (but where lines cross)
    plain = line_difference_of(flicker, ref)
    assert plain >= 6 > stage.line_threshold  # the plain difference (12 on 2 px of 2x12) keeps it
    streak = ref.copy()  # a new one-pixel streak of 12/255 over a flat area: a real change
    streak[5:60, 90] += 12
    s = stage.scores(small, small, block, streak, ref)
    assert s["line"] == 6 > 4.5 == stage.line_threshold
    small_ref = _drawing()  # at 128 px wide (under the analysis width) nothing is discounted
    small_flicker = small_ref.copy()
    small_flicker[:, 39] -= 12
    sm, block = stage.analysis(small_ref)
    assert stage.scores(sm, sm, block, small_flicker, small_ref)["line"] == 6


def test_signed_windows_keep_a_streak_and_cancel_noise_that_alternates_in_sign():
    from stages.dedup import Dedup

    stage = Dedup()
    ref = np.full((96, 128), 100, np.uint8)
    streak, noise = ref.copy(), ref.copy()
    streak[20:60, 50] = 110  # one pixel wide, +10: 2×12 windows along it average 5
    noise[20:60, 50] = np.where(np.arange(40) % 2, 110, 90)  # ±10 every other pixel
    small, block = stage.analysis(ref)
    stage._ref_full, stage._ref_luma = ref, small
    for cur, near in ((streak, False), (noise, True)):
        s = stage.scores(small, small, block, cur, ref)
        assert s["line"] == 5 and (s["signed"] == 5 if cur is streak else s["signed"] < 0.5)  # ends: ±10/24
        assert stage.near_by_scores(s) == near == stage._is_near(stage.analysis(cur)[0], block, cur)
    # both tests must fail for a change: the unsigned one alone keeps the streak a change too
    assert Dedup(line_threshold=6).near_by_scores(stage.scores(small, small, block, streak, ref))


def test_ringing_gain_ramps_from_the_analysis_width_to_twice_it():
    from stages.dedup import RINGING_GAIN, ringing_gain

    assert [ringing_gain(w) for w in (320, 960, 1440, 1920, 3840)] == \
        [0, 0, RINGING_GAIN / 2, RINGING_GAIN, RINGING_GAIN]


def line_difference_of(a: np.ndarray, b: np.ndarray) -> float:
    from stages.dedup import line_difference

    return line_difference(a, b, 12)


def test_caution_scales_the_thresholds_and_explicit_ones_override():
    from stages.dedup import Dedup

    default, careful, bold = Dedup(), Dedup(caution=2), Dedup(caution=0.5)
    assert (default.threshold, default.line_threshold) == (4.0, 4.5)
    assert default.signed_line_threshold == 3.0 and careful.signed_line_threshold == 1.5
    assert (careful.threshold, careful.line_threshold) == (2.0, 2.25)
    assert (bold.threshold, bold.line_threshold) == (8.0, 9.0)
    fixed = Dedup(caution=2, threshold=5, line_threshold=6)
    assert (fixed.threshold, fixed.line_threshold) == (5, 6)
    assert (default.tone_threshold, default.colour_threshold) == (1.0, 6.0)
    assert (careful.tone_threshold, careful.colour_threshold) == (0.5, 3.0)
    assert Dedup(caution=2, tone_threshold=2, colour_threshold=9).colour_threshold == 9


def test_caution_changes_the_decisions(tmp_path):
    content = held((3,), 36)
    path = make_clip(tmp_path / "threes.mp4", 36, 128, 96, crf=30,
                     image=lambda seq: np.repeat(_drawing()[..., None], 3, axis=2) // (1 + content[seq] % 2))
    skipped = {c: sum(r is not None for r in run_dedup_of(path, caution=c)) for c in (0.5, 1, 4)}
    assert skipped[0.5] >= skipped[1] > skipped[4]


def run_dedup_of(path, **options):
    from label_transitions import run_dedup

    return run_dedup(path, **options)


def test_edge_noise_follows_ringing_on_the_edges_and_ignores_a_small_change():
    from stages.dedup import edge_noise, excess_difference, local_range

    rng = np.random.default_rng(5)
    ref = np.full((120, 160), 180, np.uint8)
    ref[:, ::8] = 20  # many drawn lines: edges all over the frame
    cur = ref.astype(np.int16)
    edges = local_range(ref) >= 32
    cur[edges] += rng.integers(-40, 41, int(edges.sum()))  # strong ringing on every edge
    cur = cur.clip(0, 255).astype(np.uint8)
    ra, rb = local_range(ref), local_range(cur)
    noisy = edge_noise(excess_difference(ref, cur, ra, rb), ra, rb)
    assert noisy > 2
    small = ref.copy()
    small[10:20, 30:34] = 255  # a small real change crossing two lines
    ra, rb = local_range(ref), local_range(small)
    assert edge_noise(excess_difference(ref, small, ra, rb), ra, rb) == 0


def test_report_gives_the_estimated_noise(tmp_path):
    from conftest import run_engine
    import json

    content = held((3,), 24)
    path = make_clip(tmp_path / "threes.mp4", 24, 128, 96, crf=30,
                     image=lambda seq: np.repeat(_drawing()[..., None], 3, axis=2) // (1 + content[seq] % 2))
    r = run_engine("stream", path, tmp_path / "out.mp4", "--pipeline", "dedup", "--report",
                   tmp_path / "r.json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    noise = report["dedup"]["noise"]
    assert noise["pairs"] >= 1 and 0 <= noise["median"] <= noise["p90"] <= noise["max"]
    settings = [s["settings"] for s in report["stages"] if s["name"] == "dedup"][0]
    assert settings["caution"] == 1.0 and settings["noise"] == noise


def test_counters_and_noise_keys_are_reported_when_nothing_was_skipped(tmp_path):
    from conftest import run_engine
    import json

    path = make_clip(tmp_path / "moving.mp4", 12, 128, 96, image=_moving_dot)
    r = run_engine("stream", path, tmp_path / "out.mp4", "--pipeline", "dedup,resize:scale=2",
                   "--report", tmp_path / "r.json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    counters = {s["name"]: s["counters"] for s in report["stages"]}
    assert counters["dedup"] == {"unique": 12, "exact_duplicates": 0, "near_duplicates": 0}
    assert counters["resize"]["skipped_duplicates"] == 0
    assert report["dedup"]["noise"] == {"pairs": 0, "median": None, "p90": None, "max": None}
