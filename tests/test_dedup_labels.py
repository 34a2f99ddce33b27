"""The dedup stage with default settings against hand labels of the two real clips.

Labels: tests/data/dedup_labels/ (made with tools/label_transitions.py). A duplicate is
false when any transition since its reference unique frame is labelled `change`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from label_transitions import (evaluate, hindsight_bound, monotone_bound, previous_frame_bound, read_judged,
                               read_labels, replay_dedup, run_dedup, transition_scores, wider_statistics)

MEDIA = Path(__file__).resolve().parent / "media"
LABELS = Path(__file__).resolve().parent / "data" / "dedup_labels"

# Floors a little under the measured skip rates of detectable repeats (RESULTS.md),
# so that a regression in repeat skipping fails.
CASES = [
    pytest.param("anime-320x240", 0.95, id="320x240"),  # measured 52/53 detectable = 98.1 %
    pytest.param("anime-1080p", 0.44, id="1080p"),  # measured 35/75 = 46.7 %
]


@pytest.mark.parametrize("clip, floor", CASES)
def test_defaults_miss_no_change_and_skip_repeats(clip, floor):
    labels = read_labels(LABELS / f"{clip}.csv")
    dup_of = run_dedup(MEDIA / f"{clip}.mp4")
    assert len(dup_of) == len(labels) + 1
    e = evaluate(dup_of, labels)
    print(f"{clip}: false duplicates {len(e.false_duplicates)}, repeats skipped "
          f"{e.repeats_skipped}/{e.repeats} ({e.repeats_capped} held by max_run) "
          f"= {e.repeat_skip_rate:.1%} of detectable, frames skipped {e.frames_skipped_rate:.1%}")
    assert e.repeat_skip_rate >= floor
    assert e.false_duplicates == []


@pytest.mark.parametrize("clip, frames", [("anime-320x240", None), ("anime-1080p", 120)])
def test_replay_makes_the_pipelines_decisions(clip, frames):
    # hindsight_bound replays the stage's own decision on frames read once; it must be the
    # decision a real pipeline makes, for the defaults and for other thresholds (1080p: the
    # analysis resize and the edge discount too)
    judged = read_judged(MEDIA / f"{clip}.mp4", max_frames=frames)
    for options in ({}, {"threshold": 10, "line_threshold": 256}, {"line_threshold": 6}):
        replayed = replay_dedup(judged, **options)
        assert replayed == run_dedup(MEDIA / f"{clip}.mp4", max_frames=frames, **options)
        assert any(r is not None for r in replayed)  # duplicates found, so the test can tell


def test_hindsight_bound_picks_the_best_setting_without_a_false_duplicate():
    labels = read_labels(LABELS / "anime-320x240.csv")
    frames = read_judged(MEDIA / "anime-320x240.mp4")
    b = hindsight_bound(frames, labels, thresholds=(4.0, 10.0, 60.0), line_thresholds=(4.5, 256.0))
    assert b.best.false_duplicates == []
    assert b.best.repeats_skipped >= b.default.repeats_skipped
    # a block threshold of 60 with no thin-window test merges real changes: never chosen
    assert b.threshold < 60
    again = evaluate(replay_dedup(frames, threshold=b.threshold, line_threshold=b.line_threshold), labels)
    assert again.repeats_skipped == b.best.repeats_skipped
    with pytest.raises(ValueError, match="false duplicate"):
        hindsight_bound(frames, labels, thresholds=(60.0,), line_thresholds=(256.0,))


def test_previous_frame_bound_searches_every_threshold():
    # repeats 1, 3, 5; changes 2 (faint: it sets the thin-window thresholds) and 4 (large)
    stats = [(1, 2, 2), (2, 6, 6), (1.5, 5, 1), (30, 80, 80), (3, 5.5, 7)]
    scores = [{}] + [dict(zip(("block", "line", "signed"), s)) for s in stats]
    labels = {i: (label, "") for i, label in enumerate(["repeat", "change"] * 2 + ["repeat"], 1)}
    # all three repeats under block 30 and line 6, with change 2 (line 6) just kept
    assert previous_frame_bound(scores, labels) == (3, 3, (30.0, 6.0, 6.0))
    # 1.0 under change 2 (block 29, thin windows 5), repeat 5 (line 5.5) is kept
    assert previous_frame_bound(scores, labels, margin=1.0)[:2] == (2, 3)
    # change 2 fainter on thin windows than repeat 5: repeat 5 can no longer be skipped
    scores[2] = {"block": 2, "line": 5, "signed": 5}
    assert previous_frame_bound(scores, labels)[:2] == (2, 3)
    # per stretch of 2 transitions each gets its own thresholds: repeat 5 no longer shares
    # them with change 2, so all three are skipped again
    assert previous_frame_bound(scores, labels, stretch=2)[:2] == (3, 3)


def test_monotone_bound_keeps_only_repeats_as_different_as_a_change():
    # changes 2 and 4; repeat 1 is under both, repeat 3 scores over change 2 on every
    # statistic (kept by any monotone rule), repeat 5 is over change 2 on block only
    stats = [(1, 2, 2), (2, 6, 6), (3, 7, 6), (30, 80, 80), (3, 5.5, 7)]
    scores = [{}] + [dict(zip(("block", "line", "signed"), s)) for s in stats]
    labels = {i: (label, "") for i, label in enumerate(["repeat", "change"] * 2 + ["repeat"], 1)}
    assert monotone_bound(scores, labels) == (2, 3)
    # on block alone, repeats 3 and 5 (block 3) are as different as change 2 (block 2)
    assert monotone_bound(scores, labels, ("block",)) == (1, 3)
    # thresholds are monotone rules: they never beat the bound (here, they cannot reach it:
    # repeat 5 is fainter than change 2 on the thin windows but not on block)
    assert previous_frame_bound(scores, labels)[0] <= monotone_bound(scores, labels)[0]
    # a repeat equal to a change is kept too (the rule cannot call one near and not the other)
    scores[5] = dict(scores[2])
    assert monotone_bound(scores, labels) == (1, 3)
    # without change 2 only change 4 constrains, and every repeat is under it
    labels.pop(2)
    assert monotone_bound(scores, labels) == (3, 3)


def test_wider_statistics_extend_the_stages_own():
    # at 1080p the stage discounts edges by the full ringing gain (0.15): the same statistics
    # at gain 0.15 must be the stage's, and more discount can only lower them
    lumas = [y for _, y in read_judged(MEDIA / "anime-1080p.mp4", max_frames=6)]
    rows = transition_scores(lumas, gains=(0.15, 0.8))[1:]
    for row in rows:
        assert row["line@0.15"] == row["line"] and row["signed@0.15"] == row["signed"]
        assert row["line@0.8"] <= row["line"] and row["signed@0.8"] <= row["signed"]
    assert any(row["line@0.8"] < row["line"] for row in rows)  # the discount does something
    assert set(wider_statistics((0.8,))) <= set(rows[0])
