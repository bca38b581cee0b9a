"""The search's champion: the front member registered as ``models:/<register_name>@champion``,
the cheapest that is not slower than the baseline where it is deployed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from shrinkflow import Artifact, DataSplits, cost
from shrinkflow.latency import CHECK_BATCH_SIZES, before_after_latency

if TYPE_CHECKING:
    from search.main import SearchConfig

__all__ = ["CHAMPION_MIN_SPEEDUP", "register_champion"]

CHAMPION_MIN_SPEEDUP = 0.95  # a champion at least this fast as the baseline at batch 1 in the target (noise allowed)


def register_champion(cfg: SearchConfig, members, artifacts: dict, baseline: Artifact, data: DataSplits) -> str | None:
    """Register the front member with the lowest first cost that is not slower than the baseline
    in the target (>= ``CHAMPION_MIN_SPEEDUP`` at batch 1, timed interleaved), or the lowest
    first cost when none is; log and print its size and speed-up; return its run id."""
    from shrinkflow import tracking

    if not members:
        return None
    ranked = sorted(members, key=lambda t: (t.values[1], -t.values[0]))
    checks = {}
    for trial in ranked:
        run_id = trial.user_attrs["mlflow_run_id"]
        checks[run_id] = before_after_latency(
            baseline.model, artifacts[run_id].reloaded().model, data.x_test, cfg.target, "champion"
        )
        if checks[run_id].metrics["speedup_bs1"] >= CHAMPION_MIN_SPEEDUP:
            best = trial
            break
    else:
        best = ranked[0]
    run_id = best.user_attrs["mlflow_run_id"]
    tracking.register_model(tracking.run_tags(run_id)["shrinkflow.model_id"], cfg.register_name, "champion")
    tracking.set_tags({"shrinkflow.champion_run_id": run_id, "shrinkflow.champion": f"{cfg.register_name}@champion"})
    print(f"champion: trial {best.number}, run {run_id}, models:/{cfg.register_name}@champion", file=sys.stderr)
    if best is not ranked[0]:
        print(
            f"search: the smallest-cost front member (trial {ranked[0].number}) is slower than the baseline in "
            f"{cfg.target}; the champion is the next that is not",
            file=sys.stderr,
        )
    _champion_speed(cfg, baseline, artifacts[run_id], checks[run_id])
    return run_id


def _champion_speed(cfg: SearchConfig, baseline: Artifact, champion: Artifact, check) -> None:
    """Log the champion's speed-up against the baseline in the target (interleaved, with
    intervals) and print it beside its size: a size-only search can pick a slower model."""
    from shrinkflow import tracking

    tracking.log_metrics({f"champion_{name}": value for name, value in check.metrics.items()})
    tracking.set_tags({"shrinkflow.champion_timed_form": check.form})
    smaller = cost(baseline)["cost_size_bytes"] / cost(champion)["cost_size_bytes"]
    speeds = ", ".join(
        f"{check.metrics[f'speedup_bs{size}']:.2f}x at batch {size} ({check.metrics[f'speedup_bs{size}_low']:.2f}-"
        f"{check.metrics[f'speedup_bs{size}_high']:.2f})"
        for size in CHECK_BATCH_SIZES
    )
    print(f"champion: {smaller:.1f}x smaller than the baseline; speed-up in {check.form}: {speeds}", file=sys.stderr)
    for line in check.warnings:
        print(line, file=sys.stderr)
    if check.metrics["speedup_bs1"] < CHAMPION_MIN_SPEEDUP:
        print(
            f"search: no front member is as fast as the baseline in {check.form} at batch 1; this search minimized "
            f"{cfg.cost_names()[0]}: add latency to costs to trade accuracy for speed",
            file=sys.stderr,
        )
