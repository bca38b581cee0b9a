"""Shared fixtures: a private MLflow tracking store per test session, and small trained runs."""

from __future__ import annotations

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
def trained_run_id(tracking_store) -> str:
    """A digits MLP trained for a few epochs through the real train step."""
    from steps import train

    return train.execute(_quick_train_config())


@pytest.fixture
def running_runs():
    """Callable listing the runs of any experiment still in RUNNING state."""

    def _running():
        return mlflow.search_runs(
            search_all_experiments=True, filter_string="attributes.status = 'RUNNING'", output_format="list"
        )

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
