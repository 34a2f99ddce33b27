"""A decoded picture's planes as numpy views (torch-free): the one way the engine reads or
writes a `VideoFrame`'s planes in place."""

from __future__ import annotations

import numpy as np


def plane_rows(plane, dtype=np.uint8) -> np.ndarray:
    """Every row of one `av.VideoPlane` as a 2-D view of its buffer, line padding included:
    slice `[:height, :width]` for the samples (`dtype`: uint8, or "<u2" for deeper formats)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(plane, dtype).reshape(-1, plane.line_size // dtype.itemsize)
