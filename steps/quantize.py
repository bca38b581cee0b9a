"""Quantize a logged model's weights — k-bit, binary or k-means shared — and store them packed.

Consumes: the run id of a step that logged a model (a pruned one too: its zeros stay exactly zero,
and no kept weight becomes zero, under every weight method).
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``test_accuracy_before``,
``test_accuracy``, the static cost after (``cost_*``; ``cost_bops`` counts the weight bits) and
before (``baseline_cost_*``), per-epoch fine-tuning
metrics, a per-layer table ``quantization.json``, and the quantized model stored ``packed``:
integer codes k bits each plus scales or codebook, decoded to floats on load. The arithmetic then
runs in float32: sizes are real, but these methods do not make the model compute faster.
``dynamic-int8``, ``static-int8`` and ``qat`` are stored as int8 weights (with the activations'
scales) and run int8 kernels (CPU only). The run id is the last line printed.

Methods: ``shrinkflow.quantization`` (kbit, binary, kmeans, dynamic-int8, static-int8, qat).

Example:
    python -m steps.quantize --run-id <run id> --method kbit --bits 4
    python -m steps.quantize --run-id <run id> --method static-int8 --calibration-batches 10
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from shrinkflow import distributed
from shrinkflow.cli import about_run, run_main
from shrinkflow.config import check_run_id, config_to_params, parse_config
from shrinkflow.cost import before_after_metrics, cost
from shrinkflow.latency import TARGET_HELP, TARGETS, before_after_latency, fallback_forms
from shrinkflow.quantization import QuantizeSettings, check_quantizing, quantization_table, quantize
from shrinkflow.runtime import resolve_device
from shrinkflow.training import score

__all__ = ["CONFIG", "QuantizeConfig", "main"]


@dataclass(frozen=True)
class QuantizeConfig(QuantizeSettings):
    """Quantize a logged model's weights, optionally fine-tune, and log the packed model."""

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


def execute(cfg: QuantizeConfig) -> str:
    import mlflow

    from shrinkflow import tracking

    device = resolve_device(cfg.device)
    original, costs_before = tracking.load_model(cfg.run_id)
    data = tracking.dataset_of_run(cfg.run_id, original.description)
    with about_run(cfg.run_id):
        original.require_float("quantize")
    check_quantizing(original, cfg, data)  # bad layer names or an empty split fail before a run starts
    cpu = torch.device("cpu")
    accuracy_before = score(original.model, data.x_test, data.y_test, cpu)["accuracy"]
    if run_id := distributed.launch_if_asked(
        "steps.quantize", cfg, tracking.active_run_id()
    ):  # after the checks: bad input is one line
        return run_id
    device = distributed.setup(device)
    if not distributed.is_main():  # the other processes train alongside rank 0 and log nothing
        quantize(original, data, cfg, device)
        return ""
    with tracking.step_run("quantize", config_to_params(cfg)) as run:
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        tracking.log_dataset(data, "train")
        on_epoch = lambda epoch, m: mlflow.log_metrics(m, step=epoch)  # noqa: E731
        quantized = quantize(original, data, cfg, device, on_epoch=on_epoch).artifact
        test = score(quantized.model, data.x_test, data.y_test, cpu)
        model_id = tracking.log_model(quantized, data, cfg.target)
        report = quantization_table(quantized)
        costs = cost(quantized)
        size = costs["cost_size_bytes"]
        metrics = before_after_metrics(accuracy_before, test, costs_before, costs)
        check = before_after_latency(original.model, quantized.reloaded().model, data.x_test, cfg.target, "quantized")
        metrics.update(check.metrics)
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.timed_form", check.form)
        for warning in check.warnings:
            print(warning, file=sys.stderr)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        tracking.log_table(report, "quantization")
        print(report.to_string(index=False), file=sys.stderr)
        before = costs_before["cost_size_bytes"]
        print(
            f"{cfg.method} quantization: test_accuracy {accuracy_before:.4f} -> {test['accuracy']:.4f}, "
            f"size {before:.0f} -> {size} bytes ({before / size:.2f}x smaller), "
            f"entropy bound {metrics['cost_size_entropy_bytes']:.0f} bytes",
            file=sys.stderr,
        )
        return run.info.run_id


CONFIG = QuantizeConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(QuantizeConfig, argv)))


if __name__ == "__main__":
    main()
