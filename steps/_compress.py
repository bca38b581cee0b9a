"""The shell of every step that runs a technique (``shrinkflow.techniques``) on a logged model:
prune, quantize, distill, and any technique registered later.

A step is its technique's settings plus ``SourceOptions`` (the run id of the model it takes,
device, processes, deployment target) and a ``report`` of what only it logs and prints; the
shell does the rest alike: load the source model and its data, refuse bad input before a run
starts, start torchrun when asked, run the technique with every epoch's metrics logged, log the
new model, time it before/after in the target, and return the run id.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from shrinkflow import distributed
from shrinkflow.artifact import Artifact
from shrinkflow.cli import about_run
from shrinkflow.config import check_run_id, config_to_params
from shrinkflow.cost import before_after_metrics, cost, format_bytes
from shrinkflow.data import DataSplits
from shrinkflow.latency import TARGET_HELP, TARGETS, before_after_latency, fallback_forms
from shrinkflow.runtime import resolve_device
from shrinkflow.techniques import Technique
from shrinkflow.training import score

__all__ = ["Outcome", "SourceOptions", "compress_step"]

CPU = torch.device("cpu")


@dataclass(frozen=True)
class SourceOptions:
    """The options every technique step adds to its technique's settings (list it first:
    ``class PruneConfig(SourceOptions, PruneSettings)``)."""

    SOURCE: ClassVar[str] = "a train step"  # the step whose run id ``run_id`` names, for its error

    run_id: str = field(kw_only=True, metadata={"help": "run id of the step that logged the model"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})
    nproc: int = field(
        default=1, metadata={"help": "processes for data-parallel training; > 1 starts the step under torchrun"}
    )
    target: str = field(default=TARGETS[0], metadata={"help": TARGET_HELP})

    def __post_init__(self):
        check_run_id(self.run_id, self.SOURCE)
        fallback_forms(self.target)
        super().__post_init__()  # the technique's settings check their own fields


@dataclass
class Outcome:
    """What the shell has made when the step's ``report`` is called."""

    cfg: Any  # the step's config: the technique's settings and SourceOptions
    source: Artifact
    source_costs: dict[str, float]
    data: DataSplits
    result: Any  # the technique's result: ``.artifact`` and what else it returns
    accuracy_before: float  # the source's test accuracy
    test: dict[str, float]  # the new model's test accuracy and loss
    costs: dict[str, float]  # the new model's cost_* (size on its saved checkpoint)
    tables: dict[str, Any] = field(default_factory=dict)  # name -> DataFrame: the report's, logged after it

    @property
    def artifact(self) -> Artifact:
        return self.result.artifact

    def before_after_metrics(self) -> dict[str, float]:
        """test_accuracy(_before), test_loss, cost_* and the source's (baseline_cost_*)."""
        return before_after_metrics(self.accuracy_before, self.test, self.source_costs, self.costs)

    def summary(self, made_by: str, *details: str) -> str:
        """One line: ``made_by``, test accuracy and size before → after, then ``details``."""
        before, size = self.source_costs["cost_size_bytes"], self.costs["cost_size_bytes"]
        return ", ".join([
            f"{made_by}: test_accuracy {self.accuracy_before:.4f} -> {self.test['accuracy']:.4f}",
            f"size {format_bytes(before)} -> {format_bytes(size)} ({before / size:.2f}x smaller)", *details,
        ])  # fmt: skip


def compress_step(
    cfg, technique: Technique, report: Callable[[Outcome], dict[str, float]], splits: tuple[str, ...] = ("train",)
) -> str:
    """Run ``technique`` with ``cfg`` on the model of ``cfg.run_id`` as an MLflow step; return its
    run id. ``report(outcome)`` puts the step's own tables in ``outcome.tables``, prints its
    summary and returns its metrics; the shell logs them, with the before/after timing added.
    ``splits``: the data splits logged as the run's inputs."""
    from shrinkflow import tracking

    device = resolve_device(cfg.device)
    source, source_costs = tracking.load_model(cfg.run_id)
    data = tracking.dataset_of_run(cfg.run_id, source.description)
    if technique.float_only:
        with about_run(cfg.run_id):
            source.require_float(technique.name)
    technique.check(source, cfg, data)  # bad settings for this model fail before a run starts
    accuracy_before = score(source.model, data.x_test, data.y_test, CPU)["accuracy"]
    if run_id := distributed.launch_if_asked(f"steps.{technique.name}", cfg, tracking.active_run_id()):
        return run_id  # after the checks: bad input is one line
    device = distributed.setup(device)
    if not distributed.is_main():  # the other processes train alongside rank 0 and log nothing
        technique.apply(source, data, cfg, device)
        return ""
    with tracking.step_run(technique.name, config_to_params(cfg)) as run:
        tracking.set_tags({"shrinkflow.source_run_id": cfg.run_id})
        for split in splits:
            tracking.log_dataset(data, split)
        result = technique.apply(source, data, cfg, device, on_epoch=tracking.epoch_logger())
        made = result.artifact
        tracking.set_tags({"shrinkflow.model_id": tracking.log_model(made, data, cfg.target)})
        test = score(made.model, data.x_test, data.y_test, CPU)
        check = before_after_latency(source.model, made.reloaded().model, data.x_test, cfg.target, technique.made)
        tracking.set_tags({"shrinkflow.timed_form": check.form})
        for warning in check.warnings:
            print(warning, file=sys.stderr)
        outcome = Outcome(cfg, source, source_costs, data, result, accuracy_before, test, cost(made))
        tracking.log_metrics({**report(outcome), **check.metrics})
        for name, table in outcome.tables.items():
            tracking.log_table(table, name)
        return run.info.run_id
