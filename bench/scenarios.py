"""The scenario registry. A scenario processes one input once and returns its frame count.

Scenarios run inside a child process (bench/child.py), which times them and reads peak RSS.
Add a scenario with `@scenario("name")`; it receives the input path, a scratch directory
and the run's settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import av

from engine.errors import UserError
from engine.job import Job, JobConfig  # imported before timing starts
from engine.progress import RecordingReporter
from engine.runner import RunnerOptions

Scenario = Callable[[Path, Path, dict], dict]
SCENARIOS: dict[str, tuple[Scenario, str]] = {}


def scenario(name: str, description: str):
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (fn, description)
        return fn

    return register


FLOOR_CODECS = {"x264": "libx264", "x265": "libx265"}


def _floor_options(settings: dict) -> dict[str, str]:
    """The floors' encoder options: the engine scenarios' preset and crf (x264 or x265)."""
    options = {"preset": settings["preset"], "crf": str(settings["crf"])}
    if settings.get("encoder") == "x265":
        options["x265-params"] = "log-level=error"
    return options


@scenario("decode", "PyAV decode only (thread_type=AUTO), no conversion")
def decode(path: Path, scratch: Path, settings: dict) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = sum(1 for _ in container.decode(stream))
    return {"frames": frames}


@scenario("transcode-floor", "plain PyAV decode→x264 (or --encoder x265) loop, best threading: the floor")
def transcode_floor(path: Path, scratch: Path, settings: dict) -> dict:
    frames = 0
    with av.open(str(path)) as src, av.open(str(scratch / "floor.mp4"), "w") as dst:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        out = dst.add_stream(FLOOR_CODECS[settings.get("encoder", "x264")], rate=vin.average_rate)
        out.width, out.height, out.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        out.time_base = vin.time_base
        out.codec_context.time_base = vin.time_base
        out.codec_context.options = _floor_options(settings)
        # FFmpeg's best threading for the encoder too: with PyAV's default (SLICE) x264 runs
        # sliced threads, about 12 % slower, and the floor would hide the engine's own gap
        out.codec_context.thread_type = "AUTO"
        for frame in src.decode(vin):
            frame.pict_type = av.video.frame.PictureType.NONE
            dst.mux(out.encode(frame))
            frames += 1
        dst.mux(out.encode(None))
    return {"frames": frames}


def _runner(settings: dict) -> RunnerOptions:
    """The runner's options as the bench's settings give them (--opencv-threads)."""
    return RunnerOptions(opencv_threads=settings.get("opencv_threads", RunnerOptions().opencv_threads))


def _engine(path: Path, scratch: Path, settings: dict, pipeline: str) -> dict:
    config = JobConfig(input=str(path), output=str(scratch / "engine.mp4"), pipeline=pipeline,
                       encoder=settings.get("encoder", "x264"), crf=settings["crf"], preset=settings["preset"],
                       decode=settings.get("decode", "auto"), quiet=True, runner=_runner(settings))
    report = Job.prepare(config).run(RecordingReporter())
    return {"frames": report["frames_out"], "stages": report["stages"], "run_s": report["wall_s"],
            "timeline": report.get("timeline", [])}


@scenario("passthrough", "the engine with --pipeline none (decode and encode threads)")
def passthrough(path: Path, scratch: Path, settings: dict) -> dict:
    return _engine(path, scratch, settings, "none")


@scenario("pipeline", "the engine with the stages given by --pipeline")
def pipeline(path: Path, scratch: Path, settings: dict) -> dict:
    return _engine(path, scratch, settings, settings["pipeline"])


@scenario("dedup", "decode + the dedup stage only, no encode (its counters are recorded)")
def dedup(path: Path, scratch: Path, settings: dict) -> dict:
    from engine.registry import parse_pipeline
    from engine.runner import Pipeline
    from engine.source import VideoSource
    from engine.testing import CollectingSink

    class Discard(CollectingSink):  # keeps nothing: memory stays flat like a real sink
        def write(self, frame) -> None:
            pass

    result = Pipeline(VideoSource(str(path)), parse_pipeline(settings.get("dedup", "dedup")),
                      Discard(), _runner(settings)).run()
    stages = [s.as_dict(result.elapsed_s) for s in result.stages]
    return {"frames": result.frames_out, "stages": stages}


# ---- model scenarios (issue: GPU runner). Same model, device and precision in each. ----------

def _model_settings(settings: dict) -> dict:
    m = {"model": settings.get("model", "animevideov3-x2"), "device": settings.get("device", "auto"),
         "precision": settings.get("precision", "auto"), "batch": int(settings.get("batch", 0)),
         "ring": int(settings.get("ring", 3))}
    # faster-execution options (issue 13), passed on only when asked for: defaults unchanged
    for key in ("compile", "compile_mode", "cuda_graphs", "convert", "channels_last"):
        if settings.get(key) not in (None, ""):
            m[key] = settings[key]
    return m


def _upscale_spec(settings: dict, **overrides) -> str:
    m = {**_model_settings(settings), **overrides}
    return "upscale:" + ":".join(f"{k}={v}" for k, v in m.items())


@scenario("model-only", "the upscale model through the device runner on frames already in memory")
def model_only(path: Path, scratch: Path, settings: dict) -> dict:
    import time

    from engine.inference import InferenceRunner, InferenceSettings
    from engine.models.loader import load_model

    m = _model_settings(settings)
    limit = int(settings.get("model_frames", 48))
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == limit:
                break
    model = load_model(m["model"])
    extra = {k: m[k] for k in ("compile", "compile_mode", "cuda_graphs", "channels_last") if k in m}
    runner = InferenceRunner(model, model.scale, InferenceSettings(
        device=m["device"], precision=m["precision"], batch=m["batch"], ring=m["ring"],
        **{k: (v in (True, "true", "1") if k != "compile_mode" else v) for k, v in extra.items()}))
    runner.open()
    runner.plan(*frames[0].shape[:2])
    batch = runner.batch
    if len(frames) < batch:  # not one whole batch to time
        runner.close()
        raise UserError(f"model-only needs at least {batch} frames at batch {batch}; the input has "
                        f"{len(frames)} (a longer --input, or a smaller --batch)")
    runner.submit(frames[:batch])  # warm-up: kernels chosen, memory allocated
    runner.drain()
    started, cpu_started = time.perf_counter(), time.process_time()
    count = 0
    for i in range(0, len(frames) - batch + 1, batch):
        runner.submit(frames[i:i + batch])
        count += batch
    runner.drain()
    timed, timed_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    info = runner.describe()
    runner.close()
    flops = conv_flops(model, *frames[0].shape[:2])
    return {"frames": count, "timed_s": timed, "timed_cpu_s": timed_cpu, "settings": info, "flops_per_frame": flops,
            "tflops": flops * count / timed / 1e12 if timed else None,
            "peak_tflops_fp16": peak_tflops(info.get("device_name", ""))}


# Dense fp16/bf16 tensor-core peaks (TFLOPS, without sparsity), from NVIDIA's data sheets.
PEAK_FP16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_FP16_TFLOPS.items() if k in device_name), None)


def conv_flops(model, height: int, width: int) -> float:
    """FLOPs of one H×W frame through the model's convolutions (2 per multiply-add), counted
    by hooks on a shape-only ("meta") run at the real size, padding included."""
    import copy

    import torch

    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * module.in_channels // module.groups * k * output.numel()

    shadow = copy.deepcopy(model).to("meta").float()
    for m in shadow.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        shadow(torch.zeros(1, 3, height, width, device="meta"))
    return total


@scenario("io-floor", "decode + scale to the model's output size + x264 (or --encoder x265): what I/O alone allows")
def io_floor(path: Path, scratch: Path, settings: dict) -> dict:
    from engine.models.catalogue import MODELS

    scale = MODELS[_model_settings(settings)["model"]].scale
    frames = 0
    with av.open(str(path)) as src, av.open(str(scratch / "floor.mp4"), "w") as dst:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        out = dst.add_stream(FLOOR_CODECS[settings.get("encoder", "x264")], rate=vin.average_rate)
        w, h = vin.codec_context.width * scale, vin.codec_context.height * scale
        out.width, out.height, out.pix_fmt = w, h, "yuv420p"
        out.time_base = vin.time_base
        out.codec_context.time_base = vin.time_base
        out.codec_context.options = _floor_options(settings)
        for frame in src.decode(vin):
            picture = frame.reformat(width=w, height=h, format="yuv420p", interpolation="FAST_BILINEAR")
            picture.pts, picture.time_base = frame.pts, frame.time_base
            picture.pict_type = av.video.frame.PictureType.NONE
            dst.mux(out.encode(picture))
            frames += 1
        dst.mux(out.encode(None))
    return {"frames": frames}


@scenario("upscale", "the engine: decode → upscale → encode (no dedup)")
def upscale(path: Path, scratch: Path, settings: dict) -> dict:
    return _engine(path, scratch, settings, _upscale_spec(settings))


@scenario("upscale-host", "as upscale, with the older host path: RGB on the host in and out (convert=host)")
def upscale_host(path: Path, scratch: Path, settings: dict) -> dict:
    return _engine(path, scratch, settings, _upscale_spec(settings, convert="host"))


@scenario("upscale-dedup", "the engine's default shape: decode → dedup → upscale → encode")
def upscale_dedup(path: Path, scratch: Path, settings: dict) -> dict:
    return _engine(path, scratch, settings, "dedup," + _upscale_spec(settings))


@scenario("naive-sequential", "a peer-style loop: decode → model → encode, one frame at a time, one thread")
def naive(path: Path, scratch: Path, settings: dict) -> dict:
    import contextlib

    import torch

    from engine.inference import resolve_device
    from engine.models.loader import load_model

    m = _model_settings(settings)
    device = resolve_device(m["device"])
    precision = m["precision"] if m["precision"] != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    model = load_model(m["model"]).to(device).eval()
    autocast = (torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
                if precision != "fp32" else contextlib.nullcontext())
    frames = 0
    with av.open(str(path)) as src, av.open(str(scratch / "naive.mp4"), "w") as dst:
        vin = src.streams.video[0]
        out = dst.add_stream(FLOOR_CODECS[settings.get("encoder", "x264")], rate=vin.average_rate)
        out.width = vin.codec_context.width * model.scale
        out.height = vin.codec_context.height * model.scale
        out.pix_fmt = "yuv420p"
        out.codec_context.options = _floor_options(settings)
        for frame in src.decode(vin):
            x = torch.from_numpy(frame.to_ndarray(format="rgb24")).to(device)
            with torch.no_grad(), autocast:
                y = model(x.permute(2, 0, 1)[None].float() / 255)
            image = (y.float().clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).cpu().numpy()
            dst.mux(out.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            frames += 1
        dst.mux(out.encode(None))
    return {"frames": frames}


@scenario("dedup-quality", "upscale with and without dedup into lossless FFV1; worst-frame PSNR between them")
def dedup_quality(path: Path, scratch: Path, settings: dict) -> dict:
    import numpy as np

    outputs = {}
    for name, pipeline in (("with", "dedup," + _upscale_spec(settings)), ("without", _upscale_spec(settings))):
        config = JobConfig(input=str(path), output=str(scratch / f"{name}.mkv"), pipeline=pipeline,
                           encoder="ffv1", quiet=True)
        Job.prepare(config).run(RecordingReporter())
        outputs[name] = scratch / f"{name}.mkv"
    worst, frames = float("inf"), 0
    with av.open(str(outputs["with"])) as a, av.open(str(outputs["without"])) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0)):
            x = fa.to_ndarray(format="rgb24").astype(np.float64)
            y = fb.to_ndarray(format="rgb24").astype(np.float64)
            mse = float(np.mean((x - y) ** 2))
            worst = min(worst, 10 * np.log10(255.0 ** 2 / mse) if mse else float("inf"))
            frames += 1
    # identical outputs: no finite PSNR, and JSON has no Infinity (strict parsers refuse it)
    return {"frames": frames, "worst_psnr_db": None if worst == float("inf") else worst,
            "identical": worst == float("inf")}


# ---- diffusion VSR (Stream-DiffVSR architecture, random weights) -----------------------------

def _diffusion_model_dir(size: str) -> Path:
    """A random-weight model directory, written once into the bench cache (the full one is ~3 GB)."""
    from bench.inputs import CACHE
    from engine.models.diffusion_vsr_random import write_random_model

    root = CACHE / f"diffusion-vsr-{size}"
    if not (root / "tokenizer" / "tokenizer_config.json").exists():  # written last: a complete dir
        write_random_model(str(root), size)
    return root


def _diffusion_vsr(path: Path, settings: dict, size: str, lr_w: int, lr_h: int) -> dict:
    """Frames already in memory, resized to lr_w×lr_h; 2 warm-up frames (the first is unguided),
    then `diffusion_frames` timed ones, all guided. Time split by part, with a device sync
    after each part (engine.models.diffusion_vsr.StreamDiffVSR._timed)."""
    import time

    import cv2
    import torch

    from engine.models.diffusion_vsr import DiffusionSettings, StreamDiffVSR

    count = int(settings.get("diffusion_frames", 6 if size == "full" else 12))
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), (lr_w, lr_h), interpolation=cv2.INTER_AREA))
            if len(frames) == count + 2:
                break
    while len(frames) < count + 2:  # a short input loops
        frames += frames[:count + 2 - len(frames)]
    model = StreamDiffVSR(str(_diffusion_model_dir(size)), DiffusionSettings(
        device=settings.get("device", "auto"), precision=settings.get("precision", "auto"),
        flow=settings.get("flow", "dis")))
    for i in range(2):
        model.step(frames[i], i)
    model.times = dict.fromkeys(model.times, 0.0)
    model.frames = 0
    if model.cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(2, count + 2):
        model.step(frames[i], i)
    timed, timed_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    info = model.describe()
    info["config"] = size
    info["input"] = f"{lr_w}x{lr_h}"
    if model.cuda:
        info["peak_device_mib"] = torch.cuda.max_memory_allocated(model.device) / 2**20
    model.close()
    return {"frames": count, "timed_s": timed, "timed_cpu_s": timed_cpu, "size": info["input"], "settings": info}


@scenario("diffusion-vsr-720p", "Stream-DiffVSR architecture, random weights: 320x180 -> 1280x720 (GPU)")
def diffusion_vsr_720p(path: Path, scratch: Path, settings: dict) -> dict:
    return _diffusion_vsr(path, settings, "full", 320, 180)


@scenario("diffusion-vsr-704", "Stream-DiffVSR architecture, random weights: 512x704 -> 2048x2816 (GPU)")
def diffusion_vsr_704(path: Path, scratch: Path, settings: dict) -> dict:
    return _diffusion_vsr(path, settings, "full", 512, 704)


@scenario("diffusion-vsr-tiny", "TINY random diffusion-vsr config (not the real architecture), 80x48 -> x4: CPU smoke figure")
def diffusion_vsr_tiny(path: Path, scratch: Path, settings: dict) -> dict:
    return _diffusion_vsr(path, settings, "tiny", 80, 48)
# ---- segments and resume (issue: resume). Same encoder settings as single-pass. ---------------

SEGMENT_LENGTHS_S = (10, 30, 60, 120, 300)


def _engine_file(path: Path, scratch: Path, settings: dict, *, segment: str | None) -> dict:
    from engine.resume import SegmentedJob

    out = scratch / "out.mp4"
    config = JobConfig(input=str(path), output=str(out), pipeline=settings.get("pipeline", "none"),
                       encoder=settings.get("encoder", "x264"), crf=settings["crf"], preset=settings["preset"],
                       quiet=True, resume=segment is not None, segment=segment)
    started = time.perf_counter()
    job = SegmentedJob.prepare(config) if segment is not None else Job.prepare(config)
    prepare_s = time.perf_counter() - started  # segmented: packet scan, cut checks, job key
    report = job.run(RecordingReporter())
    result = {"frames": report["frames_out"], "output_bytes": out.stat().st_size, "prepare_s": prepare_s}
    if segment is not None:
        result.update(segments=report["segments"]["total"], join_s=report["join_s"])
    return result


@scenario("single-pass", "the engine writing one file in one pass (the reference for segmented-*)")
def single_pass(path: Path, scratch: Path, settings: dict) -> dict:
    return _engine_file(path, scratch, settings, segment=None)


def _segmented(seconds: int) -> Scenario:
    def run(path: Path, scratch: Path, settings: dict) -> dict:
        return _engine_file(path, scratch, settings, segment=str(seconds))
    return run


for _seconds in SEGMENT_LENGTHS_S:
    scenario(f"segmented-{_seconds}s", f"--resume --segment {_seconds}: plan, segments, join "
             f"(time and size against single-pass)")(_segmented(_seconds))


def kill_resume_frames(path: Path) -> tuple[int, int]:
    """kill-resume's segment length and the frame the killed run stops at (halfway through the
    third segment), in frames of `path`."""
    from engine.segments import length_in_frames
    from engine.source import VideoSource

    source = VideoSource(str(path))
    segment_frames = length_in_frames("60", source.info.frame_rate)
    source.close()
    return segment_frames, int(2.5 * segment_frames)


def kill_resume_problem(path: Path) -> str | None:
    """Why `path` cannot serve kill-resume (too short to be killed in its third segment), or None."""
    from engine.source import VideoSource

    source = VideoSource(str(path))
    frames = source.info.frames_estimate
    source.close()
    _, killed_after = kill_resume_frames(path)
    if frames is not None and frames <= killed_after:
        return (f"kill-resume needs an input longer than 2.5 segments of 60 s ({killed_after} frames "
                f"here); it has {frames} (try --input 160x90:14400)")
    return None


@scenario("kill-resume", "--resume --segment 60, SIGKILL halfway through the third segment, resume: "
                         "frames encoded twice (work lost) against the segment length (input > 150 s)")
def kill_resume(path: Path, scratch: Path, settings: dict) -> dict:
    import os
    import subprocess
    import sys

    from engine.resume import SegmentedJob

    segment_frames, killed_after = kill_resume_frames(path)
    out = scratch / "out.mp4"
    args = ["--pipeline", settings.get("pipeline", "none"), "--encoder", settings.get("encoder", "x264"),
            "--crf", str(settings["crf"]),
            "--preset", settings["preset"], "--resume", "--segment", "60", "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "engine", "stream", str(path), str(out), *args],
                          env={**os.environ, "ENGINE_CRASH_AT": f"segment-frame:{killed_after}"},
                          capture_output=True, text=True)
    if proc.returncode != -9:
        raise RuntimeError(f"the run to kill ended with {proc.returncode}: {proc.stderr.strip()}")
    config = JobConfig(input=str(path), output=str(out), pipeline=settings.get("pipeline", "none"),
                       encoder=settings.get("encoder", "x264"), crf=settings["crf"], preset=settings["preset"],
                       quiet=True, resume=True, segment="60")
    report = SegmentedJob.prepare(config).run(RecordingReporter())
    lost = killed_after + report["frames_encoded"] - report["frames_out"]
    longest = max(s["frames"] for s in report["segments"]["list"])
    return {"frames": report["frames_out"], "lost_frames": lost, "segment_frames": longest,
            "segments": report["segments"]["total"]}


# ---- BasicVSR++ (issue 11): full-size c64n7 with random weights; speed does not depend on them --

def _vsr_settings(settings: dict) -> dict:
    return {"window": int(settings.get("window", 96)), "overlap": int(settings.get("overlap", 8)),
            "device": settings.get("device", "auto"), "precision": settings.get("precision", "auto")}


def _vsr_net(mid: int = 64, blocks: int = 7):
    """c64n7 (the REDS4/Vimeo-90K checkpoints' shape) with torch's default random init."""
    import torch

    from engine.models.basicvsrpp import BasicVSRPlusPlus

    torch.manual_seed(0)
    return BasicVSRPlusPlus(mid, blocks).eval()


def _decode(path: Path, limit: int) -> list:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == limit:
                break
    return frames


@scenario("vsr-model-only", "BasicVSR++ c64n7 (random weights) over one window of frames already in memory")
def vsr_model_only(path: Path, scratch: Path, settings: dict) -> dict:
    import time

    from engine.window_inference import WindowRunner, WindowSettings

    v = _vsr_settings(settings)
    frames = _decode(path, v["window"])
    if len(frames) <= 2 * v["overlap"]:
        raise UserError(f"vsr-model-only needs more than 2 x overlap ({2 * v['overlap']}) frames; the input "
                        f"has {len(frames)}")
    runner = WindowRunner(_vsr_net(), 4, WindowSettings(device=v["device"], precision=v["precision"],
                                                        window=v["window"], overlap=v["overlap"]))
    runner.open()
    if runner.cuda:
        runner.run(frames[:2])  # warm-up: cudnn picks its kernels
    started, cpu_started = time.perf_counter(), time.process_time()
    runner.run(frames)
    timed, timed_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    info = runner.describe()
    if runner.cuda:
        import torch

        info["peak_device_mib"] = torch.cuda.max_memory_allocated(runner.device) / 2**20
    runner.close()
    # frames computed; a stream emits window − 2·overlap of them per window (the overlap's cost)
    emitted = len(frames) - 2 * v["overlap"]
    return {"frames": len(frames), "timed_s": timed, "timed_cpu_s": timed_cpu, "settings": info,
            "metrics": {"s_per_frame": timed / len(frames), "s_per_emitted_frame": timed / emitted,
                        "overlap_cost": len(frames) / emitted - 1}}


@scenario("vsr", "the engine: decode → basicvsrpp (c64n7, random weights) → encode")
def vsr(path: Path, scratch: Path, settings: dict) -> dict:
    import torch

    v = _vsr_settings(settings)
    checkpoint = scratch / "c64n7-random.pth"
    torch.save({"state_dict": {"generator." + k: t for k, t in _vsr_net().state_dict().items()}}, checkpoint)
    spec = (f"basicvsrpp:checkpoint={checkpoint}:window={v['window']}:overlap={v['overlap']}"
            f":device={v['device']}:precision={v['precision']}")
    result = _engine(path, scratch, settings, spec)
    counters = {}
    for stage in result["stages"]:
        counters.update(stage.get("counters", {}) if isinstance(stage, dict) else {})
    computed = counters.get("window_frames")
    if computed:
        result["metrics"] = {"window_frames": computed, "overlap_cost": computed / result["frames"] - 1}
    return result


@scenario("vsr-deform-cost", "BasicVSR++'s deformable convolution (128→64, 16 groups) against a plain 3×3 "
                             "convolution of the same shape, at the input's size")
def vsr_deform_cost(path: Path, scratch: Path, settings: dict) -> dict:
    import time

    import torch
    import torch.nn.functional as F

    from engine.inference import autocast, resolve_device, resolve_precision
    from engine.models.deform import modulated_deform_conv2d

    device = resolve_device(settings.get("device", "auto"))
    precision = resolve_precision(settings.get("precision", "auto"), device)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        h, w = stream.codec_context.height, stream.codec_context.width
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 128, h, w, generator=g).to(device)
    weight = (torch.randn(64, 128, 3, 3, generator=g) * 0.03).to(device)
    offset = ((torch.rand(1, 2 * 16 * 9, h, w, generator=g) - 0.5) * 8).to(device)
    mask = torch.rand(1, 16 * 9, h, w, generator=g).to(device)
    repeats = int(settings.get("repeats_inner", 3 if device.type == "cuda" else 1))

    def timed(fn) -> tuple[float, float]:
        with torch.no_grad(), autocast(device, precision):
            fn()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / repeats, (time.process_time() - cpu_started) / repeats

    conv_s, _ = timed(lambda: F.conv2d(x, weight, None, 1, 1))
    deform_s, deform_cpu_s = timed(lambda: modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1, 16))
    # one "frame" is one call of the layer at the input's size: fps is calls per second
    return {"frames": 1, "timed_s": deform_s, "timed_cpu_s": deform_cpu_s,
            "metrics": {"deform_s": deform_s, "conv_s": conv_s, "deform_vs_conv": deform_s / conv_s,
                        "size": f"{w}x{h}", "precision": precision}}
