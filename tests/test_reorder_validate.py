"""The ordering rule and the sequence validator, proven over arbitrary arrival orders."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ValidationError
from engine.frame import Frame
from engine.reorder import ReorderBuffer
from engine.validate import SequenceValidator


@dataclass
class Item:
    seq: int


@st.composite
def bounded_shuffle(draw, max_n=200):
    """A permutation of 0..n-1 where no item arrives more than `lead` places early."""
    n = draw(st.integers(1, max_n))
    lead = draw(st.integers(1, 16))
    keys = [i + draw(st.floats(0, lead)) for i in range(n)]
    return sorted(range(n), key=lambda i: keys[i]), lead


@given(bounded_shuffle())
@settings(max_examples=300, deadline=None)
def test_any_bounded_arrival_order_comes_out_in_order(case):
    order, lead = case
    buf = ReorderBuffer(window=lead + 1)
    out = []
    for seq in order:
        out.extend(x.seq for x in buf.push(Item(seq)))
    buf.finish()
    assert out == list(range(len(order)))


@given(st.permutations(list(range(30))), st.integers(0, 28))
@settings(max_examples=200, deadline=None)
def test_a_lost_frame_is_an_error_never_silence(order, lost):
    # (losing the very last frame leaves no gap; the validator's count catches that one)
    buf = ReorderBuffer(window=64)
    released = []
    for seq in order:
        if seq != lost:
            released.extend(x.seq for x in buf.push(Item(seq)))
    assert released == list(range(lost))
    with pytest.raises(ValidationError, match=f"seq {lost} never arrived"):
        buf.finish()


def test_gap_beyond_window_is_an_error():
    buf = ReorderBuffer(window=3)
    for seq in (1, 2, 3):
        assert buf.push(Item(seq)) == []
    with pytest.raises(ValidationError, match="frame seq 0 is missing"):
        buf.push(Item(4))


@pytest.mark.parametrize("seqs", [[0, 0], [1, 0, 1], [0, 1, 1]])
def test_duplicates_are_errors(seqs):
    buf = ReorderBuffer(window=8)
    with pytest.raises(ValidationError, match="twice"):
        for s in seqs:
            buf.push(Item(s))


def _frame(seq, pts):
    return Frame.from_array(seq, pts, Fraction(1, 25), np.zeros((2, 2, 3), np.uint8))


def test_validator_accepts_contiguous_increasing():
    v = SequenceValidator()
    for i in range(5):
        v.check(_frame(i, i * 2 + 7))
    v.finish(5)
    assert v.count == 5


@pytest.mark.parametrize("frames,message", [
    ([(0, 0), (2, 1)], "expected seq 1, got 2"),
    ([(0, 5), (1, 5)], "not increasing"),
    ([(0, 5), (1, 4)], "not increasing"),
])
def test_validator_rejects(frames, message):
    v = SequenceValidator()
    with pytest.raises(ValidationError, match=message):
        for seq, pts in frames:
            v.check(_frame(seq, pts))


def test_validator_counts_frames_in_against_out():
    v = SequenceValidator()
    v.check(_frame(0, 0))
    with pytest.raises(ValidationError, match="2 decoded, 1 written"):
        v.finish(2)
