"""Scoring a model on a split: accuracy, loss, per-class precision/recall/F1 and the confusion
matrix, and its plot (the measuring core of the ``evaluate`` step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from shrinkflow.training import predict_logits

__all__ = ["Evaluation", "evaluate", "plot_confusion"]


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
