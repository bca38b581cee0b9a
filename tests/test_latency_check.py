"""Every compression step times the new model against the one it came from, in its deployment
target, in alternating rounds, and says so when the new one is slower or cannot run there."""

from __future__ import annotations

import time

import mlflow
import pytest
import torch

from shrinkflow.latency import CHECK_BATCH_SIZES, before_after_latency
from steps import distill, prune, quantize

KEYS = [f"{kind}_bs{size}{unit}" for size in CHECK_BATCH_SIZES for kind, unit in
        (("latency", "_ms_before"), ("latency", "_ms_after"), ("speedup", ""), ("speedup", "_low"),
         ("speedup", "_high"))]  # fmt: skip


@pytest.mark.parametrize(
    "step, config",
    [
        (prune, lambda run: prune.PruneConfig(run_id=run, method="structured", sparsity=0.5, epochs=1, device="cpu")),
        (quantize, lambda run: quantize.QuantizeConfig(run_id=run, method="kbit", device="cpu")),
        (distill, lambda run: distill.DistillConfig(run_id=run, epochs=1, control=False, device="cpu")),
    ],
)
def test_every_compression_step_logs_latency_before_and_after(trained_run_id, step, config):
    run = mlflow.get_run(step.execute(config(trained_run_id)))
    metrics = run.data.metrics
    assert all(metrics[key] > 0 for key in KEYS)
    assert run.data.tags["shrinkflow.timed_form"] == "onnxruntime"  # the default target: both models export
    for size in CHECK_BATCH_SIZES:
        assert metrics[f"speedup_bs{size}_low"] <= metrics[f"speedup_bs{size}"] <= metrics[f"speedup_bs{size}_high"]


class _Slowed(torch.nn.Module):
    """``model``, waiting ``seconds`` more per call: a new model that is certainly slower."""

    def __init__(self, model: torch.nn.Module, seconds: float):
        super().__init__()
        self.model, self.seconds = model, seconds

    def forward(self, x):
        deadline = time.perf_counter() + self.seconds
        while time.perf_counter() < deadline:
            pass
        return self.model(x)


def test_a_model_that_got_slower_is_reported():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = torch.randn(8, 1, 8, 8)
    check = before_after_latency(model, _Slowed(model, 0.002), x, target="eager", what="pruned")
    assert check.form == "eager" and all(check.metrics[f"speedup_bs{size}"] < 0.9 for size in CHECK_BATCH_SIZES)
    slower = [line for line in check.warnings if line.startswith("warning: the pruned model is ")]
    assert len(slower) == 1 and f"x slower at batch 1 ({check.metrics['latency_bs1_ms_before']:.3f} -> " in slower[0]
    assert "x slower at batch 64 (" in slower[0]
    assert slower[0].endswith("than the original (eager, 1 CPU thread)")


@pytest.mark.slow  # trains an LSTM and times it (~15 s); the fallback is tested in memory in test_benchmark
def test_a_model_without_an_onnx_form_is_served_and_timed_in_the_next_form_with_warnings(dynamic_int8_lstm):
    """Dynamic int8 LSTM: ONNX has no operator for it, so the step falls back to traced."""
    run_id, warnings = dynamic_int8_lstm
    run = mlflow.get_run(run_id)
    assert all(run.data.metrics[key] > 0 for key in KEYS)
    assert run.data.tags["shrinkflow.timed_form"] == "traced"
    assert run.data.tags["shrinkflow.served_form"] == "pytorch"
    assert warnings[0].startswith("warning: the model is served by PyTorch, not ONNX Runtime: cannot export")
    assert warnings[1].startswith(
        "warning: the quantized model or its source cannot run in target onnxruntime, so it was timed traced "
        "(onnxruntime: cannot export this model to ONNX: ONNX has no operator for a dynamic-int8 LSTM"
    )
