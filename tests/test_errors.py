"""Bad input: one clear error line naming the problem and the choices, exit 2, no RUNNING run."""

import mlflow
import pytest

from steps import evaluate, train


def test_unknown_model(fails_with_bad_input):
    line = fails_with_bad_input(train.main, ["--model", "resnet", "--epochs", "1"])
    assert "unknown model 'resnet'" in line and "mlp, cnn, cnn1d, lstm, transformer, or package.module:factory" in line


def test_unknown_dataset(fails_with_bad_input):
    line = fails_with_bad_input(train.main, ["--dataset", "imagenet", "--epochs", "1"])
    assert "unknown dataset 'imagenet'" in line and "digits, mnist1d, a .csv/.parquet file" in line


def test_run_id_that_does_not_exist(fails_with_bad_input):
    line = fails_with_bad_input(evaluate.main, ["--run-id", "0123456789abcdef0123456789abcdef"])
    assert "run '0123456789abcdef0123456789abcdef' does not exist" in line


@pytest.mark.parametrize(
    "flag,value,what",
    [("--dataset", "mypkg.data:", "dataset function"), ("--model", "my pkg:factory", "model factory")],
)
def test_malformed_module_function(fails_with_bad_input, flag, value, what):
    line = fails_with_bad_input(train.main, [flag, value, "--epochs", "1"])
    assert f"malformed {what}" in line and "package.module:function" in line


def test_negative_epochs(fails_with_bad_input):
    assert "epochs must be >= 1, got -3" in fails_with_bad_input(train.main, ["--epochs", "-3"])


def test_csv_without_label_column(fails_with_bad_input, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("x1,x2,target\n1,2,0\n3,4,1\n")
    line = fails_with_bad_input(train.main, ["--dataset", str(path), "--epochs", "1"])
    assert "no label column 'label'" in line and "x1, x2, target" in line


def test_unknown_split(fails_with_bad_input, trained_run_id):
    assert "unknown split 'dev'" in fails_with_bad_input(evaluate.main, ["--run-id", trained_run_id, "--split", "dev"])


def test_run_without_a_model(fails_with_bad_input, trained_run_id):
    evaluate_id = evaluate.execute(evaluate.EvaluateConfig(run_id=trained_run_id, device="cpu"))
    line = fails_with_bad_input(evaluate.main, ["--run-id", evaluate_id])
    assert "logged no model" in line and "(step evaluate)" in line


def test_corrupt_model_artifact(fails_with_bad_input, quick_train_config):
    from pathlib import Path
    from urllib.parse import urlparse

    run_id = train.execute(quick_train_config(epochs=1))
    model_id = mlflow.get_run(run_id).outputs.model_outputs[0].model_id
    location = Path(urlparse(mlflow.get_logged_model(model_id).artifact_location).path)
    (location / "artifacts" / "checkpoint" / "model.shrinkflow").write_bytes(b"\x00garbage")
    assert "is not the one it logged" in fails_with_bad_input(evaluate.main, ["--run-id", run_id])  # digest first
