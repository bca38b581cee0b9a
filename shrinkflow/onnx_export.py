"""A model as ONNX, and the check that ONNX Runtime predicts what PyTorch does.

ONNX is how a Shrinkflow model reaches runtimes other than PyTorch: ONNX Runtime on CPUs and
GPUs, and through their ONNX toolchains, accelerators such as TPUs (via ONNX → TensorFlow/XLA
converters) and FPGAs (AMD Vitis AI, hls4ml): those toolchains are not run or tested here.
Pure PyTorch and ONNX Runtime: no MLflow, no files.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shrinkflow.config import ShrinkflowError
from shrinkflow.training import predict_logits

__all__ = ["ExportCheck", "check_onnx", "export_onnx", "onnx_logits", "onnx_session"]

OPSET = 17  # the TorchScript exporter's default, read by ONNX Runtime 1.16 and later


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (on the CPU, in eval mode) as an ONNX model with input ``input`` and output
    ``logits``, the batch dimension left free. An operator ONNX cannot express is one line
    naming it."""
    exported = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_stdout():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model.cpu().eval(), (example.cpu(),), exported, dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many types on operators it cannot express
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(f"cannot export this model to ONNX: {first_line}") from exc
    return exported.getvalue()


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Drop what C++ code writes to stdout: on an operator it cannot export, the exporter dumps
    the whole TorchScript graph there (stdout's last line is a step's run id)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def onnx_session(onnx_model: bytes, threads: int = 0):
    """An ONNX Runtime CPU session for ``onnx_model`` (``threads`` 0 = ONNX Runtime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting threads
    try:
        return onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own error types: a graph it cannot load or run
        first_line = str(exc).strip().splitlines()[0]
        raise ShrinkflowError(f"ONNX Runtime cannot load the exported model: {first_line}") from exc


def onnx_logits(session, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """ONNX Runtime's logits for ``x``, batch by batch, as a float32 CPU tensor."""
    chunks = [
        torch.from_numpy(session.run(None, {"input": x[start : start + batch_size].numpy().astype(np.float32)})[0])
        for start in range(0, len(x), batch_size)
    ]
    return torch.cat(chunks)


@dataclass(frozen=True)
class ExportCheck:
    samples: int
    argmax_agreement: float  # share of samples whose predicted class is the same
    max_abs_logit_diff: float
    logit_scale: float  # max |logit| of PyTorch's, to read the difference against

    @property
    def relative_logit_diff(self) -> float:
        return self.max_abs_logit_diff / max(self.logit_scale, 1e-12)

    def problem(self, tolerance: float) -> str | None:
        """Why the export is not faithful, or None: every predicted class must agree and every
        logit must be within ``tolerance`` × the largest |logit|."""
        if self.argmax_agreement < 1.0:
            changed = round((1 - self.argmax_agreement) * self.samples)
            return f"ONNX Runtime predicts another class than PyTorch for {changed} of {self.samples} samples"
        if self.relative_logit_diff > tolerance:
            return (
                f"ONNX Runtime's logits differ from PyTorch's by up to {self.max_abs_logit_diff:.3g} "
                f"({self.relative_logit_diff:.2g} of the largest logit, tolerance {tolerance:g})"
            )
        return None


def check_onnx(model: nn.Module, onnx_model: bytes, x: torch.Tensor) -> ExportCheck:
    """Run ``x`` through ``model`` in PyTorch (CPU) and through ``onnx_model`` in ONNX Runtime."""
    expected = predict_logits(model, x, torch.device("cpu"))
    actual = onnx_logits(onnx_session(onnx_model), x)
    if actual.shape != expected.shape:
        raise ShrinkflowError(
            f"ONNX Runtime returned logits of shape {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
        )
    return ExportCheck(
        samples=len(x),
        argmax_agreement=(actual.argmax(1) == expected.argmax(1)).double().mean().item(),
        max_abs_logit_diff=(actual - expected).abs().max().item(),
        logit_scale=expected.abs().max().item(),
    )
