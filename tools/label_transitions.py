#!/usr/bin/env python3
"""Label every frame transition of a clip as `repeat` or `change`, by inspection, for dedup.

Transition i is frame i-1 -> frame i. `repeat`: frame i shows the same picture as frame
i-1 (only codec noise differs); `change`: anything a viewer could see move or change.

    python tools/label_transitions.py stats CLIP [--labels CSV]        # per-transition numbers
    python tools/label_transitions.py sheets CLIP --out /tmp/sheets    # contact sheets (PNG)
    python tools/label_transitions.py crop CLIP I X Y W H --out a.png  # full-resolution zoom
    python tools/label_transitions.py init CLIP CSV                    # every row `unlabelled`
    python tools/label_transitions.py set CSV 3-7,12 change --note "rain only"
    python tools/label_transitions.py evaluate CLIP CSV                # the dedup stage vs labels
    python tools/label_transitions.py bound CLIP CSV                   # best thresholds in hindsight

Each contact-sheet tile shows |diff|x8 against frame i-1 and, over frame i dimmed, the pixels
whose difference exceeds MASK_LEVEL, both max-pooled so a one-pixel streak stays visible,
with the dedup statistics (against the previous frame) and the current label.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.registry import make_spec  # noqa: E402
from engine.runner import Pipeline  # noqa: E402
from engine.source import VideoSource  # noqa: E402
from engine.testing import CollectingSink  # noqa: E402
from stages.dedup import (Dedup, content_hash, excess_difference, line_difference,  # noqa: E402
                          local_range, luma, signed_line_difference)

LABELS = ("repeat", "change")
FIELDS = ("index", "label", "note")
PANEL_WIDTH = 300
DIFF_GAIN = 8  # |diff| x 8: a difference of 32/255 is full white
MASK_LEVEL = 12  # pixels over this |diff| are drawn in the mask panel (codec noise rarely is)


def read_lumas(path: str | Path) -> list[np.ndarray]:
    """Every frame's luma plane, as the dedup stage reads it."""
    source = VideoSource(str(path))
    try:
        return [np.array(luma(frame)) for frame in source.frames()]
    finally:
        source.close()


def transition_scores(lumas: list[np.ndarray], gains: tuple[float, ...] = ()) -> list[dict[str, float]]:
    """Dedup's statistics for each transition i-1 -> i (index 0 has none). With `gains`, also
    test 2's two statistics with that much of the shared edge contrast discounted, at every
    width (keys `line@G`, `signed@G`): what a rule that discounted edges more could look at."""
    stage = Dedup()
    rows = [{}]
    prev, _ = stage.analysis(lumas[0])
    range_prev = local_range(lumas[0]) if gains else None
    for y, y_prev in zip(lumas[1:], lumas):
        small, block = stage.analysis(y)
        row = stage.scores(small, prev, block, y, y_prev)
        if gains:
            range_y = local_range(y)
            for g in gains:
                excess = excess_difference(y_prev, y, range_prev, range_y, g)
                row[_at_gain("line", g)] = line_difference(excess, np.zeros_like(excess), stage.line_length)
                row[_at_gain("signed", g)] = signed_line_difference(y_prev, y, range_prev, range_y,
                                                                     stage.line_length, g)
            range_prev = range_y
        rows.append(row)
        prev = small
    return rows


def _at_gain(key: str, gain: float) -> str:
    """`transition_scores`' key for test 2's statistic `key` at ringing gain `gain`."""
    return f"{key}@{gain:g}"


# --- labels ----------------------------------------------------------------------------

def read_labels(path: str | Path) -> dict[int, tuple[str, str]]:
    with open(path, newline="") as f:
        return {int(r["index"]): (r["label"], r["note"]) for r in csv.DictReader(f)}


def write_labels(path: str | Path, labels: dict[int, tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FIELDS)
        for index in sorted(labels):
            w.writerow((index, *labels[index]))


def parse_ranges(text: str) -> list[int]:
    """'3-7,12' -> [3, 4, 5, 6, 7, 12]"""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


# --- evaluation against the real stage ------------------------------------------------------

@dataclass
class Evaluation:
    transitions: int
    repeats: int
    changes: int
    false_duplicates: list[int]  # frames skipped although a `change` lies since their reference
    repeats_skipped: int
    repeats_capped: int  # repeats kept unique only because max_run was reached
    frames_skipped: int

    @property
    def repeat_skip_rate(self) -> float:
        """Share of detectable repeats skipped (repeats held back by max_run are not misses)."""
        return self.repeats_skipped / max(1, self.repeats - self.repeats_capped)

    @property
    def frames_skipped_rate(self) -> float:
        return self.frames_skipped / (self.transitions + 1)


def run_dedup(path: str | Path, max_frames: int | None = None, **options) -> list[int | None]:
    """dup_of per frame from the real stage in a real pipeline (the first `max_frames`)."""
    sink = CollectingSink()
    Pipeline(VideoSource(str(path), max_frames=max_frames),
             [make_spec("dedup", {k: str(v) for k, v in options.items()})], sink).run()
    return [f.meta.get("dup_of") for f in sink.frames]


def evaluate(dup_of: list[int | None], labels: dict[int, tuple[str, str]],
             max_run: int = 12) -> Evaluation:
    """Compare the stage's decisions with the labels.

    A duplicate is false when any transition between its reference and itself is a change:
    the stage compares with the last unique frame, so drift across repeats counts too.
    """
    changes = {i for i, (label, _) in labels.items() if label == "change"}
    repeats = {i for i, (label, _) in labels.items() if label == "repeat"}
    false, skipped, capped, run = [], 0, 0, 0
    for i, ref in enumerate(dup_of):
        if ref is None:
            if i in repeats and run == max_run:
                capped += 1
            run = 0
            continue
        run += 1
        if any(t in changes for t in range(ref + 1, i + 1)):
            false.append(i)
        elif i in repeats:
            skipped += 1
    return Evaluation(len(labels), len(repeats), len(changes), false, skipped, capped,
                      sum(r is not None for r in dup_of))


# --- the best any choice of thresholds can do, in hindsight -------------------------------

#: The grid `hindsight_bound` searches: every block threshold with every line threshold
#: (the signed one follows it). 256 turns the thin-window test off (no mean reaches it).
BOUND_THRESHOLDS = (3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 10.0, 12.0, 16.0)
BOUND_LINE_THRESHOLDS = (3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 10.0, 14.0, 20.0, 256.0)
#: Stretches (transitions) for the bound of thresholds that follow the scene: 2 and 4 s at 24 fps.
STRETCHES = (48, 96)


def read_judged(path: str | Path, max_frames: int | None = None) -> list[tuple[int, np.ndarray]]:
    """Every frame's (content_hash, luma), as the dedup stage sees them, for `replay_dedup`."""
    source = VideoSource(str(path), max_frames=max_frames)
    try:
        return [(content_hash(frame), np.array(luma(frame))) for frame in source.frames()]
    finally:
        source.close()


def replay_dedup(frames: list[tuple[int, np.ndarray]], **options) -> list[int | None]:
    """dup_of per frame from the stage's own decision (`Dedup.judge`) on frames read once:
    the same decisions as `run_dedup`, without decoding again for each setting."""
    stage = Dedup(**options)
    out = []
    for seq, (digest, y) in enumerate(frames):
        out.append(None if stage.judge(seq, digest, y) is None else stage.reference)
    return out


@dataclass
class Bound:
    default: Evaluation
    best: Evaluation  # most repeats skipped with no false duplicate, over the grid
    threshold: float
    line_threshold: float


def hindsight_bound(frames: list[tuple[int, np.ndarray]], labels: dict[int, tuple[str, str]],
                    thresholds=BOUND_THRESHOLDS, line_thresholds=BOUND_LINE_THRESHOLDS) -> Bound:
    """The most repeats the stage skips on this video with no false duplicate, over every
    (threshold, line_threshold) of the grid, chosen knowing the labels: an upper bound on what
    any rule that settles on one setting of the grid per video can reach (a rule that moved
    the thresholds from frame to frame is not bounded by it)."""
    default = evaluate(replay_dedup(frames), labels)
    best, at = None, None
    for threshold in thresholds:
        for line_threshold in line_thresholds:
            e = evaluate(replay_dedup(frames, threshold=threshold, line_threshold=line_threshold), labels)
            # by the rate of detectable repeats skipped: max_run holds back more at higher thresholds
            key = (e.repeat_skip_rate, e.repeats_skipped)
            if not e.false_duplicates and (best is None or key > (best.repeat_skip_rate, best.repeats_skipped)):
                best, at = e, (threshold, line_threshold)
    if best is None:
        raise ValueError("every setting of the grid makes a false duplicate")
    return Bound(default, best, *at)


def previous_frame_bound(scores: list[dict[str, float]], labels: dict[int, tuple[str, str]],
                         stretch: int | None = None, margin: float = 0.0
                         ) -> tuple[int, int, tuple[float, float, float]]:
    """The same question without the grid, each transition against the previous frame: the
    most repeats that the stage's rule (block < Tb and (line < Tl or signed < Ts)) calls near
    while it calls no change near, over every (Tb, Tl, Ts). `scores`: `transition_scores`.
    Returns (repeats near, repeats, (Tb, Tl, Ts)); a threshold just at a change's statistic
    is the best (the tests are strict). With `stretch`, each run of that many transitions
    gets its own best thresholds (the bound for thresholds that follow the scene), summed;
    the thresholds returned are then those of the last stretch. `margin`: each threshold
    stays that much under the statistic of the change it must keep (the defaults keep 1.0
    under the 1080p clip's faintest change)."""
    rows = [(scores[i], label) for i, (label, _) in sorted(labels.items()) if label in LABELS]
    stat = {k: np.array([r[k] for r, _ in rows]) for k in ("block", "line", "signed")}
    change = np.array([label == "change" for _, label in rows])
    if stretch:
        total, at = 0, (0.0, 0.0, 0.0)
        for a in range(0, len(rows), stretch):
            near, _, at = _best_thresholds({k: v[a:a + stretch] for k, v in stat.items()},
                                           change[a:a + stretch], margin)
            total += near
        return total, int((~change).sum()), at
    return _best_thresholds(stat, change, margin)


#: Ringing gains for `monotone_bound`'s wider set of statistics (the stage's is 0.15).
BOUND_GAINS = (0.3, 0.5, 0.8)
#: The statistics the stage decides on.
STAGE_STATISTICS = ("block", "line", "signed")


def _oriented(row: dict[str, float], key: str) -> float:
    return -row[key[1:]] if key.startswith("-") else row[key]


def monotone_bound(scores: list[dict[str, float]], labels: dict[int, tuple[str, str]],
                   keys=STAGE_STATISTICS) -> tuple[int, int]:
    """The most repeats that *any* rule monotone in the statistics `keys` can call near with no
    change called near, each transition against the previous frame: (repeats near, repeats).

    Monotone: a pair that differs more on every statistic is never nearer. Such a rule must keep
    every repeat that scores at least as high as some change on every statistic (it keeps that
    change); the rule "near unless at least as different as some change" keeps only those, so
    the bound is reached, in hindsight. Thresholds, their per-video choice, weighted sums and
    any classifier that is monotone in these statistics are all bounded by it. A key `-K`
    takes statistic K the other way round (larger is nearer)."""
    rows = [(np.array([_oriented(scores[i], k) for k in keys]), label)
            for i, (label, _) in sorted(labels.items()) if label in LABELS]
    changes = np.array([v for v, label in rows if label == "change"]).reshape(-1, len(keys))
    repeats = [v for v, label in rows if label == "repeat"]
    kept = sum(bool((changes <= v).all(axis=1).any()) for v in repeats)
    return len(repeats) - kept, len(repeats)


def lookahead_scores(scores: list[dict[str, float]], lumas: list[np.ndarray]) -> list[dict[str, float]]:
    """`scores` with one frame of look-ahead for each transition i-1 -> i: the stage's statistics
    of frame i+1 against frame i-1 (`ahead:K`) and of i+1 against i (`next:K`, transition i+1's
    own). The last transition has no frame after it: it is scored as if frame i were shown
    again (ahead = its own, next = 0)."""
    stage, last = Dedup(), len(scores) - 1
    out = [dict(scores[0])]
    for i in range(1, len(scores)):
        row = dict(scores[i])
        if i < last:
            small, block = stage.analysis(lumas[i + 1])
            ahead = stage.scores(small, stage.analysis(lumas[i - 1])[0], block, lumas[i + 1], lumas[i - 1])
            after = scores[i + 1]
        else:
            ahead, after = scores[i], dict.fromkeys(STAGE_STATISTICS, 0.0)
        for k in STAGE_STATISTICS:
            row[f"ahead:{k}"], row[f"next:{k}"] = ahead[k], after[k]
        out.append(row)
    return out


#: `lookahead_scores`' statistics.
LOOKAHEAD_STATISTICS = tuple(f"{kind}:{k}" for kind in ("ahead", "next") for k in STAGE_STATISTICS)


#: How `lookahead_bound` takes the look-ahead statistics: larger is farther, as for the stage's
#: own (a difference the frame after undoes, a codec's flicker, is nearer), larger is nearer
#: (what a cadence suggests: a held drawing is often followed by a new one), or each either way.
LOOKAHEAD_DIRECTIONS = ("farther", "nearer", "either")


def lookahead_bound(scores: list[dict[str, float]], labels: dict[int, tuple[str, str]],
                    direction: str = "farther") -> tuple[int, int]:
    """`monotone_bound` on the stage's statistics and `lookahead_scores`' six, in hindsight, the
    look-ahead ones all taken one way (`farther`, `nearer`: see LOOKAHEAD_DIRECTIONS) or each
    either way (`either`: the best of the 2**6 choices; with nine statistics and six of them
    free to go either way, few repeats are dominated by a change, so this bound says little)."""
    choices = {"farther": [(1,) * len(LOOKAHEAD_STATISTICS)], "nearer": [(-1,) * len(LOOKAHEAD_STATISTICS)],
               "either": itertools.product((1, -1), repeat=len(LOOKAHEAD_STATISTICS))}[direction]
    best = (0, 0)
    for signs in choices:
        keys = STAGE_STATISTICS + tuple(k if s > 0 else f"-{k}" for k, s in zip(LOOKAHEAD_STATISTICS, signs))
        best = max(best, monotone_bound(scores, labels, keys))
    return best


def defaults_against_previous(scores: list[dict[str, float]], labels: dict[int, tuple[str, str]],
                              flicker: bool = False) -> tuple[int, int, list[int]]:
    """The stage's default rule, each transition against the previous frame (`scores`). With
    `flicker`, the look-ahead rule a codec's flicker suggests (`lookahead_scores` needed): frame
    i is also near when the rule calls frame i+1 near frame i-1 (the frame after undoes what
    frame i changed); it is monotone with the look-ahead taken as `farther`, so under that
    bound. Returns (repeats near, repeats, the changes it calls near)."""
    stage = Dedup()
    near = {i for i, row in enumerate(scores) if i and (stage.near_by_scores(row) or flicker and
            stage.near_by_scores({k: row[f"ahead:{k}"] for k in STAGE_STATISTICS}))}
    repeats = [i for i, (label, _) in labels.items() if label == "repeat"]
    changes = sorted(i for i, (label, _) in labels.items() if label == "change" and i in near)
    return sum(i in near for i in repeats), len(repeats), changes


def wider_statistics(gains=BOUND_GAINS) -> tuple[str, ...]:
    """The stage's statistics and test 2's at each of `gains` (`transition_scores` keys)."""
    return STAGE_STATISTICS + tuple(_at_gain(k, g) for g in gains for k in ("line", "signed"))


def _best_thresholds(stat: dict[str, np.ndarray], change: np.ndarray, margin: float
                     ) -> tuple[int, int, tuple[float, float, float]]:
    repeat = ~change
    best = (-1, (0.0, 0.0, 0.0))
    for tb in np.unique(np.append(stat["block"][change], np.inf)):
        passing = change & (stat["block"] < tb)  # changes that test 2 must keep
        for tl in np.unique(np.append(stat["line"][passing], 0.0)):
            if (passing & (stat["line"] < tl)).any():
                continue
            # the changes under tl are none; every passing change must then fail the signed test
            ts = float(stat["signed"][passing].min()) if passing.any() else np.inf
            tb_, tl_, ts_ = tb - margin, tl - margin, ts - margin
            near = repeat & (stat["block"] < tb_) & ((stat["line"] < tl_) | (stat["signed"] < ts_))
            if near.sum() > best[0]:
                best = (int(near.sum()), (float(tb_), float(tl_), ts_))
    return best[0], int(repeat.sum()), best[1]


# --- labels carried to a re-encoded or downscaled variant -----------------------------------

#: A labelled change is invisible in a variant when less than this survives there (/255, mean
#: over the best 2×12 window): half the faintest streak seen on inspection (6/255, "just
#: visible at 2× zoom", dedup_labels/README.md).
VISIBLE_LEVEL = 3.0


def surviving_change(src_prev: np.ndarray, src_cur: np.ndarray, var_prev: np.ndarray,
                     var_cur: np.ndarray) -> float:
    """How much of the source's change i-1 -> i a variant still shows (/255), from pixels only.

    S: the source's signed difference, at the variant's size (area filter); V: the variant's.
    The share that survives is the least-squares gain g of V on S over the change's pixels
    (|S| >= 1), clipped to [0, 1] (codec noise is not correlated with the change, a change
    that survives is); the result is g × the largest mean of |S| over a 2×12 or 12×2 window.
    """
    h, w = var_cur.shape
    if src_cur.shape != (h, w):
        src_prev, src_cur = (cv2.resize(y, (w, h), interpolation=cv2.INTER_AREA) for y in (src_prev, src_cur))
    s = src_cur.astype(np.float32) - src_prev.astype(np.float32)
    v = var_cur.astype(np.float32) - var_prev.astype(np.float32)
    m = np.abs(s) >= 1
    if not m.any():
        return 0.0
    gain = float(np.clip((v[m] * s[m]).sum() / (s[m] ** 2).sum(), 0, 1))
    a = np.abs(s)
    thin = max(float(cv2.boxFilter(a, -1, size, borderType=cv2.BORDER_REFLECT).max())
               for size in ((2, 12), (12, 2)))
    return gain * thin


def carry_labels(source: str | Path, variant: str | Path,
                 labels: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """The source's labels for a variant: each `change` less than VISIBLE_LEVEL of which
    survives in the variant (`surviving_change`) becomes `invisible` (neither a change nor a
    repeat: `evaluate` counts it as neither), with the measurement in its note."""
    src, var = read_lumas(source), read_lumas(variant)
    if len(src) != len(var):
        raise ValueError(f"{variant}: {len(var)} frames, its source {len(src)}")
    out = dict(labels)
    for i, (label, _) in labels.items():
        if label == "change":
            left = surviving_change(src[i - 1], src[i], var[i - 1], var[i])
            if left < VISIBLE_LEVEL:
                out[i] = ("invisible", f"{left:.2f}/255 of the change survives")
    return out


# --- contact sheets ---------------------------------------------------------------------

def _max_pool(img: np.ndarray, width: int) -> np.ndarray:
    """Downscale keeping each output pixel's brightest source pixel (thin streaks survive)."""
    h, w = img.shape[:2]
    factor = max(1, int(np.ceil(w / width)))
    if factor > 1:
        img = cv2.dilate(img, np.ones((factor, factor), np.uint8))
    return cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_NEAREST)


def _tile(prev: np.ndarray, cur: np.ndarray, index: int, scores: dict[str, float],
          label: tuple[str, str] | None) -> np.ndarray:
    diff = cv2.absdiff(cur, prev)
    h, w = cur.shape
    size = (PANEL_WIDTH, round(h * PANEL_WIDTH / w))
    frame = cv2.cvtColor(cv2.resize(cur, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap(_max_pool(cv2.convertScaleAbs(diff, alpha=DIFF_GAIN), PANEL_WIDTH),
                             cv2.COLORMAP_INFERNO)
    mask = _max_pool(((diff > MASK_LEVEL) * 255).astype(np.uint8), PANEL_WIDTH)
    masked = (frame // 3).copy()
    masked[mask > 0] = (0, 255, 255)
    body = np.hstack([heat, masked])
    text = np.zeros((36, body.shape[1], 3), np.uint8)
    numbers = " ".join(f"{k}={v:.1f}" for k, v in scores.items())
    head = f"#{index}  {numbers}  n>{MASK_LEVEL}={int((diff > MASK_LEVEL).sum())}"
    cv2.putText(text, head, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    if label:
        colour = (80, 80, 255) if label[0] == "change" else (80, 255, 80)
        cv2.putText(text, f"{label[0]} {label[1]}", (4, 31), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    return np.vstack([text, body])


def write_sheets(lumas: list[np.ndarray], out: Path, name: str, per_sheet: int, columns: int,
                 labels: dict[int, tuple[str, str]] | None, only: list[int] | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    scores = transition_scores(lumas)
    indices = only or list(range(1, len(lumas)))
    paths = []
    for start in range(0, len(indices), per_sheet):
        chunk = indices[start:start + per_sheet]
        tiles = [_tile(lumas[i - 1], lumas[i], i, scores[i], (labels or {}).get(i)) for i in chunk]
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
        rows = [np.hstack(tiles[r:r + columns] if columns == 1 else
                          [np.pad(t, ((0, 4), (0, 4), (0, 0))) for t in tiles[r:r + columns]])
                for r in range(0, len(tiles), columns)]
        path = out / f"{name}-{chunk[0]:04d}-{chunk[-1]:04d}.png"
        cv2.imwrite(str(path), np.vstack(rows))
        paths.append(path)
    return paths


def write_crop(lumas: list[np.ndarray], index: int, box: tuple[int, int, int, int] | None, zoom: int,
               path: Path) -> None:
    """Frame i-1, frame i and |diff|x8 of one region, enlarged without smoothing.

    Without a box: 240x135 around the strongest 16x16 window of difference.
    """
    if box is None:
        diff = cv2.absdiff(lumas[index], lumas[index - 1])
        means = cv2.boxFilter(diff, cv2.CV_32F, (16, 16))
        cy, cx = np.unravel_index(int(means.argmax()), means.shape)
        w, h = min(240, diff.shape[1]), min(135, diff.shape[0])
        box = (min(max(0, cx - w // 2), diff.shape[1] - w), min(max(0, cy - h // 2), diff.shape[0] - h), w, h)
        print("box", *box)
    x, y, w, h = box
    prev, cur = lumas[index - 1][y:y + h, x:x + w], lumas[index][y:y + h, x:x + w]
    heat = cv2.convertScaleAbs(cv2.absdiff(cur, prev), alpha=DIFF_GAIN)
    panels = [cv2.resize(p, (w * zoom, h * zoom), interpolation=cv2.INTER_NEAREST)
              for p in (prev, cur, heat)]
    cv2.imwrite(str(path), np.hstack([np.pad(p, ((0, 0), (0, 6)), constant_values=128)
                                      for p in panels]))


# --- command line -----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stats")
    s.add_argument("clip")
    s.add_argument("--labels")
    s = sub.add_parser("sheets")
    s.add_argument("clip")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--labels")
    s.add_argument("--only", help="transitions to draw, e.g. 3-7,12 (default: all)")
    s.add_argument("--per-sheet", type=int, default=21)
    s.add_argument("--columns", type=int, default=3)
    s = sub.add_parser("crop")
    s.add_argument("clip")
    s.add_argument("index", type=int)
    s.add_argument("box", type=int, nargs="*", metavar="X Y W H", help="default: strongest change")
    s.add_argument("--zoom", type=int, default=4)
    s.add_argument("--out", required=True, type=Path)
    s = sub.add_parser("init")
    s.add_argument("clip")
    s.add_argument("labels")
    s = sub.add_parser("set")
    s.add_argument("labels")
    s.add_argument("indices", help="e.g. 3-7,12")
    s.add_argument("label", choices=LABELS)
    s.add_argument("--note", default="")
    s = sub.add_parser("evaluate")
    s.add_argument("clip")
    s.add_argument("labels")
    s = sub.add_parser("bound")
    s.add_argument("clip")
    s.add_argument("labels")
    args = p.parse_args(argv)

    if args.command == "set":
        labels = read_labels(args.labels)
        for i in parse_ranges(args.indices):
            if i not in labels:
                p.error(f"no transition {i} in {args.labels}")
            labels[i] = (args.label, args.note)
        write_labels(args.labels, labels)
        return 0
    if args.command == "evaluate":
        labels = read_labels(args.labels)
        unlabelled = [i for i, (label, _) in labels.items() if label not in LABELS]
        if unlabelled:
            p.error(f"{len(unlabelled)} transitions unlabelled, first {unlabelled[:10]}")
        e = evaluate(run_dedup(args.clip), labels)
        print(f"transitions {e.transitions}: {e.repeats} repeats, {e.changes} changes")
        print(f"false duplicates: {len(e.false_duplicates)} {e.false_duplicates}")
        print(f"repeats skipped: {e.repeats_skipped}/{e.repeats} ({e.repeats_capped} held by max_run)"
              f" = {e.repeat_skip_rate:.1%} of detectable repeats")
        print(f"frames skipped: {e.frames_skipped}/{e.transitions + 1} = {e.frames_skipped_rate:.1%}")
        return 0
    if args.command == "bound":
        frames, labels = read_judged(args.clip), read_labels(args.labels)
        b = hindsight_bound(frames, labels)
        for name, e in (("defaults", b.default), ("best in hindsight", b.best)):
            print(f"{name}: repeats skipped {e.repeats_skipped}/{e.repeats - e.repeats_capped} = "
                  f"{e.repeat_skip_rate:.1%}, false duplicates {len(e.false_duplicates)}")
        print(f"at threshold {b.threshold}, line_threshold {b.line_threshold}"
              + (" (thin-window test off)" if b.line_threshold >= 256 else ""))
        scores = transition_scores([y for _, y in frames], BOUND_GAINS)  # the frames read once, above
        near, repeats, (tb, tl, ts) = previous_frame_bound(scores, labels)
        where = "thin-window test off" if ts == np.inf else f"line {tl:.2f}, signed {ts:.2f}"
        print(f"against the previous frame, any thresholds: {near}/{repeats} repeats = "
              f"{near / max(1, repeats):.1%}, at block {tb:.2f}, {where}")
        for keys in (STAGE_STATISTICS, wider_statistics()):
            near, repeats = monotone_bound(scores, labels, keys)
            print(f"any rule monotone in {', '.join(keys)}: {near}/{repeats} = {near / max(1, repeats):.1%}")
        ahead = lookahead_scores(scores, [y for _, y in frames])
        for direction in LOOKAHEAD_DIRECTIONS:
            near, repeats = lookahead_bound(ahead, labels, direction)
            way = "each either way" if direction == "either" else f"larger {direction}"
            print(f"the same on the stage's statistics with one frame of look-ahead (frame i+1 against "
                  f"i-1 and i, {way}): {near}/{repeats} = {near / max(1, repeats):.1%}")
        for flicker in (False, True):
            near, repeats, false = defaults_against_previous(ahead, labels, flicker)
            print(f"the defaults against the previous frame{', or the frame after near the one before' * flicker}: "
                  f"{near}/{repeats} repeats near, changes near {false}")
        for stretch in STRETCHES:
            for margin in (0.0, 1.0):
                near, repeats, _ = previous_frame_bound(scores, labels, stretch, margin)
                print(f"  with thresholds of their own for each {stretch} transitions, {margin:g} under "
                      f"the faintest change: {near}/{repeats} = {near / max(1, repeats):.1%}")
        return 0

    lumas = read_lumas(args.clip)
    if args.command == "init":
        write_labels(args.labels, {i: ("unlabelled", "") for i in range(1, len(lumas))})
    elif args.command == "crop":
        write_crop(lumas, args.index, tuple(args.box) if args.box else None, args.zoom, args.out)
    elif args.command == "sheets":
        labels = read_labels(args.labels) if args.labels else None
        only = parse_ranges(args.only) if args.only else None
        name = Path(args.clip).stem
        for path in write_sheets(lumas, args.out, name, args.per_sheet, args.columns, labels, only):
            print(path)
    else:  # stats
        labels = read_labels(args.labels) if args.labels else {}
        scores = transition_scores(lumas)
        names = list(scores[1])
        print("index", *names, "label", "note", sep="\t")
        for i in range(1, len(lumas)):
            label, note = labels.get(i, ("", ""))
            print(i, *(f"{scores[i][k]:.2f}" for k in names), label, note, sep="\t")
        for kind in LABELS:  # the separation each statistic gives on these labels
            rows = [scores[i] for i, (label, _) in labels.items() if label == kind]
            if rows:
                print(f"# {kind}: " + ", ".join(
                    f"{k} {min(r[k] for r in rows):.2f}..{max(r[k] for r in rows):.2f}" for k in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
