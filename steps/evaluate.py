"""Evaluate a logged model on one split of the data it was trained on.

Consumes: the run id of a step that logged a model (train now; prune, quantize, distill later).
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``<split>_accuracy``,
``<split>_loss``, the static cost of the reloaded model (``cost_params``,
``cost_nonzero_params``, ``cost_sparsity``, ``cost_macs``, ``cost_macs_effective``,
``cost_bops``, ``cost_size_bytes`` measured on the saved checkpoint,
``cost_size_entropy_bytes``), a per-layer cost and sparsity table (``layers.json``), a
per-class precision/recall table (``per_class_<split>.json``) and a confusion-matrix PNG
(``confusion_<split>.png``). The run id is the last line printed.

Example:
    python -m steps.evaluate --run-id <train run id> --split test
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from shrinkflow.checkpoint import runs_on_cpu_only
from shrinkflow.cli import entry_point
from shrinkflow.config import ShrinkflowError, check_run_id, config_to_params
from shrinkflow.cost import cost_line, layer_costs, layer_table
from shrinkflow.data import SPLITS
from shrinkflow.evaluation import evaluate, plot_confusion
from shrinkflow.runtime import resolve_device

__all__ = ["EvaluateConfig", "main"]


@dataclass(frozen=True)
class EvaluateConfig:
    """Score a logged model on a split and log accuracy, per-class table, confusion matrix and cost."""

    run_id: str = field(metadata={"help": "run id of the step that logged the model"})
    split: str = field(default="test", metadata={"help": "train, val or test"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})

    def __post_init__(self):
        check_run_id(self.run_id)
        if self.split not in SPLITS:
            raise ShrinkflowError(f"unknown split {self.split!r}: choose one of {', '.join(SPLITS)}")


def execute(cfg: EvaluateConfig) -> str:
    from shrinkflow import tracking

    device = resolve_device(cfg.device)
    artifact, costs = tracking.load_model(cfg.run_id)
    model, description = artifact.model, artifact.description
    if runs_on_cpu_only(description):
        device = torch.device("cpu")
    layers = layer_table(layer_costs(model, description["architecture"]["input_shape"], description.get("bits")))
    data = tracking.dataset_of_run(cfg.run_id, description)
    x, y = data.split(cfg.split)
    with tracking.step_run("evaluate", config_to_params(cfg)) as run:
        tracking.set_tags({"shrinkflow.source_run_id": cfg.run_id})
        tracking.log_dataset(data, cfg.split)
        result = evaluate(model, x, y, description["class_names"], device)
        tracking.log_metrics({f"{cfg.split}_accuracy": result.accuracy, f"{cfg.split}_loss": result.loss, **costs})
        tracking.log_table(result.per_class, f"per_class_{cfg.split}")
        tracking.log_table(layers, "layers")
        title = f"{description['architecture']['name']} on {data.name} ({cfg.split})"
        figure = plot_confusion(result.confusion, description["class_names"], title)
        tracking.log_figure(figure, f"confusion_{cfg.split}.png")
        print(result.per_class.to_string(index=False, float_format="%.3f"), file=sys.stderr)
        print(
            f"{cfg.split}_accuracy={result.accuracy:.4f} {cfg.split}_loss={result.loss:.4f}, {cost_line(costs)}",
            file=sys.stderr,
        )
        return run.info.run_id


main = entry_point(EvaluateConfig, execute, __name__)
