"""Whether the search spends its budget well, which sampler finds the better front, what the
bookkeeping costs and what a second worker buys. The default search space, cost = size.

1. ``quick``: the quick start's search (``mlflow run .``: digits ``mlp``, 20 trials,
   ``max_accuracy_drop`` 1, the default sampler) on seeds 0-2: how many of the 20 trials ran
   distinct configurations, how many were stopped early, how many draws stepped back as repeats,
   the front's size.
2. ``samplers``: ``tpe`` (the default), ``gp`` and ``random``, 40 trials × seeds 0-4 each on
   digits ``mlp``, ``max_accuracy_drop`` 0.5: the final hypervolume (validation error × size
   relative to the baseline's; reference point: error 1, the baseline's size — see
   ``search.study.hypervolume_history``), the champion's size ratio and test accuracy change
   (computed after the search, front only), the front's size and its largest size ratio within
   0.5 pp of the baseline's test accuracy (chosen on validation: the front is; test only judges).
3. ``cnn``: the default sampler, 40 trials × seeds 0-4 on digits ``cnn``, as 2.
4. ``workers``: trials per hour with ``workers`` 2 versus 1, and 2 on a Dask ``LocalCluster``
   (20 trials each, the default sampler, seed 0), on this machine.
5. ``fidelity``: whether cutting the fine-tuning of unpromising trials pays (the issue's
   multi-fidelity question): ``gp`` (measured when it was the default), 40 trials × seeds 0-2 on digits ``mlp``,
   ``early_stop_pp`` 5 (the default: a trial still 5 pp below the floor at half its epochs stops
   fine-tuning) versus 0 (every trial fine-tunes to the end): final hypervolume against the
   seconds spent in trials.

Bookkeeping — MLflow runs, logged models and tables, Optuna's storage — is reported as a share
of trial wall time: 1 − Σ compute_s / Σ (trial end − trial start), where ``compute_s`` is the
time in compression and measurement.

Everything runs in a temporary MLflow store and Optuna SQLite file; each baseline (the train
step's defaults) is trained once. Results: benchmarks/results/search_samplers.csv (the rows of
the parts run replace their earlier rows), shown in docs/benchmarks.md. All five parts take about
45 minutes on 2 cores.

    python -m benchmarks.search_samplers [quick] [samplers] [cnn] [workers] [fidelity]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from benchmarks._speedup import write_results
from search import main as search
from shrinkflow.cli import NoResult
from steps import train

RESULTS = Path(__file__).resolve().parent / "results" / "search_samplers.csv"
TRIALS, SEEDS, SAMPLERS = 40, (0, 1, 2, 3, 4), ("tpe", "gp", "random")
PARTS = ("quick", "samplers", "cnn", "workers", "fidelity")


def _search(folder: Path, baseline: str, name: str, model: str = "mlp", **settings) -> dict:
    """One study; its hypervolume, speed, bookkeeping share, champion and use of its budget."""
    storage = f"sqlite:///{folder / 'optuna.db'}"
    settings = {"costs": "size", "max_accuracy_drop": 0.5, **settings}
    cfg = search.SearchConfig(run_id=baseline, storage=storage, study_name=name, device="cpu",
                              register_name="benchmark-champion", **settings)  # fmt: skip
    started = time.perf_counter()
    try:
        champion = search.execute(cfg)
    except NoResult:  # an empty front: the search's run has its hypervolume all the same
        champion = None
    wall = time.perf_counter() - started
    searches = f"tags.`shrinkflow.step` = 'search' and tags.`shrinkflow.study` = '{name}'"
    (parent_run,) = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                                       filter_string=searches, order_by=["attributes.start_time DESC"])  # fmt: skip
    parent = parent_run.info.run_id
    history = mlflow.MlflowClient().get_metric_history(parent, "hypervolume")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    trial_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    compute_s = sum(t.user_attrs["record"]["compute_s"] for t in trials)
    base = mlflow.get_run(parent).data
    baseline_test = mlflow.get_run(baseline).data.metrics["test_accuracy"]
    best = mlflow.get_run(champion).data.metrics if champion else {"cost_size_bytes": float("inf")}
    return {
        "part": "", "model": model, "study": name, "sampler": cfg.sampler, "seed": cfg.seed, "workers": cfg.workers,
        "trials": cfg.trials, "max_accuracy_drop": cfg.max_accuracy_drop, "early_stop_pp": cfg.early_stop_pp,
        # the budget's use: configurations run (distinct, as the issue asks), stopped early, redrawn
        "distinct_configurations": len({json.dumps(t.user_attrs["configuration"], sort_keys=True) for t in trials}),
        "stopped": sum(bool(t.user_attrs["record"].get("stopped")) for t in trials),
        "repeats_redrawn": sum("repeat_of" in t.user_attrs for t in study.trials),
        "hypervolume": max(m.value for m in history), "wall_s": wall, "trial_s": trial_s,
        "trials_per_hour": cfg.trials / wall * 3600,
        "bookkeeping_share": 1 - compute_s / trial_s,
        # the champion (cheapest front member), scored on test after the search, as the bar asks
        "champion_size_ratio": base.metrics["baseline_cost_size_bytes"] / best["cost_size_bytes"],
        "champion_test_change_pp": 100 * (best.get("test_accuracy", baseline_test) - baseline_test),
        "front_size": int(base.metrics["front_size"]),
        # the bar: the largest size reduction among front members within 0.5 pp on test
        "front_best_ratio_within_0_5pp": _best_ratio_within(parent, baseline_test, 0.5),
    }  # fmt: skip


def _best_ratio_within(parent: str, baseline_test: float, drop_pp: float) -> float:
    """Largest baseline-size ÷ size among the front members whose test accuracy is within
    ``drop_pp`` of the baseline's (0 when none is)."""
    baseline_size = mlflow.get_run(parent).data.metrics["baseline_cost_size_bytes"]
    members = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.is_pareto = 'true'", output_format="list",
        search_all_experiments=True,
    )  # fmt: skip
    ratios = [baseline_size / run.data.metrics["cost_size_bytes"] for run in members
              if 100 * (run.data.metrics["test_accuracy"] - baseline_test) >= -drop_pp - 1e-9]  # fmt: skip
    return max(ratios, default=0.0)


def _baseline(model: str) -> str:
    return train.execute(train.TrainConfig(model=model, device="cpu"))


def _part(name: str, folder: Path, baselines: dict) -> list[dict]:
    if name == "quick":  # the quick start's search: every setting at its default
        rows = [_search(folder, baselines["mlp"], f"quick-{seed}", seed=seed, max_accuracy_drop=1.0, trials=20)
                for seed in (0, 1, 2)]  # fmt: skip
    elif name == "samplers":
        rows = [_search(folder, baselines["mlp"], f"{sampler}-{seed}", sampler=sampler, seed=seed, trials=TRIALS)
                for sampler in SAMPLERS for seed in SEEDS]  # fmt: skip
    elif name == "cnn":
        rows = [_search(folder, baselines["cnn"], f"cnn-{seed}", "cnn", seed=seed, trials=TRIALS) for seed in SEEDS]
    elif name == "fidelity":
        rows = [_search(folder, baselines["mlp"], f"fidelity-{stop:g}-{seed}", sampler="gp", seed=seed, trials=TRIALS,
                        early_stop_pp=stop) for stop in (5.0, 0.0) for seed in (0, 1, 2)]  # fmt: skip
    else:
        rows = [_search(folder, baselines["mlp"], f"workers-{n}", workers=n, trials=20) for n in (1, 2)]
        rows += [_search(folder, baselines["mlp"], "dask-2", workers=2, trials=20, engine="dask")]
    return [{**row, "part": name} for row in rows]


def main(parts: list[str]) -> None:
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}: choose from {', '.join(PARTS)}")
    parts = parts or list(PARTS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ["TQDM_DISABLE"] = "1"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        baselines = {model: _baseline(model) for model in (("mlp", "cnn") if "cnn" in parts else ("mlp",))}
        rows = [row for part in parts for row in _part(part, folder, baselines)]
    table = pd.DataFrame(rows)
    if RESULTS.exists():  # the parts not run keep their rows
        earlier = pd.read_csv(RESULTS)
        if "part" in earlier:
            table = pd.concat([earlier[~earlier.part.isin(parts)], table], ignore_index=True)
    write_results(table, RESULTS)
    searches = table[table.part.eq("samplers")]
    if not searches.empty:
        print(f"mean hypervolume: {searches.groupby('sampler')['hypervolume'].mean().to_dict()}")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
