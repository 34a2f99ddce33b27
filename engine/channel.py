"""Bounded channels between pipeline threads, and the token that cancels them all."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from engine.errors import Cancelled


class _EndOfStream:
    """The one end-of-stream marker. A stage's flush runs when it arrives."""

    def __repr__(self) -> str:
        return "EOS"


EOS = _EndOfStream()


class CancelToken:
    """Shared by every thread of a run. The first failure wins; later ones are ignored.

    Failures travel as values: a worker records its exception here instead of letting it
    escape its thread, and the main thread re-raises the first one after joining everyone.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._channels: list[Channel] = []
        self.error: BaseException | None = None

    def watch(self, channel: Channel) -> None:
        self._channels.append(channel)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, error: BaseException) -> bool:
        """Record `error` if it is the first, wake every blocked put and get. True if first."""
        with self._lock:
            first = self.error is None
            if first:
                self.error = error
            self._event.set()
        for channel in self._channels:
            channel.wake()
        return first

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class Channel:
    """A bounded FIFO between stages, for any number of producers and consumers.

    - `put` blocks while the channel is full; `get` blocks while it is empty. Both give up
      with `Cancelled` as soon as the run's token is cancelled, so no thread can hang on a
      channel whose other end has died.
    - Each producer calls `close()` once when it is done. After the last producer has
      closed and the queue is drained, every `get` returns `EOS`. This is how end of stream
      reaches all workers of a stage without counting sentinels.
    - Time spent blocked is returned to the caller, which books it as backpressure.
    """

    def __init__(self, name: str, capacity: int, producers: int, token: CancelToken):
        if capacity < 1:
            raise ValueError(f"channel '{name}': capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._open_producers = producers
        self._token = token
        self._cond = threading.Condition()
        token.watch(self)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> float:
        """Append `item`, waiting while full. Returns seconds spent blocked."""
        started = None
        with self._cond:
            while len(self._items) >= self.capacity:
                self._token.raise_if_cancelled()
                if started is None:
                    started = time.perf_counter()
                self._cond.wait(0.5)
            self._token.raise_if_cancelled()
            if self._open_producers <= 0:
                raise RuntimeError(f"channel '{self.name}': put after every producer closed")
            self._items.append(item)
            self._cond.notify_all()
        return 0.0 if started is None else time.perf_counter() - started

    def get(self) -> tuple[Any, float]:
        """Take the next item, or EOS once every producer has closed. Returns (item, blocked s)."""
        started = None
        with self._cond:
            while not self._items:
                self._token.raise_if_cancelled()
                if self._open_producers <= 0:
                    return EOS, 0.0 if started is None else time.perf_counter() - started
                if started is None:
                    started = time.perf_counter()
                self._cond.wait(0.5)
            self._token.raise_if_cancelled()
            item = self._items.popleft()
            self._cond.notify_all()
        return item, 0.0 if started is None else time.perf_counter() - started

    def close(self) -> None:
        """One producer is done. Safe to call from any producer thread, once per producer."""
        with self._cond:
            self._open_producers -= 1
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
