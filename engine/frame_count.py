"""The exact frame count of an input whose container keeps none (Matroska, MPEG-TS, raw
streams), counted from its packets on a thread while the job runs.

Until then the display's total is duration × average rate, a guess: a variable-frame-rate
file of 120 frames showed as 97, the bar ran past its end and the ETA said 00:00 for the
last third. Counting packets reads the file without decoding it (the rule of
`engine/segments.py`'s scan: no empty packets, none an edit list hides), on its own open of
the input, so the job starts at once and the total becomes exact when the count is in.
"""

from __future__ import annotations

import threading
from typing import Callable

from engine.image_input import open_media
from engine.video_stream import main_video


class PacketCount:
    """Counts the main video stream's packets of `path` on a daemon thread and calls
    `on_count(n)` when done; `stop()` ends the count early and waits for the thread."""

    def __init__(self, path: str, on_count: Callable[[int], None]) -> None:
        self._path = path
        self._on_count = on_count
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._count, name="frame-count", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        try:
            container = open_media(self._path)
        except Exception:  # noqa: BLE001 - the job's own open says what is wrong; the guess stays
            return
        try:
            n = 0
            for packet in container.demux(main_video(container)):
                if self._stopped.is_set():
                    return
                if packet.size > 0 and not packet.is_discard:
                    n += 1
        except Exception:  # noqa: BLE001 - a damaged file: the decode reports it, the guess stays
            return
        finally:
            container.close()
        self._on_count(n)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
