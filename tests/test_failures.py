"""Every failure that reaches a step's shell is one ``error:`` line: the machine's (memory, a
read-only folder), the stores' (MLflow, Optuna) and Shrinkflow's own bugs alike, with the run
marked FAILED and ``SHRINKFLOW_DEBUG=1`` for the traceback."""

from __future__ import annotations

import errno

import mlflow
import optuna
import pytest
from mlflow.exceptions import MlflowException

from steps import train

ARGV = ["--model", "mlp", "--epochs", "2", "--patience", "0", "--device", "cpu"]

# what a step may meet halfway through its run: (exception, exit status, what the line says)
FAILURES = {
    "memory": (MemoryError(), 2, "out of memory (MemoryError)"),
    "recursion": (RecursionError("maximum recursion depth exceeded"), 2, "nests too deep for Python"),
    "read-only folder": (OSError(errno.EROFS, "Read-only file system", "/store/artifacts"), 2,
                         "cannot use '/store/artifacts': Read-only file system (OSError)"),
    "disk full": (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    "mlflow": (MlflowException("API request to endpoint failed\nwith 20 more lines"), 2,
               "mlflow refused: API request to endpoint failed (MlflowException)"),
    "optuna": (optuna.exceptions.StorageInternalError("the storage broke"), 2,
               "optuna refused: the storage broke (StorageInternalError)"),
    "a bug": (AttributeError("'NoneType' object has no attribute 'shape'"), 1,
              "unexpected AttributeError: 'NoneType' object has no attribute 'shape' — a Shrinkflow bug"),
}  # fmt: skip


def _failing_in_the_run(monkeypatch, exc: BaseException) -> None:
    """The train step fails after its run started: when it logs the model."""

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("shrinkflow.tracking.log_model", fail)


@pytest.mark.parametrize("name", FAILURES)
def test_a_failure_inside_a_step_is_one_line_and_a_failed_run(name, monkeypatch, capsys, running_runs):
    exc, status, expected = FAILURES[name]
    _failing_in_the_run(monkeypatch, exc)
    monkeypatch.delenv("SHRINKFLOW_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train.main(ARGV)
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in err
    assert running_runs() == []
    (latest,) = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                                   order_by=["attributes.start_time DESC"])  # fmt: skip
    assert latest.info.status == "FAILED"


def test_shrinkflow_debug_shows_the_traceback(monkeypatch, capsys):
    _failing_in_the_run(monkeypatch, AttributeError("boom"))
    monkeypatch.setenv("SHRINKFLOW_DEBUG", "1")
    with pytest.raises(SystemExit):
        train.main(ARGV)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "AttributeError: boom" in err
    assert err.strip().splitlines()[-1].startswith("error: unexpected AttributeError: boom")
