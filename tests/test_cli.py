"""The CLI end to end, as a user runs it: output checked frame by frame, every error case."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import MEDIA, ROOT, decoded_indices, decoded_pts, run_engine, sha256
from engine.testing import frame_index

TESTING = {"ENGINE_STAGE_MODULES": "engine.testing"}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_cli_starts_without_the_heavy_libraries():
    # they load inside main()'s error handling, where a Ctrl-C is "interrupted" (exit 130),
    # not a traceback from the import machinery
    code = ("import sys, engine.cli; heavy = {'cv2', 'numpy', 'av', 'torch'} & set(sys.modules); "
            "print(sorted(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_version():
    r = run_engine("--version")
    assert r.returncode == 0 and r.stdout.startswith("engine ")


def test_passthrough_keeps_every_frame_its_order_and_timestamps(clip, tmp_path):
    src = clip(frames=60)
    out = tmp_path / "out.mp4"
    r = run_engine("stream", src, out, "--pipeline", "none", "--encoder", "x264", "--crf", "0",
                   "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(out) == list(range(60))
    assert decoded_pts(out) == pytest.approx(decoded_pts(src), abs=1e-6)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames_in"] == report["frames_out"] == 60
    written = report["output_video"]  # read back from the file, not the input's
    assert (written["path"], written["codec"], written["width"]) == (str(out), "h264", 64)
    assert {s["name"] for s in report["stages"]} == {"decode", "encode"}
    assert all({"busy_s", "blocked_s", "items"} <= set(s) for s in report["stages"])
    assert leftovers(tmp_path) == ["out.mp4", "r.json"]


@pytest.mark.parametrize("ext", [".mkv", ".mov"])
def test_containers_follow_the_extension(clip, tmp_path, ext):
    out = tmp_path / f"out{ext}"
    r = run_engine("stream", clip(frames=20), out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(out) == list(range(20))


def test_stages_run_and_parallel_workers_keep_order(clip, tmp_path):
    out = tmp_path / "out.mkv"
    r = run_engine("stream", clip(frames=40, width=128, height=96), out, "--encoder", "ffv1",
                   "--pipeline", "test.jitter:max_ms=3:workers=3,resize:width=64,test.batch-add:value=0",
                   "--report", tmp_path / "r.json", env=TESTING)
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert [f.shape for f in frames[:1]] == [(48, 64, 3)]
    assert [frame_index(f) for f in frames] == list(range(40))
    stages = json.loads((tmp_path / "r.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["decode", "test.jitter", "resize", "test.batch-add", "encode"]
    assert stages[1]["workers"] == 3 and all(s["items"] == 40 for s in stages)


def test_pipeline_from_toml(clip, tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[[stage]]\nname = "resize"\nwidth = 32\n\n[[stage]]\nname = "temporal-denoise"\nradius = 1\n')
    out = tmp_path / "out.mp4"
    r = run_engine("stream", clip(frames=30), out, "--pipeline", toml, "--quiet")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].frames) == (32, 30)


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_image_sequence(clip, tmp_path, ext):
    pattern = tmp_path / "frames" / f"%06d.{ext}"
    r = run_engine("stream", clip(frames=25), pattern, "--quiet")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path / "frames"))
    assert names == [f"{i:06d}.{ext}" for i in range(1, 26)]
    indices = [frame_index(cv2.imread(str(tmp_path / "frames" / n))[..., ::-1]) for n in names]
    assert indices == list(range(25))
    assert leftovers(tmp_path) == ["frames"]


def test_image_sequence_into_a_directory_with_earlier_frames_or_a_file(clip, tmp_path):
    # a second, shorter run would overwrite 000001-000003 and leave 000004-000005 of the first:
    # a sequence mixed from two runs. Refused up front, the earlier frames untouched
    frames = tmp_path / "frames"
    r = run_engine("stream", clip(frames=5), frames / "%06d.png", "--quiet")
    assert r.returncode == 0, r.stderr
    before = {n: (frames / n).read_bytes() for n in os.listdir(frames)}
    r = run_engine("stream", clip(frames=3), frames / "%06d.png", "--quiet")
    assert r.returncode == 2 and "already holds 5 frames named like %06d.png (000001.png, ...)" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert {n: (frames / n).read_bytes() for n in os.listdir(frames)} == before
    # other files there are fine: another pattern writes beside them
    r = run_engine("stream", clip(frames=3), frames / "b_%03d.png", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(frames)) == 8
    # the directory named is a file: one line before any work, the file untouched
    (tmp_path / "taken").write_bytes(b"x")
    r = run_engine("stream", clip(frames=3), tmp_path / "taken" / "%06d.png", "--quiet")
    assert r.returncode == 2 and "output directory is a file" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "taken").read_bytes() == b"x"
    assert leftovers(tmp_path) == ["frames", "taken"]  # no partial directory left either


def test_batch_checks_every_input_before_running_any(clip, tmp_path):
    # the first input must not run for hours before the second is found unusable
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").symlink_to(clip(frames=5))
    (inputs / "c.mp4").write_bytes(b"not a video at all")
    r = run_engine("stream", inputs, tmp_path / "out", "--quiet")
    assert r.returncode == 2 and "c.mp4" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nor a bare output directory
    (inputs / "c.mp4").unlink()
    r = run_engine("stream", inputs, tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path / "out") == ["a.mp4"]


def test_probe(clip):
    r = run_engine("probe", clip(frames=33), "--json")
    info = json.loads(r.stdout)
    assert (info["video_frames"], info["width"], info["height"]) == (33, 64, 48)
    assert run_engine("probe", MEDIA / "anime-320x240.mp4").stdout.count("audio") == 1
    # the sample is anamorphic: 320x240 pixels shown at 16:9
    assert "pixels 4:3 (shown as 427x240)" in run_engine("probe", MEDIA / "anime-320x240.mp4").stdout
    tagged = json.loads(run_engine("probe", clip(frames=3, bt709=True), "--json").stdout)
    assert tagged["colour"] == {"matrix": "bt709", "primaries": "bt709", "transfer": "bt709", "range": "tv"}
    assert info["colour"] == {} and info["sample_aspect_ratio"] is None  # untagged, square


def test_real_clip_end_to_end(tmp_path):
    out = tmp_path / "anime.mp4"
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", out, "--pipeline", "resize:scale=0.5",
                   "--preset", "ultrafast")
    assert r.returncode == 0, r.stderr
    assert "done: 240 frames" in r.stderr  # the summary, printed as log lines off a terminal
    assert decoded_pts(out) == pytest.approx(decoded_pts(MEDIA / "anime-320x240.mp4"), abs=1e-6)


# ---- errors: one line, exit 2, no traceback, input untouched, no output --------------------

def _truncated(src: Path, tmp_path: Path) -> Path:
    data = src.read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _corrupt(src: Path, tmp_path: Path) -> Path:
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(1)
    for pos in rng.integers(len(data) // 3, len(data) - 64, 40):
        data[pos: pos + 32] = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    return bad


def _zero_frames(src: Path, tmp_path: Path) -> Path:
    """A Matroska file with a real H.264 video stream header and not a single frame."""
    path = tmp_path / "empty.mkv"
    with av.open(str(src)) as inp, av.open(str(path), "w") as out:
        out.add_stream_from_template(inp.streams.video[0])
        out.start_encoding()
    return path


CASES = {
    "missing": (lambda c, t: t / "nope.mp4", "input not found"),
    "not a video": (lambda c, t: (t / "notes.mp4").write_text("hello\n" * 100) and t / "notes.mp4",
                    "not a readable video"),
    "audio only": (lambda c, t: _audio_only(t), "no video stream"),
    "zero frames": (lambda c, t: _zero_frames(c(frames=5), t), "no video frames"),
    "truncated": (lambda c, t: _truncated(c(frames=120, width=128, height=96), t), "truncated"),
}


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def assert_clean_failure(r: subprocess.CompletedProcess, needle: str, code: int = 2):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("engine: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, clip, tmp_path):
    make, needle = CASES[case]
    src = make(clip, tmp_path)
    before = sha256(src) if src.exists() else None
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = run_engine("stream", src, outdir / "out.mp4", "--quiet")
    assert_clean_failure(r, needle)
    assert leftovers(outdir) == []
    if before:
        assert sha256(src) == before


def test_corrupt_input_fails_cleanly_or_decodes_everything(clip, tmp_path):
    """Random byte damage: either a clean one-line error, or (if the decoder conceals it) a
    complete, valid output. Never a traceback, never a partial file."""
    src = _corrupt(clip(frames=120, width=128, height=96), tmp_path)
    before = sha256(src)
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = run_engine("stream", src, outdir / "out.mp4", "--quiet")
    assert "Traceback" not in r.stderr
    if r.returncode == 0:
        assert leftovers(outdir) == ["out.mp4"]
    else:
        assert_clean_failure(r, "input")
        assert leftovers(outdir) == []
    assert sha256(src) == before


@pytest.mark.parametrize("args,needle", [
    (["--pipeline", "nosuchstage"], "unknown stage 'nosuchstage'"),
    (["--pipeline", "resize:widht=3"], "has no option 'widht'"),
    (["--pipeline", "resize:width=abc"], "not a valid int"),
    (["--encoder", "divx"], "unknown encoder 'divx'"),
    (["--encoder", "prores"], "cannot go in .mp4"),
    (["--preset", "warp-speed"], "invalid --preset 'warp-speed'; choose one of: ultrafast"),
    (["--pipeline", "dedup:workers=2"], "must run with workers=1"),  # each worker would see gaps
    (["--stall-timeout", "-1"], "--stall-timeout must be a number of seconds > 0"),
    (["--stall-timeout", "nan"], "--stall-timeout must be a number of seconds > 0"),
    (["--crf", "99"], "--crf must be between 0 and 51"),
    (["--ray", "--ray-cpus", "0"], "--ray-cpus must be a finite number >= 0.0001, got 0"),  # used to become 1 silently
    (["--ray", "--ray-cpus", "-1"], "--ray-cpus must be a finite number >= 0.0001, got -1"),
    (["--ray", "--ray-gpus", "-1"], "--ray-gpus must be 0 or a finite number >= 0.0001, got -1"),  # x264 would clamp it silently
    (["--pipeline", "resize:scale=nan"], "not a valid float"),
    (["--pipeline", "resize:scale=inf"], "not a valid float"),
    (["--pipeline", "dedup:threshold=nan"], "not a valid float"),
    (["--pipeline", "resize:width=8:width=16"], "option 'width' given twice"),
    (["--pipeline", "resize:width=99999"], "at most 16384"),
    (["--pipeline", "resize:scale=1000"], "output would be 64000x48000"),
    (["--pipeline", "resize:width=1:height=1"], "at least 2x2"),
    (["--opencv-threads", "2147483648"], "--opencv-threads must be between 0 and 1024"),  # a traceback
    (["--pipeline", "temporal-denoise:radius=1000"], "radius must be between 1 and 30"),  # 2001 frames held
    (["--pipeline", "dedup:block=100000"], "block must be between 2 and 256"),  # 25 s for 48 tiny frames
])
def test_bad_configuration(clip, tmp_path, args, needle):
    r = run_engine("stream", clip(frames=5), tmp_path / "out.mp4", *args)
    assert_clean_failure(r, needle)
    assert leftovers(tmp_path) == []


def test_bad_outputs(clip, tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(clip(frames=10).read_bytes())
    before = sha256(src)
    assert_clean_failure(run_engine("stream", src, src), "output is the input")
    assert_clean_failure(run_engine("stream", src, tmp_path / "x" / "out.mp4"), "does not exist")
    assert_clean_failure(run_engine("stream", src, tmp_path / "out.avi"), "unsupported output extension")
    assert_clean_failure(run_engine("stream", src, tmp_path / "%s.png"), "needs one number field, %d or %06d")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere; permission check not testable")
        assert_clean_failure(run_engine("stream", src, ro / "out.mp4"), "not writable")
    finally:
        ro.chmod(0o755)
    assert sha256(src) == before


def test_report_never_replaces_the_input_an_output_or_a_frame(clip, tmp_path):
    # refused before the run: --report IN used to overwrite the input with JSON
    src = tmp_path / "in.mp4"
    src.write_bytes(clip(frames=5).read_bytes())
    before = sha256(src)
    out = tmp_path / "out.mp4"
    assert_clean_failure(run_engine("stream", src, out, "--pipeline", "none", "--report", src),
                         "--report would overwrite the input")
    assert_clean_failure(run_engine("stream", src, out, "--pipeline", "none", "--report", out),
                         "--report would overwrite the output")
    assert_clean_failure(run_engine("stream", src, out, "--pipeline", "none", "--report", tmp_path),
                         "--report names a directory")
    assert_clean_failure(run_engine("stream", src, out, "--pipeline", "none",
                                    "--report", tmp_path / "nope" / "r.json"), "report directory does not exist")
    assert_clean_failure(run_engine("stream", src, tmp_path / "f" / "%03d.png", "--pipeline", "none",
                                    "--report", tmp_path / "f" / "002.png"), "overwrite a frame of the output")
    frames = tmp_path / "seq"  # a frame of an image-sequence input: it came out as JSON, exit 0
    frames.mkdir()
    for n in (1, 2):
        (frames / f"{n:03d}.png").write_bytes(b"a frame")  # refused before anything reads them
    assert_clean_failure(run_engine("stream", frames / "%03d.png", out, "--pipeline", "none",
                                    "--report", frames / "001.png"), "--report would overwrite the input")
    assert (frames / "001.png").read_bytes() == b"a frame"
    for n in (1, 2):
        (frames / f"{n:03d}.png").unlink()
    frames.rmdir()
    (tmp_path / "w").mkdir()  # a resumed job's work directory: removed when the job finishes
    assert_clean_failure(run_engine("stream", src, out, "--pipeline", "none", "--resume",
                                    "--work-dir", tmp_path / "w", "--report", tmp_path / "w" / "r.json"),
                         "inside the work directory")
    assert leftovers(tmp_path / "w") == []
    (tmp_path / "w").rmdir()
    assert sha256(src) == before
    assert leftovers(tmp_path) == ["in.mp4"]
    # beside the output, in the image directory under another name: fine
    r = run_engine("stream", src, tmp_path / "f" / "%03d.png", "--pipeline", "none",
                   "--report", tmp_path / "f" / "report.json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "f" / "report.json").read_text())["frames_out"] == 5


def test_batch_output_must_be_a_directory_and_nothing_is_made_on_error(clip, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").write_bytes(clip(frames=3).read_bytes())
    for out, needle in ((tmp_path / "o.mp4", "names a video file"),
                        (tmp_path / "%03d.png", "not an image pattern"),
                        (tmp_path / "x" / "o", "output directory does not exist")):
        assert_clean_failure(run_engine("stream", inputs, out, "--pipeline", "none"), needle)
    # the batch report is checked before any input runs, and no output directory is left
    assert_clean_failure(run_engine("stream", inputs, tmp_path / "o", "--pipeline", "none",
                                    "--report", inputs / "a.mp4"), "--report would overwrite the input")
    assert_clean_failure(run_engine("stream", inputs, tmp_path / "o", "--pipeline", "nosuchstage"),
                         "unknown stage")
    assert leftovers(tmp_path) == ["in"]
    r = run_engine("stream", inputs, tmp_path / "o", "--pipeline", "none", "--quiet",
                   "--report", tmp_path / "o" / "r.json")  # inside OUT_DIR, made by the batch
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path / "o") == ["a.mp4", "r.json"]
    assert [i["frames_out"] for i in json.loads((tmp_path / "o" / "r.json").read_text())["inputs"]] == [3]


def test_a_gpu_this_machine_lacks_is_a_user_error(clip, tmp_path):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine
    for pipeline in (f"upscale:device={missing}", "upscale:device=cuda:0+" + missing):
        r = run_engine("stream", clip(frames=3), tmp_path / "o.mp4", "--pipeline", pipeline, "--quiet")
        assert_clean_failure(r, "was asked for, but torch sees")  # exit 2, not a stage failure
    assert leftovers(tmp_path) == []


def test_a_size_known_only_during_the_run_is_still_refused_before_the_frame_exists():
    # after a model whose scale comes with its weights, resize learns its input size mid-run
    from engine.errors import UserError
    from engine.registry import make_spec

    resize = make_spec("resize", {"scale": "100"}).build()
    assert resize.output_size(64, 48) == (6400, 4800)
    with pytest.raises(UserError, match="output would be 19200x10800"):
        resize.output_size(192, 108)


def test_encoder_must_fit_the_container_and_unused_flags_are_said(clip, tmp_path):
    src = clip(frames=5)
    assert_clean_failure(run_engine("stream", src, tmp_path / "o.mov", "--pipeline", "none",
                                    "--encoder", "ffv1"), "ffv1 cannot go in .mov")  # mov's muxer refuses it
    assert leftovers(tmp_path) == []
    r = run_engine("stream", src, tmp_path / "o.mov", "--pipeline", "none", "--encoder", "prores",
                   "--crf", "10", "--preset", "fast", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "--crf and --preset not used by prores" in json.loads((tmp_path / "r.json").read_text())["sink"]
    r = run_engine("stream", src, tmp_path / "o.mp4", "--pipeline", "none", "--prores-profile", "4444")
    assert r.returncode == 0 and "--prores-profile not used by x264" in r.stderr
    r = run_engine("stream", src, tmp_path / "p.mov", "--pipeline", "none", "--encoder", "prores")
    assert r.returncode == 0 and "not used" not in r.stderr  # the default profile was not given


def test_read_only_output_dir_is_refused_even_as_root(clip, tmp_path):
    """Root ignores permission bits; a file standing where the directory should be cannot be."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert_clean_failure(run_engine("stream", clip(frames=5), blocker / "out.mp4"), "does not exist")


def test_an_output_that_is_a_fifo_or_a_directory_is_refused(clip, tmp_path):
    # a FIFO used to be replaced by the finished file while its reader waited forever
    fifo = tmp_path / "out.mp4"
    os.mkfifo(fifo)
    assert_clean_failure(run_engine("stream", clip(frames=5), fifo), "output is not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    (tmp_path / "o").mkdir()  # `out/` used to be "unsupported output extension '(none)'"
    assert_clean_failure(run_engine("stream", clip(frames=5), str(tmp_path / "o") + "/"), "output is a directory")


@pytest.mark.parametrize("kind", ["map", "batch", "window"])
def test_stage_failure_is_one_line_naming_stage_and_seq(clip, tmp_path, kind):
    r = run_engine("stream", clip(frames=40), tmp_path / "out.mp4",
                   "--pipeline", f"test.fail-{kind}:at=12", env=TESTING)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert f"stage 'test.fail-{kind}'" in line and "failure injected" in line
    if kind == "map":
        assert "at frame seq 12 failed" in line
    else:  # a batch or window fails as a whole: every frame it held is named, 12 among them
        first, last = map(int, line.split("at frames seq ")[1].split(" ")[0].split("-"))
        assert first <= 12 <= last and last > first
    assert "Traceback" not in r.stderr
    assert leftovers(tmp_path) == []


def test_stalled_stage_fails_without_hanging(clip, tmp_path):
    r = run_engine("stream", clip(frames=40), tmp_path / "out.mp4", "--quiet",
                   "--pipeline", "test.stall:at=3", "--stall-timeout", "1", env=TESTING, timeout=60)
    assert r.returncode == 1
    assert "stage 'test.stall' at frame seq 3 failed" in r.stderr and "stalled" in r.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated"),  # timeout, docker stop
                                              (signal.SIGHUP, 129, "hung up")])  # a closed terminal, ssh
def test_ctrl_c_or_sigterm_stops_cleanly_and_leaves_nothing(clip, tmp_path, sig, code, said):
    src = clip(frames=400, width=320, height=240)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "stream", str(src), str(out), "--encoder", "x264",
         "--preset", "veryslow", "--pipeline", "test.jitter:max_ms=40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **TESTING},
        # a shell runs background jobs with SIGINT ignored, and children inherit that:
        # give the engine the default disposition a terminal user's process has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until the job has really started writing (its partial file exists)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    started = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert time.monotonic() - started < 10
    assert f"engine: error: {said}" in err and "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_a_second_ctrl_c_does_not_cut_the_cleanup_short(clip, tmp_path):
    """Two Ctrl-Cs a few ms apart while PNG savers run: the second used to land in the wait for
    them or before it, leaving the partial directory and ending the process under running
    threads (SIGABRT, 'terminate called without an active exception'): 3 of 8 tries."""
    src = clip(frames=400, width=320, height=240)
    for gap in (0.005, 0.01, 0.02, 0.03):
        out = tmp_path / "im" / "%04d.png"
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "stream", str(src), str(out), "--pipeline", "none", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(p.name.startswith(".im.partial") for p in tmp_path.iterdir()):
            time.sleep(0.01)
        time.sleep(0.2)  # savers busy
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        # 130: both taken by the engine; -SIGINT: the second came after it had cleaned up and
        # was exiting (Python then ends by the signal)
        assert proc.returncode in (130, -signal.SIGINT), (gap, proc.returncode, err)
        assert "terminate called" not in err and "Traceback" not in err, err
        assert leftovers(tmp_path) == [], gap


def test_unstoppable_cleanup_runs_to_its_end_and_says_each_stop():
    from engine.interrupts import unstoppable

    runs, stops = [], []

    def cleanup():
        runs.append(len(runs))
        if len(runs) < 3:
            raise KeyboardInterrupt  # a Ctrl-C in the middle of it, twice

    unstoppable(cleanup, stops.append)
    assert runs == [0, 1, 2] and len(stops) == 2 and all(isinstance(s, KeyboardInterrupt) for s in stops)


def test_the_third_ctrl_c_cuts_a_stuck_cleanup_short():
    """A saver stuck on a hung mount must not leave SIGKILL as the only way out."""
    from engine.interrupts import ESCAPE, unstoppable

    def stuck():
        for _ in range(ESCAPE):
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises at the ESCAPE-th signal, in here
        raise AssertionError("not cut short")

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        unstoppable(stuck, lambda exc: None)
    assert time.monotonic() - started < 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def test_a_real_ctrl_c_waits_until_the_cleanup_is_done():
    """The signal is blocked, not only caught: an interrupted Thread.join could mark a live
    saver thread finished (Python 3.11), and the partial was removed under it."""
    import threading as _threading

    from engine.interrupts import unstoppable

    done, stops = [], []
    worker = _threading.Thread(target=time.sleep, args=(0.3,))

    def cleanup():
        if not done:
            worker.start()
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while waiting for the thread
        worker.join()
        done.append(worker.is_alive())

    unstoppable(cleanup, stops.append)
    assert done[0] is False  # the join waited for the thread's real end
    assert len(stops) == 1 and isinstance(stops[0], KeyboardInterrupt) and len(done) == 2  # then ran again


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("sig", ["INT", "TERM", "HUP"])
def test_a_stop_signal_after_the_output_is_in_place_lets_the_job_finish(clip, tmp_path, sig, resume):
    # exit 130 over a complete output, a report missing (or left as a partial), a work
    # directory half removed that the rerun then refused
    out, report = tmp_path / "out.mp4", tmp_path / "r.json"
    point = "work-dir-removal" if resume else "report-write"
    r = run_engine("stream", clip(frames=24), out,
                   "--report", report, *(["--resume", "--segment", "12f"] if resume else []),
                   env={"ENGINE_CRASH_AT": f"{point}:1:{sig}"})
    said = {"INT": "interrupted", "TERM": "terminated", "HUP": "hung up"}[sig]
    assert r.returncode == 0, r.stderr
    assert f"engine: note: {said} after the output was complete; the job finished" in r.stderr
    assert json.loads(report.read_text())["frames_out"] == 24
    assert decoded_indices(out) == list(range(24))
    assert leftovers(tmp_path) == ["out.mp4", "r.json"]  # no report partial, no work directory


@pytest.mark.parametrize("sig", ["INT", "TERM", "HUP"])
@pytest.mark.parametrize("batch", [False, True])
def test_a_stop_signal_after_the_job_returned_lets_it_finish(clip, tmp_path, sig, batch):
    """The job's handlers were restored once it ended: a signal on the way out read
    "terminated" (exit 143) over a finished output, or killed the process at its exit. In a
    batch, the same after its last input."""
    import shutil

    if batch:
        inputs = tmp_path / "in"
        inputs.mkdir()
        for name in ("a.mp4", "b.mp4"):
            shutil.copy(clip(frames=12), inputs / name)
        source, out, check = inputs, tmp_path / "out", tmp_path / "out" / "b.mp4"
    else:
        source, out = clip(frames=12), tmp_path / "out.mp4"
        check = out
    r = run_engine("stream", source, out, env={"ENGINE_CRASH_AT": f"command-done:1:{sig}"})
    said = {"INT": "interrupted", "TERM": "terminated", "HUP": "hung up"}[sig]
    assert r.returncode == 0, r.stderr
    assert f"engine: note: {said} after the output was complete; the job finished" in r.stderr
    assert decoded_indices(check) == list(range(12))


def test_a_signal_before_the_output_is_in_place_still_stops_the_job():
    import os as _os

    from engine import interrupts

    with interrupts.finishing("/tmp/out.mp4"):
        interrupts.committing("/tmp/work/segment-00000.mp4")  # a segment: the job goes on
        with pytest.raises(KeyboardInterrupt):
            _os.kill(_os.getpid(), signal.SIGINT)
            time.sleep(1)
        interrupts.committing("/tmp/out.mp4")
        _os.kill(_os.getpid(), signal.SIGINT)  # now only noted
        time.sleep(0.05)
    assert interrupts.late == [signal.SIGINT]
    interrupts.late.clear()
    with pytest.raises(KeyboardInterrupt):  # and the handler is back after the job
        _os.kill(_os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_partials_of_killed_runs_are_removed_and_live_ones_kept(clip, tmp_path):
    from engine.sink import PartialLock, partial_path

    out = tmp_path / "out.mp4"
    live = partial_path(str(out))  # this process's: its writer holds the lock
    lock = PartialLock(live)
    stem = os.path.basename(live).rsplit("-", 1)[0]
    dead = tmp_path / f"{stem}-999999999.mp4"  # nobody holds its lock
    other_host = tmp_path / ".out.partial-zzzzzz-999999999.mp4"
    other_output = tmp_path / f"{stem.replace('.out.', '.out2.')}-999999999.mp4"
    report = tmp_path / "r.json"  # a report is written as a partial too
    dead_report = tmp_path / (os.path.basename(partial_path(str(report))).rsplit("-", 1)[0] + "-999999999.json")
    for path in (dead, other_host, other_output, dead_report):
        open(path, "wb").close()
    try:
        r = run_engine("stream", clip(frames=6), out, "--report", report)
    finally:
        lock.release()
    assert r.returncode == 0, r.stderr
    assert f"removed {dead.name}, left by a run of this job that was killed" in r.stderr
    assert f"removed {dead_report.name}" in r.stderr and not dead_report.exists() and report.exists()
    assert not dead.exists() and os.path.exists(live) and other_host.exists() and other_output.exists()


def test_two_long_output_names_sharing_a_start_get_partials_of_their_own(tmp_path):
    from engine.resume import default_work_dir
    from engine.sink import partial_path

    a, b = str(tmp_path / ("a" * 240 + "X.mp4")), str(tmp_path / ("a" * 240 + "Y.mp4"))
    assert partial_path(a) != partial_path(b)
    assert default_work_dir(a) != default_work_dir(b)
    assert max(len(os.path.basename(p).encode()) for p in (partial_path(a), default_work_dir(a))) <= 255


def test_an_ignored_sighup_stays_ignored(clip, tmp_path):
    """`nohup engine ...`: the terminal closing must not stop the job."""
    out = tmp_path / "out.mp4"

    def nohup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "engine", "stream", str(clip(frames=40)), str(out),
                             "--pipeline", "test.jitter:max_ms=60", "--quiet"], stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, **TESTING}, preexec_fn=nohup)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert decoded_indices(out) == list(range(40))


def test_a_batch_stops_after_the_input_whose_ending_a_signal_met(clip, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (inputs / name).write_bytes(clip(frames=6).read_bytes())
    out = tmp_path / "out"
    r = run_engine("stream", inputs, out, "--resume", "--segment", "12f",
                   env={"ENGINE_CRASH_AT": "work-dir-removal:1:TERM"})  # a.mp4 is in place
    assert r.returncode == 143 and "engine: error: terminated" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == ["a.mp4"]  # complete; b.mp4 never started
    assert f"1 of 2 inputs were finished before the stop: {out / 'a.mp4'}; the others have no output" in r.stderr


def test_a_batch_writes_other_containers_as_mkv_and_checks_every_input_before_the_first(clip, tmp_path):
    """A .ts (or .webm, .avi) input failed the whole batch ('unsupported output extension');
    a truncated input was found only after the inputs before it had run."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.mp4").write_bytes(clip(frames=6).read_bytes())
    with av.open(str(clip(frames=6))) as i, av.open(str(inputs / "b.ts"), "w") as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                o.mux(packet)
    data = clip(frames=48, ext=".mkv").read_bytes()
    (inputs / "c.mkv").write_bytes(data[: len(data) // 2])  # truncated: its header says 48 frames
    r = run_engine("stream", inputs, out, "--pipeline", "none")
    assert r.returncode == 2 and "input is truncated" in r.stderr and "c.mkv" in r.stderr, r.stderr
    assert not out.exists()  # refused before a.mp4 ran
    (inputs / "c.mkv").unlink()
    r = run_engine("stream", inputs, out, "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    assert "b.ts → b.mkv" in r.stderr
    assert sorted(os.listdir(out)) == ["a.mp4", "b.mkv"] and decoded_indices(out / "b.mkv") == list(range(6))
    # each input's lines start with its name: a log of many inputs says whose summary is whose
    first, second = (r.stderr.index(f"[engine] input {n} of 2: {inputs / name} → {out / made}")
                     for n, name, made in ((1, "a.mp4", "a.mp4"), (2, "b.ts", "b.mkv")))
    assert first < r.stderr.index("done: 6 frames") < second < r.stderr.rindex("done: 6 frames")


def test_a_failing_batch_says_which_inputs_are_finished_and_reports_them(clip, tmp_path):
    inputs, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    inputs.mkdir()
    (inputs / "a.mp4").write_bytes(clip(frames=3).read_bytes())
    (inputs / "b.mp4").write_bytes(clip(frames=6).read_bytes())  # only b reaches seq 4
    r = run_engine("stream", inputs, out, "--pipeline", "test.fail-map:at=4", "--report", report, env=TESTING)
    assert r.returncode == 1 and "failure injected at seq 4" in r.stderr, r.stderr
    assert f"1 of 2 inputs were finished before the failure: {out / 'a.mp4'}" in r.stderr
    saved = json.loads(report.read_text())
    assert [x["input"] for x in saved["inputs"]] == [str(inputs / "a.mp4")]
    assert saved["stopped"]["finished"] == 1 and saved["stopped"]["of"] == 2


def test_any_legal_output_name_works_and_a_too_long_one_is_refused_up_front(clip, tmp_path):
    longest = tmp_path / ("a" * 251 + ".mp4")  # 255 bytes: the partial's name must fit too
    r = run_engine("stream", clip(frames=6), longest, "--report", tmp_path / ("r" * 250 + ".json"))
    assert r.returncode == 0, r.stderr
    assert decoded_indices(longest) == list(range(6))
    too_long = tmp_path / ("a" * 256 + ".mp4")
    assert_clean_failure(run_engine("stream", clip(frames=6), too_long), "output name is too long")
    assert_clean_failure(run_engine("stream", clip(frames=6), tmp_path / "o.mp4", "--report",
                                    tmp_path / ("r" * 256 + ".json")), "--report name is too long")


def test_frames_are_staged_inside_an_existing_directory(clip, tmp_path):
    # a mount point (a docker volume) is another filesystem than its parent: frames staged
    # beside it could not be renamed in, and failed after the whole job
    frames = tmp_path / "frames"
    frames.mkdir()
    from engine.sink import ImageSequenceSink

    sink = ImageSequenceSink(str(frames / "%04d.png"))
    assert os.path.dirname(sink.partial) == str(frames)
    assert os.path.basename(sink.partial).startswith(".frames.partial-")
    r = run_engine("stream", clip(frames=4), frames / "%04d.png")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(frames)) == ["0001.png", "0002.png", "0003.png", "0004.png"]
    fresh = ImageSequenceSink(str(tmp_path / "new" / "%04d.png"))
    assert os.path.dirname(fresh.partial) == str(tmp_path)  # no directory yet: beside it, renamed whole


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p"])
def test_an_odd_size_is_cropped_plane_by_plane_and_ffv1_keeps_it(tmp_path, pix_fmt):
    """The crop went through RGB: 12 % of the chroma came back exact, up to 27 off (and luma
    up to 109 with saturated colours); FFV1, which codes odd sizes, was cropped too."""
    from make_clip import make_clip

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (47, 63, 3), dtype=np.uint8) for _ in range(3)]
    src = make_clip(tmp_path / "odd.mkv", 3, 63, 47, codec="ffv1", pix_fmt=pix_fmt, image=lambda s: images[s])

    def planes(path):
        with av.open(str(path)) as c:
            return [[np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:p.height, :p.width].copy()
                     for p in f.planes] for f in c.decode(video=0)]

    ffv1, x264 = tmp_path / "ffv1.mkv", tmp_path / "x264.mkv"
    for out, encoder in ((ffv1, "ffv1"), (x264, "x264")):
        r = run_engine("stream", src, out, "--encoder", encoder, "--crf", "0")
        assert r.returncode == 0, r.stderr
    assert "cropped" not in run_engine("stream", src, tmp_path / "again.mkv", "--encoder", "ffv1").stderr
    for a, b in zip(planes(src), planes(ffv1)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))  # 63x47, as it came
    for a, b in zip(planes(src), planes(x264)):
        assert b[0].shape == (46 if pix_fmt == "yuv420p" else 47, 62)
        assert all(np.array_equal(x[:y.shape[0], :y.shape[1]], y) for x, y in zip(a, b))  # exact, less the edge


def test_odd_size_is_cropped_to_even_for_420_not_rescaled(clip, tmp_path):
    src = clip(frames=12, width=65, height=49, ext=".mkv", codec="ffv1", pix_fmt="yuv444p")
    out = tmp_path / "out.mp4"
    r = run_engine("stream", src, out)
    assert r.returncode == 0, r.stderr
    assert "cropped 65x49 to 64x48: yuv420p needs even dimensions" in r.stderr
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 48)
    assert decoded_indices(out) == list(range(12))
    advice = "--encoder prores --prores-profile 4444"
    assert advice in r.stderr
    kept = tmp_path / "kept.mov"
    r = run_engine("stream", src, kept, *advice.split())  # the advice holds
    assert r.returncode == 0 and "cropped" not in r.stderr, r.stderr
    with av.open(str(kept)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (65, 49)


def test_a_size_the_encoder_refuses_is_refused_before_the_run(clip, tmp_path):
    """x265 takes no side under 16 px: the encoder was tried on 256x256 up front and failed
    when the sink opened it, after the pipeline had run (exit 1, FFmpeg's "returned 22")."""
    src = clip(frames=6, width=64, height=48)
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out, "--encoder", "x265", "--pipeline", "resize:width=64:height=8")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "engine: error: encoder 'x265' cannot be used: x265 cannot encode 64x8 frames "
        "(libx265 failed to open: Image size is too small (64x8).)")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # auto takes the next encoder that opens at the size: x265 is its first for 10-bit here
    deep = clip(frames=6, width=64, height=48, codec="libx265", pix_fmt="yuv420p10le")
    r = run_engine("stream", deep, out, "--pipeline", "resize:width=64:height=8")
    assert r.returncode == 0, r.stderr
    assert "x265 cannot encode 64x8 frames" in r.stderr
    assert decoded_indices(out) == list(range(6))


def test_odd_size_kept_by_ffv1_444(clip, tmp_path):
    src = clip(frames=6, width=65, height=49, ext=".mkv", codec="ffv1", pix_fmt="yuv444p")
    out = tmp_path / "out.mkv"
    r = run_engine("stream", src, out, "--encoder", "ffv1", "--pipeline", "resize:scale=1")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (65, 49)


def test_an_existing_output_is_said_to_be_replaced_and_kept_if_the_job_fails(clip, tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"an earlier render")
    failed = run_engine("stream", clip(frames=6), out, "--pipeline", "test.fail-map:at=3",
                        env={"ENGINE_STAGE_MODULES": "engine.testing"})
    assert failed.returncode != 0 and out.read_bytes() == b"an earlier render"
    assert f"note: {out} exists: it is replaced when this job completes" in failed.stderr
    r = run_engine("stream", clip(frames=6), out)
    assert r.returncode == 0 and "exists: it is replaced" in r.stderr
    assert out.stat().st_size > 100
    again = run_engine("stream", clip(frames=6), tmp_path / "new.mp4")
    assert "exists" not in again.stderr


def test_a_full_disk_or_a_file_size_limit_is_one_line_naming_the_output(clip, tmp_path):
    import resource

    out = tmp_path / "big.mkv"

    def limit():  # the process may write 20 kB: the encoder hits EFBIG mid-run
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    r = subprocess.run([sys.executable, "-m", "engine", "stream", str(clip(frames=48)), str(out),
                        "--pipeline", "none", "--encoder", "ffv1", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, preexec_fn=limit, timeout=120)
    # was exit 1, "stage 'encode' failed: OSError ... .big.partial-1234.mkv"
    assert_clean_failure(r, f"cannot write output {out}: File too large")
    assert leftovers(tmp_path) == []


def test_a_pipe_as_input_is_refused_and_a_percent_sign_is_a_video_name(clip, tmp_path):
    fifo = tmp_path / "in.mp4"
    os.mkfifo(fifo)
    assert_clean_failure(run_engine("stream", fifo, tmp_path / "o.mp4"), "input is not a regular file")
    out = tmp_path / "100%.mp4"  # not an image pattern: a video name with a '%' in it
    r = run_engine("stream", clip(frames=4), out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(out) == [0, 1, 2, 3]


def test_stages_lists_whole_descriptions_and_one_stages_options():
    listing = run_engine("stages").stdout
    assert "report each pair's edge noise." in listing  # the first line alone stopped mid-sentence
    dedup = run_engine("stages", "dedup")
    assert dedup.returncode == 0
    assert any(line.split()[:4] == ["block", "int", "default", "16"] for line in dedup.stdout.splitlines())
    assert_clean_failure(run_engine("stages", "nosuch"), "unknown stage 'nosuch'")
    preset = run_engine("stages", "caption-remove")  # was: "unknown stage", listing it among the choices
    assert preset.returncode == 0 and "a preset, text-detect" in preset.stdout and "  inpaint" in preset.stdout
    upscale = run_engine("stages", "upscale").stdout.splitlines()
    columns = {line.index("default") for line in upscale if " default " in line}
    assert len(columns) == 1, upscale  # a long list of choices used to push its row out of line


def test_small_messages_say_the_real_problem(clip, tmp_path):
    src = clip(frames=6)
    # the extension is the mistake, not the missing directory
    assert_clean_failure(run_engine("stream", src, tmp_path / "new" / "frame.png"),
                         "unsupported output extension '.png'")
    # an empty list file is not a directory without videos
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    assert_clean_failure(run_engine("stream", tmp_path / "empty.txt", tmp_path / "out"), "names no file")
    # the stages of caption-remove in the wrong order: that preset, not caption-preview
    assert_clean_failure(run_engine("stream", src, tmp_path / "o.mp4", "--pipeline", "text-mask,text-detect,inpaint"),
                         "(the caption-remove preset is")
    assert_clean_failure(run_engine("stream", src, tmp_path / "o.mp4", "--pipeline",
                                    "temporal-denoise:window_size=100000"), "window_size must be at most 512")


def test_a_plain_run_beside_a_resume_work_directory_says_it_leaves_it(clip, tmp_path):
    out, src = tmp_path / "o.mp4", clip(frames=24)  # 24 frames: keyframes enough for 8f segments
    killed = run_engine("stream", src, out, "--pipeline", "none", "--resume",
                        "--segment", "8f", env={"ENGINE_CRASH_AT": "segment-done:1"})
    assert killed.returncode != 0 and (tmp_path / ".o.mp4.engine-work").is_dir()
    r = run_engine("stream", src, out, "--pipeline", "none")
    assert r.returncode == 0 and "holds an earlier --resume run of this output; this run does not use it" in r.stderr


def test_names_that_start_like_a_url_scheme_are_local_files(clip, tmp_path):
    """FFmpeg reads "clip16:9.mp4" as the protocol "clip16": input, output and probe failed
    with "Protocol not found" unless the name started with ./"""
    (tmp_path / "clip16:9.mp4").write_bytes(clip(frames=6).read_bytes())

    def engine(*args):  # relative names: run where the files are
        return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    r = engine("stream", "clip16:9.mp4", "out:1.mkv", "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(tmp_path / "out:1.mkv") == list(range(6))
    r = engine("stream", "clip16:9.mp4", "seg:2.mp4", "--pipeline", "none", "--resume", "--segment", "3f")
    assert r.returncode == 0, r.stderr
    assert decoded_indices(tmp_path / "seg:2.mp4") == list(range(6))
    assert engine("probe", "clip16:9.mp4").returncode == 0


@pytest.mark.parametrize("log", ["reader gone", "closed"])
def test_a_job_does_not_depend_on_its_log(tmp_path, clip, log):
    """stdout and stderr whose reader left before the job started (a log shipper that died),
    or closed (`2>&-`): the job still runs to its end, writes its report and exits 0."""
    out, report = tmp_path / "out.mp4", tmp_path / "r.json"
    args = [sys.executable, "-m", "engine", "stream", str(clip(frames=24)), str(out),
            "--pipeline", "none", "--report", str(report)]
    if log == "reader gone":
        job = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        job.stdout.close()
        job.stderr.close()
        code = job.wait(120)
    else:
        code = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                              preexec_fn=lambda: os.close(2), timeout=120).returncode
    assert code == 0
    assert out.exists() and json.loads(report.read_text())["frames_out"] == 24


def test_the_output_directory_removed_mid_run_is_one_line_naming_the_output(clip, tmp_path):
    import shutil

    where = tmp_path / "o"
    where.mkdir()
    out = where / "out.mp4"
    job = subprocess.Popen([sys.executable, "-m", "engine", "stream", str(clip(frames=48)), str(out),
                            "--pipeline", "test.jitter:max_ms=60", "--quiet"], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **TESTING})
    deadline = time.time() + 60
    while not any(where.glob(".out.partial*")) and time.time() < deadline:  # writing has begun
        time.sleep(0.02)
    shutil.rmtree(where)
    _, err = job.communicate(timeout=120)
    # was exit 1, "stage 'encode' failed: FileNotFoundError: ... '.out.partial-…'"
    assert job.returncode == 2 and err.strip() == f"engine: error: cannot write output {out}: No such file or directory", err


def test_a_report_that_cannot_be_written_says_the_output_is_complete(tmp_path):
    """A full disk at the very end: the output is in place, and the error must not leave the
    user thinking the job's work is lost (nor leave a half-written report)."""
    from engine.errors import UserError
    from engine.job import write_report

    full = tmp_path / "gone" / "r.json"  # writing fails as on a full disk: an OSError
    with pytest.raises(UserError, match=r"cannot write report .*r\.json: .* \(the output out\.mp4 is complete\)"):
        write_report(str(full), {"frames_out": 3}, "out.mp4")
    assert not full.parent.exists()


def test_a_kill_while_frames_move_into_an_existing_directory_is_undone_by_the_rerun(clip, tmp_path):
    """An image sequence into an existing directory moves in one rename a frame. A SIGKILL
    half way used to leave frames 1..k, a sequence that looked finished, and the rerun refused
    the directory ("already holds k frames"). Now the last frames move first (what a kill
    leaves lacks the start) and the rerun removes them with the killed run's partial."""
    frames = tmp_path / "frames"
    frames.mkdir()
    pattern = frames / "%04d.png"
    r = run_engine("stream", clip(frames=12), pattern, env={"ENGINE_CRASH_AT": "image-commit:5"})
    assert r.returncode == -9
    visible = sorted(p.name for p in frames.iterdir() if not p.name.startswith("."))
    assert visible == [f"{n:04d}.png" for n in range(8, 13)]  # the last five, never 0001.png
    r = run_engine("stream", clip(frames=12), pattern)
    assert r.returncode == 0, r.stderr
    assert "left by a run of this job that was killed" in r.stderr
    assert sorted(p.name for p in frames.iterdir()) == [f"{n:04d}.png" for n in range(1, 13)]
    assert [frame_index(cv2.imread(str(frames / f"{n:04d}.png"))[:, :, ::-1]) for n in range(1, 13)] == list(range(12))


def test_once_stopped_further_stop_signals_are_ignored_on_the_way_out():
    """After a stop's cleanup, Python's exit restores the default handlers: a second Ctrl-C
    then killed the process by the signal (exit -2) instead of 130 with its one line."""
    from engine import interrupts

    saved = {s: signal.getsignal(s) for s in interrupts.STOP_SIGNALS}
    try:
        interrupts.stopped()
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in interrupts.STOP_SIGNALS)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_closed_stdout_and_stderr_with_an_image_sequence_input(tmp_path):
    """`>&- 2>&-`: the first file the job opened took fd 2, and the dup of fd 2 for x264's own
    messages failed (EBADF): exit 1, nothing run, nothing said."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for n in range(1, 7):
        cv2.imwrite(str(frames / f"{n:04d}.png"), np.full((16, 16, 3), n * 30, np.uint8))
    out = tmp_path / "o.mp4"

    def close_both():
        os.close(1)
        os.close(2)

    code = subprocess.run([sys.executable, "-m", "engine", "stream", str(frames / "%04d.png"), str(out),
                           "--fps", "24", "--pipeline", "none"], cwd=ROOT, preexec_fn=close_both,
                          timeout=120).returncode
    assert code == 0 and len(decoded_indices(out)) == 6


def test_an_image_sequence_says_what_it_does_not_keep_and_checks_encoder_flags(clip, tmp_path):
    """Encoder flags were ignored unchecked into images (`--encoder bogus` exited 0), and a
    rotation tag was dropped unsaid."""
    src = clip(frames=3, rotation=90)
    r = run_engine("stream", src, tmp_path / "bad" / "%04d.png", "--encoder", "bogus", "--pipeline", "none")
    assert r.returncode == 2 and "unknown encoder 'bogus'" in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()
    r = run_engine("stream", src, tmp_path / "png" / "%04d.png", "--encoder", "x264", "--crf", "20",
                   "--pipeline", "none")
    assert r.returncode == 0, r.stderr
    assert "--encoder and --crf not used by an image sequence" in r.stderr
    assert "shown rotated 90°: frames are written as stored, unrotated" in r.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) == 3


def test_crf_0_from_rgb_input_is_exact_in_x265_and_said_inexact_in_x264(tmp_path):
    """x264 took RGB (PNG) input at --crf 0 as 4:2:0, 2 levels off, saying nothing."""
    import cv2

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    (tmp_path / "in").mkdir()
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(tmp_path / "in" / f"{i + 1:04d}.png"), rgb[..., ::-1])
    for encoder in ("x265", "x264"):
        out = tmp_path / f"{encoder}.mkv"
        r = run_engine("stream", tmp_path / "in" / "%04d.png", out, "--fps", "24", "--encoder", encoder,
                       "--crf", "0", "--pipeline", "none")
        assert r.returncode == 0, r.stderr
        with av.open(str(out)) as c:
            cc = c.streams.video[0].codec_context
            decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            fmt, matrix = cc.format.name, int(cc.colorspace)
        worst = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(decoded, frames))
        if encoder == "x265":
            assert (fmt, matrix, worst) == ("gbrp", 0, 0)  # RGB, tagged as RGB, exact
        else:
            assert fmt == "yuv444p" and 0 < worst <= 3
            assert "--crf 0 from RGB input is yuv444p in x264, a level or two off" in r.stderr


@pytest.mark.parametrize("out_name,flags", [("out.mov", ["--encoder", "prores"]), ("png/%04d.png", [])])
def test_duplicates_into_an_output_that_converts_each_picture(clip, tmp_path, out_name, flags):
    """Duplicates shared their reference's decoded picture, and the sink's threads converted
    it at once: segfault or hang in 5 of 5 runs into PNG or ProRes."""
    src = clip(frames=48)
    out = tmp_path / out_name
    for _ in range(3):
        r = run_engine("stream", src, out, "--pipeline", "test.mark-dups:every=4", "--quiet", *flags,
                       env={"ENGINE_STAGE_MODULES": "engine.testing"}, timeout=60)
        assert r.returncode == 0, r.stderr
        if out.suffix == ".mov":
            assert decoded_indices(out) == [4 * (i // 4) for i in range(48)]
            out.unlink()
        else:
            assert len(list(out.parent.glob("*.png"))) == 48
            for f in out.parent.glob("*.png"):
                f.unlink()


@pytest.mark.parametrize("args,said", [
    (["stream", "in.mp4", "out.mp4", "--crf", "18.5"], "argument --crf: invalid int value: '18.5' (see engine stream --help)"),
    (["stram", "in.mp4"], "argument command: invalid choice: 'stram'"),
    (["stream"], "the following arguments are required: IN, OUT (see engine stream --help)"),
    (["stream", "in.mp4", "out.mp4", "--pipline", "none"], "unrecognized arguments: --pipline none "
                                                           "(see engine stream --help)"),
])
def test_a_mistyped_argument_is_one_line(args, said):
    """argparse printed its 12-line usage block above the line that mattered."""
    r = run_engine(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("engine: error: ") and said in r.stderr, r.stderr


def test_torchs_threads_wait_passively_unless_the_user_says_otherwise():
    """OpenMP's spinning threads took 6-35 % of a CPU job's time on shared cores."""
    code = "import engine, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=ROOT).stdout.strip() == "PASSIVE"
    assert subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, cwd=ROOT).stdout.strip() == "ACTIVE"


def test_an_image_partial_that_cannot_be_removed_is_said(tmp_path, monkeypatch):
    """The removal ignored every error: with the output's filesystem remounted read-only, a
    failed job left 250 staged frames and its note never said so."""
    import errno
    from fractions import Fraction

    from engine.frame import Frame
    from engine.sink import ImageSequenceSink
    from engine.testing import index_frame

    sink = ImageSequenceSink(str(tmp_path / "out" / "%04d.png"))
    for seq in range(3):
        sink.write(Frame.from_array(seq, seq, Fraction(1, 24), index_frame(seq)))
    real_unlink = os.unlink

    def read_only(path, *a, **k):
        if str(path).endswith(".png"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", read_only)
    with pytest.raises(OSError, match="Read-only file system"):
        sink.abort()
    monkeypatch.undo()
    sink.abort()  # once it can, the partial goes (the lock was released the first time)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_jobs_partial_left_behind_is_said_in_its_error(clip, tmp_path):
    """The runner's note that the partial could not be removed was added to the error and
    never printed (exception notes are not part of its text)."""
    out = tmp_path / "out" / "%04d.png"
    script = ("import errno, os, sys\n"
              "real = os.unlink\n"
              "def read_only(path, *a, **k):\n"
              "    if str(path).endswith('.png'):\n"
              "        raise OSError(errno.EROFS, 'Read-only file system', str(path))\n"
              "    return real(path, *a, **k)\n"
              "os.unlink = read_only\n"
              "from engine.cli import main\n"
              f"sys.exit(main(['stream', {str(clip(frames=30))!r}, {str(out)!r}, '--quiet',"
              " '--pipeline', 'test.fail-map:at=20']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "ENGINE_STAGE_MODULES": "engine.testing"})
    assert r.returncode == 1
    line, = r.stderr.strip().splitlines()
    assert "stage 'test.fail-map' at frame seq 20 failed" in line
    assert "and the partial output could not be removed: [Errno 30] Read-only file system" in line


def test_a_caller_in_the_same_process_gets_its_signal_handlers_back(clip, tmp_path):
    """main() left SIGINT, SIGTERM and SIGHUP ignored (right for the command's own exit): a
    program calling it could no longer be stopped with Ctrl-C."""
    script = ("import signal, sys\n"
              "from engine.cli import main\n"
              "names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)\n"
              "before = [signal.getsignal(s) for s in names]\n"
              f"ok = main(['stream', {str(clip(frames=4))!r}, {str(tmp_path / 'a.mp4')!r}, '--quiet', '--pipeline', 'none'])\n"
              f"bad = main(['stream', {str(tmp_path / 'missing.mp4')!r}, {str(tmp_path / 'b.mp4')!r}, '--quiet'])\n"
              "print(ok, bad, [signal.getsignal(s) for s in names] == before)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.split() == ["0", "2", "True"], r.stderr
