"""Encoder choice: by name, or `auto`, always proven by really opening the encoder."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterator

import av
import av.logging

from engine.errors import UserError
from engine.hdr import HdrStatic

CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}


@dataclass(frozen=True)
class EncoderSpec:
    codec: str                 # FFmpeg encoder name
    pix_fmt_8bit: str
    pix_fmt_deep: str | None   # for >8-bit input; None means the encoder is 8-bit only
    quality_option: str | None # the option `--crf` maps to
    default_quality: int | None
    default_preset: str | None
    containers: tuple[str, ...]
    extra: dict[str, str] = field(default_factory=dict)
    # FFmpeg threading for this encoder, chosen per codec by measurement (see above ENCODERS).
    # None leaves FFmpeg's default, which in PyAV is SLICE.
    thread_type: str | None = None


# Encoder threading, measured on 150 real 720p frames (2-core machine, side by side):
# - libx264: PyAV's default SLICE makes FFmpeg's wrapper turn on x264's sliced threads
#   (threads=2 slices=2), which cost about 12 % of the engine's time against a plain loop
#   in frame threads; FRAME gives x264's own frame-parallel encoder (threads=3 sliced_threads=0).
# - prores_ks: AUTO (frame + slice) 9.3–11.4 fps against SLICE 9.2 and FRAME 8.2.
# - ffv1: slice threads only; FRAME gives one thread (50 fps against 87–92); AUTO = SLICE here.
# - libx265 runs its own thread pools and ignores FFmpeg's thread_type (63 fps with any).
# NVENC encodes on the GPU; FFmpeg threading does not apply.
ENCODERS: dict[str, EncoderSpec] = {
    "x264": EncoderSpec("libx264", "yuv420p", "yuv420p10le", "crf", 18, "medium", (".mp4", ".mkv", ".mov"),
                        thread_type="FRAME"),
    "x265": EncoderSpec("libx265", "yuv420p", "yuv420p10le", "crf", 20, "medium",
                        # x265 prints its banner and stats to stderr itself: only errors, please
                        (".mp4", ".mkv", ".mov"), {"tag": "hvc1", "x265-params": "log-level=error"}),
    "h264_nvenc": EncoderSpec("h264_nvenc", "yuv420p", None, "cq", 19, "p5", (".mp4", ".mkv", ".mov")),
    "hevc_nvenc": EncoderSpec("hevc_nvenc", "yuv420p", "p010le", "cq", 21, "p5",
                              (".mp4", ".mkv", ".mov"), {"tag": "hvc1"}),
    "prores": EncoderSpec("prores_ks", "yuv422p10le", "yuv422p10le", None, None, None,
                          (".mov", ".mkv"), thread_type="AUTO"),  # profile from --prores-profile, default 422 HQ
    # lossless: keeps the input's own pixel format when it can (see choose_encoder)
    # .mkv only: FFmpeg's mov muxer refuses ffv1 (and mp4's takes it, but players do not)
    "ffv1": EncoderSpec("ffv1", "yuv444p", "yuv444p10le", None, None, None, (".mkv",),
                        thread_type="SLICE"),
}
AUTO_ORDER = ("h264_nvenc", "x264", "prores")
AUTO_ORDER_DEEP = ("hevc_nvenc", "x265", "x264", "prores")  # keep 10-bit input 10-bit
MAX_QUALITY = 51  # x264/x265 crf and NVENC cq both top out here (x264 clamps above it silently)
# --crf 0: x264's crf 0 is lossless at 8 bits only (10-bit came back up to 5 levels off), its qp 0
# at every depth; x265's crf 0 is not lossless at all, its lossless mode is
# NVENC's cq 0 means "automatic", not lossless: its lossless is a tune of the p1..p7 presets
LOSSLESS_OPTIONS = {"libx264": {"qp": "0"}, "libx265": {"x265-params": "lossless=1"},
                    "h264_nvenc": {"tune": "lossless"}, "hevc_nvenc": {"tune": "lossless"}}
PRORES_PROFILES = {"proxy": "0", "lt": "1", "422": "2", "hq": "3", "4444": "4", "4444xq": "5"}


@dataclass(frozen=True)
class EncoderChoice:
    name: str
    spec: EncoderSpec
    pix_fmt: str
    options: dict[str, str]
    reason: str  # said to the user: why this encoder

    @property
    def codec(self) -> str:
        return self.spec.codec

    @property
    def note(self) -> str:
        """What the user is told about the encoder before the run."""
        return f"encoder: {self.name} ({self.codec}, {self.pix_fmt}) — {self.reason}"


def container_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in CONTAINERS:
        raise UserError(f"unsupported output extension '{ext or '(none)'}'; use one of: "
                        f"{', '.join(CONTAINERS)}, or an image pattern such as out/%06d.png")
    return ext


@contextmanager
def _captured_native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to fd 2 (libx264 prints option errors there itself).

    Only used before any pipeline thread starts, so swapping fd 2 cannot hide anything else.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(l.strip() for l in tmp.read().decode(errors="replace").splitlines() if l.strip())


def _formats(codec: str) -> set[str]:
    return {f.name for f in (av.Codec(codec, "w").video_formats or ())}


def has_alpha(pix_fmt: str) -> bool:
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    except ValueError:  # "unknown"
        return False


def is_rgb(pix_fmt: str) -> bool:
    try:
        return av.VideoFormat(pix_fmt).is_rgb
    except ValueError:  # "unknown"
        return False


def muxer_codecs(ext: str) -> set[str]:
    """Codec names the container for `ext` can hold, asked of FFmpeg's muxer itself."""
    with av.open(io.BytesIO(), mode="w", format=CONTAINERS[ext]) as probe:
        return set(probe.supported_codecs)


_failures: dict[tuple, str] = {}  # why an encoder would not open, the first time in this process


def encoded_size(codec: str, pix_fmt: str, width: int, height: int) -> tuple[int, int]:
    """The size a stream of `width`x`height` frames is encoded at: 4:2:0 and 4:2:2 need even
    sizes in x264, x265, NVENC and ProRes, so the odd last row/column is cropped (the sink's
    `_cropped`, exactly); FFV1 codes any size."""
    if codec == "ffv1":
        return width, height
    chroma = av.VideoFormat(pix_fmt)
    return (width - (width % 2 if chroma.chroma_width(2) != 2 else 0),
            height - (height % 2 if chroma.chroma_height(2) != 2 else 0))


def try_open(codec: str, pix_fmt: str, options: dict[str, str], thread_type: str | None = None,
             size: tuple[int, int] = (256, 256)) -> str | None:
    """Open the encoder for real (on the output's size where it is known), as the sink will.
    Returns None on success, else why not.
    Every call really tries (an NVENC busy with other sessions may open later), but a repeated
    failure gives its first reason: NVENC's ("Cannot load libcuda.so.1") is the one to tell; a
    second try said "Operation not permitted" (the second input of a batch)."""
    key = (codec, pix_fmt, tuple(sorted(options.items())), thread_type, size)
    failure = _try_open(codec, pix_fmt, options, thread_type, size)
    if failure is None:
        _failures.pop(key, None)
        return None
    return _failures.setdefault(key, failure)


def _try_open(codec: str, pix_fmt: str, options: dict[str, str], thread_type: str | None,
              size: tuple[int, int]) -> str | None:
    try:
        ctx = av.CodecContext.create(codec, "w")
    except (av.error.FFmpegError, ValueError) as exc:
        return f"{codec} is not in this FFmpeg build ({exc})"
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # only here: the reason an encoder refuses to open
    with _captured_native_stderr() as native, av.logging.Capture(True) as logged:
        try:
            (ctx.width, ctx.height), ctx.pix_fmt = size, pix_fmt
            ctx.time_base = Fraction(1, 25)
            ctx.options = {k: v for k, v in options.items() if k != "tag"}
            if thread_type:
                ctx.thread_type = thread_type
            ctx.open()
            error = None
        except (av.error.FFmpegError, ValueError) as exc:
            error = getattr(exc, "strerror", None) or str(exc)
        finally:
            del ctx
            av.logging.set_level(previous)
    if error is None:
        return None
    if native:  # libx264's own "x264 [error]: invalid preset 'x'"
        detail = native[-1].split("]:", 1)[-1].strip()
    elif logged:  # FFmpeg's log, e.g. "Cannot load libcuda.so.1"
        detail = logged[-1][2].strip()
    else:
        detail = error
    return f"{codec} failed to open: {detail}"


def check_encoder_options(name: str, crf: int | None, preset: str | None, prores_profile: str | None) -> None:
    """The encoder flags' values, refused as the user wrote them (image outputs too, which use none)."""
    if name != "auto" and name not in ENCODERS:
        raise UserError(f"unknown encoder '{name}'; choose one of: auto, {', '.join(ENCODERS)}")
    if prores_profile is not None and prores_profile not in PRORES_PROFILES:
        raise UserError(f"invalid ProRes profile '{prores_profile}'; choose one of: "
                        f"{', '.join(PRORES_PROFILES)}")
    check_preset(preset)
    if crf is not None and not 0 <= crf <= MAX_QUALITY:
        raise UserError(f"--crf must be between 0 and {MAX_QUALITY}, got {crf}")


def unused_encoder_flags(name: str, crf: int | None, preset: str | None, prores_profile: str | None) -> list[str]:
    return [flag for flag, given in (("--encoder", name != "auto"), ("--crf", crf is not None),
                                     ("--preset", preset is not None),
                                     ("--prores-profile", prores_profile is not None)) if given]


def choose_encoder(name: str, output_ext: str, bit_depth: int, *, crf: int | None = None,
                   preset: str | None = None, prores_profile: str | None = None,
                   source_pix_fmt: str | None = None, hdr: HdrStatic | None = None,
                   size: tuple[int, int] | None = None) -> EncoderChoice:
    """Resolve `name` (or `auto`) to an encoder that opens here and fits the container.

    `size`, the output frames' size where it is known before the run, is what each encoder is
    opened at: x265 refuses frames under 16 px a side, FFV1 4:2:0 under 4x4, and they failed
    mid-run, after the pipeline had run (`auto` now takes the next encoder that takes them).

    HDR10 static metadata (`hdr`) goes to x265 as its own options; no other encoder here
    takes it (the sink says so).
    """
    check_encoder_options(name, crf, preset, prores_profile)
    given_profile, prores_profile = prores_profile, prores_profile or "hq"  # None: not given
    if name == "auto":
        candidates = AUTO_ORDER_DEEP if bit_depth > 8 else AUTO_ORDER
    else:
        candidates = (name,)
    refusals: list[str] = []
    for candidate in candidates:
        spec = ENCODERS[candidate]
        if output_ext not in spec.containers or spec.codec not in muxer_codecs(output_ext):
            refusals.append(f"{candidate} cannot go in {output_ext}")
            continue
        if preset in NVENC_OTHER_PRESETS and not spec.codec.endswith("_nvenc"):
            # the user asked for NVENC by its own name: not another encoder with the flag dropped
            refusals.append(f"{candidate} has no preset '{preset}' (NVENC's own name; p1..p7 "
                            f"and x264's names work on every encoder)")
            continue
        inexact = None
        deep = bit_depth > 8 and spec.pix_fmt_deep is not None
        pix_fmt = spec.pix_fmt_deep if deep else spec.pix_fmt_8bit
        # yuvj420p is yuv420p at full range (FFmpeg's old name for it; encoders take the plain one)
        plain_source = source_pix_fmt.replace("yuvj", "yuv", 1) if source_pix_fmt else None
        # --crf 0 into x264/x265 asks for lossless: their lossless mode, in the input's own format
        lossless = crf == 0 and spec.codec in LOSSLESS_OPTIONS
        if (spec.codec == "ffv1" or lossless) and plain_source in _formats(spec.codec):
            pix_fmt = plain_source  # lossless stays lossless: no chroma resampling at all
        elif spec.codec == "ffv1" and source_pix_fmt and is_rgb(source_pix_fmt):
            # RGB stays RGB (rgb24 is not FFV1's), RGBA with its alpha (pictures no stage changes keep it)
            alpha = has_alpha(source_pix_fmt)
            pix_fmt = ("bgra" if alpha else "bgr0") if bit_depth <= 8 else ("gbrap16le" if alpha else "gbrp16le")
        elif lossless and source_pix_fmt and is_rgb(source_pix_fmt):
            # RGB input (PNG, TIFF): x265 codes planar RGB losslessly; x264 has no RGB (that is
            # libx264rgb), so its closest is 4:4:4 YUV, a level off here and there (said)
            rgb = {"libx265": ("gbrp", "gbrp10le" if bit_depth <= 10 else "gbrp12le")}.get(spec.codec)
            pix_fmt = rgb[bit_depth > 8] if rgb else (pix_fmt.replace("420", "444") if "420" in pix_fmt else pix_fmt)
            if not rgb:
                inexact = (f"--crf 0 from RGB input is {pix_fmt} in {candidate}, a level or two off "
                           f"(x265 or ffv1 keep RGB exactly)")
        if spec.codec == "prores_ks" and prores_profile in ("4444", "4444xq"):
            pix_fmt = "yuv444p10le"
        options = dict(spec.extra)
        if spec.codec == "libx265" and hdr is not None and hdr.x265_params():
            options["x265-params"] = ":".join([options["x265-params"], *hdr.x265_params()])
        if spec.codec == "prores_ks":
            options["profile"] = PRORES_PROFILES[prores_profile]
        if lossless:
            for key, value in LOSSLESS_OPTIONS[spec.codec].items():
                options[key] = ":".join(filter(None, (options.get(key), value))) if key == "x265-params" else value
        elif spec.quality_option:
            quality = crf if crf is not None else spec.default_quality
            options[spec.quality_option] = str(quality)
            if spec.codec.endswith("_nvenc"):
                # cq is a quality target only with no bitrate: NVENC's default (2 Mb/s) caps it
                options["b"] = "0"
        translated = None
        if spec.default_preset:
            options["preset"], translated = preset_for(spec, preset)
        encoded = encoded_size(spec.codec, pix_fmt, *size) if size else (256, 256)
        failure = try_open(spec.codec, pix_fmt, options, spec.thread_type, encoded)
        if failure is not None and size and try_open(spec.codec, pix_fmt, options, spec.thread_type) is None:
            failure = f"{candidate} cannot encode {encoded[0]}x{encoded[1]} frames ({failure})"
        if failure is None:
            reason = "requested" if name != "auto" else (
                "auto: first that opened" + (f" ({'; '.join(refusals)})" if refusals else ""))
            ignored = [flag for flag, given, used in (("--crf", crf, spec.quality_option),
                                                      ("--preset", preset, spec.default_preset),
                                                      ("--prores-profile", given_profile,
                                                       spec.codec == "prores_ks" or None))
                       if given is not None and used is None]
            if ignored:  # said, not silently dropped: ProRes and FFV1 have no crf or preset
                reason += f"; {' and '.join(ignored)} not used by {candidate}"
            if translated:
                reason += f"; {translated}"
            if inexact:
                reason += f"; {inexact}"
            return EncoderChoice(candidate, spec, pix_fmt, options, reason)
        refusals.append(failure)
    if name == "auto":
        raise UserError(f"no encoder could be opened for {output_ext}: {'; '.join(refusals)}")
    raise UserError(f"encoder '{name}' cannot be used: {refusals[0]}")


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")
NVENC_PRESETS = ("p1", "p2", "p3", "p4", "p5", "p6", "p7")
# one --preset for every encoder `auto` may pick: x264's names on NVENC's speed scale and back
# lined up at the defaults: x264's medium is NVENC's p5
X264_TO_NVENC = dict(zip(X264_PRESETS, ("p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7", "p7", "p7")))
NVENC_TO_X264 = dict(zip(NVENC_PRESETS, ("ultrafast", "superfast", "veryfast", "fast", "medium", "slow", "slower")))
# NVENC's other names, passed to it as they are (x264 refuses them when it opens)
NVENC_OTHER_PRESETS = ("default", "hp", "hq", "bd", "ll", "llhq", "llhp", "lossless", "losslesshp")


def check_preset(preset: str | None) -> None:
    if preset is not None and preset not in X264_PRESETS + NVENC_PRESETS + NVENC_OTHER_PRESETS:
        raise UserError(f"invalid --preset '{preset}'; choose one of: {', '.join(X264_PRESETS)} "
                        f"(x264, x265) or p1..p7 (NVENC; each side's names work on the other)")


def preset_for(spec: EncoderSpec, preset: str | None) -> tuple[str, str | None]:
    """(the encoder's own preset for `--preset`, a note when it was translated)."""
    if preset is None:
        return spec.default_preset, None
    nvenc = spec.codec.endswith("_nvenc")
    if nvenc and preset in X264_TO_NVENC:
        return X264_TO_NVENC[preset], f"--preset {preset} is {X264_TO_NVENC[preset]} for {spec.codec}"
    if not nvenc and preset in NVENC_TO_X264:
        return NVENC_TO_X264[preset], f"--preset {preset} is {NVENC_TO_X264[preset]} for {spec.codec}"
    return preset, None


def available_cpus() -> int:
    """The CPUs this process may run on (what FFmpeg and x264 count for their auto threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def x265_frame_threads(cpus: int) -> int:
    """About x265's automatic frame-thread count for `cpus` (its table moves between versions)."""
    return 6 if cpus >= 32 else 5 if cpus >= 16 else 3 if cpus >= 8 else 2 if cpus >= 4 else 1


def fixed_threads(choice: EncoderChoice, cpus: int) -> dict[str, str]:
    """Options that write out the encoder's thread count instead of leaving it to each machine.

    x264's and x265's bitstreams depend on their thread counts (frame threads change the
    motion search's reach and the lookahead), which they derive from the CPUs they find. A
    job cut into segments, resumed on another machine or spread over several, fixes the
    counts once, on the machine that plans it first (engine/resume.py keeps them in the
    manifest), so every segment is encoded alike wherever it runs. The counts are the
    encoders' automatic ones for `cpus` (x264's exactly; x265's as its table stood). ProRes
    and FFV1 give the same bytes with any thread count (checked on 24 frames with 1–16
    threads); NVENC has none.
    """
    if choice.codec == "libx264":
        return {"threads": str(max(1, cpus * 3 // 2))}  # x264's auto with frame threads
    if choice.codec == "libx265":
        params = [p for p in choice.options.get("x265-params", "").split(":") if p]
        params = [p for p in params if p.split("=")[0] not in ("pools", "frame-threads")]
        return {"x265-params": ":".join([*params, f"pools={cpus}", f"frame-threads={x265_frame_threads(cpus)}"])}
    return {}


def with_options(choice: EncoderChoice, extra: dict[str, str]) -> EncoderChoice:
    return replace(choice, options={**choice.options, **extra}) if extra else choice
