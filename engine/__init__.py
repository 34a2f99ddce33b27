"""Streaming, multi-threaded engine for machine-learning video processing.

The public surface only re-exports; the work happens in the modules named here. The names
load on first use (PEP 562), so `engine` on the command line starts without OpenCV, NumPy
or PyAV and a Ctrl-C while they load is the CLI's clean "interrupted", not a traceback.
"""

from __future__ import annotations

import importlib
import os

# torch's CPU threads (OpenMP) spin between parallel regions by default: beside the engine's
# own decode, encode and stage threads, on a box other jobs share, that spinning took 6-35 %
# of a CPU job's time (the main job on 2 shared cores: 0.65x the CPU time, identical output).
# Set before torch loads (the engine's modules load it lazily); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "EngineError": "engine.errors", "StageError": "engine.errors", "UserError": "engine.errors",
    "ValidationError": "engine.errors",
    "Frame": "engine.frame",
    "StageSpec": "engine.registry", "available_stages": "engine.registry",
    "parse_pipeline": "engine.registry", "register_stage": "engine.registry",
    "Pipeline": "engine.runner", "RunnerOptions": "engine.runner", "RunResult": "engine.runner",
    "BatchStage": "engine.stage", "MapStage": "engine.stage", "Stage": "engine.stage",
    "StageContext": "engine.stage", "WindowStage": "engine.stage",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
