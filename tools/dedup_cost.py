"""CPU time of the `dedup` stage alone against decoding, on the same decoded frames.

    python tools/dedup_cost.py [VIDEO] [--against OTHER_CHECKOUT] [--rounds 4]

Decodes VIDEO (default: the shared 1080p clip) once into memory, then, round by round,
times a fresh decode and the stage over the held frames (process CPU time), and with
`--against` the same stage from another checkout (e.g. a `git archive` of an older commit),
interleaved. Prints medians and the ratios: issue 14 asks for the stage under half of decode.
OpenCV's threads are set as the runner sets them for a run (`--opencv-threads`, default the
runner's: 0 = OpenCV's own choice; 1 = single-threaded calls).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine.registry as registry  # noqa: E402
from engine.frame import Frame  # noqa: E402
from engine.runner import RunnerOptions, opencv_thread_setting  # noqa: E402


def load_dedup(checkout: Path, name: str):
    """stages/dedup.py of a checkout as a module of its own (its stage name left unregistered)."""
    register = registry.register_stage
    registry.register_stage = lambda *a, **k: (lambda cls: cls)
    try:
        spec = importlib.util.spec_from_file_location(name, checkout / "stages" / "dedup.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        registry.register_stage = register


def decode(video: Path, keep: bool) -> tuple[float, list]:
    start, pictures = time.process_time(), []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for picture in container.decode(stream):
            if keep:
                pictures.append(picture)
    return time.process_time() - start, pictures


def stage_cpu(module, pictures: list) -> tuple[float, int]:
    stage, duplicates = module.Dedup(), 0
    start = time.process_time()
    for seq, picture in enumerate(pictures):
        frame = Frame.from_picture(seq, seq, Fraction(1, 24), picture, "rgb24")
        stage.process(frame)
        duplicates += "dup_of" in frame.meta
    return time.process_time() - start, duplicates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=ROOT / "tests" / "media" / "anime-1080p.mp4")
    parser.add_argument("--against", type=Path, help="another checkout whose stage runs beside this one")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--opencv-threads", type=int, default=RunnerOptions().opencv_threads)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if not args.video.is_file():
        parser.error(f"video not found: {args.video}")
    if args.against and not (args.against / "stages" / "dedup.py").is_file():
        parser.error(f"--against {args.against}: no stages/dedup.py there (give a checkout of this repository)")
    with opencv_thread_setting(args.opencv_threads):  # as the runner sets it for a run
        measure(args)


def measure(args: argparse.Namespace) -> None:
    stages = {"this": load_dedup(ROOT, "dedup_this")}
    if args.against:
        stages["against"] = load_dedup(args.against, "dedup_against")
    _, pictures = decode(args.video, keep=True)
    times: dict[str, list[float]] = {"decode": [], **{k: [] for k in stages}}
    for _ in range(args.rounds):
        times["decode"].append(decode(args.video, keep=False)[0])
        for key, module in stages.items():
            cpu, duplicates = stage_cpu(module, pictures)
            times[key].append(cpu)
            print(f"{key}: {cpu:.3f} s CPU, {duplicates} duplicates of {len(pictures)} frames")
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"decode {median['decode']:.3f} s CPU (median of {args.rounds})")
    for key in stages:
        print(f"{key}: {median[key]:.3f} s CPU, {median[key] / median['decode']:.3f} of decode")
    if args.against:
        print(f"this / against: {median['this'] / median['against']:.3f}")


if __name__ == "__main__":
    main()
