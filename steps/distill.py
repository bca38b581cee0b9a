"""Distill a logged teacher into a smaller student (Hinton, Vinyals & Dean 2015), with a control.

Consumes: the run id of a step that logged the teacher.
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with the student as its model (a
normal checkpoint that prune, quantize and benchmark accept), ``test_accuracy`` (student),
``teacher_test_accuracy``, ``control_test_accuracy`` (the same student trained from scratch
with the same budget, recipe and seed, minus the teacher), ``distill_gain_pp``
(student − control, percentage points), ``teacher_gap_pp`` (teacher − student), the student's
``cost_*`` and the teacher's ``teacher_cost_*``, per-epoch metrics of the student, and the
side-by-side table ``distillation.json``/``.csv``. The run id is the last line printed.

Loss (per batch; teacher logits computed without gradients):
    α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(y, z_s)
The T² keeps the soft term's gradients on the scale of the hard term's as T changes.

``input_noise`` > 0 adds Gaussian noise (that fraction of the train inputs' standard deviation) to
every training batch, fresh each step; the teacher is asked about the same noisy inputs the
student sees, so the student matches the teacher's function around each sample rather than at
the samples alone ("function matching", Beyer et al. 2022), and long schedules keep paying. The
control gets the same noise, so the gain is the teacher's alone.

Example:
    python -m steps.distill --run-id <teacher run id> --student cnn1d --student-width 0.4 --student-depth 4 \
        --input-noise 0.2 --epochs 600
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from steps._config import ShrinkflowError, config_to_params, parse_config
from steps._cost import cost_summary
from steps._data import DataSplits, dataset_of
from steps._main import run_main
from steps._training import LossFn, fit, resolve_device, score, seed_everything
from steps._zoo import build_model, describe

__all__ = ["CONFIG", "DistillConfig", "distill", "distillation_loss", "main"]


@dataclass(frozen=True)
class DistillConfig:
    """Train a small student on a logged teacher's soft targets, and the same student from scratch."""

    run_id: str = field(metadata={"help": "run id of the step that logged the teacher"})
    student: str = field(default="", metadata={"help": "zoo model or package.module:factory; empty = the teacher's"})
    student_width: float = field(default=0.5, metadata={"help": "width multiplier of a zoo student"})
    student_depth: int = field(default=0, metadata={"help": "depth of a zoo student; 0 = the model's default"})
    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T > 0 of the soft targets"})
    alpha: float = field(default=0.9, metadata={"help": "weight in [0, 1] of the soft-target term"})
    control: bool = field(default=True, metadata={"help": "also train the student from scratch as a control"})
    input_noise: float = field(
        default=0.0, metadata={"help": "std of Gaussian noise on training inputs, as a fraction of theirs; 0 = none"}
    )
    epochs: int = field(default=150, metadata={"help": "training epochs (student and control alike)"})
    batch_size: int = field(default=100, metadata={"help": "training batch size"})
    lr: float = field(default=1e-2, metadata={"help": "peak AdamW learning rate (cosine decay to 0)"})
    # Soft targets regularize already: the student and its control get light weight decay and
    # no label smoothing (smoothing erases the teacher's "dark knowledge", Müller et al. 2019).
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the hard-label term"})
    patience: int = field(default=0, metadata={"help": "early stopping patience in epochs; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed of student and control weights and batch order"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})

    def __post_init__(self):
        if not self.run_id.strip():
            raise ShrinkflowError("run_id is required: pass the run id of the teacher's train step")
        if not self.temperature > 0:
            raise ShrinkflowError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ShrinkflowError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 0:
            raise ShrinkflowError("need epochs >= 1, batch_size >= 1 and patience >= 0")
        if not 0.0 <= self.label_smoothing < 1.0 or self.lr <= 0 or self.weight_decay < 0:
            raise ShrinkflowError("need label_smoothing in [0, 1), lr > 0 and weight_decay >= 0")
        if self.input_noise < 0:
            raise ShrinkflowError(f"input_noise must be >= 0, got {self.input_noise}")


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float, label_smoothing: float) -> LossFn:
    """Hinton's loss for ``fit``: asks ``teacher`` about each batch's inputs, without gradients."""
    teacher.eval()

    def loss(student_logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(inputs).float()
        soft = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
        return alpha * temperature**2 * soft + (1 - alpha) * hard

    return loss


def student_architecture(cfg: DistillConfig, teacher_arch: dict) -> dict:
    name = cfg.student or teacher_arch["name"]
    return describe(
        name, teacher_arch["input_shape"], teacher_arch["num_classes"], cfg.student_width, cfg.student_depth
    )


def _check_outputs(student: nn.Module, teacher: nn.Module, example: torch.Tensor) -> None:
    with torch.no_grad():
        student_out, teacher_out = student.eval()(example).shape[-1], teacher.eval()(example).shape[-1]
    if student_out != teacher_out:
        raise ShrinkflowError(
            f"the student outputs {student_out} values per sample but the teacher {teacher_out}: "
            "a student must predict the teacher's classes"
        )


def input_noise(std: float, seed: int):
    """An ``augment`` for ``fit`` adding N(0, std²) noise, drawn from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)

    def augment(inputs: torch.Tensor) -> torch.Tensor:
        return inputs + std * torch.randn(inputs.shape, generator=generator).to(inputs.device)

    return augment


def distill(teacher: nn.Module, student_arch: dict, data: DataSplits, cfg: DistillConfig, device, on_epoch=None):
    """Return (student, control or None), both trained with ``cfg``'s recipe and seed."""
    seed_everything(cfg.seed)
    student = build_model(student_arch)
    _check_outputs(student, teacher.cpu(), data.x_train[:2])
    teacher.to(device)
    train, val = (data.x_train, data.y_train), (data.x_val, data.y_val)
    noise_std = cfg.input_noise * float(data.x_train.std())

    def noise():  # the student and its control see the very same noise
        return input_noise(noise_std, cfg.seed) if cfg.input_noise else None

    loss = distillation_loss(teacher, cfg.temperature, cfg.alpha, cfg.label_smoothing)
    fit(student, train, val, cfg, device, on_epoch, loss_fn=loss, augment=noise())
    control = None
    if cfg.control:
        seed_everything(cfg.seed)  # same initial weights and batch order as the student
        control = build_model(student_arch)
        fit(control, train, val, cfg, device, augment=noise())  # the hard-label cross-entropy alone
    return student.cpu(), control.cpu() if control is not None else None


def execute(cfg: DistillConfig) -> str:
    import mlflow

    from steps import _tracking

    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        teacher, description, checkpoint = _tracking.load_model(cfg.run_id, Path(tmp))
        teacher_costs = cost_summary(teacher, description, checkpoint)
    data = dataset_of(description)
    student_arch = student_architecture(cfg, description["architecture"])
    _check_outputs(build_model(student_arch), teacher, data.x_train[:2])  # fail before a run starts
    cpu = torch.device("cpu")
    with _tracking.step_run("distill", config_to_params(cfg)) as run:
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        for split in ("train", "val", "test"):
            _tracking.log_dataset(data, split)
        student, control = distill(teacher, student_arch, data, cfg, device, lambda e, m: mlflow.log_metrics(m, step=e))
        student_description = {**description, "architecture": student_arch, "storage": "dense-fp32"}
        model_id, size = _tracking.log_model(student, student_description, data.x_train[:2])
        rows = {"teacher": teacher.cpu(), "student": student, **({"control": control} if control else {})}
        accuracy = {name: score(model, data.x_test, data.y_test, cpu)["accuracy"] for name, model in rows.items()}
        params = {name: sum(p.numel() for p in model.parameters()) for name, model in rows.items()}
        metrics = {
            "test_accuracy": accuracy["student"],
            "teacher_test_accuracy": accuracy["teacher"],
            "teacher_gap_pp": (accuracy["teacher"] - accuracy["student"]) * 100,
            "student_param_ratio": params["student"] / params["teacher"],
            **cost_summary(student, student_description),
            "cost_size_bytes": size,
            **{f"teacher_{k}": v for k, v in teacher_costs.items()},
        }
        if control is not None:
            metrics["control_test_accuracy"] = accuracy["control"]
            metrics["distill_gain_pp"] = (accuracy["student"] - accuracy["control"]) * 100
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        table = pd.DataFrame(
            {"model": list(rows), "architecture": [description["architecture"]["name"], student_arch["name"],
             *([student_arch["name"]] if control else [])], "params": [params[n] for n in rows],
             "test_accuracy": [accuracy[n] for n in rows]}
        )  # fmt: skip
        _tracking.log_table(table, "distillation")
        print(table.to_string(index=False, float_format="%.4f"), file=sys.stderr)
        return run.info.run_id


CONFIG = DistillConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(DistillConfig, argv)))


if __name__ == "__main__":
    main()
