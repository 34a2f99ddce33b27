"""The frame record: the one thing that travels through every channel."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from engine.colour_tags import limited_grey_as_yuv, rgb_array


class PixelShare:
    """One decoded picture that duplicates show too (the sink's `reuse_pixels`): each of its
    conversions runs once, under a lock, and is shared. PyAV keeps one reformatter per picture
    and is not thread-safe: the sink's converter or saver threads converting it at once
    segfaulted or hung (dedup into ProRes or PNG), and each duplicate converted it again."""

    __slots__ = ("_lock", "_made")

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a conversion may read `data`, itself shared
        self._made: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._made:
                self._made[key] = make()
            return self._made[key]


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

    At any time the pixels live in exactly one of three forms (see engine/stage.py for who
    may hold which):

    - ``picture``: an ``av.VideoFrame`` in a YUV format: the decoder's own, or one a model
      stage wrote in the encoder's format (`set_picture`); model stages read its planes.
    - ``tensor``: a torch tensor 3×H×W, RGB in [0, 1], on the device of the model stage that
      made it (`set_tensor`); the next model stage on that device takes it as it is.
    - ``data``: a host array. Reading ``data`` converts from either of the others, once
      (a tensor is brought back to the host here and nowhere else).
    """

    seq: int
    pts: int
    time_base: Fraction
    meta: dict[str, Any] = field(default_factory=dict)
    _data: np.ndarray | None = None
    _picture: Any = None  # av.VideoFrame straight from the decoder, until pixels change
    _pixel_format: str = "rgb24"  # what `data` converts the picture to
    _tensor: Any = None  # torch 3×H×W RGB in [0, 1] on a device (a model stage's result)
    _share: PixelShare | None = None  # the picture's conversions, when duplicates show it too

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
            if self._tensor is not None:
                from engine.colour import tensor_to_array  # torch is loaded: a tensor exists

                self._data = tensor_to_array(self._tensor, deep=self.deep)
                self._tensor = None
            else:
                # the picture's own range: PyAV would otherwise assume limited range
                picture, pixel_format = self._picture, self._pixel_format
                self._data = self.converted(("rgb", pixel_format), lambda: rgb_array(
                    limited_grey_as_yuv(picture), pixel_format))  # swscale takes grey as full range
                self._picture = None  # the array is now the truth; free the decoder buffer
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value
        self._picture = self._tensor = self._share = None

    def converted(self, key: Any, make: Callable[[], Any]) -> Any:
        """`make()`: a conversion of this frame's picture, made once for every frame that
        shows the picture (see `share_pixels`)."""
        share = self._share
        return share.get(key, make) if share is not None else make()

    def share_pixels(self) -> None:
        """Let later frames `reuse_pixels` of this one: its picture's conversions are shared
        from now on (called before anything converts it)."""
        if self._picture is not None and self._share is None:
            self._share = PixelShare()

    @property
    def deep(self) -> bool:
        """True when the input has more than 8 bits per sample (host RGB is then uint16)."""
        return self._pixel_format != "rgb24"

    @property
    def tensor(self) -> Any:
        """The pixels as a device tensor (3×H×W RGB in [0, 1]), or None if they are not one."""
        return self._tensor

    def set_tensor(self, tensor: Any) -> None:
        """A model stage's result, left on its device for the next model stage."""
        self._tensor = tensor
        self._data = self._picture = self._share = None

    def set_picture(self, picture: Any) -> None:
        """A model stage's result as an `av.VideoFrame` in the encoder's format."""
        self._picture = picture
        self._data = self._tensor = self._share = None

    def with_data(self, data: np.ndarray) -> Frame:
        """A new record for the same frame (seq, pts, a copy of meta) holding `data`."""
        return Frame(seq=self.seq, pts=self.pts, time_base=self.time_base,
                     meta=dict(self.meta), _data=data, _pixel_format=self._pixel_format)

    def drop_pixels(self) -> None:
        """Forget this frame's pixels (a duplicate: it will `reuse_pixels` of its reference)."""
        self._data = self._picture = self._tensor = self._share = None

    @property
    def has_pixels(self) -> bool:
        return self._data is not None or self._picture is not None or self._tensor is not None

    def reuse_pixels(self, reference: Frame) -> None:
        """Show `reference`'s (processed) pixels under this frame's own seq and pts.

        Shared, not copied: downstream of the sink nothing modifies pixels in place.
        """
        self._data, self._picture, self._tensor = reference._data, reference._picture, reference._tensor
        self._pixel_format, self._share = reference._pixel_format, reference._share

    @property
    def picture(self) -> Any:
        """The picture (decoded, or a model stage's result in the encoder's format), or None
        once anything has read or replaced pixels in another form."""
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
        if self._tensor is not None:
            return (int(self._tensor.shape[1]), int(self._tensor.shape[2]), 3)
        return ()  # pixels dropped (a duplicate waiting for its reference's)

    def __repr__(self) -> str:
        dtype = (self._data.dtype if self._data is not None else
                 f"picture:{self._picture.format.name}" if self._picture is not None else
                 f"tensor:{self._tensor.device}" if self._tensor is not None else "none")
        return (f"Frame(seq={self.seq}, pts={self.pts}, time_base={self.time_base}, "
                f"shape={self.shape}, dtype={dtype}, meta={sorted(self.meta)})")
