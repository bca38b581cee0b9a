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
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from shrinkflow.cli import entry_point
from shrinkflow.cost import cost
from shrinkflow.distillation import DistillSettings
from shrinkflow.techniques import technique
from shrinkflow.training import score
from steps._compress import CPU, Outcome, SourceOptions, compress_step

__all__ = ["DistillConfig", "main"]


@dataclass(frozen=True)
class DistillConfig(SourceOptions, DistillSettings):
    """Train a small student on a logged teacher's soft targets, and the same student from scratch."""

    SOURCE: ClassVar[str] = "the teacher's train step"


def _report(outcome: Outcome) -> dict[str, float]:
    data, control = outcome.data, outcome.result.control
    rows = {"teacher": outcome.source, "student": outcome.artifact, **({"control": control} if control else {})}
    accuracy = {"teacher": outcome.accuracy_before, "student": outcome.test["accuracy"]}
    if control is not None:
        accuracy["control"] = score(control.model, data.x_test, data.y_test, CPU)["accuracy"]
    # cost_params counts an int8 model's packed weights too (its .parameters() are empty); the
    # teacher's and the student's are measured already
    params = {"teacher": outcome.source_costs["cost_params"], "student": outcome.costs["cost_params"]}
    if control is not None:
        params["control"] = cost(control)["cost_params"]
    metrics = {
        "test_accuracy": accuracy["student"],
        "teacher_test_accuracy": accuracy["teacher"],
        "teacher_gap_pp": (accuracy["teacher"] - accuracy["student"]) * 100,
        "student_param_ratio": params["student"] / params["teacher"],
        **outcome.costs,
        **{f"teacher_{k}": v for k, v in outcome.source_costs.items()},
    }
    if control is not None:
        metrics["control_test_accuracy"] = accuracy["control"]
        metrics["distill_gain_pp"] = (accuracy["student"] - accuracy["control"]) * 100
    table = pd.DataFrame(
        {"model": list(rows), "architecture": [a.description["architecture"]["name"] for a in rows.values()],
         "params": [params[n] for n in rows], "test_accuracy": [accuracy[n] for n in rows]}
    )  # fmt: skip
    outcome.tables["distillation"] = table
    print(table.to_string(index=False, float_format="%.4f"), file=sys.stderr)
    return metrics


def execute(cfg: DistillConfig) -> str:
    return compress_step(cfg, technique("distill"), _report, splits=("train", "val", "test"))


main = entry_point(DistillConfig, execute, __name__)
