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

import numpy as np
import pandas as pd

from pipelines.recipe import Recipe, Stage, code_version, load_recipe, makes_model, step_module
from shrinkflow.cli import entry_point
from shrinkflow.config import ShrinkflowError, config_to_params
from shrinkflow.cost import format_bytes
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
            tracking.log_metrics({"test_accuracy": last["test_accuracy"], "cost_size_bytes": last["size_bytes"]})
        print(printable(table), file=sys.stderr)
        if table["timed_form"].iloc[0]:
            print(f"(latency: median of interleaved rounds, {table['timed_form'].iloc[0]}, 1 CPU thread; "
                  "faster_bs1: against the first stage, with its 95% interval)", file=sys.stderr)  # fmt: skip
        return run.info.run_id


def _model_of(stage: Stage, run_id: str, models: dict[str, str]) -> str:
    """The run whose model ``stage`` leaves for the next: its own (a step that makes one), else
    the one it was given (its last input, or the run id written in the recipe)."""
    if makes_model(stage.step):
        return run_id
    if stage.inputs:
        return models[stage.inputs[-1]]
    return stage.params.get("run_id", run_id)


def stage_table(recipe: Recipe, runs: dict, models: dict, reused: dict) -> pd.DataFrame:
    """One row per stage: its run, whether it was reused, the accuracy, bytes and effective MACs
    of its model, its CPU batch-1 latency, and ratios to the first stage's model. The models are
    reloaded and timed here, all together in interleaved rounds (``interleaved_latency``), so
    every row's ``speedup_bs1`` (first stage's time ÷ its own, with a 95% interval) is a ratio
    timed in one process."""
    from shrinkflow import tracking

    rows = []
    for stage in recipe.stages:
        metrics = {**tracking.run_metrics(models[stage.name]), **tracking.run_metrics(runs[stage.name])}
        rows.append({
            "stage": stage.name, "step": stage.step, "run_id": runs[stage.name], "reused": reused[stage.name],
            "test_accuracy": metrics.get("test_accuracy", float("nan")),
            "size_bytes": metrics.get("cost_size_bytes", float("nan")),
            "macs_effective": metrics.get("cost_macs_effective", metrics.get("cost_macs", float("nan"))),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["accuracy_delta_pp"] = (table["test_accuracy"] - base["test_accuracy"]) * 100
    table["size_reduction"] = base["size_bytes"] / table["size_bytes"]
    table["macs_reduction"] = base["macs_effective"] / table["macs_effective"]
    return _with_latency(table, [models[stage.name] for stage in recipe.stages])


def _with_latency(table: pd.DataFrame, model_runs: list[str]) -> pd.DataFrame:
    """``table`` with each row's model timed: ``latency_bs1_ms``, ``speedup_bs1`` (+ ``_low``,
    ``_high``) against the first row's, and the form they ran in (``timed_form``)."""
    from shrinkflow import tracking
    from shrinkflow.latency import interleaved_latency, speedup

    try:
        loaded = {run_id: tracking.load_model(run_id)[0] for run_id in dict.fromkeys(model_runs)}
        data = tracking.dataset_of_run(model_runs[0], loaded[model_runs[0]].description)
    except ShrinkflowError as exc:  # the stages ran and are logged: the table goes without latency
        print(f"warning: the stage table has no latency: {exc}", file=sys.stderr)
        table[["latency_bs1_ms", "speedup_bs1", "speedup_bs1_low", "speedup_bs1_high"]] = float("nan")
        table["timed_form"] = ""
        return table
    by_size, form, _ = interleaved_latency({run_id: a.model for run_id, a in loaded.items()}, data.x_test)
    timed = by_size[1]
    table["latency_bs1_ms"] = [float(np.median(timed[run_id])) for run_id in model_runs]
    ratios = [speedup(timed[model_runs[0]], timed[run_id]) for run_id in model_runs]
    table["speedup_bs1"] = [r.median for r in ratios]
    table["speedup_bs1_low"] = [r.low for r in ratios]
    table["speedup_bs1_high"] = [r.high for r in ratios]
    table["timed_form"] = form
    return table


def printable(table: pd.DataFrame) -> str:
    """The stage table as a person reads it: sizes in KB/MB, ratios with their unit, each row
    labelled by its stage and run id."""
    shown = pd.DataFrame({
        "stage": table["stage"], "step": table["step"], "run_id": table["run_id"],
        "reused": table["reused"].map({True: "yes", False: "no"}),
        "test_accuracy": table["test_accuracy"].map(lambda v: f"{v:.2%}" if pd.notna(v) else "-"),
        "size": table["size_bytes"].map(lambda v: format_bytes(v) if pd.notna(v) else "-"),
        "smaller": table["size_reduction"].map(lambda v: f"{v:.1f}x" if pd.notna(v) else "-"),
        "effective_macs": table["macs_effective"].map(lambda v: f"{v:,.0f}" if pd.notna(v) else "-"),
        "latency_bs1": table["latency_bs1_ms"].map(lambda v: f"{v * 1000:.1f} us" if pd.notna(v) else "-"),
        "faster_bs1": [f"{m:.2f}x ({lo:.2f}-{hi:.2f})" if pd.notna(m) else "-" for m, lo, hi in
                       zip(table["speedup_bs1"], table["speedup_bs1_low"], table["speedup_bs1_high"], strict=True)],
    })  # fmt: skip
    return shown.to_string(index=False)


def _plot(table: pd.DataFrame, name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, accuracy_axis = plt.subplots(figsize=(max(6, 1.2 * len(table)), 4))
    accuracy_axis.plot(table["stage"], table["test_accuracy"] * 100, "o-", color="tab:blue")
    accuracy_axis.set_ylabel("test accuracy (%)", color="tab:blue")
    size_axis = accuracy_axis.twinx()
    size_axis.bar(table["stage"], table["size_bytes"] / 1000, alpha=0.3, color="tab:orange")
    size_axis.set_ylabel("artifact size (KB)", color="tab:orange")
    accuracy_axis.set_title(f"recipe {name}: accuracy and size per stage")
    figure.tight_layout()
    return figure


main = entry_point(PipelineConfig, execute, __name__)
