"""Training and scoring loops: pure PyTorch, no MLflow, no files."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from shrinkflow import distributed
from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import DataSplits

__all__ = [
    "PARALLEL",
    "Execution",
    "FineTuneSettings",
    "StopTraining",
    "FitResult",
    "FitSettings",
    "TrainResult",
    "fit",
    "fit_loss",
    "predict_logits",
    "score",
    "steps_per_epoch",
    "train",
]


def _autocast(device: torch.device):
    # bf16 autocast on CUDA only: on CPU it is slower and would make CPU runs differ from fp32.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Logits (N, classes) in fp32 on the CPU."""
    model.eval()
    chunks = []
    for start in range(0, len(x), batch_size):
        with _autocast(device):
            chunks.append(model(x[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y)."""
    logits = predict_logits(model, x, device)
    return {
        "accuracy": (logits.argmax(1) == y).double().mean().item(),
        "loss": nn.functional.cross_entropy(logits, y).item(),
    }


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by ``fit``'s ``on_epoch`` hook to end training after this epoch: the model keeps
    its best weights so far, as when ``patience`` runs out (e.g. a search trial that cannot
    reach its accuracy floor: its model is still measured, so the search learns from it)."""


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets, inputs)


@dataclass(frozen=True)
class FitSettings:
    """The knobs ``fit`` reads, with the baseline's defaults; every technique's settings extend
    it (with their own defaults) so one check covers all of them."""

    MIN_EPOCHS: ClassVar[int] = 1  # 0 where training is optional (fine-tuning after pruning)

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

    def __post_init__(self):
        if self.epochs < self.MIN_EPOCHS:
            raise ShrinkflowError(f"epochs must be >= {self.MIN_EPOCHS}, got {self.epochs}")
        if self.batch_size < 1:
            raise ShrinkflowError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.patience < 0:
            raise ShrinkflowError(f"patience must be >= 0 (0 = never stop early), got {self.patience}")
        if not (0 < self.lr < math.inf and 0 <= self.weight_decay < math.inf):  # NaN fails both
            raise ShrinkflowError(
                f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ShrinkflowError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def fit_loss(logits: torch.Tensor, targets: torch.Tensor, settings: FitSettings) -> torch.Tensor:
    """``fit``'s loss: label-smoothed cross-entropy (a ``loss_fn`` may add a term to it)."""
    return nn.functional.cross_entropy(logits, targets, label_smoothing=settings.label_smoothing)


@dataclass(frozen=True)
class FineTuneSettings(FitSettings):
    """``FitSettings`` for retraining a trained model (pruning, quantization): no weight decay
    and no early stop by default, and training may be skipped (``epochs`` 0)."""

    MIN_EPOCHS: ClassVar[int] = 0

    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    patience: int = field(default=0, metadata={"help": "early stopping patience in epochs; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed for fine-tuning batch order"})


PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class Execution:
    """How ``fit`` runs, not what it learns. Under torchrun, ``parallel`` is ``ddp`` (every
    process holds the whole model; gradients are averaged) or ``fsdp`` (FSDP2 ``fully_shard``:
    every process holds 1/N of each layer's weights, gradients and optimizer state, and gathers
    a layer's weights only while computing it: for a model too big for one device).
    ``compile`` trains through ``torch.compile`` (Inductor): tens of seconds of compiling up
    front, paid back only where kernels, not Python, dominate a step."""

    compile: bool = False
    parallel: str = "ddp"

    def __post_init__(self):
        if self.parallel not in PARALLEL:
            raise ShrinkflowError(f"unknown parallel mode {self.parallel!r}: choose {', '.join(PARALLEL)}")


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_val_accuracy: float
    stopped_early: bool

    def describe(self, epochs: int) -> str:
        """``best epoch 35, stopped early at 35 of 150``, or ``best epoch 140 of 150``."""
        if self.stopped_early:
            return f"best epoch {self.best_epoch}, stopped early at {self.epochs_run} of {epochs}"
        return f"best epoch {self.best_epoch} of {self.epochs_run}"


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    settings: FitSettings,
    device: torch.device,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    first_eligible_epoch: int = 1,
    loss_fn: LossFn | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    execution: Execution = Execution(),
) -> FitResult:
    """AdamW with a cosine learning-rate schedule and label smoothing; early stopping on
    validation accuracy (``patience`` epochs without improvement, 0 = never). ``model`` ends
    with its best-validation weights. ``on_epoch(epoch, metrics)`` receives train_loss, val_loss,
    val_accuracy and lr after each epoch, and may raise ``StopTraining`` to end training there;
    ``after_step(step)`` runs after every optimizer step (steps counted from 1), e.g. to keep
    pruned weights at zero. Epochs before
    ``first_eligible_epoch`` are trained but never kept as best (e.g. while a pruning schedule is
    still ramping up). ``loss_fn(logits, targets, inputs)`` replaces the default
    label-smoothed cross-entropy (e.g. a distillation loss that asks a teacher about ``inputs``);
    ``augment(inputs)`` transforms each training batch before the model (and ``loss_fn``) sees it.
    ``execution`` says how (``Execution``): under torchrun the model trains as
    DistributedDataParallel or, sharded, with FSDP2, each process on its share of every batch.
    """
    for split, (x, _) in (("train", train), ("val", val)):
        if len(x) == 0:
            raise ShrinkflowError(
                f"the {split} split is empty: training needs samples in train, and in val to score epochs"
            )
    try:
        return _fit(
            model, train, val, settings, device, on_epoch, after_step, first_eligible_epoch, loss_fn, augment,
            execution,
        )  # fmt: skip
    except torch.OutOfMemoryError:
        raise ShrinkflowError(_out_of_memory(settings, device)) from None
    except RuntimeError as exc:  # the CPU allocator raises a plain RuntimeError
        if "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        raise ShrinkflowError(_out_of_memory(settings, device)) from None


def _out_of_memory(settings: FitSettings, device: torch.device) -> str:
    return f"training ran out of {device.type} memory at batch_size {settings.batch_size}: pass a smaller --batch-size"


def _fit(model, train, val, settings, device, on_epoch, after_step, first_eligible_epoch, loss_fn, augment, execution):
    model.to(device)
    network = _parallel(model, settings, device, execution.parallel)
    if execution.compile:
        network = torch.compile(network)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.epochs, 1))
    order = torch.Generator().manual_seed(settings.seed)  # batch order depends on the seed alone
    best_state, best_accuracy, best_epoch, improved_epoch, epoch = None, -1.0, 0, 0, 0
    # disable=None: a bar on a terminal, silence in logs and CI
    progress = tqdm(
        range(1, settings.epochs + 1), desc="train", unit="epoch", leave=False, mininterval=1.0, disable=None
    )
    for epoch in progress:
        lr = optimizer.param_groups[0]["lr"]
        train_loss = _train_epoch(
            network, optimizer, train, settings, order, device, after_step, epoch, loss_fn, augment
        )
        schedule.step()
        val_metrics = _score_shared(model, *val, device)
        metrics = {
            "train_loss": train_loss,
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
            "lr": lr,
        }
        progress.set_postfix(loss=f"{train_loss:.4f}", val_acc=f"{val_metrics['accuracy']:.4f}")
        stop = _asks_to_stop(on_epoch, epoch, metrics)
        if epoch < first_eligible_epoch:
            improved_epoch = epoch
            if stop:
                break
            continue
        if val_metrics["accuracy"] > best_accuracy:
            improved_epoch = epoch
        # >= keeps the later of equally accurate epochs (lower learning rate, usually lower loss),
        # but only a strictly better accuracy resets the patience counter.
        if val_metrics["accuracy"] >= best_accuracy:
            best_state, best_accuracy, best_epoch = copy.deepcopy(model.state_dict()), val_metrics["accuracy"], epoch
        if stop or (settings.patience and epoch - improved_epoch >= settings.patience):
            break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(best_epoch, epoch, max(best_accuracy, 0.0), stopped_early=epoch < settings.epochs)


def _asks_to_stop(on_epoch, epoch: int, metrics: dict[str, float]) -> bool:
    if on_epoch is None:
        return False
    try:
        on_epoch(epoch, metrics)
    except StopTraining:
        return True
    return False


def _parallel(model: nn.Module, settings: FitSettings, device: torch.device, parallel: str) -> nn.Module:
    """Under torchrun, ``model`` as DistributedDataParallel (it starts from rank 0's weights)
    or sharded in place by FSDP2 (``fully_shard``: rank 0's weights too); else ``model``."""
    if not torch.distributed.is_initialized():
        return model
    world_size = distributed.group().world_size
    if settings.batch_size < world_size:
        raise ShrinkflowError(
            f"batch_size {settings.batch_size} is smaller than the {world_size} processes that share each batch: "
            f"pass --batch-size >= {world_size}"
        )
    if parallel == "fsdp":
        return distributed.shard_model(model)
    # A conv weight with one input channel has strides DDP's buckets do not copy: a warning
    # about speed that says nothing about results, printed by every process.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _score_shared(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    """``score`` with the samples shared among torchrun's processes and the sums all-reduced:
    every process gets the same numbers, so all take the same early-stopping decisions. Every
    process calls the model equally often (a sharded model gathers its weights in each call)."""
    if not torch.distributed.is_initialized():
        return score(model, x, y, device)
    world_size = distributed.group().world_size
    correct, loss = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), 512 * world_size):
            share = distributed.shard(torch.arange(start, min(start + 512 * world_size, len(x))))
            with _autocast(device):
                logits = model(x[share].to(device)).float().cpu()
            correct += (logits.argmax(1) == y[share]).double().sum().item()
            loss += nn.functional.cross_entropy(logits, y[share], reduction="sum").item() if len(share) else 0.0
    correct, loss = distributed.all_reduce_sum([correct, loss], device)
    return {"accuracy": correct / len(x), "loss": loss / len(x)}


@dataclass
class TrainResult:
    artifact: Artifact
    fit: FitResult
    params_per_process: int  # weights this process held while training (1/N of them under fsdp)


def train(
    artifact: Artifact, data: DataSplits, settings: FitSettings, device: torch.device, *, on_epoch=None,
    execution: Execution = Execution(),
):  # fmt: skip
    """Train a copy of ``artifact``'s model on the train split, early-stopping on val accuracy;
    return a ``TrainResult`` holding the trained artifact (on the CPU, whole on every process)."""
    artifact.require_float("train")
    trained = artifact.copy()
    result = fit(trained.model, data.train, data.val, settings, device, on_epoch=on_epoch, execution=execution)
    sharded = distributed.is_sharded(trained.model)
    held = sum(p.to_local().numel() if sharded else p.numel() for p in trained.model.parameters())
    if sharded:
        whole = distributed.unsharded(trained.model, trained.description["architecture"])
        trained = Artifact(whole, trained.description)
    trained.model.cpu()
    return TrainResult(trained, result, held)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return -(-num_samples // batch_size)


def _train_epoch(
    model, optimizer, train, settings: FitSettings, order, device, after_step, epoch, loss_fn, augment
) -> float:
    """One pass over the train split; the mean training loss (over all processes under torchrun)."""
    model.train()
    x, y = train
    world_size = distributed.group().world_size
    permutation = torch.randperm(len(x), generator=order)
    total, seen = 0.0, 0
    step = (epoch - 1) * steps_per_epoch(len(x), settings.batch_size)
    for start in range(0, len(x), settings.batch_size):
        batch = permutation[start : start + settings.batch_size]
        if len(batch) < world_size:  # a last batch too small to give every process a sample:
            batch = batch.repeat(world_size)[:world_size]  # pad by repeating, as DistributedSampler does
        batch = distributed.shard(batch)
        inputs, targets = x[batch].to(device), y[batch].to(device)
        if augment is not None:
            inputs = augment(inputs)
        with _autocast(device):
            logits = model(inputs).float()
        loss = fit_loss(logits, targets, settings) if loss_fn is None else loss_fn(logits, targets, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if after_step is not None:
            after_step(step)
        total, seen = total + loss.item() * len(batch), seen + len(batch)
    total, seen = distributed.all_reduce_sum([total, seen], device)
    return total / max(seen, 1)
