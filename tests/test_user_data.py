"""Bring-your-own data: a table's preprocessing and label strings travel with the model, so the
served model takes raw rows and answers with the original labels; dataset functions take
arguments and may opt in to standardization."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from serving import invoke, serving

from shrinkflow import tracking
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import load_dataset, table_split
from steps import quantize, train

CULTIVARS = np.array(["barolo", "grignolino", "barbera"])


def _wine() -> pd.DataFrame:
    """scikit-learn's bundled wine table (178 rows, 13 unscaled features, 3 classes) with
    its classes as strings."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    return bunch.frame.drop(columns="target").assign(cultivar=CULTIVARS[bunch.target])


def _test_rows(frame: pd.DataFrame, path) -> pd.DataFrame:
    """The raw rows of the fixed test split, as a user has them."""
    return frame.iloc[table_split(str(path), "cultivar")["test"]]


def _model_uri(run_id: str) -> str:
    return f"models:/{mlflow.get_run(run_id).outputs.model_outputs[-1].model_id}"


@pytest.fixture(scope="module", params=[".csv", ".parquet"])
def wine_runs(request, tmp_path_factory, quick_train_config):
    frame = _wine()
    path = tmp_path_factory.mktemp("wine") / f"wine{request.param}"
    frame.to_csv(path, index=False) if request.param == ".csv" else frame.to_parquet(path)
    trained = train.execute(quick_train_config(dataset=str(path), label_column="cultivar", epochs=40))
    quantized = quantize.execute(quantize.QuantizeConfig(run_id=trained, method="dynamic-int8", device="cpu"))
    return frame, path, trained, quantized


def test_a_served_table_model_takes_raw_rows_and_answers_with_label_strings(wine_runs):
    frame, path, trained, quantized = wine_runs
    rows = _test_rows(frame, path)
    for run_id in (trained, quantized):
        served = mlflow.pyfunc.load_model(_model_uri(run_id))
        labels = served.predict(rows.drop(columns="cultivar"))
        assert set(labels) <= set(CULTIVARS)
        accuracy = (labels == rows["cultivar"].to_numpy()).mean()
        assert accuracy == pytest.approx(mlflow.get_run(run_id).data.metrics["test_accuracy"])
        # the columns in another order, the label column left in: the same answers
        shuffled = rows[list(reversed(rows.columns))]
        assert list(served.predict(shuffled)) == list(labels)
        probabilities = served.predict(rows.drop(columns="cultivar"), params={"output": "probabilities"})
        assert sorted(probabilities.columns) == sorted(CULTIVARS)


def test_the_logged_signature_and_example_are_the_raw_table(wine_runs):
    frame, _, trained, _ = wine_runs
    info = mlflow.models.get_model_info(_model_uri(trained))
    assert info.signature.inputs.input_names() == [c for c in frame.columns if c != "cultivar"]
    assert info.signature.params.to_dict() == [{"name": "output", "type": "string", "default": "labels", "shape": None}]


def test_a_table_model_says_which_columns_it_lacks(wine_runs):
    frame, path, trained, _ = wine_runs
    served = mlflow.pyfunc.load_model(_model_uri(trained))
    with pytest.raises(Exception, match="alcohol"):
        served.predict(_test_rows(frame, path).drop(columns=["alcohol", "cultivar"]))


@pytest.mark.slow
def test_mlflow_models_serve_answers_raw_rows_with_labels_at_the_logged_accuracy(wine_runs):
    frame, path, _, quantized = wine_runs
    rows = _test_rows(frame, path)
    features = rows.drop(columns="cultivar")
    body = {"dataframe_split": {"columns": list(features.columns), "data": features.to_numpy().tolist()}}
    with serving(_model_uri(quantized)) as url:
        labels = invoke(url, body)
    accuracy = (np.asarray(labels) == rows["cultivar"].to_numpy()).mean()
    assert accuracy == pytest.approx(mlflow.get_run(quantized).data.metrics["test_accuracy"])


def make_blobs(n: int = 300, standardize: bool = False, seed: int = 0):
    """A dataset function with arguments: blobs far from the origin, on an unscaled axis."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.stack([1000 + 50 * y + rng.normal(0, 5, n), rng.normal(0, 1, n)], axis=1)
    return {"X": x, "y": np.where(y == 1, "yes", "no"), "standardize": standardize, "columns": ["amount", "noise"]}


def test_dataset_args_reach_the_function_and_travel_with_the_model(quick_train_config):
    data = load_dataset("test_user_data:make_blobs", args='{"n": 200, "standardize": true}')
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 200
    assert abs(data.x_train[:, 0].mean()) < 1e-4  # standardized, as asked
    assert data.reference() == {"spec": "test_user_data:make_blobs", "label_column": "label",
                                "args": '{"n": 200, "standardize": true}'}  # fmt: skip
    run_id = train.execute(
        quick_train_config(dataset="test_user_data:make_blobs", dataset_args='{"n": 200, "standardize": true}')
    )
    artifact, _ = tracking.load_model(run_id)
    assert artifact.description["dataset"]["args"] == '{"n": 200, "standardize": true}'
    raw = pd.DataFrame(make_blobs(50, seed=1)["X"], columns=["amount", "noise"])
    labels = mlflow.pyfunc.load_model(_model_uri(run_id)).predict(raw)
    assert (labels == make_blobs(50, seed=1)["y"]).mean() > 0.9


def test_unstandardized_function_data_is_served_as_given():
    data = load_dataset("test_user_data:make_blobs", args='{"n": 100}')
    assert data.preprocessing == {} and data.x_train[:, 0].mean() > 900


@pytest.mark.parametrize(
    "spec, args, message",
    [
        ("digits", '{"n": 1}', "dataset_args are keyword arguments of a dataset function; dataset 'digits' takes none"),
        ("test_user_data:make_blobs", "[1, 2]", "dataset_args must be a JSON object"),
        ("test_user_data:make_blobs", "{n: 1}", "dataset_args must be a JSON object"),
        ("test_user_data:make_blobs", '{"size": 10}',
         "dataset function 'test_user_data:make_blobs' does not take the dataset_args ['size']: its parameters are "
         "['n', 'standardize', 'seed']"),
    ],
)  # fmt: skip
def test_bad_dataset_args(spec, args, message):
    with pytest.raises(ShrinkflowError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(spec, args=args)


def scalable(input_shape, num_classes, width=1.0):
    """A user factory that takes width."""
    hidden = round(32 * width)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, num_classes),
    )  # fmt: skip


def test_a_factory_that_takes_width_gets_it(quick_train_config):
    run_id = train.execute(quick_train_config(model="test_user_data:scalable", width=2.0, epochs=1))
    artifact, _ = tracking.load_model(run_id)
    assert artifact.description["architecture"]["params"] == {"width": 2.0}
    assert artifact.model[1].out_features == 64
    # its own code travels with the served model, and the served model trusts it
    served = mlflow.pyfunc.load_model(_model_uri(run_id))
    x = load_dataset("digits").x_test[:4]
    assert list(served.predict(x.numpy())) == [str(int(i)) for i in artifact.model(x).argmax(1)]
    logged = mlflow.get_logged_model(_model_uri(run_id).removeprefix("models:/"))
    code = Path(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/code"))
    assert sorted(p.name for p in code.iterdir()) == ["shrinkflow", "test_user_data.py"]


def test_a_description_cannot_make_a_step_read_another_table(wine_runs, tmp_path, monkeypatch):
    """The table a model's description names is read only if a run the model came from logged
    that file: anyone's logged model could otherwise make a step read, and describe, any table."""
    import shrinkflow.data

    frame, path, trained, quantized = wine_runs
    artifact, _ = tracking.load_model(quantized)  # came from `trained`, which logged the table
    assert tracking.dataset_of_run(quantized, artifact.description).spec == str(path)
    elsewhere = tmp_path / f"private{path.suffix}"
    frame.to_csv(elsewhere, index=False) if path.suffix == ".csv" else frame.to_parquet(elsewhere)
    read = []
    monkeypatch.setattr(shrinkflow.data, "_load_table", lambda *args: read.append(args))
    described = {**artifact.description, "dataset": {**artifact.description["dataset"], "spec": str(elsewhere)}}
    with pytest.raises(ShrinkflowError, match=f"names the table '{elsewhere}', which no run it came from logged"):
        tracking.dataset_of_run(quantized, described)
    assert read == []  # refused before anything was read
