"""Streaming, multi-threaded engine for machine-learning video processing.

The public surface only re-exports; the work happens in the modules named here.
"""

__version__ = "0.1.0"

from engine.errors import EngineError, StageError, UserError, ValidationError
from engine.frame import Frame
from engine.registry import StageSpec, available_stages, parse_pipeline, register_stage
from engine.runner import Pipeline, RunnerOptions, RunResult
from engine.stage import BatchStage, MapStage, Stage, StageContext, WindowStage

__all__ = [
    "__version__", "BatchStage", "EngineError", "Frame", "MapStage", "Pipeline", "RunResult",
    "RunnerOptions", "Stage", "StageContext", "StageError", "StageSpec", "UserError",
    "ValidationError", "WindowStage", "available_stages", "parse_pipeline", "register_stage",
]
