"""Many inputs in one command: `engine stream DIR OUT_DIR` or `engine stream LIST.txt OUT_DIR`.

IN is a directory (its video files, sorted by name; not recursive) or a list file (`.txt`,
one path per line, relative to the list's own directory; blank lines and `#` comments
skipped). Each input gets its own output `OUT_DIR/<input's file name>` (an input whose
container the engine does not write, `.ts`, `.webm`, `.avi`, ..., goes to `<name>.mkv`:
Matroska holds every stream the others can) and, under
`--resume`/`--ray`, its own work directory (beside its output, or `--work-dir DIR/<name>`).
Every input is checked before any is started; with `--ray` all of their segments share the
cluster (engine/ray_job.py), else the inputs run one after another on this machine.

Under `--resume`/`--ray` a batch keeps a journal of the inputs whose outputs are complete
(`DoneJournal`), so a batch that was killed and is run again skips them; it is removed when
the whole batch has finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys

from engine import interrupts
from engine.crashpoints import crash_point
from engine.durable import fsync_dir
from engine.encoders import CONTAINERS
from engine.errors import UserError
from engine.job import JobConfig, check_report_path, check_writable_directory, write_report
from engine.sink import PartialLock, fit_name, is_image_pattern, name_max, partial_path, remove_stale_partials

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


class DoneJournal:
    """The inputs of a `--resume`/`--ray` batch whose outputs are complete, so that a run of
    the same batch after a kill skips them: a hidden JSON file beside the batch's work
    directories (in `--work-dir DIR`, else beside OUT_DIR: nothing but outputs is left inside
    it), named after OUT_DIR and a hash of IN and OUT_DIR's real paths. Per output name: the
    job key `--resume` gives its work directory (input identity, every option that changes
    the output, the versions), the output file as committed (size, mtime_ns, inode) and its
    report. An input is kept only when both still match; the file is removed once the whole
    batch has finished, so a rerun of a finished batch does everything again, as a rerun of
    a finished `--resume` job does. Written like the manifest: temporary file, fsync, rename,
    fsync of the directory."""

    def __init__(self, config: JobConfig):
        out_dir = os.path.abspath(config.output)
        where = os.path.abspath(config.work_dir) if config.work_dir else os.path.dirname(out_dir)
        digest = hashlib.sha1(f"{os.path.realpath(config.input)}\0{os.path.realpath(out_dir)}".encode()
                              ).hexdigest()[:8]
        tail = f".engine-batch-{digest}.json"
        self.directory = where
        self.path = os.path.join(where, f".{fit_name(os.path.basename(out_dir), name_max(where) - 40)}{tail}")
        self.entries: dict[str, dict] = {}
        self.notes: list[str] = []

    def check(self) -> None:
        """Before the first input: the place is writable, a killed write's partial is gone,
        the earlier run's record read."""
        if not os.path.isdir(self.directory):  # --work-dir DIR, made with the first work directory
            parent = os.path.dirname(self.directory)
            while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
                parent = os.path.dirname(parent)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot keep the batch's record of finished inputs in {self.directory}: "
                                f"{parent} is not writable")
            return
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise UserError(f"cannot keep the batch's record of finished inputs in {self.directory}: "
                            f"not writable (--work-dir DIR puts it in DIR)")
        for name in remove_stale_partials(self.path):
            self.notes.append(f"note: removed {name}, left by a run of this batch that was killed")
        try:
            with open(self.path) as fh:
                data = json.load(fh)
            entries = data["outputs"]
            if data.get("version") != 1 or not isinstance(entries, dict):
                raise ValueError(data.get("version"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):  # written atomically: only a hand edit gets here
            self.notes.append(f"note: {self.path} cannot be read: every input is done again")
            return
        self.entries = entries

    def kept(self, config: JobConfig) -> tuple[dict | None, str | None]:
        """(the earlier run's report, marked kept) when `config`'s output is the one that run
        committed and the job is the same; else (None, why it is done again, if it was recorded)."""
        from engine.manifest import key_difference
        from engine.resume import discard_spent_work_dir, job_key_of

        entry = self.entries.get(os.path.basename(config.output))
        if not isinstance(entry, dict) or not {"key", "output", "report"} <= entry.keys():
            return None, None
        if _output_state(config.output) != entry["output"]:
            return None, "its output was replaced, changed or removed since"
        # its output is the one that job committed: a work directory left by a kill between the
        # record and the removal is spent, whatever this run's options
        discard_spent_work_dir(config, entry["key"])
        key = json.loads(json.dumps(job_key_of(config)))
        if key != entry["key"]:
            return None, key_difference(entry["key"], key) or "the job key changed"
        return {**entry["report"], "input": config.input, "output": config.output, "kept": True}, None

    def record(self, job, report: dict) -> None:
        """`job`'s output is in place: from now on a rerun keeps it (called before its work
        directory is removed)."""
        self.entries[os.path.basename(job.config.output)] = {
            "key": json.loads(json.dumps(job.key)), "output": _output_state(job.config.output),
            "report": json.loads(json.dumps(report, default=str))}
        self._save()

    def _save(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        data = json.dumps({"version": 1, "outputs": self.entries}, indent=1, sort_keys=True).encode()
        tmp = partial_path(self.path)
        lock = PartialLock(tmp)  # held while written: a killed run's is known by its free lock
        try:
            with open(tmp, "wb") as fh:
                fh.write(data[: len(data) // 2])
                crash_point("batch-record-write")  # half the temporary file written
                fh.write(data[len(data) // 2:])
                fh.flush()
                os.fsync(fh.fileno())
            crash_point("batch-record-rename")     # complete, the old record still in place
            os.replace(tmp, self.path)
            fsync_dir(self.directory)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise UserError(f"cannot write the batch's record of finished inputs {self.path}: "
                                f"{exc.strerror or exc} (the output {_last(self.entries)} is complete)") from None
            raise
        finally:
            lock.release()

    def remove(self) -> None:
        """The whole batch has finished: nothing is left to keep."""
        crash_point("batch-record-removal")
        try:
            os.unlink(self.path)
            fsync_dir(self.directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"[engine] note: cannot remove {self.path}: {exc.strerror}", file=sys.stderr)


def _output_state(path: str) -> dict | None:
    """An output file as committed: what a replacement, a change or a removal changes."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _last(entries: dict) -> str:
    return next(reversed(entries), "?")


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
    # --resume/--ray: which inputs an earlier, killed run of this batch finished
    journal = DoneJournal(config) if config.resume or ray_options is not None else None
    try:
        _run(configs, ray_options, reports, journal)
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
    if journal is not None:
        journal.remove()
    return reports


def _run(configs: list[JobConfig], ray_options, reports: list[dict], journal: DoneJournal | None = None) -> None:
    """Runs the inputs, appending each finished (or kept) one's report to `reports`."""
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
    quiet = configs[0].quiet
    if journal is not None:
        journal.check()
        if not quiet:
            for note in journal.notes:
                print(f"[engine] {note}", file=sys.stderr)

    def kept(c: JobConfig, label: str) -> dict | None:
        report, redone = journal.kept(c) if journal is not None else (None, None)
        if not quiet and report is not None:
            print(f"[engine] {label}kept from an earlier run: {c.input} → {c.output}", file=sys.stderr, flush=True)
        elif not quiet and redone:
            print(f"[engine] note: {c.output} is done again: {redone}", file=sys.stderr, flush=True)
        return report

    if ray_options is not None:
        from engine.ray_job import run_on_ray

        done = {i: r for i, c in enumerate(configs) if (r := kept(c, "")) is not None}
        reports.extend(done.values())  # counted among the finished if the rest fails
        rest = [c for i, c in enumerate(configs) if i not in done]
        ran = iter(run_on_ray(rest, ray_options, finished=reports,  # filled as inputs finish
                              committed=journal.record) if rest else [])
        reports[:] = [done[i] if i in done else next(ran) for i in range(len(configs))]
        return
    for number, c in enumerate(configs, 1):
        interrupts.raise_pending()  # a stop signal while the input before finished: stop here
        if number == len(configs):  # the last: once its output is in place, nothing is left to stop
            interrupts.one_job()
        if (report := kept(c, f"input {number} of {len(configs)}: ")) is not None:
            reports.append(report)
            continue
        if not c.quiet:  # which input the lines below are about, in a log of hundreds
            print(f"[engine] input {number} of {len(configs)}: {c.input} → {c.output}", file=sys.stderr, flush=True)
        if c.resume:
            job = SegmentedJob.prepare(c)
            job.committed = journal.record if journal is not None else None
            reports.append(job.run())
        else:
            reports.append(Job.prepare(c).run())
