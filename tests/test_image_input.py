"""Image-sequence input (`frames/%04d.png`): every frame in order at `--fps`, exact pixels,
gaps refused, resumable like a video."""

from __future__ import annotations

import json
import os

import av
import cv2
import numpy as np
import pytest

from conftest import decoded_indices, run_engine
from make_clip import make_clip
from engine.testing import index_frame


def write_sequence(directory, count: int, first: int = 1, size=(48, 64), name="%04d.png"):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(directory / (name % (first + i))), cv2.cvtColor(index_frame(i, *size), cv2.COLOR_RGB2BGR))
    return directory / name


def frames_and_times(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pictures = list(c.decode(s))
        return [f.to_ndarray(format="rgb24") for f in pictures], [f.pts * s.time_base for f in pictures]


def test_a_png_sequence_becomes_a_video_at_the_given_rate_with_exact_pixels(tmp_path):
    pattern = write_sequence(tmp_path / "in", 12)
    out = tmp_path / "out.mkv"
    r = run_engine("stream", pattern, out, "--encoder", "ffv1", "--fps", "30000/1001", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "note: image sequence: 12 frames, 0001.png to 0012.png, at 30000/1001 fps" in r.stderr
    pixels, times = frames_and_times(out)
    assert [round(float(t), 3) for t in times] == [round(1001 / 30000 * n, 3) for n in range(12)]  # Matroska: ms
    for n, picture in enumerate(pixels):  # FFV1 keeps RGB: the PNGs' pixels exactly
        assert np.array_equal(picture, index_frame(n, 48, 64))
    assert json.loads((tmp_path / "r.json").read_text())["output_video"]["frame_rate"] == "30000/1001"


def test_the_default_rate_is_said_and_numbering_may_start_anywhere(tmp_path):
    pattern = write_sequence(tmp_path / "in", 6, first=1000)  # image2 alone looks for a start in 0..4
    (tmp_path / "in" / "7.png").write_bytes(b"")  # not a name %04d gives: not a frame
    out = tmp_path / "out.mp4"
    r = run_engine("stream", pattern, out)
    assert r.returncode == 0, r.stderr
    assert "6 frames, 1000.png to 1005.png, at 24 fps (--fps sets it)" in r.stderr
    assert decoded_indices(out) == list(range(6))


@pytest.mark.parametrize("case, says", [
    ("gap", "has a gap: 0004.png is missing between 0001.png and 0006.png"),
    ("no-dir", "input not found: "),
    ("no-frames", "no file in"),
    ("fps-for-video", "--fps is for an image-sequence input"),
    ("bad-fps", "--fps must be a number or a fraction such as 24000/1001, got 'fast'"),
    ("flagged-field", "image pattern needs one number field, %d or %06d"),
    ("corrupt-frame", "input is corrupt at frame 2 (0003.png): "),
    ("fifo-frame", "input is not a regular file (a pipe, a device or a directory): "),  # it hung
])
def test_bad_sequences_and_rates_are_one_line_errors(clip, tmp_path, case, says):
    pattern = write_sequence(tmp_path / "in", 6)
    extra = []
    if case == "gap":
        os.unlink(tmp_path / "in" / "0004.png")  # image2 would stop at 3 frames, without a word
    elif case == "no-dir":
        pattern = tmp_path / "nowhere" / "%04d.png"
    elif case == "no-frames":
        pattern = tmp_path / "in" / "%06d.png"
    elif case == "fps-for-video":
        pattern, extra = clip(frames=4), ["--fps", "30"]
    elif case == "corrupt-frame":  # the file is named, not only its place in the video
        (tmp_path / "in" / "0003.png").write_bytes((tmp_path / "in" / "0003.png").read_bytes()[:60])
    elif case == "fifo-frame":
        os.unlink(tmp_path / "in" / "0003.png")
        os.mkfifo(tmp_path / "in" / "0003.png")
    elif case == "flagged-field":  # Python formats %#04d, image2 does not take it
        pattern = tmp_path / "in" / "%#04d.png"
    else:
        extra = ["--fps", "fast"]
    r = run_engine("stream", pattern, tmp_path / "out.mp4", *extra)
    last = r.stderr.splitlines()[-1]
    assert r.returncode == 2 and last.startswith("engine: error: ") and says in last, r.stderr
    if case != "corrupt-frame":  # found before the run (a corrupt file only when it is decoded)
        assert r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_resume_cuts_a_sequence_and_knows_when_it_or_the_rate_changed(tmp_path):
    pattern = write_sequence(tmp_path / "in", 20)
    single, segmented = tmp_path / "single.mkv", tmp_path / "segmented.mkv"
    assert run_engine("stream", pattern, single, "--encoder", "ffv1", "--fps", "25").returncode == 0
    r = run_engine("stream", pattern, segmented, "--encoder", "ffv1", "--fps", "25", "--resume",
                   "--segment", "6f", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["total"] == 4
    a, b = frames_and_times(single), frames_and_times(segmented)
    assert a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    # a kept work directory: another rate, or a frame rewritten, is refused, never mixed in
    work = tmp_path / "work"
    args = ("stream", pattern, tmp_path / "o.mkv", "--encoder", "ffv1", "--resume", "--segment", "6f",
            "--work-dir", work)
    first = run_engine(*args, "--fps", "25", env={"ENGINE_CRASH_AT": "segment-done:2"})
    assert first.returncode != 0
    assert "the decoding options changed (--deinterlace, --fps)" in run_engine(*args, "--fps", "30").stderr
    os.utime(tmp_path / "in" / "0007.png", ns=(0, 0))
    assert "the input file changed (files)" in run_engine(*args, "--fps", "25").stderr


def test_a_frame_of_another_size_is_scaled_with_a_note_and_alpha_is_said_dropped(tmp_path):
    pattern = write_sequence(tmp_path / "in", 4)
    rgba = np.dstack([index_frame(2, 96, 128), np.full((96, 128), 128, np.uint8)])  # twice the size, alpha
    cv2.imwrite(str(tmp_path / "in" / "0003.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    out = tmp_path / "out.mkv"
    r = run_engine("stream", pattern, out, "--encoder", "ffv1")
    assert r.returncode == 0, r.stderr
    # was: the frame's top-left 64x48 corner, silently
    assert ("1 frame(s) from seq 2 on had another size (128x96) than the first frame's 64x48: each was "
            "scaled to it as it was decoded") in r.stderr
    assert "the input has an alpha channel (rgba)" in r.stderr  # frame 2's: not only a first frame's
    pixels, _ = frames_and_times(out)
    assert [p.shape for p in pixels] == [(48, 64, 3)] * 4
    scaled = cv2.resize(index_frame(2, 96, 128), (64, 48), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(pixels[2].astype(float) - scaled).mean() < 8  # the whole picture, not a crop of it


def test_sizes_are_held_at_the_source_so_windows_and_segments_work(tmp_path):
    """Frames 6.. twice the size. A temporal window mixing sizes used to fail the job, and
    under --resume the later segments came out at the other size and the join refused them."""
    pattern = write_sequence(tmp_path / "in", 6)
    for i in range(6, 12):
        big = np.dstack([index_frame(i, 96, 128), np.full((96, 128), 200, np.uint8)])  # and alpha
        cv2.imwrite(str(tmp_path / "in" / f"{i + 1:04d}.png"), cv2.cvtColor(big, cv2.COLOR_RGBA2BGRA))
    common = ("--encoder", "ffv1", "--pipeline", "dedup,temporal-denoise:radius=1")
    single, segmented = tmp_path / "single.mkv", tmp_path / "segmented.mkv"
    r = run_engine("stream", pattern, single, *common, "--report", tmp_path / "one.json")
    assert r.returncode == 0, r.stderr
    r = run_engine("stream", pattern, segmented, *common, "--resume", "--segment", "4f",
                   "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    a, b = frames_and_times(single)[0], frames_and_times(segmented)[0]
    assert len(a) == len(b) == 12 and {x.shape for x in a} == {(48, 64, 3)}
    assert [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)] == []
    # what the segments' sources did reaches the user once, for the whole job
    report, one = (json.loads((tmp_path / n).read_text()) for n in ("r.json", "one.json"))
    assert report["frame_size"] == one["frame_size"] == {"size": [64, 48], "scaled": 6, "first_scaled": 6,
                                                         "other_sizes": ["128x96"]}
    assert r.stderr.count("6 frame(s) from seq 6 on had another size (128x96)") == 1
    assert r.stderr.count("the input has an alpha channel (rgba)") == 1


def test_a_width_without_a_zero_is_zero_padded_as_ffmpeg_does(tmp_path):
    """image2 writes and reads `%4d` as 0001 (Python's `%4d` gives '   1'): the engine names
    frames its way both ways, so its sequences read back in FFmpeg and FFmpeg's in it."""
    written = tmp_path / "out" / "%4d.png"
    r = run_engine("stream", write_sequence(tmp_path / "in", 5), written)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [f"{n:04d}.png" for n in range(1, 6)]
    with av.open(str(written), format="image2", options={"start_number": "1"}) as c:  # FFmpeg's own reader
        assert sum(1 for _ in c.decode(video=0)) == 5
    again = tmp_path / "again.mkv"
    r = run_engine("stream", written, again, "--encoder", "ffv1", "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    assert "5 frames, 0001.png to 0005.png" in r.stderr
    r = run_engine("stream", write_sequence(tmp_path / "in", 2), tmp_path / "o" / "%-4d.png")
    assert r.returncode == 2 and "image pattern needs one number field, %d or %06d" in r.stderr


def test_palette_frames_of_another_size_are_scaled_too(tmp_path):
    """swscale cannot write pal8: such frames are scaled through RGB (the job failed at the
    first one, 'Invalid argument')."""
    from PIL import Image

    directory = tmp_path / "pal"
    directory.mkdir()
    for i in range(6):
        size = (48, 64) if i < 3 else (60, 80)
        Image.fromarray(index_frame(i, *size)).convert("P").save(directory / f"{i + 1:04d}.png")
    out = tmp_path / "out.mkv"
    r = run_engine("stream", directory / "%04d.png", out, "--encoder", "ffv1", "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    assert "3 frame(s) from seq 3 on had another size (80x60)" in r.stderr
    pixels, _ = frames_and_times(out)
    assert [p.shape for p in pixels] == [(48, 64, 3)] * 6


def test_probe_says_the_rate_is_not_in_the_files(tmp_path):
    r = run_engine("probe", write_sequence(tmp_path / "in", 3))
    assert r.returncode == 0 and "3 video frames" in r.stdout and "hold no frame rate" in r.stdout


def test_a_percent_sign_in_the_directory_is_literal(tmp_path):
    # image2 reads '%' anywhere in the path as a field; only the file name's is one
    pattern = write_sequence(tmp_path / "100% done", 3)
    out = tmp_path / "out.mp4"
    r = run_engine("stream", pattern, out)
    assert r.returncode == 0, r.stderr
    assert decoded_indices(out) == [0, 1, 2]


def test_an_existing_file_with_a_percent_sign_is_a_video_not_a_pattern(tmp_path):
    src = tmp_path / "clip 50%.avi"  # was: "image pattern needs one integer field"
    plain = make_clip(tmp_path / "clip.avi", 4)  # another container than mp4/mkv/mov
    plain.rename(src)
    r = run_engine("stream", src, tmp_path / "out.mp4")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(tmp_path / "out.mp4") == [0, 1, 2, 3]
