"""Audio, subtitle and other streams: copied packet for packet, in sync, never dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import MEDIA, decoded_indices, run_engine
from make_clip import add_side_streams, make_clip

FRAME_S = 1001 / 24000
SRT = "1\n00:00:00,500 --> 00:00:01,200\nHello\n\n2\n00:00:01,300 --> 00:00:01,900\nWorld\n"


def _mux_in_time_order(out, packets) -> None:
    """Mux (packet, output stream) pairs made stream by stream, interleaved by time."""
    packets.sort(key=lambda item: float(item[0].pts * item[0].time_base))
    for packet, target in packets:
        packet.stream = target
        out.mux(packet)


def span(path, index):
    """(first packet time, end of last packet, packet count) of stream `index`, from packets."""
    with av.open(str(path)) as c:
        stream = c.streams[index]
        times = [(float(p.pts * p.time_base), float((p.pts + (p.duration or 0)) * p.time_base))
                 for p in c.demux(stream) if p.pts is not None]
    return min(t[0] for t in times), max(t[1] for t in times), len(times)


def streams(path):
    with av.open(str(path)) as c:
        return [(s.type, s.metadata.get("language")) for s in c.streams]


@pytest.fixture(scope="module")
def multi(clip, clip_dir):
    video = clip(frames=48)
    return add_side_streams(video, clip_dir / "multi.mkv", [("eng", 0.0, 2.0), ("jpn", 0.5, 3.0)], SRT,
                            font=b"not really a font" * 10)


def test_two_audio_tracks_and_subtitles_survive_in_mkv(multi, tmp_path):
    out = tmp_path / "out.mkv"
    r = run_engine("stream", multi, out)
    assert r.returncode == 0, r.stderr
    assert streams(out) == streams(multi)
    assert [t for t, _ in streams(out)] == ["video", "audio", "audio", "subtitle", "attachment"]
    with av.open(str(out)) as c:
        font = c.streams[4]
        assert (font.name, bytes(font.data)) == ("font.ttf", b"not really a font" * 10)
    for index in (1, 2, 3):
        start_in, end_in, n_in = span(multi, index)
        start_out, end_out, n_out = span(out, index)
        assert n_out == n_in
        assert start_out == pytest.approx(start_in, abs=FRAME_S)
        assert end_out == pytest.approx(end_in, abs=FRAME_S)
    assert decoded_indices(out) == list(range(48))


def subtitle_events(path) -> list[tuple[float, float, str]]:
    """(start, end, text) of every subtitle event, the empty gap samples of mov_text left out."""
    events = []
    with av.open(str(path)) as c:
        stream = c.streams.subtitles[0]
        for packet in c.demux(stream):
            for sub in packet.decode() if packet.size else []:
                text = sub.ass.decode().split(",", 8)[-1]
                start = round(float(packet.pts * packet.time_base), 3)
                events.append((start, round(start + float(packet.duration * packet.time_base), 3), text))
    return events


def test_mp4_turns_text_subtitles_into_mov_text_and_says_what_it_cannot_hold(multi, tmp_path):
    out = tmp_path / "out.mp4"
    r = run_engine("stream", multi, out)
    assert r.returncode == 0, r.stderr
    assert [t for t, _ in streams(out)] == ["video", "audio", "audio", "subtitle"]
    # was: "not carried to the output: stream #3 ... (use .mkv to keep it)"
    assert "re-encoding stream #3 (srt subtitle) to mov_text: .mp4 cannot hold srt" in r.stderr
    assert subtitle_events(out) == subtitle_events(multi) and len(subtitle_events(out)) >= 2
    assert "stream #4 (attachment font.ttf): .mp4 cannot hold attachments" in r.stderr


def test_audio_longer_than_video_is_kept_whole(clip, clip_dir, tmp_path):
    src = add_side_streams(clip(frames=24), clip_dir / "long-audio.mkv", [("eng", 0.0, 3.0)])
    out = tmp_path / "out.mkv"
    assert run_engine("stream", src, out, "--quiet").returncode == 0
    assert span(out, 1)[1] == pytest.approx(span(src, 1)[1], abs=FRAME_S)
    assert span(out, 1)[1] > 2.9


def test_frame_limit_cuts_audio_where_the_video_ends(multi, tmp_path):
    out = tmp_path / "out.mkv"
    assert run_engine("stream", multi, out, "--frames", "12", "--quiet").returncode == 0
    _, video_end, frames = span(out, 0)
    _, audio_end, _ = span(out, 1)
    assert frames == 12
    assert audio_end == pytest.approx(12 * FRAME_S, abs=FRAME_S)


@pytest.mark.parametrize("name", ["anime-320x240.mp4", "anime-1080p.mp4"])
def test_real_clip_audio_in_sync(tmp_path, name):
    src = MEDIA / name
    out = tmp_path / "out.mp4"
    assert run_engine("stream", src, out, "--preset", "ultrafast", "--quiet").returncode == 0
    for index in (0, 1):
        start_in, end_in, n_in = span(src, index)
        start_out, end_out, n_out = span(out, index)
        assert n_out == n_in
        assert (start_out, end_out) == pytest.approx((start_in, end_in), abs=FRAME_S)


def test_image_sequence_says_audio_is_not_written(tmp_path):
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", tmp_path / "f" / "%04d.png", "--frames", "3")
    assert r.returncode == 0, r.stderr
    assert "not carried to the output: stream #1 (aac audio" in r.stderr
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["0001.png", "0002.png", "0003.png"]


def test_vfr_video_with_offset_audio_stays_in_sync(clip, clip_dir, tmp_path):
    pts = (0, 40, 80, 150, 190, 300, 333, 366, 500, 520, 540, 700)
    video = clip(frames=len(pts), ext=".mkv", pts_ms=pts)
    src = add_side_streams(video, clip_dir / "vfr-audio.mkv", [("eng", 0.25, 0.5)])
    out = tmp_path / "out.mp4"
    assert run_engine("stream", src, out, "--quiet", "--pipeline", "resize:scale=1").returncode == 0
    assert span(out, 1)[:2] == pytest.approx(span(src, 1)[:2], abs=FRAME_S)
    assert span(out, 0)[0] == pytest.approx(0.0, abs=1e-6)


def with_chapters(src, path, fmt, timecode=None):
    """`src`'s video remuxed into `path` with a title, a video track title and 4 chapters of 0.5 s."""
    from fractions import Fraction

    with av.open(str(src)) as inp, av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream_from_template(inp.streams.video[0])
        out.metadata.update({"title": "Episode 7", "comment": "kept"})
        video.metadata.update({"title": "Main video", "language": "jpn"})
        if timecode:
            video.metadata["timecode"] = timecode
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = video
                out.mux(packet)
        out.set_chapters([{"id": i + 1, "start": 500 * i, "end": 500 * (i + 1), "time_base": Fraction(1, 1000),
                           "metadata": {"title": f"Part {i}"}} for i in range(4)])
    return path


def file_tags(path):
    with av.open(str(path)) as c:
        chapters = [(round(float(ch["start"] * ch["time_base"]), 3), round(float(ch["end"] * ch["time_base"]), 3),
                     ch["metadata"].get("title")) for ch in c.chapters()]
        video = c.streams.video[0].metadata
        return ({k.lower(): v for k, v in c.metadata.items()}, video.get("title") or video.get("name"),
                video.get("language"), chapters, len(c.streams))


@pytest.mark.parametrize("src_ext,fmt", [(".mp4", "mp4"), (".mkv", "matroska")])
@pytest.mark.parametrize("out_ext", [".mp4", ".mkv", ".mov"])
def test_title_tags_and_chapters_are_kept(clip, tmp_path, src_ext, fmt, out_ext):
    src = with_chapters(clip(frames=48, fps=24), tmp_path / f"in{src_ext}", fmt)
    out = tmp_path / f"out{out_ext}"
    r = run_engine("stream", src, out)
    assert r.returncode == 0, r.stderr
    assert "copying 4 chapters" in r.stderr
    assert "not carried" not in r.stderr  # an MP4's chapter track is its chapters, not a lost stream
    tags, title, language, chapters, count = file_tags(out)
    assert (tags["title"], tags["comment"], title, language) == ("Episode 7", "kept", "Main video", "jpn")
    assert chapters == [(0.5 * i, 0.5 * (i + 1), f"Part {i}") for i in range(4)]
    assert count == file_tags(src)[4] - (src_ext != ".mkv") + (out_ext != ".mkv")  # the chapter track
    assert "encoder" not in tags or tags["encoder"].startswith("Lavf")  # the output's muxer, not a copy
    assert not {"major_brand", "duration"} & {k for k in tags if out_ext == ".mkv"}


@pytest.mark.parametrize("out_ext", [".mkv", ".mp4"])
def test_an_mp4s_unreferenced_chapter_track_is_its_chapters_not_a_subtitle(clip, tmp_path, out_ext):
    """FFmpeg's mov muxer drops the chapter track's reference when it writes a timecode track
    too (one reference per video track), so the titles' track reads back as a mov_text subtitle:
    it was copied as one beside the chapters (an ASS track of the titles in .mkv)."""
    src = with_chapters(clip(frames=48, fps=24), tmp_path / "in.mp4", "mp4", timecode="01:00:00:00")
    with av.open(str(src)) as c:
        assert [s.type for s in c.streams].count("subtitle") == 1  # the muxer's limit, as described
    out = tmp_path / f"out{out_ext}"
    r = run_engine("stream", src, out, "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    assert "copying 4 chapters" in r.stderr and "subtitle" not in r.stderr
    with av.open(str(out)) as c:
        assert len(c.chapters()) == 4
        # the .mp4 gets the muxer's own (unreferenced) titles' track again, no copy besides it
        assert [s.type for s in c.streams].count("subtitle") == (out_ext == ".mp4")


def test_chapters_end_where_the_video_is_cut(clip, tmp_path):
    src = with_chapters(clip(frames=48, fps=24), tmp_path / "in.mkv", "matroska")
    out = tmp_path / "out.mkv"
    assert run_engine("stream", src, out, "--frames", "30").returncode == 0  # 1.25 s
    assert file_tags(out)[3] == [(0.0, 0.5, "Part 0"), (0.5, 1.0, "Part 1"), (1.0, 1.25, "Part 2")]


def test_a_resumed_job_keeps_tags_and_chapters_like_a_plain_one(tmp_path):
    from make_clip import make_clip

    video = make_clip(tmp_path / "video.mp4", 48, fps=24, options={"g": "12"})  # 4 segments of 12
    src = with_chapters(video, tmp_path / "in.mkv", "matroska")
    plain, resumed = tmp_path / "plain.mp4", tmp_path / "resumed.mp4"
    assert run_engine("stream", src, plain).returncode == 0
    r = run_engine("stream", src, resumed, "--resume", "--segment", "12f")
    assert r.returncode == 0, r.stderr
    (tags, *rest), (plain_tags, *plain_rest) = file_tags(resumed), file_tags(plain)
    assert rest == plain_rest and len(rest[2]) == 4
    plain_tags.pop("encoder")  # the join writes bit-exact files: no muxer version
    assert tags == plain_tags


def test_a_stream_mkv_cannot_hold_gets_no_advice_to_use_mkv():
    from engine.streamcopy import plan_copy

    class Stream:
        def __init__(self, index, kind, codec):
            self.index, self.type, self.metadata = index, kind, {}
            self.codec_context = type("cc", (), {"name": codec})() if codec else None

    class Container:
        format = type("f", (), {"name": "matroska,webm"})()
        metadata: dict = {}
        # (audio and text subtitles the output cannot hold are re-encoded: the advice is for the others)
        streams = [Stream(0, "video", "h264"), Stream(1, "data", None), Stream(2, "subtitle", "pgssub")]

        def chapters(self):
            return []

    for ext, codecs in ((".mkv", {"h264", "aac"}), (".mp4", {"h264", "aac"})):
        notes = plan_copy(Container(), 0, codecs, ext).notes()
        assert any("stream #1" in n and "unknown to FFmpeg" in n and "use .mkv" not in n for n in notes)
        advice = [n for n in notes if "stream #2" in n][0]
        assert ("use .mkv" in advice) == (ext != ".mkv")  # mkv takes PGS; said only where it helps


def with_cover(video: Path, path: Path, codec: str = "png") -> np.ndarray:
    """`video` remuxed into `path` with a cover (an attached picture, as MP4 `covr`); the cover's pixels."""
    art = np.zeros((32, 32, 3), np.uint8)
    art[:, :16] = (200, 40, 90)
    with av.open(str(video)) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        cover = out.add_stream(codec, rate=1)
        cover.width, cover.height = 32, 32
        cover.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(art, format="rgb24").reformat(format=cover.pix_fmt)
        packets = [*cover.encode(picture), *cover.encode(None)]
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
        for packet in packets:
            packet.stream = cover
            out.mux(packet)
    return art


def cover_of(path: Path) -> np.ndarray | None:
    with av.open(str(path)) as c:
        covers = [s for s in c.streams.video if s.disposition & av.stream.Disposition.attached_pic]
        return next(iter(c.decode(covers[0]))).to_ndarray(format="rgb24") if covers else None


@pytest.mark.parametrize("codec", ["png", "mjpeg"])
def test_cover_art_is_carried_into_mp4_and_mkv_and_said_lost_in_mov(clip, tmp_path, codec):
    src = tmp_path / "with-cover.mp4"
    art = with_cover(clip(frames=6), src, codec)
    for ext in ("mp4", "mkv"):
        out = tmp_path / f"out.{ext}"
        r = run_engine("stream", src, out)
        assert r.returncode == 0, r.stderr
        assert f"copying stream #1 ({codec} video): cover art" in r.stderr
        assert decoded_indices(out) == list(range(6))  # the video, not the cover
        assert np.abs(cover_of(out).astype(float) - art).mean() < (1 if codec == "png" else 6)
        again = tmp_path / f"again.{ext}"  # and back out of the output (Matroska: an image attachment)
        assert run_engine("stream", out, again).returncode == 0
        assert np.array_equal(cover_of(again), cover_of(out))
    r = run_engine("stream", src, tmp_path / "out.mov")
    assert r.returncode == 0, r.stderr
    assert "cover art (an attached picture): .mov cannot hold it (use .mp4 or .mkv to keep it)" in r.stderr
    assert cover_of(tmp_path / "out.mov") is None


def test_resume_joins_keep_the_cover(tmp_path):
    src = tmp_path / "with-cover.mp4"
    art = with_cover(make_clip(tmp_path / "v.mp4", 24, options={"g": "8"}), src)
    out = tmp_path / "out.mp4"
    r = run_engine("stream", src, out, "--resume", "--segment", "8f", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["total"] == 3
    assert np.array_equal(cover_of(out), art) and decoded_indices(out) == list(range(24))


def test_the_video_is_the_first_video_stream_that_is_not_cover_art(tmp_path):
    from types import SimpleNamespace

    from engine.video_stream import main_video

    # FFmpeg lists a cover met before the tracks first: streams.video[0] was the still
    cover = SimpleNamespace(index=0, disposition=av.stream.Disposition.attached_pic)
    video = SimpleNamespace(index=1, disposition=av.stream.Disposition.default)
    assert main_video(SimpleNamespace(streams=SimpleNamespace(video=[cover, video]))) is video
    assert main_video(SimpleNamespace(streams=SimpleNamespace(video=[cover]))) is None
    song = tmp_path / "song.m4a"  # audio with a cover: not a one-frame video
    with av.open(str(song), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=44100)
        art = out.add_stream("png", rate=1)
        art.width, art.height, art.pix_fmt = 32, 32, "rgb24"
        art.disposition = av.stream.Disposition.attached_pic
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 44100
        packets = [*audio.encode(samples), *audio.encode(None)]
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        packets += [*art.encode(picture), *art.encode(None)]
        for packet in packets:
            out.mux(packet)
    r = run_engine("stream", song, tmp_path / "out.mp4")
    assert r.returncode == 2 and "input has no video stream (only cover art)" in r.stderr


def with_audio(video: Path, path: Path, codec: str, layout: str = "stereo", start_s: float = 0.25) -> None:
    """`video` remuxed into Matroska `path` with a 1 s 440 Hz tone in `codec`, starting at `start_s`."""
    rate = 48000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440 * t)
    deep = codec == "pcm_s24le"
    with av.open(str(video)) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        audio = out.add_stream(codec, rate=rate, layout=layout)
        fmt = audio.codec_context.format.name
        packets = [(p, stream) for p in inp.demux(inp.streams.video[0]) if p.size]
        for start in range(0, rate, 960):
            chunk = tone[start:start + 960]
            if fmt.startswith("flt"):
                samples = chunk.astype(np.float32)
            else:
                samples = (chunk * (2 ** 30 if deep or fmt.startswith("s32") else 2 ** 14)).astype(
                    np.int32 if fmt.startswith("s32") else np.int16)
            channels = len(av.AudioLayout(layout).channels)
            data = np.tile(samples, (channels, 1)) if fmt.endswith("p") else np.repeat(samples, channels)[None]
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, start + int(start_s * rate)
            packets += [(p, audio) for p in audio.encode(frame)]
        packets += [(p, audio) for p in audio.encode(None)]
        _mux_in_time_order(out, packets)


def decoded_audio(path: Path) -> tuple[float, np.ndarray]:
    """The first audio frame's time and every sample, as int32 (s16 scaled up) or float."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        frames = list(c.decode(stream))
    first = float(frames[0].pts * frames[0].time_base)
    arrays = []
    for f in frames:
        a = f.to_ndarray()
        a = a.reshape(-1, len(f.layout.channels)).T if not f.format.is_planar else a
        arrays.append(a.astype(np.int64) << 16 if a.dtype == np.int16 else a)
    return first, np.concatenate(arrays, axis=1)


@pytest.mark.parametrize("codec, ext, target", [("flac", "mov", "alac"), ("pcm_s24le", "mp4", "flac")])
def test_lossless_audio_a_container_refuses_is_reencoded_losslessly_in_sync(clip, tmp_path, codec, ext, target):
    """FFmpeg lists FLAC as a codec .mov holds, and Matroska's PCM for .mp4, yet their muxers
    refuse them when written: the job failed a few frames in ("Invalid argument")."""
    src = tmp_path / "in.mkv"
    with_audio(clip(frames=24), src, codec)
    out = tmp_path / f"out.{ext}"
    r = run_engine("stream", src, out, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert f"re-encoding stream #1 ({codec} audio) to {target} (lossless): .{ext}'s muxer refuses it" in r.stderr
    (t_in, a_in), (t_out, a_out) = decoded_audio(src), decoded_audio(out)
    assert abs(t_out - t_in) < 1e-3  # in sync: the input's start
    assert a_out.shape == a_in.shape and np.array_equal(a_out, a_in)  # every sample, bit for bit
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == target
    assert decoded_indices(out) == list(range(24))


def test_lossy_audio_a_container_refuses_becomes_aac_in_sync(clip, tmp_path):
    src = tmp_path / "in.mkv"
    with_audio(clip(frames=24), src, "libopus")
    out = tmp_path / "out.mov"
    r = run_engine("stream", src, out)
    assert r.returncode == 0, r.stderr
    assert "re-encoding stream #1 (opus audio) to aac 256 kb/s: .mov's muxer refuses it" in r.stderr
    (t_in, a_in), (t_out, a_out) = decoded_audio(src), decoded_audio(out)
    # AAC starts a frame of priming early (the container says so); the tone's onset is in place
    onset_in = t_in + np.argmax(np.abs(a_in[0]) > 0.1) / 48000
    onset_out = t_out + np.argmax(np.abs(a_out[0]) > 0.1) / 48000
    assert abs(onset_out - onset_in) < 0.002, (onset_in, onset_out)
    assert abs(a_out.shape[1] - a_in.shape[1]) <= 2048  # the whole tone (AAC pads to whole frames)


def test_resume_join_reencodes_too(clip, tmp_path):
    src = tmp_path / "in.mkv"
    with_audio(make_clip(tmp_path / "v.mp4", 24, options={"g": "8"}), src, "flac")
    out = tmp_path / "out.mov"
    r = run_engine("stream", src, out, "--resume", "--segment", "8f")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(decoded_audio(out)[1], decoded_audio(src)[1])


def with_timecode(video: Path, path: Path, timecode: str = "01:00:00:00") -> Path:
    """`video` remuxed into `path` (.mov/.mp4) with a start timecode: FFmpeg writes a tmcd track."""
    with av.open(str(video)) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.codec_context.framerate = inp.streams.video[0].average_rate
        stream.metadata["timecode"] = timecode
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    return path


def timecode_of(path: Path) -> tuple[str | None, int]:
    """The output video's start timecode tag and how many timecode (tmcd) tracks the file has."""
    with av.open(str(path)) as c:
        tags = {k.lower(): v for k, v in c.streams.video[0].metadata.items()}
        return tags.get("timecode"), sum(s.type == "data" and "timecode" in s.metadata for s in c.streams)


@pytest.mark.parametrize("src_ext", [".mov", ".mp4"])
@pytest.mark.parametrize("out_ext", [".mov", ".mp4", ".mkv"])
def test_a_timecode_track_is_kept(clip, tmp_path, src_ext, out_ext):
    """The tmcd track failed the output check ("2 streams in the file, 1 expected")."""
    src = with_timecode(clip(frames=24, fps=24), tmp_path / f"in{src_ext}")
    assert timecode_of(src) == ("01:00:00:00", 1)
    out = tmp_path / f"out{out_ext}"
    r = run_engine("stream", src, out, "--frames", "12")
    assert r.returncode == 0, r.stderr
    assert "unknown" not in r.stderr and "not carried" not in r.stderr
    how = "kept as the video's timecode tag" if out_ext == ".mkv" else "the timecode track is rewritten from its tag"
    assert f"timecode 01:00:00:00 (stream #1, a timecode track): {how}" in r.stderr
    assert timecode_of(out) == ("01:00:00:00", int(out_ext != ".mkv"))
    assert decoded_indices(out) == list(range(12))


def test_resume_gives_the_output_the_start_timecode_once(tmp_path):
    src = with_timecode(make_clip(tmp_path / "v.mp4", 24, fps=24, options={"g": "8"}), tmp_path / "in.mov",
                        "10:00:00:00")
    out = tmp_path / "out.mov"
    r = run_engine("stream", src, out, "--resume", "--segment", "8f")
    assert r.returncode == 0, r.stderr
    assert timecode_of(out) == ("10:00:00:00", 1)  # the input's start, not each segment's
    assert decoded_indices(out) == list(range(24))


def with_two_audio_tracks(video: Path, path: Path) -> Path:
    """`video` remuxed into Matroska `path` with Opus (jpn, default), then AAC (eng, not default)."""
    rate = 48000
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)).astype(np.float32)
    with av.open(str(video)) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        packets = [(p, stream) for p in inp.demux(inp.streams.video[0]) if p.size]
        for codec, lang, disposition in (("libopus", "jpn", av.stream.Disposition.default), ("aac", "eng", 0)):
            audio = out.add_stream(codec, rate=rate, layout="stereo")
            audio.metadata["language"] = lang
            audio.disposition = disposition
            size = audio.codec_context.frame_size or 960
            for start in range(0, len(tone) - size + 1, size):
                frame = av.AudioFrame.from_ndarray(np.stack([tone[start:start + size]] * 2), format="fltp",
                                                   layout="stereo")
                frame.sample_rate, frame.pts = rate, start
                packets += [(p, audio) for p in audio.encode(frame)]
            packets += [(p, audio) for p in audio.encode(None)]
        _mux_in_time_order(out, packets)
    return path


def audio_tracks(path: Path) -> list[tuple[str, str, bool]]:
    with av.open(str(path)) as c:
        return [(s.codec_context.name, s.metadata.get("language"), bool(s.disposition & av.stream.Disposition.default))
                for s in c.streams.audio]


def test_a_reencoded_track_keeps_its_place_and_its_default_flag(tmp_path):
    """The re-encoded Opus track lost `default` (the copied one became default) and moved last."""
    src = with_two_audio_tracks(make_clip(tmp_path / "v.mp4", 24, options={"g": "8"}), tmp_path / "in.mkv")
    assert audio_tracks(src) == [("opus", "jpn", True), ("aac", "eng", False)]
    for extra in ((), ("--resume", "--segment", "8f")):
        out = tmp_path / f"out{len(extra)}.mov"
        r = run_engine("stream", src, out, *extra)
        assert r.returncode == 0, r.stderr
        assert "re-encoding stream #1 (opus audio, jpn) to aac" in r.stderr
        assert audio_tracks(out) == [("aac", "jpn", True), ("aac", "eng", False)]
        assert decoded_indices(out) == list(range(24))


def test_mov_text_into_mkv_becomes_ass_at_the_same_times(clip, clip_dir, tmp_path):
    """mov_text (an MP4's subtitles) was dropped: ".mkv cannot hold mov_text"."""
    srt = add_side_streams(clip(frames=48), clip_dir / "subtitles-only.mkv", [], SRT)
    src = tmp_path / "in.mp4"
    assert run_engine("stream", srt, src, "--quiet").returncode == 0  # its SubRip becomes mov_text
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out)
    assert r.returncode == 0, r.stderr
    assert "re-encoding stream #1 (mov_text subtitle, und) to ass: .mkv cannot hold mov_text" in r.stderr
    assert "not carried" not in r.stderr
    with av.open(str(out)) as c:
        assert c.streams.subtitles[0].codec_context.name in ("ass", "ssa")  # Matroska's S_TEXT/ASS
    assert subtitle_events(out) == subtitle_events(srt) and len(subtitle_events(out)) == 2


def with_titled_tracks(video: Path, path: Path, corrupt: bool = False) -> Path:
    """`video` remuxed into MP4 `path` with a titled AAC track and a titled mov_text track (two
    events, mov_text samples made by hand; `corrupt`: the second is raw text, which the
    decoder refuses)."""
    from fractions import Fraction

    with av.open(str(video)) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.metadata["title"] = "Main video"
        packets = [(p, stream) for p in inp.demux(inp.streams.video[0]) if p.size]
        audio = out.add_stream("aac", rate=48000, layout="stereo")
        audio.metadata.update({"title": "Director commentary", "language": "eng"})
        subtitles = out.add_stream("mov_text")
        subtitles.codec_context.subtitle_header = b"[Script Info]\nScriptType: v4.00+\n\n[Events]\n"  # to open
        subtitles.metadata.update({"title": "English SDH", "language": "eng"})
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 48000, 0
        packets += [(p, audio) for p in [*audio.encode(frame), *audio.encode(None)]]
        for start, text in ((500, b"Hello"), (1300, b"World")):
            sample = text[:2] if corrupt and start > 500 else len(text).to_bytes(2, "big") + text
            packet = av.Packet(sample)
            packet.pts = packet.dts = start
            packet.duration, packet.time_base = 500, Fraction(1, 1000)
            packets.append((packet, subtitles))
        _mux_in_time_order(out, packets)
    return path


def titles(path: Path) -> list[str | None]:
    """Every stream's title: a title, or an MP4 track's name (how MP4 reads one back)."""
    with av.open(str(path)) as c:
        found = [s.metadata.get("title") or (s.metadata.get("name") if c.format.name.startswith("mov") else None)
                 for s in c.streams]
    return found


@pytest.mark.parametrize("out_ext", [".mp4", ".mov", ".mkv"])
def test_track_titles_from_an_mp4_are_kept_as_titles(clip, tmp_path, out_ext):
    """Only the video's title survived: MP4 reads a title back as "name", which .mp4 dropped
    and .mkv wrote as a NAME tag."""
    src = with_titled_tracks(clip(frames=24), tmp_path / "in.mp4")
    assert titles(src)[:3] == ["Main video", "Director commentary", "English SDH"]
    out = tmp_path / f"out{out_ext}"
    r = run_engine("stream", src, out)
    assert r.returncode == 0, r.stderr
    assert titles(out)[:3] == ["Main video", "Director commentary", "English SDH"]
    with av.open(str(out)) as c:
        assert not any("NAME" in s.metadata or "name" in s.metadata and out_ext == ".mkv" for s in c.streams)


def test_a_subtitle_event_that_cannot_be_decoded_is_said_skipped(tmp_path):
    src = with_titled_tracks(make_clip(tmp_path / "v.mp4", 48, options={"g": "12"}), tmp_path / "in.mp4",
                             corrupt=True)
    for extra in ((), ("--resume", "--segment", "12f")):  # the join says it too
        out = tmp_path / f"out{len(extra)}.mkv"
        r = run_engine("stream", src, out, *extra)
        assert r.returncode == 0, r.stderr
        assert "not carried to the output: 1 event(s) of stream #2 subtitle that could not be decoded" in r.stderr
        assert [text for _, _, text in subtitle_events(out)] == ["Hello"]


def test_audio_an_edit_list_hides_is_not_played_in_mkv(clip, clip_dir, tmp_path):
    """The first 0.5 s of audio, outside the MP4's edit list, played in .mkv (whose muxer moved
    every stream 0.5 s later to start at 0): only one packet of decoder pre-roll is kept."""
    src = add_side_streams(clip(frames=48), clip_dir / "hidden-audio.mp4", [("eng", -0.5, 2.5)])
    with av.open(str(src)) as c:
        shown = sum(1 for p in c.demux(c.streams.audio[0]) if p.size and not p.is_discard)
    for ext, extra in ((".mkv", ()), (".mp4", ()), (".mkv", ("--resume", "--segment", "12f"))):
        out = tmp_path / f"out{len(extra)}{ext}"
        r = run_engine("stream", src, out, *extra)
        assert r.returncode == 0, r.stderr
        video_start, _, _ = span(out, 0)
        audio_start, _, packets = span(out, 1)
        assert video_start - audio_start < 2 * 1024 / 48000
        assert packets == shown + 1  # the one before the edit starts: the decoder's pre-roll
        assert "packet(s) of stream #1 audio that the input's edit list hides" in r.stderr
        assert decoded_indices(out) == list(range(48))


def test_a_matroska_timecode_tag_becomes_a_timecode_track(tmp_path):
    """The tag alone (no tmcd track) made the mov muxer write one the output check did not
    expect; the muxer's check of it must not need the input's codec (FFV1: not in .mov)."""
    video = make_clip(tmp_path / "v.mkv", 12, codec="ffv1")
    src = tmp_path / "in.mkv"
    with av.open(str(video)) as inp, av.open(str(src), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.metadata["timecode"] = "00:10:00:00"
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    out = tmp_path / "out.mov"
    r = run_engine("stream", src, out)
    assert r.returncode == 0, r.stderr
    assert "timecode 00:10:00:00: written as a timecode track" in r.stderr
    assert timecode_of(out) == ("00:10:00:00", 1)


def test_only_the_main_videos_timecode_track_is_taken_for_it():
    from types import SimpleNamespace

    from engine.streamcopy import plan_copy

    def stream(index, kind, timecode=None):
        return SimpleNamespace(index=index, type=kind, codec_context=None, disposition=0,
                               metadata={"timecode": timecode} if timecode else {})

    container = SimpleNamespace(
        format=SimpleNamespace(name="mov,mp4,m4a,3gp,3g2,mj2"), metadata={}, chapters=lambda: [],
        streams=[stream(0, "video", "01:00:00:00"), stream(1, "data", "02:00:00:00"),
                 stream(2, "data", "01:00:00:00")])
    plan = plan_copy(container, 0, {"h264"}, ".mkv")
    assert (plan.timecode, plan.timecode_track) == ("01:00:00:00", 2)
    assert plan.notes() == [
        "timecode 01:00:00:00 (stream #2, a timecode track): kept as the video's timecode tag "
        "(Matroska has no timecode track)",
        "note: not carried to the output: stream #1 (timecode data): another video stream's timecode "
        "(only the first video stream is processed)"]
