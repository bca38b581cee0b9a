"""Benchmark a logged model: exact static cost and measured latency of the saved artifact.

Consumes: the run id of a step that logged a model.
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` and ``hw.*`` (CPU model, cores,
torch version and threads, GPU name) with
- static cost of the reloaded model: ``cost_params``, ``cost_nonzero_params``, ``cost_sparsity``,
  ``cost_macs``, ``cost_macs_effective``, ``cost_bops``, ``cost_size_bytes``,
  ``cost_size_entropy_bytes``, and a per-layer table ``layers.json``;
- per device and batch size B, in the deployment ``target`` (``onnxruntime`` by default; a model
  that cannot run there falls back to traced, then eager, with a warning line; tag
  ``shrinkflow.timed_form`` says which form was timed) and, for a model with int8 layers run by
  PyTorch, with the int8 engine ``quantized_engine`` (``auto``: the fastest for that batch size;
  tag ``shrinkflow.quantized_engine.bs<B>``):
  ``latency_<device>_bs<B>_ms_p50``/``_p90``/``_p99``/``_mean``,
  ``throughput_<device>_bs<B>_sps``, ``peak_memory_<device>_bs<B>_bytes`` and, for a device
  with a price per hour (``--price-per-hour cpu:0.10,cuda:3.50``),
  ``cost_per_million_<device>_bs<B>_usd``;
- ``cost_latency_ms_p50``: CPU p50 at the smallest batch size, the search's latency objective;
  in the ``onnxruntime`` form peak memory counts weights, input and output only: ONNX Runtime's
  own activation arena is invisible to the PyTorch profiler;
- the latency table as ``benchmark.json`` (MLflow table) and ``benchmark.csv``.
The run id is the last line printed.

Example:
    python -m steps.benchmark --run-id <run id> --batch-sizes 1,64 --threads 1
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from shrinkflow.benchmarking import BenchmarkSettings, benchmark, latency_metrics, latency_table, parse_prices
from shrinkflow.cli import entry_point
from shrinkflow.config import check_run_id, config_to_params
from shrinkflow.cost import cost_line, layer_costs, layer_table
from shrinkflow.data import dataset_of
from shrinkflow.latency import fallback_warning, hardware_tags

__all__ = ["BenchmarkConfig", "main"]


@dataclass(frozen=True)
class BenchmarkConfig(BenchmarkSettings):
    """Measure a logged model's static cost and its latency, throughput and memory."""

    run_id: str = field(kw_only=True, metadata={"help": "run id of the step that logged the model"})

    def __post_init__(self):
        check_run_id(self.run_id)
        super().__post_init__()


def execute(cfg: BenchmarkConfig) -> str:
    from shrinkflow import tracking

    artifact, costs = tracking.load_model(cfg.run_id)
    model, description = artifact.model, artifact.description
    layers = layer_table(layer_costs(model, description["architecture"]["input_shape"], description.get("bits")))
    data = dataset_of(description)
    with tracking.step_run("benchmark", config_to_params(cfg)) as run:
        results, form, reason = benchmark(model, data, cfg)
        tracking.set_tags(
            {"shrinkflow.source_run_id": cfg.run_id, "shrinkflow.timed_form": form, **hardware_tags(cfg.threads)}
        )
        if reason:
            print(fallback_warning("the model", cfg.target, form, reason), file=sys.stderr)
        prices = parse_prices(cfg.price_per_hour)
        table = latency_table(results, prices)
        tracking.set_tags(
            {f"shrinkflow.quantized_engine.bs{r.batch_size}": r.quantized_engine for r in results if r.quantized_engine}
        )
        tracking.log_metrics({**costs, **latency_metrics(results, prices)})
        tracking.log_table(table, "benchmark")
        tracking.log_table(layers, "layers")
        print(table.to_string(index=False, float_format="%.4f"), file=sys.stderr)
        print(cost_line(costs), file=sys.stderr)
        return run.info.run_id


main = entry_point(BenchmarkConfig, execute, __name__)
