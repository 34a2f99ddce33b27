"""The scenario registry. A scenario processes one input once and returns its frame count.

Scenarios run inside a child process (bench/child.py), which times them and reads peak RSS.
Add a scenario with `@scenario("name")`; it receives the input path, a scratch directory
and the run's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import av

from engine.job import Job, JobConfig  # imported before timing starts
from engine.progress import RecordingReporter

Scenario = Callable[[Path, Path, dict], dict]
SCENARIOS: dict[str, tuple[Scenario, str]] = {}


def scenario(name: str, description: str):
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (fn, description)
        return fn

    return register


def _x264_options(settings: dict) -> dict[str, str]:
    return {"preset": settings["preset"], "crf": str(settings["crf"])}


@scenario("decode", "PyAV decode only (thread_type=AUTO), no conversion")
def decode(path: Path, scratch: Path, settings: dict) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = sum(1 for _ in container.decode(stream))
    return {"frames": frames}


@scenario("transcode-floor", "plain single-threaded PyAV decode→x264 loop: the floor")
def transcode_floor(path: Path, scratch: Path, settings: dict) -> dict:
    frames = 0
    with av.open(str(path)) as src, av.open(str(scratch / "floor.mp4"), "w") as dst:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        out = dst.add_stream("libx264", rate=vin.average_rate)
        out.width, out.height, out.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        out.time_base = vin.time_base
        out.codec_context.time_base = vin.time_base
        out.codec_context.options = _x264_options(settings)
        for frame in src.decode(vin):
            frame.pict_type = av.video.frame.PictureType.NONE
            dst.mux(out.encode(frame))
            frames += 1
        dst.mux(out.encode(None))
    return {"frames": frames}


def _engine(path: Path, scratch: Path, settings: dict, pipeline: str) -> dict:
    config = JobConfig(input=str(path), output=str(scratch / "engine.mp4"), pipeline=pipeline,
                       encoder="x264", crf=settings["crf"], preset=settings["preset"], quiet=True)
    report = Job.prepare(config).run(RecordingReporter())
    return {"frames": report["frames_out"], "stages": report["stages"],
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
                      Discard()).run()
    stages = [s.as_dict(result.elapsed_s) for s in result.stages]
    return {"frames": result.frames_out, "stages": stages}
