"""Where and how reproducibly things run: the device a user names, and the seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from shrinkflow.config import ShrinkflowError

__all__ = ["DEVICES", "resolve_device", "seed_everything"]

DEVICES = ("auto", "cpu", "cuda", "mps")


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
