"""FFmpeg's colour tags as the engine reads them: torch-free (the sink and a `--pipeline none`
job never load torch; engine/colour.py, which converts pixels, does)."""

from __future__ import annotations

UNSPECIFIED = 2                 # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC _UNSPECIFIED
RGB_MATRIX, BT709_MATRIX = 0, 1  # AVColorSpace
LIMITED_RANGE, FULL_RANGE = 1, 2  # AVColorRange: 0 unspecified, 1 MPEG (limited), 2 JPEG (full)


def is_full_range(color_range: int, pix_fmt: str = "") -> bool:
    """Full ("JPEG") range: tagged so, or a `yuvj` format, which is full whatever the tag says."""
    return int(color_range) == FULL_RANGE or pix_fmt.startswith("yuvj")
