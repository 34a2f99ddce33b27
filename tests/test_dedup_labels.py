"""The dedup stage with default settings against hand labels of the two real clips.

Labels: tests/data/dedup_labels/ (made with tools/label_transitions.py). A duplicate is
false when any transition since its reference unique frame is labelled `change`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from label_transitions import evaluate, read_labels, run_dedup

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
