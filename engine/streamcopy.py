"""Audio, subtitle, data and attachment streams: copied packet for packet, never re-encoded.

The sink opens the input a second time and demuxes only the non-video streams, in step
with the video it writes: before a frame at time t is muxed, every copied packet up to t
goes in. Timestamps are the input's own, like the video's, so sync is whatever the input
had. Memory stays flat: packets are read as the video advances, never collected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import av

COPY_TYPES = ("audio", "subtitle", "data", "attachment")


@dataclass(frozen=True)
class CopyPlan:
    """Which input streams go to the output, and which cannot (with the reason the user sees)."""

    copy: list[int] = field(default_factory=list)         # input stream indices, packet copy
    attach: list[int] = field(default_factory=list)       # attachment streams, header copy
    described: list[str] = field(default_factory=list)    # for the user, one per copied stream
    skipped: list[str] = field(default_factory=list)      # "stream #2 (subrip subtitle): reason"

    def notes(self) -> list[str]:
        out = [f"copying {d}" for d in self.described]
        out += [f"note: not carried to the output: {s}" for s in self.skipped]
        return out


def _describe(stream) -> str:
    cc = stream.codec_context
    codec = cc.name if cc is not None else "unknown"
    lang = stream.metadata.get("language")
    return f"stream #{stream.index} ({codec} {stream.type}{', ' + lang if lang else ''})"


def plan_copy(container: av.container.InputContainer, video_index: int,
              muxer_codecs: set[str] | None, output_kind: str) -> CopyPlan:
    """Decide per stream. `muxer_codecs` is what the output container can hold (None for images)."""
    plan = CopyPlan()
    for stream in container.streams:
        if stream.index == video_index:
            continue
        desc = _describe(stream)
        cc = stream.codec_context
        codec = cc.name if cc is not None else None
        if muxer_codecs is None:
            plan.skipped.append(f"{desc}: {output_kind} cannot hold it")
        elif stream.type == "attachment":  # fonts for styled subtitles: Matroska only
            if output_kind == ".mkv":
                plan.attach.append(stream.index)
                plan.described.append(f"stream #{stream.index} (attachment {stream.name})")
            else:
                plan.skipped.append(f"stream #{stream.index} (attachment {stream.name}): "
                                    f"{output_kind} cannot hold attachments (use .mkv to keep it)")
        elif stream.type not in COPY_TYPES:
            plan.skipped.append(f"{desc}: only the first video stream is processed")
        elif codec is None or codec not in muxer_codecs:
            plan.skipped.append(f"{desc}: {output_kind} cannot hold {codec or 'this codec'} "
                                f"(use .mkv to keep it)")
        else:
            plan.copy.append(stream.index)
            plan.described.append(desc)
    return plan


class StreamCopier:
    """Muxes the planned streams of `input_path` into `output` as the video advances."""

    def __init__(self, input_path: str, output: av.container.OutputContainer, plan: CopyPlan):
        self._input = av.open(input_path)
        self._out: dict[int, av.stream.Stream] = {}
        for index in plan.copy:
            src = self._input.streams[index]
            out = output.add_stream_from_template(src)
            out.metadata.update(src.metadata)  # language, title, handler name
            try:
                out.disposition = src.disposition  # default / forced / hearing-impaired flags
            except (AttributeError, ValueError):
                pass  # older PyAV cannot set it; the stream itself is still copied
            self._out[index] = out
        for index in plan.attach:  # written with the header, no packets
            src = self._input.streams[index]
            output.add_attachment(name=src.name, mimetype=src.mimetype, data=bytes(src.data))
        self._attachments = len(plan.attach)
        self._output = output
        streams = [self._input.streams[i] for i in plan.copy]
        self._packets = self._input.demux(streams) if streams else iter(())
        self._next: av.Packet | None = None
        self._done = not streams
        self.packets = 0

    @property
    def stream_count(self) -> int:
        return len(self._out) + self._attachments

    def _time(self, packet: av.Packet) -> float:
        ts = packet.dts if packet.dts is not None else packet.pts
        return float(ts * packet.time_base) if ts is not None else -math.inf

    def advance(self, until_s: float) -> None:
        """Mux every copied packet whose time is at or before `until_s`."""
        while not self._done:
            if self._next is None:
                self._next = next(self._packets, None)
                if self._next is None:
                    self._done = True
                    return
                if self._next.size == 0:  # demuxer's end-of-stream marker, nothing to copy
                    self._next = None
                    continue
            if self._time(self._next) > until_s:
                return
            packet, self._next = self._next, None
            packet.stream = self._out[packet.stream.index]
            self._output.mux(packet)
            self.packets += 1

    def finish(self, until_s: float = math.inf) -> None:
        self.advance(until_s)
        self.close()

    def close(self) -> None:
        self._done = True
        self._input.close()
