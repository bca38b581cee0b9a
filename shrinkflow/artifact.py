"""An ``Artifact``: a model together with everything needed to save, reload and cost it.

Every technique (``train``, ``distill``, ``prune``, ``quantize``) takes an artifact and returns a
new one, so they chain in memory — the search does that — exactly as the steps chain them by run
id through MLflow. An artifact is never changed by the technique it is given to.

- ``model``: the ``nn.Module`` (on the CPU), holding the weights it runs with;
- ``description``: the JSON-able description saved in the checkpoint's header (``shrinkflow.checkpoint``):
  architecture, class names, dataset, storage format and what each technique recorded;
- ``encodings``: the packed codes of quantized weights (``packed`` storage), by state-dict name.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from shrinkflow._encoding import Encoded
from shrinkflow.checkpoint import is_quantized, read_checkpoint, save_checkpoint
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import DataSplits
from shrinkflow.runtime import seed_everything
from shrinkflow.zoo import build_model, check_model, describe

__all__ = ["Artifact", "new_artifact"]


@dataclass(frozen=True)
class Artifact:
    model: nn.Module
    description: dict[str, Any]
    encodings: dict[str, Encoded] = field(default_factory=dict)

    @property
    def storage(self) -> str:
        return self.description.get("storage", "dense-fp32")

    @property
    def is_quantized(self) -> bool:
        return is_quantized(self.description)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.description["architecture"]["input_shape"])

    def copy(self) -> Artifact:
        """A deep copy: techniques work on one, so the artifact they were given stays as it was."""
        return Artifact(copy.deepcopy(self.model), copy.deepcopy(self.description), copy.deepcopy(self.encodings))

    def save(self, folder: Path) -> Path:
        """Write the checkpoint (one file, ``model.shrinkflow``) to ``folder``; return the folder."""
        return save_checkpoint(self.model, self.description, folder, self.encodings)

    @classmethod
    def load(cls, folder: Path) -> Artifact:
        """Rebuild an artifact from a checkpoint folder (nothing is unpickled): saving it again
        writes the same checkpoint."""
        return cls(*read_checkpoint(folder))

    def reloaded(self) -> Artifact:
        """This artifact saved and loaded back: what a later step, or a server, will run."""
        with tempfile.TemporaryDirectory() as tmp:
            return Artifact.load(self.save(Path(tmp) / "checkpoint"))

    def require_float(self, action: str) -> None:
        """Refuse to ``action`` a quantized model: its weights are codes that would be spoiled."""
        if self.is_quantized:
            raise ShrinkflowError(
                f"the model is already quantized (storage {self.storage}): {action} the float model it was "
                "quantized from instead"
            )


def new_artifact(model: str, data: DataSplits, width: float = 1.0, depth: int = 0, seed: int = 0) -> Artifact:
    """A freshly initialized zoo (or ``package.module:factory``) model for ``data``, weights drawn
    with ``seed``: what ``train`` starts from."""
    description = {
        "architecture": describe(model, data.input_shape, data.num_classes, width, depth),
        "class_names": list(data.class_names),
        "dataset": data.reference(),
        "storage": "dense-fp32",
        **({"preprocessing": data.preprocessing} if data.preprocessing else {}),
    }
    seed_everything(seed)
    built = build_model(description["architecture"])
    check_model(built, data.x_train[:2], data.num_classes, model)
    seed_everything(seed)  # the check must not change the weights a seed gives (dropout, lazy layers)
    return Artifact(build_model(description["architecture"]), description)
