"""A model as ONNX, and the check that ONNX Runtime predicts what PyTorch does.

ONNX is how a Shrinkflow model reaches runtimes other than PyTorch: ONNX Runtime on CPUs and
GPUs, and through their ONNX toolchains, accelerators such as TPUs (via ONNX → TensorFlow/XLA
converters) and FPGAs (AMD Vitis AI, hls4ml): those toolchains are not run or tested here.
Pure PyTorch and ONNX Runtime: no MLflow, no files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shrinkflow._encoding import (
    has_int8_layers,
    int8_engines,
    is_dynamic_int8_linear,
    is_dynamic_int8_rnn,
    quantized_engine,
    repacked_int8,
)
from shrinkflow._onnx_graph import flatten_channels_last, float_input_convs, uniform_scales_as_scalars
from shrinkflow.config import ShrinkflowError
from shrinkflow.training import predict_logits

__all__ = [
    "FLOAT_TOLERANCE",
    "INT8_TOLERANCE",
    "ExportCheck",
    "check_onnx",
    "default_tolerance",
    "export_onnx",
    "onnx_logits",
    "onnx_session",
]

OPSET = 17  # the TorchScript exporter's default, read by ONNX Runtime 1.16 and later


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (on the CPU, in eval mode) as an ONNX model with input ``input`` and output
    ``logits``, the batch dimension left free. An operator ONNX cannot express is one line
    naming it."""
    recurrent = [type(module).__name__ for module in model.modules() if is_dynamic_int8_rnn(module)]
    if recurrent:  # the exporter's own error is obscure
        raise ShrinkflowError(
            f"cannot export this model to ONNX: ONNX has no operator for a dynamic-int8 {recurrent[0]} "
            f"(quantized::quantized_{recurrent[0].lower()}); quantize it with kbit, or deploy it with target traced"
        )
    exported = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _dropped(1), _without_fused_attention():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                _exportable(model.cpu().eval()), (example.cpu(),), exported, dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many types on operators it cannot express
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(f"cannot export this model to ONNX: {first_line}") from exc
    return flatten_channels_last(float_input_convs(uniform_scales_as_scalars(exported.getvalue())))


def _exportable(model: nn.Module) -> nn.Module:
    """``model``, with each dynamic-int8 Linear (which the exporter cannot express) replaced by
    ``_DynamicInt8Linear``: the same int8 weights in ONNX Runtime's dynamic int8 form."""
    if not any(is_dynamic_int8_linear(module) for module in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if is_dynamic_int8_linear(module):
            model.set_submodule(name, _DynamicInt8Linear(module))
    return model


class _DynamicInt8Linear(nn.Module):
    """A dynamic-int8 Linear as ONNX writes it: the input quantized per batch to uint8
    (DynamicQuantizeLinear), multiplied by the layer's int8 codes in integers (MatMulInteger),
    rescaled by the input's scale times the weight scale (one, or one per output), plus the float
    bias: the pattern ONNX Runtime fuses into one DynamicQuantizeMatMul kernel. The codes
    and scales are the layer's own; only the input's quantization differs (full 8-bit range, where
    PyTorch's x86 kernels use 7 bits)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        weight = layer.weight()
        self.register_buffer("codes", weight.int_repr().t().contiguous())  # (in, out), int8
        if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scales = torch.tensor([weight.q_scale()], dtype=torch.float32)
            zero_points = torch.tensor([weight.q_zero_point()], dtype=torch.int8)
        else:
            scales = weight.q_per_channel_scales().to(torch.float32)
            zero_points = weight.q_per_channel_zero_points().to(torch.int8)
        # one zero point when all are equal (symmetric weights: all 0): ONNX Runtime's kernel then
        # takes its fast path, ~1.5x faster at batch 1 on the digits mlp than with one per column
        same = bool((zero_points == zero_points[0]).all())
        self.register_buffer("zero_points", zero_points[0].clone() if same else zero_points)
        # one scale when all are equal (per-tensor weights, kept per channel): ORT's faster kernels
        self.register_buffer("scales", scales[0].clone() if bool((scales == scales[0]).all()) else scales)
        bias = layer.bias()
        self.register_buffer("bias", torch.zeros(self.codes.shape[1]) if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DynamicInt8MatMul.apply(x, self.codes, self.zero_points, self.scales, self.bias)


class _DynamicInt8MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, codes, zero_points, scales, bias):  # what tracing sees: the float equivalent
        weight = (codes.float() - zero_points.float()) * scales
        return x @ weight + bias

    @staticmethod
    def symbolic(g, x, codes, zero_points, scales, bias):
        x_codes, x_scale, x_zero_point = g.op("DynamicQuantizeLinear", x, outputs=3)
        products = g.op("MatMulInteger", x_codes, codes, x_zero_point, zero_points)
        rescaled = g.op("Mul", g.op("Cast", products, to_i=1), g.op("Mul", x_scale, scales))  # to_i=1: float
        return g.op("Add", rescaled, bias)


@contextlib.contextmanager
def _without_fused_attention() -> Iterator[None]:
    """PyTorch's fused fast path of ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``
    (taken in eval mode without gradients) is one operator ONNX has no form for: export the plain
    path, the same arithmetic in separate operators."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _dropped(fd: int) -> Iterator[None]:
    """Drop what C++ code writes to ``fd`` in the block: to stdout (1), the whole TorchScript graph
    the exporter dumps on an operator it cannot export (stdout's last line is a step's run id); to
    stderr (2), qnnpack's note that it ignores reduce_range."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
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


def _reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """PyTorch's logits, computed as ONNX Runtime computes them: a dynamic-int8 layer's inputs
    quantized to 8 bits (PyTorch's qnnpack kernels, where the x86 ones use 7). On the digits
    transformer, 9 such layers deep, the x86 kernels and ONNX Runtime each come within 4.4-4.8% of
    the largest logit of the float model but 5.3% of each other; qnnpack and ONNX Runtime 2.8%."""
    cpu = torch.device("cpu")
    dynamic = any(is_dynamic_int8_linear(m) or is_dynamic_int8_rnn(m) for m in model.modules())
    if not dynamic or "qnnpack" not in int8_engines():
        return predict_logits(model, x, cpu)
    with quantized_engine("qnnpack"), warnings.catch_warnings(action="ignore"), _dropped(2):
        return predict_logits(repacked_int8(model), x, cpu)


FLOAT_TOLERANCE = 1e-4  # float32 in both runtimes: only the order of summation differs
# int8: ONNX Runtime's integer kernels round requantized activations their own way (seen: 1.5% of
# the largest logit on digits cnn, every predicted class the same); dynamic int8 is checked
# against PyTorch's kernels that quantize inputs to 8 bits as it does (_reference_logits)
INT8_TOLERANCE = 0.05


def default_tolerance(model: nn.Module) -> float:
    return INT8_TOLERANCE if has_int8_layers(model) else FLOAT_TOLERANCE


@dataclass(frozen=True)
class ExportCheck:
    samples: int
    argmax_agreement: float  # share of samples whose predicted class is the same
    max_abs_logit_diff: float
    logit_scale: float  # max |logit| of PyTorch's, to read the difference against
    # for each sample whose class differs: PyTorch's logit of its class minus its logit of ONNX
    # Runtime's class, over the largest |logit| (a near tie when small)
    changed_margins: tuple[float, ...] = ()

    @property
    def relative_logit_diff(self) -> float:
        return self.max_abs_logit_diff / max(self.logit_scale, 1e-12)

    def problem(self, tolerance: float) -> str | None:
        """Why the export is not faithful, or None: every logit must be within ``tolerance`` × the
        largest |logit|, and every predicted class must agree, except where PyTorch's own logits
        of the two classes are within that tolerance of each other (a tie at this precision)."""
        beyond = [margin for margin in self.changed_margins if margin > tolerance]
        if beyond or (self.argmax_agreement < 1.0 and not self.changed_margins):
            changed = len(beyond) or round((1 - self.argmax_agreement) * self.samples)
            return f"ONNX Runtime predicts another class than PyTorch for {changed} of {self.samples} samples"
        if self.relative_logit_diff > tolerance:
            return (
                f"ONNX Runtime's logits differ from PyTorch's by up to {self.max_abs_logit_diff:.3g} "
                f"({self.relative_logit_diff:.2g} of the largest logit, tolerance {tolerance:g})"
            )
        return None


def check_onnx(model: nn.Module, onnx_model: bytes, x: torch.Tensor) -> ExportCheck:
    """Run ``x`` through ``model`` in PyTorch (CPU) and through ``onnx_model`` in ONNX Runtime."""
    expected = _reference_logits(model, x)
    actual = onnx_logits(onnx_session(onnx_model), x)
    if actual.shape != expected.shape:
        raise ShrinkflowError(
            f"ONNX Runtime returned logits of shape {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
        )
    ours, theirs = expected.argmax(1), actual.argmax(1)
    scale = expected.abs().max().item()
    changed = (ours != theirs).nonzero().flatten()
    margins = (expected[changed, ours[changed]] - expected[changed, theirs[changed]]) / max(scale, 1e-12)
    return ExportCheck(
        samples=len(x),
        argmax_agreement=(ours == theirs).double().mean().item(),
        max_abs_logit_diff=(actual - expected).abs().max().item(),
        logit_scale=scale,
        changed_margins=tuple(margins.tolist()),
    )
