"""`python -m bench`: run scenarios, write one JSON per run, compare two runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.inputs import ROOT, resolve
from bench.plots import plot_all
from bench.scenarios import SCENARIOS
from bench.stats import ratio, summarize
from engine.job import write_report


def machine() -> dict:
    from engine.gpu import GpuMonitor
    from engine.job import environment

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            **environment()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                           if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    gpu = GpuMonitor()
    info["gpus"] = [vars(s) for s in gpu.sample()]
    info["gpu_driver"] = gpu.driver()
    gpu.close()
    return info


def run_child(name: str, path: Path, settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.child", name, str(path), json.dumps(settings)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench: scenario {name} on {path.name} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    inputs = [(spec, resolve(spec)) for spec in args.input]
    settings = {"encoder": args.encoder, "preset": args.preset, "crf": args.crf, "pipeline": args.pipeline,
                "model": args.model, "device": args.device, "precision": args.precision, "batch": args.batch,
                "ring": args.ring, "flow": args.flow, "window": args.window, "overlap": args.overlap,
                "convert": args.convert, "compile": args.compile, "compile_mode": args.compile_mode,
                "cuda_graphs": args.cuda_graphs, "decode": args.decode, "opencv_threads": args.opencv_threads}
    cases = [(name, spec, path) for name in args.scenarios for spec, path in inputs]
    samples: dict[str, list[dict]] = {f"{n}@{s}": [] for n, s, _ in cases}
    # Round-robin over cases, so slow drift of a shared machine hits every case alike.
    for round_ in range(args.warmup + args.repeats):
        for name, spec, path in cases:
            result = run_child(name, path, settings)
            if round_ >= args.warmup:
                samples[f"{name}@{spec}"].append(result)
            print(f"  {'warm-up ' if round_ < args.warmup else ''}{name}@{spec}: "
                  f"{result['fps']:.1f} fps, {result['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    results = {}
    for key, runs in samples.items():
        name, spec = key.split("@", 1)
        typical = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # the median run
        results[key] = {
            "scenario": name, "input": spec, "frames": runs[0]["frames"],
            "fps": summarize([r["fps"] for r in runs]),
            "wall_s": summarize([r["wall_s"] for r in runs]),
            "cpu_s": summarize([r.get("cpu_s", 0.0) for r in runs]),
            "peak_rss_mib": summarize([r["peak_rss_mib"] for r in runs]),
            "stages": typical.get("stages"),
            "timeline": typical.get("timeline"),
            "gpu": typical.get("gpu"),
            "settings": typical.get("settings"),
            **{k: typical[k] for k in EXTRA_KEYS if k in typical},
        }
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "settings": {**settings, "warmup": args.warmup, "repeats": args.repeats},
            "results": results, "ratios": derive_ratios(results)}


EXTRA_KEYS = ("worst_psnr_db", "metrics", "output_bytes", "segments", "lost_frames", "segment_frames",
              "prepare_s", "join_s", "run_s", "tflops", "peak_tflops_fp16", "flops_per_frame")


def derive_ratios(results: dict) -> dict:
    """The ratios that matter, each from medians measured in this one run."""
    ratios: dict[str, float | None] = {}
    by_input: dict[str, dict[str, dict]] = {}
    for r in results.values():
        by_input.setdefault(r["input"], {})[r["scenario"]] = r
    for spec, scen in by_input.items():
        floor = scen.get("transcode-floor")
        for engine_case in ("passthrough", "pipeline"):
            if floor and engine_case in scen:
                ratios[f"{engine_case}_vs_floor@{spec}"] = ratio(
                    scen[engine_case]["fps"]["median"], floor["fps"]["median"])
                # time ratios (engine / floor, lower is better): wall and CPU over every thread
                for kind in ("wall_s", "cpu_s"):
                    ratios[f"{engine_case}_over_floor_{kind[:-2]}_time@{spec}"] = ratio(
                        scen[engine_case][kind]["median"], floor[kind]["median"])
    for spec, scen in by_input.items():
        model_only, io = scen.get("model-only"), scen.get("io-floor")
        if model_only and io and "upscale" in scen:
            slower = min(model_only["fps"]["median"], io["fps"]["median"])
            ratios[f"upscale_vs_slower_of_model_and_io@{spec}"] = ratio(scen["upscale"]["fps"]["median"], slower)
        if model_only and model_only.get("tflops") and model_only.get("peak_tflops_fp16"):
            ratios[f"model_tflops_share_of_peak@{spec}"] = model_only["tflops"] / model_only["peak_tflops_fp16"]
        for case in ("upscale", "upscale-host"):  # the upscale stage's host thread: busy / wall
            if case in scen and scen[case].get("stages"):
                stage = next((s for s in scen[case]["stages"] if s["name"] == "upscale"), None)
                if stage:
                    ratios[f"{case}_thread_busy_share@{spec}"] = ratio(
                        stage["busy_s"] / max(1, stage["workers"]), scen[case].get("run_s") or scen[case]["wall_s"]["median"])
        if "upscale" in scen and "upscale-host" in scen:
            ratios[f"upscale_device_convert_vs_host@{spec}"] = ratio(scen["upscale"]["fps"]["median"],
                                                                    scen["upscale-host"]["fps"]["median"])
        if "naive-sequential" in scen and "upscale" in scen:
            ratios[f"upscale_vs_naive@{spec}"] = ratio(scen["upscale"]["fps"]["median"],
                                                       scen["naive-sequential"]["fps"]["median"])
        if "dedup-quality" in scen:
            ratios[f"dedup_worst_frame_psnr_db@{spec}"] = scen["dedup-quality"].get("worst_psnr_db")
        if "upscale-dedup" in scen and "upscale" in scen:
            ratios[f"dedup_speedup@{spec}"] = ratio(scen["upscale-dedup"]["fps"]["median"],
                                                    scen["upscale"]["fps"]["median"])
    for spec, scen in by_input.items():
        single = scen.get("single-pass")
        for name, r in scen.items():
            if name.startswith("segmented-") and single:  # > 1: slower / bigger than one pass
                length = name.removeprefix("segmented-")
                ratios[f"segmented_{length}_time_overhead@{spec}"] = ratio(
                    r["wall_s"]["median"], single["wall_s"]["median"])
                ratios[f"segmented_{length}_size_ratio@{spec}"] = ratio(
                    r.get("output_bytes", 0), single.get("output_bytes", 0))
        if "kill-resume" in scen:
            k = scen["kill-resume"]
            ratios[f"kill_lost_frames_vs_segment@{spec}"] = ratio(k["lost_frames"], k["segment_frames"])
    by_scenario: dict[str, list[dict]] = {}
    for r in results.values():
        by_scenario.setdefault(r["scenario"], []).append(r)
    for name, runs in by_scenario.items():
        if len(runs) > 1:
            short, long_ = min(runs, key=lambda r: r["frames"]), max(runs, key=lambda r: r["frames"])
            ratios[f"{name}_rss_growth_{long_['frames']}_vs_{short['frames']}_frames"] = ratio(
                long_["peak_rss_mib"]["median"], short["peak_rss_mib"]["median"])
    return ratios


def table(doc: dict) -> str:
    lines = [f"{'case':<34} {'frames':>7} {'fps':>9} {'spread':>7} {'peak RSS':>10}"]
    for key, r in doc["results"].items():
        lines.append(f"{key:<34} {r['frames']:>7} {r['fps']['median']:>9.1f} "
                     f"{r['fps']['spread']:>6.1%} {r['peak_rss_mib']['median']:>7.0f} MiB")
        if r.get("metrics"):
            lines.append("    " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in r["metrics"].items()))
    for key, value in doc["ratios"].items():
        lines.append(f"{key:<48} {value:.3f}" if value is not None else f"{key:<48} n/a")
    return "\n".join(lines)


def compare(a: dict, b: dict) -> str:
    lines = [f"{'case':<34} {'fps A':>9} {'fps B':>9} {'B/A':>7}"]
    for key in sorted(set(a["results"]) | set(b["results"])):
        fa = a["results"].get(key, {}).get("fps", {}).get("median")
        fb = b["results"].get(key, {}).get("fps", {}).get("median")
        rel = f"{fb / fa:7.3f}" if fa and fb else "    n/a"
        lines.append(f"{key:<34} {fa if fa is not None else float('nan'):>9.1f} "
                     f"{fb if fb is not None else float('nan'):>9.1f} {rel}")
    for key in sorted(set(a["ratios"]) | set(b["ratios"])):
        ra, rb = a["ratios"].get(key), b["ratios"].get(key)
        lines.append(f"{key:<48} {ra if ra is not None else 'n/a'!s:>8.8} → {rb if rb is not None else 'n/a'!s:.8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenarios", nargs="*", default=["transcode-floor", "passthrough"],
                   help=f"any of: {', '.join(SCENARIOS)}")
    p.add_argument("--input", action="append", default=None,
                   help="720p:300, 1280x720:300, a tests/media clip name, or a path (repeatable)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--encoder", choices=["x264", "x265"], default="x264",
                   help="encoder of transcode-floor and the engine scenarios")
    p.add_argument("--preset", default="ultrafast")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--pipeline", default="none", help="stages for the 'pipeline' scenario")
    p.add_argument("--model", default="animevideov3-x2", help="model for the model scenarios")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (model scenarios)")
    p.add_argument("--precision", default="auto", help="auto, fp32, fp16, bf16 (model scenarios)")
    p.add_argument("--batch", type=int, default=0, help="frames per model call; 0: auto")
    p.add_argument("--ring", type=int, default=3, help="batches in flight on CUDA")
    p.add_argument("--flow", default="dis", help="flow provider for the diffusion-vsr scenarios (dis)")
    p.add_argument("--window", type=int, default=96, help="frames per window (vsr scenarios)")
    p.add_argument("--overlap", type=int, default=8, help="context frames shared by windows (vsr scenarios)")
    p.add_argument("--convert", default="", help="upscale: device (planes to the device) or host (RGB on the host)")
    p.add_argument("--compile", default="", help="true: torch.compile the model (model scenarios)")
    p.add_argument("--compile-mode", default="", help="torch.compile mode: default, reduce-overhead, max-autotune")
    p.add_argument("--cuda-graphs", default="", help="true: replay CUDA graphs per batch shape")
    p.add_argument("--decode", default="auto", help="auto, cpu, nvdec (engine scenarios)")
    p.add_argument("--opencv-threads", type=int, default=0,
                   help="OpenCV's threads per call in engine runs (default 0: OpenCV's own choice)")
    p.add_argument("--out", default=None, help="JSON file (default bench-results/<time>.json)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument("--plot", metavar="RESULTS.json", help="draw PNG plots from a results file")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots after a run")
    args = p.parse_args(argv)
    if args.list:
        for name, (_, description) in SCENARIOS.items():
            print(f"{name:<18} {description}")
        return 0
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        print(compare(a, b))
        return 0
    if args.plot:
        for path in plot_all(json.loads(Path(args.plot).read_text()), Path(args.plot).with_suffix("")):
            print(path)
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from: {', '.join(SCENARIOS)}")
    args.input = args.input or ["anime-720p"]
    doc = run(args)
    out = Path(args.out or ROOT / "bench-results" / time.strftime("%Y%m%d-%H%M%S.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_report(str(out), doc)  # whole or not at all: a cut-short file would read as a finished run
    print(table(doc))
    print(f"results: {out}")
    if not args.no_plots:
        try:
            for path in plot_all(doc, out.with_suffix("")):
                print(f"plot: {path}")
        except SystemExit as exc:  # matplotlib missing: results stand, plots are optional
            print(exc, file=sys.stderr)
    return 0
