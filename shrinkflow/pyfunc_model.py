"""MLflow "model from code": serves a Shrinkflow checkpoint through ``mlflow.pyfunc``.

MLflow loads this file as source, so no Python object is pickled; the weights come from the
checkpoint folder logged beside it and are read with ``torch.load(weights_only=True)``.
Input: a float32 array (N, *input_shape), preprocessed like the training data. Output: logits.
"""

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from shrinkflow.checkpoint import load_checkpoint


class ShrinkflowPyfunc(PythonModel):
    def load_context(self, context):
        self.model, self.description = load_checkpoint(context.artifacts["checkpoint"])

    # np.ndarray: MLflow takes the schema from the logged signature and skips its own validation
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).numpy()


set_model(ShrinkflowPyfunc())
