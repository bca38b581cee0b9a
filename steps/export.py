"""Export a logged model to ONNX, checked against PyTorch in ONNX Runtime.

Consumes: the run id of a step that logged a model. Every storage exports: static int8 and QAT as
int8 ONNX (QuantizeLinear/DequantizeLinear around each int8 layer, with the model's own weight
scales, per channel or per tensor, and activation scales, which ONNX Runtime fuses into
QLinearConv/QGemm; a first convolution with at most 32 products per output, such as 1 or 3 input
channels of a 3x3 kernel, runs in float32 from its int8 weights dequantized exactly, since ONNX
Runtime's int8 kernels are slower there); dynamic int8 Linear layers as ONNX Runtime's dynamic int8 form of the same
int8 weights (DynamicQuantizeLinear, MatMulInteger); k-bit, k-means, binary and sparse models as
their decoded float32 weights (tag ``shrinkflow.exported_as``: ``int8``, ``int8-dynamic`` or
``float32``). A dynamic-int8 LSTM has no ONNX form and is refused with the reason.
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with the ONNX model logged as an
MLflow ``onnx`` model (``models:/<model_id>``, file ``model.onnx``, signature and input example)
and the check of it on the whole test split: ``onnx_argmax_agreement`` (1.0: every predicted
class agrees; a class may change only where PyTorch's two logits are a tie within the tolerance,
counted in ``onnx_class_changes_within_tolerance``), ``onnx_max_abs_logit_diff``,
``onnx_relative_logit_diff`` (over the largest |logit|) and ``onnx_size_bytes``. A model whose
ONNX form predicts differently fails with one line and logs no run. The run id is the last line printed.

ONNX is also the road to accelerators this project does not run: TPUs through ONNX → TensorFlow
/ XLA converters, FPGAs through AMD Vitis AI or hls4ml. Those toolchains are not tested here.

Example:
    python -m steps.export --run-id <run id>
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from shrinkflow.cli import entry_point
from shrinkflow.config import ShrinkflowError, check_run_id, config_to_params
from shrinkflow.cost import format_bytes
from shrinkflow.onnx_export import FLOAT_TOLERANCE, INT8_TOLERANCE, check_onnx, default_tolerance, export_onnx

__all__ = ["ExportConfig", "main"]


@dataclass(frozen=True)
class ExportConfig:
    """Export a logged model to ONNX and check ONNX Runtime's predictions against PyTorch's."""

    run_id: str = field(metadata={"help": "run id of the step that logged the model"})
    tolerance: float = field(
        default=0.0,
        metadata={
            "help": f"largest logit difference allowed, as a share of the largest |logit|; 0 = {FLOAT_TOLERANCE:g} "
            f"for float models, {INT8_TOLERANCE:g} for int8"
        },
    )

    def __post_init__(self):
        check_run_id(self.run_id)
        if not 0 <= self.tolerance < 1:
            raise ShrinkflowError(f"tolerance must be in [0, 1) (0 = the default for the model), got {self.tolerance}")


def execute(cfg: ExportConfig) -> str:
    from shrinkflow import tracking

    artifact, _ = tracking.load_model(cfg.run_id)
    data = tracking.dataset_of_run(cfg.run_id, artifact.description)
    exported_as = {"int8-static": "int8", "int8-dynamic": "int8-dynamic"}.get(artifact.storage, "float32")
    tolerance = cfg.tolerance or default_tolerance(artifact.model)
    try:
        onnx_model = export_onnx(artifact.model, data.x_test[:2])
        check = check_onnx(artifact.model, onnx_model, data.x_test)
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"run {cfg.run_id!r} (storage {artifact.storage}): {exc}") from exc
    problem = check.problem(tolerance)
    if problem:
        raise ShrinkflowError(f"run {cfg.run_id!r}: the ONNX export is not faithful: {problem}")
    with tracking.step_run("export", config_to_params(cfg)) as run:
        tracking.set_tags({"shrinkflow.source_run_id": cfg.run_id, "shrinkflow.exported_as": exported_as})
        tracking.log_dataset(data, "test")
        example = data.x_test[:2]
        model_id = tracking.log_onnx_model(onnx_model, example.numpy(), artifact.model.eval()(example).detach().numpy())
        metrics = {
            "onnx_argmax_agreement": check.argmax_agreement,
            "onnx_class_changes_within_tolerance": len(check.changed_margins),
            "onnx_max_abs_logit_diff": check.max_abs_logit_diff,
            "onnx_relative_logit_diff": check.relative_logit_diff,
            "onnx_tolerance": tolerance,
            "onnx_size_bytes": len(onnx_model),
        }
        tracking.log_metrics(metrics)
        print(
            f"ONNX (exported as {exported_as}, {format_bytes(len(onnx_model))}): same class as PyTorch on "
            f"{round(check.argmax_agreement * check.samples)}/{check.samples} test samples"
            f"{' (the others: ties within the tolerance)' if check.changed_margins else ''}, logits within "
            f"{check.max_abs_logit_diff:.2g} "
            f"({check.relative_logit_diff:.2g} of the largest, tolerance {tolerance:g}), model {model_id}",
            file=sys.stderr,
        )
        return run.info.run_id


main = entry_point(ExportConfig, execute, __name__)
