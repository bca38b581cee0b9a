"""Recipes: YAML files naming an ordered list of stages, each a step with its parameters.

    stages:
      - name: trained
        step: train
        params: {model: mlp}
      - name: pruned
        step: prune               # its input: the model of the stage before (trained)
        params: {method: gradual, sparsity: 0.92}
      - name: compared
        step: compare
        inputs: [trained, pruned] # compare takes several models
      - name: exported
        step: export
        input: trained            # a named earlier stage instead of the one before

A stage's model is its own run's (train, prune, quantize, distill; a search's champion) or, for
the steps that only measure (evaluate, benchmark, compare, export), the model it was given.
Everything is checked — YAML, step names, parameter names and types, inputs — before any run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shrinkflow.config import ShrinkflowError, parse_bool, read_yaml
from shrinkflow.techniques import TECHNIQUES

__all__ = [
    "RECIPES_DIR", "Recipe", "Stage", "code_version", "known_steps", "load_recipe", "makes_model", "parse_overrides"
]  # fmt: skip

RECIPES_DIR = Path(__file__).resolve().parent
_ROOT = RECIPES_DIR.parent
PLACEHOLDER_RUN = "0" * 32  # stands in for an input's run id while a recipe is checked


def known_steps() -> tuple[str, ...]:
    """Every step a recipe may name: each registered technique has a step of its name."""
    return ("train", "evaluate", *TECHNIQUES, "benchmark", "compare", "export", "search")


def makes_model(step: str) -> bool:
    """Whether ``step`` logs a model of its own (else it measures the model it was given)."""
    return step in ("train", "search") or step in TECHNIQUES


def step_module(step: str):
    import importlib

    return importlib.import_module("search.main" if step == "search" else f"steps.{step}")


@dataclass(frozen=True)
class Stage:
    name: str
    step: str
    params: dict[str, Any]
    inputs: tuple[str, ...]  # names of earlier stages whose models this stage takes

    def config(self, run_ids: list[str]):
        """The step's config with this stage's parameters and its inputs' run ids."""
        values = dict(self.params)
        if self.step == "compare":
            values["run_ids"] = ",".join(run_ids)
        elif run_ids:
            values["run_id"] = run_ids[0]
        return step_module(self.step).main.config(**values)


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[Stage, ...]


def load_recipe(spec: str, overrides: str = "") -> Recipe:
    """The recipe at path ``spec``, or the shipped one of that name (``pipelines/<name>.yaml``),
    with ``overrides`` (``stage.param=value,...``) applied; checked whole."""
    path = Path(spec) if spec.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{spec}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise ShrinkflowError(f"recipe {spec!r} not found (looked for {path}): give a .yaml path or one of {shipped}")
    try:
        document = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ShrinkflowError(f"recipe {path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("stages"), list) or not document["stages"]:
        raise ShrinkflowError(f"recipe {path}: needs a non-empty list 'stages'")
    stages = [_stage(entry, i, path) for i, entry in enumerate(document["stages"])]
    stages = _overridden(stages, parse_overrides(overrides), path)
    stages = _wired(stages, path)
    recipe = Recipe(path.stem, tuple(stages))
    for stage in recipe.stages:
        _check(stage, path)
    return recipe


def _stage(entry: Any, index: int, path: Path) -> dict:
    if not isinstance(entry, dict):
        raise ShrinkflowError(f"recipe {path}: stage {index + 1} must be a mapping with name, step and params")
    name = entry.get("name", f"stage{index + 1}")
    unknown = sorted(set(entry) - {"name", "step", "params", "input", "inputs"})
    if unknown:
        raise ShrinkflowError(f"recipe {path}: stage {name!r}: unknown key(s) {unknown}: use name, step, params, input")
    if entry.get("step") not in known_steps():
        raise ShrinkflowError(
            f"recipe {path}: stage {name!r}: unknown step {entry.get('step')!r}: choose {', '.join(known_steps())}"
        )
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise ShrinkflowError(f"recipe {path}: stage {name!r}: params must be a mapping, got {params!r}")
    inputs = entry.get("inputs", entry.get("input"))
    inputs = [inputs] if isinstance(inputs, str) else inputs
    return {"name": str(name), "step": entry["step"], "params": dict(params), "inputs": inputs}


def parse_overrides(text: str) -> dict[tuple[str, str], Any]:
    """``stage.param=value,...`` → {(stage, param): value}; values read as YAML (4 → int)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        stage, dot, param = key.partition(".")
        if not sep or not dot or not stage or not param:
            raise ShrinkflowError(f"override {item!r} must look like stage.param=value")
        try:
            overrides[(stage.strip(), param.strip())] = read_yaml(value)
        except yaml.YAMLError as exc:
            raise ShrinkflowError(
                f"override {item!r}: the value is not valid YAML: {str(exc).splitlines()[0]}"
            ) from None
    return overrides


def _overridden(stages: list[dict], overrides: dict, path: Path) -> list[dict]:
    names = [s["name"] for s in stages]
    for (stage, param), value in overrides.items():
        if stage not in names:
            raise ShrinkflowError(f"override {stage}.{param}: recipe {path.stem} has no stage {stage!r}: {names}")
        stages[names.index(stage)]["params"][param] = value
    return stages


def _wired(stages: list[dict], path: Path) -> list[Stage]:
    """Each stage's inputs: named earlier stages, or by default the latest earlier model."""
    wired, seen, latest = [], [], None
    for stage in stages:
        name, inputs = stage["name"], stage["inputs"]
        if name in seen:
            raise ShrinkflowError(f"recipe {path}: two stages are named {name!r}")
        if inputs is None:
            explicit = "run_id" in stage["params"] or "run_ids" in stage["params"]
            inputs = [] if stage["step"] == "train" or latest is None or explicit else [latest]
        for source in inputs:
            if source not in seen:
                later = source in [s["name"] for s in stages]
                why = "a later stage" if later else "no stage"
                raise ShrinkflowError(f"recipe {path}: stage {name!r}: input {source!r} names {why}: inputs: {seen}")
        if stage["step"] not in ("train", "search", "compare") and not inputs and "run_id" not in stage["params"]:
            raise ShrinkflowError(
                f"recipe {path}: stage {name!r} ({stage['step']}) has no input model: put a stage that makes one "
                "before it, or give run_id"
            )
        wired.append(Stage(name, stage["step"], stage["params"], tuple(inputs)))
        seen.append(name)
        latest = name if makes_model(stage["step"]) or latest is None else latest
    return wired


def _check(stage: Stage, path: Path) -> None:
    """The stage's parameters against its step's config: names, types, values."""
    config = step_module(stage.step).main.config
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    for name, value in stage.params.items():
        if name not in fields:
            raise ShrinkflowError(
                f"recipe {path}: stage {stage.name!r} ({stage.step}): unknown parameter {name!r}: "
                f"{stage.step} takes {', '.join(sorted(fields))}"
            )
        stage.params[name] = _typed(value, hints[name], f"recipe {path}: stage {stage.name!r}: {name}")
    try:
        stage.config([PLACEHOLDER_RUN] * max(len(stage.inputs), 1 if stage.step == "compare" else len(stage.inputs)))
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"recipe {path}: stage {stage.name!r} ({stage.step}): {exc}") from None


def _typed(value: Any, kind: type, where: str) -> Any:
    """A YAML value as the config field's type (a mapping or a number for a text field becomes
    JSON text, as ``bits`` and ``thresholds`` take)."""
    if kind is str:
        return value if isinstance(value, str) else json.dumps(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        try:
            return parse_bool(str(value))
        except Exception:
            raise ShrinkflowError(f"{where} must be true or false, got {value!r}") from None
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ShrinkflowError(f"{where} must be {kind.__name__}, got {value!r}")


def code_version(step: str) -> str:
    """SHA-256 (first 16 hex digits) of the code a step runs: the library, the step's module and
    the steps' shared modules (the search: its package and spaces). Editing any of it changes the
    version."""
    files = sorted((_ROOT / "shrinkflow").rglob("*.py"))
    files += (
        sorted((_ROOT / "search").glob("*.py")) + sorted((_ROOT / "search").glob("*.yaml"))
        if step == "search"
        else _step_files(step)
    )
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(_ROOT) if file.is_relative_to(_ROOT) else file
        digest.update(name.as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def _step_files(step: str) -> list[Path]:
    own = _ROOT / "steps" / f"{step}.py"
    if not own.is_file():  # the step of a technique registered from elsewhere
        own = Path(step_module(step).__file__)
    return [own, *sorted((_ROOT / "steps").glob("_*.py"))]
