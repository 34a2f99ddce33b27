"""Shared fixtures: synthetic clips (made once per session), the CLI, the real sample clips."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parent.parent
MEDIA = Path(__file__).resolve().parent / "media"
sys.path.insert(0, str(ROOT / "tools"))

from make_clip import make_clip  # noqa: E402

from engine.testing import frame_index  # noqa: E402


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def clip(clip_dir):
    """clip(frames=48, width=64, height=48, ext='.mp4', **kw) -> Path, cached per session."""
    made: dict[tuple, Path] = {}

    def make(frames: int = 48, width: int = 64, height: int = 48, ext: str = ".mp4", **kw) -> Path:
        key = (frames, width, height, ext, tuple(sorted(kw.items())))
        if key not in made:
            path = clip_dir / f"clip-{len(made)}{ext}"
            made[key] = make_clip(path, frames, width, height, **kw)
        return made[key]

    return make


def run_engine(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would.

    `stream` without `--pipeline` gets `--pipeline none` here: most tests are about
    transcoding, and the default pipeline (a model on the CPU) has tests of its own.
    """
    args = tuple(map(str, args))
    if args and args[0] == "stream" and "--pipeline" not in args:
        args += ("--pipeline", "none")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT)


def decoded_indices(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [frame_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def decoded_pts(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.pts * f.time_base) for f in container.decode(video=0)]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
