"""Prune a logged model — unstructured (threshold, global, layerwise, gradual) or structured — and
fine-tune it with the pruned weights held at zero.

Consumes: the run id of a step that logged a model.
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``test_accuracy_before``,
``test_accuracy``, ``val_accuracy``, ``prune_sparsity`` (share of the pruned tensors that is zero),
the static cost after pruning (``cost_*``, ``cost_size_bytes`` measured on the saved
checkpoint) and before (``baseline_cost_*``), per-epoch fine-tuning metrics, per-layer cost and
sparsity tables before and after (``layers_before.json``, ``layers.json``), and the pruned model:
sparse weights stored as bitmap + non-zero values, structurally pruned layers at their new widths.
The run id is the last line printed.

Methods:
- ``threshold``: zero every weight with |w| < t (``thresholds``: one t, or a JSON mapping of
  layer names to t, ``"*"`` for the rest);
- ``global``: magnitude pruning to ``sparsity`` across all prunable layers at once;
- ``layerwise``: the same ``sparsity`` in every prunable layer;
- ``gradual``: Zhu & Gupta's cubic schedule from ``initial_sparsity`` to ``sparsity`` over the
  first ``ramp_epochs`` epochs of fine-tuning (global ranking, updated every epoch);
- ``structured``: physically remove ``sparsity`` of the channels/neurons of every layer but the
  output, ranked by their weights' ``norm`` (Torch-Pruning's dependency graph).

Example:
    python -m steps.prune --run-id <train run id> --method global --sparsity 0.9
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from steps._checkpoint import is_quantized
from steps._config import ShrinkflowError, config_to_params, parse_config
from steps._cost import before_after_metrics, cost_summary, layer_costs, layer_table
from steps._data import DataSplits, dataset_of
from steps._main import run_main
from steps._pruning import (
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
from steps._training import FitResult, fit, resolve_device, score, seed_everything, steps_per_epoch
from steps._zoo import module_shapes

__all__ = ["CONFIG", "METHODS", "PruneConfig", "PruneResult", "main", "prune"]

METHODS = ("threshold", "global", "layerwise", "gradual", "structured")
NORMS = {"l1": 1, "l2": 2}


@dataclass(frozen=True)
class PruneConfig:
    """Prune a logged model and fine-tune it; log the smaller model and its cost before/after."""

    run_id: str = field(metadata={"help": "run id of the step that logged the model"})
    method: str = field(default="global", metadata={"help": "threshold, global, layerwise, gradual or structured"})
    sparsity: float = field(
        default=0.9, metadata={"help": "target share of zero weights in [0, 1); structured: share of channels removed"}
    )
    thresholds: str = field(default="", metadata={"help": 'threshold method: one t >= 0, or JSON {"layer": t, "*": t}'})
    layers: str = field(default="", metadata={"help": "comma-separated layers to prune (unstructured); empty = all"})
    norm: str = field(default="l1", metadata={"help": "structured: channel importance norm, l1 or l2"})
    initial_sparsity: float = field(default=0.0, metadata={"help": "gradual: sparsity at the start of the ramp"})
    ramp_epochs: int = field(default=0, metadata={"help": "gradual: epochs to reach the target; 0 = 2/3 of epochs"})
    epochs: int = field(default=60, metadata={"help": "fine-tuning epochs after pruning (0 = none)"})
    batch_size: int = field(default=100, metadata={"help": "fine-tuning batch size"})
    # Fine-tuning starts from trained weights: under a third of the training learning rate.
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate of fine-tuning (cosine decay)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing in [0, 1)"})
    patience: int = field(default=0, metadata={"help": "early stopping patience in epochs; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed for fine-tuning batch order"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})

    def __post_init__(self):
        if not self.run_id.strip():
            raise ShrinkflowError("run_id is required: pass the run id printed by a train step")
        if self.method not in METHODS:
            raise ShrinkflowError(f"unknown pruning method {self.method!r}: choose {', '.join(METHODS)}")
        for name in ("sparsity", "initial_sparsity"):
            if message := sparsity_error(getattr(self, name), name):
                raise ShrinkflowError(message)
        if self.method == "threshold":
            self.threshold_map()  # validates
        if self.norm not in NORMS:
            raise ShrinkflowError(f"unknown norm {self.norm!r}: choose {', '.join(NORMS)}")
        if self.epochs < 0 or self.ramp_epochs < 0 or self.batch_size < 1 or self.patience < 0:
            raise ShrinkflowError("need epochs >= 0, ramp_epochs >= 0, batch_size >= 1 and patience >= 0")
        if self.method == "gradual" and self.epochs < 1:
            raise ShrinkflowError("gradual pruning happens during fine-tuning: set epochs >= 1")

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

    def layer_list(self) -> list[str] | None:
        return [name.strip() for name in self.layers.split(",") if name.strip()] or None

    def ramp(self) -> int:
        return self.ramp_epochs or max(1, (2 * self.epochs) // 3)


@dataclass
class PruneResult:
    model: nn.Module
    masks: dict[str, torch.Tensor]  # empty for structured pruning
    fit: FitResult | None
    sparsity: float  # share of zeros in the pruned tensors (structured: share of parameters removed)


def check_layers(model: nn.Module, cfg: PruneConfig) -> None:
    """Fail on layer names the model does not have (in ``layers`` or ``thresholds``)."""
    if cfg.method == "structured":
        return
    weights = prunable_weights(model, cfg.layer_list())
    if cfg.method == "threshold":
        known = {name.rsplit(".", 1)[0] for name in weights}
        unknown = sorted(set(cfg.threshold_map()) - known - {"*"})
        if unknown:
            raise ShrinkflowError(f"thresholds name unknown layer(s) {unknown}: prunable layers are {sorted(known)}")


def _initial_masks(model: nn.Module, cfg: PruneConfig) -> dict[str, torch.Tensor]:
    check_layers(model, cfg)
    weights = prunable_weights(model, cfg.layer_list())
    if cfg.method == "threshold":
        return threshold_masks(weights, cfg.threshold_map())
    if cfg.method == "global":
        return global_masks(weights, cfg.sparsity)
    if cfg.method == "layerwise":
        return layerwise_masks(weights, cfg.sparsity)
    return global_masks(weights, cfg.initial_sparsity)  # gradual


def prune(model: nn.Module, data: DataSplits, cfg: PruneConfig, device: torch.device, on_epoch=None) -> PruneResult:
    """Prune ``model`` (in place for unstructured methods), then fine-tune with masks enforced."""
    seed_everything(cfg.seed)
    before = sum(p.numel() for p in model.parameters())
    masks: dict[str, torch.Tensor] = {}
    if cfg.method == "structured":
        model = structured_prune(model, cfg.sparsity, NORMS[cfg.norm], data.x_train[:1])
    else:
        masks = _initial_masks(model, cfg)
        apply_masks(model, masks)
    after_step = None
    if cfg.method == "gradual":
        after_step = _gradual_schedule(model, masks, cfg, len(data.x_train))
    elif masks:
        after_step = lambda step: apply_masks(model, masks)  # noqa: E731  (fine-tuning must not revive a weight)
    result = None
    if cfg.epochs:
        # gradual: only weights at the final sparsity may be kept as the best epoch
        first_eligible = cfg.ramp() if cfg.method == "gradual" else 1
        train, val = (data.x_train, data.y_train), (data.x_val, data.y_val)
        result = fit(model, train, val, cfg, device, on_epoch, after_step, first_eligible_epoch=first_eligible)
        model.cpu()
    sparsity = masks_sparsity(masks) if masks else 1.0 - sum(p.numel() for p in model.parameters()) / before
    return PruneResult(model, masks, result, sparsity)


def _gradual_schedule(model, masks, cfg: PruneConfig, train_size: int):
    """After-step hook: every epoch, re-rank globally at the cubic schedule's sparsity; the mask
    only grows (a pruned weight stays pruned)."""
    per_epoch = steps_per_epoch(train_size, cfg.batch_size)
    ramp_steps = cfg.ramp() * per_epoch

    def after_step(step: int) -> None:
        if step % per_epoch == 0 and step <= ramp_steps:
            target = cubic_sparsity(step, cfg.sparsity, cfg.initial_sparsity, ramp_steps)
            weights = {name: model.get_parameter(name) for name in masks}
            for name, mask in global_masks(weights, target).items():
                masks[name] &= mask.to(masks[name].device)
        apply_masks(model, masks)

    return after_step


def pruned_description(description: dict, model: nn.Module, cfg: PruneConfig, sparsity: float) -> dict:
    architecture = dict(description["architecture"])
    if cfg.method == "structured":
        architecture["resized"] = module_shapes(model)
    return {
        **description,
        "architecture": architecture,
        "storage": "dense-fp32" if cfg.method == "structured" else "sparse-bitmap",
        "pruning": {"method": cfg.method, "sparsity": sparsity, "source_run_id": cfg.run_id},
    }


def execute(cfg: PruneConfig) -> str:
    import mlflow

    from steps import _tracking

    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        model, description, checkpoint = _tracking.load_model(cfg.run_id, Path(tmp))
        costs_before = cost_summary(model, description, checkpoint)
    if is_quantized(description):
        raise ShrinkflowError(
            f"run {cfg.run_id!r} holds a quantized model (storage {description['storage']}): prune first, "
            "then quantize — pass the run id of the model it was quantized from"
        )
    shape = description["architecture"]["input_shape"]
    layers_before = layer_table(layer_costs(model, shape))
    data = dataset_of(description)
    accuracy_before = score(model, data.x_test, data.y_test, torch.device("cpu"))["accuracy"]
    check_layers(model, cfg)  # unknown layer names fail before a run starts
    with _tracking.step_run("prune", config_to_params(cfg)) as run:
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        _tracking.log_dataset(data, "train")
        result = prune(model, data, cfg, device, on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch))
        model = result.model.cpu()
        new_description = pruned_description(description, model, cfg, result.sparsity)
        test = score(model, data.x_test, data.y_test, torch.device("cpu"))
        model_id, size = _tracking.log_model(model, new_description, data.x_train[:2])
        costs = {**cost_summary(model, new_description), "cost_size_bytes": size}
        metrics = {
            **before_after_metrics(accuracy_before, test, costs_before, costs),
            "prune_sparsity": result.sparsity,
        }
        if result.fit is not None:
            metrics["val_accuracy"] = result.fit.best_val_accuracy
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        mlflow.log_table(layers_before, artifact_file="layers_before.json")
        mlflow.log_table(layer_table(layer_costs(model, shape)), artifact_file="layers.json")
        print(
            f"{cfg.method} pruning: test_accuracy {accuracy_before:.4f} -> {test['accuracy']:.4f}, "
            f"sparsity {result.sparsity:.3f}, size {costs_before['cost_size_bytes']:.0f} -> {size} bytes "
            f"({costs_before['cost_size_bytes'] / size:.2f}x smaller), "
            f"MACs {costs_before['cost_macs_effective']:.0f} -> {metrics['cost_macs_effective']:.0f}",
            file=sys.stderr,
        )
        return run.info.run_id


CONFIG = PruneConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(PruneConfig, argv)))


if __name__ == "__main__":
    main()
