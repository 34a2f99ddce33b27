"""Decoding with PyAV, in-process, one frame at a time (never the whole video)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av

from engine.deinterlace import Deinterlacer, check_mode
from engine.errors import UserError
from engine.frame import Frame
from engine.frame_count import PacketCount
from engine.frame_size import SizeHolder, size_note
from engine.hdr import HdrStatic, read_hdr_static
from engine.image_input import find, frame_file, is_image_pattern, open_media
from engine.timestamps import HoleWatch, JumpLog, TimestampRepair, frame_step
from engine.video_stream import main_video


@dataclass(frozen=True)
class VideoInfo:
    """What the input's video stream says about itself before decoding."""

    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    time_base: Fraction
    frame_rate: Fraction | None     # average rate, the one to give an encoder
    frames_declared: int            # the container's count; 0 when it keeps none
    duration_s: float | None
    codec: str
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int
    sample_aspect_ratio: Fraction | None = None  # None: square (or unknown) pixels
    hdr: HdrStatic | None = None                 # HDR10 mastering display / light levels (PQ, HLG)

    @property
    def frames_estimate(self) -> int | None:
        if self.frames_declared:
            return self.frames_declared
        if self.duration_s and self.frame_rate:
            return round(self.duration_s * float(self.frame_rate))
        return None


DECODERS = ("auto", "cpu", "nvdec")


def hwaccel_for(decode: str):
    """The PyAV hwaccel for `--decode`: None for the CPU.

    `auto` is the CPU: NVDEC has not been measured against CPU decoding on a GPU machine yet
    (tools/bench_gpu.sh takes both); it becomes NVDEC where that measurement favours it.
    """
    if decode not in DECODERS:
        raise UserError(f"invalid --decode '{decode}'; choose one of: {', '.join(DECODERS)}")
    if decode != "nvdec":
        return None
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if "cuda" not in hwdevices_available():
        raise UserError("--decode nvdec: this FFmpeg build has no CUDA hardware decoding")
    # no silent software fallback: asking for NVDEC and getting the CPU would mislead
    return HWAccel("cuda", allow_software_fallback=False)


def open_input(path: str, hwaccel=None) -> av.container.InputContainer:
    """Open `path` (a video, an image, or an image pattern: engine/image_input.py) for reading,
    or raise a one-line UserError that says what is wrong."""
    if is_image_pattern(path):
        hwaccel = None  # pictures, not a video bitstream: NVDEC has nothing to decode
    elif not os.path.exists(path):
        raise UserError(f"input not found: {path}")
    elif os.path.isdir(path):
        raise UserError(f"input is a directory, not a video: {path}")
    elif not os.path.isfile(path):  # a FIFO or a device: it is read more than once (side streams, checks)
        raise UserError(f"input is not a regular file (a pipe or a device): {path}")
    elif not os.access(path, os.R_OK):
        raise UserError(f"input is not readable: {path}")
    elif os.path.getsize(path) == 0:
        raise UserError(f"input is empty (0 bytes): {path}")
    try:
        container = open_media(path, hwaccel=hwaccel) if hwaccel else open_media(path)
    except av.error.EOFError:
        raise UserError(f"input has no video frames: {path} (it ends before the first one)") from None
    except RuntimeError as exc:  # PyAV: "Hardware accelerated decode requested but no stream is compatible"
        if hwaccel is None:
            raise
        raise UserError(f"--decode nvdec cannot decode the video of {path}: NVDEC takes H.264, HEVC, AV1, "
                        f"VP9, VP8, MPEG-1/2/4 and VC-1, not this codec ({exc}); --decode cpu does") from None
    except (av.error.FFmpegError, OSError) as exc:
        if hwaccel is not None:  # creating the CUDA device failed (no GPU, no driver, no permission)
            raise UserError(f"--decode nvdec is not available here: no usable NVIDIA GPU ({_reason(exc)})") from None
        if not isinstance(exc, av.error.FFmpegError):
            raise
        raise UserError(f"input is not a readable video file: {path} ({_reason(exc)})") from None
    if main_video(container) is None:
        what = " (only cover art)" if container.streams.video else ""
        container.close()
        raise UserError(f"input has no video stream{what}: {path}")
    return container


def first_frame_size(path: str) -> tuple[int, int]:
    """(width, height) of the first decoded frame: the size the whole stream keeps
    (engine/frame_size.py), which a segment starting elsewhere must be told."""
    container = open_input(path)
    try:
        for picture in container.decode(main_video(container)):
            return picture.width, picture.height
    except av.error.FFmpegError as exc:
        raise UserError(f"input is corrupt at {frame_label(path, 0)}: {path} ({_reason(exc)})") from None
    finally:
        container.close()
    raise UserError(f"input has no decodable video frames: {path}")


def frame_label(path: str, seq: int) -> str:
    """"frame 7", and for an image sequence the file that holds it: "frame 7 (0008.png)"."""
    if not is_image_pattern(path):
        return f"frame {seq}"
    return f"frame {seq} ({frame_file(path, find(path).first + seq)})"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The nominal frame rate to give an encoder.

    avg_frame_rate is what the frames average out to, but from millisecond timestamps
    (Matroska) it comes out as 12800/533 rather than 24/1. r_frame_rate is the exact base
    rate for constant-rate input, yet on VFR input it is the timestamps' common rate and
    can be far too high (120/1 for mixed 24p and 30p). So: r_frame_rate when the two agree
    within 1 %, else the average.
    """
    avg = Fraction(stream.average_rate) if stream.average_rate else None
    base = Fraction(stream.base_rate) if stream.base_rate else None
    if avg and base and abs(base - avg) / avg < Fraction(1, 100):
        return base
    for rate in (avg, stream.guessed_rate, base):
        if rate:
            return Fraction(rate)
    return None


def read_info(container: av.container.InputContainer) -> VideoInfo:
    stream = main_video(container)
    cc = stream.codec_context
    fmt = cc.format
    depth = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    return VideoInfo(
        width=cc.width, height=cc.height, pix_fmt=fmt.name if fmt else "unknown",
        bit_depth=depth, time_base=Fraction(stream.time_base),
        frame_rate=_rate(stream), frames_declared=stream.frames or 0, duration_s=duration,
        codec=cc.name, colorspace=int(cc.colorspace), color_range=int(cc.color_range),
        color_primaries=int(cc.color_primaries), color_trc=int(cc.color_trc),
        sample_aspect_ratio=_sample_aspect_ratio(stream),
        hdr=read_hdr_static(container.name, int(cc.color_trc)),
    )


def _sample_aspect_ratio(stream) -> Fraction | None:
    """The container's pixel shape (mp4 pasp, Matroska display size), else the bitstream's."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio  # None or 0: unknown
    return Fraction(sar) if sar and sar > 0 and sar != 1 else None


class VideoSource:
    """Decodes the first video stream into `Frame`s numbered 0..N-1 with the input's pts.

    Pixels stay in the decoder's picture until a stage asks for them (see `Frame.data`),
    as RGB: 8-bit input as ``rgb24`` uint8, deeper input as ``rgb48le`` uint16.
    """

    name = "decode"

    def __init__(self, path: str, *, max_frames: int | None = None, timestamps: str = "repair",
                 allow_truncated: bool = False, decode: str = "cpu", deinterlace: str = "off",
                 frame_size: tuple[int, int] | None = None, count_frames: bool = False):
        self.path = path
        self.deinterlace = check_mode(deinterlace)  # see engine/deinterlace.py
        self.max_frames = max_frames
        self.timestamps = timestamps          # "repair" or "refuse": see engine/timestamps.py
        self.allow_truncated = allow_truncated
        self.notes: list[str] = []           # said to the user after the run
        self.repair: TimestampRepair | None = None
        self.deinterlacer: Deinterlacer | None = None  # with --deinterlace: what it did
        self.truncation_said = False  # the job noted the truncation before the run (engine/job.py)
        # the stream's one size: given (a segment: the job's), else the first frame's
        self.size_holder = SizeHolder(frame_size)
        self._alpha_said = self._interlace_said = False
        # the job's: the encoder keeps the pictures' alpha ("all": no stage runs; "untouched": on
        # the frames no stage changes), or None
        self.alpha_kept: str | None = None
        hwaccel = hwaccel_for(decode)
        self.decode = "nvdec" if hwaccel is not None else "cpu"  # what auto resolved to
        self._container = open_input(path, hwaccel)
        try:
            self.info = read_info(self._container)
        except BaseException:  # a refused input: its container must not wait for the collector
            self._container.close()
            raise
        self.pixel_format = "rgb48le" if self.info.bit_depth > 8 else "rgb24"
        self.jumps = JumpLog(self.info.time_base)  # where the video's timestamps went back: the copier follows
        estimate = self.info.frames_estimate
        self.frames_total = min(estimate, max_frames) if estimate and max_frames else (
            max_frames or estimate)
        # `count_frames` (a job's display): a total from duration × rate is a guess, which a
        # count of the packets on a thread replaces (engine/frame_count.py)
        self.frames_estimated = not (self.info.frames_declared or is_image_pattern(path)  # found: exact
                                     or (max_frames and estimate and max_frames <= estimate))
        self.width, self.height = self.info.width, self.info.height
        if self.deinterlace != "off" and self.height < 3:  # bwdif's taps reach two rows either way
            self._container.close()
            raise UserError(f"--deinterlace needs a picture at least 3 rows high; {path} is "
                            f"{self.width}x{self.height}")
        self.frame_rate = float(self.info.frame_rate) if self.info.frame_rate else None
        # last: a refused input leaves no counting thread behind
        self._count = PacketCount(path, self._counted) if count_frames and self.frames_estimated else None

    @property
    def container(self) -> av.container.InputContainer:
        return self._container

    def frames(self) -> Iterator[Frame]:
        frames = self._decoded()
        if self.deinterlace != "off":
            # --frames N deinterlaces the first N frames as if the file ended there: so does
            # --resume, whose packet table stops at N
            self.deinterlacer = Deinterlacer(self.deinterlace)
            frames = self.deinterlacer.frames(frames)
        yield from self.size_holder.frames(frames)
        self._say_what_was_done()

    def _say_what_was_done(self) -> None:
        if self.deinterlacer is not None:
            self.notes.append(self.deinterlacer.note())
        note = size_note(self.size_holder.describe())
        if note:
            self.notes.append(note)

    def _observe(self, picture: av.VideoFrame) -> None:
        """Notes on what the decoded pictures are, said once."""
        if not self._alpha_said and any(c.is_alpha for c in picture.format.components):
            self._alpha_said = True  # any frame: a sequence may mix RGB and RGBA files
            kept = {"all": "no stage runs, and the output keeps it",
                    "untouched": "the output keeps it on frames no stage changes; stages see RGB, "
                                 "and a frame a stage changes gets an opaque alpha"}
            self.notes.append(f"note: the input has an alpha channel ({picture.format.name}); "
                              + kept.get(self.alpha_kept, "stages see RGB and the output has no alpha"))
        if not self._interlace_said and picture.interlaced_frame and self.deinterlace == "off":
            self._interlace_said = True
            self.notes.append(
                "note: the input is interlaced: its frames were processed as whole pictures (the "
                "two fields woven, which model stages see as combing) and most encoders write "
                "them flagged progressive; --deinterlace auto deinterlaces them first (bwdif)")

    def _decoded(self) -> Iterator[Frame]:
        stream = main_video(self._container)
        stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg, GIL released
        tb = self.info.time_base
        repair = self.repair = TimestampRepair(frame_step(self.info.frame_rate, tb),
                                               refuse=self.timestamps == "refuse", what="video frame",
                                               jump_log=self.jumps)
        holes = HoleWatch(repair.step, tb)
        seq = 0
        hidden = 0  # packets an MP4/MOV edit list hides: decoded for the pictures after them, never shown
        last_end: float | None = None
        try:
            for packet in self._container.demux(stream):
                hidden += packet.is_discard and packet.size > 0
                for picture in packet.decode():
                    pts = repair(picture.pts, picture.duration)
                    picture.pts = pts
                    holes.feed(pts)
                    last_end = float((pts + (picture.duration or 0)) * tb)
                    picture.pict_type = av.video.frame.PictureType.NONE  # let the encoder pick GOPs
                    self._observe(picture)
                    frame = Frame.from_picture(seq, pts, tb, picture, self.pixel_format)
                    if picture.rotation:  # display matrix: the sink writes it back out
                        frame.meta["rotation"] = picture.rotation
                    yield frame
                    seq += 1
                    if self.max_frames is not None and seq >= self.max_frames:
                        return
        except av.error.FFmpegError as exc:
            if not (self.allow_truncated and seq):
                raise UserError(f"input is corrupt at {frame_label(self.path, seq)}: {self.path} "
                                f"({_reason(exc)})") from None
            self.notes.append(f"note: reading stopped at frame {seq} ({_reason(exc)}); "
                              f"kept the {seq} frames before it (--allow-truncated)")
            return
        finally:
            if (hole := holes.note(self.info.frame_rate)) is not None:
                self.notes.append(hole)
            if repair.repaired:
                self.notes.append(
                    f"note: repaired the timestamps of {repair.repaired} video frames (missing, repeated or "
                    f"going back) from frame {repair.first_bad} on, at {self.info.frame_rate} fps")
        if seq == 0:
            raise UserError(f"input has no decodable video frames: {self.path}")
        # Here with --frames only when the video ended before N frames: a truncated file
        # must not pass as a short one.
        self._check_complete(seq, last_end, hidden)

    def _check_complete(self, decoded: int, last_end: float | None, hidden: int = 0) -> None:
        """The video decoded against what the file declares: frames (MP4, less those its edit
        list hides) or duration (Matroska)."""
        from engine.completeness import declared_video_seconds, tolerance_s

        problem = None
        shown = self.info.frames_declared - hidden
        if self.info.frames_declared and decoded < shown:
            problem = f"declares {shown} frames but only {decoded} could be decoded"
        else:
            stream = main_video(self._container)
            declared = declared_video_seconds(stream)
            start = float(stream.start_time * self.info.time_base) if stream.start_time is not None else 0.0
            if declared and last_end is not None and declared - (last_end - start) > tolerance_s(self.info):
                problem = (f"declares {declared:.3f} s of video but decoding ended at "
                           f"{last_end - start:.3f} s ({decoded} frames)")
        if problem is None:
            return
        if not self.allow_truncated:
            raise UserError(f"input is truncated or corrupt: {self.path} {problem} "
                            "(--allow-truncated keeps the frames that could be read)")
        if self.truncation_said:  # the job said so before the run: now what came of it
            self.notes.append(f"note: kept the {decoded} frames that could be read")
        else:
            self.notes.append(f"note: input is truncated: {problem}; kept them (--allow-truncated)")

    def _counted(self, n: int) -> None:
        self.frames_total = min(n, self.max_frames) if self.max_frames else n
        self.frames_estimated = False

    def close(self) -> None:
        if self._count is not None:
            self._count.stop()
        self._container.close()  # PyAV makes a second close a no-op
