"""Streams the output container cannot hold as they are: re-encoded rather than lost.

Every stream planned for a packet copy is tried before the run: its first packet muxed into
an in-memory file of the output's format (header, packet, trailer). FFmpeg's list of codecs
a muxer supports is not enough: FLAC and Opus into .mov, and Matroska's PCM into .mp4, are
listed yet refused when written, which failed jobs a few frames in. An audio stream that
fails is re-encoded: lossless audio (PCM, FLAC, ALAC, ...) to the first lossless codec the
container takes (FLAC, ALAC, PCM) at its own bit depth, lossy audio to AAC at 128 kb/s a
channel (at most 512). Its frames keep the input's timestamps (the decoder gives them, PyAV
re-chunks to the encoder's frame size from there), and the encoder's priming is written as
the container's start delay, as FFmpeg does, so sync holds. Text subtitles (SRT, ASS,
WebVTT) into .mp4/.mov become mov_text with each event's own time (ASS styling beyond bold,
italic and colour, and positions, are lost: .mkv keeps them as they are); mov_text into .mkv
becomes ASS, as FFmpeg converts it, its styling kept. Bitmap subtitles and other streams that
fail are skipped with the muxer's reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av

LOSSLESS_TARGETS = ("flac", "alac", "pcm_s24le", "pcm_s16le")
# MP4/QuickTime's one text subtitle format, else ASS (what FFmpeg gives Matroska: mov_text's
# bold, italic and colour kept), the first the output's muxer takes
TEXT_TARGETS = ("mov_text", "ass")
LOSSY_TARGET = "aac"
LOSSY_BITS_PER_CHANNEL, LOSSY_MAX_BITS = 128_000, 512_000
SEARCH_PACKETS = 2000  # how far `copy_problem` looks for a stream's first packet


def _trial(format_name: str, add: Callable, packets: Callable) -> str | None:
    """None if a file of `format_name` takes the stream `add` makes and the packets
    `packets(stream)` gives, header to trailer; else the muxer's reason."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # only here: the muxer's reason, which PyAV drops by default
    try:
        with av.logging.Capture(True) as logged:
            output = av.open(io.BytesIO(), mode="w", format=format_name)
            try:
                stream = add(output)
                for packet in packets(stream):
                    packet.stream = stream
                    output.mux(packet)
                output.close()
                return None
            except (av.error.FFmpegError, ValueError) as exc:
                try:
                    output.close()
                except (av.error.FFmpegError, ValueError):
                    pass
                said = [text.strip() for level, _, text in logged if level <= av.logging.ERROR and text.strip()]
                return said[0] if said else str(exc)
    finally:
        av.logging.set_level(previous)


def _first_packet(source: av.container.InputContainer, index: int) -> av.Packet | None:
    """Stream `index`'s first packet, looked for only so far: a subtitle's may be minutes in,
    and reading half the file to find it is not worth it (None: the caller does without)."""
    for _, packet in zip(range(SEARCH_PACKETS), source.demux()):
        if packet.stream.index == index and packet.size:
            return packet
    return None


def copy_problem(input_path: str, index: int, format_name: str) -> str | None:
    """Why the output's muxer refuses stream `index` of the input as it is (None: it takes it)."""
    from engine.image_input import open_media

    with open_media(input_path) as source:
        stream = source.streams[index]
        first = _first_packet(source, index)
        return _trial(format_name, lambda out: out.add_stream_from_template(stream),
                      lambda _: [first] if first is not None else [])


@dataclass(frozen=True)
class Reencode:
    """What one audio or text-subtitle stream is re-encoded to."""

    codec: str
    sample_format: str = ""   # audio: the encoder's sample format, rate and layout
    rate: int = 0
    layout: str = ""
    bit_rate: int = 0   # lossy audio only
    header: bytes = b""  # a subtitle: the decoder's ASS header (its styles), the encoder's input
    styled: bool = False  # ASS/SSA input, whose layout mov_text cannot keep

    def describe(self) -> str:
        if self.header:
            return self.codec + (" (ASS styles beyond bold, italic and colour, and positions, are lost; "
                                 ".mkv keeps them)" if self.styled else "")
        return f"{self.codec} {self.bit_rate // 1000} kb/s" if self.bit_rate else f"{self.codec} (lossless)"

    def add_stream(self, output: av.container.OutputContainer) -> av.stream.Stream:
        if self.header:
            stream = output.add_stream(self.codec)
            stream.codec_context.subtitle_header = self.header
            return stream
        stream = output.add_stream(self.codec, rate=self.rate, layout=self.layout, format=self.sample_format)
        if self.bit_rate:
            stream.bit_rate = self.bit_rate
        return stream


def _sample_format(codec: av.Codec, source: av.AudioFormat, lossless: bool) -> str | None:
    """The encoder's format closest to the source's: the same, else one as deep (packed or planar)."""
    names = [f.name for f in codec.audio_formats or ()]
    if source.name in names:
        return source.name
    deep = source.bits > 16
    wanted = (["s32", "s32p"] if deep else ["s16", "s16p"]) if lossless else ["fltp", "flt"]
    return next((n for n in wanted + names if n in names), None)


def _rate(codec: av.Codec, rate: int) -> int:
    rates = list(codec.audio_rates or ())
    if not rates or rate in rates:
        return rate
    higher = [r for r in rates if r >= rate]
    return min(higher) if higher else max(rates)


def choose_reencode(input_path: str, index: int, format_name: str) -> Reencode | None:
    """The first re-encoding of stream `index` (audio, or text subtitles) the output's muxer
    takes (tried as the copy was), or None."""
    from engine.image_input import open_media

    with open_media(input_path) as source:
        stream = source.streams[index]
        if stream.type == "subtitle":
            return _text_reencode(source, stream, format_name)
        if stream.type != "audio":
            return None
        cc = stream.codec_context
        fmt, rate, layout = cc.format, cc.sample_rate, cc.layout.name
        decoder = av.Codec(cc.name, "r")
    lossless = decoder.lossless and not decoder.lossy
    for name in (LOSSLESS_TARGETS if lossless else (LOSSY_TARGET,)):
        try:
            codec = av.Codec(name, "w")
        except av.error.FFmpegError:
            continue
        sample_format = _sample_format(codec, fmt, lossless)
        if sample_format is None:
            continue
        channels = len(av.AudioLayout(layout).channels)
        bits = 0 if lossless else min(LOSSY_MAX_BITS, LOSSY_BITS_PER_CHANNEL * channels)
        choice = Reencode(name, sample_format, _rate(codec, rate), layout, bits)

        def silence(stream, choice=choice):
            frame = av.AudioFrame(format=choice.sample_format, layout=choice.layout,
                                  samples=stream.codec_context.frame_size or 1024)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate, frame.pts, frame.time_base = choice.rate, 0, Fraction(1, choice.rate)
            return [*stream.encode(frame), *stream.encode(None)]

        if _trial(format_name, choice.add_stream, silence) is None:
            return choice
    return None


def _text_reencode(source, stream, format_name: str) -> Reencode | None:
    """mov_text for a text subtitle stream, with its decoder's ASS header (made when the
    decoder opens: by decoding its first event, or none if it has none)."""
    cc = stream.codec_context
    if cc is None or not av.Codec(cc.name, "r").text_sub:
        return None
    first = _first_packet(source, stream.index)
    if first is not None:
        cc.decode2(first)
    header = cc.subtitle_header
    if not header:
        return None
    for target in TEXT_TARGETS:
        choice = Reencode(target, header=bytes(header), styled=cc.name in ("ass", "ssa") and target != "ass")
        if target != cc.name and _trial(format_name, choice.add_stream, lambda _: []) is None:
            return choice
    return None


class Reencoder:
    """Decodes one input stream's packets and encodes them as `choice`: `feed` and `flush` give
    the packets to mux (on `stream`, the output's)."""

    def __init__(self, source: av.stream.Stream, output: av.container.OutputContainer, choice: Reencode):
        self.source = source
        self.stream = choice.add_stream(output)


class SubtitleReencoder(Reencoder):
    """Text subtitle events decoded and encoded as mov_text or ASS, each at its own time. An
    event the decoder refuses (corrupt) is skipped and counted in `undecodable`: one broken
    line must not fail the job."""

    undecodable = 0

    def feed(self, packet: av.Packet) -> list[av.Packet]:
        try:
            events = self.source.codec_context.decode2(packet)
        except av.error.FFmpegError:
            self.undecodable += 1
            return []
        if events is None:
            return []
        encoded = self.stream.codec_context.encode_subtitle(events)
        encoded.pts = encoded.dts = packet.pts
        encoded.duration, encoded.time_base = packet.duration, packet.time_base
        encoded.stream = self.stream
        return [encoded]

    def flush(self) -> list[av.Packet]:
        return []


def reencoder(source: av.stream.Stream, output: av.container.OutputContainer, choice: Reencode) -> Reencoder:
    """The re-encoder for `source`'s kind of stream."""
    return (SubtitleReencoder if choice.header else AudioReencoder)(source, output, choice)


class AudioReencoder(Reencoder):
    """Audio frames decoded and encoded, PyAV re-chunking them to the encoder's frame size."""

    def feed(self, packet: av.Packet) -> list[av.Packet]:
        out = []
        for frame in packet.decode():
            out += self.stream.encode(frame)
        return out

    def flush(self) -> list[av.Packet]:
        out = []
        for frame in self.source.codec_context.decode(None):
            out += self.stream.encode(frame)
        return out + list(self.stream.encode(None))
