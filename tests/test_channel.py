"""Bounded channels: capacity, multi-producer end of stream, cancellation wakes everyone."""

from __future__ import annotations

import threading

import pytest

from engine.channel import EOS, CancelToken, Channel
from engine.errors import Cancelled


def test_fifo_and_eos_after_all_producers_close():
    token = CancelToken()
    ch = Channel("c", 4, producers=2, token=token)
    ch.put(1)
    ch.put(2)
    ch.close()
    assert ch.get()[0] == 1
    assert ch.get()[0] == 2
    ch.put(3)          # the second producer is still open
    ch.close()
    assert ch.get()[0] == 3
    assert ch.get()[0] is EOS
    assert ch.get()[0] is EOS  # every consumer sees it, not just the first


def test_put_blocks_when_full_until_space():
    token = CancelToken()
    ch = Channel("c", 1, producers=1, token=token)
    ch.put("a")
    done = threading.Event()

    def producer():
        ch.put("b")
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.2), "put must block while the channel is full"
    assert ch.get()[0] == "a"
    t.join(5)
    assert done.is_set() and ch.get()[0] == "b"


@pytest.mark.parametrize("side", ["put", "get"])
def test_cancel_wakes_blocked_threads(side):
    token = CancelToken()
    ch = Channel("c", 1, producers=1, token=token)
    if side == "put":
        ch.put(0)
    raised = []

    def blocked():
        try:
            ch.put(1) if side == "put" else ch.get()
        except Cancelled:
            raised.append(True)

    t = threading.Thread(target=blocked)
    t.start()
    assert token.cancel(RuntimeError("first"))
    assert not token.cancel(RuntimeError("second")), "only the first error counts"
    t.join(5)
    assert not t.is_alive() and raised == [True]
    assert str(token.error) == "first"
