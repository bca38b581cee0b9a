"""Shared fixtures: a private MLflow tracking store per test session, and small trained runs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory) -> str:
    """Every test logs into a throwaway SQLite store with its artifacts beside it."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("shrinkflow-tests", artifact_location=(root / "artifacts").as_uri())
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    os.environ["TQDM_DISABLE"] = "1"
    return uri


def _quick_train_config(**overrides):
    from steps.train import TrainConfig

    settings = {"model": "mlp", "dataset": "digits", "epochs": 4, "patience": 0, "device": "cpu"}
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def quick_train_config():
    """Factory of TrainConfigs for short CPU runs: ``quick_train_config(model="cnn")``."""
    return _quick_train_config


@pytest.fixture(scope="session")
def digits_mlp():
    """(an mlp trained 5 epochs on digits, the digits splits): shared by the tests that only need
    a trained model in memory."""
    import torch

    from shrinkflow import FitSettings, load_dataset, new_artifact, train

    data = load_dataset("digits")
    return train(new_artifact("mlp", data), data, FitSettings(epochs=5, patience=0), torch.device("cpu")).artifact, data


@pytest.fixture(scope="session")
def trained_run_id(tracking_store) -> str:
    """A digits MLP trained for a few epochs through the real train step."""
    from steps import train

    return train.execute(_quick_train_config())


@pytest.fixture(scope="session")
def dynamic_int8_lstm(tracking_store) -> tuple[str, list[str]]:
    """An mnist1d LSTM trained one epoch, then quantized dynamic-int8 through the real steps (a
    model with no ONNX form): the quantize step's run id and the warning lines it printed."""
    import contextlib
    import io

    from steps import quantize, train

    lstm = train.execute(_quick_train_config(model="lstm", dataset="mnist1d", epochs=1))
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        run_id = quantize.execute(quantize.QuantizeConfig(run_id=lstm, method="dynamic-int8", device="cpu"))
    return run_id, [line for line in printed.getvalue().splitlines() if line.startswith("warning:")]


def _run_ids_in_store(where: str = "") -> list[str] | None:
    """The ids of the current tracking store's runs (``where``: an SQL condition), read from its
    SQLite database: listing hundreds of runs through MLflow, with their metrics, params and tags,
    takes ~0.3 s a call. None for a store of another kind."""
    import sqlite3

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"))) as db:
        return [row[0] for row in db.execute(f"SELECT run_uuid FROM runs {where}")]


@pytest.fixture
def all_run_ids(tracking_store):
    """Callable giving the set of ids of every run in the tracking store."""

    def _ids() -> set[str]:
        found = _run_ids_in_store()
        if found is None:
            found = [r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")]
        return set(found)

    return _ids


@pytest.fixture
def running_runs():
    """Callable listing the ids of the runs of any experiment still in RUNNING state."""

    def _running() -> list[str]:
        found = _run_ids_in_store("WHERE status = 'RUNNING'")
        if found is None:
            filter_string = "attributes.status = 'RUNNING'"
            runs = mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")
            found = [r.info.run_id for r in runs]
        return found

    return _running


@pytest.fixture
def fails_with_bad_input(capsys, running_runs):
    """Call a step's ``main(argv)``; assert exit 2, a last line ``error: ...`` and no RUNNING run.

    Returns that error line.
    """

    def _fails(main, argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ")
        assert running_runs() == []
        return lines[-1]

    return _fails
