"""Pruning as a technique: settings, the method registry and the ``prune`` core.

A method is a function registered under its name with ``@pruning_method``; it receives a copy of
the model and returns a ``Pruning``: the pruned model, the masks fine-tuning must hold (none for
methods that remove channels physically) and, where the method keeps pruning while fine-tuning
(``gradual``), the hook that does it. ``prune`` does the rest for every method alike — the
guards, the fine-tuning with masks enforced, the sparsity and the new description — and
``tests/test_methods.py`` runs its contract over every registered method.

Methods:
- ``threshold``: zero every weight with |w| < t (``thresholds``: one t, or a JSON mapping of
  layer names to t, ``"*"`` for the rest);
- ``global``: magnitude pruning to ``sparsity`` across all prunable layers at once;
- ``layerwise``: the same ``sparsity`` in every prunable layer;
- ``gradual``: Zhu & Gupta's cubic schedule from ``initial_sparsity`` to ``sparsity`` over the
  first ``ramp_epochs`` epochs of fine-tuning (global ranking, updated every epoch);
- ``variational``: sparse variational dropout (Molchanov et al. 2017): a dropout rate learned per
  weight while fine-tuning (``kl_weight``: the prior's pull), the noisiest weights removed; the
  sparsity is learned, not set;
- ``structured``: physically remove ``sparsity`` of the channels/neurons of every layer but the
  output, ranked by their weights' ``norm`` (Torch-Pruning's dependency graph).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shrinkflow._masks import (
    Masks,
    apply_masks,
    cubic_sparsity,
    global_masks,
    layerwise_masks,
    masks_sparsity,
    prunable_weights,
    sparsity_error,
    structured_prune,
    threshold_masks,
)
from shrinkflow._variational import VariationalWeights
from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowError, ShrinkflowWarning, check_applies, check_method
from shrinkflow.cost import left_weights_line, weight_tensors
from shrinkflow.data import DataSplits
from shrinkflow.runtime import seed_everything
from shrinkflow.training import FineTuneSettings, FitResult, LossFn, fit, fit_loss, steps_per_epoch
from shrinkflow.zoo import RESIZABLE, build_model, module_shapes

__all__ = [
    "NORMS",
    "PRUNING_METHODS",
    "PruneResult",
    "PruneSettings",
    "Pruning",
    "PruningMethod",
    "check_pruning",
    "prune",
    "pruning_method",
]

NORMS = {"l1": 1, "l2": 2}


@dataclass
class Pruning:
    """What a method hands to fine-tuning."""

    model: nn.Module
    masks: Masks  # weights that must stay zero; empty when channels were removed
    after_step: Callable[[int], None] | None = None  # None: re-apply the masks after every step
    first_eligible_epoch: int = 1  # epochs before it are never kept as the best
    loss_fn: LossFn | None = None  # fine-tuning's loss, when not the label-smoothed cross-entropy
    finish: Callable[[], None] | None = None  # after fine-tuning: fills ``masks`` (a method that learns them)


@dataclass(frozen=True)
class PruningMethod:
    name: str
    start: Callable[[nn.Module, PruneSettings, DataSplits], Pruning]
    structural: bool = False  # removes channels: the model changes shape instead of holding zeros
    needs_epochs: bool = False  # prunes while fine-tuning
    reads: tuple[str, ...] = ()  # the method-specific settings it reads (the others stay at their defaults)
    requires: Mapping[str, Any] = field(default_factory=dict)  # settings it cannot run without (an example)

    @property
    def minimal(self) -> dict[str, Any]:
        """Settings with which it runs at all: what it requires, an epoch where it prunes while
        fine-tuning."""
        return {**self.requires, **({"epochs": 1} if self.needs_epochs else {})}


PRUNING_METHODS: dict[str, PruningMethod] = {}


def pruning_method(
    name: str, *, reads: tuple[str, ...] = (), structural: bool = False, needs_epochs: bool = False, requires=None
):
    """Register ``start(model, settings, data) -> Pruning`` as the pruning method ``name``, which
    reads the method-specific settings ``reads``."""

    def register(start):
        PRUNING_METHODS[name] = PruningMethod(name, start, structural, needs_epochs, tuple(reads), requires or {})
        return start

    return register


# Ranked globally, a small layer can lose nearly all its weights; every layer keeps this share at
# least. 2% never binds on the zoo mlp at 95% (its smallest layer keeps 3%; a floor that binds
# there lowered validation accuracy) and still allows 98% sparsity: docs/steps/prune.md.
MIN_LAYER_DENSITY = 0.02
# variational: the prior's weight. 1 is the evidence lower bound; on a few thousand samples the
# prior outweighs the data and prunes what accuracy needs (docs/steps/prune.md).
KL_WEIGHT = 0.1


@dataclass(frozen=True)
class PruneSettings(FineTuneSettings):
    """How to prune and fine-tune (the defaults fine-tune a trained model for 60 epochs)."""

    epochs: int = field(default=60, metadata={"help": "fine-tuning epochs after pruning (0 = none)"})
    # Fine-tuning starts from trained weights: under a third of the training learning rate.
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate of fine-tuning (cosine decay)"})
    method: str = field(
        default="global", metadata={"help": "threshold, global, layerwise, gradual, variational or structured"}
    )
    sparsity: float = field(
        default=0.9, metadata={"help": "target share of zero weights in [0, 1); structured: share of channels removed"}
    )
    thresholds: str = field(default="", metadata={"help": 'threshold method: one t >= 0, or JSON {"layer": t, "*": t}'})
    min_layer_density: float = field(
        default=MIN_LAYER_DENSITY,
        metadata={"help": "global/gradual: every layer keeps at least this share of its weights, in [0, 1)"},
    )
    layer_sparsity: str = field(
        default="",
        metadata={"help": 'layerwise: JSON {"layer": s, "*": s} of per-layer sparsities; "*" default = sparsity'},
    )
    layers: str = field(default="", metadata={"help": "comma-separated layers to prune (unstructured); empty = all"})
    norm: str = field(default="l1", metadata={"help": "structured: channel importance norm, l1 or l2"})
    initial_sparsity: float = field(default=0.0, metadata={"help": "gradual: sparsity at the start of the ramp"})
    ramp_epochs: int = field(
        default=0,
        metadata={"help": "gradual: epochs to reach the target; variational: to reach the full KL weight; 0 = 2/3 "
                  "of epochs"},
    )  # fmt: skip
    kl_weight: float = field(
        default=KL_WEIGHT,
        metadata={"help": "variational: weight of the prior's KL term per training sample (1 = the evidence lower "
                  "bound); larger prunes more"},
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        check_method(self, PRUNING_METHODS, "pruning")
        for name in ("sparsity", "initial_sparsity"):
            if message := sparsity_error(getattr(self, name), name):
                raise ShrinkflowError(message)
        if self.method == "threshold":
            self.threshold_map()  # validates
        if not 0 <= self.min_layer_density < 1:
            raise ShrinkflowError(f"min_layer_density must be in [0, 1), got {self.min_layer_density}")
        self.layer_sparsity_map()  # validates
        if self.norm not in NORMS:
            raise ShrinkflowError(f"unknown norm {self.norm!r}: choose {', '.join(NORMS)}")
        if not 0 <= self.kl_weight < float("inf"):
            raise ShrinkflowError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.ramp_epochs < 0:
            raise ShrinkflowError(f"ramp_epochs must be >= 0, got {self.ramp_epochs}")
        if PRUNING_METHODS[self.method].needs_epochs and self.epochs < 1:
            raise ShrinkflowError(f"{self.method} pruning happens during fine-tuning: set epochs >= 1")
        check_applies(self, PRUNING_METHODS)

    def threshold_map(self) -> dict[str, float]:
        text = self.thresholds.strip()
        if not text:
            raise ShrinkflowError('method threshold needs thresholds: one value such as 0.05, or JSON {"layer": t}')
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise ShrinkflowError(f"thresholds must be a number or a JSON object, got {text!r}") from None
        mapping = {"*": parsed} if isinstance(parsed, (int, float)) else parsed
        if not isinstance(mapping, dict) or not all(isinstance(v, (int, float)) for v in mapping.values()):
            raise ShrinkflowError(f"thresholds must be a number or a JSON object of numbers, got {text!r}")
        if any(v < 0 for v in mapping.values()):
            raise ShrinkflowError(f"thresholds must be >= 0, got {text}")
        return {str(k): float(v) for k, v in mapping.items()}

    def layer_sparsity_map(self) -> dict[str, float]:
        """Per-layer sparsities of ``layerwise`` (``*``: the rest, ``sparsity`` by default)."""
        text = self.layer_sparsity.strip()
        if not text:
            return {"*": self.sparsity}
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(v, (int, float)) for v in parsed.values()):
            raise ShrinkflowError(
                f'layer_sparsity must be a JSON object of numbers such as {{"layers.1": 0.9}}, got {text!r}'
            )
        for layer, value in parsed.items():
            if message := sparsity_error(value, f"layer_sparsity of {layer!r}"):
                raise ShrinkflowError(message)
        return {"*": self.sparsity, **{str(k): float(v) for k, v in parsed.items()}}

    def layer_list(self) -> list[str] | None:
        return [name.strip() for name in self.layers.split(",") if name.strip()] or None

    def ramp(self) -> int:
        return self.ramp_epochs or max(1, (2 * self.epochs) // 3)


@dataclass
class PruneResult:
    artifact: Artifact
    masks: Masks  # empty for structural methods
    fit: FitResult | None
    sparsity: float  # share of zeros in the pruned tensors (structural: share of parameters removed)


def check_pruning(artifact: Artifact, settings: PruneSettings, data: DataSplits | None = None) -> None:
    """Fail on what ``prune`` cannot do: a quantized model, layer names the model does not have."""
    artifact.require_float("prune")
    if PRUNING_METHODS[settings.method].structural:
        return
    weights = prunable_weights(artifact.model, settings.layer_list())
    if settings.method == "threshold":
        known = {name.rsplit(".", 1)[0] for name in weights}
        unknown = sorted(set(settings.threshold_map()) - known - {"*"})
        if unknown:
            raise ShrinkflowError(f"thresholds name unknown layer(s) {unknown}: prunable layers are {sorted(known)}")
    if settings.method == "layerwise":
        known = {name.rsplit(".", 1)[0] for name in weights}
        unknown = sorted(set(settings.layer_sparsity_map()) - known - {"*"})
        if unknown:
            raise ShrinkflowError(
                f"layer_sparsity names unknown layer(s) {unknown}: prunable layers are {sorted(known)}"
            )


def prune(
    artifact: Artifact, data: DataSplits, settings: PruneSettings, device: torch.device, *, on_epoch=None
) -> PruneResult:
    """Prune a copy of ``artifact``'s model with ``settings.method``, then fine-tune it with the
    pruned weights held at zero; return the pruned artifact (on the CPU). ``on_epoch(epoch,
    metrics)`` sees the fine-tuning metrics and, for masking methods, the ``sparsity`` reached."""
    check_pruning(artifact, settings)
    method = PRUNING_METHODS[settings.method]
    model = artifact.copy().model
    seed_everything(settings.seed)
    before = sum(p.numel() for p in model.parameters())
    plan = method.start(model, settings, data)
    model, masks = plan.model, plan.masks
    if method.structural:  # before any fine-tuning: a model that cannot be saved usefully is refused now
        _check_rebuilds(artifact.description, model, method, before)
    after_step = plan.after_step
    if after_step is None and masks:
        after_step = lambda step: apply_masks(model, masks)  # noqa: E731  (fine-tuning must not revive a weight)
    report = on_epoch
    if on_epoch is not None and masks:  # the share of zeros so far (it grows under gradual pruning)
        report = lambda epoch, metrics: on_epoch(epoch, {**metrics, "sparsity": masks_sparsity(masks)})  # noqa: E731
    result = None
    if settings.epochs:
        first_eligible = plan.first_eligible_epoch
        result = fit(
            model, data.train, data.val, settings, device,
            on_epoch=report, after_step=after_step, first_eligible_epoch=first_eligible, loss_fn=plan.loss_fn,
        )  # fmt: skip
    if plan.finish is not None:
        plan.finish()
    model.cpu()
    sparsity = masks_sparsity(masks) if masks else 1.0 - sum(p.numel() for p in model.parameters()) / before
    description = _pruned_description(artifact.description, model, method, sparsity)
    if masks and not settings.layer_list():  # layers chosen by the user are left alone on purpose
        unpruned = {name: tensor for name, tensor in weight_tensors(model).items() if name not in masks}
        did, cannot = f"{method.name} pruning left", f"{method.name} does not prune"
        if line := left_weights_line(did, "dense", cannot, model, unpruned, artifact.model):
            warnings.warn(line, ShrinkflowWarning, stacklevel=2)
    return PruneResult(Artifact(model, description), masks, result, sparsity)


def _check_rebuilds(description: dict, model: nn.Module, method: PruningMethod, before: int) -> None:
    """A structural cut that removed nothing, or whose model its description cannot rebuild (the
    checkpoint would not reload), fails in one line."""
    uncut = (nn.RNNBase, nn.MultiheadAttention)
    unsupported = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, uncut) and type(m) not in RESIZABLE}
    )
    hint = f" (structured pruning does not cut {', '.join(unsupported)} layers yet)" if unsupported else ""
    if sum(p.numel() for p in model.parameters()) >= before:
        raise ShrinkflowError(f"{method.name} pruning removes no channel of this model{hint}: use global or gradual")
    rebuilt = build_model(_pruned_description(description, model, method, 0.0)["architecture"]).state_dict()
    for name, tensor in model.state_dict().items():
        if name in rebuilt and rebuilt[name].shape != tensor.shape:
            raise ShrinkflowError(
                f"{method.name} pruning cut {name} to {tuple(tensor.shape)}, which the model's description cannot "
                f"rebuild (it would have {tuple(rebuilt[name].shape)}){hint}: use global or gradual"
            )


def _pruned_description(description: dict, model: nn.Module, method: PruningMethod, sparsity: float) -> dict:
    architecture = dict(description["architecture"])
    if method.structural:
        architecture["resized"] = module_shapes(model)
    return {
        **description,
        "architecture": architecture,
        "storage": "dense-fp32" if method.structural else "sparse",
        "pruning": {"method": method.name, "sparsity": sparsity},
    }


def _masked(model: nn.Module, masks: Masks) -> Pruning:
    apply_masks(model, masks)
    return Pruning(model, masks)


@pruning_method("threshold", reads=("thresholds", "layers"), requires={"thresholds": "0"})
def _threshold(model: nn.Module, settings: PruneSettings, data: DataSplits) -> Pruning:
    return _masked(model, threshold_masks(prunable_weights(model, settings.layer_list()), settings.threshold_map()))


@pruning_method("global", reads=("sparsity", "min_layer_density", "layers"))
def _global(model: nn.Module, settings: PruneSettings, data: DataSplits) -> Pruning:
    weights = prunable_weights(model, settings.layer_list())
    return _masked(model, global_masks(weights, settings.sparsity, settings.min_layer_density))


@pruning_method("layerwise", reads=("sparsity", "layer_sparsity", "layers"))
def _layerwise(model: nn.Module, settings: PruneSettings, data: DataSplits) -> Pruning:
    return _masked(
        model, layerwise_masks(prunable_weights(model, settings.layer_list()), settings.layer_sparsity_map())
    )


@pruning_method(
    "gradual", reads=("sparsity", "min_layer_density", "layers", "initial_sparsity", "ramp_epochs"), needs_epochs=True
)
def _gradual(model: nn.Module, settings: PruneSettings, data: DataSplits) -> Pruning:
    """Start at ``initial_sparsity``; every epoch of the ramp, re-rank globally at the cubic
    schedule's sparsity. The mask only grows (a pruned weight stays pruned), and only weights at
    the final sparsity may be kept as the best epoch."""
    weights = prunable_weights(model, settings.layer_list())
    masks = global_masks(weights, settings.initial_sparsity, settings.min_layer_density)
    apply_masks(model, masks)
    per_epoch = steps_per_epoch(len(data.x_train), settings.batch_size)
    ramp_steps = settings.ramp() * per_epoch

    def after_step(step: int) -> None:
        if step % per_epoch == 0 and step <= ramp_steps:
            target = cubic_sparsity(step, settings.sparsity, settings.initial_sparsity, ramp_steps)
            current = {name: model.get_parameter(name) for name in masks}
            for name, mask in global_masks(current, target, settings.min_layer_density).items():
                masks[name] &= mask.to(masks[name].device)
        apply_masks(model, masks)

    return Pruning(model, masks, after_step, first_eligible_epoch=settings.ramp())


@pruning_method("structured", reads=("sparsity", "norm"), structural=True)
def _structured(model: nn.Module, settings: PruneSettings, data: DataSplits) -> Pruning:
    return Pruning(structured_prune(model, settings.sparsity, NORMS[settings.norm], data.x_train[:1]), {})


@pruning_method("variational", reads=("layers", "kl_weight", "ramp_epochs"), needs_epochs=True)
def _variational(model: nn.Module, settings: PruneSettings, data: DataSplits) -> Pruning:
    """Sparse variational dropout: fine-tune with weight noise and the prior's KL term (its weight
    ramping up over ``ramp_epochs``), then remove the weights the noise drowned
    (``shrinkflow._variational``). The sparsity is learned, not set; only epochs after the ramp
    may be kept as the best."""
    variational = VariationalWeights(model, prunable_weights(model, settings.layer_list()))
    samples, masks = len(data.x_train), {}
    ramp_steps, steps_done = settings.ramp() * steps_per_epoch(samples, settings.batch_size), 0

    def loss_fn(logits, targets, inputs):
        prior = settings.kl_weight * min(1.0, steps_done / ramp_steps) * variational.kl() / samples
        return fit_loss(logits, targets, settings) + prior

    def after_step(step: int) -> None:
        nonlocal steps_done
        steps_done = step

    def finish() -> None:
        masks.update({name: mask.cpu() for name, mask in variational.remove().items()})

    return Pruning(model, masks, after_step, settings.ramp(), loss_fn, finish)
