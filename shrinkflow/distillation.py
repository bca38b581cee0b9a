"""Knowledge distillation (Hinton, Vinyals & Dean 2015): settings and the ``distill`` core.

Loss (per batch; teacher logits computed without gradients):
    α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(y, z_s)
The T² keeps the soft term's gradients on the scale of the hard term's as T changes.

``input_noise`` > 0 adds Gaussian noise (that fraction of the train inputs' standard deviation) to
every training batch, fresh each step; the teacher is asked about the same noisy inputs the
student sees, so the student matches the teacher's function around each sample rather than at
the samples alone ("function matching", Beyer et al. 2022), and long schedules keep paying. The
control — the same student trained from scratch with the same budget, recipe, seed and noise,
minus the teacher — shows what the teacher itself adds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowError
from shrinkflow.cost import model_parameters
from shrinkflow.data import DataSplits
from shrinkflow.runtime import seed_everything
from shrinkflow.training import FitResult, FitSettings, LossFn, fit
from shrinkflow.zoo import build_model, check_model, describe

__all__ = [
    "DistillResult",
    "DistillSettings",
    "check_distilling",
    "distill",
    "distillation_loss",
    "input_noise",
    "student_architecture",
]


@dataclass(frozen=True)
class DistillSettings(FitSettings):
    """The student, the loss, and the recipe the student and its control share."""

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
    # Soft targets regularize already: the student and its control get light weight decay and
    # no label smoothing (smoothing erases the teacher's "dark knowledge", Müller et al. 2019).
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the hard-label term"})
    patience: int = field(default=0, metadata={"help": "early stopping patience in epochs; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed of student and control weights and batch order"})

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ShrinkflowError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ShrinkflowError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.input_noise < 0:
            raise ShrinkflowError(f"input_noise must be >= 0, got {self.input_noise}")


@dataclass
class DistillResult:
    artifact: Artifact  # the student
    control: Artifact | None
    fit: FitResult


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


def student_architecture(settings: DistillSettings, teacher_arch: dict) -> dict:
    name = settings.student or teacher_arch["name"]
    return describe(
        name, teacher_arch["input_shape"], teacher_arch["num_classes"], settings.student_width, settings.student_depth,
        names=("student_width", "student_depth"),
    )  # fmt: skip


def check_distilling(teacher: Artifact, settings: DistillSettings, data: DataSplits) -> dict:
    """Fail on a student that cannot learn from ``teacher``; return the student's architecture."""
    arch = student_architecture(settings, teacher.description["architecture"])
    example = data.x_train[:2]
    with torch.no_grad():
        teacher_out = copy.deepcopy(teacher.model).cpu().eval()(example).shape[-1]
    student = build_model(arch)
    check_model(student, example, teacher_out, arch["name"])  # the teacher's classes, this data's layout
    sizes = [sum(p.numel() for p in model_parameters(model)) for model in (student, teacher.model)]
    if sizes[0] >= sizes[1]:
        raise ShrinkflowError(
            f"the student ({arch['name']}, {sizes[0]} parameters) would not be smaller than its teacher ({sizes[1]}): "
            "set student_width below 1 or a smaller student_depth (a factory must take width and depth for "
            "them to apply), or name a smaller model with student=package.module:factory"
        )
    return arch


def input_noise(std: float, seed: int):
    """An ``augment`` for ``fit`` adding N(0, std²) noise, drawn from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)

    def augment(inputs: torch.Tensor) -> torch.Tensor:
        return inputs + std * torch.randn(inputs.shape, generator=generator).to(inputs.device)

    return augment


def distill(
    teacher: Artifact, data: DataSplits, settings: DistillSettings, device: torch.device, *, on_epoch=None
) -> DistillResult:
    """Train a new student on ``teacher``'s soft targets (and, with ``control``, the same student
    from scratch); both start from the same seeded weights and see the same batches."""
    arch = check_distilling(teacher, settings, data)
    teacher_model = copy.deepcopy(teacher.model).to(device)
    noise_std = settings.input_noise * float(data.x_train.std())

    def noise():  # the student and its control see the very same noise
        return input_noise(noise_std, settings.seed) if settings.input_noise else None

    seed_everything(settings.seed)
    student = build_model(arch)
    loss = distillation_loss(teacher_model, settings.temperature, settings.alpha, settings.label_smoothing)
    result = fit(student, data.train, data.val, settings, device, on_epoch=on_epoch, loss_fn=loss, augment=noise())
    control = None
    if settings.control:
        seed_everything(settings.seed)  # same initial weights and batch order as the student
        control = build_model(arch)
        fit(control, data.train, data.val, settings, device, augment=noise())  # the hard-label cross-entropy alone
    # A student is a new float model: of the teacher's description it keeps what names the data.
    description = {"architecture": arch, **_data_keys(teacher.description), "storage": "dense-fp32"}
    return DistillResult(
        Artifact(student.cpu(), description),
        Artifact(control.cpu(), dict(description)) if control is not None else None,
        result,
    )


def _data_keys(description: dict) -> dict:
    return {key: description[key] for key in ("class_names", "dataset", "preprocessing") if key in description}
