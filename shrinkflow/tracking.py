"""The one place that talks to MLflow about runs, models and datasets.

Models are logged as MLflow "models from code" (``shrinkflow/pyfunc_model.py``) with the checkpoint
folder as their artifact, a signature and an input example; in MLflow 3 they live at
``models:/<model_id>`` and are found from a run id through the run's logged-model outputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowError
from shrinkflow.cost import cost_summary
from shrinkflow.data import DataSplits

__all__ = ["load_model", "log_checkpoint", "log_dataset", "log_model", "log_table", "step_run"]

_PACKAGE_DIR = Path(__file__).resolve().parent
# MLflow draws a progress bar per artifact download: noise for files of a few hundred KB.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
_MODEL_NAME = "model"
_CHECKPOINT = "checkpoint"


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, resume) the step's run; nested inside an active run.

    An exception inside marks the run FAILED, Ctrl-C marks it KILLED: no run stays RUNNING.
    """
    with mlflow.start_run(nested=mlflow.active_run() is not None) as run:
        mlflow.set_tag("shrinkflow.step", step)
        # Under `mlflow run` the project already logged its parameters (an empty string as "''");
        # logging a param twice with another spelling is an error, so add only the missing ones.
        logged = mlflow.get_run(run.info.run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise


def log_dataset(data: DataSplits, split: str) -> None:
    """Record one split of ``data`` as a run input (name, digest, source)."""
    x, y = data.split(split)
    with warnings.catch_warnings():
        # a plain path is "interpretable in multiple ways" (all of them local files)
        warnings.filterwarnings("ignore", message="The specified dataset source", category=UserWarning)
        source = data.source if Path(data.source).is_file() else CodeDatasetSource({"generator": data.source})
        dataset = mlflow.data.from_numpy(
            x.numpy(), targets=y.numpy(), source=source, name=f"{data.name}-{split}", digest=data.digest(split)
        )
    context = {"train": "training", "val": "validation", "test": "testing"}[split]
    mlflow.log_input(dataset, context=context)


def _pip_requirements() -> list[str]:
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]


def log_model(artifact: Artifact, example: torch.Tensor) -> str:
    """Log ``artifact``'s checkpoint as the run's model (signature and input example from
    ``example``); return its model id (``models:/<model_id>``)."""
    example_np = example.detach().cpu().numpy()
    with torch.no_grad():
        output = artifact.model.cpu().eval()(example.cpu()).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        folder = artifact.save(Path(tmp) / "checkpoint")
        info = mlflow.pyfunc.log_model(
            name=_MODEL_NAME,
            python_model=str(_PACKAGE_DIR / "pyfunc_model.py"),
            artifacts={"checkpoint": str(folder)},
            code_paths=[str(_PACKAGE_DIR)],
            signature=infer_signature(example_np, output),
            input_example=example_np,
            pip_requirements=_pip_requirements(),
        )
    return info.model_id


def log_checkpoint(artifact: Artifact, run_id: str | None = None) -> None:
    """Log ``artifact``'s checkpoint as plain artifacts (``checkpoint/``) of ``run_id`` (default:
    the active run): a tenth of the time of ``log_model`` and enough for ``load_model``, without
    the pyfunc wrapper that serving needs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(artifact.save(Path(tmp) / _CHECKPOINT))
        if run_id is None:
            mlflow.log_artifacts(folder, _CHECKPOINT)
        else:
            mlflow.MlflowClient().log_artifacts(run_id, folder, _CHECKPOINT)


def _checkpoint_uri(run_id: str) -> str:
    """Where the checkpoint of ``run_id`` lives: its logged model's, else its own ``checkpoint/``."""
    try:
        run = mlflow.get_run(run_id)
    except MlflowException as exc:
        raise ShrinkflowError(
            f"run {run_id!r} does not exist in tracking store {mlflow.get_tracking_uri()}: "
            "pass the run id printed on the last line of a train step"
        ) from exc
    outputs = run.outputs.model_outputs if run.outputs else []
    if outputs:
        return f"{mlflow.get_logged_model(outputs[-1].model_id).artifact_location}/artifacts/{_CHECKPOINT}"
    if any(f.path == _CHECKPOINT for f in mlflow.MlflowClient().list_artifacts(run_id)):
        return f"{run.info.artifact_uri}/{_CHECKPOINT}"
    step = run.data.tags.get("shrinkflow.step", "unknown")
    raise ShrinkflowError(
        f"run {run_id!r} (step {step}) logged no model: pass the run id of a train, prune, quantize, distill or "
        "search trial run"
    )


def load_model(run_id: str) -> tuple[Artifact, dict[str, float]]:
    """Download the model that ``run_id`` logged and rebuild it; return the artifact and its
    ``cost_*`` metrics, ``cost_size_bytes`` measured on the checkpoint as it was logged."""
    uri = _checkpoint_uri(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise ShrinkflowError(f"the model of run {run_id!r} has no readable checkpoint: {exc}") from exc
        artifact = Artifact.load(Path(local))
        return artifact, cost_summary(artifact.model, artifact.description, Path(local), artifact.encodings)


def log_table(table: pd.DataFrame, name: str) -> None:
    """Log ``table`` twice: ``<name>.json`` as an MLflow table (for the UI) and ``<name>.csv``."""
    mlflow.log_table(table, artifact_file=f"{name}.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.csv"
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
