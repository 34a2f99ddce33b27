"""The ordering rule, in one class."""

from __future__ import annotations

import heapq
from typing import Generic, Protocol, TypeVar

from engine.errors import ValidationError


class _HasSeq(Protocol):
    seq: int


T = TypeVar("T", bound=_HasSeq)


class ReorderBuffer(Generic[T]):
    """Releases items strictly in seq order: `start`, `start + 1`, `start + 2`, ...

    The rule:
    - `push(item)` returns the (possibly empty) run of items that are now in order.
    - At most `window` items may wait for a missing seq. Upstream parallelism is bounded
      (workers × batch + queue capacities), so more than that can only mean the missing
      frame was lost: that is an error, never a silent skip.
    - A seq seen twice, or one already released, is an error.
    - `finish()` at end of stream raises if anything is still waiting: a gap that can
      never fill.
    """

    def __init__(self, window: int, start: int = 0):
        if window < 1:
            raise ValueError(f"reorder window must be >= 1, got {window}")
        self.window = window
        self.next_seq = start
        self._heap: list[tuple[int, int, T]] = []
        self._pending: set[int] = set()
        self._tiebreak = 0  # keeps heap comparisons off the items themselves

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T) -> list[T]:
        seq = item.seq
        if seq < self.next_seq or seq in self._pending:
            raise ValidationError(f"frame seq {seq} arrived twice")
        if seq == self.next_seq and not self._heap:
            self.next_seq += 1  # the common in-order case: no heap traffic
            return [item]
        heapq.heappush(self._heap, (seq, self._tiebreak, item))
        self._tiebreak += 1
        self._pending.add(seq)
        released: list[T] = []
        while self._heap and self._heap[0][0] == self.next_seq:
            _, _, ready = heapq.heappop(self._heap)
            self._pending.discard(self.next_seq)
            released.append(ready)
            self.next_seq += 1
        if len(self._heap) > self.window:
            raise ValidationError(
                f"frame seq {self.next_seq} is missing: {len(self._heap)} later frames are "
                f"waiting, more than the reorder window of {self.window}")
        return released

    def finish(self) -> None:
        if self._heap:
            raise ValidationError(
                f"frame seq {self.next_seq} never arrived; {len(self._heap)} later frames "
                f"were waiting for it at end of stream")
