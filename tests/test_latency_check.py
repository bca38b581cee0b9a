"""Every compression step times the new model against the one it came from, and says so when
the new one is slower."""

from __future__ import annotations

import mlflow
import pytest

from shrinkflow.latency import CHECK_BATCH_SIZES
from steps import distill, prune, quantize, train

KEYS = [f"{kind}_bs{size}{unit}" for size in CHECK_BATCH_SIZES for kind, unit in
        (("latency", "_ms_before"), ("latency", "_ms_after"), ("speedup", ""))]  # fmt: skip


@pytest.mark.parametrize(
    "step, config",
    [
        (prune, lambda run: prune.PruneConfig(run_id=run, method="structured", sparsity=0.5, epochs=1, device="cpu")),
        (quantize, lambda run: quantize.QuantizeConfig(run_id=run, method="kbit", device="cpu")),
        (distill, lambda run: distill.DistillConfig(run_id=run, epochs=1, control=False, device="cpu")),
    ],
)
def test_every_compression_step_logs_latency_before_and_after(trained_run_id, step, config):
    metrics = mlflow.get_run(step.execute(config(trained_run_id))).data.metrics
    assert all(metrics[key] > 0 for key in KEYS)
    for size in CHECK_BATCH_SIZES:
        ratio = metrics[f"latency_bs{size}_ms_before"] / metrics[f"latency_bs{size}_ms_after"]
        assert metrics[f"speedup_bs{size}"] == pytest.approx(ratio)


def test_a_model_that_got_slower_is_reported(quick_train_config, capsys):
    """Dynamic int8 on a small LSTM: its per-step int8 kernels cost more than they save."""
    lstm = train.execute(quick_train_config(model="lstm", dataset="mnist1d", epochs=1))
    run_id = quantize.execute(quantize.QuantizeConfig(run_id=lstm, method="dynamic-int8", device="cpu"))
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["speedup_bs1"] < 0.9
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and warning[0].startswith("warning: the quantized model is ")
    assert f"x slower at batch 1 ({metrics['latency_bs1_ms_before']:.3f} -> " in warning[0]
