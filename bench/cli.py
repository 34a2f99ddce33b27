"""`python -m bench`: run scenarios, write one JSON per run, compare two runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.child import USER_ERROR
from bench.inputs import ROOT, resolve
from bench.plots import plot_all
from bench.scenarios import SCENARIOS, kill_resume_problem
from bench.stats import ratio, summarize
from engine.job import write_report


def machine() -> dict:
    from engine.gpu import GpuMonitor
    from engine.job import environment

    info = {"cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),  # the ones this process may run on (taskset, cgroups)
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


def frame_size(path: Path) -> str:
    from engine.source import open_input
    from engine.video_stream import main_video

    with open_input(str(path)) as container:  # the video, not a cover listed first
        cc = main_video(container).codec_context
        return f"{cc.width}x{cc.height}"


class CaseFailed(Exception):
    pass


def run_child(name: str, path: Path, settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.child", name, str(path), json.dumps(settings)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise CaseFailed(f"scenario {name} on {path.name} failed: {child_failure(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_failure(proc: subprocess.CompletedProcess) -> str:
    """Why a timed child failed: the engine's one-line error, the signal that killed it, or
    (a bug) its whole traceback."""
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"killed by {name}" + (" (out of memory? the kernel's OOM killer sends it)"
                                      if name == "SIGKILL" else "")
    for line in proc.stderr.splitlines():
        if line.startswith(USER_ERROR):
            return line.removeprefix(USER_ERROR)
    return f"exit {proc.returncode}\n{proc.stderr.strip()}"


def run(args: argparse.Namespace) -> dict:
    inputs = [(spec, resolve(spec)) for spec in args.input]
    sizes = {spec: frame_size(path) for spec, path in inputs}
    settings = {"encoder": args.encoder, "preset": args.preset, "crf": args.crf, "pipeline": args.pipeline,
                "model": args.model, "device": args.device, "precision": args.precision, "batch": args.batch,
                "ring": args.ring, "flow": args.flow, "window": args.window, "overlap": args.overlap,
                "convert": args.convert, "compile": args.compile, "compile_mode": args.compile_mode,
                "cuda_graphs": args.cuda_graphs, "decode": args.decode, "opencv_threads": args.opencv_threads}
    cases = [(name, spec, path) for name in args.scenarios for spec, path in inputs]
    samples: dict[str, list[dict]] = {f"{n}@{s}": [] for n, s, _ in cases}
    if "kill-resume" in args.scenarios:  # before hours go into the other cases
        for spec, path in inputs:
            if problem := kill_resume_problem(path):
                raise SystemExit(f"bench: {spec}: {problem}")
    # Round-robin over cases, so slow drift of a shared machine hits every case alike.
    runs, done = (args.warmup + args.repeats) * len(cases), 0
    for round_ in range(args.warmup + args.repeats):
        for name, spec, path in cases:
            try:
                result = run_child(name, path, settings)
            except CaseFailed as exc:
                raise SystemExit(f"bench: {exc}\nbench: {done} of {runs} runs had finished; no results "
                                 f"file is written (a part of a run would read as a whole one)") from None
            done += 1
            if round_ >= args.warmup:
                samples[f"{name}@{spec}"].append(result)
            print(f"  {'warm-up ' if round_ < args.warmup else ''}{name}@{spec}: "
                  f"{result['fps']:.1f} fps, {result['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    results = {}
    for key, runs in samples.items():
        name, spec = key.split("@", 1)
        typical = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # the median run
        results[key] = {
            # what the case ran at: the input's size unless the scenario resizes (diffusion-vsr)
            "scenario": name, "input": spec, "frames": runs[0]["frames"], "size": typical.get("size", sizes[spec]),
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
    read = {k for runs in samples.values() for r in runs for k in r.get("settings_read", [])}
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            # the options the cases read: others given or defaulted played no part
            "settings": {**{k: v for k, v in settings.items() if k in read},
                         "warmup": args.warmup, "repeats": args.repeats},
            "results": results, "ratios": derive_ratios(results)}


EXTRA_KEYS = ("worst_psnr_db", "identical", "metrics", "output_bytes", "segments", "lost_frames", "segment_frames",
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
            # the engine's run without its set-up (model load, checks): model-only's is untimed too
            up = scen["upscale"]
            engine_fps = up["frames"] / up["run_s"] if up.get("run_s") else up["fps"]["median"]
            ratios[f"upscale_vs_slower_of_model_and_io@{spec}"] = ratio(engine_fps, slower)
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
        sizes = {r.get("size") for r in runs}
        if len(runs) > 1 and len(sizes) == 1 and None not in sizes:  # memory against length, at one frame size
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
    lines = []
    for what in ("settings", "machine"):  # a ratio across different settings or machines says so
        differ = {k for k in set(a.get(what, {})) | set(b.get(what, {}))
                  if a.get(what, {}).get(k) != b.get(what, {}).get(k) and k != "gpus"}
        for k in sorted(differ):
            lines.append(f"{what} differ: {k}: {a.get(what, {}).get(k)!r} → {b.get(what, {}).get(k)!r}")
    lines.append(f"{'case':<34} {'fps A':>9} {'fps B':>9} {'B/A':>7}")
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


MODEL_SCENARIOS = ("model-only", "io-floor", "upscale", "upscale-host", "upscale-dedup", "naive-sequential",
                   "dedup-quality")
TORCH_SCENARIOS = MODEL_SCENARIOS[:1] + MODEL_SCENARIOS[2:] + ("vsr-model-only", "vsr", "vsr-deform-cost",
                                                               "diffusion-vsr-720p", "diffusion-vsr-704",
                                                               "diffusion-vsr-tiny")
PIPELINE_SCENARIOS = ("pipeline", "single-pass", "kill-resume")
# torch.compile's modes the upscale stage accepts (stages/upscale.py)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every setting a case would refuse, refused before the first case runs (one line, exit 2):
    a typo must not cost the cases before it, nor run as something else under its name."""
    from engine.errors import UserError
    from engine.registry import check_stage_order, parse_pipeline
    from engine.source import DECODERS

    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.precision not in ("auto", "fp32", "fp16", "bf16"):
        p.error(f"--precision must be auto, fp32, fp16 or bf16, got {args.precision!r}")
    if not 0 <= args.batch <= 256 or not 1 <= args.ring <= 8:
        p.error(f"--batch must be 0 (auto) to 256 and --ring 1 to 8, got {args.batch} and {args.ring}")
    if not (args.window >= 1 and 0 <= args.overlap and 2 * args.overlap < args.window):
        p.error(f"--overlap must be >= 0 and less than half the --window, got {args.overlap} and {args.window}")
    if args.compile_mode and args.compile_mode not in COMPILE_MODES:
        p.error(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {args.compile_mode!r}")
    if not 0 <= args.crf <= 51:
        p.error(f"--crf must be 0..51, got {args.crf}")
    if args.decode not in DECODERS:
        p.error(f"--decode must be one of {', '.join(DECODERS)}, got {args.decode!r}")
    if not 0 <= args.opencv_threads <= 1024:
        p.error(f"--opencv-threads must be 0..1024, got {args.opencv_threads}")
    chosen = set(args.scenarios)
    try:
        if chosen & set(PIPELINE_SCENARIOS) or any(s.startswith("segmented-") for s in chosen):
            check_stage_order(parse_pipeline(args.pipeline))
        if chosen & set(MODEL_SCENARIOS):
            from engine.models.catalogue import check_model

            check_model(args.model)
        if chosen & set(TORCH_SCENARIOS) and args.device != "auto":
            from engine.inference import resolve_device

            resolve_device(args.device)  # a GPU this machine lacks: said now, not after the CPU cases
    except UserError as exc:
        p.error(str(exc))


def check_out(out: Path) -> None:
    """The results file can be written: not a directory, in a writable directory (made now)."""
    if out.is_dir():
        raise SystemExit(f"bench: --out names a directory, not a file: {out}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"bench: cannot create {out.parent}: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise SystemExit(f"bench: cannot write results into {out.parent}: not writable")


def load_results(path: str) -> dict:
    """A results file written by a run, or a one-line error."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SystemExit(f"bench: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"bench: {path} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or "results" not in doc:
        raise SystemExit(f"bench: {path} is not a bench results file (it has no 'results')")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenarios", nargs="*", default=["transcode-floor", "passthrough"],
                   help=f"any of: {', '.join(SCENARIOS)} (default: transcode-floor passthrough)")
    p.add_argument("--input", action="append", default=None,
                   help="a path, a tests/media clip name, anime-720p[-xLOOPS] (the 1080p clip at 720p; "
                        "the default), or synthetic WIDTHxHEIGHT:FRAMES / 720p:300 (repeatable)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case, round-robin (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per case first (default 1)")
    p.add_argument("--encoder", choices=["x264", "x265"], default="x264",
                   help="encoder of the floors, the engine scenarios and the segment scenarios (default x264)")
    p.add_argument("--preset", default="ultrafast", help="encoder preset (default ultrafast)")
    p.add_argument("--crf", type=int, default=23, help="encoder crf (default 23)")
    p.add_argument("--pipeline", default="none",
                   help="stages for 'pipeline', 'single-pass', 'segmented-*' and 'kill-resume' (default none)")
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
    p.add_argument("--compile-mode", default="", help=f"torch.compile mode: {', '.join(COMPILE_MODES)}")
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
        a, b = (load_results(f) for f in args.compare)
        print(compare(a, b))
        return 0
    if args.plot:
        for path in plot_all(load_results(args.plot), Path(args.plot).with_suffix("")):
            print(path)
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from: {', '.join(SCENARIOS)}")
    args.scenarios = list(dict.fromkeys(args.scenarios))  # named twice: one case, not twice the samples
    args.input = list(dict.fromkeys(args.input or ["anime-720p"]))
    check_args(p, args)
    out = Path(args.out or ROOT / "bench-results" / time.strftime("%Y%m%d-%H%M%S.json"))
    check_out(out)  # before the run: a bad --out must not cost its hours
    try:
        doc = run(args)
    except KeyboardInterrupt:  # the children got the Ctrl-C too, and are gone
        print("bench: interrupted; no results file is written", file=sys.stderr)
        return 130
    if out.exists():
        print(f"bench: replacing {out}", file=sys.stderr)
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
