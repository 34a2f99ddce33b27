"""One `engine stream` job: check everything, then wire source → stages → sink and run it."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field

import av

from engine import image_input, interrupts
from engine.completeness import find_truncation
from engine.crashpoints import crash_point
from engine.encoders import (check_encoder_options, choose_encoder, container_for, has_alpha, muxer_codecs,
                             unused_encoder_flags)
from engine.deinterlace import check_mode as check_deinterlace_mode
from engine.errors import UserError
from engine.progress import Reporter, make_reporter
from engine.registry import StageSpec, check_stage_order, parse_pipeline, stage_class
from engine.runner import Pipeline, RunnerOptions, RunResult
from engine.sink import (ImageSequenceSink, PartialLock, VideoSink, frame_name, half_moved_frames, image_staging,
                         is_image_pattern, name_max, partial_path, pattern_matches, remove_stale_partials)
from engine.source import VideoInfo, VideoSource
from engine.stage import check_frame_size, frame_sizes
from engine.streamcopy import plan_copy
from engine.timestamps import MODES as TIMESTAMP_MODES
from engine.timestamps import scan_video_timestamps
from engine.video_stream import main_video


@dataclass(frozen=True)
class JobConfig:
    """Everything a job needs, checked before any thread starts."""

    input: str
    output: str
    pipeline: str = "none"
    encoder: str = "auto"
    crf: int | None = None
    preset: str | None = None
    prores_profile: str | None = None   # None: not given (ProRes's default, 422 HQ)
    max_frames: int | None = None
    timestamps: str = "repair"          # broken input timestamps: "repair" or "refuse"
    allow_truncated: bool = False       # a truncated input: keep what could be read
    decode: str = "auto"                # "cpu", "nvdec", or "auto" (see engine/source.py)
    deinterlace: str = "off"            # "off", "auto", "all" (see engine/deinterlace.py)
    fps: str | None = None              # an image-sequence input's frame rate (engine/image_input.py)
    report: str | None = None
    quiet: bool = False
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    resume: bool = False           # segmented, resumable run (engine/resume.py)
    segment: str | None = None     # segment length: seconds ("90") or frames ("500f")
    work_dir: str | None = None    # where segments and the manifest live


def same_path(a: str, b: str) -> bool:
    """One file, by name or through a link."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_writable_directory(path: str, what: str = "output directory") -> None:
    """The directory a file is to be written in: there, and writable."""
    if not os.path.isdir(path):
        raise UserError(f"{what} does not exist: {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} is not writable: {path}")


def check_output_path(input_path: str, output: str) -> None:
    if is_image_pattern(output) and frame_name(output) is None:  # `%s.png`, `%x`: no frame number
        raise UserError(f"image pattern needs one number field, %d or %06d: {output}")
    target = os.path.dirname(os.path.abspath(output)) if is_image_pattern(output) else output
    if same_path(input_path, target):
        raise UserError(f"output is the input file: {output}")
    name = os.path.basename(os.path.abspath(target))
    if len(name.encode()) > name_max(os.path.dirname(os.path.abspath(target))):
        raise UserError(f"output name is too long for its filesystem ({len(name.encode())} bytes): {output}")
    if not (is_image_pattern(output) and os.path.isdir(target)):  # frames are staged inside it
        check_writable_directory(os.path.dirname(os.path.abspath(target)) or ".")
    if not is_image_pattern(output) and os.path.isdir(output):
        raise UserError(f"output is a directory, not a file: {output}")
    if not is_image_pattern(output) and os.path.exists(output) and not os.path.isfile(output):
        # a FIFO or device: the finished file would replace it, and its reader wait forever
        raise UserError(f"output is not a regular file: {output}")
    if is_image_pattern(output) and os.path.lexists(target):
        if not os.path.isdir(target):
            raise UserError(f"output directory is a file: {target}")
        check_writable_directory(target)
        # a run killed while it moved its frames in left some: those it removes (clear_stale_partials)
        half_moved = set(half_moved_frames(*image_staging(output)))
        earlier = [n for n in pattern_matches(output, target) if n not in half_moved]
        if earlier:  # frames of an earlier run that this one would not all overwrite would mix in
            raise UserError(f"{target} already holds {len(earlier)} frames named like "
                            f"{os.path.basename(output)} ({earlier[0]}, ...): remove them or write elsewhere")


@dataclass
class Job:
    config: JobConfig
    specs: list[StageSpec]
    source: VideoSource
    sink: VideoSink | ImageSequenceSink
    sink_note: str         # which encoder (and why), or how images are written
    notes: list[str]       # what the user must hear before the run: streams copied or skipped

    @classmethod
    def prepare(cls, config: JobConfig) -> Job:
        """Validate the whole configuration and open the input. Raises UserError, starts nothing."""
        if config.segment is not None or config.work_dir is not None:
            raise UserError("--segment and --work-dir need --resume")
        specs = check_config(config)
        image_out = is_image_pattern(config.output)
        if not image_out:
            ext = container_for(config.output)
        source = VideoSource(config.input, max_frames=config.max_frames, timestamps=config.timestamps,
                             allow_truncated=config.allow_truncated, decode=config.decode,
                             deinterlace=config.deinterlace, count_frames=not config.quiet)
        try:
            size = check_output_size(specs, source.info, video=not image_out)
            early_notes, truncated = check_input(config, source.info)  # the source keeps what decodes
            source.truncation_said = truncated  # its note after the run then only gives the count
            video_index = main_video(source.container).index
            if image_out:
                sink = ImageSequenceSink(config.output)
                note = f"images: {os.path.splitext(config.output)[1][1:]} via {sink.workers} saver threads"
                check_encoder_options(config.encoder, config.crf, config.preset, config.prores_profile)
                unused = unused_encoder_flags(config.encoder, config.crf, config.preset, config.prores_profile)
                if unused:  # said, as a video output says what its encoder does not use
                    note += f"; {' and '.join(unused)} not used by an image sequence"
                sar = source.info.sample_aspect_ratio
                if sar:
                    early_notes.append(f"note: the input's pixels are not square (aspect {sar}): frames are "
                                       f"written as stored, without it (image files hold no pixel aspect)")
                plan = plan_copy(source.container, video_index, None, "an image sequence")
            else:
                choice = choose_encoder(config.encoder, ext, source.info.bit_depth,
                                        crf=config.crf, preset=config.preset,
                                        prores_profile=config.prores_profile,
                                        source_pix_fmt=source.info.pix_fmt, hdr=source.info.hdr,
                                        size=size)
                plan = plan_copy(source.container, video_index, muxer_codecs(ext), ext)
                source.alpha_kept = (("all" if not specs else "untouched") if has_alpha(choice.pix_fmt)
                                     else None)
                sink = VideoSink(config.output, choice, source.info, input_path=config.input,
                                 copy_plan=plan, stop_copy_with_video=config.max_frames is not None,
                                 video_jumps=source.jumps)
                note = choice.note
        except BaseException:
            source.close()
            raise
        return cls(config, specs, source, sink, note,  # never drop a stream silently
                   clear_stale_partials(config.output, config.report) + replacing_note(config.output)
                   + image_input_notes(config) + early_notes
                   + plan.notes() + unused_work_dir_note(config))

    def run(self, reporter: Reporter | None = None) -> dict:
        # once the output is in place, a stop signal cannot undo the job (engine/interrupts.py)
        with interrupts.finishing(self.config.output):
            return self._run(reporter)

    def _run(self, reporter: Reporter | None) -> dict:
        config = self.config
        reporter = reporter or make_reporter(config.quiet, record_gpu=bool(config.report))
        pipeline = Pipeline(self.source, self.specs, self.sink, config.runner)
        if not config.quiet:
            reporter_note(reporter, [self.sink_note, *self.notes])
        reporter.start(pipeline.snapshot)
        result: RunResult | None = None
        try:
            result = pipeline.run()
        finally:
            reporter.stop(pipeline.snapshot() if result is not None else None)
        notes = self.source.notes + getattr(self.sink, "notes", []) + stage_notes(
            self.specs, [s.counters for s in result.stages[1:-1]])
        if notes and not config.quiet:
            reporter_note(reporter, notes)
        report = build_report(self, result, reporter)
        report["notes"] = self.notes + notes
        if config.report:
            write_report(config.report, report, config.output)
        return report


def stage_notes(specs: list[StageSpec], counters: list[dict]) -> list[str]:
    """Each stage's `run_note` on its counters (`counters[i]` is `specs[i]`'s)."""
    notes = [stage_class(spec.name).run_note(dict(c)) for spec, c in zip(specs, counters)]
    return [n for n in notes if n]


def check_config(config: JobConfig) -> list[StageSpec]:
    """The checks every job makes before opening anything: options, pipeline, output, report."""
    if config.max_frames is not None and config.max_frames < 1:
        raise UserError(f"--frames must be >= 1, got {config.max_frames}")
    if not config.runner.stall_timeout_s > 0:  # also NaN
        raise UserError(f"--stall-timeout must be a number of seconds > 0, got {config.runner.stall_timeout_s}")
    if not 0 <= config.runner.opencv_threads <= 1024:  # cv2 takes a C int; no machine has more
        raise UserError(f"--opencv-threads must be between 0 and 1024, got {config.runner.opencv_threads}")
    if config.timestamps not in TIMESTAMP_MODES:
        raise UserError(f"invalid --timestamps '{config.timestamps}'; choose one of: "
                        f"{', '.join(TIMESTAMP_MODES)}")
    check_deinterlace_mode(config.deinterlace)
    register_image_rate(config)
    specs = parse_pipeline(config.pipeline)
    check_stage_order(specs)
    video_file = not is_image_pattern(config.output) and not os.path.isdir(config.output)
    if video_file:  # `new/frame.png`: the extension is the mistake, not the missing directory
        container_for(config.output)
    check_output_path(config.input, config.output)  # an existing `out/` is a directory, not an extension
    if config.report:
        check_report_path(config.report, [config.input], [config.output])
    return specs


def register_image_rate(config: JobConfig) -> None:
    """An image-sequence input's rate, registered for every open of it in this process;
    `--fps` given for a video is refused (a video keeps its own timestamps)."""
    if is_image_pattern(config.input):
        image_input.set_rate(config.input, image_input.parse_rate(config.fps) if config.fps
                             else image_input.DEFAULT_RATE)
    elif config.fps is not None:
        raise UserError(f"--fps is for an image-sequence input (frames/%06d.png); a video keeps its own "
                        f"timestamps: {config.input}")


def unused_work_dir_note(config: JobConfig) -> list[str]:
    """A run without --resume beside an earlier --resume run's work directory: say it is left
    as it is (it can hold hours of finished segments; a rerun with --resume continues it)."""
    if is_image_pattern(config.output):
        return []
    from engine.resume import default_work_dir  # resume imports this module

    work_dir = default_work_dir(config.output)
    if not os.path.isdir(work_dir):
        return []
    return [f"note: {work_dir} holds an earlier --resume run of this output; this run does not use it "
            f"(run with --resume to continue that job, or delete it)"]


def image_input_notes(config: JobConfig) -> list[str]:
    if not is_image_pattern(config.input):
        return []
    sequence = image_input.find(config.input)
    first, last = (image_input.frame_file(config.input, n) for n in (sequence.first, sequence.first + sequence.count - 1))
    how = "" if config.fps else " (--fps sets it)"
    return [f"note: image sequence: {sequence.count} frames, {first} to {last}, at "
            f"{image_input.rate_of(config.input)} fps{how}"]


def clear_stale_partials(output: str, report: str | None = None) -> list[str]:
    """Remove the partials of `output` (and of the `report`) left by runs here that were
    killed (no handler runs on SIGKILL or the OOM killer, and each pid names a new one); the
    notes that say so."""
    removed = remove_stale_partials(*image_staging(output)) if is_image_pattern(output) else \
        remove_stale_partials(output)
    if report:
        removed += remove_stale_partials(report)
    return [f"note: removed {name}, left by a run of this job that was killed" for name in removed]


def replacing_note(output: str) -> list[str]:
    """An existing output is replaced, like FFmpeg's -y: said before the run, so a mistyped
    name can be stopped; the old file stays until the new one is complete."""
    if is_image_pattern(output) or not os.path.isfile(output):
        return []
    return [f"note: {output} exists: it is replaced when this job completes (kept if the job fails)"]


def check_report_path(report: str, inputs: list[str], outputs: list[str], created: tuple[str, ...] = ()) -> None:
    """`--report FILE` is a file of its own: writing it must never replace an input, an output
    (a finished one included) or a frame of an image sequence, and it is checked before the run,
    not after hours of work."""
    if os.path.isdir(report):
        raise UserError(f"--report names a directory, not a file: {report}")
    if len(os.path.basename(report).encode()) > name_max(os.path.dirname(os.path.abspath(report))):
        raise UserError(f"--report name is too long for its filesystem: {report}")
    parent = os.path.dirname(os.path.abspath(report))

    def a_frame_of(pattern: str) -> bool:
        named = frame_name(pattern)
        return (same_path(parent, os.path.dirname(os.path.abspath(pattern)))
                and named is not None and named.match(os.path.basename(report)) is not None)

    for path in inputs:
        if same_path(report, path) or (is_image_pattern(path) and a_frame_of(path)):
            raise UserError(f"--report would overwrite the input: {report}")
    beside_frames = False
    for output in outputs:
        if is_image_pattern(output):
            if a_frame_of(output):
                raise UserError(f"--report would overwrite a frame of the output: {report}")
            # beside the frames: in the directory the image sink creates
            beside_frames |= same_path(parent, os.path.dirname(os.path.abspath(output)))
        elif same_path(report, output):
            raise UserError(f"--report would overwrite the output: {report}")
    if beside_frames or any(same_path(parent, d) for d in created):
        return  # the batch's OUT_DIR, made once every check has passed
    check_writable_directory(parent, "report directory")


def check_output_size(specs: list[StageSpec], info: VideoInfo, video: bool) -> tuple[int, int] | None:
    """An output no encoder takes, or one that would exhaust memory, refused before the run
    (a resize to 99999 pixels used to be killed by the OOM killer mid-run). Returns the output
    frames' size, None where a model's weights tell it."""
    sizes = frame_sizes([spec.build() for spec in specs], info.width, info.height)
    for spec, size in zip(specs, sizes[1:]):
        if size is None:
            # a model's scale comes with its weights: the model stage checks when it opens, and
            # a resize after it when it first sizes a frame
            return None
        check_frame_size(spec.name, *size)
    if video and sizes[-1] is not None and min(sizes[-1]) < 2:
        raise UserError(f"output would be {sizes[-1][0]}x{sizes[-1][1]}: a video needs at least 2x2 pixels")
    return sizes[-1]


def check_input(config: JobConfig, info: VideoInfo) -> tuple[list[str], bool]:
    """Refuse, before any output exists, input the job could not finish faithfully. Returns
    the notes to say and whether the input is truncated (kept: --allow-truncated)."""
    if config.timestamps == "refuse":
        problem = scan_video_timestamps(config.input)
        if problem:
            raise UserError(f"input has broken timestamps: {config.input}: {problem} "
                            "(--timestamps repair regenerates them)")
    if config.max_frames is not None:
        return [], False  # a cut past frame N does not matter; one before it the source finds
    truncated = find_truncation(config.input, info)
    if truncated is None:
        return [], False
    if not config.allow_truncated:
        raise UserError(f"input is truncated: {config.input}: {truncated} "
                        "(--allow-truncated keeps the frames that can be read)")
    return [f"note: input is truncated ({truncated}); keeping the frames that can be read"], True


def reporter_note(reporter: Reporter, lines: list[str]) -> None:
    console = getattr(reporter, "console", None)
    for line in lines:
        if console is not None:
            console.print(line, markup=False)
        else:
            print(f"[engine] {line}", file=getattr(reporter, "stream", None), flush=True)


def build_report(job: Job, result: RunResult, reporter: Reporter) -> dict:
    elapsed = result.elapsed_s
    info = job.source.info
    report = {
        "input": job.config.input,
        "output": job.config.output,
        "pipeline": [{"name": s.name, "options": s.options, "workers": s.workers, "queue": s.queue}
                     for s in job.specs],
        "sink": job.sink_note,
        **({"encoder": job.sink.describe()} if hasattr(job.sink, "describe") else {}),
        "frames_in": result.frames_in,
        "frames_out": result.frames_out,
        "wall_s": round(elapsed, 4),
        "fps": round(result.frames_out / elapsed, 3) if elapsed > 0 else 0.0,
        "video": describe_input(info),
        "output_video": describe_output(job.config.output),
        "stages": [s.as_dict(elapsed) for s in result.stages],
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dedup = [s for s in result.stages if "unique" in s.counters]
    if dedup:
        c = dedup[0].counters
        report["dedup"] = {"exact_duplicates": c.get("exact_duplicates", 0),
                           "near_duplicates": c.get("near_duplicates", 0),
                           "frames_processed": c["unique"], "frames": result.frames_out,
                           **({"noise": dedup[0].settings["noise"]}
                              if "noise" in (dedup[0].settings or {}) else {})}
    if job.source.deinterlacer is not None:
        report["deinterlace"] = job.source.deinterlacer.describe()
    if job.source.size_holder.scaled:
        report["frame_size"] = job.source.size_holder.describe()
    repair = job.source.repair
    report["timestamps"] = {
        "mode": job.config.timestamps,
        "video_frames_repaired": repair.repaired if repair else 0,
        "first_repaired_seq": repair.first_bad if repair else None,
        "packets_repaired": getattr(job.sink, "repaired_packets", {}),
        "packets_dropped": getattr(job.sink, "dropped_packets", {}),
    }
    gpu = reporter.gpu_report()
    if gpu is not None:
        report["gpu"] = gpu
    if reporter.timeline:
        report["timeline"] = reporter.timeline
    return report


def describe_input(info: VideoInfo) -> dict:
    """The report's `video`: the input's video stream as its header says."""
    return {"width": info.width, "height": info.height, "pix_fmt": info.pix_fmt,
            "frame_rate": str(info.frame_rate), "codec": info.codec,
            **({"hdr10": info.hdr.describe()} if info.hdr else {})}


def describe_output(path: str) -> dict | None:
    """The finished output's video stream, read back from the file (None for images)."""
    if is_image_pattern(path) or not os.path.isfile(path):
        return None
    from engine.source import open_input, read_info

    container = open_input(path)
    try:
        info = read_info(container)
    finally:
        container.close()
    return {"path": os.path.abspath(path), "width": info.width, "height": info.height,
            "pix_fmt": info.pix_fmt, "codec": info.codec, "frame_rate": str(info.frame_rate),
            "colour": {"matrix": info.colorspace, "primaries": info.color_primaries,
                       "transfer": info.color_trc, "range": info.color_range},
            **({"sample_aspect_ratio": str(info.sample_aspect_ratio)} if info.sample_aspect_ratio else {}),
            **({"hdr10": info.hdr.describe()} if info.hdr else {})}


def environment() -> dict:
    import numpy

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "av": av.__version__,
            "ffmpeg": ".".join(map(str, av.ffmpeg_version_info))
            if isinstance(av.ffmpeg_version_info, tuple) else str(av.ffmpeg_version_info),
            "numpy": numpy.__version__}


def write_report(path: str, report: dict, output: str | None = None) -> None:
    """Write `report` as JSON, whole or not at all. `output`: the job's output, already in
    place, which a report that cannot be written (a full disk) does not undo: the error says so."""
    tmp = partial_path(path)  # hidden, and as short as a legal name allows
    lock = PartialLock(tmp)  # held while written: a killed run's is known (clear_stale_partials)
    try:
        with open(tmp, "w") as fh:
            crash_point("report-write")
            json.dump(report, fh, indent=2)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)  # a half-written report must not be left to look like one
        except OSError:
            pass
        if isinstance(exc, OSError):
            done = f" (the output {output} is complete)" if output else ""
            raise UserError(f"cannot write report {path}: {exc.strerror or exc}{done}") from None
        raise
    finally:
        lock.release()
