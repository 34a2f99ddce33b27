"""The dedup stage with default settings against hand labels of the two real clips.

Labels: tests/data/dedup_labels/ (made with tools/label_transitions.py). A duplicate is
false when any transition since its reference unique frame is labelled `change`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from label_transitions import (defaults_against_previous, evaluate, hindsight_bound, lookahead_bound, lookahead_scores,
                               monotone_bound, previous_frame_bound, read_judged, read_labels, replay_dedup,
                               run_dedup, transition_scores, wider_statistics)
from stages.dedup import Dedup

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


def test_lookahead_scores_are_the_stages_statistics_of_the_frame_after():
    lumas = [y for _, y in read_judged(MEDIA / "anime-1080p.mp4", max_frames=5)]
    scores = transition_scores(lumas)
    rows = lookahead_scores(scores, lumas)
    stage = Dedup()
    for i in range(1, len(lumas) - 1):
        small, block = stage.analysis(lumas[i + 1])
        direct = stage.scores(small, stage.analysis(lumas[i - 1])[0], block, lumas[i + 1], lumas[i - 1])
        assert {k: rows[i][f"ahead:{k}"] for k in ("block", "line", "signed")} == \
            {k: direct[k] for k in ("block", "line", "signed")}
        assert rows[i]["next:block"] == scores[i + 1]["block"]
        assert rows[i]["block"] == scores[i]["block"]
    last = rows[-1]  # nothing after it: scored as if the frame were shown again
    assert last["ahead:line"] == scores[-1]["line"] and last["next:line"] == 0.0
    assert any(r["ahead:block"] != r["block"] for r in rows[1:-1])  # the frame after is really read


def _stage_scores(block: float, line: float) -> dict[str, float]:
    return {"block": block, "line": line, "signed": line}


def _after(ahead: float, next_: float) -> dict[str, float]:
    """Look-ahead statistics, each of the three at one value."""
    return {f"{kind}:{k}": v for kind, v in (("ahead", ahead), ("next", next_)) for k in ("block", "line", "signed")}


def test_lookahead_bound_takes_the_frame_afters_statistics_each_way():
    # repeat 1 and change 2 score the same on the stage's statistics, so no rule on them
    # alone can skip repeat 1; the frame after separates them, in one direction or the other
    base = _stage_scores(5, 9)
    labels = {1: ("repeat", ""), 2: ("change", "")}
    scores = [{}, {**base, **_after(1, 2)}, {**base, **_after(9, 2)}]  # the frame after undoes the repeat's
    assert monotone_bound(scores, labels) == (0, 1)
    assert lookahead_bound(scores, labels, "farther") == (1, 1)
    assert lookahead_bound(scores, labels, "nearer") == (0, 1)
    scores = [{}, {**base, **_after(9, 2)}, {**base, **_after(1, 2)}]  # ... or the change's
    assert lookahead_bound(scores, labels, "farther") == (0, 1)
    assert lookahead_bound(scores, labels, "nearer") == (1, 1)
    # against two changes, one fainter than the repeat on both look-ahead statistics and one
    # stronger on both, only a direction of its own for each skips it (ahead farther, next nearer)
    labels[3] = ("change", "")
    scores = [{}, {**base, **_after(5, 5)}, {**base, **_after(4, 4)}, {**base, **_after(6, 6)}]
    assert lookahead_bound(scores, labels, "farther") == lookahead_bound(scores, labels, "nearer") == (0, 1)
    assert lookahead_bound(scores, labels, "either") == (1, 1)
    # `-K` turns a statistic round
    assert monotone_bound(scores, labels, ("ahead:block", "-next:block")) == (1, 1)
    assert monotone_bound(scores, labels, ("ahead:block", "next:block")) == (0, 1)
    # identical on every statistic: no direction helps
    scores = [{}, {**base, **_after(1, 2)}, {**base, **_after(1, 2)}]
    labels.pop(3)
    assert lookahead_bound(scores, labels, "either") == (0, 1)


def test_flicker_lookahead_calls_near_what_the_frame_after_undoes():
    # the defaults' thresholds: block 4, line 4.5 (signed 3). 1: a repeat near its previous
    # frame; 2: a repeat over them that the frame after undoes; 3: a change the frame after
    # also undoes (a one-frame flash); 4: a change that persists
    scores = [{}] + [{**_stage_scores(*now), **{f"ahead:{k}": v for k, v in _stage_scores(*then).items()}}
                     for now, then in (((1, 2), (9, 9)), ((6, 9), (1, 2)), ((6, 9), (2, 3)), ((6, 9), (6, 9)))]
    labels = {1: ("repeat", ""), 2: ("repeat", ""), 3: ("change", ""), 4: ("change", "")}
    assert defaults_against_previous(scores, labels, flicker=True) == (2, 2, [3])
    assert defaults_against_previous(scores, labels) == (1, 2, [])
