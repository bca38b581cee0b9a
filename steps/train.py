"""Train a baseline model.

Consumes: a dataset (``digits`` by default) and a zoo model name.
Produces: an MLflow run with the config as params, the train/val/test splits as dataset inputs,
per-epoch ``train_loss``/``val_loss``/``val_accuracy``/``lr``, final ``val_accuracy``,
``test_accuracy``, ``test_loss``, the static ``cost_*`` metrics (``steps._cost``) with
``cost_size_bytes`` measured on the saved checkpoint, and the model
(``models:/<model_id>``, a checkpoint of state dict + architecture JSON). The run id is the last
line printed.

Example:
    python -m steps.train --model cnn --dataset digits --seed 0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from steps._config import ShrinkflowError, config_to_params, parse_config
from steps._cost import cost_summary
from steps._data import DataSplits, load_dataset
from steps._main import run_main
from steps._training import FitResult, fit, resolve_device, score, seed_everything
from steps._zoo import build_model, describe

__all__ = ["CONFIG", "TrainConfig", "main", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Train a baseline model from the zoo on a built-in or user dataset."""

    model: str = field(default="mlp", metadata={"help": "mlp, cnn, cnn1d, lstm, or package.module:factory"})
    dataset: str = field(
        default="digits", metadata={"help": "digits, mnist1d, a .csv/.parquet file, or package.module:function"}
    )
    label_column: str = field(default="label", metadata={"help": "label column of a .csv/.parquet dataset"})
    width: float = field(default=1.0, metadata={"help": "multiplies every layer width of a zoo model"})
    depth: int = field(default=0, metadata={"help": "hidden layers / conv blocks / LSTM layers; 0 = model default"})
    # 150 epochs of 100 at lr 1e-2 is the MNIST-1D paper's budget (~6,000 steps); the cosine
    # schedule, weight decay 0.1 and label smoothing 0.1 lift digits mlp from ~97% to ~98%.
    epochs: int = field(default=150, metadata={"help": "maximum training epochs"})
    batch_size: int = field(default=100, metadata={"help": "training batch size"})
    lr: float = field(default=1e-2, metadata={"help": "peak AdamW learning rate (cosine decay to 0)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decoupled weight decay"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing in [0, 1)"})
    patience: int = field(
        default=30, metadata={"help": "stop after this many epochs without a better val accuracy; 0 = never"}
    )
    seed: int = field(default=0, metadata={"help": "seed for weights and batch order (the split is fixed)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ShrinkflowError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ShrinkflowError(f"patience must be >= 0 (0 = never stop early), got {self.patience}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ShrinkflowError(
                f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ShrinkflowError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def build_description(cfg: TrainConfig, data: DataSplits) -> dict:
    return {
        "architecture": describe(cfg.model, data.input_shape, data.num_classes, cfg.width, cfg.depth),
        "class_names": list(data.class_names),
        "dataset": {"spec": cfg.dataset, "label_column": cfg.label_column},
        "storage": "dense-fp32",
    }


def train(model: nn.Module, data: DataSplits, cfg: TrainConfig, device: torch.device, on_epoch=None) -> FitResult:
    """Fit ``model`` in place on the train split, early-stopping on val accuracy."""
    return fit(model, (data.x_train, data.y_train), (data.x_val, data.y_val), cfg, device, on_epoch)


def execute(cfg: TrainConfig) -> str:
    """Run the step end to end under MLflow; return the run id."""
    import mlflow

    from steps import _tracking

    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.label_column)
    description = build_description(cfg, data)
    seed_everything(cfg.seed)
    model = build_model(description["architecture"])
    with _tracking.step_run("train", config_to_params(cfg)) as run:
        for split in ("train", "val", "test"):
            _tracking.log_dataset(data, split)
        mlflow.set_tag("shrinkflow.device", str(device))
        result = train(model, data, cfg, device, on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch))
        test = score(model, data.x_test, data.y_test, device)
        model_id, size = _tracking.log_model(model, description, data.x_train[:2])
        metrics = {
            "val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            **cost_summary(model, description),
            "cost_size_bytes": size,
        }
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        print(
            f"{cfg.model} on {data.name}: test_accuracy={test['accuracy']:.4f} "
            f"val_accuracy={result.best_val_accuracy:.4f} (best epoch {result.best_epoch}/{result.epochs_run}), "
            f"{size} bytes, model {model_id}",
            file=sys.stderr,
        )
        return run.info.run_id


CONFIG = TrainConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(TrainConfig, argv)))


if __name__ == "__main__":
    main()
