"""Export a logged model to ONNX, checked against PyTorch in ONNX Runtime.

Consumes: the run id of a step that logged a model (fp32, pruned, structurally pruned, k-bit or
static int8; dynamic int8 has no ONNX operator and is refused with the reason).
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with the ONNX model logged as an
MLflow ``onnx`` model (``models:/<model_id>``, file ``model.onnx``, signature and input example)
and the check of it on the whole test split: ``onnx_argmax_agreement`` (1.0: every predicted
class agrees), ``onnx_max_abs_logit_diff``, ``onnx_relative_logit_diff`` (over the largest
|logit|) and ``onnx_size_bytes``. A model whose ONNX form predicts differently fails with one
line and logs no run. The run id is the last line printed.

ONNX is also the road to accelerators this project does not run: TPUs through ONNX → TensorFlow
/ XLA converters, FPGAs through AMD Vitis AI or hls4ml. Those toolchains are not tested here.

Example:
    python -m steps.export --run-id <run id>
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from shrinkflow.cli import run_main
from shrinkflow.config import ShrinkflowError, check_run_id, config_to_params, parse_config
from shrinkflow.data import dataset_of
from shrinkflow.encoding import has_int8_layers
from shrinkflow.onnx_export import check_onnx, export_onnx

__all__ = ["CONFIG", "ExportConfig", "main"]

FLOAT_TOLERANCE = 1e-4  # float32 in both runtimes: only the order of summation differs
# ONNX Runtime's integer kernels round requantized activations their own way (seen: 1.5% of the
# largest logit on digits cnn, every predicted class the same)
INT8_TOLERANCE = 0.05


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
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from shrinkflow import tracking

    artifact, _ = tracking.load_model(cfg.run_id)
    data = dataset_of(artifact.description)
    tracking.check_dataset(cfg.run_id, data)
    int8 = has_int8_layers(artifact.model)
    tolerance = cfg.tolerance or (INT8_TOLERANCE if int8 else FLOAT_TOLERANCE)
    try:
        onnx_model = export_onnx(artifact.model, data.x_test[:2])
        check = check_onnx(artifact.model, onnx_model, data.x_test)
    except ShrinkflowError as exc:
        raise ShrinkflowError(f"run {cfg.run_id!r} (storage {artifact.storage}): {exc}") from exc
    problem = check.problem(tolerance)
    if problem:
        raise ShrinkflowError(f"run {cfg.run_id!r}: the ONNX export is not faithful: {problem}")
    with tracking.step_run("export", config_to_params(cfg)) as run:
        mlflow.set_tags(
            {"shrinkflow.source_run_id": cfg.run_id, "shrinkflow.onnx_weights": "int8" if int8 else "float32"}
        )
        tracking.log_dataset(data, "test")
        example = data.x_test[:2].numpy()
        logged = mlflow.onnx.log_model(
            onnx.load_from_string(onnx_model), name="model", input_example=example,
            onnx_execution_providers=["CPUExecutionProvider"],  # the provider the check ran on
            save_as_external_data=False,  # one self-contained model.onnx, the file that was checked
            signature=infer_signature(example, artifact.model.eval()(data.x_test[:2]).detach().numpy()),
        )  # fmt: skip
        metrics = {
            "onnx_argmax_agreement": check.argmax_agreement,
            "onnx_max_abs_logit_diff": check.max_abs_logit_diff,
            "onnx_relative_logit_diff": check.relative_logit_diff,
            "onnx_tolerance": tolerance,
            "onnx_size_bytes": len(onnx_model),
        }
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.model_id", logged.model_id)
        print(
            f"ONNX ({'int8' if int8 else 'float32'} weights, {len(onnx_model)} bytes): same class as PyTorch on "
            f"{check.samples}/{check.samples} test samples, logits within {check.max_abs_logit_diff:.2g} "
            f"({check.relative_logit_diff:.2g} of the largest, tolerance {tolerance:g}), model {logged.model_id}",
            file=sys.stderr,
        )
        return run.info.run_id


CONFIG = ExportConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(ExportConfig, argv)))


if __name__ == "__main__":
    main()
