"""Shrinkflow's library: make a PyTorch model cheaper to run, and measure what it costs.

Every technique takes an ``Artifact`` (model + description + packed codes) and returns a new
one, so techniques chain in memory exactly as the MLflow steps (``steps/``) chain them by run id::

    from shrinkflow import (DistillSettings, FitSettings, PruneSettings, QuantizeSettings, cost,
                            distill, load_dataset, new_artifact, prune, quantize, train)

    data = load_dataset("digits")
    cpu = torch.device("cpu")
    teacher = train(new_artifact("mlp", data), data, FitSettings(epochs=20), cpu).artifact
    student = distill(teacher, data, DistillSettings(epochs=20), cpu).artifact
    pruned = prune(student, data, PruneSettings(sparsity=0.8, epochs=5), cpu).artifact
    small = quantize(pruned, data, QuantizeSettings(method="kbit", bits="4"), cpu).artifact
    print(cost(small))  # MACs, BOPs, parameters, bytes of the checkpoint it saves

What users call is exported here. The public modules below hold the rest that steps, search and
recipes use: ``config`` (errors, config dataclass -> CLI), ``data`` (datasets and splits), ``zoo``
(models rebuilt from their description; trust of user code), ``runtime`` (devices, seeds),
``training`` (fit/score, ``train``), ``artifact``, ``checkpoint`` (safetensors + JSON on disk),
``cost`` (exact MACs, BOPs, sizes), ``latency`` (timing, peak memory), ``evaluation`` (accuracy,
per-class table, confusion matrix), ``benchmarking`` (latency, throughput, memory and price per
device and batch size), ``onnx_export``, ``pruning``, ``quantization`` and ``distillation`` (the
techniques and their method registries), ``techniques`` (the registry of the techniques that
steps, search and recipes read), ``distributed`` (torchrun), ``tracking`` (the one module that
talks to MLflow; not imported here) and ``cli`` (the steps' error handling). Modules whose name
starts with ``_`` (``_storage``, ``_entropy``, ``_encoding``, ``_masks``, ``_variational``,
``_sws``, ``_mixed_precision``, ``_imports``, ``_onnx_graph``) are the implementation: no stable
interface.
"""

from shrinkflow.artifact import Artifact, new_artifact
from shrinkflow.config import ShrinkflowError
from shrinkflow.cost import cost
from shrinkflow.data import DataSplits, load_dataset
from shrinkflow.distillation import DistillResult, DistillSettings, distill
from shrinkflow.pruning import PRUNING_METHODS, PruneResult, PruneSettings, prune, pruning_method
from shrinkflow.quantization import (
    QUANTIZATION_METHODS,
    QuantizeResult,
    QuantizeSettings,
    quantization_method,
    quantize,
)
from shrinkflow.runtime import resolve_device, seed_everything
from shrinkflow.techniques import TECHNIQUES, Technique, register_technique
from shrinkflow.training import FitSettings, TrainResult, score, train

__all__ = [
    "PRUNING_METHODS",
    "QUANTIZATION_METHODS",
    "TECHNIQUES",
    "Artifact",
    "DataSplits",
    "DistillResult",
    "DistillSettings",
    "FitSettings",
    "PruneResult",
    "PruneSettings",
    "QuantizeResult",
    "QuantizeSettings",
    "ShrinkflowError",
    "Technique",
    "TrainResult",
    "cost",
    "distill",
    "load_dataset",
    "new_artifact",
    "prune",
    "pruning_method",
    "quantization_method",
    "quantize",
    "register_technique",
    "resolve_device",
    "score",
    "seed_everything",
    "train",
]
