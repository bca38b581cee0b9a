"""The main job: train a baseline, then evaluate it on the test split.

Produces: a parent MLflow run (tag ``shrinkflow.step=pipeline``) holding the train and evaluate
runs as nested children; its metrics repeat the headline numbers (``test_accuracy``,
``cost_size_bytes``) and its tags name the child run ids. The parent run id is the last line
printed.

Example:
    python -m pipelines.main --model cnn --dataset digits
"""

from __future__ import annotations

import sys

from shrinkflow.cli import run_main
from shrinkflow.config import config_to_params, parse_config
from steps import evaluate, train

__all__ = ["CONFIG", "execute", "main"]

CONFIG = train.TrainConfig  # the pipeline takes the train step's knobs


def execute(cfg: train.TrainConfig) -> str:
    import mlflow

    from shrinkflow import tracking

    with tracking.step_run("pipeline", config_to_params(cfg)) as run:
        train_run_id = train.execute(cfg)
        evaluate_run_id = evaluate.execute(
            evaluate.EvaluateConfig(run_id=train_run_id, split="test", device=cfg.device)
        )
        mlflow.set_tags({"shrinkflow.train_run_id": train_run_id, "shrinkflow.evaluate_run_id": evaluate_run_id})
        child = mlflow.get_run(evaluate_run_id).data.metrics
        mlflow.log_metrics({k: child[k] for k in ("test_accuracy", "cost_size_bytes", "cost_params")})
        print(
            f"pipeline: train run {train_run_id}, evaluate run {evaluate_run_id}, "
            f"test_accuracy={child['test_accuracy']:.4f}",
            file=sys.stderr,
        )
        return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(CONFIG, argv)))


if __name__ == "__main__":
    main()
