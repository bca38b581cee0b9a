"""The one place that talks to MLflow about runs, models and datasets.

Models are logged as MLflow "models from code" (``shrinkflow/pyfunc_model.py``) with the checkpoint
folder as their artifact, a signature and an input example; in MLflow 3 they live at
``models:/<model_id>`` and are found from a run id through the run's logged-model outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from shrinkflow import distributed
from shrinkflow._imports import is_import_spec, user_code
from shrinkflow.artifact import Artifact
from shrinkflow.checkpoint import CHECKPOINT_FILE, checkpoint_digest, file_digest, holds_checkpoint
from shrinkflow.config import ShrinkflowError, Terminated
from shrinkflow.cost import cost_summary
from shrinkflow.data import SPLITS, TABLE_SUFFIXES, DataSplits, class_names_of, dataset_of, raw_inputs
from shrinkflow.latency import hardware_tags
from shrinkflow.onnx_export import check_onnx, default_tolerance, export_onnx
from shrinkflow.runtime import sqlite_lock

__all__ = [
    "DIGEST_TAG",
    "active_run_id",
    "check_dataset",
    "end_run",
    "epoch_logger",
    "find_runs",
    "log_metrics",
    "log_run_batch",
    "register_model",
    "resumed_run",
    "run_metrics",
    "run_tags",
    "set_tags",
    "start_child_run",
    "tag_run",
    "tracking_uri",
    "use_tracking_uri",
    "dataset_of_run",
    "checkpoint_files",
    "checkpoint_digest",
    "checkpoint_problem",
    "ensure_store",
    "mark_dead_runs_killed",
    "process_tags",
    "load_model",
    "log_dataset",
    "log_figure",
    "log_model",
    "log_onnx_model",
    "log_table",
    "step_run",
    "tag_joined_run",
    "store_identity",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
# MLflow draws a progress bar per artifact download: noise for files of a few hundred KB.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
_MODEL_NAME = "model"
_CHECKPOINT = "checkpoint"
# The checkpoint's digest, recorded in the tracking store (a run or logged-model tag) when it is
# logged and checked when it is loaded: a file changed in the artifact store is refused.
DIGEST_TAG = "shrinkflow.checkpoint_sha256"
HOST_TAG, PID_TAG = "shrinkflow.host", "shrinkflow.pid"
EXPERIMENT = "shrinkflow"  # where a step started on its own logs
DATASET_FILE_TAG = "shrinkflow.dataset_file"  # the table file a run read as its dataset
# tags naming the run a run's model or data came from
_LINEAGE_TAGS = ("shrinkflow.source_run_id", "shrinkflow.baseline_run_id", "mlflow.parentRunId")
_READY_STORES: set[str] = set()


def _check_artifacts_writable(artifact_uri: str) -> None:
    """A local artifact store on a read-only file system fails the step before its work, not
    after a whole training (remote stores answer when written to)."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return
    folder = Path(urllib.parse.unquote(parsed.path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise ShrinkflowError(f"cannot write the run's artifacts: {folder} is read-only (store {artifact_uri})")


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, resume) the step's run; nested inside an active run.

    An exception inside marks the run FAILED; Ctrl-C, SIGTERM and SIGHUP mark it KILLED. The run
    records its host and process id, and every step first marks KILLED the RUNNING runs of this
    host whose process is gone (SIGKILL leaves no chance to do it oneself): no run stays RUNNING.
    """
    ensure_store()
    _name_the_experiment()
    mark_dead_runs_killed()
    under_torchrun = distributed.launched()
    # a step torchrun started for a process that had a run open nests under that run
    parent = None if mlflow.active_run() else os.environ.get(distributed.PARENT_RUN_ENV)
    nested = mlflow.active_run() is not None
    with _terminate_as_interrupt() as signals, mlflow.start_run(nested=nested, parent_run_id=parent) as run:
        try:
            mlflow.set_tags({"shrinkflow.step": step, **process_tags(), **hardware_tags(torch.get_num_threads())})
            if under_torchrun and dist.is_initialized():
                world_size, backend = str(distributed.group().world_size), dist.get_backend()
                mlflow.set_tags({"shrinkflow.world_size": world_size, "shrinkflow.backend": backend})
            # Under `mlflow run` the project already logged its parameters (an empty string as
            # "''"); logging a param twice with another spelling is an error: add only the missing.
            logged = mlflow.get_run(run.info.run_id).data.params
            mlflow.log_params({k: v for k, v in params.items() if k not in logged})
            _check_artifacts_writable(run.info.artifact_uri)
            yield run
        except KeyboardInterrupt as exc:
            # Under torchrun a SIGTERM means the job is torn down, mostly because another
            # process failed: the run did not finish its work, so it failed.
            failed = under_torchrun and isinstance(exc, Terminated)
            signals.hold()
            if failed:
                mlflow.set_tag(
                    "shrinkflow.failure", f"{exc} from torchrun: another process failed or the job was stopped"
                )
            mlflow.end_run("FAILED" if failed else "KILLED")
            raise
        except BaseException:
            signals.hold()  # start_run marks the run FAILED on the way out
            raise
        signals.hold()  # start_run marks the run FINISHED on the way out


def _name_the_experiment() -> None:
    """Runs of a step started on its own go to experiment ``shrinkflow``, not MLflow's ``Default``,
    unless the user chose one (``MLFLOW_EXPERIMENT_NAME``/``_ID``, ``mlflow run --experiment-name``)
    or the run exists already (under ``mlflow run``, or nested in an open run)."""
    chosen = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", distributed.PARENT_RUN_ENV)
    if mlflow.active_run() is None and not any(os.environ.get(name) for name in chosen):
        mlflow.set_experiment(EXPERIMENT)


def active_run_id() -> str | None:
    """The run open in this process, if any (for the processes it starts to nest under)."""
    run = mlflow.active_run()
    return run.info.run_id if run else None


def ensure_store() -> None:
    """Create or upgrade a SQLite tracking store under a file lock, once per process: MLflow's
    own creation races when two steps start at once on a new store (both run the schema
    migration; seen to crash both, and once to leave the store unusable)."""
    uri = mlflow.get_tracking_uri()
    if uri in _READY_STORES:
        return
    if uri.startswith("sqlite:///"):
        with sqlite_lock(uri):
            mlflow.MlflowClient().search_experiments(max_results=1)  # creates/upgrades the schema
    _READY_STORES.add(uri)


def store_identity() -> dict[str, str]:
    """What tells this tracking store from another, even at the same URI (``mlflow.db`` deleted
    and made anew): its URI and when its Default experiment was created."""
    ensure_store()
    try:
        created = str(mlflow.MlflowClient().get_experiment("0").creation_time)
    except mlflow.exceptions.MlflowException:  # no Default experiment: the URI alone
        created = ""
    return {"uri": mlflow.get_tracking_uri(), "created": created}


def process_tags() -> dict[str, str]:
    """The tags that let a later step tell whether the process of a RUNNING run is gone."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def tag_joined_run(run_id: str) -> None:
    """Tag the run ``mlflow run`` started for this step with this host and process, before the
    step loads anything: killed in that time, the run would stay RUNNING with nothing telling a
    later step that its process is gone. A store that refuses is left for the step to report."""
    if distributed.launched() and not distributed.is_main():
        return
    try:
        ensure_store()
        for key, value in process_tags().items():
            mlflow.MlflowClient().set_tag(run_id, key, value)
    except MlflowException:
        pass


def mark_dead_runs_killed() -> list[str]:
    """Mark KILLED the RUNNING runs started on this host by a process that no longer exists;
    return their ids."""
    client = mlflow.MlflowClient()
    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'",
    )
    dead = [run.info.run_id for run in running if not _alive(int(run.data.tags.get(PID_TAG, "0")))]
    for run_id in dead:
        client.set_terminated(run_id, "KILLED")
    return dead


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _in_store_transaction(frame) -> bool:
    """Is the interrupted code inside the tracking store's database code? An exception raised
    mid-transaction leaves SQLite's lock held by a connection no one closes, and marking the
    run KILLED then fails with "database is locked" (seen in 1 of 8 tries under load)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(("sqlalchemy", "sqlite3", "mlflow.store")):
            return True
        frame = frame.f_back
    return False


class _Signals:
    """SIGTERM and SIGHUP as ``Terminated``, until ``hold()``: from then on (the run is being
    ended) a signal waits, and is sent again once the block is over, to the handlers the block
    found (by default the process then ends by the signal, its run already marked)."""

    def __init__(self):
        self.holding, self.closed = False, False
        self.waiting = None  # a signal received and not acted on yet
        self._lock = threading.Lock()

    def hold(self) -> None:
        self.holding = True

    def interrupt(self, signum, frame) -> None:
        if self.holding:
            self.waiting = signum
            return
        if _in_store_transaction(frame):  # raising there leaves the SQLite store locked: retry soon
            self.waiting = signum
            threading.Timer(0.05, self._resend, (signum,)).start()
            return
        raise Terminated(signal.Signals(signum).name)

    def _resend(self, signum) -> None:
        with self._lock:
            if self.closed:  # the block is over: close() sends it
                return
            self.waiting = None
        os.kill(os.getpid(), signum)

    def close(self) -> int | None:
        """The signal still waiting, if any; none is resent from now on."""
        with self._lock:
            self.closed = True
            return self.waiting


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[_Signals]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` until ``hold()`` is called
    (only the main thread can install handlers; elsewhere the block runs unchanged)."""
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    # a signal the user ignores stays ignored: under nohup, a closed terminal must not stop the step
    stops = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, signals.interrupt) for sig in stops}
    try:
        yield signals
    finally:
        waiting = signals.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if waiting is not None:
            os.kill(os.getpid(), waiting)


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
    if Path(data.source).is_file():  # MLflow keeps one source for equal datasets: the file as read here
        mlflow.set_tag(DATASET_FILE_TAG, data.source)


def dataset_of_run(run_id: str, description: dict[str, Any]) -> DataSplits:
    """The dataset the model of ``run_id`` was trained on (``data.dataset_of``), checked against
    the splits that run logged (``check_dataset``). A table it names is read only if a run the
    model came from logged that very file as its input: a description (anyone's logged model)
    cannot make a step read, and describe, any table on this machine."""
    spec = str(description["dataset"]["spec"])
    if spec.lower().endswith(TABLE_SUFFIXES):
        _check_table_was_logged(run_id, spec)
    data = dataset_of(description)
    check_dataset(run_id, data)
    return data


def _check_table_was_logged(run_id: str, spec: str) -> None:
    path = str(Path(spec).resolve())
    if path not in _logged_files(run_id):
        raise ShrinkflowError(
            f"the model of run {run_id!r} names the table {spec[:200]!r}, which no run it came from logged as its "
            "dataset, so it is not read: run the steps from the folder the model was trained in, or train anew on it"
        )


def _logged_files(run_id: str, most: int = 32) -> set[str]:
    """The table files ``run_id`` and the runs it came from read as their datasets."""
    files, seen, todo = set(), set(), [run_id]
    while todo and len(seen) < most:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            run = mlflow.get_run(current)
        except MlflowException:
            continue
        if DATASET_FILE_TAG in run.data.tags:
            files.add(run.data.tags[DATASET_FILE_TAG])
        for dataset_input in run.inputs.dataset_inputs if run.inputs else []:  # runs from before the tag
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                files.add(json.loads(dataset_input.dataset.source).get("uri", "").removeprefix("file://"))
        todo += [run.data.tags[tag] for tag in _LINEAGE_TAGS if tag in run.data.tags]
    return files


def check_dataset(run_id: str, data: DataSplits) -> None:
    """Refuse ``data`` if it differs from the splits ``run_id`` logged as its inputs (their
    digests): a table whose rows were reordered or edited is split differently, and scoring on
    it would mix training rows into the test split."""
    run = mlflow.get_run(run_id)
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        name, logged = dataset_input.dataset.name, dataset_input.dataset.digest
        split = name.removeprefix(f"{data.name}-")
        if split in SPLITS and split != name and data.digest(split) != logged:
            raise ShrinkflowError(
                f"dataset {data.spec!r} is not what run {run_id!r} used: its {split} split had digest {logged}, "
                f"now {data.digest(split)} (rows changed or reordered, so the split would differ): restore the data "
                "or retrain on it"
            )


def _pip_requirements(onnx: bool) -> list[str]:
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]
    if onnx:
        import onnxruntime

        pins.append(f"onnxruntime=={onnxruntime.__version__}")
    return pins


def _served_onnx(artifact: Artifact, data: DataSplits, target: str, folder: Path) -> tuple[Path | None, str]:
    """With target onnxruntime: the model's ONNX form in ``folder`` when it predicts the class
    PyTorch does on the whole test split, and how the model is served (tag
    ``shrinkflow.served_form``): onnxruntime, or pytorch with a warning line saying why."""
    if target != "onnxruntime":
        return None, "pytorch"
    try:
        onnx_model = export_onnx(artifact.model, data.x_train[:2])
        check = check_onnx(artifact.model, onnx_model, data.x_test)
        problem = check.problem(default_tolerance(artifact.model))  # the export step's rule
    except ShrinkflowError as exc:
        problem = str(exc)
    if problem:
        print(f"warning: the model is served by PyTorch, not ONNX Runtime: {problem}", file=sys.stderr)
        return None, "pytorch"
    path = folder / "model.onnx"
    path.write_bytes(onnx_model)
    return path, "onnxruntime"


def log_model(artifact: Artifact, data: DataSplits, target: str = "onnxruntime") -> str:
    """Log ``artifact``'s checkpoint as the run's model; return its model id
    (``models:/<model_id>``). The served model takes raw inputs — a table's rows with its column
    names where the model was trained on a table — and returns class names (``params={"output":
    "probabilities"}`` or ``"logits"`` for the others); two training samples give the input
    example and signature, turned back into raw inputs. With ``target`` onnxruntime it also
    carries the model's ONNX form and serves it with ONNX Runtime (what is timed is what is
    served), unless that form cannot be made or predicts differently on the test split."""
    example = data.x_train[:2]
    preprocessing = artifact.description.get("preprocessing", {})
    raw_example = raw_inputs(preprocessing, example)
    with torch.no_grad():
        logits = artifact.model.cpu().eval()(example.cpu())
    labels = np.asarray(class_names_of(artifact.description), dtype=object)[logits.argmax(1).numpy()]
    factory = artifact.description["architecture"]["name"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = artifact.save(Path(tmp) / "checkpoint")
        onnx_path, served = _served_onnx(artifact, data, target, Path(tmp))
        code_paths, requirements = [str(_PACKAGE_DIR)], _pip_requirements(onnx_path is not None)
        digests = {"checkpoint": checkpoint_digest(folder), **({"onnx": file_digest(onnx_path)} if onnx_path else {})}
        if is_import_spec(factory):
            more_code, more_requirements = user_code(factory)
            code_paths, requirements = code_paths + more_code, requirements + more_requirements
        info = mlflow.pyfunc.log_model(
            name=_MODEL_NAME,
            python_model=str(_PACKAGE_DIR / "pyfunc_model.py"),
            artifacts={"checkpoint": str(folder), **({"onnx": str(onnx_path)} if onnx_path else {})},
            code_paths=code_paths,
            # the logged model's own factory is trusted where it is served (its code travels with it);
            # the digests let the served model refuse files changed in the artifact store
            model_config={"trust": [factory] if is_import_spec(factory) else [], "sha256": digests},
            signature=infer_signature(raw_example, labels, params={"output": "labels"}),
            input_example=raw_example,
            pip_requirements=requirements,
        )
        mlflow.set_logged_model_tags(
            info.model_id, {DIGEST_TAG: digests["checkpoint"], "shrinkflow.served_form": served}
        )
        if mlflow.active_run() is not None:
            mlflow.set_tag("shrinkflow.served_form", served)
    return info.model_id


def log_figure(figure, name: str) -> None:
    """Log a matplotlib ``figure`` to the active run as ``name``, then close it (pyplot keeps
    every figure it made until it is closed)."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, name)
    plt.close(figure)


def log_onnx_model(onnx_model: bytes, example: np.ndarray, logits: np.ndarray) -> str:
    """Log ``onnx_model`` (one self-contained ``model.onnx``, run on ONNX Runtime's CPU provider,
    the one the export was checked on) as the active run's MLflow ``onnx`` model with a signature
    from ``example`` and its ``logits``; return its model id. Requirements are pinned here: MLflow
    would otherwise infer them by importing the model in a subprocess (~2 s)."""
    import onnx
    import onnxruntime

    logged = mlflow.onnx.log_model(
        onnx.load_from_string(onnx_model), name=_MODEL_NAME, input_example=example,
        onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
        signature=infer_signature(example, logits),
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}",
                          f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
    )  # fmt: skip
    mlflow.set_tag("shrinkflow.model_id", logged.model_id)
    return logged.model_id


@contextlib.contextmanager
def checkpoint_files(artifact: Artifact, tables: dict[str, pd.DataFrame]) -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder holding ``checkpoint/`` and each table as an MLflow table (JSON, orient split),
    with the run tags that go with them (the checkpoint's digest, the tables' entry in
    ``mlflow.loggedArtifacts``): one ``log_artifacts`` and one ``log_batch`` log them, where
    ``log_table`` alone takes three calls (a search logs one such folder per trial). The
    checkpoint alone is enough for ``load_model``; serving needs ``log_model``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = artifact.save(folder / _CHECKPOINT)
        for name, table in tables.items():
            table.to_json(folder / name, orient="split", index=False, date_format="iso")
        listed = json.dumps([{"path": name, "type": "table"} for name in tables])
        yield folder, {DIGEST_TAG: checkpoint_digest(checkpoint), MLFLOW_LOGGED_ARTIFACTS: listed}


def _checkpoint_uri(run_id: str) -> tuple[str, str | None]:
    """Where the checkpoint of ``run_id`` lives — its logged model's, else its own
    ``checkpoint/`` — and the digest recorded when it was logged (None before digests existed)."""
    try:
        run = mlflow.get_run(run_id)
    except MlflowException as exc:
        raise ShrinkflowError(
            f"run {run_id!r} does not exist in tracking store {mlflow.get_tracking_uri()}: "
            "pass the run id printed on the last line of a train step"
        ) from exc
    outputs = run.outputs.model_outputs if run.outputs else []
    if outputs:
        model = mlflow.get_logged_model(outputs[-1].model_id)
        return f"{model.artifact_location}/artifacts/{_CHECKPOINT}", model.tags.get(DIGEST_TAG)
    if any(f.path == _CHECKPOINT for f in mlflow.MlflowClient().list_artifacts(run_id)):
        return f"{run.info.artifact_uri}/{_CHECKPOINT}", run.data.tags.get(DIGEST_TAG)
    step = run.data.tags.get("shrinkflow.step", "unknown")
    raise ShrinkflowError(
        f"run {run_id!r} (step {step}) logged no model: pass the run id of a train, prune, quantize, distill or "
        "search trial run"
    )


def load_model(run_id: str) -> tuple[Artifact, dict[str, float]]:
    """Download the model that ``run_id`` logged and rebuild it; return the artifact and its
    ``cost_*`` metrics, ``cost_size_bytes`` measured on the checkpoint as it was logged."""
    ensure_store()
    uri, recorded = _checkpoint_uri(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = _download_checkpoint(uri, tmp, run_id)
        if problem := _folder_problem(local, recorded):
            raise ShrinkflowError(f"the model of run {run_id!r} cannot be used: {problem}; log the model again")
        artifact = _load_checkpoint(local, run_id)
        return artifact, cost_summary(artifact.model, artifact.description, local, artifact.encodings)


def checkpoint_problem(run_id: str) -> str | None:
    """Why the checkpoint ``run_id`` logged cannot be used as it was logged — missing, unreadable,
    or not matching its recorded digest — or None when it is intact. A cache reuses a run only
    when this is None."""
    uri, recorded = _checkpoint_uri(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return _folder_problem(_download_checkpoint(uri, tmp, run_id), recorded)
        except ShrinkflowError as exc:
            return str(exc)


def _download_checkpoint(uri: str, tmp: str, run_id: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
    except (MlflowException, OSError) as exc:
        raise ShrinkflowError(f"the model of run {run_id!r} has no readable checkpoint: {exc}") from exc


def _folder_problem(folder: Path, recorded: str | None) -> str | None:
    if not holds_checkpoint(folder):  # format 1 models, logged before, hold no CHECKPOINT_FILE
        return f"its checkpoint file {CHECKPOINT_FILE} is missing from the artifact store"
    if recorded is None:
        print("warning: this model records no checkpoint digest (logged before digests were): it cannot be checked",
              file=sys.stderr)  # fmt: skip
    if recorded is not None and checkpoint_digest(folder) != recorded:
        return (
            "its checkpoint is not the one it logged (SHA-256 differs from the digest recorded in the tracking "
            "store): it was changed or corrupted in the artifact store"
        )
    return None


def _load_checkpoint(folder: Path, run_id: str) -> Artifact:
    """``Artifact.load``, its errors naming the run rather than a temporary folder."""
    try:
        return Artifact.load(folder)
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"run {run_id!r}: {str(exc).replace(str(folder), 'its checkpoint')}") from None


def log_table(table: pd.DataFrame, name: str) -> None:
    """Log ``table`` twice: ``<name>.json`` as an MLflow table (for the UI) and ``<name>.csv``."""
    mlflow.log_table(table, artifact_file=f"{name}.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.csv"
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path))


# --- runs: what the steps, the search and the recipes write and read (none of them imports MLflow)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log ``metrics`` on the active run (at ``step``: an epoch)."""
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)


def epoch_logger() -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch(epoch, metrics)`` hook that logs each epoch's metrics on the active run."""
    return lambda epoch, metrics: log_metrics(metrics, step=epoch)


def set_tags(tags: dict[str, Any]) -> None:
    """Tag the active run."""
    mlflow.set_tags(tags)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def use_tracking_uri(uri: str) -> None:
    """Point this process (a search worker) at the tracking store ``uri``."""
    mlflow.set_tracking_uri(uri)


def run_tags(run_id: str) -> dict[str, str]:
    return dict(mlflow.get_run(run_id).data.tags)


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(mlflow.get_run(run_id).data.metrics)


def find_runs(where: str, every_experiment: bool = True) -> list:
    """The runs that match MLflow's filter ``where``, newest first: of every experiment, or of the
    active one."""
    return mlflow.search_runs(
        search_all_experiments=every_experiment, filter_string=where, output_format="list",
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    """Tag the run ``run_id`` (not necessarily the active one)."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def end_run(run_id: str, status: str) -> None:
    """Set the run ``run_id`` to ``status`` (FINISHED, FAILED, KILLED)."""
    mlflow.MlflowClient().set_terminated(run_id, status=status)


def start_child_run(experiment_id: str, parent_run_id: str, name: str, tags: dict[str, str]) -> str:
    """Create a run nested under ``parent_run_id`` without making it active (a search trial:
    the client API costs a fraction of a fluent ``start_run``); return its id."""
    tags = {"mlflow.parentRunId": parent_run_id, **tags}
    return mlflow.MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id


def log_run_batch(
    run_id: str, metrics: dict[str, float], params: dict[str, Any], tags: dict[str, str], folder: Path | None = None
) -> None:
    """Metrics, params and tags of the run ``run_id`` in one call, then the files of ``folder``."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client = mlflow.MlflowClient()
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    if folder is not None:
        client.log_artifacts(run_id, str(folder))


@contextlib.contextmanager
def resumed_run(run_id: str) -> Iterator[None]:
    """Make the existing run ``run_id`` the active one (nested in the active run) for a while."""
    with mlflow.start_run(run_id=run_id, nested=True):
        yield


def register_model(model_id: str, name: str, alias: str) -> str:
    """Register the logged model ``model_id`` as a new version of ``name`` with ``alias``; return
    the version."""
    version = mlflow.register_model(f"models:/{model_id}", name)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)
