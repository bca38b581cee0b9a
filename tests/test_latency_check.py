"""Every compression step times the new model against the one it came from, in its deployment
target, in alternating rounds, and says so when the new one is slower or cannot run there."""

from __future__ import annotations

import mlflow
import pytest

from shrinkflow.latency import CHECK_BATCH_SIZES
from steps import distill, prune, quantize, train

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


def test_a_model_that_got_slower_is_reported(quick_train_config, capsys):
    """Dynamic int8 on a small LSTM: its per-step int8 kernels cost more than they save."""
    lstm = train.execute(quick_train_config(model="lstm", dataset="mnist1d", epochs=1))
    run_id = quantize.execute(quantize.QuantizeConfig(run_id=lstm, method="dynamic-int8", device="cpu"))
    run = mlflow.get_run(run_id)
    metrics = run.data.metrics
    assert metrics["speedup_bs1"] < 0.9
    assert run.data.tags["shrinkflow.timed_form"] == "traced"  # a dynamic-int8 LSTM has no ONNX form
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings[0].startswith("warning: the model is served by PyTorch, not ONNX Runtime: cannot export")
    assert warnings[1].startswith(
        "warning: the quantized model or its source cannot run in target onnxruntime, so it was timed traced "
        "(onnxruntime: cannot export this model to ONNX: ONNX has no operator for a dynamic-int8 LSTM"
    )
    slower = [line for line in warnings if line.startswith("warning: the quantized model is ")]
    assert len(slower) == 1 and f"x slower at batch 1 ({metrics['latency_bs1_ms_before']:.3f} -> " in slower[0]
    assert slower[0].endswith("than the original (traced, 1 CPU thread)")
