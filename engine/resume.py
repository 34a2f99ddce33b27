"""`engine stream IN OUT --resume`: a job cut into segments that survives being killed.

1. Plan: scan packets, cut at verified keyframes every `--segment` (engine/segments.py).
2. Key: the work directory's manifest must belong to this very job (engine/manifest.py);
   otherwise a one-line error says what changed. Only one process may use it at a time.
3. Reuse: a recorded segment whose file still has its size and sha256 is kept; anything
   else in the work directory (partial files, unrecorded or damaged segments, temporary
   manifests) is deleted, and so is the temporary output of a join that was killed.
4. Run the rest in plan order, each with the ordinary runner (engine/segment_job.py),
   recording each in the manifest as soon as its file is complete.
5. Join without re-encoding, side streams copied once (engine/join.py); then the work
   directory goes.

A kill at any moment loses at most the segment in flight. A resumed job produces the same
bytes as one never interrupted: each segment is a pure function of the input, the plan and
the options (the encoders here are deterministic), and the join of the same segments is
bit-exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import time
from dataclasses import dataclass

from engine import interrupts
from engine.completeness import find_truncation, readable_frames
from engine.crashpoints import crash_point
from engine.encoders import (CONTAINERS, available_cpus, choose_encoder, container_for, fixed_threads,
                             muxer_codecs, with_options)
from engine.deinterlace import Deinterlacer, deinterlace_note
from engine.errors import UserError
from engine.frame_size import SizeHolder, size_note
from engine.image_input import rate_of
from engine.job import (JobConfig, check_config, check_input, check_output_size, clear_stale_partials,
                        describe_input, describe_output, environment, image_input_notes, replacing_note,
                        reporter_note, stage_notes, write_report)
from engine.join import JoinPart, join_segments
from engine.manifest import (MANIFEST, Manifest, SegmentRecord, is_temporary, job_key, key_difference, load,
                             save)
from engine.metrics import RunSnapshot, SegmentCounts, StageSnapshot, added
from engine.progress import Reporter, make_reporter
from engine.segment_job import (WORK_DIR_HINT, PipelineContext, SegmentResult, SegmentRun, SegmentTask, file_digest,
                                work_dir_label)
from engine.segments import Segment, length_in_frames, plan_segments, scan_packets
from engine.sink import fit_name, is_image_pattern, name_max, output_errors, partial_path
from engine.source import first_frame_size, open_input, read_info
from engine.streamcopy import plan_copy
from engine.timestamps import HoleWatch, frame_step
from engine.video_stream import main_video

DEFAULT_SEGMENT = "60"  # seconds of video: minutes of work for a model pipeline


def _sizes(segments, length: int) -> str:
    """"3 of 500-512 frames": what the plan really is. Cuts land on keyframes, so a segment
    can be longer than asked for (a whole 48-frame GOP when 12 were asked)."""
    counts = sorted(s.frames for s in segments)
    span = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    asked = "" if counts[-1] <= length else f" (asked {length}; cuts fall on keyframes)"
    return f"{len(counts)} of {span} frames{asked}"


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def decoding_key(config: JobConfig) -> dict | None:
    """What changes the decoded frames or their timestamps beside the input file itself
    (None when nothing does, so older manifests keep their key)."""
    key = {}
    if config.deinterlace != "off":
        key["deinterlace"] = config.deinterlace
    if is_image_pattern(config.input):
        key["fps"] = str(rate_of(config.input))
    return key or None


def default_work_dir(output: str) -> str:
    head, tail = os.path.split(os.path.abspath(output))
    return os.path.join(head, f".{fit_name(tail, name_max(head) - len('..engine-work'))}.engine-work")


def segment_name(index: int, ext: str) -> str:
    return f"segment-{index:05d}{ext}"


def state_name(index: int) -> str:
    return f"segment-{index:05d}.state.npz"


@dataclass
class _Progress:
    """What the reporter thread reads; written only by the main thread."""

    started: float
    frames_total: int     # frames this run must encode (reused segments excluded)
    done: int = 0
    reused: int = 0
    pending: int = 0
    # (frames, stages) of the segments this run finished, and the segment running: replaced as
    # one, so the reporter never sees a segment both finished and running (or neither)
    view: tuple[int, list[StageSnapshot], SegmentRun | None] = (0, [], None)

    @property
    def frames_before(self) -> int:
        return self.view[0]


@dataclass
class _Planned:
    """What `_plan` works out: `prepare` goes on from here."""

    specs: list
    ext: str
    context: PipelineContext
    info: object
    input_notes: list[str]
    encoder: object
    copy_plan: object
    length: int
    table: object
    plan: object
    key: dict


def _plan(config: JobConfig) -> _Planned:
    """Everything `prepare` works out before it takes the work directory, the job key last:
    the input checked, the encoder chosen, the packets scanned and the cuts planned. Writes nothing."""
    if is_image_pattern(config.output):
        raise UserError("--resume writes a video file, not an image sequence")
    specs = check_config(config)
    ext = container_for(config.output)
    context = PipelineContext.of(specs)
    container = open_input(config.input)
    try:
        info = read_info(container)
        size = check_output_size(specs, info, video=True)
        input_notes, truncated = check_input(config, info)  # broken timestamps (refuse mode), truncation
        encoder = choose_encoder(config.encoder, ext, info.bit_depth, crf=config.crf,
                                 preset=config.preset, prores_profile=config.prores_profile,
                                 source_pix_fmt=info.pix_fmt, hdr=info.hdr, size=size)
        copy_plan = plan_copy(container, main_video(container).index, muxer_codecs(ext), ext)
    finally:
        container.close()
    length = length_in_frames(config.segment or DEFAULT_SEGMENT, info.frame_rate)
    limit = config.max_frames
    # The plan comes from the packet index, which in a cut-short front-index MP4 lists
    # frames the file lacks: plan the frames that decode. With --frames N check_input
    # skipped the truncation check; here it matters when the cut comes before frame N.
    if truncated or (limit is not None and find_truncation(config.input, info) is not None):
        readable = readable_frames(config.input, limit)
        if limit is None or readable < limit:
            if not config.allow_truncated:  # only with --frames: else check_input refused it
                raise UserError(f"input is truncated: {config.input}: only {readable} of the "
                                f"first {limit} frames can be read (--allow-truncated keeps them)")
            limit = readable
            input_notes.append(f"note: {limit} frames of the truncated input can be read")
    table = scan_packets(config.input, limit)
    # a hole in a constant-rate video (damaged data the demuxer skipped): the whole table
    # at once, cuts included, where each segment's decode sees only its own range
    holes = HoleWatch(frame_step(info.frame_rate, table.time_base), table.time_base)
    for pts in table.pts:
        holes.feed(pts)
    if (hole := holes.note(info.frame_rate)) is not None:
        input_notes.append(hole)
    plan = plan_segments(config.input, table, length)
    key = job_key(input_path=config.input, specs=specs,
                  encoder={"name": encoder.name, "codec": encoder.codec, "pix_fmt": encoder.pix_fmt,
                           "options": dict(sorted(encoder.options.items()))},
                  container=CONTAINERS[ext], plan=plan.as_dict(),
                  decoding=decoding_key(config))
    return _Planned(specs, ext, context, info, input_notes, encoder, copy_plan, length, table, plan, key)


def job_key_of(config: JobConfig) -> dict:
    """The key `prepare` gives `config`'s work directory (without encoder_threads), worked out
    without touching the work directory: what a batch compares an earlier run's record with."""
    return _plan(config).key


class SegmentedJob:
    """One `engine stream --resume` job. `prepare` checks everything and takes the work
    directory; `run` does the segments still missing and the join."""

    def __init__(self, config, specs, encoder, copy_plan, table, plan, context, work_dir, lock_fd,
                 manifest, reused, notes, frame_size=None):
        self.config = config
        self.frame_size = frame_size  # the first frame's: every segment's frames keep it
        self.after_notes: list[str] = []  # what the segments said, for the whole job (after the run)
        self.join_notes: list[str] = []  # what the join's side-stream copy said
        self.video: dict | None = None  # the report's `video` (the input's stream)
        self.specs = specs
        self.encoder = encoder
        self.copy_plan = copy_plan
        self.table = table
        self.plan = plan
        self.context = context
        self.work_dir = work_dir
        self._lock_fd = lock_fd
        self.manifest = manifest
        self.reused = reused
        self.notes = notes
        self.sink_note = encoder.note
        self.key: dict = {}  # the job key as compared (without encoder_threads)
        # a batch's: called with the job and its report once the output is in place, before
        # the work directory goes (engine/batch.py records the input as done)
        self.committed = None

    @classmethod
    def prepare(cls, config) -> SegmentedJob:
        p = _plan(config)
        specs, ext, context, info, input_notes = p.specs, p.ext, p.context, p.info, p.input_notes
        encoder, copy_plan, length, table, plan, key = p.encoder, p.copy_plan, p.length, p.table, p.plan, p.key
        compared = dict(key)  # the job key as compared (the manifest adds encoder_threads to it)
        work_dir = config.work_dir or default_work_dir(config.output)
        for what, path in (("the output", config.output), ("the input", config.input),
                           ("--report", config.report)):
            if path and _inside(path, work_dir):
                raise UserError(f"{what} is inside the work directory, which is removed when the job "
                                f"finishes: {path}")
        lock_fd = _take(work_dir)
        try:
            manifest = load(work_dir)
            if manifest is not None:
                why = key_difference(manifest.key, key)
                if why is not None:
                    _remove_join_partial(manifest)  # the user is told to delete the rest, not this sibling
                    raise UserError(f"work directory {work_dir} belongs to another job: {why}; "
                                    f"delete it to start afresh, or resume with the same input and options")
            else:
                manifest = Manifest(key)
            # Encoder threads are fixed when the job is first planned and kept in the manifest:
            # x264/x265 bytes depend on them, and a resume may run on another machine (or Ray
            # on several). Not part of the compared key: where the job finishes does not matter.
            threads = manifest.key.setdefault("encoder_threads", fixed_threads(encoder, available_cpus()))
            encoder = with_options(encoder, threads)
            reused = _reuse(work_dir, manifest, ext)
            save(work_dir, manifest)
        except BaseException:
            os.close(lock_fd)
            raise
        notes = [*clear_stale_partials(config.output, config.report), *replacing_note(config.output),
                 *image_input_notes(config), *input_notes,
                 *copy_plan.notes(),
                 f"segments: {_sizes(plan.segments, length)} in {work_dir}"
                 + (f", {len(reused)} reused" if reused else ""),
                 *(f"note: cut merged at {m}" for m in plan.merged)]
        job = cls(config, specs, encoder, copy_plan, table, plan, context, work_dir, lock_fd,
                  manifest, reused, notes, first_frame_size(config.input))
        job.video = describe_input(info)
        job.key = compared
        return job

    # ---- the run --------------------------------------------------------------------------

    def run(self, reporter: Reporter | None = None) -> dict:
        # once the output is in place, a stop signal cannot undo the job (engine/interrupts.py)
        with interrupts.finishing(self.config.output):
            return self._run(reporter)

    def _run(self, reporter: Reporter | None) -> dict:
        config = self.config
        reporter = reporter or make_reporter(config.quiet, record_gpu=bool(config.report))
        todo = [s for s in self.plan.segments if s.index not in self.reused]
        progress = _Progress(time.perf_counter(), sum(s.frames for s in todo),
                             reused=len(self.reused), pending=len(todo))
        if not config.quiet:
            reporter_note(reporter, [self.sink_note, *self.notes])
        reporter.start(lambda: _snapshot(progress))
        results: dict[int, SegmentResult] = {}
        ok = False
        try:
            # the segment files, their states and the manifest: a full disk there is the user's to fix
            with output_errors(work_dir_label(self.work_dir), WORK_DIR_HINT):
                for seg in todo:  # in plan order: with dedup, a segment's context comes from the one before
                    frames, stages, _ = progress.view
                    current = SegmentRun(self.task(seg))
                    progress.view = (frames, stages, current)
                    results[seg.index] = current.run()
                    self.record(seg, results[seg.index])
                    progress.view = (frames + seg.frames, added(stages, current.snapshot().stages), None)
                    progress.done += 1
                    progress.pending -= 1
            started = time.perf_counter()
            self.join()
            join_s = time.perf_counter() - started
            ok = True
        finally:
            reporter.stop(_snapshot(progress) if ok else None)
            if not ok:
                self.release()  # else finish() does, once the work directory is gone
        try:
            gpu = reporter.gpu_report()
            report = self.finish(results, progress.started, progress.frames_before, join_s,
                                 {"gpu": gpu} if gpu is not None else None)
        finally:
            self.release()  # safe to repeat: finish() released it once the work directory was gone
        if self.after_notes and not config.quiet:
            reporter_note(reporter, self.after_notes)
        return report

    def release(self) -> None:
        """Unlock the work directory (safe to repeat: failure paths and the driver both call it)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finish(self, results: dict[int, SegmentResult], started: float, frames_encoded: int,
               join_s: float, extra: dict | None = None) -> dict:
        """After the join: build the report, tell a batch the output is done (`committed`),
        remove the spent work directory, write the report."""
        try:
            done, figures = self.source_numbers(), self.run_figures()
            self.after_notes = self.segment_notes(done, figures) + self.join_notes
            report = self._report(results, started, frames_encoded, join_s, done, figures)
            report.update(extra or {})
            if self.committed is not None:  # recorded first: a kill after it keeps the output
                self.committed(self, report)
            crash_point("work-dir-removal")
            remove_locked_work_dir(self.work_dir)  # the output is in place: parts are spent
        finally:
            self.release()
        if self.config.report:
            write_report(self.config.report, report, self.config.output)
        return report

    # The three steps a driver needs, here run in order on this machine; a distributed driver
    # (issue: Ray) runs `task`s elsewhere and calls `record` and `join` here.

    def task(self, seg: Segment, speculate: bool = False) -> SegmentTask:
        """The description of segment `seg`'s run. With dedup or a stage that carries state
        (`context.sequential`), the segment before must be recorded first: its last unique
        frames are this one's context, its end state this one's start. `speculate` (dedup
        only, `context.speculative`): the worker guesses the context start instead, and
        whoever records the result checks it first (engine/segment_job.py)."""
        previous = self.manifest.segments.get(seg.index - 1)
        if speculate and not self.context.speculative:
            raise ValueError(f"segment {seg.index}: this pipeline's context cannot be speculated")
        ext = os.path.splitext(self.config.output)[1].lower()
        state_in = state_out = None
        if self.context.stateful:
            if seg.index > 0 and previous is None:
                raise ValueError(f"segment {seg.index} needs the state the one before ended with")
            state_in = os.path.join(self.work_dir, previous.state_file) if seg.index > 0 else None
            state_out = os.path.join(self.work_dir, state_name(seg.index))
        return SegmentTask(
            input=self.config.input, segment=seg,
            decode_start=None if speculate else
            self.context.context_start(seg, previous.tail_unique if previous else None,
                                       previous.tail_index if previous else 0, len(self.table)),
            unique_start=0 if speculate else
            self.context.unique_start(seg, previous.tail_unique if previous else None,
                                      previous.tail_index if previous else 0, len(self.table)),
            decode_stop=self.context.context_stop(seg, len(self.table)),
            table=self.table, specs=self.specs, encoder=self.encoder,
            output=os.path.join(self.work_dir, segment_name(seg.index, ext)),
            keep_unique=self.context.keep_unique, runner=self.config.runner,
            state_in=state_in, state_out=state_out, context=self.context,
            deinterlace=self.config.deinterlace, frame_size=self.frame_size,
            image_rate=str(rate_of(self.config.input)) if is_image_pattern(self.config.input) else None)

    def record(self, seg: Segment, result: SegmentResult) -> None:
        """Note a finished segment in the manifest (atomically): from now on it is reused."""
        crash_point("segment-done")  # the file is complete, the manifest does not know yet
        self.manifest.segments[seg.index] = SegmentRecord(
            seg.start, seg.end, result.frames,
            segment_name(seg.index, os.path.splitext(self.config.output)[1].lower()),
            result.size, result.sha256, result.tail_unique,
            state_name(seg.index) if result.state_sha256 else "", result.state_sha256,
            result.notes, result.source, result.stages, result.encoder, result.dedup, result.tail_index)
        save(self.work_dir, self.manifest)

    def join(self) -> None:
        """Join every recorded segment into the output, side streams copied from the input."""
        parts = [JoinPart(os.path.join(self.work_dir, self.manifest.segments[s.index].file), s.frames,
                          s.start_pts * self.table.time_base) for s in self.plan.segments]
        copy_until = math.inf
        if self.config.max_frames is not None:  # other streams end where the video ends
            pts = self.table.pts
            last_step = pts[-1] - pts[-2] if len(pts) > 1 else 0
            copy_until = float((pts[-1] + last_step) * self.table.time_base)
        self.manifest.join_partial = partial_path(self.config.output)
        save(self.work_dir, self.manifest)
        self.join_notes = join_segments(parts, self.config.output, input_path=self.config.input,
                                        copy_plan=self.copy_plan, copy_until_s=copy_until,
                                        partial=self.manifest.join_partial)

    def source_numbers(self) -> dict:
        """What the sources of all the segments (reused ones too) did, added up."""
        records = [self.manifest.segments[s.index] for s in self.plan.segments]
        numbers = {"frame_size": SizeHolder.merge([r.source.get("frame_size", {}) for r in records])}
        if self.config.deinterlace != "off":
            numbers["deinterlace"] = Deinterlacer.merge([r.source.get("deinterlace", {}) for r in records],
                                                        self.config.deinterlace)
        return numbers

    def segment_notes(self, numbers: dict, figures: dict) -> list[str]:
        """The segments' notes, each said once, and the job's sums of what they counted
        (`numbers`: `source_numbers`; `figures`: `run_figures`)."""
        notes = list(dict.fromkeys(n for s in self.plan.segments for n in self.manifest.segments[s.index].notes))
        stages = figures.get("stages")
        if stages:  # source, the pipeline's stages, sink
            notes += stage_notes(self.specs, [st["counters"] for st in stages[1:-1]])
        if "deinterlace" in numbers:
            notes.append(deinterlace_note(numbers["deinterlace"]))
        size = size_note(numbers["frame_size"])
        return notes + ([size] if size else [])

    def run_figures(self) -> dict:
        """The report's `encoder`, `stages` and `dedup`, from every segment's record (reused
        ones too). Stage items, times and counters add up over segments and include the
        context frames each decoded (`stages_cover`); settings are the first segment's.
        dedup's counts are of the segments' own frames, so they equal a single pass's."""
        records = [self.manifest.segments[s.index] for s in self.plan.segments]
        figures: dict = {}
        encoder = next((r.encoder for r in records if r.encoder), None)
        if encoder:
            figures["encoder"] = encoder
        if all(r.stages for r in records):
            figures["stages"] = _summed_stages([r.stages for r in records])
            figures["stages_cover"] = {"frames": self.plan.frames,
                                       "context_frames": sum(_items(r.stages) for r in records) - self.plan.frames}
        if all(r.dedup for r in records):
            kinds: dict[str, int] = {}
            for r in records:
                for kind, n in r.dedup.items():
                    kinds[kind] = kinds.get(kind, 0) + n
            # no `noise`: each segment measures its own pairs, and their summaries do not add up
            figures["dedup"] = {"exact_duplicates": kinds.get("exact_duplicates", 0),
                                "near_duplicates": kinds.get("near_duplicates", 0),
                                "frames_processed": kinds.get("unique", 0), "frames": self.plan.frames}
        return figures

    def _report(self, results: dict[int, SegmentResult], started: float, frames_encoded: int,
                join_s: float, numbers: dict, figures: dict) -> dict:
        elapsed = time.perf_counter() - started
        segments = []
        for seg in self.plan.segments:
            rec = self.manifest.segments[seg.index]
            res = results.get(seg.index)
            segments.append({"index": seg.index, "start": seg.start, "end": seg.end, "frames": rec.frames,
                             "size": rec.size, "reused": res is None,
                             **({"decoded": res.decoded, "wall_s": round(res.elapsed_s, 4)} if res else {})})
        return {
            "input": self.config.input, "output": self.config.output,
            "pipeline": [{"name": s.name, "options": s.options, "workers": s.workers, "queue": s.queue}
                         for s in self.specs],
            "sink": self.sink_note,
            **figures,
            **({"video": self.video} if self.video else {}),
            **({"deinterlace": numbers["deinterlace"]} if "deinterlace" in numbers else {}),
            **({"frame_size": numbers["frame_size"]} if numbers["frame_size"]["scaled"] else {}),
            "output_video": describe_output(self.config.output),
            "frames_in": self.plan.frames,
            "frames_out": self.plan.frames,
            "frames_encoded": frames_encoded,   # this run's; reused segments' frames are not
            "wall_s": round(elapsed, 4),
            "fps": round(frames_encoded / elapsed, 3) if elapsed > 0 else 0.0,  # this run's work
            "join_s": round(join_s, 4),
            "segments": {"total": len(segments), "reused": len(self.reused), "done": len(results),
                         "length_frames": self.plan.length_frames, "merged": self.plan.merged,
                         "list": segments},
            "notes": self.notes + self.after_notes,
            "environment": environment(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _items(stages: list[dict]) -> int:
    """Frames a segment's run decoded: what its first stage took (context included)."""
    return stages[0]["items"] if stages else 0


def _summed_stages(runs: list[list[dict]]) -> list[dict]:
    """Per-stage figures of several runs of one pipeline, added up (fps over their busy time
    is not a rate of the job: left out)."""
    summed = []
    for parts in zip(*runs):
        first = parts[0]
        total = {"name": first["name"], "kind": first["kind"], "workers": first["workers"]}
        for key in ("items", "busy_s", "blocked_s", "wait_in_s", "wait_out_s"):
            total[key] = round(sum(p[key] for p in parts), 4) if key != "items" else sum(p[key] for p in parts)
        counters: dict[str, float] = {}
        for p in parts:
            for name, n in p["counters"].items():
                counters[name] = counters.get(name, 0) + n
        total["counters"] = counters
        if "settings" in first:
            total["settings"] = first["settings"]
        summed.append(total)
    return summed


def _snapshot(progress: _Progress) -> RunSnapshot:
    """The whole run so far: the stages' figures add the finished segments' to the running
    one's (per-stage fps is items over the run's elapsed time)."""
    frames_before, stages_before, current = progress.view
    snap = current.snapshot() if current is not None else None
    done = frames_before + (current.frames_written if current is not None else 0)
    return RunSnapshot(elapsed_s=time.perf_counter() - progress.started, frames_done=done,
                       frames_total=progress.frames_total,
                       stages=added(stages_before, snap.stages if snap else []),
                       segments=SegmentCounts(progress.done, progress.reused, progress.pending,
                                              context_frames=stages_before[0].items - frames_before
                                              if stages_before else 0),
                       stopping=snap.stopping if snap else None)


def _take(work_dir: str) -> int:
    """Create the work directory if needed and lock it: two jobs in one directory would mix.
    A directory that holds other files but no manifest is not the engine's: the job deletes
    what it does not recognise there and the whole directory when done, so it is refused."""
    try:
        if os.path.isdir(work_dir) and not os.path.exists(os.path.join(work_dir, MANIFEST)):
            # a job killed while saving its first manifest leaves only the temporary one
            foreign = sorted(n for n in os.listdir(work_dir) if n != "lock" and not is_temporary(n))
            if foreign:
                raise UserError(f"work directory {work_dir} holds files that are not the engine's "
                                f"({foreign[0]}{', ...' if len(foreign) > 1 else ''}): name a new or empty "
                                f"directory for --work-dir")
        os.makedirs(work_dir, exist_ok=True)
        fd = os.open(os.path.join(work_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot use work directory {work_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"work directory {work_dir} is in use by another engine process") from None
    return fd


def remove_locked_work_dir(work_dir: str) -> None:
    """Remove a spent work directory while this process holds its lock: all but the lock file
    first, so a run of the same job started meanwhile is refused ("in use"), not handed the
    segments as they are deleted (it took the lock once it was released, reused them all and
    failed in its join). One started after the lock file went plans afresh."""
    try:
        entries = list(os.scandir(work_dir))
    except OSError:
        return
    # the manifest last: what a kill mid-way leaves is still the engine's own work directory
    # (segments with no manifest were refused as "files that are not the engine's")
    for entry in sorted(entries, key=lambda e: e.name == MANIFEST):
        if entry.name == "lock":
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(work_dir, "lock"))
    with contextlib.suppress(OSError):
        os.rmdir(work_dir)  # not empty: a run that started after the lock file went has its own


def discard_spent_work_dir(config: JobConfig, key: dict) -> bool:
    """Remove `config`'s work directory if it belongs to the job of `key` (compared fields),
    whose output a batch's record says is complete: a run killed between that record and the
    removal left it. Left alone when in use, another job's, or not the engine's."""
    work_dir = config.work_dir or default_work_dir(config.output)
    if not os.path.isfile(os.path.join(work_dir, MANIFEST)):
        return False
    try:
        fd = _take(work_dir)
    except UserError:
        return False
    try:
        try:
            manifest = load(work_dir)
        except UserError:
            return False
        if manifest is None or key_difference(manifest.key, key) is not None:
            return False
        remove_locked_work_dir(work_dir)
        return True
    finally:
        os.close(fd)


def _reuse(work_dir: str, manifest: Manifest, ext: str) -> set[int]:
    """Keep the recorded segments whose files still match; forget the rest; delete strays."""
    reused: set[int] = set()
    for index, rec in sorted(manifest.segments.items()):
        path = os.path.join(work_dir, rec.file)
        if (rec.file == segment_name(index, ext) and os.path.isfile(path)
                and os.path.getsize(path) == rec.size and file_digest(path)[1] == rec.sha256
                and _state_intact(work_dir, index, rec)):
            reused.add(index)
    manifest.segments = {i: r for i, r in manifest.segments.items() if i in reused}
    _remove_join_partial(manifest)
    keep = {"manifest.json", "lock", *(r.file for r in manifest.segments.values()),
            *(r.state_file for r in manifest.segments.values() if r.state_file)}
    for name in os.listdir(work_dir):
        if name not in keep:
            path = os.path.join(work_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    return reused


def _remove_join_partial(manifest: Manifest) -> None:
    """The output's hidden partial left by a join killed midway (it sits beside the output)."""
    if manifest.join_partial and os.path.lexists(manifest.join_partial):
        os.unlink(manifest.join_partial)
    manifest.join_partial = None


def _state_intact(work_dir: str, index: int, rec: SegmentRecord) -> bool:
    """A segment without carried state, or one whose state file still has its digest."""
    if not rec.state_file:
        return not rec.state_sha256
    path = os.path.join(work_dir, rec.state_file)
    return rec.state_file == state_name(index) and os.path.isfile(path) and file_digest(path)[1] == rec.state_sha256
