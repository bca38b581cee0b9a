"""The export step: ONNX Runtime predicts what PyTorch does, for every kind of model it can export."""

from __future__ import annotations

from pathlib import Path

import mlflow
import onnx
import pytest
import torch

from shrinkflow import tracking
from shrinkflow.data import dataset_of
from shrinkflow.onnx_export import ExportCheck, check_onnx, export_onnx, onnx_logits, onnx_session
from steps import export, prune, quantize


@pytest.fixture(scope="module")
def cnn_run_id(quick_train_config):
    from steps import train

    return train.execute(quick_train_config(model="cnn", epochs=3))


def _compressed(kind: str, run_id: str) -> str:
    if kind == "fp32":
        return run_id
    if kind in ("global", "structured"):
        return prune.execute(prune.PruneConfig(run_id=run_id, method=kind, sparsity=0.5, epochs=1, device="cpu"))
    method = {"kbit4": "kbit", "static-int8": "static-int8"}[kind]
    return quantize.execute(quantize.QuantizeConfig(run_id=run_id, method=method, epochs=0, device="cpu"))


@pytest.mark.parametrize("kind", ["fp32", "global", "structured", "kbit4", "static-int8"])
def test_export_step_logs_an_onnx_model_that_predicts_like_pytorch(cnn_run_id, kind):
    source = _compressed(kind, cnn_run_id)
    run = mlflow.get_run(export.execute(export.ExportConfig(run_id=source)))
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert metrics["onnx_argmax_agreement"] == 1.0
    assert metrics["onnx_relative_logit_diff"] <= metrics["onnx_tolerance"]
    assert run.data.tags["shrinkflow.onnx_weights"] == ("int8" if kind == "static-int8" else "float32")
    # the logged ONNX file, reloaded from the artifact store, gives PyTorch's classes
    artifact, _ = tracking.load_model(source)
    data = dataset_of(artifact.description)
    logged = mlflow.get_logged_model(run.data.tags["shrinkflow.model_id"])
    path = Path(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/model.onnx"))
    assert metrics["onnx_size_bytes"] == path.stat().st_size
    onnx_model = onnx.load(path)
    expected = artifact.model.eval()(data.x_test).argmax(1)
    assert torch.equal(onnx_logits(onnx_session(onnx_model.SerializeToString()), data.x_test).argmax(1), expected)


def test_a_model_without_onnx_operators_is_refused_with_the_reason(cnn_run_id, fails_with_bad_input, capsys):
    dynamic = quantize.execute(
        quantize.QuantizeConfig(run_id=cnn_run_id, method="dynamic-int8", epochs=0, device="cpu")
    )
    capsys.readouterr()
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    line = fails_with_bad_input(export.main, ["--run-id", dynamic])
    assert line == (
        f"error: run '{dynamic}' (storage int8-dynamic): cannot export this model to ONNX: Exporting the operator "
        "'quantized::linear_dynamic' to ONNX opset version 17 is not supported"
    )
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before  # no run


def test_the_check_fails_an_export_that_predicts_differently():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(50, 4)
    onnx_model = export_onnx(model, x[:2])
    assert check_onnx(model, onnx_model, x).problem(1e-4) is None
    with torch.no_grad():
        model[0].bias += torch.tensor([0.0, 0.0, 100.0])  # PyTorch's model changes, the export does not
    assert (
        check_onnx(model, onnx_model, x).problem(1e-4)
        == ("ONNX Runtime predicts another class than PyTorch for 50 of 50 samples")
        or check_onnx(model, onnx_model, x).argmax_agreement < 1
    )
    close = ExportCheck(samples=10, argmax_agreement=1.0, max_abs_logit_diff=0.02, logit_scale=1.0)
    assert close.problem(0.05) is None
    assert close.problem(1e-4) == (
        "ONNX Runtime's logits differ from PyTorch's by up to 0.02 (0.02 of the largest logit, tolerance 0.0001)"
    )


@pytest.mark.parametrize("tolerance", [-0.1, 1.0])
def test_bad_tolerance(fails_with_bad_input, trained_run_id, tolerance):
    line = fails_with_bad_input(export.main, ["--run-id", trained_run_id, "--tolerance", str(tolerance)])
    assert line == f"error: tolerance must be in [0, 1) (0 = the default for the model), got {tolerance}"
