"""Prune a logged model — unstructured (threshold, global, layerwise, gradual) or structured — and
fine-tune it with the pruned weights held at zero.

Consumes: the run id of a step that logged a model.
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``test_accuracy_before``,
``test_accuracy``, ``val_accuracy``, ``prune_sparsity`` (share of the pruned tensors that is zero),
the static cost after pruning (``cost_*``, ``cost_size_bytes`` measured on the saved
checkpoint) and before (``baseline_cost_*``), per-epoch fine-tuning metrics, per-layer cost and
sparsity tables before and after (``layers_before.json``, ``layers.json``), a per-tensor storage
table (``storage.json``/``.csv``: format, stored bytes, entropy bound), and the pruned model:
sparse weights stored as entropy-coded positions + non-zero values, structurally pruned layers at
their new widths.
The run id is the last line printed.

Methods: ``shrinkflow.pruning`` (threshold, global, layerwise, gradual, structured).

Example:
    python -m steps.prune --run-id <train run id> --method global --sparsity 0.9
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from shrinkflow import distributed
from shrinkflow.cli import about_run, run_main
from shrinkflow.config import check_run_id, config_to_params, parse_config
from shrinkflow.cost import before_after_metrics, cost, layer_costs, layer_table, storage_table
from shrinkflow.latency import TARGET_HELP, TARGETS, before_after_latency, fallback_forms
from shrinkflow.pruning import PruneSettings, check_pruning, prune
from shrinkflow.runtime import resolve_device
from shrinkflow.training import score

__all__ = ["CONFIG", "PruneConfig", "main"]


@dataclass(frozen=True)
class PruneConfig(PruneSettings):
    """Prune a logged model and fine-tune it; log the smaller model and its cost before/after."""

    run_id: str = field(kw_only=True, metadata={"help": "run id of the step that logged the model"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})
    nproc: int = field(
        default=1, metadata={"help": "processes for data-parallel training; > 1 starts the step under torchrun"}
    )
    target: str = field(default=TARGETS[0], metadata={"help": TARGET_HELP})

    def __post_init__(self):
        check_run_id(self.run_id)
        fallback_forms(self.target)
        super().__post_init__()


def execute(cfg: PruneConfig) -> str:
    import mlflow

    from shrinkflow import tracking

    device = resolve_device(cfg.device)
    original, costs_before = tracking.load_model(cfg.run_id)
    with about_run(cfg.run_id):
        original.require_float("prune")
    check_pruning(original, cfg)  # unknown layer names fail before a run starts
    layers_before = layer_table(layer_costs(original.model, original.input_shape))
    data = tracking.dataset_of_run(cfg.run_id, original.description)
    cpu = torch.device("cpu")
    accuracy_before = score(original.model, data.x_test, data.y_test, cpu)["accuracy"]
    if run_id := distributed.launch_if_asked(
        "steps.prune", cfg, tracking.active_run_id()
    ):  # after the checks: bad input is one line
        return run_id
    device = distributed.setup(device)
    if not distributed.is_main():  # the other processes train alongside rank 0 and log nothing
        prune(original, data, cfg, device)
        return ""
    with tracking.step_run("prune", config_to_params(cfg)) as run:
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        tracking.log_dataset(data, "train")
        result = prune(original, data, cfg, device, on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch))
        pruned = result.artifact
        test = score(pruned.model, data.x_test, data.y_test, cpu)
        model_id = tracking.log_model(pruned, data, cfg.target)
        costs = cost(pruned)
        metrics = {
            **before_after_metrics(accuracy_before, test, costs_before, costs),
            "prune_sparsity": result.sparsity,
        }
        if result.fit is not None:
            metrics["val_accuracy"] = result.fit.best_val_accuracy
        check = before_after_latency(original.model, pruned.reloaded().model, data.x_test, cfg.target, "pruned")
        metrics.update(check.metrics)
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.timed_form", check.form)
        for warning in check.warnings:
            print(warning, file=sys.stderr)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        mlflow.log_table(layers_before, artifact_file="layers_before.json")
        mlflow.log_table(layer_table(layer_costs(pruned.model, pruned.input_shape)), artifact_file="layers.json")
        tracking.log_table(storage_table(pruned.model, pruned.description), "storage")
        if cfg.method in ("global", "gradual") and result.sparsity < cfg.sparsity - 5e-4:  # the floor stopped it
            print(
                f"warning: min_layer_density {cfg.min_layer_density} keeps every layer at least that dense, so "
                f"{cfg.method} pruning reached sparsity {result.sparsity:.3f}, not {cfg.sparsity}",
                file=sys.stderr,
            )
        size = costs["cost_size_bytes"]
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
