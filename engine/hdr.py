"""HDR10 static metadata: read off the input's first frame, written back through x265.

The PQ/HLG colour tags travel with the stream's colour fields (engine/sink.py). The
mastering display (SMPTE ST 2086) and the content light levels (MaxCLL/MaxFALL) do not:
FFmpeg's decoders hang them on each frame as side data, and no encoder reads them from
there. x265 writes them as SEI messages when told as `master-display` and `max-cll`; a TV
without them tone-maps with guessed values, so an HDR10 master would come out looking
different from its input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

import av

from engine.image_input import open_media
from engine.video_stream import main_video

PQ, HLG = 16, 18  # AVColorTransferCharacteristic SMPTE ST 2084 / ARIB STD-B67


@dataclass(frozen=True)
class HdrStatic:
    """What the first frame carries; each None when absent."""

    # (x, y) chromaticities of the R, G, B primaries and the white point, as FFmpeg keeps them
    primaries: tuple[tuple[Fraction, Fraction], ...] | None = None
    white_point: tuple[Fraction, Fraction] | None = None
    luminance: tuple[Fraction, Fraction] | None = None  # (min, max) cd/m²
    max_cll: int | None = None   # brightest pixel, cd/m²
    max_fall: int | None = None  # brightest frame average, cd/m²
    # per-frame metadata on top, which no encoder here writes back: named in a note
    dynamic: tuple[str, ...] = ()

    def x265_params(self) -> list[str]:
        """x265's options for this metadata: chromaticities in 1/50000, luminance in 1/10000 cd/m²."""
        params = []
        if self.primaries is not None and self.white_point is not None and self.luminance is not None:
            def xy(point):
                return f"({round(point[0] * 50000)},{round(point[1] * 50000)})"
            r, g, b = self.primaries
            low, high = self.luminance
            params.append(f"master-display=G{xy(g)}B{xy(b)}R{xy(r)}WP{xy(self.white_point)}"
                          f"L({round(high * 10000)},{round(low * 10000)})")
        if self.max_cll is not None:
            params.append(f"max-cll={self.max_cll},{self.max_fall or 0}")
        return params

    def describe(self) -> dict:
        """For `engine probe` and the report."""
        out: dict = {}
        if self.luminance is not None:
            out["mastering_luminance_cd_m2"] = [float(v) for v in self.luminance]
        if self.primaries is not None:
            out["mastering_primaries_xy"] = [[float(c) for c in p] for p in self.primaries]
        if self.white_point is not None:
            out["mastering_white_point_xy"] = [float(c) for c in self.white_point]
        if self.max_cll is not None:
            out["max_cll"], out["max_fall"] = self.max_cll, self.max_fall
        if self.dynamic:
            out["dynamic"] = list(self.dynamic)
        return out


def _rationals(values: tuple[int, ...]) -> list[Fraction]:
    return [Fraction(n, d) if d else Fraction(0) for n, d in zip(values[::2], values[1::2])]


def parse_mastering_display(raw: bytes) -> tuple:
    """AVMasteringDisplayMetadata: AVRational primaries[3][2], white_point[2], min, max
    luminance, then int has_primaries, has_luminance (88 bytes, native int32)."""
    ints = struct.unpack("=22i", raw[:88])
    values = _rationals(ints[:20])
    has_primaries, has_luminance = ints[20], ints[21]
    primaries = tuple((values[2 * i], values[2 * i + 1]) for i in range(3)) if has_primaries else None
    white = (values[6], values[7]) if has_primaries else None
    luminance = (values[8], values[9]) if has_luminance else None
    return primaries, white, luminance


DYNAMIC = {"DYNAMIC_HDR_PLUS": "HDR10+", "DOVI_METADATA": "Dolby Vision", "DOVI_RPU_BUFFER": "Dolby Vision",
           "DYNAMIC_HDR_VIVID": "HDR Vivid"}


def hdr_static_of(picture: av.VideoFrame) -> HdrStatic | None:
    """The HDR10 static metadata on a decoded picture (and which dynamic metadata it has), or
    None if it has none."""
    fields: dict = {}
    dynamic = [DYNAMIC[side.type.name] for side in picture.side_data if side.type.name in DYNAMIC]
    if dynamic:
        fields["dynamic"] = tuple(dict.fromkeys(dynamic))
    for side in picture.side_data:
        raw = bytes(side)
        if side.type == av.sidedata.sidedata.Type.MASTERING_DISPLAY_METADATA and len(raw) >= 88:
            primaries, white, luminance = parse_mastering_display(raw)
            fields.update(primaries=primaries, white_point=white, luminance=luminance)
        elif side.type == av.sidedata.sidedata.Type.CONTENT_LIGHT_LEVEL and len(raw) >= 8:
            fields["max_cll"], fields["max_fall"] = struct.unpack("=2I", raw[:8])
    hdr = HdrStatic(**fields)
    return hdr if hdr != HdrStatic() else None


def read_hdr_static(path: str, color_trc: int) -> HdrStatic | None:
    """The first frame's HDR10 metadata, for PQ or HLG input only (an SDR input costs nothing).

    A separate open, so the caller's demuxer stays at the start; a file that cannot be
    decoded here gives None, and the real decode says what is wrong with it.
    """
    if color_trc not in (PQ, HLG):
        return None
    try:
        with open_media(path) as container:
            for picture in container.decode(main_video(container)):
                return hdr_static_of(picture)
    except (av.error.FFmpegError, OSError):
        return None
    return None
