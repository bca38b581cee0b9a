"""The train and evaluate steps end to end, in process, against a real MLflow store."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from shrinkflow import evaluation, tracking
from shrinkflow.data import load_dataset
from steps import evaluate, train


def test_train_run_logs_params_metrics_datasets_and_model(trained_run_id):
    run = mlflow.get_run(trained_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["shrinkflow.step"] == "train"
    assert run.data.params["model"] == "mlp" and run.data.params["epochs"] == "4"
    for key in ("test_accuracy", "val_accuracy", "cost_params", "cost_size_bytes"):
        assert key in run.data.metrics
    assert run.data.metrics["cost_params"] == 50_610
    history = mlflow.MlflowClient().get_metric_history(trained_run_id, "val_accuracy")
    assert [m.step for m in history if m.step > 0] == [1, 2, 3, 4]
    inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {("digits-train", "training"), ("digits-val", "validation"), ("digits-test", "testing")}
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert digests["digits-test"] == load_dataset("digits").digest("test")


def test_logged_model_has_signature_and_input_example(trained_run_id):
    model_id = mlflow.get_run(trained_run_id).outputs.model_outputs[0].model_id
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.signature is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    assert info.saved_input_example_info is not None


def test_model_is_served_by_onnx_runtime_with_pytorchs_predictions(trained_run_id, tmp_path):
    from shrinkflow.onnx_export import export_onnx, onnx_logits, onnx_session

    artifact, _ = tracking.load_model(trained_run_id)
    model, description = artifact.model, artifact.description
    x = load_dataset("digits").x_test[:16]
    with torch.no_grad():
        ours = model(x).numpy()
    model_id = mlflow.get_run(trained_run_id).outputs.model_outputs[0].model_id
    assert mlflow.get_logged_model(model_id).tags["shrinkflow.served_form"] == "onnxruntime"
    served = mlflow.pyfunc.load_model(f"models:/{model_id}")
    logits = served.predict(x.numpy(), params={"output": "logits"})
    # ONNX Runtime's own numbers (what was timed), PyTorch's within float32 rounding
    np.testing.assert_array_equal(logits, onnx_logits(onnx_session(export_onnx(model, x[:2])), x).numpy())
    np.testing.assert_allclose(logits, ours, rtol=0, atol=1e-4 * np.abs(ours).max())
    labels = served.predict(x.numpy())  # by default: the class names
    assert list(labels) == [description["class_names"][i] for i in ours.argmax(1)]
    probabilities = served.predict(x.numpy(), params={"output": "probabilities"})
    assert list(probabilities.columns) == description["class_names"]
    np.testing.assert_allclose(probabilities.to_numpy().sum(1), 1.0, rtol=1e-5)
    assert description["dataset"] == {"spec": "digits", "label_column": "label"}


def test_a_model_deployed_with_pytorch_is_served_by_pytorch_exactly(trained_run_id):
    from steps import quantize

    run_id = quantize.execute(quantize.QuantizeConfig(run_id=trained_run_id, method="kbit", target="eager"))
    assert mlflow.get_run(run_id).data.tags["shrinkflow.served_form"] == "pytorch"
    artifact, _ = tracking.load_model(run_id)
    x = load_dataset("digits").x_test[:16]
    served = mlflow.pyfunc.load_model(f"models:/{mlflow.get_run(run_id).data.tags['shrinkflow.model_id']}")
    with torch.no_grad():
        np.testing.assert_array_equal(served.predict(x.numpy(), params={"output": "logits"}), artifact.model(x).numpy())


def test_evaluate_reproduces_train_test_accuracy_and_logs_artifacts(trained_run_id, tmp_path):
    evaluate_id = evaluate.execute(evaluate.EvaluateConfig(run_id=trained_run_id, device="cpu"))
    run = mlflow.get_run(evaluate_id)
    train_metrics = mlflow.get_run(trained_run_id).data.metrics
    assert run.data.metrics["test_accuracy"] == train_metrics["test_accuracy"]
    assert run.data.metrics["cost_size_bytes"] == train_metrics["cost_size_bytes"]
    assert run.data.metrics["cost_nonzero_params"] == run.data.metrics["cost_params"] == 50_610
    assert run.data.tags["shrinkflow.source_run_id"] == trained_run_id
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(evaluate_id)}
    assert {"per_class_test.json", "confusion_test.png"} <= files
    table = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=evaluate_id, artifact_path="per_class_test.json")).read_text()
    )
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert sum(row[4] for row in table["data"]) == 360


def test_evaluate_on_validation_split(trained_run_id):
    evaluate_id = evaluate.execute(evaluate.EvaluateConfig(run_id=trained_run_id, split="val", device="cpu"))
    metrics = mlflow.get_run(evaluate_id).data.metrics
    assert metrics["val_accuracy"] == pytest.approx(mlflow.get_run(trained_run_id).data.metrics["val_accuracy"])


def test_evaluate_confusion_matrix_matches_accuracy():
    from shrinkflow.runtime import seed_everything
    from shrinkflow.zoo import build_model, describe

    data = load_dataset("digits")
    seed_everything(0)
    model = build_model(describe("mlp", data.input_shape, data.num_classes))
    result = evaluation.evaluate(model, data.x_test, data.y_test, data.class_names, torch.device("cpu"))
    assert result.confusion.sum() == 360
    assert np.trace(result.confusion) / 360 == pytest.approx(result.accuracy)


def test_same_seed_twice_gives_identical_metrics(quick_train_config):
    cfg = quick_train_config(model="cnn", epochs=2)
    first, second = train.execute(cfg), train.execute(cfg)
    metrics = [mlflow.get_run(r).data.metrics for r in (first, second)]
    assert metrics[0] == metrics[1]
