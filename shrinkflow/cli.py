"""The common shell of every step's ``main()``: one clear error line and a non-zero exit."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

from shrinkflow import distributed
from shrinkflow.config import ShrinkflowError

__all__ = ["EXIT_BAD_INPUT", "EXIT_NO_RESULT", "NoResult", "Terminated", "about_run", "run_main"]

EXIT_BAD_INPUT = 2
EXIT_NO_RESULT = 3


class NoResult(ShrinkflowError):
    """The step finished its work and logged it, but found nothing to hand on (a search whose
    front is empty): one line and exit ``EXIT_NO_RESULT``, its run FINISHED."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``kill``, ``timeout``, a closed terminal) inside a step's run: stop as
    Ctrl-C does, so that the run is marked KILLED."""


def run_main(step: Callable[[], str]) -> None:
    """Run ``step``; print its run id as the last line, or ``error: ...`` and exit 2 (bad input),
    3 (``NoResult``) or 128 + the signal's number (interrupted: Ctrl-C 130, SIGTERM 143, SIGHUP 129)."""
    try:
        run_id = step()
    except ShrinkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_NO_RESULT if isinstance(exc, NoResult) else EXIT_BAD_INPUT)
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
def about_run(run_id: str) -> Iterator[None]:
    """Name the run whose model a library error is about: ``run '<id>': <error>``."""
    try:
        yield
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"run {run_id!r}: {exc}") from exc
