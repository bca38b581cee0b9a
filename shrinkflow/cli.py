"""The common shell of every step's ``main()``: one clear error line and a non-zero exit."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from shrinkflow.config import ShrinkflowError

__all__ = ["EXIT_BAD_INPUT", "about_run", "run_main"]

EXIT_BAD_INPUT = 2


def run_main(step: Callable[[], str]) -> None:
    """Run ``step``; print its run id as the last line, or ``error: ...`` and exit 2."""
    try:
        run_id = step()
    except ShrinkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(run_id, flush=True)


@contextlib.contextmanager
def about_run(run_id: str) -> Iterator[None]:
    """Name the run whose model a library error is about: ``run '<id>': <error>``."""
    try:
        yield
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"run {run_id!r}: {exc}") from exc
