"""Where and how reproducibly things run: the device a user names, and the seeds."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from shrinkflow.config import ShrinkflowError

__all__ = ["DEVICES", "die_with_parent", "file_lock", "resolve_device", "seed_everything", "sqlite_lock"]

try:
    import fcntl
except ImportError:  # Windows: no flock; SQLite files are created unlocked
    fcntl = None

DEVICES = ("auto", "cpu", "cuda", "mps")


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive file lock beside the SQLite database of ``url`` (``<file>.lock``); any
    other URL: nothing. Processes that start at once on a new SQLite file would otherwise all
    create its schema (MLflow's and Optuna's migrations race, and crash)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url.removeprefix("sqlite:///").split("?")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(Path(f"{path}.lock")):
        yield


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be) against the other processes of
    this machine; where there is no ``flock`` (Windows), nothing."""
    if fcntl is None:
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this process (SIGTERM to itself) within ``poll_s`` of ``parent_pid`` ceasing to be its
    parent: a helper process of a parent killed by SIGKILL, which can run no cleanup, would
    otherwise go on working for a run already marked KILLED."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ShrinkflowError(f"unknown device {name!r}: choose {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ShrinkflowError(f"device {name!r} requested but CUDA is not available: use cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ShrinkflowError("device 'mps' requested but MPS is not available: use cpu or auto")
    return torch.device(name)
