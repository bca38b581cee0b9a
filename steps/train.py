"""Train a baseline model.

Consumes: a dataset (``digits`` by default) and a zoo model name.
Produces: an MLflow run with the config as params, the train/val/test splits as dataset inputs,
per-epoch ``train_loss``/``val_loss``/``val_accuracy``/``lr``, final ``val_accuracy``,
``test_accuracy``, ``test_loss``, the static ``cost_*`` metrics (``shrinkflow.cost``) with
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

from shrinkflow import distributed
from shrinkflow.artifact import new_artifact
from shrinkflow.cli import entry_point
from shrinkflow.config import ShrinkflowError, config_to_params
from shrinkflow.cost import cost, format_bytes
from shrinkflow.data import load_dataset
from shrinkflow.runtime import resolve_device
from shrinkflow.training import Execution, FitSettings, score, train

__all__ = ["TrainConfig", "main"]


@dataclass(frozen=True)
class TrainConfig(FitSettings):
    """Train a baseline model from the zoo on a built-in or user dataset."""

    model: str = field(
        default="mlp", metadata={"help": "mlp, cnn, cnn1d, lstm, transformer, or package.module:factory"}
    )
    dataset: str = field(
        default="digits", metadata={"help": "digits, mnist1d, a .csv/.parquet file, or package.module:function"}
    )
    label_column: str = field(default="label", metadata={"help": "label column of a .csv/.parquet dataset"})
    dataset_args: str = field(
        default="", metadata={"help": "keyword arguments of a dataset function, as a JSON object: '{\"n\": 500}'"}
    )
    width: float = field(default=1.0, metadata={"help": "multiplies every layer width of a zoo model"})
    depth: int = field(default=0, metadata={"help": "hidden layers / conv blocks / LSTM layers; 0 = model default"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})
    compile: bool = field(
        default=False,
        metadata={
            "help": "train through torch.compile (Inductor): tens of seconds of compiling first; for large models"
        },
    )
    parallel: str = field(
        default="ddp",
        metadata={"help": "under torchrun: ddp (whole model per process) or fsdp (weights sharded across processes)"},
    )
    nproc: int = field(
        default=1, metadata={"help": "processes for data-parallel training; > 1 starts the step under torchrun"}
    )

    def __post_init__(self):
        super().__post_init__()
        self.execution()  # an unknown parallel mode fails here
        if self.parallel != "ddp" and self.nproc == 1 and not distributed.launched():
            raise ShrinkflowError(f"parallel {self.parallel} applies to training under torchrun: set nproc > 1")

    def execution(self) -> Execution:
        return Execution(compile=self.compile, parallel=self.parallel)


def execute(cfg: TrainConfig) -> str:
    """Run the step end to end under MLflow; return the run id."""
    from shrinkflow import tracking

    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.label_column, cfg.dataset_args)
    initial = new_artifact(cfg.model, data, cfg.width, cfg.depth, cfg.seed)
    if run_id := distributed.launch_if_asked(
        "steps.train", cfg, tracking.active_run_id()
    ):  # after the checks: bad input is one line
        return run_id
    device = distributed.setup(device)
    if not distributed.is_main():  # the other processes train alongside rank 0 and log nothing
        train(initial, data, cfg, device, execution=cfg.execution())
        return ""
    with tracking.step_run("train", config_to_params(cfg)) as run:
        for split in ("train", "val", "test"):
            tracking.log_dataset(data, split)
        tracking.set_tags({"shrinkflow.device": str(device)})
        if distributed.launched():
            tracking.set_tags({"shrinkflow.parallel": cfg.parallel})
        result = train(initial, data, cfg, device, on_epoch=tracking.epoch_logger(), execution=cfg.execution())
        trained = result.artifact
        test = score(trained.model, data.x_test, data.y_test, torch.device("cpu"))
        model_id = tracking.log_model(trained, data)
        costs = cost(trained)
        metrics = {
            "val_accuracy": result.fit.best_val_accuracy,
            "best_epoch": result.fit.best_epoch,
            "epochs_run": result.fit.epochs_run,
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "params_per_process": result.params_per_process,
            **costs,
        }
        tracking.log_metrics(metrics)
        print(
            f"{cfg.model} on {data.name}: test_accuracy={test['accuracy']:.4f} "
            f"val_accuracy={result.fit.best_val_accuracy:.4f} "
            f"({result.fit.describe(cfg.epochs)}), "
            f"{format_bytes(costs['cost_size_bytes'])}, model {model_id}",
            file=sys.stderr,
        )
        tracking.set_tags({"shrinkflow.model_id": model_id})
        return run.info.run_id


main = entry_point(TrainConfig, execute, __name__)
