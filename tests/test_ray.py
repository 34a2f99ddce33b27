"""`--ray`: segments as Ray tasks on a two-node local cluster, output identical to `--resume`.

One `ray.cluster_utils.Cluster` for the module: a head node with no CPUs (the drivers'
node, where the progress board lives) and two worker nodes with one CPU and one fake GPU
each, so at most two segments run at once, in two worker processes. Each test runs the
real CLI as a driver against it. Faults: a worker SIGKILLed in its first attempt, the
driver SIGKILLed before recording a segment, a node removed while it runs a segment.
Dedup's segments run side by side on speculated contexts: clips with exact duplicates
(lossless x264) whose true and guessed contexts are known by construction.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from conftest import ROOT, run_engine, sha256
from make_clip import add_side_streams, make_clip

from engine.testing import index_frame

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(240)

GOP = {"g": "8", "keyint_min": "8", "bf": "2", "sc_threshold": "0"}  # keyframes at 0, 8, 16, ...
STORE = 80 << 20  # object store per node: tasks carry descriptions only
TEST_STAGES = {"ENGINE_STAGE_MODULES": "engine.testing"}
LOSSLESS = {**GOP, "qp": "0"}  # repeated pictures decode to identical frames: dedup's exact test
# max_run 3: in a hold, every 4th frame is unique; U = 1 (dedup) or 2 (+ window-sum, overlap 1),
# so the pre-scan covers L = 4 × U × 4 = 16 or 32 frames before each 16-frame segment.
DEDUP = "dedup:max_run=3"
DEDUP_WINDOW = "dedup:max_run=3,test.window-sum"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE,
                                                       "include_dashboard": False})
    try:
        nodes = [c.add_node(num_cpus=1, num_gpus=1, object_store_memory=STORE) for _ in range(2)]
        c.wait_for_nodes()
        yield c, nodes
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-media")
    video = make_clip(d / "video.mp4", 48, options=GOP)
    return {"video": video, "av": add_side_streams(video, d / "av.mp4", [("eng", 0.0, 2.0)]),
            "long": make_clip(d / "long.mp4", 96, options=GOP), "dir": d,
            # each picture twice: frames 2k unique, 2k + 1 its duplicate
            "pairs": make_clip(d / "pairs.mp4", 96, image=lambda seq: index_frame(seq // 2), options=LOSSLESS),
            # frames 10..50 one picture: the true chain marks 10, 14, ..., 50 unique
            "hold": make_clip(d / "hold.mp4", 64, image=lambda seq: index_frame(10 if 10 <= seq <= 50 else seq),
                              options=LOSSLESS)}


def stream(inp, out, *extra, env=None, timeout=150):
    return run_engine("stream", inp, out, "--quiet", *extra, env={**TEST_STAGES, **(env or {})},
                      timeout=timeout)


def framemd5(path: Path) -> list[str]:
    import hashlib

    with av.open(str(path)) as c:
        return [hashlib.md5(f.to_ndarray(format="rgb24").tobytes()).hexdigest() for f in c.decode(video=0)]


def audio_packets(path: Path) -> list[tuple]:
    with av.open(str(path)) as c:
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(audio=0) if p.size]


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory):
    """`--resume` on one machine, same plans: the outputs `--ray` must give."""
    d = tmp_path_factory.mktemp("ray-reference")
    refs = {}
    for name, inp, out, extra in (
            ("x264", media["av"], "av.mp4", ("--encoder", "x264", "--segment", "8f")),
            ("ffv1", media["av"], "av.mkv", ("--encoder", "ffv1", "--segment", "8f")),
            ("pairs-dedup", media["pairs"], "pd.mkv", ("--encoder", "ffv1", "--segment", "16f", "--pipeline", DEDUP)),
            ("pairs-window", media["pairs"], "pw.mkv", ("--encoder", "ffv1", "--segment", "16f",
                                                       "--pipeline", DEDUP_WINDOW)),
            ("hold", media["hold"], "hold.mkv", ("--encoder", "ffv1", "--segment", "16f", "--pipeline", DEDUP)),
            ("long", media["long"], "long.mkv", ("--encoder", "ffv1", "--segment", "16f"))):
        ok(stream(inp, d / out, "--resume", *extra))
        refs[name] = d / out
    return refs


def report(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- identical output ----------------------------------------------------------------------

@pytest.mark.parametrize("encoder, ext", [("x264", "mp4"), ("ffv1", "mkv")])
def test_ray_output_is_identical_to_resume(cluster, media, reference, tmp_path, encoder, ext):
    c, _ = cluster
    out = tmp_path / f"out.{ext}"
    ok(stream(media["av"], out, "--ray", c.address, "--ray-gpus", "1", "--encoder", encoder,
              "--segment", "8f", "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(reference[encoder])  # byte-identical: deterministic encoders
    assert framemd5(out) == framemd5(reference[encoder])
    audio, source_audio = audio_packets(out), audio_packets(media["av"])
    assert [b for _, b in audio] == [b for _, b in source_audio]  # copied once, every packet
    if ext == "mp4":  # same container: the input's own timestamps (Matroska has no negative priming pts)
        assert audio == source_audio
    r = report(tmp_path / "r.json")
    assert r["segments"]["total"] == 6 and r["segments"]["done"] == 6
    assert r["ray"]["gpus_per_segment"] == 1
    assert all(len(w["gpu_ids"]) == 1 for w in r["ray"]["workers"].values())  # one (fake) GPU each
    assert not os.path.exists(tmp_path / f".out.{ext}.engine-work")


def overlapped(workers: dict) -> bool:
    """Whether two segments ran at the same time (wall clock of their workers)."""
    spans = sorted((w["began"], w["ended"]) for w in workers.values())
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("pipeline, ref", [(DEDUP, "pairs-dedup"), (DEDUP_WINDOW, "pairs-window")])
def test_dedup_segments_run_side_by_side_on_speculated_contexts(cluster, media, reference, tmp_path,
                                                                pipeline, ref):
    """Each segment's context is guessed by a pre-scan with a fresh dedup; in step with the true
    chain here (s − L is even), so every guess is right, and the segments overlap in time.
    (test.jitter only delays frames, ~0.3 s a segment, so that two segments meet in time.)"""
    c, _ = cluster
    out = tmp_path / "o.mkv"
    ok(stream(media["pairs"], out, "--ray", c.address, "--encoder", "ffv1", "--segment", "16f",
              "--pipeline", f"{pipeline},test.jitter:max_ms=40", "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(reference[ref])
    r = report(tmp_path / "r.json")["ray"]
    assert r["sequential"] is False
    workers = r["workers"]
    guessed = sum(w["speculated"] for w in workers.values())  # those whose predecessor was not recorded yet
    assert not workers["0"]["speculated"] and guessed >= 1
    assert r["speculation"]["hits"] == guessed and r["speculation"]["misses"] == 0
    assert overlapped(workers), workers


def test_deinterlaced_segments_on_speculated_contexts_match_one_machine(cluster, media, tmp_path):
    """--deinterlace reaches every task, the pre-scans too: a guessed context on frames the
    pre-scan did not deinterlace would miss, and a segment that lacks a neighbour frame for
    bwdif would differ at its cuts from `--resume` and from the single pass."""
    c, _ = cluster
    common = ("--encoder", "ffv1", "--segment", "16f", "--pipeline", DEDUP, "--deinterlace", "all")
    single, resumed, out = tmp_path / "single.mkv", tmp_path / "resumed.mkv", tmp_path / "ray.mkv"
    ok(stream(media["pairs"], single, *common[:2], *common[4:]))
    ok(stream(media["pairs"], resumed, "--resume", *common))
    ok(stream(media["pairs"], out, "--ray", c.address, *common, "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(resumed)
    assert framemd5(out) == framemd5(single)
    r = report(tmp_path / "r.json")
    assert r["deinterlace"]["mode"] == "all" and r["ray"]["speculation"]["misses"] == 0


def test_an_image_sequence_reaches_the_workers_at_its_rate(cluster, tmp_path):
    """The rate is not in the files: the task carries it, or a worker would read 24 (or 25) fps.
    So is the first frame's size: the last frames are larger, and a segment of only those
    must still come out at the first frame's size (engine/frame_size.py)."""
    import cv2

    c, _ = cluster
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(20):
        size = (48, 64) if i < 14 else (60, 80)
        cv2.imwrite(str(frames / f"{i + 1:04d}.png"), cv2.cvtColor(index_frame(i, *size), cv2.COLOR_RGB2BGR))
    common = ("--encoder", "ffv1", "--segment", "6f", "--fps", "30")
    resumed, out = tmp_path / "resumed.mkv", tmp_path / "ray.mkv"
    ok(stream(frames / "%04d.png", resumed, "--resume", *common))
    ok(stream(frames / "%04d.png", out, "--ray", c.address, *common, "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(resumed)
    assert report(tmp_path / "r.json")["frame_size"]["scaled"] == 6
    with av.open(str(out)) as container:
        s = container.streams.video[0]
        assert [round(float(f.pts * s.time_base), 3) for f in container.decode(s)] == \
            [round(n / 30, 3) for n in range(20)]


def test_a_wrong_guess_is_run_again_with_the_true_context(cluster, media, reference, tmp_path):
    """A hold (frames 10..50) spans the cuts at 32 and 48: the true chain marks 10, 14, ..., 50
    unique, a fresh one started at s − 16 marks 16, 20, ... (out of step), so segments 2 and 3
    guess 28 and 44 where the true contexts are 30 and 46; segment 1's pre-scan starts at 0."""
    c, _ = cluster
    out = tmp_path / "o.mkv"
    ok(stream(media["hold"], out, "--ray", c.address, "--encoder", "ffv1", "--segment", "16f",
              "--pipeline", DEDUP, "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(reference["hold"])
    r = report(tmp_path / "r.json")
    speculation = r["ray"]["speculation"]
    assert (speculation["frames"], speculation["hits"], speculation["misses"]) == (16, 1, 2)
    assert speculation["prescan_s"] > 0
    runs = {int(k): (w["speculated"], w["decode_start"]) for k, w in r["ray"]["workers"].items()}
    assert runs[2] == (False, 30) and runs[3] == (False, 46)  # the accepted runs: true contexts
    assert r["ray"]["attempts"] == {"0": 1, "1": 1, "2": 2, "3": 2}
    assert "speculation: 1 of 3 guessed contexts right, 2 segment(s) run again" in r["notes"]


def test_worker_killed_mid_speculation_is_run_again(cluster, media, reference, tmp_path):
    c, _ = cluster
    out = tmp_path / "o.mkv"
    env = {"ENGINE_CRASH_AT": "speculate-frame:5", "ENGINE_CRASH_ONCE": str(tmp_path / "crashed")}
    ok(stream(media["pairs"], out, "--ray", c.address, "--encoder", "ffv1", "--segment", "16f",
              "--pipeline", DEDUP, "--report", tmp_path / "r.json", env=env))
    assert (tmp_path / "crashed").exists()  # a worker died in a speculative segment's pre-scan
    assert sha256(out) == sha256(reference["pairs-dedup"])
    r = report(tmp_path / "r.json")["ray"]
    assert sorted(r["attempts"].values()) == [1, 1, 1, 1, 1, 2]
    assert r["speculation"]["misses"] == 0


def test_only_checked_segments_are_recorded_in_plan_order(cluster, media, reference, tmp_path):
    """The driver killed as it records its third segment: the manifest holds segments 0 and 1
    (never a later one whose guess was not checked), and a restarted driver finishes the job."""
    c, _ = cluster
    out = tmp_path / "o.mkv"
    args = ("--ray", c.address, "--encoder", "ffv1", "--segment", "16f", "--pipeline", DEDUP)
    killed = stream(media["hold"], out, *args, env={"ENGINE_CRASH_AT": "segment-done:3"})
    assert killed.returncode == -9 and not out.exists()
    manifest = json.loads((tmp_path / ".o.mkv.engine-work" / "manifest.json").read_text())
    assert sorted(manifest["segments"]) == ["0", "1"]
    ok(stream(media["hold"], out, *args, "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(reference["hold"])
    r = report(tmp_path / "r.json")
    assert r["segments"]["reused"] == 2
    # segment 2 runs on the known context (1 is recorded); 3 guesses again, wrongly, as before
    speculation = r["ray"]["speculation"]
    assert (speculation["frames"], speculation["hits"], speculation["misses"]) == (16, 0, 1)


# ---- faults --------------------------------------------------------------------------------

def test_worker_killed_in_its_first_attempt_is_run_again(cluster, media, reference, tmp_path):
    c, _ = cluster
    out = tmp_path / "out.mkv"
    env = {"ENGINE_CRASH_AT": "segment-frame:3", "ENGINE_CRASH_ONCE": str(tmp_path / "crashed")}
    ok(stream(media["av"], out, "--ray", c.address, "--encoder", "ffv1", "--segment", "8f",
              "--report", tmp_path / "r.json", env=env))
    assert (tmp_path / "crashed").exists()  # a worker really died, SIGKILL mid-segment
    assert sha256(out) == sha256(reference["ffv1"])
    attempts = report(tmp_path / "r.json")["ray"]["attempts"]
    assert sorted(attempts.values()) == [1, 1, 1, 1, 1, 2]  # only the killed segment ran twice


def test_restarted_driver_reuses_recorded_segments(cluster, media, reference, tmp_path):
    c, _ = cluster
    out = tmp_path / "out.mkv"
    args = ("--ray", c.address, "--encoder", "ffv1", "--segment", "8f")
    killed = stream(media["av"], out, *args, env={"ENGINE_CRASH_AT": "segment-done:3"})
    assert killed.returncode == -9 and not out.exists()
    manifest = json.loads((tmp_path / ".out.mkv.engine-work" / "manifest.json").read_text())
    assert len(manifest["segments"]) == 2  # the third was complete but not yet recorded
    ok(stream(media["av"], out, *args, "--report", tmp_path / "r.json"))
    assert sha256(out) == sha256(reference["ffv1"])
    r = report(tmp_path / "r.json")
    assert r["segments"]["reused"] == 2 and r["segments"]["done"] == 4


def test_a_stop_signal_after_the_output_is_in_place_lets_the_driver_finish(cluster, media, reference, tmp_path):
    # was exit 130 over a complete output, with the work directory left behind
    c, _ = cluster
    out = tmp_path / "out.mkv"
    r = stream(media["av"], out, "--ray", c.address, "--encoder", "ffv1", "--segment", "8f",
               env={"ENGINE_CRASH_AT": "work-dir-removal:1:INT"})
    assert r.returncode == 0, r.stderr
    assert "interrupted after the output was complete; the job finished" in r.stderr
    assert sha256(out) == sha256(reference["ffv1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv"]


RAY_CORE_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \w+\.cc:\d+: ")


def engine_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if not RAY_CORE_LOG.match(line)]


def test_a_failing_segment_fails_the_job_with_the_one_machine_error(cluster, media, tmp_path):
    c, _ = cluster
    out = tmp_path / "o.mkv"
    args = ("--encoder", "ffv1", "--segment", "8f", "--pipeline", "test.fail-map:at=20")
    local = stream(media["video"], tmp_path / "local.mkv", "--resume", *args)
    r = stream(media["video"], out, "--ray", c.address, *args)
    assert r.returncode == local.returncode == 1
    # one line, the same; Ray's driver core may add its own C++ log line as the failed job winds
    # down ("task_manager.cc: Failed to push error to driver", once in a full test run), which
    # the engine cannot hold back without hiding every other line its fd 2 carries
    assert engine_lines(r.stderr) == local.stderr.strip().splitlines()
    assert "stage 'test.fail-map' at frame seq 20 failed" in r.stderr
    assert not out.exists()


# ---- errors, local Ray, batch ----------------------------------------------------------------

def test_without_ray_installed_is_one_line_error(media, tmp_path):
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    # what Python raises when ray is not installed (the real one is: shadowed here)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    r = stream(media["video"], tmp_path / "o.mkv", "--ray", env={"PYTHONPATH": str(fake.parent)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["engine: error: --ray needs Ray, an optional extra: "
                                             "pip install 'engine[ray]'"]


def test_unreachable_address_is_one_line_error_without_a_hang(media, tmp_path):
    started = time.monotonic()
    r = stream(media["video"], tmp_path / "o.mkv", "--ray", "127.0.0.1:1", timeout=60)
    assert r.returncode == 2 and time.monotonic() - started < 45
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engine: error: cannot reach Ray at 127.0.0.1:1")
    assert sorted(os.listdir(tmp_path)) == []  # no output, and no work directory that a rerun with
    # other options would be refused for ("belongs to another job")


def _stopped_mid_run(c, media, tmp_path, signals: list[int], gap_s: float = 0.3):
    """The driver given `signals` (gap_s apart) once segments are being written: its exit
    status, stderr, work directory and output path. `c` None: the driver's own local Ray, in a
    session of its own (its processes: `_session_processes(code's pid)`)."""
    out = tmp_path / "o.mkv"
    cmd = [sys.executable, "-m", "engine", "stream", str(media["long"]), str(out), "--quiet", "--ray",
           *([c.address] if c is not None else []), "--encoder", "ffv1", "--segment", "16f",
           "--pipeline", "test.jitter:max_ms=400"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **TEST_STAGES}, stderr=subprocess.PIPE, text=True,
                            start_new_session=c is None,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _stopped_mid_run.pid = proc.pid
    work = tmp_path / ".o.mkv.engine-work"
    deadline = time.monotonic() + 60
    while not any(work.glob("*segment-*")) and time.monotonic() < deadline:  # segments are being written
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    for i, signum in enumerate(signals):
        if i:
            time.sleep(gap_s)
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the driver did not stop within 30 s of {signals}")
    return proc.returncode, err, work, out


def _cluster_freed(c) -> None:
    deadline = time.monotonic() + 30  # cancelled tasks give their CPUs back
    while ray_free_cpus(c) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_free_cpus(c) == 2


def test_ctrl_c_stops_the_driver_and_its_segments(cluster, media, tmp_path):
    """SIGINT mid-run (Ctrl-C): exit 130 with one line, in seconds; no output; the work
    directory stays for a resume; the segments in flight are cancelled, so the cluster is free."""
    c, _ = cluster
    code, err, work, out = _stopped_mid_run(c, media, tmp_path, [signal.SIGINT])
    assert code == 130 and err.strip().splitlines() == ["engine: error: interrupted"]
    assert not out.exists() and (work / "manifest.json").exists()
    _cluster_freed(c)


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "hung up")])
def test_sigterm_and_sighup_stop_the_driver_as_without_ray(cluster, media, tmp_path, signum, code, said):
    """Was: SIGTERM exit 1 (or 15) with Ray's C++ dump (ray.init put its own handler in), SIGHUP
    130 "interrupted" (Ray's waits turn a handler's exception into a KeyboardInterrupt)."""
    c, _ = cluster
    returncode, err, work, out = _stopped_mid_run(c, media, tmp_path, [signum])
    assert (returncode, err.strip().splitlines()) == (code, [f"engine: error: {said}"])
    assert not out.exists() and (work / "manifest.json").exists()
    _cluster_freed(c)


def test_ctrl_c_again_and_again_still_stops_with_130(cluster, media, tmp_path):
    """Further Ctrl-Cs, 0.3 s apart, land in the driver's wind-down (cancelling segments, the
    reporter, ray.shutdown) or on the way out: noted there, then ignored. Was: exit 1 (a
    KeyboardInterrupt inside Ray's shutdown) or death by SIGINT (Python's shutdown puts the
    default handler back), with a local Ray's agents left running."""
    c, _ = cluster
    code, err, work, out = _stopped_mid_run(c, media, tmp_path, [signal.SIGINT] * 3)
    assert code == 130 and err.strip().splitlines() == ["engine: error: interrupted"], err
    assert not out.exists() and (work / "manifest.json").exists()
    _cluster_freed(c)


def _session_processes(sid: int) -> list[str]:
    """Command lines of the live processes of session `sid` (zombies excluded)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                found.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120])
        except (OSError, ValueError, IndexError):
            continue
    return found


AGENTS = ("dashboard/agent.py", "runtime_env/agent", "DashboardAgent", "RuntimeEnvAgent")


def test_ctrl_c_while_the_local_ray_starts_leaves_no_ray_processes(media, tmp_path):
    """Ctrl-C once the raylet has started its agents, ray.init not yet returned: the signal waits
    for the start, then everything Ray started is shut down. Was: ray::DashboardAgent and
    ray::RuntimeEnvAgent left running for a minute (or a SIGSEGV)."""
    cmd = [sys.executable, "-m", "engine", "stream", str(media["video"]), str(tmp_path / "o.mkv"), "--quiet",
           "--ray", "--encoder", "ffv1", "--segment", "8f", "--pipeline", "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **TEST_STAGES}, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not any(agent in p for p in _session_processes(proc.pid) for agent in AGENTS) \
                and time.monotonic() < deadline:  # the raylet has started its agents
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and err.strip().splitlines() == ["engine: error: interrupted"], err
        deadline = time.monotonic() + 20  # ray.shutdown has returned: what is left is on its way out
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_processes(proc.pid) == []
    finally:
        left = _session_processes(proc.pid)
        if left:  # the test's own processes only: its session
            os.killpg(proc.pid, signal.SIGKILL)


def ray_free_cpus(c) -> float:
    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
                            "print(ray.available_resources().get('CPU', 0))" % c.address],
                           capture_output=True, text=True, timeout=60)
    return float(probe.stdout.strip().splitlines()[-1])


def test_more_gpus_than_the_cluster_has_is_refused(cluster, media, tmp_path):
    c, _ = cluster
    r = stream(media["video"], tmp_path / "o.mkv", "--ray", c.address, "--ray-gpus", "3")
    assert r.returncode == 2
    assert r.stderr.startswith("engine: error: each segment needs 3 GPU but no node of Ray at")
    assert "(the most is 1)" in r.stderr


def test_batch_on_a_local_ray(media, reference, tmp_path):
    """No address: the driver starts its own Ray. Two inputs share it; each gets its output."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mkv").symlink_to(media["av"])  # a.mkv's output: same name, in OUT_DIR
    os.symlink(media["long"], inputs / "b.mkv")
    (inputs / "notes.md").write_text("not a video\n")
    out = tmp_path / "out"
    ok(stream(inputs, out, "--ray", "--encoder", "ffv1", "--segment", "8f", "--report", tmp_path / "r.json",
              timeout=200))
    assert sorted(p.name for p in out.iterdir()) == ["a.mkv", "b.mkv"]
    assert sha256(out / "a.mkv") == sha256(reference["ffv1"])
    assert framemd5(out / "b.mkv") == framemd5(media["long"])  # FFV1 is lossless: the input's frames
    reports = report(tmp_path / "r.json")["inputs"]
    assert [r["segments"]["total"] for r in reports] == [6, 12]
    assert reports[0]["ray"]["where"] == "a local Ray"


def test_a_killed_ray_batch_keeps_the_input_it_finished(cluster, media, reference, tmp_path):
    """The driver killed once the first input's output was in place (its work directory not
    yet removed): the rerun redid that input from scratch. Now it is kept, file untouched."""
    c, _ = cluster
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a.mkv", "b.mkv"):
        (inputs / name).write_bytes(Path(media["av"]).read_bytes())
    args = ("--ray", c.address, "--encoder", "ffv1", "--segment", "8f")
    killed = stream(inputs, out, *args, env={"ENGINE_CRASH_AT": "work-dir-removal:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir() if p.is_file()}
    assert len(before) == 1  # whichever input finished first
    ok(stream(inputs, out, *args, "--report", tmp_path / "r.json"))
    reports = report(tmp_path / "r.json")["inputs"]
    assert [os.path.basename(r["output"]) for r in reports if r.get("kept")] == list(before)
    name = next(iter(before))
    assert (out / name).stat().st_mtime_ns == before[name][0]
    assert sha256(out / "a.mkv") == sha256(out / "b.mkv") == sha256(reference["ffv1"])
    assert sorted(os.listdir(out)) == ["a.mkv", "b.mkv"]
    assert sorted(os.listdir(tmp_path)) == ["in", "out", "r.json"]  # the batch's record removed


def test_batch_list_file_gives_each_input_its_output_and_work_dir(media, tmp_path):
    from engine.batch import batch_configs
    from engine.errors import UserError
    from engine.job import JobConfig

    listing = tmp_path / "films.txt"
    listing.write_text(f"# two films\n{media['video']}\n\n{os.path.relpath(media['long'], tmp_path)}\n")
    configs = batch_configs(JobConfig(input=str(listing), output=str(tmp_path / "out"), work_dir="/w",
                                      report="r.json"))
    assert [(c.input, c.output, c.work_dir, c.report) for c in configs] == [
        (str(media["video"]), str(tmp_path / "out" / "video.mp4"), "/w/video.mp4", None),
        (os.path.join(str(tmp_path), os.path.relpath(media["long"], tmp_path)),
         str(tmp_path / "out" / "long.mp4"), "/w/long.mp4", None)]
    listing.write_text(f"{media['video']}\n{media['dir'] / 'missing.mp4'}\n")
    with pytest.raises(UserError, match="does not exist: .*missing.mp4"):
        batch_configs(JobConfig(input=str(listing), output=str(tmp_path / "out")))
    listing.write_text(f"{media['video']}\n{media['video']}\n")
    with pytest.raises(UserError, match="two inputs would write"):
        batch_configs(JobConfig(input=str(listing), output=str(tmp_path / "out")))


def test_progress_shows_workers_and_their_gpus():
    import io

    from rich.console import Console

    from engine.gpu import GpuSample
    from engine.metrics import RunSnapshot, SegmentCounts, WorkerSnapshot
    from engine.progress import LogReporter, RichReporter

    gpu = GpuSample(0, "H200", 87, 40000, 143000)
    snap = RunSnapshot(elapsed_s=10.0, frames_done=500, frames_total=1000, stages=[],
                       segments=SegmentCounts(3, 1, 4, running=2),
                       workers=[WorkerSnapshot("10.0.0.2:411", "film.mkv #4", 120, 24.5, [gpu]),
                                WorkerSnapshot("10.0.0.3:97", "film.mkv #5", 80, 19.0, [])])
    log = io.StringIO()
    LogReporter(log).draw(snap, [])
    line = log.getvalue()
    assert "segments 4/8 (1 reused, 2 running, 4 pending)" in line
    assert "[10.0.0.2:411 24.5 fps]" in line and "[10.0.0.3:97 19.0 fps]" in line
    rich = RichReporter()
    rich.console = Console(file=io.StringIO(), width=200)
    rich.console.print(rich._table(snap, [], "t"))
    text = rich.console.file.getvalue()
    assert "film.mkv #4" in text and "24.5" in text and "10.0.0.2 gpu0" in text and "87%" in text


def test_stall_timeout_gives_up_only_after_no_node_could_run_a_segment_that_long(monkeypatch):
    """Ray waits for ever for a node that fits: the driver's clock, not Ray's, ends the job.
    A fake cluster whose nodes come and go, and a fake clock (the real check, no Ray)."""
    from types import SimpleNamespace

    from engine import ray_job
    from engine.errors import EngineError

    clock = [1000.0]
    monkeypatch.setattr(ray_job, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}]
    driver = object.__new__(ray_job.RayDriver)
    driver.ray = SimpleNamespace(nodes=lambda: nodes)
    driver.cpus, driver.gpus, driver.where, driver.stall_timeout_s = 1.0, 1.0, "the cluster", 30.0
    driver._nodes_checked, driver._no_node_since, driver.slots = clock[0], None, 1

    def check_after(seconds):
        clock[0] += seconds
        driver._check_nodes()

    check_after(ray_job.NODE_CHECK_S)
    assert driver.slots == 1 and driver._no_node_since is None
    nodes[:] = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": False, "Resources": {"CPU": 2, "GPU": 1}}]
    check_after(ray_job.NODE_CHECK_S)  # no live node has a GPU: the stall clock starts
    check_after(25)
    nodes[:] = [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}}]
    check_after(10)  # 35 s since it started, but a node came back: the clock is reset
    assert driver._no_node_since is None and driver.slots == 2
    nodes[:] = []
    check_after(ray_job.NODE_CHECK_S)
    check_after(24)  # 24 s without a node: still waiting
    with pytest.raises(EngineError, match=r"no node of the cluster has been able to run a segment for 30 s"):
        check_after(ray_job.NODE_CHECK_S + 2)


def test_an_address_that_answers_but_is_not_ray_is_refused_at_once(media, tmp_path):
    """A typo'd port (Ray's dashboard, any web server): ray.init hung for minutes there."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        r = stream(media["video"], tmp_path / "o.mkv", "--ray", address, timeout=60)
    finally:
        server.shutdown()
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"engine: error: {address} answers but is not a Ray server (no gRPC there): give the port "
        f"`ray start --head --port` was given (6379 by default)"]
    assert sorted(os.listdir(tmp_path)) == []


def test_addresses_are_read_as_ray_reads_them():
    from engine import ray_job
    from engine.errors import UserError

    with pytest.raises(UserError, match=r"invalid Ray address '127.0.0.1:99999'; expected HOST:PORT \(a port"):
        ray_job._check_reachable("127.0.0.1:99999")
    with pytest.raises(UserError, match=r"cannot reach Ray at \[::1\]:1: (Connection refused|Cannot assign)"):
        ray_job._check_reachable("[::1]:1")  # brackets taken off: was "Name or service not known"


@pytest.mark.parametrize("cpus, gpus, said", [
    (0.00001, None, "--ray-cpus must be a finite number >= 0.0001, got 1e-05"),
    (float("inf"), None, "--ray-cpus must be a finite number >= 0.0001, got inf"),
    (1.0, float("inf"), "--ray-gpus must be 0 or a finite number >= 0.0001, got inf"),
    (1.0, 0.00001, "--ray-gpus must be 0 or a finite number >= 0.0001, got 1e-05")])
def test_resource_requests_ray_cannot_hold_are_refused_before_it_starts(cpus, gpus, said):
    """Was: a traceback once Ray had started (< 0.0001), or the refusal only after the start (inf)."""
    from engine.errors import UserError
    from engine.ray_job import RayOptions

    with pytest.raises(UserError) as info:
        RayOptions(cpus=cpus, gpus=gpus)
    assert str(info.value) == said
    RayOptions(cpus=0.0001, gpus=0)


def test_ray_that_fails_to_import_says_why(media, tmp_path):
    """Installed but broken (a missing dependency, a library it cannot load): the real error,
    not "needs Ray, an optional extra" (pip then says everything is installed)."""
    fake = tmp_path / "broken" / "ray"
    fake.mkdir(parents=True)
    for body, said in (("import ray_dependency_that_is_missing\n",
                        "ModuleNotFoundError: No module named 'ray_dependency_that_is_missing'"),
                       ("raise OSError('libstdc++.so.6: version GLIBCXX_3.4.30 not found')\n",
                        "OSError: libstdc++.so.6: version GLIBCXX_3.4.30 not found")):
        (fake / "__init__.py").write_text(body)
        r = stream(media["video"], tmp_path / "o.mkv", "--ray", env={"PYTHONPATH": str(fake.parent)})
        assert (r.returncode, r.stderr.strip().splitlines()) == (
            2, [f"engine: error: --ray: Ray is installed but cannot be imported: {said}"])


def test_a_batch_with_an_unreadable_input_is_refused_before_anything_is_created(cluster, media, tmp_path):
    """As without --ray: every input's header is checked first. Was: the work directories of
    the inputs sorted before the bad one left in OUT."""
    c, _ = cluster
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").symlink_to(media["video"])
    (inputs / "b.mp4").write_text("garbage\n")
    out = tmp_path / "out"
    r = stream(inputs, out, "--ray", c.address, "--encoder", "ffv1", "--segment", "8f")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"engine: error: input is not a readable video file: "
                                             f"{inputs / 'b.mp4'} (Invalid data found when processing input)"]
    assert not out.exists()


def _fake_driver(inputs):
    from engine import ray_job

    driver = object.__new__(ray_job.RayDriver)
    driver.inputs, driver.in_flight, driver.live = inputs, {}, {}
    driver.started, driver.frames_total, driver._view = time.perf_counter(), 0, (0, [], 0, {})
    driver._stages, driver._stage_frames = [], 0
    return driver


def _fake_input(number, name, segments):
    from types import SimpleNamespace

    from engine import ray_job

    job = SimpleNamespace(config=SimpleNamespace(input=f"/in/{name}"), reused=set(),
                          context=SimpleNamespace(ordered=False))
    return ray_job._Input(number, job, ray_job.deque(segments))


def test_progress_counts_each_frame_once_and_adds_up_the_stages():
    """A finished segment's last worker row stays on the board until the next read: it was added
    to the finished frames (done: 228 frames for 200, the count going back once read); the
    summary had no stage lines; "N running" counted every submitted segment."""
    from types import SimpleNamespace

    from engine.metrics import StageSnapshot, WorkerSnapshot
    from engine.segments import Segment

    segs = [Segment(i, i * 10, i * 10 + 10, i * 10) for i in range(3)]
    inp = _fake_input(0, "film.mkv", segs)
    driver = _fake_driver([inp])
    driver.frames_total = 30
    for ref, seg in enumerate(segs):
        driver.in_flight[ref] = (inp, seg, f"/w/{seg.index}")
        inp.running += 1
    inp.todo.clear()
    driver._publish()
    driver.live = {"0/0": WorkerSnapshot("w1", "film.mkv #0", 8, 4.0), "0/1": WorkerSnapshot("w2", "film.mkv #1", 3, 2.0)}
    snap = driver.snapshot()
    assert snap.frames_done == 11 and snap.segments.running == 2 and len(snap.workers) == 2  # #2 not started yet

    def stage(name, items, busy, counters):
        return StageSnapshot(name, "map", 1, items, busy, 0.5, 0.25, counters).as_dict(1.0)

    del driver.in_flight[0]
    inp.running -= 1
    driver.board = SimpleNamespace(forget=SimpleNamespace(remote=lambda key: None))
    result = SimpleNamespace(frames=10, size=1, sha256="x", stages=[stage("source", 12, 1.0, {}),
                             stage("dedup", 12, 2.0, {"duplicates": 3}), stage("encode", 10, 0.5, {})])
    inp.results[0], inp.frames_done = result, 10  # accepted (as _accept does)
    driver._count(result)
    driver._publish()
    snap = driver.snapshot()  # the board still has #0's last row, at 8 frames
    assert snap.frames_done == 13 and [w.segment for w in snap.workers] == ["film.mkv #1"]
    assert snap.segments.running == 1
    inp.results[1] = SimpleNamespace(frames=10, stages=[stage("source", 11, 1.5, {}),
                                                         stage("dedup", 11, 1.0, {"duplicates": 1}),
                                                         stage("encode", 10, 0.5, {})])
    inp.frames_done = 20
    driver._count(inp.results[1])
    del driver.in_flight[1]
    driver._publish()
    snap = driver.snapshot()
    assert snap.frames_done == 20 and snap.workers == [] and snap.segments.running == 0
    assert [(s.name, s.items, s.busy_s, s.counters) for s in snap.stages] == [
        ("source", 23, 2.5, {}), ("dedup", 23, 3.0, {"duplicates": 4}), ("encode", 20, 1.0, {})]
    assert snap.segments.context_frames == 3


def test_the_board_drops_finished_and_silent_workers(monkeypatch):
    """A killed worker's row stayed at 0.0 fps until its segment's rerun started."""
    from types import SimpleNamespace

    from engine import ray_job
    from engine.metrics import WorkerSnapshot

    clock = [100.0]
    monkeypatch.setattr(ray_job, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    board = ray_job.ProgressBoard()
    board.started("0/0", WorkerSnapshot("w1", "a #0", 0, 0.0))
    board.started("0/1", WorkerSnapshot("w2", "a #1", 0, 0.0))
    clock[0] += ray_job.STALE_S - 1
    board.update("0/1", WorkerSnapshot("w2", "a #1", 5, 1.0))
    assert sorted(board.read()[0]) == ["0/0", "0/1"]
    clock[0] += 2  # w1 silent for longer than STALE_S: dead
    assert sorted(board.read()[0]) == ["0/1"]
    board.forget("0/1")
    assert board.read() == ({}, {"0/0": 1, "0/1": 1})  # attempts stay


def test_a_failing_segment_in_a_batch_names_its_input():
    from engine import ray_job
    from engine.segments import Segment

    seg = Segment(0, 0, 10, 0)
    driver = _fake_driver([_fake_input(0, "a.mp4", [seg]), _fake_input(1, "d.mp4", [seg])])
    with pytest.raises(ray_job.SegmentFailed) as info:
        driver._accept(driver.inputs[1], seg, {"error": "stage 'x' at frame seq 150 failed: E: e",
                                               "exit_code": 1}, "/w/0")
    assert str(info.value) == "d.mp4: stage 'x' at frame seq 150 failed: E: e" and info.value.exit_code == 1


# ---- last: a node taken away from the module's cluster -----------------------------------

def _writer_node(work: Path, raylets: dict[int, object]):
    """The node whose worker is writing a segment now: partial files are `.NAME.partial-HOST-PID.EXT`."""
    for p in work.glob(".segment-*.partial-*"):
        pid = int(p.name.rsplit("-", 1)[1].split(".")[0])
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in raylets:
            return raylets[ppid], p.name
    return None, None


def test_node_removed_mid_run_costs_only_its_segment(cluster, media, reference, tmp_path):
    """Runs last: it takes a node away from the module's cluster."""
    c, nodes = cluster
    out = tmp_path / "long.mkv"
    cmd = [sys.executable, "-m", "engine", "stream", str(media["long"]), str(out), "--quiet",
           "--ray", c.address, "--encoder", "ffv1", "--segment", "16f",
           "--pipeline", "test.jitter:max_ms=120", "--report", str(tmp_path / "r.json")]
    driver = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **TEST_STAGES},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
        work = tmp_path / ".long.mkv.engine-work"
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and driver.poll() is None and time.monotonic() < deadline:
            victim, partial = _writer_node(work, raylets)
            time.sleep(0.02)
        assert victim is not None, "no segment seen running on a worker node"
        c.remove_node(victim)  # raylet and its workers gone, mid-segment
        _, err = driver.communicate(timeout=150)
    finally:
        driver.kill()
    assert driver.returncode == 0, err
    assert sha256(out) == sha256(reference["long"])  # jitter only delays: same frames, same bytes
    workers = report(tmp_path / "r.json")["ray"]["workers"]
    lost = str(int(partial.split("-")[1].split(".")[0]))  # .segment-00003.partial-PID.mkv
    assert len(workers) == 6 and workers[lost]["node"] != victim.node_id[:12], (partial, workers)
