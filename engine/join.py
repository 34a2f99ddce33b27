"""Join segment files into the final output without re-encoding.

Video packets are remuxed in plan order with the timestamps they were encoded with, which
are the input's own (the sink keeps every frame's pts), so a join cannot open a gap or
overlap. Two corrections:
- MP4/MOV store a track's start offset in an edit list counted in milliseconds, so a
  segment starting at pts 20020/24000 s reads back as 20016. Each segment's packets are
  shifted so its first frame lands exactly on the pts the plan gives it, rounded as FFmpeg
  rounds (a shift of more than `MAX_SHIFT_S` is an error, not a correction).
- With B-frames, the dts before a segment's first pts are the encoder's guess from that
  segment's own frame gaps; with a variable frame rate they can fall before the previous
  segment's last dts, and a Matroska segment of a few packets has none. They move just past
  it: only the decode clock moves, every frame keeps its pts.

Audio, subtitles and attachments are copied once from the input over the whole timeline
(engine/streamcopy.py), interleaved as the video advances: no per-segment audio, hence no
drift or priming glitch at the joins.

Checks before anything is renamed: every segment was encoded with the same codec
parameters (a joined stream has one header), starts with a keyframe, holds exactly its
frames, and continues the one before it (dts and pts increasing across the join); then the
written file is re-probed like any output (engine/sink.py) and moved into place atomically.
The container is written bit-exact, so the same segments always join to the same bytes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av

from engine import interrupts
from engine.crashpoints import crash_point
from engine.durable import fsync_dir, fsync_file
from engine.encoders import CONTAINERS
from engine.errors import ValidationError
from engine.image_input import local_name
from engine.sink import PartialLock, check_written, partial_path, write_error
from engine.streamcopy import CopyPlan, StreamCopier


MAX_SHIFT_S = 0.002  # an edit list rounds to 1 ms; anything larger means a wrong segment


@dataclass(frozen=True)
class JoinPart:
    path: str
    frames: int
    start_time: Fraction  # the first frame's presentation time in the input, seconds


def _signature(stream) -> tuple:
    cc = stream.codec_context
    return (cc.name, cc.width, cc.height, cc.format.name if cc.format else None,
            bytes(cc.extradata or b""), stream.time_base)


def _rescale_near(time: Fraction, time_base: Fraction) -> int:
    """`time` in ticks of `time_base`, halves rounded away from zero: FFmpeg's av_rescale_q,
    which is how the segment's muxer stored it (Python's round() takes halves to even)."""
    ticks = time / time_base
    return math.floor(ticks + Fraction(1, 2)) if ticks >= 0 else -math.floor(-ticks + Fraction(1, 2))


def _fill_leading_dts(packets):
    """Matroska stores no dts, and FFmpeg's demuxer leaves it unset on a segment's first
    packets when B-frames reorder them (it infers dts only from later ones). Muxed after
    another segment, an unset dts is taken as the pts and runs ahead of the packets that
    follow ("Invalid argument"). Give them the dts the encoder had: one frame apart, ending
    a frame before the first dts the demuxer knows."""
    held = []
    for packet in packets:
        if packet.dts is None and packet.size:
            held.append(packet)
            continue
        if held and packet.dts is not None:
            step = packet.duration or 1
            for back, early in enumerate(reversed(held), 1):
                early.dts = packet.dts - back * step
        yield from held
        held = []
        yield packet
    yield from held


def join_segments(parts: list[JoinPart], output: str, *, input_path: str, copy_plan: CopyPlan,
                  copy_until_s: float = math.inf, partial: str | None = None) -> list[str]:
    """Write `parts` (in order) and the planned side streams of `input_path` to `output`,
    through `partial` (default: the sink's hidden sibling). Returns the side-stream copy's
    notes (repaired timestamps, packets not carried: `StreamCopier.notes`)."""
    partial = partial or partial_path(output)
    ext = os.path.splitext(output)[1].lower()
    lock = PartialLock(partial)  # a later run knows a killed join's partial by its free lock
    container = None
    copier: StreamCopier | None = None
    try:
        container = av.open(local_name(partial), mode="w", format=CONTAINERS[ext], options={"fflags": "+bitexact"})
        first = av.open(local_name(parts[0].path))
        try:
            template = first.streams.video[0]
            signature = _signature(template)
            video = container.add_stream_from_template(template)
            if template.average_rate:
                # a template gives the codec parameters, not the rate: without it Matroska
                # wrote no default frame duration, and readers took 23.976 fps for 24000
                video.codec_context.framerate = template.average_rate
        finally:
            first.close()
        copier = StreamCopier(input_path, container, copy_plan, video=video)
        last_dts: int | None = None
        last_pts: int | None = None
        total = 0
        for part in parts:
            count = 0
            with av.open(local_name(part.path)) as seg:
                stream = seg.streams.video[0]
                if _signature(stream) != signature:
                    raise ValidationError(f"cannot join {os.path.basename(part.path)}: encoded with "
                                          f"other codec parameters than the first segment")
                name = os.path.basename(part.path)
                seconds = float(stream.time_base)  # per tick; Fraction arithmetic per packet is slow
                shift = 0
                leading = True  # until a packet's own dts follows the segment before
                packets = seg.demux(stream)
                if last_dts is not None:
                    packets = _fill_leading_dts(packets)
                for packet in packets:
                    if packet.size == 0:
                        continue
                    if count == 0:
                        if not packet.is_keyframe:
                            raise ValidationError(f"{name} does not start with a keyframe")
                        shift = _rescale_near(part.start_time, packet.time_base) - packet.pts
                        if abs(shift * packet.time_base) > MAX_SHIFT_S:
                            at = float(packet.pts * packet.time_base)
                            raise ValidationError(f"{name} starts at {at:.6f} s, "
                                                  f"the plan says {float(part.start_time):.6f} s")
                    if shift:
                        packet.pts += shift
                        if packet.dts is not None:
                            packet.dts += shift
                    if count == 0 and last_pts is not None and packet.pts <= last_pts:
                        raise ValidationError(f"{name} overlaps the segment before")
                    if last_dts is not None and (packet.dts is None or (leading and packet.dts <= last_dts)):
                        # The second correction in the module's docstring.
                        if last_dts + 1 > packet.pts:
                            raise ValidationError(f"{name}: no room for dts between {last_dts} and "
                                                  f"pts {packet.pts} at the join")
                        packet.dts = last_dts + 1
                    else:
                        leading = False
                    if last_dts is not None and packet.dts is not None and packet.dts <= last_dts:
                        raise ValidationError(f"{name}: dts {packet.dts} after "
                                              f"{last_dts} at the join")
                    last_dts = packet.dts if packet.dts is not None else last_dts
                    last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
                    ts = packet.dts if packet.dts is not None else packet.pts
                    copier.advance(ts * seconds)
                    packet.stream = video
                    container.mux(packet)
                    count += 1
                    crash_point("join-packet")
            if count != part.frames:
                raise ValidationError(f"{os.path.basename(part.path)} holds {count} frames, "
                                      f"{part.frames} expected")
            total += count
        copier.finish(copy_until_s)
        notes = copier.notes()
        container.close()
        check_written(partial, total, 1 + copier.stream_count)
        fsync_file(partial)
        crash_point("join-rename")
        interrupts.committing(output)
        os.replace(partial, output)
        lock.release()
        fsync_dir(os.path.dirname(os.path.abspath(output)))
        return notes
    except BaseException as exc:
        if copier is not None:
            copier.close()
        try:
            if container is not None:
                container.close()
        except Exception:  # noqa: BLE001 - already failing; the partial goes anyway
            pass
        if os.path.exists(partial):
            os.unlink(partial)
        lock.release()
        error = write_error(f"output {output}", exc)  # a full disk: the user's, one line, exit 2
        if error is not None:
            raise error from None
        if isinstance(exc, av.error.FFmpegError):  # a muxer refusal: one line, like the checks above
            raise ValidationError(f"cannot join the segments into {output}: {exc}") from None
        raise
