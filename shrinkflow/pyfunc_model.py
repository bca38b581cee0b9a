"""MLflow "model from code": serves a Shrinkflow checkpoint through ``mlflow.pyfunc``.

MLflow loads this file as source, so no Python object is pickled; the weights come from the
checkpoint folder logged beside it and are read with ``torch.load(weights_only=True)``. A model
logged for target onnxruntime also carries its ONNX form (artifact ``onnx``, checked against
PyTorch on the test split when it was logged): then ONNX Runtime computes the logits, as it did
when the model was timed, and PyTorch is not called.

Input: the raw inputs the model was trained from — for a table, a DataFrame with its feature
columns (any order, extra columns ignored), standardized here with the training statistics
saved in the model; otherwise a float array (N, *input_shape). Output, by the ``output`` param:
``labels`` (default: the class names), ``probabilities`` (a DataFrame, one column per class) or
``logits`` (an array).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from shrinkflow._imports import trust
from shrinkflow.checkpoint import checkpoint_digest, file_digest, load_checkpoint
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import apply_preprocessing, class_names_of
from shrinkflow.onnx_export import onnx_logits, onnx_session

OUTPUTS = ("labels", "probabilities", "logits")


class ShrinkflowPyfunc(PythonModel):
    def load_context(self, context):
        config = context.model_config or {}
        check_digests(context.artifacts, config.get("sha256"))
        for spec in config.get("trust", []):
            trust(spec)  # the model's own factory, logged with it by whoever logged the model
        self.model, self.description = load_checkpoint(context.artifacts["checkpoint"])
        self.preprocessing = self.description.get("preprocessing", {})
        self.class_names = np.asarray(class_names_of(self.description), dtype=object)
        onnx_path = context.artifacts.get("onnx")
        self.session = onnx_session(Path(onnx_path).read_bytes()) if onnx_path else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return onnx_logits(self.session, x)
        with torch.no_grad():
            return self.model(x)

    # np.ndarray: MLflow then takes the schema from the logged signature (a table's columns or an
    # array's shape) and passes a table through as a DataFrame; other hints warn or convert
    def predict(self, context, model_input: np.ndarray, params=None):
        output = (params or {}).get("output", "labels")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}: choose {', '.join(OUTPUTS)}")
        logits = self.logits(torch.as_tensor(apply_preprocessing(self.preprocessing, model_input)))
        if output == "logits":
            return logits.numpy()
        if output == "probabilities":
            return pd.DataFrame(torch.softmax(logits, 1).numpy(), columns=list(self.class_names))
        return self.class_names[logits.argmax(1).numpy()]


def check_digests(artifacts: dict[str, str], recorded: dict[str, str] | None) -> None:
    """Refuse files that differ from the SHA-256 digests recorded when the model was logged (a
    weight changed or a file truncated in the artifact store); a model logged before digests
    were recorded loads with a warning."""
    if not recorded:
        print("warning: this Shrinkflow model records no digests: its files cannot be checked", file=sys.stderr)
        return
    for name, expected in recorded.items():
        actual = _digest(Path(artifacts[name])) if name in artifacts else None
        if actual != expected:
            state = "is missing" if actual is None else "differs from the SHA-256 digest recorded when it was logged"
            raise ShrinkflowError(
                f"the model's {name} {state}: it was changed or corrupted in the artifact store; log the model again"
            )


def _digest(path: Path) -> str | None:
    if path.is_dir():
        return checkpoint_digest(path)
    return file_digest(path) if path.is_file() else None


set_model(ShrinkflowPyfunc())
