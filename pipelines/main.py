"""Run a recipe: its stages in order, each a step's run nested under one parent run, reusing
every stage whose result is already in the tracking store.

Consumes: a recipe (``pipelines/recipe.py``): a shipped name (``baseline``, ``deep_compression``,
``int8_deploy``, ``distill_quantize``, ``search_then_deploy``) or a YAML path; overrides
``stage.param=value,...``.
Produces: a parent run (tag ``shrinkflow.step=pipeline``) with one nested run per stage it ran,
tags ``shrinkflow.stage.<name>`` naming every stage's run (run or reused), and a stage table —
accuracy, bytes, MACs, latency, ratios to the first model — as ``stages.json`` (MLflow table),
``stages.csv`` and ``stages.png``, also printed. The parent run id is the last line printed.

The cache: a stage is reused when a FINISHED run carries its key, ``shrinkflow.cache_key`` =
SHA-256 of the step's name, its full config as typed values (every parameter, defaults included,
and the input's run id) and the version of the code the step runs (``recipe.code_version``), and
whose model, for a step that makes one, is still in the artifact store as it was logged (present,
matching its recorded SHA-256). A changed parameter, a rerun input, edited code or a missing or
changed checkpoint: that stage and everything after it run again, nothing before. A failed or
killed run never has the key (it is set after the step finishes). ``force`` reruns every stage.

Example:
    python -m pipelines.main --recipe deep_compression --set trained.model=cnn
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.recipe import Recipe, Stage, code_version, load_recipe, makes_model, step_module
from shrinkflow.cli import entry_point
from shrinkflow.config import ShrinkflowError, config_to_params
from shrinkflow.runtime import file_lock

__all__ = ["PipelineConfig", "execute", "main", "stage_table"]

CACHE_TAG = "shrinkflow.cache_key"


@dataclass(frozen=True)
class PipelineConfig:
    """Run a recipe of steps (shipped name or YAML path), reusing stages already run."""

    recipe: str = field(default="baseline", metadata={"help": "shipped recipe name or path to a recipe .yaml"})
    set: str = field(default="", metadata={"help": "overrides: stage.param=value,... (e.g. trained.model=cnn)"})
    force: bool = field(default=False, metadata={"help": "rerun every stage, reusing none"})


def cache_key(stage: Stage, config) -> str:
    payload = {"step": stage.step, "config": config_to_params(config), "code": code_version(stage.step)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _cached(key: str, stage: Stage) -> str | None:
    """The newest FINISHED run with ``key`` whose model (for a step that makes one) is still in
    the artifact store as it was logged; a run whose checkpoint is missing or changed is passed
    over with a line saying why."""
    from shrinkflow import tracking

    runs = tracking.find_runs(f"tags.`{CACHE_TAG}` = '{key}' and attributes.status = 'FINISHED'")
    for run in runs:
        problem = tracking.checkpoint_problem(run.info.run_id) if makes_model(stage.step) else None
        if problem is None:
            return run.info.run_id
        print(f"pipeline: stage {stage.name} ({stage.step}): not reusing run {run.info.run_id}: {problem}",
              file=sys.stderr)  # fmt: skip
    return None


def _run_stage(stage: Stage, models: dict[str, str], force: bool) -> tuple[str, bool]:
    """(run id, reused?) of ``stage`` given the run ids of the earlier stages' models."""
    from shrinkflow import tracking

    config = stage.config([models[name] for name in stage.inputs])
    key = cache_key(stage, config)
    # the same stage started by two recipes at once runs once: the second waits, then reuses it
    with file_lock(_stage_lock(key, tracking.tracking_uri())):
        return _run_or_reuse(stage, config, key, force)


def _stage_lock(key: str, tracking_uri: str) -> Path:
    name = hashlib.sha256(f"{tracking_uri}\0{key}".encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"shrinkflow-stage-{name}.lock"


def _run_or_reuse(stage: Stage, config, key: str, force: bool) -> tuple[str, bool]:
    from shrinkflow import tracking

    if not force and (run_id := _cached(key, stage)):
        print(f"pipeline: stage {stage.name} ({stage.step}): reusing run {run_id}", file=sys.stderr)
        return run_id, True
    print(f"pipeline: stage {stage.name} ({stage.step}): running", file=sys.stderr)
    try:
        run_id = step_module(stage.step).execute(config)
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"stage {stage.name!r} ({stage.step}): {exc}") from None
    # only now: a failed stage has no key
    tracking.tag_run(run_id, {CACHE_TAG: key, "shrinkflow.code_version": code_version(stage.step)})
    return run_id, False


def execute(cfg: PipelineConfig) -> str:
    from shrinkflow import tracking

    recipe = load_recipe(cfg.recipe, cfg.set)  # the whole recipe is checked before any run
    with tracking.step_run("pipeline", {**config_to_params(cfg), "recipe_name": recipe.name}) as run:
        runs, models, reused = {}, {}, {}
        for stage in recipe.stages:
            runs[stage.name], reused[stage.name] = _run_stage(stage, models, cfg.force)
            models[stage.name] = _model_of(stage, runs[stage.name], models)
            tracking.set_tags({f"shrinkflow.stage.{stage.name}": runs[stage.name]})
        table = stage_table(recipe, runs, models, reused)
        tracking.log_table(table, "stages")
        tracking.log_figure(_plot(table, recipe.name), "stages.png")
        first = table.iloc[0]
        tracking.log_metrics({"stages_run": int((~table["reused"]).sum()), "stages_reused": int(table["reused"].sum())})
        if pd.notna(first.get("test_accuracy")):
            last = table.dropna(subset=["test_accuracy"]).iloc[-1]
            tracking.log_metrics({"test_accuracy": last["test_accuracy"], "cost_size_bytes": last["cost_size_bytes"]})
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), file=sys.stderr)
        return run.info.run_id


def _model_of(stage: Stage, run_id: str, models: dict[str, str]) -> str:
    """The run whose model ``stage`` leaves for the next: its own (a step that makes one), else
    the one it was given (its last input, or the run id written in the recipe)."""
    if makes_model(stage.step):
        return run_id
    if stage.inputs:
        return models[stage.inputs[-1]]
    return stage.params.get("run_id", run_id)


# What each stage contributes to the table, first found wins (benchmark's latency over the
# compression steps' quick before/after timing).
_LATENCY_KEYS = ("latency_cpu_bs1_ms_p50", "latency_bs1_ms_after")


def stage_table(recipe: Recipe, runs: dict, models: dict, reused: dict) -> pd.DataFrame:
    """One row per stage: its run, whether it was reused, the accuracy, bytes, MACs and CPU
    batch-1 latency of its model, and ratios to the first stage's model."""
    from shrinkflow import tracking

    rows = []
    for stage in recipe.stages:
        own = tracking.run_metrics(runs[stage.name])
        model = tracking.run_metrics(models[stage.name])
        metrics = {**model, **own}
        latency = next((metrics[k] for k in _LATENCY_KEYS if k in metrics), float("nan"))
        rows.append({
            "stage": stage.name, "step": stage.step, "run_id": runs[stage.name], "reused": reused[stage.name],
            "test_accuracy": metrics.get("test_accuracy", float("nan")),
            "cost_size_bytes": metrics.get("cost_size_bytes", float("nan")),
            "cost_macs": metrics.get("cost_macs_effective", metrics.get("cost_macs", float("nan"))),
            "latency_bs1_ms": latency,
        })  # fmt: skip
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["accuracy_delta_pp"] = (table["test_accuracy"] - base["test_accuracy"]) * 100
    table["size_reduction"] = base["cost_size_bytes"] / table["cost_size_bytes"]
    table["macs_reduction"] = base["cost_macs"] / table["cost_macs"]
    return table


def _plot(table: pd.DataFrame, name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, accuracy_axis = plt.subplots(figsize=(max(6, 1.2 * len(table)), 4))
    accuracy_axis.plot(table["stage"], table["test_accuracy"] * 100, "o-", color="tab:blue")
    accuracy_axis.set_ylabel("test accuracy (%)", color="tab:blue")
    size_axis = accuracy_axis.twinx()
    size_axis.bar(table["stage"], table["cost_size_bytes"] / 1024, alpha=0.3, color="tab:orange")
    size_axis.set_ylabel("artifact size (KiB)", color="tab:orange")
    accuracy_axis.set_title(f"recipe {name}: accuracy and size per stage")
    figure.tight_layout()
    return figure


main = entry_point(PipelineConfig, execute, __name__)
