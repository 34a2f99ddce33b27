"""Sinks: a PyAV-encoded video file, or an image sequence written by ordered saver threads.

Both write under a temporary name next to the destination and move into place only in
`commit()`, after the runner's validator and the sink's own re-check have passed. An
interrupted or failed job therefore leaves nothing that looks finished.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import os
import re
import shutil
import socket
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from typing import Callable, Iterator

import av
import cv2
import numpy as np

from engine import interrupts
from engine.crashpoints import crash_point
from engine.encoders import CONTAINERS, ENCODERS, EncoderChoice, encoded_size, is_rgb
from engine.colour_tags import (FROM_RGB, BT709_MATRIX, FULL_RANGE, LIMITED_RANGE, RGB_MATRIX, UNSPECIFIED,
                                is_full_range, limited_grey_as_yuv)
from engine.errors import UserError, ValidationError
from engine.image_input import frame_file, frame_name, is_image_pattern, local_name  # one naming rule for input and output
from engine.frame import Frame
from engine.planes import plane_rows
from engine.probe import count_video_packets
from engine.source import VideoInfo
from engine.streamcopy import CopyPlan, StreamCopier



def _host() -> str:
    """This machine, in a partial's name: only partials of its own dead processes are removed."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def name_max(directory: str) -> int:
    """The longest file name, in bytes, that `directory`'s filesystem takes (NAME_MAX)."""
    try:
        return os.pathconf(directory if os.path.isdir(directory) else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _partial_parts(path: str, inside: str | None = None) -> tuple[str, str, str]:
    """(directory, name up to the pid, extension) of `path`'s partial, in `inside` or beside it.
    The name keeps within NAME_MAX whatever `path`'s length: any name legal for the output
    must work (a 244-character one failed mid-run)."""
    head, tail = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(tail)
    where = inside or head
    prefix = f".partial-{_host()}-"
    room = name_max(where) - 1 - len(prefix) - 10 - len(ext.encode())  # a pid has at most 10 digits
    return where, f".{fit_name(stem, room)}{prefix}", ext


def fit_name(name: str, room: int) -> str:
    """`name` if it fits in `room` bytes, else its start and a hash of the whole: two long
    names that share a start must not get one hidden file."""
    if len(name.encode()) <= room:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[:max(room - 9, 1)].decode(errors="ignore") + "~" + digest


def partial_path(path: str, inside: str | None = None) -> str:
    """Where `path` is written until it is complete and checked: a hidden sibling (or a hidden
    entry of `inside`), named after this machine and process."""
    where, name, ext = _partial_parts(path, inside)
    return os.path.join(where, f"{name}{os.getpid()}{ext}")


class PartialLock:
    """An exclusive flock held on a partial (file or directory) while its writer lives: the
    kernel drops it when the process dies, however it dies. A pid says less: another
    container with this hostname has pids of its own."""

    def __init__(self, path: str, directory: bool = False):
        self.fd: int | None = None
        try:
            fd = os.open(path, os.O_RDONLY if directory else os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.fd = fd
        except OSError:  # held (a live writer), or no locks on this filesystem
            os.close(fd)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


#: An image sequence's partial directory holds this while its frames move one by one into an
#: existing directory: the names, so that a run killed half way is undone (`remove_stale_partials`).
COMMIT_JOURNAL = ".moving-into-place"


def _stale_partials(path: str, inside: str | None = None) -> Iterator[str]:
    """The name of each partial of `path` whose writer is gone (its lock is free), while held."""
    where, name, ext = _partial_parts(path, inside)
    if not os.path.isdir(where):
        return
    pattern = re.compile(re.escape(name) + r"(\d+)" + re.escape(ext) + "$")
    for entry in sorted(os.listdir(where)):
        found = pattern.match(entry)
        if not found or int(found.group(1)) == os.getpid():
            continue
        target = os.path.join(where, entry)
        lock = PartialLock(target, directory=os.path.isdir(target))
        try:
            if lock.held:  # its writer is gone
                yield entry
        finally:
            lock.release()


def _moved_out(partial: str) -> list[str]:
    """The frames a killed image commit had moved out of `partial` (per its journal); none
    when every move had been made (the output was complete)."""
    journal = os.path.join(partial, COMMIT_JOURNAL)
    if not os.path.isfile(journal):
        return []
    left = set(os.listdir(partial)) - {COMMIT_JOURNAL}
    if not left:
        return []
    with open(journal) as fh:
        return [n for n in fh.read().split("\n") if n and n not in left]


def half_moved_frames(path: str, inside: str | None = None) -> list[str]:
    """Frames a killed run had moved from its partial into `inside` (its commit cut short):
    its own, not an earlier run's."""
    where = _partial_parts(path, inside)[0]
    return [name for entry in _stale_partials(path, inside) for name in _moved_out(os.path.join(where, entry))]


def remove_stale_partials(path: str, inside: str | None = None) -> list[str]:
    """Remove the partials of `path` that runs on this machine left when they were killed
    (SIGKILL, the OOM killer, a power cut: no handler runs), known by their lock being free,
    and the frames a killed image commit had already moved out of one. Returns their names."""
    where = _partial_parts(path, inside)[0]
    removed = []
    for entry in _stale_partials(path, inside):
        target = os.path.join(where, entry)
        for name in _moved_out(target):
            _remove(os.path.join(where, name))
        _remove(target, strict=False)
        removed.append(entry)
    return removed


def output_aspect_ratio(sar: Fraction | None, source: tuple[int, int], output: tuple[int, int]) -> Fraction | None:
    """The pixel shape that keeps the source's display aspect after stages resized its frames
    by `source` → `output` (unchanged by a uniform scale); None for square pixels. Reduced to
    fit the 16-bit fields H.264/HEVC store it in."""
    if sar is None:
        return None
    (sw, sh), (ow, oh) = source, output
    out = sar * Fraction(sw * oh, ow * sh)
    while out.numerator > 65535 or out.denominator > 65535:
        out = out.limit_denominator(max(1, out.denominator // 2))
    return None if out == 1 else out


# the output's filesystem refused: full, over a size or quota limit, read-only, failing; the
# output's directory gone or its permissions changed during the run; a place (/proc, /sys)
# that takes no files although the check before the run said it was writable
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO,
                errno.ENOENT, errno.EACCES, errno.EPERM}


def write_error(what: str, exc: BaseException, hint: str = "") -> UserError | None:
    """The user's problem an error of writing `what` is (a full disk, a limit, a read-only
    filesystem), as one line naming what they asked for (not a hidden partial); else None."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return UserError(f"cannot write {what}: {os.strerror(exc.errno)}{hint}")
    return None


@contextmanager
def output_errors(what: str, hint: str = "") -> Iterator[None]:
    """`write_error` around a block: such an OSError becomes its UserError (exit 2)."""
    try:
        yield
    except OSError as exc:
        error = write_error(what, exc, hint)
        if error is None:
            raise
        raise error from None


def check_written(path: str, frames: int, streams: int,
                  progress: Callable[[], None] | None = None) -> None:
    """Re-probe a closed output: exactly `frames` video packets and `streams` streams.
    `progress`: called as the re-read goes (an hour of 4K ProRes is hundreds of GB)."""
    written = av.open(local_name(path))
    try:
        found = len(written.streams)
        count = count_video_packets(written, progress)
    finally:
        written.close()
    if count != frames:
        raise ValidationError(f"output check failed: {count} frames in the file, {frames} written")
    if found != streams:
        raise ValidationError(f"output check failed: {found} streams in the file, {streams} expected")


def _remove(path: str, strict: bool = True) -> None:
    """Remove a file or a directory tree. `strict`: what cannot be removed raises (the failure's
    note then says the partial is left: a read-only remount left 250 frames unsaid)."""
    if os.path.isdir(path):
        failed: list[BaseException] = []

        def left(_func, _path, exc):  # go on with the rest, say the first that could not go
            exc = exc[1] if isinstance(exc, tuple) else exc
            if not isinstance(exc, FileNotFoundError):
                failed.append(exc)

        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=left)
        else:
            shutil.rmtree(path, onerror=left)
        if failed and strict:
            raise failed[0]
    elif os.path.lexists(path):
        os.unlink(path)


_SETTINGS_KEYS = ("threads", "lookahead_threads", "sliced_threads", "slices", "frame-threads", "numa-pools",
                  "wpp", "pmode", "pme", "preset", "crf", "rc")


def encoder_settings(packet: bytes) -> dict[str, str]:
    """Threading and rate settings that x264/x265 write into their first packet (an SEI
    message "... options: key=value ..."). What the encoder really did, not what we asked."""
    at = packet.find(b"options: ")
    if at < 0:
        return {}
    text = packet[at + 9: at + 9 + 4096].split(b"\0", 1)[0].decode("ascii", "replace")
    settings = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep:  # x265's switches: "wpp", "no-pmode"
            key, value = (key[3:], "0") if key.startswith("no-") else (key, "1")
        if key in _SETTINGS_KEYS:
            settings[key] = value
    return settings


CONVERTERS = min(4, os.cpu_count() or 1)  # RGB → YUV threads per video sink
LOOKAHEAD = 2 * CONVERTERS                # frames converted ahead of the encoder


def _rgb_picture(data: np.ndarray) -> av.VideoFrame:
    """Host RGB (uint8, or uint16 for deep input) as a picture swscale can convert."""
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(data),
                                      format="rgb48le" if data.dtype == np.uint16 else "rgb24")


NO_BITSTREAM_SAR = ("ffv1", "prores_ks")  # codecs whose stream holds no pixel aspect ratio


def _cropped(picture: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """The top-left `width`×`height` of `picture` in its own format, plane by plane: cutting an
    odd last column or row drops the chroma samples that covered it alone, and nothing else
    (through RGB the rest of the chroma was resampled: 12 % of it exact, up to 27 off)."""
    out = av.VideoFrame(width, height, picture.format.name)
    for src, dst in zip(picture.planes, out.planes):
        row = min(src.line_size, dst.line_size)  # the samples and some padding: never past either
        plane_rows(dst)[:dst.height, :row] = plane_rows(src)[:dst.height, :row]
    out.colorspace, out.color_range = picture.colorspace, picture.color_range
    return out


class VideoSink:
    """Encodes frames with PyAV, keeping each frame's pts and the input's colour tags.

    A frame whose pixels no stage touched is encoded from its decoded picture directly,
    so `--pipeline none` costs no colour conversion at all. Otherwise RGB → YUV runs on a
    few converter threads (swscale releases the GIL), a few frames ahead of the encoder:
    at 4K that conversion alone takes longer than x264 ultrafast needs per frame.
    """

    name = "encode"

    def __init__(self, path: str, encoder: EncoderChoice, source: VideoInfo, *,
                 input_path: str, copy_plan: CopyPlan, stop_copy_with_video: bool = False,
                 shown_as: str | None = None, write_hint: str = "", video_jumps=None):
        self.path = path
        # what a write error names, and what it adds (a segment: its work dir, and that it resumes)
        self.shown_as, self.write_hint = shown_as or f"output {path}", write_hint
        self.encoder = encoder
        self.source = source
        self.partial = partial_path(path)
        self.input_path = input_path
        self.copy_plan = copy_plan
        self.video_jumps = video_jumps  # the source's JumpLog: copied streams follow the video's jumps back
        # with --frames N, other streams end where the video ends; otherwise all of them go
        self.stop_copy_with_video = stop_copy_with_video
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._copier: StreamCopier | None = None
        self._video_end_s = 0.0
        self._committed = False
        self._lock: PartialLock | None = None
        self.notes: list[str] = []  # things the user must hear about, printed after the run
        # set by the runner: called while `finish` makes progress (the re-read of a long
        # output is not a stall, and the watchdog must not remove it)
        self.heartbeat: Callable[[], None] | None = None
        self._first_shape: tuple[int, ...] = ()
        self._resized: list[int] = []  # seqs of frames of another size than the first (scaled to it)
        self._converters = ThreadPoolExecutor(max_workers=CONVERTERS, thread_name_prefix="engine-rgb2yuv")
        self._converting: deque[tuple[Frame, Future]] = deque()  # in order; bounded by LOOKAHEAD
        self.encoder_settings: dict[str, str] | None = None  # as the encoder wrote them in its stream
        self.repaired_packets: dict[str, int] = {}  # copied streams whose timestamps were regenerated
        self.dropped_packets: dict[str, int] = {}  # copied packets dropped where concatenated parts overlap
        # the matrix and range the output is tagged with and converted to: the input's, but
        # RGB-coded input (PNG, RGB H.264, FFV1 RGB) into YUV gets BT.709 (sRGB's primaries)
        # at limited range; a YUV stream tagged "RGB" is not valid H.264/HEVC
        self.colorspace, self.color_range = source.colorspace, source.color_range
        if (source.colorspace == RGB_MATRIX or is_rgb(source.pix_fmt)) and not is_rgb(encoder.pix_fmt):
            self.colorspace, self.color_range = BT709_MATRIX, LIMITED_RANGE
        elif is_rgb(encoder.pix_fmt):  # RGB coded as RGB (FFV1, x265's lossless gbrp): tagged so
            self.colorspace, self.color_range = RGB_MATRIX, FULL_RANGE
        elif is_full_range(self.color_range, source.pix_fmt):
            self.color_range = FULL_RANGE  # a yuvj format is full range, tagged or not: say so
        # ProRes cannot signal full range (decoders read it as limited): convert, and say so
        if is_full_range(self.color_range, source.pix_fmt) and encoder.codec.startswith("prores"):
            self.color_range = LIMITED_RANGE
            self.notes.append("note: ProRes is limited range: the full-range input is converted to limited range")
        # what a model stage right before the sink may hand over: pictures in the encoder's
        # format and encoding (the same as `_picture` converts with), made on its device
        self.picture_format = (encoder.pix_fmt, self.colorspace, self.color_range)
        depth = max(c.bits for c in av.VideoFormat(encoder.pix_fmt).components)
        if depth < source.bit_depth:  # 12-bit input: no lossy encoder here writes more than 10
            keeps = ("--encoder x265 or prores keeps it" if source.bit_depth <= 10
                     else "--encoder ffv1 (.mkv) keeps it")
            self.notes.append(f"note: the input is {source.bit_depth}-bit; {encoder.name} writes {depth} bits "
                              f"({keeps})")
        hdr = source.hdr
        if hdr is not None and hdr.x265_params() and encoder.codec != "libx265":
            self.notes.append(f"note: the input's HDR10 metadata (mastering display, light levels) is not "
                              f"passed to {encoder.name}; --encoder x265 writes it")
        if hdr is not None and hdr.dynamic:  # per-frame metadata: no encoder here takes it back
            self.notes.append(f"note: the input's {' and '.join(hdr.dynamic)} metadata is not carried "
                              f"(the output is plain HDR10{' with its static metadata' if hdr.x265_params() else ''})")

    def describe(self) -> dict:
        """The encoder as it really ran, for the report: threading and its own settings."""
        cc = self._stream.codec_context if self._stream is not None else None
        return {"name": self.encoder.name, "codec": self.encoder.codec, "pix_fmt": self.encoder.pix_fmt,
                "options": dict(self.encoder.options),
                "thread_type": cc.thread_type.name if cc is not None else self.encoder.spec.thread_type,
                "thread_count": cc.thread_count if cc is not None else None,
                "settings": self.encoder_settings or {}}

    def _keep_odd_advice(self) -> str:
        flags = "--encoder prores --prores-profile 4444"  # 4:4:4: no chroma subsampling to round to
        ext = os.path.splitext(self.path)[1].lower()
        ffv1 = "--encoder ffv1 (lossless)" + ("" if ext == ".mkv" else " into a .mkv")
        prores = flags if ext in ENCODERS["prores"].containers else f"a .mov or .mkv with {flags}"
        return f"{ffv1} or {prores} keeps them"

    def _open(self, width: int, height: int, rotation: int = 0) -> None:
        self._lock = PartialLock(self.partial)  # created and locked before FFmpeg writes it
        try:
            self._container = av.open(local_name(self.partial), mode="w",
                                      format=CONTAINERS[os.path.splitext(self.path)[1].lower()])
        except (av.error.FFmpegError, OSError) as exc:
            raise UserError(f"cannot write output {self.path}: {exc}") from None
        src = self.source
        stream = self._container.add_stream(self.encoder.codec, rate=src.frame_rate)
        # 4:2:0 and 4:2:2 need even sizes in x264, x265, NVENC and ProRes: crop the odd last
        # row/column rather than fail (exactly: `_cropped`). FFV1 codes any size.
        stream.width, stream.height = encoded_size(self.encoder.codec, self.encoder.pix_fmt, width, height)
        if (stream.width, stream.height) != (width, height):
            self.notes.append(
                f"note: cropped {width}x{height} to {stream.width}x{stream.height}: "
                f"{self.encoder.pix_fmt} needs even dimensions ({self._keep_odd_advice()})")
        stream.pix_fmt = self.encoder.pix_fmt
        stream.time_base = src.time_base
        cc = stream.codec_context
        cc.time_base = src.time_base
        options = dict(self.encoder.options)
        if "tag" in options:
            cc.codec_tag = options.pop("tag")
        cc.options = options
        if self.encoder.spec.thread_type:
            cc.thread_type = self.encoder.spec.thread_type  # per codec, measured: see engine/encoders.py
        cc.colorspace, cc.color_range = self.colorspace, self.color_range
        cc.color_primaries, cc.color_trc = src.color_primaries, src.color_trc
        sar = output_aspect_ratio(src.sample_aspect_ratio, (src.width, src.height), (width, height))
        if sar is not None:  # anamorphic input: the same picture shape on screen
            cc.sample_aspect_ratio = sar
            if self._container.format.name == "matroska" and self.encoder.codec in NO_BITSTREAM_SAR:
                # Matroska takes the shape from the track's display size, which PyAV cannot set;
                # x264/x265 carry it in their bitstream, FFV1 and ProRes do not
                shown = round(stream.width * sar)
                self.notes.append(
                    f"note: the pixels are {sar.numerator}:{sar.denominator} (shown as {shown}x{stream.height}), "
                    f"which {self.encoder.name} in .mkv cannot record here: players show the output with square "
                    f"pixels. `mkvpropedit OUT --edit track:v1 --set display-width={shown} --set "
                    f"display-height={stream.height}` restores the shape"
                    + ("; ProRes into .mov keeps it" if self.encoder.codec == "prores_ks" else ""))
        if rotation:  # honour the input's display rotation: players turn the output alike
            stream.set_display_rotation(rotation)
        self._stream = stream
        # every stream must exist before the first packet writes the header
        self._copier = StreamCopier(self.input_path, self._container, self.copy_plan, video=stream,
                                    video_jumps=self.video_jumps)

    @property
    def _matrix(self) -> int | None:
        """The matrix swscale converts RGB with: the output's tag (None: swscale's default)."""
        return self.colorspace if self.colorspace not in (UNSPECIFIED, RGB_MATRIX) else None

    def _shared_picture(self, frame: Frame) -> av.VideoFrame:
        """`_picture`, made once for a frame and the duplicates that show it (engine/frame.py's
        PixelShare: converting one picture on two threads at once crashed)."""
        return frame.converted(("encode", id(self)), lambda: self._picture(frame))

    def _picture(self, frame: Frame) -> av.VideoFrame:
        """The picture to encode: the frame's own if it is already in the stream's format (a
        decoded picture no stage touched, or a model stage's result), else converted from RGB."""
        stream = self._stream
        picture = frame.picture
        # a stage handed on frames of another size (the source holds the input's: engine/frame_size.py)
        if frame.shape[:2] != self._first_shape:  # a stream holds one size
            picture = picture if picture is not None else _rgb_picture(frame.data)
            return picture.reformat(width=stream.width, height=stream.height, format=stream.pix_fmt,
                                    dst_colorspace=self._matrix, dst_color_range=self.color_range or None,
                                    interpolation="LANCZOS")
        if (picture is not None and (picture.width, picture.height) == (stream.width, stream.height)
                and is_rgb(picture.format.name) and is_rgb(stream.pix_fmt)):
            # RGB(A) into RGB(A) (PNG frames into FFV1): the samples reordered, alpha too (through
            # `frame.data`, RGB without it, the plane came out opaque)
            return picture.reformat(format=stream.pix_fmt)
        if picture is not None and self.colorspace == self.source.colorspace:
            same_size = (picture.width, picture.height) == (stream.width, stream.height)
            if (picture.format.name == stream.pix_fmt
                    and (self.color_range == self.source.color_range or picture.color_range == self.color_range)):
                # as it is, or less the odd row/column an encoder refuses
                return picture if same_size else _cropped(picture, stream.width, stream.height)
            if (same_size and picture.format.name.startswith("gray") and not stream.pix_fmt.startswith("gray")
                    and self.color_range == LIMITED_RANGE and int(picture.color_range) == LIMITED_RANGE):
                # limited grey into YUV: its samples are the luma (through RGB swscale took them
                # as full range and squeezed them, 16 -> 30)
                return limited_grey_as_yuv(picture).reformat(
                    format=stream.pix_fmt, src_color_range=LIMITED_RANGE, dst_color_range=LIMITED_RANGE,
                    interpolation=FROM_RGB)
            if (same_size and picture.format.name == stream.pix_fmt.replace("yuv", "yuvj", 1) != stream.pix_fmt
                    and self.color_range == FULL_RANGE):
                # yuvj420p is yuv420p at full range: the same samples under the name encoders take
                # (a copy; through RGB it was up to a level off)
                return picture.reformat(format=stream.pix_fmt, src_color_range=FULL_RANGE,
                                        dst_color_range=FULL_RANGE)
        rgb = _rgb_picture(frame.data[: stream.height, : stream.width])  # crops the odd row/column, if any
        # convert with the same matrix and range the output is tagged with
        return rgb.reformat(format=stream.pix_fmt, dst_colorspace=self._matrix, dst_color_range=self.color_range or None,
                            interpolation=FROM_RGB)

    def write(self, frame: Frame) -> None:
        if self._container is None:
            height, width = self._first_shape = frame.shape[:2]
            self._open(width, height, frame.meta.get("rotation", 0))
        elif frame.shape[:2] != self._first_shape:
            self._resized.append(frame.seq)
        self._converting.append((frame, self._converters.submit(self._shared_picture, frame)))
        while len(self._converting) > LOOKAHEAD:
            with output_errors(self.shown_as, self.write_hint):
                self._encode_next()

    def _encode_next(self) -> None:
        frame, converted = self._converting.popleft()
        picture = converted.result()
        picture.pts = frame.pts
        picture.time_base = frame.time_base
        # ProRes writes each frame's own primaries and transfer into its header (a picture
        # converted from RGB has neither): without these, BT.709 and PQ came out unspecified
        picture.color_primaries, picture.color_trc = self.source.color_primaries, self.source.color_trc
        # and its matrix: a converted picture's is unspecified, and players then take BT.709 for BT.601
        picture.colorspace = self.colorspace
        self._copier.advance(frame.time)
        self._mux_video(self._stream.encode(picture))
        rate = self.source.frame_rate
        self._video_end_s = frame.time + (float(1 / rate) if rate else 0.0)

    def _mux_video(self, packets: list) -> None:
        if packets and self.encoder_settings is None:
            # in the first packet, or (x265 into .mp4/.mov, global headers) in the extradata
            self.encoder_settings = (encoder_settings(bytes(packets[0]))
                                     or encoder_settings(bytes(self._stream.codec_context.extradata or b"")))
        self._container.mux(packets)

    def finish(self, frames: int) -> None:
        with output_errors(self.shown_as, self.write_hint):
            self._finish(frames)

    def _finish(self, frames: int) -> None:
        if self._container is None:
            raise ValidationError("no frames reached the encoder")
        while self._converting:
            self._encode_next()
        self._converters.shutdown()
        self._mux_video(self._stream.encode(None))  # flushing is encode(None): a short clip's only packets
        self._copier.finish(self._video_end_s if self.stop_copy_with_video else math.inf)
        self.repaired_packets = self._copier.repaired
        self.dropped_packets = self._copier.dropped  # at jumps back: overlapped the part before
        if self._resized:
            h, w = self._first_shape
            self.notes.append(f"note: {len(self._resized)} frame(s) from seq {self._resized[0]} on had "
                              f"another size than the first frame's {w}x{h}: each was scaled to "
                              f"{self._stream.width}x{self._stream.height} (a video stream holds one size)")
        self.notes += self._copier.notes()
        self._container.close()
        self._container = None
        check_written(self.partial, frames, 1 + self._copier.stream_count, self.heartbeat)

    def commit(self) -> None:
        interrupts.committing(self.path)
        os.replace(self.partial, self.path)
        self._committed = True
        if self._lock is not None:
            self._lock.release()

    def abort(self) -> None:
        # Safe twice: the container is dropped after the first close, the file after unlink.
        self._converting.clear()
        self._converters.shutdown(wait=True, cancel_futures=True)
        copier, self._copier = self._copier, None
        if copier is not None:
            copier.close()
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file goes anyway
                pass
        try:
            if not self._committed:
                _remove(self.partial)
        finally:
            if self._lock is not None:
                self._lock.release()


IMAGE_FORMATS = {".png": [cv2.IMWRITE_PNG_COMPRESSION, 1],
                 ".webp": [cv2.IMWRITE_WEBP_QUALITY, 101]}  # 101 = lossless WebP


def pattern_matches(pattern: str, directory: str) -> list[str]:
    """Files in `directory` named like frames of `pattern`, sorted: what a sequence written
    there would be mixed with."""
    named = frame_name(pattern)
    if named is None or not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if named.match(n))


def image_staging(pattern: str) -> tuple[str, str | None]:
    """(the frames' directory, where their partial is staged: inside it if it exists)."""
    directory = os.path.dirname(os.path.abspath(pattern))
    return directory, directory if os.path.isdir(directory) else None


class ImageSequenceSink:
    """Writes ``dir/%06d.png`` (or .webp), numbered from 1 like FFmpeg's image2 muxer.

    Saver threads compress and write in parallel. Their futures wait in a deque in seq
    order, so completion is checked in order: the oldest unfinished frame bounds how far
    ahead the savers may run (backpressure), and the first failure surfaces in order.
    """

    name = "save"
    start_number = 1

    def __init__(self, pattern: str, workers: int = 4):
        ext = os.path.splitext(pattern)[1].lower()
        if ext not in IMAGE_FORMATS:
            raise UserError(f"unsupported image format '{ext}'; use one of: {', '.join(IMAGE_FORMATS)}")
        if frame_name(pattern) is None:  # FFmpeg's own rule: the sequence must read back as input
            raise UserError(f"image pattern needs one number field, %d or %06d: {pattern}")
        self.pattern = pattern
        self.ext = ext
        # Frames are staged inside an existing directory, not beside it: a mount point (a
        # docker volume, a drive's root) is another filesystem from its parent, where the
        # renames into place failed after the whole job, and its parent may be read-only.
        self.directory, inside = image_staging(pattern)
        self.partial = partial_path(self.directory, inside)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._names: list[str] = []
        self._lock: PartialLock | None = None
        self._aborted = False
        self.notes: list[str] = []

    def _save(self, frame: Frame, name: str) -> None:
        data = frame.data
        if self.ext == ".webp" and data.dtype == np.uint16:
            data = (data >> 8).astype(np.uint8)  # WebP holds 8 bits per channel
        ok, encoded = cv2.imencode(self.ext, cv2.cvtColor(data, cv2.COLOR_RGB2BGR),
                                   IMAGE_FORMATS[self.ext])
        if not ok:
            raise RuntimeError(f"could not encode frame {frame.seq} as {self.ext}")
        with output_errors(f"output {self.pattern}"), open(os.path.join(self.partial, name), "wb") as fh:
            fh.write(encoded.tobytes())

    def write(self, frame: Frame) -> None:
        if self._aborted:  # a thread still running after the job stopped must not stage frames again
            raise RuntimeError("the image sink was aborted")
        if self._pool is None:
            if frame.meta.get("rotation"):  # a video's display matrix: image files have none
                self.notes.append(f"note: the input is shown rotated {frame.meta['rotation']}°: frames are "
                                  f"written as stored, unrotated (image files hold no rotation)")
            os.makedirs(self.partial, exist_ok=True)
            self._lock = PartialLock(self.partial, directory=True)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="engine-saver")
        name = frame_file(self.pattern, frame.seq + self.start_number)
        self._names.append(name)
        self._pending.append(self._pool.submit(self._save, frame, name))
        while len(self._pending) > 2 * self.workers:
            self._pending.popleft().result()

    def finish(self, frames: int) -> None:
        while self._pending:
            self._pending.popleft().result()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        present = set(os.listdir(self.partial)) if os.path.isdir(self.partial) else set()
        missing = [n for n in self._names if n not in present]
        if len(self._names) != frames or missing:
            raise ValidationError(f"image check failed: {frames} frames, {len(present)} files"
                                  + (f", missing {missing[0]}" if missing else ""))

    def commit(self) -> None:
        interrupts.committing(self.pattern)  # one rename a frame: never stopped half way
        if not os.path.isdir(self.directory):
            os.replace(self.partial, self.directory)
        else:
            # the directory already exists: the files move in one by one. The names go first
            # into a journal (a run killed half way is undone by the next one), the last frame
            # first (what a kill leaves in place lacks the sequence's start: it cannot pass
            # for a finished one).
            journal = os.path.join(self.partial, COMMIT_JOURNAL)
            with open(journal, "w") as fh:
                fh.write("\n".join(self._names))
                fh.flush()
                os.fsync(fh.fileno())
            for name in reversed(self._names):
                os.replace(os.path.join(self.partial, name), os.path.join(self.directory, name))
                crash_point("image-commit")
            os.unlink(journal)
            os.rmdir(self.partial)
        if self._lock is not None:
            self._lock.release()

    def abort(self) -> None:
        # safe to run again (interrupts.unstoppable): the pool is dropped once its savers are done
        self._aborted = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        try:
            _remove(self.partial)
        finally:
            if self._lock is not None:
                self._lock.release()
