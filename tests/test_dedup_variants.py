"""dedup with default settings on the generalisation set: both labelled clips re-encoded
(x264, x265 at CRF 18/28/35) and downscaled (640 and 480 px wide), tools/make_dedup_variants.py.

The set is built once and cached outside the repository ($ENGINE_TEST_CACHE, default
~/.cache/engine-tests; 7.5 MB). Cold, on 2 cores shared with other jobs (load ~11): 4.1 min to
encode the set, 3.1 min to carry the labels over and run dedup on every variant; warm, the
whole file takes about 1 min. Labels carry
over from the clips; a labelled change of which less than 3/255 survives in a variant is
`invisible` there (measured on the pixels, `label_transitions.carry_labels`), counted neither
as a change nor as a repeat.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import make_dedup_variants as mdv
from label_transitions import evaluate, run_dedup

MEDIA = Path(__file__).resolve().parent / "media"
LABELS = Path(__file__).resolve().parent / "data" / "dedup_labels"

# Floors (share of detectable labelled repeats skipped, share of frames skipped) per clip
# family, just under the lowest measured on that family (README's table, RESULTS.md). The
# issue's goals (0.90 on the 320x240 family, 0.60 on the 1080p family) are not all met: the
# lowest are 83.3 % (320x240 x265 CRF 35) and 18.7 % (1080p x265 CRF 35).
FLOORS = {"anime-320x240": (0.82, 0.18), "anime-1080p": (0.17, 0.07)}
# Variants over their family's floor by what the signed thin-window test saves (measured 46.7 %,
# 36.0 % without it): a regression there fails too.
VARIANT_FLOORS = {"anime-1080p.x265.crf28.w640.mp4": 0.45}


def cache_dir() -> Path:
    root = Path(os.environ.get("ENGINE_TEST_CACHE", Path.home() / ".cache" / "engine-tests"))
    return root / f"dedup-variants-r{mdv.RECIPE}"


@pytest.fixture(scope="session")
def variants() -> dict[str, Path]:
    return {p.name: p for p in mdv.build(MEDIA, cache_dir())}


def _names() -> list[str]:
    return [v.name for v in mdv.variants({"anime-320x240": 320, "anime-1080p": 1920})]


@pytest.fixture(scope="session")
def results(variants) -> dict:
    """dedup's evaluation on every variant, computed once for the tests below."""
    out = {}
    for name, path in variants.items():
        labels = mdv.variant_labels(MEDIA, LABELS, path)
        out[name] = (evaluate(run_dedup(path), labels), labels)
    return out


def test_the_set_is_what_the_issue_names(variants):
    assert sorted(variants) == sorted(_names())
    assert len(variants) == 16
    codecs = {name.split(".")[1] for name in variants}
    assert codecs == {"x264", "x265"}


@pytest.mark.parametrize("name", _names())
def test_no_false_duplicates(results, name):
    e, labels = results[name]
    invisible = sum(label == "invisible" for label, _ in labels.values())
    print(f"{name}: false duplicates {e.false_duplicates}, {invisible} changes invisible")
    assert e.false_duplicates == []


@pytest.mark.parametrize("name", _names())
def test_skip_rates_stay_over_their_floors(results, name):
    e, _ = results[name]
    repeats_floor, frames_floor = FLOORS[name.split(".")[0]]
    repeats_floor = max(repeats_floor, VARIANT_FLOORS.get(name, 0))
    print(f"{name}: repeats skipped {e.repeat_skip_rate:.1%}, frames skipped {e.frames_skipped_rate:.1%}")
    assert e.repeat_skip_rate >= repeats_floor
    assert e.frames_skipped_rate >= frames_floor


def test_labels_carry_over_unchanged_to_the_clip_itself():
    """The visibility measurement keeps every change of a clip compared with itself."""
    from label_transitions import carry_labels, read_labels

    clip = MEDIA / "anime-320x240.mp4"
    labels = read_labels(LABELS / "anime-320x240.csv")
    assert carry_labels(clip, clip, labels) == labels
