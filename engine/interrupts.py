"""Stop signals: what SIGTERM and SIGHUP do, and why none of them can undo a finished job.

Ctrl-C (SIGINT) raises KeyboardInterrupt; the CLI makes SIGTERM (`timeout`, `docker stop`)
and SIGHUP (a closed terminal, a dropped SSH session) raise `Terminated`, a KeyboardInterrupt,
so every stop removes the partial output the same way. Python's default for those two ends
the process with the partial left behind.

Once the job's output starts to move into place, the job is finished: a stop signal then
would report "interrupted" (exit 130) over a complete output, and cut short the report and
the work directory's removal (the rerun refused the half-removed directory). So a job runs
its ending inside `finishing(output)`; the sink calls `committing(path)` just before it puts
the output in place, and from there to the end of `finishing` stop signals are only noted
(`late`). A driver with more to do (a batch's next input, Ray's other inputs) then stops
there (`raise_pending`); after the last job the CLI says so, and the exit status is the job's.
A command of one job (`one_job`) keeps them noted from its commit to the process's end, and
ignored once said (`done`, `ignore_stops`): Python restores the default handlers at exit.
A signal the engine was started with ignored (`nohup`, a shell's background job) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from engine.errors import Terminated

STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


ESCAPE = 3  # stop signals during one cleanup that cut it short after all


def unstoppable(cleanup: Callable[[], None],
                stopped: Callable[[KeyboardInterrupt], None] | None = None) -> None:
    """Run `cleanup` (waiting for the threads that write a partial output, removing it) to its
    end whatever stop signals come meanwhile: a second Ctrl-C used to cut the wait short, leave
    the partial, and end the process under running saver threads (SIGABRT).

    While it runs, stop signals are only noted. Catching the KeyboardInterrupt is not enough:
    Python 3.11's Thread.join, interrupted, can mark a thread that still runs as finished
    (bpo-45274's fix releases the lock the live thread holds), so the next join returned at
    once and the partial was removed under a saver still writing into it. A noted signal is
    given to `stopped` (the job's stop) once cleanup is done, and `cleanup` runs again from its
    start: it must be safe to run twice. The `ESCAPE`-th signal during one cleanup is raised at
    once (a saver stuck on a hung mount must not leave SIGKILL as the only way out)."""
    noted: list[int] = []
    saved = _note_stops(noted)
    try:
        pending: KeyboardInterrupt | None = None
        while True:
            try:
                if pending is not None and stopped is not None:
                    exc, pending = pending, None
                    stopped(exc)
                cleanup()
                if not noted or stopped is None:
                    return
                signum = noted.pop(0)
                noted.clear()
                pending = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
            except KeyboardInterrupt as exc:  # one Python raised before the handlers changed, or the escape
                if len(noted) >= ESCAPE:
                    raise
                pending = exc  # no call here: a signal can only land where the loop catches it
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _note_stops(noted: list[int]) -> dict[int, object]:
    """Make the stop signals only append to `noted` (main thread only); the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def note(signum, frame) -> None:
        noted.append(signum)
        if len(noted) >= ESCAPE:
            raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)

    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    for s in saved:
        signal.signal(s, note)
    return saved


def raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def install() -> None:
    """SIGTERM and SIGHUP stop a job as Ctrl-C does (main thread only; not if ignored: nohup)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, raise_terminated)


class _Ending:
    """The one job ending in progress: its output path, and the handlers it replaced."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.saved: dict[int, object] | None = None  # set once committing() has begun

    def hold(self) -> None:
        if self.saved is None:
            self.saved = {s: signal.getsignal(s) for s in STOP_SIGNALS
                          if signal.getsignal(s) is not signal.SIG_IGN}
            for s in self.saved:
                signal.signal(s, _note)

    def release(self) -> None:
        if self.saved is not None:
            for s, handler in self.saved.items():
                signal.signal(s, handler)
            self.saved = None


_ending: _Ending | None = None
late: list[int] = []  # stop signals that came after an output was in place, not yet acted on
_one_job = False  # the command runs one job: once its output is in place, nothing can stop it


def one_job(on: bool = True) -> None:
    """The command is one job (no batch, no Ray driver with other inputs): from its output's
    commit to the process's end, stop signals are only noted. Restoring the stopping handlers
    after it left a window in which a signal still read "terminated" over a finished job.
    `on=False` when the command returns (a caller in the same process runs more)."""
    global _one_job
    _one_job = on


def _note(signum, frame) -> None:
    late.append(signum)


def done() -> None:
    """The command's work is over (its outputs in place): a stop signal from here to the
    process's end is only noted, then ignored. Python restores the default handlers at exit,
    so one during the interpreter's shutdown (its thread joins) killed the finished job by
    the signal, or printed a traceback from those joins. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _note)


def stopped() -> None:
    """The command was stopped (its cleanup done): further stop signals are ignored through the
    interpreter's shutdown, where Python's restored default handlers would kill it by the signal."""
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            if signal.getsignal(s) is not signal.SIG_IGN:
                signal.signal(s, signal.SIG_IGN)


def ignore_stops() -> None:
    """After `done`, once the notes are said: ignored, through the interpreter's shutdown."""
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            if signal.getsignal(s) is _note:
                signal.signal(s, signal.SIG_IGN)


def raise_pending() -> None:
    """Before a driver starts more work: a stop signal noted while the last job finished stops it now."""
    if late:
        signum = late[0]
        late.clear()
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@contextmanager
def finishing(output: str) -> Iterator[None]:
    """Around a job whose final output is `output`: from `committing(output)` to the end of
    this block, stop signals wait (see the module docstring). Main thread only, else a no-op."""
    global _ending
    if threading.current_thread() is not threading.main_thread() or _ending is not None:
        yield
        return
    _ending = _Ending(output)
    try:
        yield
    finally:
        ending, _ending = _ending, None
        if not (_one_job and ending.saved is not None):
            ending.release()


def committing(path: str) -> None:
    """A sink is about to put `path` in place. If that is the job's final output, stop
    signals are held from here on (segment files of a --resume job are not: it goes on)."""
    if _ending is not None and path == _ending.output:
        _ending.hold()
