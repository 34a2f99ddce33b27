"""The ordering rule (`ReorderBuffer`), and the gate that keeps parallel workers within it."""

from __future__ import annotations

import heapq
import threading
import time
from typing import Any, Generic, Protocol, TypeVar

from engine.errors import ValidationError


class _HasSeq(Protocol):
    seq: int


T = TypeVar("T", bound=_HasSeq)


class ReorderBuffer(Generic[T]):
    """Releases items strictly in seq order: `start`, `start + 1`, `start + 2`, ...

    The rule:
    - `push(item)` returns the (possibly empty) run of items that are now in order.
    - At most `window` items may wait for a missing seq. Upstream disorder is bounded
      (workers × batch + queue capacities, and parallel workers wait at a `WorkerGate`),
      so more than that can only mean the missing frame was lost: that is an error, never
      a silent skip.
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


class WorkerGate:
    """Bounds how far the parallel workers of one stage may run ahead of the slowest.

    The reorder window downstream assumes disorder is bounded by what is in flight. With
    `workers > 1` it is not: while one worker is stuck on frame s (an expensive frame, a
    descheduled thread), the others keep taking frames and the consumer keeps buffering
    them, until s looks lost. So a worker waits before taking another frame while the
    stage has taken `lead` seqs past the oldest frame any worker holds, unless it holds
    that frame itself: the holder of the oldest frame never waits, so the stage always
    moves on (no deadlock), and disorder stays within `lead` plus what one worker holds.
    """

    def __init__(self, workers: int, lead: int, token: Any):
        self.lead = lead
        self._token = token
        self._held: list[set[int]] = [set() for _ in range(workers)]
        self._taken = -1  # the highest seq any worker has taken
        self._cond = threading.Condition()
        token.watch(self)

    def _may_take(self, worker: int) -> bool:
        holders = [(min(h), w) for w, h in enumerate(self._held) if h]
        if not holders:
            return True
        oldest, holder = min(holders)
        return holder == worker or self._taken - oldest < self.lead

    def wait_turn(self, worker: int) -> float:
        """Block until `worker` may take a frame. Returns seconds spent waiting."""
        started = None
        with self._cond:
            while not self._may_take(worker):
                self._token.raise_if_cancelled()
                if started is None:
                    started = time.perf_counter()
                self._cond.wait(0.5)
        return 0.0 if started is None else time.perf_counter() - started

    def took(self, worker: int, seq: int, holds: bool) -> None:
        """`worker` took frame `seq`; `holds`: it keeps it (a duplicate is passed straight on)."""
        with self._cond:
            self._taken = max(self._taken, seq)
            if holds:
                self._held[worker].add(seq)

    def passed(self, worker: int, seq: int) -> None:
        """`worker` handed frame `seq` on."""
        with self._cond:
            self._held[worker].discard(seq)
            self._cond.notify_all()

    def wake(self) -> None:  # the run was cancelled: waiters see it at once
        with self._cond:
            self._cond.notify_all()
