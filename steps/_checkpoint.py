"""A saved model: a state dict plus a JSON description, never a pickled module.

Layout of a checkpoint folder:
- ``weights.pt``: ``torch.save(model.state_dict())``, read back with ``weights_only=True``;
- ``model.json``: the architecture description (``steps._zoo.describe``), the class names and
  the dataset it was trained on, so a later step can rebuild the model and its data.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steps._config import ShrinkflowError
from steps._zoo import build_model

__all__ = [
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "DESCRIPTION_FILE",
    "checkpoint_bytes",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
DESCRIPTION_FILE = "model.json"


def save_checkpoint(model: nn.Module, description: dict[str, Any], folder: Path) -> Path:
    """Write ``model``'s weights and ``description`` to ``folder``; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    (folder / DESCRIPTION_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **description}, indent=2))
    return folder


def load_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load its weights (no unpickling of code)."""
    folder = Path(folder)
    try:
        description = json.loads((folder / DESCRIPTION_FILE).read_text())
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ShrinkflowError(f"checkpoint in {folder} is incomplete: missing {Path(exc.filename).name}") from exc
    except (json.JSONDecodeError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {str(exc).splitlines()[0]}") from exc
    if description.get("format_version") != FORMAT_VERSION:
        raise ShrinkflowError(
            f"checkpoint in {folder} has format version {description.get('format_version')!r}; "
            f"this Shrinkflow reads version {FORMAT_VERSION}"
        )
    model = build_model(description["architecture"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ShrinkflowError(
            f"checkpoint in {folder} does not match its architecture: {str(exc).splitlines()[0]}"
        ) from exc
    model.eval()
    return model, description


def checkpoint_bytes(folder: Path) -> int:
    """Bytes on disk of everything needed to rebuild the model."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
