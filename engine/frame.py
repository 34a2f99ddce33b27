"""The frame record: the one thing that travels through every channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np


@dataclass(eq=False, slots=True)
class Frame:
    """One decoded video frame and what the engine knows about it.

    Attributes:
        seq: position in the stream, 0..N-1, contiguous, assigned by the source.
        pts: presentation timestamp in ``time_base`` units, exactly as the input had it.
            The sink writes it unchanged, so variable frame rate stays variable.
        time_base: unit of ``pts``.
        meta: per-frame annotations added by stages (mask, ``dup_of``, scene cut, ...).

    Pixels are exposed as ``data``: H×W×3 RGB, ``uint8`` for 8-bit input and ``uint16``
    for deeper input. They are converted lazily from the decoded picture on first
    access, so a pipeline that never looks at pixels (a plain transcode) never pays for
    a colour conversion and the sink can encode the decoded picture as it is.
    """

    seq: int
    pts: int
    time_base: Fraction
    meta: dict[str, Any] = field(default_factory=dict)
    _data: np.ndarray | None = None
    _picture: Any = None  # av.VideoFrame straight from the decoder, until pixels change
    _pixel_format: str = "rgb24"  # what `data` converts the picture to

    @classmethod
    def from_array(cls, seq: int, pts: int, time_base: Fraction, data: np.ndarray,
                   meta: dict[str, Any] | None = None) -> Frame:
        return cls(seq=seq, pts=pts, time_base=time_base, meta=meta or {}, _data=data)

    @classmethod
    def from_picture(cls, seq: int, pts: int, time_base: Fraction, picture: Any,
                     pixel_format: str) -> Frame:
        return cls(seq=seq, pts=pts, time_base=time_base, _picture=picture,
                   _pixel_format=pixel_format)

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            # the picture's own range: PyAV would otherwise assume limited range
            self._data = self._picture.to_ndarray(format=self._pixel_format,
                                                  src_color_range=self._picture.color_range)
            self._picture = None  # the array is now the truth; free the decoder buffer
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value
        self._picture = None

    def with_data(self, data: np.ndarray) -> Frame:
        """A new record for the same frame (seq, pts, a copy of meta) holding `data`."""
        return Frame(seq=self.seq, pts=self.pts, time_base=self.time_base,
                     meta=dict(self.meta), _data=data)

    def drop_pixels(self) -> None:
        """Forget this frame's pixels (a duplicate: it will `reuse_pixels` of its reference)."""
        self._data = None
        self._picture = None

    @property
    def has_pixels(self) -> bool:
        return self._data is not None or self._picture is not None

    def reuse_pixels(self, reference: Frame) -> None:
        """Show `reference`'s (processed) pixels under this frame's own seq and pts.

        Shared, not copied: downstream of the sink nothing modifies pixels in place.
        """
        self._data, self._picture = reference._data, reference._picture
        self._pixel_format = reference._pixel_format

    @property
    def picture(self) -> Any:
        """The untouched decoded picture, or None once anything has read or replaced pixels."""
        return self._picture

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)

    @property
    def shape(self) -> tuple[int, ...]:
        if self._data is not None:
            return tuple(self._data.shape)
        if self._picture is not None:
            return (self._picture.height, self._picture.width, 3)
        return ()  # pixels dropped (a duplicate waiting for its reference's)

    def __repr__(self) -> str:
        dtype = (self._data.dtype if self._data is not None else
                 f"picture:{self._pixel_format}" if self._picture is not None else "none")
        return (f"Frame(seq={self.seq}, pts={self.pts}, time_base={self.time_base}, "
                f"shape={self.shape}, dtype={dtype}, meta={sorted(self.meta)})")
