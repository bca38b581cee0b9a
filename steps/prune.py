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
from dataclasses import dataclass

from shrinkflow.cli import entry_point
from shrinkflow.cost import layer_costs, layer_table, storage_table
from shrinkflow.pruning import PruneSettings
from shrinkflow.techniques import technique
from steps._compress import Outcome, SourceOptions, compress_step

__all__ = ["PruneConfig", "main"]


@dataclass(frozen=True)
class PruneConfig(SourceOptions, PruneSettings):
    """Prune a logged model and fine-tune it; log the smaller model and its cost before/after."""


def _report(outcome: Outcome) -> dict[str, float]:
    cfg, result, before, after = outcome.cfg, outcome.result, outcome.source, outcome.artifact
    metrics = outcome.before_after_metrics()
    metrics["prune_sparsity"] = result.sparsity
    if result.fit is not None:
        metrics["val_accuracy"] = result.fit.best_val_accuracy
    outcome.tables["layers_before"] = layer_table(layer_costs(before.model, before.input_shape))
    outcome.tables["layers"] = layer_table(layer_costs(after.model, after.input_shape))
    outcome.tables["storage"] = storage_table(after.model, after.description)
    if cfg.method in ("global", "gradual") and result.sparsity < cfg.sparsity - 5e-4:  # the floor stopped it
        print(
            f"warning: min_layer_density {cfg.min_layer_density} keeps every layer at least that dense, so "
            f"{cfg.method} pruning reached sparsity {result.sparsity:.3f}, not {cfg.sparsity}",
            file=sys.stderr,
        )
    macs = f"MACs {outcome.source_costs['cost_macs_effective']:.0f} -> {metrics['cost_macs_effective']:.0f}"
    print(outcome.summary(f"{cfg.method} pruning", f"sparsity {result.sparsity:.3f}", macs), file=sys.stderr)
    return metrics


def execute(cfg: PruneConfig) -> str:
    return compress_step(cfg, technique("prune"), _report)


main = entry_point(PruneConfig, execute, __name__)
