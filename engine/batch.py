"""Many inputs in one command: `engine stream DIR OUT_DIR` or `engine stream LIST.txt OUT_DIR`.

IN is a directory (its video files, sorted by name; not recursive) or a list file (`.txt`,
one path per line, relative to the list's own directory; blank lines and `#` comments
skipped). Each input gets its own output `OUT_DIR/<input's file name>` (an input whose
container the engine does not write, `.ts`, `.webm`, `.avi`, ..., goes to `<name>.mkv`:
Matroska holds every stream the others can) and, under
`--resume`/`--ray`, its own work directory (beside its output, or `--work-dir DIR/<name>`).
Every input is checked before any is started; with `--ray` all of their segments share the
cluster (engine/ray_job.py), else the inputs run one after another on this machine.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

from engine import interrupts
from engine.encoders import CONTAINERS
from engine.errors import UserError
from engine.job import JobConfig, check_report_path, check_writable_directory, write_report
from engine.sink import is_image_pattern, remove_stale_partials

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".m4v", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mxf")
LIST_EXTENSIONS = (".txt", ".list")


def is_batch(input_path: str) -> bool:
    return os.path.isdir(input_path) or input_path.lower().endswith(LIST_EXTENSIONS)


def batch_inputs(input_path: str) -> list[str]:
    if os.path.isdir(input_path):
        names = sorted(n for n in os.listdir(input_path) if n.lower().endswith(VIDEO_EXTENSIONS)
                       and os.path.isfile(os.path.join(input_path, n)))
        paths = [os.path.join(input_path, n) for n in names]
    else:
        try:
            with open(input_path) as fh:
                lines = [line.strip() for line in fh]
        except OSError as exc:
            raise UserError(f"cannot read input list {input_path}: {exc.strerror}") from None
        base = os.path.dirname(os.path.abspath(input_path))
        paths = [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"input list {input_path} names a file that does not exist: {missing[0]}")
    if not paths:
        if not os.path.isdir(input_path):
            raise UserError(f"input list {input_path} names no file (one path per line; # starts a comment)")
        raise UserError(f"no video files in {input_path} (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return paths


def batch_configs(config: JobConfig) -> list[JobConfig]:
    """One config per input: its own output and work directory; the rest as given. Changes
    nothing on disk: OUT_DIR is created by run_batch, once everything has been checked."""
    out_dir = config.output
    if is_image_pattern(out_dir):
        raise UserError(f"with many inputs OUT must be a directory, not an image pattern: {out_dir}")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise UserError(f"with many inputs OUT must be a directory: {out_dir} is a file")
    else:
        if out_dir.lower().endswith(VIDEO_EXTENSIONS):  # a typo'd command, not a directory name
            raise UserError(f"with many inputs OUT must be a directory: {out_dir} names a video file")
        check_writable_directory(os.path.dirname(os.path.abspath(out_dir)))
    inputs = batch_inputs(config.input)
    configs, seen = [], {}
    for path in inputs:
        name = output_name(path)
        if name in seen:
            raise UserError(f"two inputs would write {os.path.join(out_dir, name)}: {seen[name]} and {path}")
        seen[name] = path
        configs.append(dataclasses.replace(
            config, input=path, output=os.path.join(out_dir, name), report=None,
            work_dir=os.path.join(config.work_dir, name) if config.work_dir else None))
    if config.report:  # the batch's one report: checked now, written after every input
        check_report_path(config.report, [config.input, *inputs], [c.output for c in configs],
                          created=(out_dir,))
    return configs


def output_name(path: str) -> str:
    """An input's output file name in OUT_DIR: its own, in Matroska where its container is
    not one the engine writes."""
    name = os.path.basename(path)
    stem, ext = os.path.splitext(name)
    return name if ext.lower() in CONTAINERS else f"{stem}.mkv"


def run_batch(config: JobConfig, ray_options=None) -> list[dict]:
    """Every input of a batch; `--report FILE` gets one JSON with a report per input."""
    configs = batch_configs(config)
    renamed = [c for c in configs if os.path.basename(c.input) != os.path.basename(c.output)]
    if renamed and not config.quiet:
        print(f"[engine] note: {len(renamed)} input(s) in containers the engine does not write go to .mkv: "
              + ", ".join(f"{os.path.basename(c.input)} → {os.path.basename(c.output)}" for c in renamed[:3])
              + (", ..." if len(renamed) > 3 else ""), file=sys.stderr)
    if config.report:
        for name in remove_stale_partials(config.report):
            if not config.quiet:
                print(f"[engine] note: removed {name}, left by a run of this job that was killed", file=sys.stderr)
    created = not os.path.exists(config.output)
    try:
        os.makedirs(config.output, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {config.output}: {exc.strerror}") from None
    reports: list[dict] = []
    try:
        _run(configs, ray_options, reports)
    except BaseException as exc:
        if reports:  # say what is finished before main() says why it stopped
            from engine.runner import Interrupted

            # Ctrl-C, SIGTERM, SIGHUP: KeyboardInterrupt between jobs, the runner's Interrupted in one
            why = "stop" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "failure"
            done = ", ".join(r["output"] for r in reports)
            print(f"engine: {len(reports)} of {len(configs)} inputs were finished before the {why}: {done}; "
                  f"the others have no output yet", file=sys.stderr, flush=True)
        if created:
            try:
                os.rmdir(config.output)  # only when empty: a failed batch leaves no bare directory
            except OSError:
                pass
        if config.report and reports:  # the finished inputs' outputs are complete: say so
            write_report(config.report, {"inputs": reports, "stopped": {
                "finished": len(reports), "of": len(configs),
                "reason": interrupts.STOP_SIGNALS[getattr(exc, "signum", signal.SIGINT)]
                if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__}})
        raise
    if config.report:
        write_report(config.report, {"inputs": reports}, f"{config.output}{os.sep}")
    return reports


def _run(configs: list[JobConfig], ray_options, reports: list[dict]) -> None:
    """Runs the inputs, appending each finished one's report to `reports`."""
    from engine.job import Job, check_config, check_input
    from engine.resume import SegmentedJob
    from engine.source import open_input, read_info

    # options, outputs, each input's header and ending, before hours go into the first (and,
    # with --ray, before Ray starts and any input's work directory is taken)
    for c in configs:
        check_config(c)
        container = open_input(c.input)
        try:
            info = read_info(container)
        finally:
            container.close()
        check_input(c, info)  # a truncated input (or broken timestamps under refuse) fails now
    if ray_options is not None:
        from engine.ray_job import run_on_ray

        in_order = run_on_ray(configs, ray_options, finished=reports)  # filled as inputs finish
        reports[:] = in_order
        return
    for number, c in enumerate(configs, 1):
        interrupts.raise_pending()  # a stop signal while the input before finished: stop here
        if number == len(configs):  # the last: once its output is in place, nothing is left to stop
            interrupts.one_job()
        if not c.quiet:  # which input the lines below are about, in a log of hundreds
            print(f"[engine] input {number} of {len(configs)}: {c.input} → {c.output}", file=sys.stderr, flush=True)
        reports.append(SegmentedJob.prepare(c).run() if c.resume else Job.prepare(c).run())
