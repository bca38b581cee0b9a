"""The common shell of every step's ``main()``: one clear error line and a non-zero exit."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from shrinkflow import distributed
from shrinkflow.config import ShrinkflowError, ShrinkflowWarning, Terminated, parse_config
from shrinkflow.runtime import die_with_parent

__all__ = [
    "DEBUG_ENV",
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_NO_RESULT",
    "NoResult",
    "Terminated",
    "about_run",
    "entry_point",
    "failure_line",
    "one_line_warnings",
    "run_main",
]

EXIT_FAILURE = 1  # an error Shrinkflow did not foresee: a bug to report
EXIT_BAD_INPUT = 2
EXIT_NO_RESULT = 3
DEBUG_ENV = "SHRINKFLOW_DEBUG"  # =1: the traceback too
JOINED_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the step it starts: the run it joins


class NoResult(ShrinkflowError):
    """The step finished its work and logged it, but found nothing to hand on (a search whose
    front is empty): one line and exit ``EXIT_NO_RESULT``, its run FINISHED."""


def entry_point(config: type, execute: Callable[[Any], str], module: str = "") -> Callable[..., None]:
    """A step's ``main(argv=None)``: its ``config`` read from the command line (``argv``, else
    ``sys.argv``), then ``execute(config)`` under ``run_main``. ``main.config`` is ``config``.
    Given its module's ``__name__``, it runs ``main()`` at once when that module is the program
    (``python -m steps.train``): the last line of every step is its entry point."""

    def main(argv: list[str] | None = None) -> None:
        run_main(lambda: execute(parse_config(config, argv)))

    main.config = config
    if module == "__main__":
        main()
    return main


def run_main(step: Callable[[], str]) -> None:
    """Run ``step``; print its run id as the last line, or ``error: ...`` and exit 2 (bad input,
    or what the machine or the stores refused), 3 (``NoResult``), 1 (anything unforeseen) or
    128 + the signal's number (interrupted: Ctrl-C 130, SIGTERM 143, SIGHUP 129)."""
    if os.environ.get(JOINED_RUN_ENV):  # started by `mlflow run`
        from shrinkflow.tracking import tag_joined_run  # not at the top: it imports mlflow and torch

        tag_joined_run(os.environ[JOINED_RUN_ENV])
        # `mlflow run` killed alone (a supervisor's SIGTERM to its pid) leaves its step running
        # for a run no one waits for: the step stops as on SIGTERM, its run KILLED
        die_with_parent(os.getppid())
    try:
        with one_line_warnings():
            run_id = step()
    except ShrinkflowError as exc:
        _debug()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_NO_RESULT if isinstance(exc, NoResult) else EXIT_BAD_INPUT)
    except Exception as exc:  # the machine, the stores or a bug: one line all the same
        _debug()
        line, status = failure_line(exc)
        print(f"error: {line}", file=sys.stderr)
        sys.exit(status)
    except KeyboardInterrupt as exc:
        name = str(exc) if isinstance(exc, Terminated) else "SIGINT"
        status = "FAILED" if isinstance(exc, Terminated) and distributed.launched() else "KILLED"
        print(f"error: stopped by {name}; the step's run is marked {status}", file=sys.stderr)
        sys.exit(128 + signal.Signals[name].value)
    if run_id:  # under torchrun only rank 0 has a run
        print(run_id, flush=True)
    elif distributed.launched() and not distributed.is_main():
        distributed.exit_worker()


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, a ``ShrinkflowWarning`` prints as one ``warning: ...`` line on stderr
    (each distinct one once); other warnings as Python shows them."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ShrinkflowWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.simplefilter("default", ShrinkflowWarning)
        yield


def failure_line(exc: Exception) -> tuple[str, int]:
    """One line for an exception that is not a ``ShrinkflowError``, and the exit status: 2 for
    what the machine or the stores refused, ``EXIT_FAILURE`` for anything else (a bug)."""
    message = (str(exc).strip().splitlines() or [""])[0][:300]
    source = type(exc).__module__.split(".")[0]
    if isinstance(exc, MemoryError):
        return "out of memory (MemoryError): the data, model or batch is too large for this machine", EXIT_BAD_INPUT
    if isinstance(exc, RecursionError):
        return "an input nests too deep for Python (RecursionError)", EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        where = f" {exc.filename!r}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or message} ({type(exc).__name__})", EXIT_BAD_INPUT
    if source in ("mlflow", "optuna", "sqlalchemy"):
        return f"{source} refused: {message} ({type(exc).__name__})", EXIT_BAD_INPUT
    return (
        f"unexpected {type(exc).__name__}: {message} — a Shrinkflow bug, please report it "
        f"({DEBUG_ENV}=1 shows the traceback)"
    ), EXIT_FAILURE


def _debug() -> None:
    if os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exc()


@contextlib.contextmanager
def about_run(run_id: str) -> Iterator[None]:
    """Name the run whose model a library error is about: ``run '<id>': <error>``."""
    try:
        yield
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"run {run_id!r}: {exc}") from exc
