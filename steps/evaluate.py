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

import numpy as np
import pandas as pd
import torch
from torch import nn

from shrinkflow.checkpoint import runs_on_cpu_only
from shrinkflow.cli import run_main
from shrinkflow.config import ShrinkflowError, check_run_id, config_to_params, parse_config
from shrinkflow.cost import layer_costs, layer_table
from shrinkflow.data import SPLITS
from shrinkflow.runtime import resolve_device
from shrinkflow.training import predict_logits

__all__ = ["CONFIG", "EvaluateConfig", "Evaluation", "evaluate", "main"]


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


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    per_class: pd.DataFrame  # one row per class: precision, recall, f1, support
    confusion: np.ndarray  # (classes, classes): rows true, columns predicted


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_names, device: torch.device) -> Evaluation:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    logits = predict_logits(model.to(device), x, device)
    predicted = logits.argmax(1).numpy()
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y.numpy(), predicted, labels=labels, zero_division=0
    )
    per_class = pd.DataFrame(
        {"class": list(class_names), "precision": precision, "recall": recall, "f1": f1, "support": support}
    )
    return Evaluation(
        accuracy=float((predicted == y.numpy()).mean()),
        loss=nn.functional.cross_entropy(logits, y).item(),
        per_class=per_class,
        confusion=confusion_matrix(y.numpy(), predicted, labels=labels),
    )


def plot_confusion(confusion: np.ndarray, class_names, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(confusion, cmap="Blues")
    ticks = range(len(class_names))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    for (row, col), count in np.ndenumerate(confusion):
        color = "white" if count > confusion.max() / 2 else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    return figure


def execute(cfg: EvaluateConfig) -> str:
    import mlflow

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
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        tracking.log_dataset(data, cfg.split)
        result = evaluate(model, x, y, description["class_names"], device)
        mlflow.log_metrics({f"{cfg.split}_accuracy": result.accuracy, f"{cfg.split}_loss": result.loss, **costs})
        tracking.log_table(result.per_class, f"per_class_{cfg.split}")
        tracking.log_table(layers, "layers")
        title = f"{description['architecture']['name']} on {data.name} ({cfg.split})"
        figure = plot_confusion(result.confusion, description["class_names"], title)
        tracking.log_figure(figure, f"confusion_{cfg.split}.png")
        print(result.per_class.to_string(index=False, float_format="%.3f"), file=sys.stderr)
        print(
            f"{cfg.split}_accuracy={result.accuracy:.4f} {cfg.split}_loss={result.loss:.4f} "
            + " ".join(f"{k}={v:g}" for k, v in costs.items()),
            file=sys.stderr,
        )
        return run.info.run_id


CONFIG = EvaluateConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(EvaluateConfig, argv)))


if __name__ == "__main__":
    main()
