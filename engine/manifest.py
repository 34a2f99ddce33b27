"""The resume manifest: which job a work directory belongs to, and which segments are done.

One JSON file, `manifest.json`, in the work directory:

- `key`: what the output depends on: the input's identity (absolute path, size, mtime), the
  pipeline (stages and options) with a hash of every model weight file the stages name, the
  encoder and its options, the output container, the segment plan, and the engine and FFmpeg
  versions. A work directory whose key differs from the job's is refused, field named: a
  changed input or option never mixes with old segments.
  It also keeps `encoder_threads`, the thread options fixed when the job was first
  planned (engine/encoders.py `fixed_threads`); not compared, adopted by every later run.
- `segments`: per finished segment, its frame range, frame count, file name, size and
  sha256 (and what it hands to the next segment: dedup's context, or the carried state file
  of a stage that carries state, with its sha256).
- `join_partial`: the temporary output of a join in progress, so that a join killed midway
  leaves nothing behind once the job resumes.

Writes are atomic: temporary file, fsync, rename over the old one, fsync of the directory.
A crash at any point leaves either the old manifest or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import av

from engine import __version__
from engine.crashpoints import crash_point
from engine.durable import fsync_dir
from engine.errors import UserError
from engine.image_input import find, frame_file, is_image_pattern
from engine.registry import StageSpec

MANIFEST = "manifest.json"
VERSION = 1


def input_identity(path: str) -> dict[str, Any]:
    if is_image_pattern(path):  # every frame's size and mtime: a frame added, removed or rewritten changes it
        sequence = find(path)
        directory = os.path.dirname(os.path.abspath(path))
        stats = [os.stat(os.path.join(directory, frame_file(path, n)))
                 for n in range(sequence.first, sequence.first + sequence.count)]
        listing = hashlib.sha256("".join(f"{n} {st.st_size} {st.st_mtime_ns}\n" for n, st in
                                         enumerate(stats, sequence.first)).encode()).hexdigest()
        return {"path": os.path.abspath(path), "first": sequence.first, "frames": sequence.count,
                "size": sum(st.st_size for st in stats), "files": listing}
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pipeline_identity(specs: list[StageSpec]) -> list[dict[str, Any]]:
    """Each stage's name and options, and the sha256 of every weight file it reads."""
    out = []
    for spec in specs:
        stage = spec.build()
        weights = {os.path.abspath(p): _sha256_file(p) for p in stage.weight_files()}
        out.append({"name": spec.name, "options": {k: _plain(v) for k, v in sorted(spec.options.items())},
                    "weights": weights})
    return out


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def job_key(*, input_path: str, specs: list[StageSpec], encoder: dict[str, Any], container: str,
            plan: dict[str, Any], decoding: dict[str, Any] | None = None) -> dict[str, Any]:
    """`decoding`: what changes the decoded pictures (--deinterlace), only when set, so the
    manifests of jobs without it keep their key."""
    return {"input": input_identity(input_path), "pipeline": pipeline_identity(specs),
            "encoder": encoder, "container": container, "plan": plan, "versions": versions(),
            **({"decoding": decoding} if decoding else {})}


#: Raised whenever a segment's bytes change for the same input, options and versions (a
#: fix in what a segment decodes or encodes): segments an older build recorded must not be
#: joined with new ones. 2: the picture-format handoff in segments, sizes held at the source.
#: 3: recurrent window stages (basicvsrpp) cut where a single pass's windows fall.
SEGMENT_REVISION = "3"


def versions() -> dict[str, str]:
    """What decides the bytes besides the options: the engine's, PyAV's and FFmpeg's versions,
    and the segments' revision."""
    ffmpeg = av.ffmpeg_version_info
    return {"engine": __version__, "segments": SEGMENT_REVISION, "av": av.__version__,
            "ffmpeg": ".".join(map(str, ffmpeg)) if isinstance(ffmpeg, tuple) else str(ffmpeg)}


def key_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """None if equal; else the first field that differs, as a phrase for the user."""
    for name, label in (("input", "the input file changed"),
                        ("pipeline", "the pipeline or its weights changed"),
                        ("encoder", "the encoder options changed"),
                        ("container", "the output container changed"),
                        ("plan", "the segment plan changed (--segment or --frames)"),
                        ("decoding", "the decoding options changed (--deinterlace, --fps)"),
                        ("versions", "the engine or FFmpeg version changed")):
        if old.get(name) != new.get(name):
            if name == "input":
                fields = [k for k in new[name] if old.get(name, {}).get(k) != new[name][k]]
                label += f" ({', '.join(fields)})"
            return label
    return None


@dataclass
class SegmentRecord:
    start: int
    end: int
    frames: int
    file: str            # name inside the work directory
    size: int
    sha256: str
    tail_unique: list[int] = field(default_factory=list)
    state_file: str = ""   # the carried state it ended with (stateful pipelines), and its digest
    state_sha256: str = ""
    notes: list[str] = field(default_factory=list)   # what its run said (SegmentResult.notes)
    source: dict = field(default_factory=dict)       # what its source did, in numbers
    stages: list = field(default_factory=list)       # its run's figures (SegmentResult.stages, ...)
    encoder: dict = field(default_factory=dict)
    dedup: dict = field(default_factory=dict)
    tail_index: int = 0  # unique frames (whole video) before tail_unique[0]: a recurrent stage's windows


@dataclass
class Manifest:
    key: dict[str, Any]
    segments: dict[int, SegmentRecord] = field(default_factory=dict)
    join_partial: str | None = None  # the join's temporary output, recorded before it is created

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "key": self.key, "join_partial": self.join_partial,
                           "segments": {str(i): vars(r) for i, r in sorted(self.segments.items())}},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"manifest version {data.get('version')}, expected {VERSION}")
        return cls(data["key"], {int(i): SegmentRecord(**r) for i, r in data["segments"].items()},
                   data.get("join_partial"))


def load(work_dir: str) -> Manifest | None:
    """The work directory's manifest, None if it has none; UserError if it cannot be read."""
    path = os.path.join(work_dir, MANIFEST)
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:  # written atomically: only a hand edit gets here
        raise UserError(f"work directory {work_dir} has an unreadable manifest ({exc}); "
                        f"delete the directory to start afresh") from None


def is_temporary(name: str) -> bool:
    """A temporary manifest `save` left when the process was killed before its rename."""
    head, sep, pid = name.partition(".tmp-")
    return head == MANIFEST and bool(sep) and pid.isdigit()


def save(work_dir: str, manifest: Manifest) -> None:
    """Atomic rewrite: temp file, fsync, rename, fsync of the directory."""
    path = os.path.join(work_dir, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    data = manifest.to_json().encode()
    with open(tmp, "wb") as fh:
        half = len(data) // 2
        fh.write(data[:half])
        crash_point("manifest-write")  # half the temp file written
        fh.write(data[half:])
        fh.flush()
        os.fsync(fh.fileno())
    crash_point("manifest-rename")     # temp complete, old manifest still in place
    os.replace(tmp, path)
    fsync_dir(work_dir)
