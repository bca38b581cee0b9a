"""The search's report: the Pareto front scored on test (front members only), tagged, tabled,
plotted and printed, with the hypervolume after each trial.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial

from search.champion import register_champion
from search.progress import format_cost
from search.study import ACCURACY, front, hypervolume_history
from search.trial import COST_METRICS, interleaved_latency_rounds
from search.workers import settings_params
from shrinkflow import Artifact, DataSplits, score
from shrinkflow.latency import speedup

if TYPE_CHECKING:
    from search.main import SearchConfig

__all__ = ["report"]

CPU = torch.device("cpu")
SPEEDUP_ROUNDS = 15  # the front members' interleaved speed-ups


def report(
    cfg: SearchConfig, study, data: DataSplits, base: dict, baseline_run_id: str, baseline: Artifact, floor: float
) -> str | None:
    """Tag the front, score it on test, log front table, plot and hypervolume, register the
    champion; print the search's, the baseline's and the champion's run ids; return the
    champion's (None when the front is empty)."""
    from shrinkflow import tracking

    members = front(study)
    _untag_former_members(study.study_name, {t.user_attrs["mlflow_run_id"] for t in members})
    artifacts = {t.user_attrs["mlflow_run_id"]: tracking.load_model(t.user_attrs["mlflow_run_id"])[0] for t in members}
    speedups = _speedups(cfg, artifacts, data, baseline)
    rows = []
    for trial in members:
        run_id = trial.user_attrs["mlflow_run_id"]
        artifact = artifacts[run_id]
        test_accuracy = score(artifact.model, data.x_test, data.y_test, CPU)["accuracy"]
        with tracking.resumed_run(run_id):
            tracking.log_metrics({"test_accuracy": test_accuracy, **speedups.get(run_id, {})})
            tracking.set_tags({"is_pareto": "true"})
            if "shrinkflow.model_id" not in tracking.run_tags(run_id):  # logged by an earlier report
                tracking.set_tags({"shrinkflow.model_id": tracking.log_model(artifact, data, cfg.target)})
        rows.append({**_front_row(trial, run_id, test_accuracy, cfg), **speedups.get(run_id, {})})
    table = pd.DataFrame(rows)
    costs = [base[COST_METRICS[name]] for name in cfg.cost_names()]
    for number, volume in hypervolume_history(study, costs):
        tracking.log_metrics({"hypervolume": volume}, step=number)
    tracking.log_metrics({"front_size": len(members)})
    if rows:
        tracking.log_table(table, "front")
        tracking.log_figure(_pareto_plot(study, members, base, cfg, floor), "pareto.png")
    print(_summary(table, base, cfg), file=sys.stderr)
    champion = register_champion(cfg, members, artifacts, baseline, data)
    runs = {"search run": tracking.active_run_id(), "baseline run": baseline_run_id,
            "champion run": champion or "none (the front is empty)"}  # fmt: skip
    for label, run_id in runs.items():
        print(f"{label + ':':14}{run_id}", file=sys.stderr)
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {tracking.tracking_uri()}", file=sys.stderr)
    return champion


def _speedups(cfg: SearchConfig, artifacts: dict[str, Artifact], data: DataSplits, baseline: Artifact) -> dict:
    """With a latency cost: each front member's speed-up over the baseline (median of paired
    rounds, with its 95% interval), timed interleaved with it in this process (the search's own
    timings, minutes apart, drift with the machine)."""
    if "latency" not in cfg.cost_names() or not artifacts:
        return {}
    timed = interleaved_latency_rounds({"baseline": baseline, **artifacts}, data, cfg.latency(), SPEEDUP_ROUNDS)
    return {
        run_id: speedup(timed["baseline"], timed[run_id]).metrics("latency_speedup_interleaved") for run_id in artifacts
    }


def _untag_former_members(study_name: str, members: set[str]) -> None:
    """Trials an earlier report put on the front that a later trial has beaten."""
    from shrinkflow import tracking

    for run in tracking.find_runs(f"tags.`shrinkflow.study` = '{study_name}' and tags.is_pareto = 'true'"):
        if run.info.run_id not in members:
            tracking.tag_run(run.info.run_id, {"is_pareto": "false"})


def _front_row(trial, run_id: str, test_accuracy: float, cfg: SearchConfig) -> dict:
    methods = {k: v for k, v in _trial_params(trial).items() if k.endswith((".method", "stages"))}
    costs = dict(zip(cfg.cost_names(), trial.values[1:], strict=True))
    accuracy = trial.user_attrs["record"].get(ACCURACY, trial.values[0])  # exact, not the tie-broken objective
    return {"trial": trial.number, "run_id": run_id, ACCURACY: accuracy, "test_accuracy": test_accuracy,
            **costs, **methods}  # fmt: skip


def _trial_params(trial: FrozenTrial) -> dict[str, object]:
    return settings_params(trial.user_attrs.get("record", {}).get("stages", {}))


_PLOT_UNITS = {"size": (1000, "size on disk, KB"), "macs": (1, "effective MACs"), "bops": (1, "bit operations"),
               "latency": (1, "latency, ms")}  # fmt: skip


def _pareto_plot(study: optuna.Study, members, base: dict, cfg: SearchConfig, floor: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = cfg.cost_names()[0]
    scale, unit = _PLOT_UNITS[cost]

    def point(trial) -> tuple[float, float]:  # the exact accuracy, not the tie-broken objective
        return trial.values[1] / scale, trial.user_attrs.get("record", {}).get(ACCURACY, trial.values[0])

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    # the axis spans the floor's neighbourhood; trials far below it (stopped early) sit on its edge
    bottom = floor - max(0.05, 3 * (base[ACCURACY] - floor))
    points = [point(t) for t in done]
    inside = [(cost_value, accuracy) for cost_value, accuracy in points if accuracy >= bottom]
    below = [(cost_value, bottom) for cost_value, accuracy in points if accuracy < bottom]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    if inside:
        axes.scatter(*zip(*inside, strict=True), s=14, c="0.7", label="trials")
    if below:
        axes.scatter(*zip(*below, strict=True), s=18, c="0.7", marker="v", label=f"trials below {bottom:.2f}")
    axes.plot(*zip(*map(point, sorted(members, key=lambda t: t.values[1])), strict=True), "o-", c="tab:blue",
              label="Pareto front")  # fmt: skip
    axes.scatter([base[COST_METRICS[cost]] / scale], [base[ACCURACY]], marker="*", s=120, c="tab:red", label="baseline")
    axes.axhline(floor, ls="--", c="tab:red", lw=0.8, label="accuracy floor")
    axes.set(xscale="log", xlabel=f"{unit} (log scale)", ylabel="validation accuracy",
             title=f"study {study.study_name}")  # fmt: skip
    axes.set_ylim(bottom - 0.005, max(1.0, base[ACCURACY]) + 0.005)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _summary(table: pd.DataFrame, base: dict, cfg: SearchConfig) -> str:
    if table.empty:
        return "search: the front is empty"
    shown = table.drop(columns=["run_id"])
    for name in cfg.cost_names():  # in the units people read: 5.2 KB, MACs 1.3M
        shown[name] = [format_cost(name, value).split(" ", 1)[1] for value in shown[name]]
    with pd.option_context("display.width", 200, "display.max_columns", None):
        text = shown.to_string(index=False, float_format="%.4g")
    cost = cfg.cost_names()[0]
    return f"Pareto front ({len(table)} trials; baseline {format_cost(cost, base[COST_METRICS[cost]])}, " \
           f"val_accuracy {base[ACCURACY]:.4f}):\n{text}"  # fmt: skip
