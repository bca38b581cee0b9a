"""Which sampler finds the better front at our budget, what the bookkeeping costs, and what a second
worker buys. digits ``mlp``, the default search space, cost = size, ``max_accuracy_drop`` 0.5.

1. ``gp`` (the default), ``tpe`` and ``random``, 40 trials × seeds 0–4 each, one worker: the
   final hypervolume (validation error × size relative to the baseline's; reference point: error
   1, the baseline's size — see ``search.study.hypervolume_history``), the champion's size
   ratio to the baseline and test accuracy change (computed after the search, front only), the
   front's size and its largest size ratio within 0.5 pp of the baseline's test accuracy.
2. Bookkeeping — MLflow runs, logged models and tables, Optuna's storage — as a share of trial
   wall time: 1 − Σ compute_s / Σ (trial end − trial start), where ``compute_s`` is the time in
   compression and measurement.
3. Trials per hour with ``workers`` 2 versus 1, and 2 on a Dask ``LocalCluster`` (20 trials
   each, the default sampler, seed 0), on this machine.

Everything runs in a temporary MLflow store and Optuna SQLite file; the baseline (the train
step's defaults) is trained once. Results: benchmarks/results/search_samplers.csv, summarized in
the README. Takes about 15 minutes on 2 cores.

    python -m benchmarks.search_samplers
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from benchmarks._speedup import write_results
from search import main as search
from steps import train

RESULTS = Path(__file__).resolve().parent / "results" / "search_samplers.csv"
TRIALS, SEEDS, SAMPLERS = 40, (0, 1, 2, 3, 4), ("gp", "tpe", "random")


def _search(folder: Path, baseline: str, name: str, **settings) -> dict:
    """One study; its hypervolume, speed, bookkeeping share and champion."""
    storage = f"sqlite:///{folder / 'optuna.db'}"
    cfg = search.SearchConfig(run_id=baseline, costs="size", max_accuracy_drop=0.5, storage=storage, study_name=name,
                              device="cpu", register_name="benchmark-champion", **settings)  # fmt: skip
    started = time.perf_counter()
    champion = search.execute(cfg)
    wall = time.perf_counter() - started
    parent = mlflow.get_run(champion).data.tags.get("mlflow.parentRunId", champion)
    history = mlflow.MlflowClient().get_metric_history(parent, "hypervolume")
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    trial_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    compute_s = sum(t.user_attrs["record"]["compute_s"] for t in trials)
    base, best = mlflow.get_run(parent).data, mlflow.get_run(champion).data
    baseline_test = mlflow.get_run(baseline).data.metrics["test_accuracy"]
    return {
        "study": name, "sampler": cfg.sampler, "seed": cfg.seed, "workers": cfg.workers, "trials": cfg.trials,
        "hypervolume": max(m.value for m in history), "wall_s": wall, "trials_per_hour": cfg.trials / wall * 3600,
        "bookkeeping_share": 1 - compute_s / trial_s,
        # the champion (cheapest front member), scored on test after the search, as the bar asks
        "champion_size_ratio": base.metrics["baseline_cost_size_bytes"] / best.metrics["cost_size_bytes"],
        "champion_test_change_pp": 100 * (best.metrics.get("test_accuracy", baseline_test) - baseline_test),
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ["TQDM_DISABLE"] = "1"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        baseline = train.execute(train.TrainConfig(device="cpu"))
        rows = [_search(folder, baseline, f"{sampler}-{seed}", sampler=sampler, seed=seed, trials=TRIALS)
                for sampler in SAMPLERS for seed in SEEDS]  # fmt: skip
        rows += [_search(folder, baseline, f"workers-{n}", workers=n, trials=20) for n in (1, 2)]
        rows += [_search(folder, baseline, "dask-2", workers=2, trials=20, engine="dask")]
    table = pd.DataFrame(rows)
    write_results(table, RESULTS)
    means = table[table.workers.eq(1) & table.trials.eq(TRIALS)].groupby("sampler")["hypervolume"].mean()
    print(f"mean hypervolume: {means.to_dict()}")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
