"""`--ray` figures: its overhead over `--resume` on one machine, and a scaling model checked
against 1 and 2 local workers, then used to predict N = 2..16 GPUs on a 2-hour input.

    python tools/ray_bench.py --out bench/results-cpu-2core-ray.json

Cases, run round-robin (interleaved) as real CLI processes, each writing its report:
  resume   `--resume --segment S` (the one-machine engine, segments one after another)
  ray-1    `--ray --ray-cpus 2` on a local Ray with 2 CPUs: one segment at a time
  ray-2    `--ray --ray-cpus 1`: two segments at a time, two worker processes
for two pipelines: `none` (transcode only: the fixed costs) and `test.jitter:max_ms=M`, a
stand-in for a device stage (it waits M/2 ms per frame on average and uses no CPU, as a
GPU-bound stage's host thread mostly does; a 2-core box shared with other jobs cannot show
CPU-bound scaling). Wall time is measured around each process; CPU time is the driver's
(with its waited-for children) and, for Ray, each worker's own (`ray.workers[].cpu_s`).

The model: T(N) = process + max(plan, Ray start-up) + warm + makespan(segments over N
workers in plan order, each t_seg + d) + join: the plan runs while Ray starts; warm is the
first worker's start and the driver's per-segment records; t_seg the worker's time for a
segment and d Ray's task round trip, measured with ray-1 and in-process.
It predicts ray-2 (checked here), then a 2-hour 1080p film on N GPUs.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
from engine.job import write_report  # noqa: E402


def run_case(inp: Path, scratch: Path, case: str, pipeline: str, segment: str, tag: str) -> dict:
    out, rep = scratch / f"{tag}.mp4", scratch / f"{tag}.json"
    args = [sys.executable, "-m", "engine", "stream", str(inp), str(out), "--quiet", "--encoder", "x264",
            "--preset", "ultrafast", "--segment", segment, "--pipeline", pipeline, "--report", str(rep)]
    args += {"resume": ["--resume"], "ray-1": ["--ray", "--ray-cpus", "2"],
             "ray-2": ["--ray", "--ray-cpus", "1"]}[case]
    env = {**os.environ, "ENGINE_STAGE_MODULES": "engine.testing", "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True, timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(rep.read_text())
    out.unlink()
    segs = [s["wall_s"] for s in report["segments"]["list"]]
    row = {"case": case, "wall_s": round(wall, 3), "engine_wall_s": report["wall_s"],
           "driver_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3),
           "join_s": report["join_s"], "segment_wall_s": segs}
    if "ray" in report:
        r = report["ray"]
        row.update(startup_s=r["startup_s"], plan_s=r["plan_s"],
                   worker_cpu_s=round(sum(w["cpu_s"] for w in r["workers"].values()), 3),
                   processes=len({w["worker"] for w in r["workers"].values()}))
    return row


def makespan(costs: list[float], workers: int) -> float:
    """Segments handed out in plan order to whichever worker is free first (Ray's queue)."""
    free = [0.0] * workers
    for c in costs:
        heapq.heapreplace(free, free[0] + c)
    return max(free)


def fit(rows: list[dict], task_s: float) -> dict:
    """Median parameters from the ray-1 runs; `task_s` is Ray's own round trip per task."""
    r1 = [r for r in rows if r["case"] == "ray-1"]
    seg = [statistics.median(x) for x in zip(*(r["segment_wall_s"] for r in r1))]
    return {"segment_s": seg, "dispatch_s": task_s,
            # python start, imports, ray.shutdown: outside the driver's own clock
            "process_s": statistics.median(r["wall_s"] - max(r["plan_s"], r["startup_s"]) - r["engine_wall_s"]
                                           for r in r1),
            # the first worker process (start, imports) and what the driver does per segment
            # (digest, manifest rewrite), less the round trips counted per task
            "warm_s": statistics.median(r["engine_wall_s"] - sum(r["segment_wall_s"]) - r["join_s"]
                                        - len(seg) * task_s for r in r1),
            "plan_s": statistics.median(r["plan_s"] for r in r1),
            "startup_s": statistics.median(r["startup_s"] for r in r1),
            "join_s": statistics.median(r["join_s"] for r in r1)}


def predict(p: dict, workers: int) -> float:
    # the plan runs while Ray starts (engine/ray_job.py): the longer of the two counts
    serial = p["process_s"] + max(p["plan_s"], p["startup_s"]) + p["warm_s"] + p["join_s"]
    return serial + makespan([s + p["dispatch_s"] for s in p["segment_s"]], workers)


def ray_overheads(repeats: int = 3) -> dict:
    """In one process: `ray.init` of a local Ray, and a task's round trip once workers are up."""
    import ray

    out: dict = {"init_s": [], "first_task_s": [], "task_round_trip_ms": []}
    for _ in range(repeats):
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, object_store_memory=100 << 20, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        out["init_s"].append(round(time.perf_counter() - t, 3))
        f = ray.remote(num_cpus=1)(_nothing)
        t = time.perf_counter()
        ray.get(f.remote(0))
        out["first_task_s"].append(round(time.perf_counter() - t, 3))
        t = time.perf_counter()
        for i in range(50):
            ray.get(f.remote(i))
        out["task_round_trip_ms"].append(round((time.perf_counter() - t) / 50 * 1000, 2))
        ray.shutdown()
    return out


def _nothing(i: int) -> int:
    return i


def plan_figures() -> dict:
    """Packet scan and cut checks on the real 1080p clip (456 frames, cuts every 24): 1 vs 2 threads."""
    from engine.segments import plan_segments, scan_packets

    clip = str(ROOT / "tests" / "media" / "anime-1080p.mp4")
    out: dict = {"input": "tests/media/anime-1080p.mp4", "frames": 456, "bytes": os.path.getsize(clip),
                 "length_frames": 24}
    for _ in range(3):
        t = time.perf_counter()
        table = scan_packets(clip)
        out.setdefault("scan_s", []).append(round(time.perf_counter() - t, 4))
        for workers in (1, 2):
            t = time.perf_counter()
            plan = plan_segments(clip, table, 24, workers=workers)
            out.setdefault(f"verify_{workers}_threads_s", []).append(round(time.perf_counter() - t, 3))
    out["cuts"] = len(plan.segments) - 1
    return out


def film_model(p: dict, plan: dict) -> dict:
    """A 2-hour 24 fps 1080p film (10 Mbit/s), 60 s segments, on N GPUs of the H200's measured speed."""
    fps_gpu = 34.4            # engine end to end, 1080p x2 animevideov3 fp16, H200 (README's H200 table)
    frames = 2 * 3600 * 24
    seg_frames = 60 * 24
    segments = math.ceil(frames / seg_frames)
    film_bytes = 10e6 / 8 * 2 * 3600
    scan_fps = plan["frames"] / statistics.median(plan["scan_s"])        # measured, real 1080p packets
    read_bps = 500e6          # a fast shared filesystem; the scan reads every byte of the video
    verify_per_cut = statistics.median(plan["verify_1_threads_s"]) / plan["cuts"]
    scan_s = max(frames / scan_fps, film_bytes / read_bps)
    verify_s = (segments - 1) * verify_per_cut
    join_s = frames / 10_000          # remux + re-probe at about 10k packets/s (README, resume bench)
    startup = p["process_s"] + p["startup_s"] + p["warm_s"]  # the CLI process, Ray, the first workers
    fixed = statistics.median(p["segment_s_none"])  # a segment's own fixed cost (pipeline none, tiny frames)
    per_seg = seg_frames / fps_gpu + fixed + p["dispatch_s"] + 1.0  # + 1 s: model weights, warm-up
    one_gpu = frames / fps_gpu        # the plain engine on one GPU, no segments
    out = {"assumptions": {"frames": frames, "segment_frames": seg_frames, "segments": segments,
                           "gpu_fps": fps_gpu, "scan_fps_1080p_measured": round(scan_fps),
                           "film_bytes": film_bytes, "read_bytes_per_s": read_bps,
                           "verify_s_per_cut_1080p_measured": round(verify_per_cut, 3),
                           "join_packets_per_s": 10_000,
                           "segment_overhead_s": round(fixed + p["dispatch_s"] + 1.0, 3),
                           "startup_s": round(startup, 2)},
           "serial_s": {"scan": round(scan_s, 1), "cut_checks_1_thread": round(verify_s, 1),
                        "cut_checks_8_threads": round(verify_s / 8, 1),
                        "startup": round(startup, 1), "join": round(join_s, 1)},
           "plain_engine_one_gpu_s": round(one_gpu), "predicted": {}}
    for n in (1, 2, 4, 8, 16):
        for threads in (1, 8):
            # the plan (scan, cut checks) runs while Ray and the CLI start; the join after the last segment
            total = max(scan_s + verify_s / threads, startup) + join_s + math.ceil(segments / n) * per_seg
            out["predicted"][f"{n}gpu_{threads}verify"] = {
                "wall_s": round(total), "speedup_over_plain": round(one_gpu / total, 2),
                "efficiency": round(one_gpu / total / n, 3)}
    return out


def remodel(path: str) -> None:
    """Plan figures and the film model again, from the runs already in `path`."""
    results = json.loads(Path(path).read_text())
    results["plan"] = plan_figures()
    jitter = next(k for k in results["pipelines"] if k.startswith("test.jitter"))
    model = dict(results["pipelines"][jitter]["model"])
    model["segment_s_none"] = results["pipelines"]["none"]["model"]["segment_s"]
    results["film_2h_1080p"] = film_model(model, results["plan"])
    write_report(str(path), results)  # whole or not at all: it rewrites the committed file
    print(json.dumps({k: results[k] for k in ("plan", "film_2h_1080p")}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--segment", default="48f")
    ap.add_argument("--max-ms", type=float, default=40.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results-cpu-2core-ray.json")
    ap.add_argument("--remodel", action="store_true", help="redo only the plan figures and the film model")
    args = ap.parse_args()
    if args.remodel:
        return remodel(args.out)
    from make_clip import make_clip

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        clip = make_clip(scratch / "in.mp4", args.frames, 160, 90, crf=18,
                         options={"g": "48", "keyint_min": "48", "sc_threshold": "0"})
        results: dict = {"load_before": os.getloadavg(), "cpu_count": os.cpu_count(), "pipelines": {}}
        results["ray"] = ray_overheads()
        print(json.dumps(results["ray"]), flush=True)
        for pipeline in ("none", f"test.jitter:max_ms={args.max_ms:g}"):
            rows = []
            for rep in range(args.repeats):  # interleaved: resume, ray-1, ray-2, resume, ...
                for case in ("resume", "ray-1", "ray-2"):
                    rows.append(run_case(clip, scratch, case, pipeline, args.segment, f"{case}-{rep}"))
                    print(json.dumps(rows[-1]), flush=True)
            med = {c: statistics.median(r["wall_s"] for r in rows if r["case"] == c)
                   for c in ("resume", "ray-1", "ray-2")}
            p = fit(rows, statistics.median(results["ray"]["task_round_trip_ms"]) / 1000)
            results["pipelines"][pipeline] = {
                "runs": rows, "median_wall_s": med,
                "ray1_over_resume_wall": round(med["ray-1"] / med["resume"], 3),
                "ray2_over_ray1_speedup": round(med["ray-1"] / med["ray-2"], 3),
                "model": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items()},
                "model_ray2_predicted_s": round(predict(p, 2), 2),
                "model_ray2_measured_s": round(med["ray-2"], 2)}
        results["plan"] = plan_figures()
        model = dict(results["pipelines"][f"test.jitter:max_ms={args.max_ms:g}"]["model"])
        model["segment_s_none"] = results["pipelines"]["none"]["model"]["segment_s"]
        results["film_2h_1080p"] = film_model(model, results["plan"])
        results["load_after"] = os.getloadavg()
    write_report(str(args.out), results)
    print(json.dumps({k: v for k, v in results.items() if k != "pipelines"}, indent=1))
    for name, r in results["pipelines"].items():
        print(name, {k: v for k, v in r.items() if k != "runs"})


if __name__ == "__main__":
    main()
