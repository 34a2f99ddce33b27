"""Stages by name, and the pipeline spec that names them.

A stage class registers itself with `@register_stage`; third-party packages add stages
through the ``engine.stages`` entry-point group, and local modules through the
``ENGINE_STAGE_MODULES`` environment variable (comma-separated module names). The engine itself never lists stages.

Pipeline spec (CLI): ``name[:key=value]...`` joined by commas, for example
``resize:width=1280:height=720,temporal-median:radius=1``. The keys ``workers`` and
``queue`` are the runner's (threads for the stage, depth of its input channel); every
other key goes to the stage's constructor, converted to the type it declares.

A preset is a name for a whole pipeline spec (``register_preset``); it expands where it
stands and takes no options of its own (write its stages out to change them).

Pipeline file (TOML)::

    [[stage]]
    name = "resize"
    width = 1280
    workers = 2
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.stage import Stage

_STAGES: dict[str, type[Stage]] = {}
_PRESETS: dict[str, str] = {}
_discovered = False
RUNNER_KEYS = ("workers", "queue")


def register_stage(name: str):
    """Class decorator: make a stage available under `name`."""

    def decorate(cls: type[Stage]) -> type[Stage]:
        if name in _STAGES and _STAGES[name] is not cls:
            raise ValueError(f"stage name '{name}' is already taken by {_STAGES[name].__qualname__}")
        cls.name = name
        _STAGES[name] = cls
        return cls

    return decorate


def register_preset(name: str, spec: str) -> None:
    """Make `name` stand for the pipeline `spec` (stage names and options, as on the CLI)."""
    if name in _PRESETS and _PRESETS[name] != spec:
        raise ValueError(f"preset name '{name}' is already taken")
    _PRESETS[name] = spec


def available_presets() -> dict[str, str]:
    _discover()
    return dict(sorted(_PRESETS.items()))


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("stages")  # the built-in stages register on import
    for ep in entry_points(group="engine.stages"):
        ep.load()
    # local stage modules without packaging, e.g. ENGINE_STAGE_MODULES=mystages,engine.testing
    for module in filter(None, os.environ.get("ENGINE_STAGE_MODULES", "").split(",")):
        try:
            importlib.import_module(module.strip())
        except ImportError as exc:
            raise UserError(f"cannot import stage module '{module}' from ENGINE_STAGE_MODULES: {exc}") from None


def available_stages() -> dict[str, type[Stage]]:
    _discover()
    return dict(sorted(_STAGES.items()))


def stage_class(name: str) -> type[Stage]:
    stages = available_stages()
    if name not in stages:
        names = sorted([*stages, *_PRESETS])
        raise UserError(f"unknown stage '{name}'; choose one of: {', '.join(names) or '(none)'}")
    return stages[name]


def check_stage_order(specs: list[StageSpec]) -> None:
    """Every stage's `requires` is made by a stage before it (see `Stage.requires`), and no
    stage between them changes the frame size: what stages hand on in `meta` (text boxes,
    masks) is in the pixels of the frames they saw."""
    made: dict[str, str] = {}   # key → the stage that made it
    stale: dict[str, tuple[str, str]] = {}  # key → (its maker, the stage whose resize made it stale)
    for spec in specs:
        stage = spec.build()
        missing = [key for key in stage.requires if key not in made]
        if missing and missing[0] in stale:
            maker, resizer = stale[missing[0]]
            raise UserError(f"stage '{spec.name}' works on the {missing[0]} that {maker} made before "
                            f"{resizer} changes the frame size: put {resizer} before {maker}, or after "
                            f"the stages that use it")
        if missing:
            makers = [n for n, cls in available_stages().items() if missing[0] in cls.provides]
            raise UserError(f"stage '{spec.name}' works on the {missing[0]} that "
                            f"{' or '.join(makers) or 'another stage'} makes: put "
                            f"{'it' if len(makers) < 2 else 'one'} before {spec.name}"
                            + _preset_hint(spec.name, [s.name for s in specs]))
        if _changes_size(stage):
            stale.update({key: (maker, spec.name) for key, maker in made.items()})
            made.clear()
        made.update(dict.fromkeys(stage.provides, spec.name))


def _changes_size(stage: Stage) -> bool:
    """True if the stage may hand on frames of another size than it takes (None: only its
    model knows, which counts as a change)."""
    try:
        return any(stage.output_size(w, h) != (w, h) for w, h in ((1920, 1080), (640, 360)))
    except UserError:  # a size it refuses at these probe sizes (the real check names the real one)
        return True


def _preset_hint(name: str, pipeline: list[str] = ()) -> str:
    """The preset that holds stage `name`; of several, the one holding most of the user's
    stages (`text-mask,text-detect,inpaint` is caption-remove written in the wrong order)."""
    presets = {p: {s.name for s in parse_pipeline(text)} for p, text in available_presets().items()}
    holding = [p for p, names in presets.items() if name in names]
    if not holding:
        return ""
    best = max(holding, key=lambda p: len(presets[p] & set(pipeline)))  # ties: the first by name
    return f" (the {best} preset is {available_presets()[best]})"


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline, validated: its class, constructor options and runner settings."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    queue: int = 8

    def build(self) -> Stage:
        cls = stage_class(self.name)
        try:
            return cls(**self.options)
        except (TypeError, ValueError) as exc:
            raise UserError(f"stage '{self.name}': {exc}") from exc


def _option_types(cls: type[Stage]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    return {n: hints.get(n, str) for n, p in params.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _type_name(target: Any) -> str:
    if typing.get_origin(target) is typing.Literal:
        return "|".join(map(str, typing.get_args(target)))
    kinds = [t for t in typing.get_args(target) if t is not type(None)] or [target]
    return " or ".join(getattr(t, "__name__", str(t)) for t in kinds)


def stage_options(name: str) -> dict[str, tuple[str, Any]]:
    """`engine stages NAME`: each option the stage takes, as (type, default)."""
    cls = stage_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {key: (_type_name(kind), params[key].default) for key, kind in _option_types(cls).items()}


def _coerce(stage: str, key: str, raw: Any, target: Any) -> Any:
    """Convert a CLI string (or a TOML value) to the type the stage's constructor declares."""
    candidates = [t for t in typing.get_args(target) if t is not type(None)] or [target]
    if typing.get_origin(target) is typing.Literal:
        if raw not in candidates:
            raise UserError(f"stage '{stage}': invalid {key}={raw!r}; choose one of: "
                            f"{', '.join(map(str, candidates))}")
        return raw
    for t in candidates:
        try:
            if t is bool:
                if isinstance(raw, bool):
                    return raw
                low = str(raw).lower() if isinstance(raw, (str, int)) else None
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                continue
            if t in (int, float) and isinstance(raw, bool):
                continue  # TOML `width = true` is a mistake, not 1
            if t is int and isinstance(raw, float) and not raw.is_integer():
                continue
            if t is float:
                value = float(raw)
                if not math.isfinite(value):  # nan would compare false everywhere, inf overflow
                    continue
                return value
            if t in (int, str):
                return t(raw)
            return raw
        except (TypeError, ValueError, OverflowError):
            continue
    names = "/".join(getattr(t, "__name__", str(t)) for t in candidates)
    raise UserError(f"stage '{stage}': option {key}={raw!r} is not a valid {names}")


def _expand(name: str, raw_options: dict[str, Any]) -> list[StageSpec]:
    """One pipeline entry: a stage, or a preset's stages."""
    _discover()
    if name in _PRESETS and name not in _STAGES:
        if raw_options:
            raise UserError(f"preset '{name}' takes no options; write its stages out instead: "
                            f"{_PRESETS[name]}")
        return parse_pipeline(_PRESETS[name])
    return [make_spec(name, raw_options)]


def make_spec(name: str, raw_options: dict[str, Any]) -> StageSpec:
    cls = stage_class(name)
    types = _option_types(cls)
    options: dict[str, Any] = {}
    runner: dict[str, int] = {}
    given: set[str] = set()
    for key, raw in raw_options.items():
        key = key.replace("-", "_")
        if key in given:  # `tile-overlap=8:tile_overlap=16`: which one was meant?
            raise UserError(f"stage '{name}': option '{key}' given twice")
        given.add(key)
        if key in RUNNER_KEYS:
            value = _coerce(name, key, raw, int)
            if value < 1:
                raise UserError(f"stage '{name}': {key} must be >= 1, got {value}")
            runner[key] = value
        elif key in types:
            options[key] = _coerce(name, key, raw, types[key])
        else:
            valid = ", ".join(list(types) + list(RUNNER_KEYS))
            raise UserError(f"stage '{name}' has no option '{key}'; valid options: {valid}")
    spec = StageSpec(name=name, options=options, **runner)
    if cls.kind == "window" and spec.workers != 1:
        raise UserError(f"stage '{name}' is temporal (window) and must run with workers=1")
    if cls.needs_order and spec.workers != 1:
        raise UserError(f"stage '{name}' sees frames in order (each against the one before) and must run "
                        f"with workers=1")
    if cls.carries_state and spec.workers != 1:
        raise UserError(f"stage '{name}' carries state from frame to frame and must run with workers=1")
    spec.build()  # constructor-level checks now, before any thread starts
    return spec


def parse_pipeline(text: str) -> list[StageSpec]:
    """Parse a CLI pipeline spec, a TOML file path, or 'none'."""
    text = text.strip()
    if text.endswith(".toml"):
        return load_pipeline_file(Path(text))
    if text in ("", "none"):
        return []
    specs = []
    for part in text.split(","):
        name, *pairs = part.strip().split(":")
        if not name:
            raise UserError(f"empty stage name in pipeline '{text}'")
        raw: dict[str, str] = {}
        key = None
        for pair in pairs:
            if "=" not in pair and key is not None:  # a value with ':' in it: device=cuda:1, a path
                raw[key] += ":" + pair
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UserError(f"stage '{name}': expected key=value, got '{pair}'")
            if key in raw:
                raise UserError(f"stage '{name}': option '{key}' given twice")
            raw[key] = value
        specs.extend(_expand(name, raw))
    return specs


def load_pipeline_file(path: Path) -> list[StageSpec]:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"pipeline file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read pipeline file {path}: {exc}") from None
    unknown = [k for k in doc if k != "stage"]
    if unknown:  # `[[stages]]`: a typo that used to run as a plain transcode, exit 0
        raise UserError(f"pipeline file {path}: unknown key '{unknown[0]}'; a pipeline file holds "
                        f"[[stage]] tables only")
    entries = doc.get("stage", [])
    if not isinstance(entries, list):
        raise UserError(f"pipeline file {path}: expected [[stage]] tables")
    if not entries:
        raise UserError(f"pipeline file {path} has no [[stage]] table (--pipeline none runs no stage)")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise UserError(f"pipeline file {path}: [[stage]] number {i + 1} has no name")
        options = {k: v for k, v in entry.items() if k != "name"}
        specs.extend(_expand(str(entry["name"]), options))
    return specs
