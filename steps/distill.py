"""Distill a logged teacher into a smaller student (Hinton, Vinyals & Dean 2015), with a control.

Consumes: the run id of a step that logged the teacher.
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with the student as its model (a
normal checkpoint that prune, quantize and benchmark accept), ``test_accuracy`` (student),
``teacher_test_accuracy``, ``control_test_accuracy`` (the same student trained from scratch
with the same budget, recipe and seed, minus the teacher), ``distill_gain_pp``
(student − control, percentage points), ``teacher_gap_pp`` (teacher − student), the student's
``cost_*`` and the teacher's ``teacher_cost_*``, per-epoch metrics of the student, and the
side-by-side table ``distillation.json``/``.csv``. The run id is the last line printed.

The loss, the input noise and the control: ``shrinkflow.distillation``.

Example:
    python -m steps.distill --run-id <teacher run id> --student cnn1d --student-width 0.4 --student-depth 4 \
        --input-noise 0.2 --epochs 600
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pandas as pd
import torch

from shrinkflow import distributed
from shrinkflow.cli import run_main
from shrinkflow.config import check_run_id, config_to_params, parse_config
from shrinkflow.cost import cost
from shrinkflow.distillation import DistillSettings, check_distilling, distill
from shrinkflow.latency import TARGET_HELP, TARGETS, before_after_latency, fallback_forms
from shrinkflow.runtime import resolve_device
from shrinkflow.training import score

__all__ = ["CONFIG", "DistillConfig", "main"]


@dataclass(frozen=True)
class DistillConfig(DistillSettings):
    """Train a small student on a logged teacher's soft targets, and the same student from scratch."""

    run_id: str = field(kw_only=True, metadata={"help": "run id of the step that logged the teacher"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})
    nproc: int = field(
        default=1, metadata={"help": "processes for data-parallel training; > 1 starts the step under torchrun"}
    )
    target: str = field(default=TARGETS[0], metadata={"help": TARGET_HELP})

    def __post_init__(self):
        check_run_id(self.run_id, "the teacher's train step")
        fallback_forms(self.target)
        super().__post_init__()


def execute(cfg: DistillConfig) -> str:
    import mlflow

    from shrinkflow import tracking

    device = resolve_device(cfg.device)
    teacher, teacher_costs = tracking.load_model(cfg.run_id)
    data = tracking.dataset_of_run(cfg.run_id, teacher.description)
    check_distilling(teacher, cfg, data)  # a student that cannot learn from it fails before a run starts
    cpu = torch.device("cpu")
    if run_id := distributed.launch_if_asked(
        "steps.distill", cfg, tracking.active_run_id()
    ):  # after the checks: bad input is one line
        return run_id
    device = distributed.setup(device)
    if not distributed.is_main():  # the other processes train alongside rank 0 and log nothing
        distill(teacher, data, cfg, device)
        return ""
    with tracking.step_run("distill", config_to_params(cfg)) as run:
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        for split in ("train", "val", "test"):
            tracking.log_dataset(data, split)
        result = distill(teacher, data, cfg, device, on_epoch=lambda e, m: mlflow.log_metrics(m, step=e))
        student = result.artifact
        model_id = tracking.log_model(student, data, cfg.target)
        rows = {"teacher": teacher, "student": student, **({"control": result.control} if result.control else {})}
        accuracy = {name: score(a.model, data.x_test, data.y_test, cpu)["accuracy"] for name, a in rows.items()}
        student_costs = cost(student)
        # cost_params counts an int8 model's packed weights too (its .parameters() are empty)
        params = {name: cost(a)["cost_params"] for name, a in rows.items()}
        metrics = {
            "test_accuracy": accuracy["student"],
            "teacher_test_accuracy": accuracy["teacher"],
            "teacher_gap_pp": (accuracy["teacher"] - accuracy["student"]) * 100,
            "student_param_ratio": params["student"] / params["teacher"],
            **student_costs,
            **{f"teacher_{k}": v for k, v in teacher_costs.items()},
        }
        if result.control is not None:
            metrics["control_test_accuracy"] = accuracy["control"]
            metrics["distill_gain_pp"] = (accuracy["student"] - accuracy["control"]) * 100
        check = before_after_latency(teacher.model, student.reloaded().model, data.x_test, cfg.target, "student")
        metrics.update(check.metrics)
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.timed_form", check.form)
        for warning in check.warnings:
            print(warning, file=sys.stderr)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        table = pd.DataFrame(
            {"model": list(rows), "architecture": [a.description["architecture"]["name"] for a in rows.values()],
             "params": [params[n] for n in rows], "test_accuracy": [accuracy[n] for n in rows]}
        )  # fmt: skip
        tracking.log_table(table, "distillation")
        print(table.to_string(index=False, float_format="%.4f"), file=sys.stderr)
        return run.info.run_id


CONFIG = DistillConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(DistillConfig, argv)))


if __name__ == "__main__":
    main()
