"""Quantize a logged model's weights — k-bit, binary, k-means or soft-weight shared — and store them packed.

Consumes: the run id of a step that logged a model (a pruned one too: its zeros stay exactly zero,
and no kept weight becomes zero, under every weight method but sws, which prunes as it shares).
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``test_accuracy_before``,
``test_accuracy``, the static cost after (``cost_*``; ``cost_bops`` counts the weight bits) and
before (``baseline_cost_*``), per-epoch fine-tuning
metrics, a per-layer table ``quantization.json``, and the quantized model stored ``packed``:
integer codes k bits each plus scales or codebook, decoded to floats on load. The arithmetic then
runs in float32: sizes are real, but these methods do not make the model compute faster.
``dynamic-int8``, ``static-int8`` and ``qat`` are stored as int8 weights (with the activations'
scales) and run int8 kernels (CPU only). The run id is the last line printed.

Methods: ``shrinkflow.quantization`` (kbit, binary, kmeans, sws, dynamic-int8, static-int8, qat).

Example:
    python -m steps.quantize --run-id <run id> --method kbit --bits 4
    python -m steps.quantize --run-id <run id> --method static-int8 --calibration-batches 10
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from shrinkflow.cli import entry_point
from shrinkflow.cost import format_bytes
from shrinkflow.quantization import QuantizeSettings, quantization_table
from shrinkflow.techniques import technique
from steps._compress import Outcome, SourceOptions, compress_step

__all__ = ["QuantizeConfig", "main"]


@dataclass(frozen=True)
class QuantizeConfig(SourceOptions, QuantizeSettings):
    """Quantize a logged model's weights, optionally fine-tune, and log the packed model."""


def _report(outcome: Outcome) -> dict[str, float]:
    metrics = outcome.before_after_metrics()
    table = quantization_table(outcome.artifact)
    outcome.tables["quantization"] = table
    print(table.to_string(index=False), file=sys.stderr)
    bound = f"entropy bound {format_bytes(metrics['cost_size_entropy_bytes'])}"
    print(outcome.summary(f"{outcome.cfg.method} quantization", bound), file=sys.stderr)
    return metrics


def execute(cfg: QuantizeConfig) -> str:
    return compress_step(cfg, technique("quantize"), _report)


main = entry_point(QuantizeConfig, execute, __name__)
