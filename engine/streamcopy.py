"""Audio, subtitle, data and attachment streams: copied packet for packet, never re-encoded.

The sink opens the input a second time and demuxes only the non-video streams, in step
with the video it writes: before a frame at time t is muxed, every copied packet up to t
goes in. Timestamps are the input's own, like the video's, so sync is whatever the input
had. Memory stays flat: packets are read as the video advances, never collected.

What describes the file rather than a stream goes too, as FFmpeg's own defaults copy it:
the container's tags (title, comment, ...), the video stream's tags (title, language) and
the chapters, which are cut where the output ends. Tags that describe the input's bytes
(its muxer, mp4 brands, mkvmerge's statistics, durations) are not: they would be wrong.

A start timecode (a QuickTime/MP4 tmcd track, or a `timecode` tag) goes on the output
video as its `timecode` tag: the mov/mp4 muxers write a tmcd track from it (counted as a
stream of the output), Matroska keeps the tag. The output's video starts where the input's
does, so the start timecode is the input's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import av

from engine.reencode import Reencode, choose_reencode, copy_problem, reencoder
from engine.image_input import open_media
from engine.timestamps import JumpLog, TimestampRepair, packet_step
from engine.video_stream import is_cover_art, main_video

COPY_TYPES = ("audio", "subtitle", "data", "attachment")
# cover art: an MP4 holds it as `covr` (JPEG, PNG, BMP), Matroska as an image attachment; the
# mov muxer writes no covr, so a .mov output cannot keep one
COVER_MIMETYPES = {"mjpeg": "image/jpeg", "png": "image/png", "bmp": "image/bmp"}
COVER_OUTPUTS = (".mp4", ".mkv")
# tags about the input file's own bytes; mkvmerge's carry a language suffix ("BPS-eng")
STALE_TAGS = {"encoder", "major_brand", "minor_version", "compatible_brands", "vendor_id", "duration",
              "bps", "number_of_frames", "number_of_bytes"}
CHAPTER_TRACK_FORMATS = ("mov", "mp4")  # these muxers write chapters as a text track of their own


def kept_tags(metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` less the tags that would be wrong in the output."""
    def stale(key: str) -> bool:
        key = key.lower()
        return key.split("-")[0] in STALE_TAGS or key.startswith("_statistics")
    return {k: v for k, v in metadata.items() if not stale(k)}


def stream_tags(metadata: dict[str, str]) -> dict[str, str]:
    """A stream's `kept_tags`, its title as a title: an MP4 track's reads back as "name"
    (the udta atom it is written to), which every muxer would write as a tag of that name."""
    tags = kept_tags(metadata)
    if "name" in tags and "title" not in tags:
        tags["title"] = tags.pop("name")
    return tags


def _tag(metadata: dict[str, str], key: str) -> str | None:
    """A tag by FFmpeg's lookup rule (case-insensitive: Matroska's read back upper-case)."""
    return next((v for k, v in metadata.items() if k.lower() == key), None)


def _is_timecode_track(stream) -> bool:
    """A QuickTime/MP4 tmcd track: data FFmpeg cannot decode, its start in a `timecode` tag."""
    return stream.type == "data" and stream.codec_context is None and _tag(stream.metadata, "timecode") is not None


def start_timecode(container, video) -> str | None:
    """The input's start timecode: the video's tag, the file's, or a timecode track's."""
    tracks = [_tag(s.metadata, "timecode") for s in container.streams if _is_timecode_track(s)]
    return (_tag(video.metadata, "timecode") if video is not None else None) \
        or _tag(container.metadata, "timecode") or next(iter(tracks), None)


def timecode_tracks(format_name: str, rate, timecode: str) -> int:
    """How many tmcd tracks the `format_name` muxer writes for a video at `rate` tagged
    `timecode`: a real (empty) write, as a timecode the muxer cannot parse at that rate is
    dropped with a warning only. The stream is x264's, whatever the input's codec: the
    output's is an encoder's, and the muxer may refuse the input's (FFV1 in .mov)."""
    import io

    buffer = io.BytesIO()
    with av.logging.Capture(True):  # the muxer's warning about a bad timecode: reported as a note
        output = av.open(buffer, mode="w", format=format_name)
        stream = output.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.metadata["timecode"] = timecode
        output.start_encoding()  # the header: closing an output with no packets writes nothing
        output.close()
    buffer.seek(0)
    with av.open(buffer) as written:
        return sum(_is_timecode_track(s) for s in written.streams)


def _is_chapter_track(container, stream) -> bool:
    """The text track a QuickTime/MP4 file with chapters keeps them in: carried as chapters."""
    if not any(n in container.format.name.split(",") for n in CHAPTER_TRACK_FORMATS):
        return False
    if stream.type == "data" and stream.codec_context is None:
        return stream.metadata.get("handler_name") in ("SubtitleHandler", "Chapters")
    # FFmpeg's mov muxer gives a video track one reference: with a timecode track too, the
    # chapter track's reference is lost, so readers (FFmpeg's among them) see a subtitle track
    # holding the chapter titles. Such a file (the engine's own, ffmpeg's) has its chapters from
    # the Nero `chpl` list; the track is known by its samples being exactly those titles.
    cc = stream.codec_context
    return (stream.type == "subtitle" and cc is not None and cc.name == "mov_text"
            and _text_samples(container.name, stream.index) == [
                ch["metadata"].get("title", "") for ch in container.chapters()])


def _text_samples(path: str, index: int, limit: int = 1000) -> list[str] | None:
    """A mov_text track's texts (a 16-bit length, then UTF-8), empty samples left out; None if unreadable."""
    texts = []
    try:
        with av.open(path) as c:
            for packet in c.demux(c.streams[index]):
                data = bytes(packet)
                if len(data) < 2:
                    continue
                size = int.from_bytes(data[:2], "big")
                if size:
                    texts.append(data[2:2 + size].decode("utf-8", "replace"))
                if len(texts) > limit:
                    return None
    except (av.error.FFmpegError, OSError, IndexError):
        return None
    return texts


@dataclass(frozen=True)
class CopyPlan:
    """Which input streams go to the output, and which cannot (with the reason the user sees)."""

    copy: list[int] = field(default_factory=list)         # input stream indices, packet copy
    attach: list[int] = field(default_factory=list)       # attachment streams, header copy
    covers: list[int] = field(default_factory=list)       # cover art (attached pictures), one packet each
    reencode: dict[int, Reencode] = field(default_factory=dict)  # audio, text subtitles the output refuses as they are
    described: list[str] = field(default_factory=list)    # for the user, one per copied stream
    skipped: list[str] = field(default_factory=list)      # "stream #2 (subrip subtitle): reason"
    file_tags: bool = False  # container and video stream tags, chapters (a video output)
    chapters: int = 0        # how many the input has
    timecode: str | None = None  # the start timecode the output video is tagged with
    timecode_track: int | None = None  # the input's tmcd track it comes from, if any
    timecode_tracks: int = 0     # tmcd tracks the output's muxer writes from that tag
    timecode_note: str = ""

    def notes(self) -> list[str]:
        out = [d if d.startswith("re-encoding ") else f"copying {d}" for d in self.described]
        if self.chapters:
            out.append(f"copying {self.chapters} chapters")
        if self.timecode_note:
            out.append(self.timecode_note)
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
    plan = CopyPlan(file_tags=muxer_codecs is not None,
                    chapters=len(container.chapters()) if muxer_codecs is not None else 0,
                    **_plan_timecode(container, video_index, muxer_codecs, output_kind))
    for stream in container.streams:
        if stream.index == video_index or (plan.chapters and _is_chapter_track(container, stream)):
            continue
        if stream.index == plan.timecode_track:
            continue  # the output's own, made from the video's tag, or said lost (plan.timecode_note)
        if _is_timecode_track(stream):
            plan.skipped.append(f"stream #{stream.index} (timecode data): another video stream's timecode "
                                f"(only the first video stream is processed)")
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
        elif stream.type == "video" and is_cover_art(stream):
            if output_kind in COVER_OUTPUTS and codec in COVER_MIMETYPES:
                plan.covers.append(stream.index)
                plan.described.append(f"{desc}: cover art")
            else:
                why = (f"{output_kind} cannot hold it (use .mp4 or .mkv to keep it)" if output_kind == ".mov"
                       else f"{output_kind} cannot hold {codec} cover art")
                plan.skipped.append(f"{desc}: cover art (an attached picture): {why}")
        elif stream.type not in COPY_TYPES:
            plan.skipped.append(f"{desc}: only the first video stream is processed")
        elif codec is None:
            plan.skipped.append(f"{desc}: its codec is unknown to FFmpeg, so it cannot be copied")
        else:
            # the muxer's list, then a real write of the first packet: the list says yes to
            # some codecs the muxer then refuses (FLAC into .mov), which failed jobs mid-run
            from engine.encoders import CONTAINERS

            refusal = None if codec not in muxer_codecs else copy_problem(container.name, stream.index,
                                                                          CONTAINERS[output_kind])
            problem = (f"{output_kind} cannot hold {codec}" if codec not in muxer_codecs else
                       None if refusal is None else
                       f"{output_kind}'s muxer refuses it as it is ({refusal.rstrip('.')})")
            if problem is None:
                plan.copy.append(stream.index)
                plan.described.append(desc)
                continue
            choice = (choose_reencode(container.name, stream.index, CONTAINERS[output_kind])
                      if stream.type == "audio" or (stream.type == "subtitle" and _is_text(codec)) else None)
            if choice is not None:  # re-encoded rather than lost
                plan.reencode[stream.index] = choice
                plan.described.append(f"re-encoding {desc} to {choice.describe()}: {problem}")
                continue
            advice = " (use .mkv to keep it)" if output_kind != ".mkv" and codec in _matroska_codecs() else ""
            plan.skipped.append(f"{desc}: {problem}{advice}")
    return plan


def _plan_timecode(container, video_index: int, muxer_codecs: set[str] | None, output_kind: str) -> dict:
    """CopyPlan's timecode fields: the start timecode kept as the output video's tag (and
    the tmcd track the mov/mp4 muxers make of it), or a note saying why it is not."""
    video = container.streams[video_index] if video_index is not None else None
    timecode = start_timecode(container, video) if video is not None else None
    if timecode is None:
        return {}
    tracks = [s for s in container.streams if _is_timecode_track(s)]
    track = next((s.index for s in tracks if _tag(s.metadata, "timecode") == timecode),
                 tracks[0].index if tracks else None)
    what = f"timecode {timecode}" + (f" (stream #{track}, a timecode track)" if track is not None else "")
    lost = f"note: not carried to the output: {what}: "
    if muxer_codecs is None:
        return {"timecode_track": track, "timecode_note": lost + f"{output_kind} cannot hold it"}
    if output_kind == ".mkv":
        how = "kept as the video's timecode tag" + (" (Matroska has no timecode track)" if track is not None else "")
        return {"timecode": timecode, "timecode_track": track, "timecode_note": f"{what}: {how}"}
    from engine.encoders import CONTAINERS

    made = timecode_tracks(CONTAINERS[output_kind], video.average_rate or video.guessed_rate or 25, timecode)
    if not made:
        return {"timecode_track": track,
                "timecode_note": lost + f"{output_kind}'s muxer refuses it at the video's frame rate"}
    how = "the timecode track is rewritten from its tag" if track is not None else "written as a timecode track"
    return {"timecode": timecode, "timecode_track": track, "timecode_tracks": made,
            "timecode_note": f"{what}: {how}"}


def _is_text(codec: str) -> bool:
    try:
        return bool(av.Codec(codec, "r").text_sub)
    except (av.error.FFmpegError, ValueError):
        return False


def _matroska_codecs() -> set[str]:
    from engine.encoders import muxer_codecs

    return muxer_codecs(".mkv")


class StreamCopier:
    """Muxes the planned streams of `input_path` into `output` as the video advances.

    `video` is the output's video stream, which gets the input video stream's tags.
    """

    def __init__(self, input_path: str, output: av.container.OutputContainer, plan: CopyPlan,
                 video: av.stream.Stream | None = None, video_jumps: JumpLog | None = None):
        self._input = open_media(input_path)
        try:
            self._set_up(input_path, output, plan, video, video_jumps)
        except BaseException:  # the input is ours to close: nothing else holds it yet
            self._input.close()
            raise

    def _set_up(self, input_path: str, output: av.container.OutputContainer, plan: CopyPlan,
                video: av.stream.Stream | None, video_jumps: JumpLog | None) -> None:
        # the video's jumps back (a concatenated input): a stream jumping at the same place is
        # placed as the video was, not continued from where it stood (engine/timestamps.py)
        self._video_jumps = video_jumps
        self._jumps_used: dict[int, int] = {}  # per stream: how many of the video's jumps it followed
        self._out: dict[int, av.stream.Stream] = {}
        self._repairs: dict[int, TimestampRepair] = {}
        self._chapters = self._input.chapters() if plan.file_tags else []
        self._chapter_tracks = 0
        if plan.file_tags:
            # a file-wide timecode is the video's (plan.timecode): the mov/mp4 muxers give one to every video stream
            tags = kept_tags(self._input.metadata)
            output.metadata.update({k: v for k, v in tags.items() if k.lower() != "timecode"})
            if video is not None:
                tags = stream_tags(main_video(self._input).metadata)
                tags = {k: v for k, v in tags.items() if k.lower() != "timecode"}
                if plan.timecode is not None:  # the mov/mp4 muxers make the tmcd track of it
                    tags["timecode"] = plan.timecode
                video.metadata.update(tags)
        self._reencoders = {}
        for index in sorted([*plan.copy, *plan.reencode]):  # the input's order, copied or re-encoded
            src = self._input.streams[index]
            if index in plan.reencode:
                made = self._reencoders[index] = reencoder(src, output, plan.reencode[index])
                out = made.stream
            else:
                out = output.add_stream_from_template(src)
            out.metadata.update(stream_tags(src.metadata))  # language, title, handler name
            try:
                out.disposition = src.disposition  # default / forced / hearing-impaired flags
            except (AttributeError, ValueError):
                pass  # older PyAV cannot set it; the stream itself is still copied
            self._out[index] = out
            # broken timestamps: the rule of engine/timestamps.py, the one the video follows
            self._repairs[index] = TimestampRepair(packet_step(src), what=f"{src.type} packet",
                                                   strict=src.type == "audio")
        for index in plan.attach:  # written with the header, no packets
            src = self._input.streams[index]
            output.add_attachment(name=src.name, mimetype=src.mimetype, data=bytes(src.data))
        self._covers = []  # (packet, output stream) for an MP4, muxed before the trailer
        for index in plan.covers:
            self._add_cover(input_path, index, output)
        self._attachments = len(plan.attach) + len(plan.covers)
        self._timecode_tracks = plan.timecode_tracks if plan.file_tags and video is not None else 0
        self._output = output
        streams = [self._input.streams[i] for i in [*plan.copy, *plan.reencode]]
        self._packets = self._input.demux(streams) if streams else iter(())
        self._next: av.Packet | None = None
        self._next_placed = False  # `_next`'s timestamps repaired (it may wait for the video's jump)
        self._done = not streams
        # audio an MP4/MOV edit list hides (packet.is_discard): players never play it, and a
        # muxer without edit lists (Matroska) would; only the last such packet before the
        # shown ones is copied, the decoder's pre-roll (AAC's priming is one)
        self._preroll: dict[int, av.Packet] = {}
        self._ready: list[av.Packet] = []
        self._hidden: dict[int, int] = {}
        self.packets = 0

    def _add_cover(self, input_path: str, index: int, output: av.container.OutputContainer) -> None:
        """Cover art: its one packet, read by an open of its own (the copier's demuxer must
        stay at the start), into an MP4 cover stream or a Matroska image attachment."""
        with open_media(input_path) as side:
            src = side.streams[index]
            packet = next((p for p in side.demux(src) if p.size), None)
            if packet is None:
                return
            codec = src.codec_context.name
            if output.format.name == "matroska":
                name = src.metadata.get("filename") or f"cover.{'jpg' if codec == 'mjpeg' else codec}"
                output.add_attachment(name=name, mimetype=src.metadata.get("mimetype") or COVER_MIMETYPES[codec],
                                      data=bytes(packet))
            else:
                out = output.add_stream_from_template(src)
                out.disposition = av.stream.Disposition.attached_pic
                self._covers.append((packet, out))

    @property
    def stream_count(self) -> int:
        """Streams besides the video that the output holds (after `finish`: its chapter track too)."""
        return len(self._out) + self._attachments + self._chapter_tracks + self._timecode_tracks

    def _time(self, packet: av.Packet) -> float:
        ts = packet.dts if packet.dts is not None else packet.pts
        return float(ts * packet.time_base) if ts is not None else -math.inf

    def advance(self, until_s: float, final: bool = False) -> None:
        """Mux every copied packet whose time is at or before `until_s`. `final`: the video is
        all written (no jump of its own is still to come)."""
        while not self._done:
            if self._next is None:
                self._next = self._read()
                if self._next is None:
                    self._done = True
                    return
                self._next_placed = False
            if not self._next_placed:
                if not self._repair(self._next, final):
                    return  # a jump back the video has not reached yet: wait for its frame
                self._next_placed = True
            if self._next.dts is None and self._next.pts is None:  # dropped: overlapped the part before
                self._next = None
                continue
            if self._time(self._next) > until_s:
                return
            packet, self._next = self._next, None
            reencoder = self._reencoders.get(packet.stream.index)
            if reencoder is not None:
                self._mux_encoded(reencoder.feed(packet))
                continue
            packet.stream = self._out[packet.stream.index]
            self._output.mux(packet)
            self.packets += 1

    def _read(self) -> av.Packet | None:
        """The next packet to copy, in the input's order, less the hidden audio (`_preroll`)."""
        while not self._ready:
            packet = next(self._packets, None)
            if packet is None:  # hidden audio after the last shown: the edit ends before it
                for index in self._preroll:
                    self._hidden[index] = self._hidden.get(index, 0) + 1
                self._preroll.clear()
                return None
            if packet.size == 0:  # demuxer's end-of-stream marker, nothing to copy
                continue
            index = packet.stream.index
            if packet.is_discard and packet.stream.type == "audio":
                if index in self._preroll:
                    self._hidden[index] = self._hidden.get(index, 0) + 1
                self._preroll[index] = packet
                continue
            if index in self._preroll:
                self._ready.append(self._preroll.pop(index))
            self._ready.append(packet)
        return self._ready.pop(0)

    def _label(self, index: int) -> str:
        """"#1 audio": a copied stream as the notes and the report name it (from its repair:
        the input's streams are gone once `finish` has closed it)."""
        return f"#{index} {self._repairs[index].what.split()[0]}"

    @property
    def hidden(self) -> dict[str, int]:
        """Audio packets not copied because the input's edit list hides them, per stream."""
        return {self._label(i): n for i, n in self._hidden.items()}

    def _mux_encoded(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._output.mux(packet)
            self.packets += 1

    def _repair(self, packet: av.Packet, final: bool) -> bool:
        """Missing or non-increasing dts: regenerated, pts moved with it (see engine/timestamps.py).
        False: the packet jumps back where the video has not been decoded yet (ask again later).
        A packet the repair drops is left with no timestamps."""
        index = packet.stream.index
        repair = self._repairs[index]
        dts = packet.dts if packet.dts is not None else packet.pts
        jump_to = None
        if self._video_jumps is not None and repair.jumps_back(dts):
            tb = Fraction(packet.time_base)
            before, after = repair.last_input * tb, dts * tb
            start = self._jumps_used.get(index, 0)  # the video's jumps this stream has not followed yet
            found = self._video_jumps.match(before, after, start)
            if found is None and not final and len(self._video_jumps.jumps) <= start:
                return False
            if found is not None:
                self._jumps_used[index] = found + 1
                jump = self._video_jumps.jumps[found]
                jump_to = round((jump.out + after - jump.after) / tb)
        fixed = repair(dts, packet.duration, jump_to)
        if fixed is None:
            packet.pts = packet.dts = None
        elif fixed != dts:
            shift = fixed - dts if dts is not None else 0
            packet.pts = packet.pts + shift if packet.pts is not None and dts is not None else fixed
            packet.dts = fixed
        return True

    @property
    def dropped(self) -> dict[str, int]:
        """Packets dropped at a jump back because they overlapped the part before, per stream."""
        return {self._label(i): r.dropped for i, r in self._repairs.items() if r.dropped}

    @property
    def repaired(self) -> dict[str, int]:
        """Packets whose timestamps were regenerated, per stream ("#1 audio": 12)."""
        return {self._label(i): r.repaired for i, r in self._repairs.items() if r.repaired}

    @property
    def undecodable(self) -> dict[str, int]:
        """Subtitle events a re-encode skipped because they could not be decoded, per stream."""
        return {self._label(i): r.undecodable for i, r in self._reencoders.items() if getattr(r, "undecodable", 0)}

    def notes(self) -> list[str]:
        """What the user must hear about the copy (after `finish`): repaired timestamps, and
        packets not carried."""
        out = []
        if self.repaired:
            out.append("note: repaired the timestamps of " + ", ".join(
                f"{n} packets of stream {name}" for name, n in self.repaired.items())
                + " by the video's rule (see --timestamps)")
        out += [f"note: not carried to the output: {n} packet(s) of stream {name} that overlapped the part "
                f"before it where the input's timestamps go back (each part is placed where its video is: "
                f"the streams stay in sync)" for name, n in self.dropped.items()]
        out += [f"note: not carried to the output: {n} packet(s) of stream {name} that the input's edit "
                f"list hides (players never play them)" for name, n in self.hidden.items()]
        out += [f"note: not carried to the output: {n} event(s) of stream {name} that could not be "
                f"decoded (corrupt)" for name, n in self.undecodable.items()]
        return out

    def finish(self, until_s: float = math.inf) -> None:
        self.advance(until_s, final=True)
        for reencoder in self._reencoders.values():  # what the decoder and encoder still hold
            self._mux_encoded(reencoder.flush())
        for packet, out in self._covers:  # the mov muxer keeps it and writes covr with the trailer
            packet.stream = out
            self._output.mux(packet)
        self._write_chapters(until_s)
        self.close()

    def _write_chapters(self, until_s: float) -> None:
        """The input's chapters up to where the output ends (every muxer here takes them
        before its trailer, so the end is known)."""
        kept = []
        for chapter in self._chapters:
            tb = chapter["time_base"]
            if chapter["start"] * tb >= until_s:
                continue
            end = chapter["end"] if chapter["end"] * tb <= until_s else math.floor(until_s / tb)
            kept.append({**chapter, "id": len(kept) + 1, "end": end})
        if kept:
            self._output.set_chapters(kept)
            self._chapter_tracks = int(self._output.format.name in CHAPTER_TRACK_FORMATS)

    def close(self) -> None:
        self._done = True
        self._input.close()
