"""Exceptions. User errors become one line and exit code 2; nothing else is shown raw."""

from __future__ import annotations

import signal


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code = 1


class UserError(EngineError):
    """Bad input, bad output path or bad configuration: one line, exit code 2, no traceback."""

    exit_code = 2


class StageError(EngineError):
    """A stage failed. Names the stage and the frame it was working on; chained with `from`."""

    def __init__(self, stage: str, seq: int | None, cause: BaseException, last: int | None = None):
        self.stage = stage
        self.seq = seq
        self.cause = cause
        # a batch or window call fails as a whole: name every frame it held, not only its first
        frames = (f" at frames seq {seq}-{last}" if last is not None and last != seq
                  else f" at frame seq {seq}")
        where = f"stage '{stage}'" + (frames if seq is not None else "")
        detail = str(cause) or type(cause).__name__
        super().__init__(f"{where} failed: {type(cause).__name__}: {detail}")

    @property
    def exit_code(self) -> int:  # a user error raised inside a stage keeps its exit code
        return self.cause.exit_code if isinstance(self.cause, EngineError) else 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, systemd) or SIGHUP (a closed terminal), raised in the
    main thread by the CLI's handler (engine/interrupts.py): the job stops as on Ctrl-C, so its
    partial output is removed; Python's default would end the process with the partial left."""

    @property
    def signum(self) -> int:
        return self.args[0] if self.args else int(signal.SIGTERM)


class Cancelled(Exception):
    """Raised inside a worker when another part of the pipeline has failed or been stopped."""


class ValidationError(EngineError):
    """The output broke a sequence invariant (order, timestamps, frame count)."""
