"""Quantize a logged model's weights — k-bit, binary or k-means shared — and store them packed.

Consumes: the run id of a step that logged a model (a pruned one too: zeros stay zero under the
symmetric and binary schemes' zero-centred grids).
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``test_accuracy_before``,
``test_accuracy``, the static cost after (``cost_*``; ``cost_bops`` counts the weight bits) and
before (``baseline_cost_*``), ``cost_size_huffman_bytes`` for k-means, per-epoch fine-tuning
metrics, a per-layer table ``quantization.json``, and the quantized model stored ``packed``:
integer codes k bits each plus scales or codebook, decoded to floats on load. The arithmetic then
runs in float32: sizes are real, but these methods do not make the model compute faster.
``dynamic-int8`` is stored as int8 weights and runs int8 kernels (CPU only).
The run id is the last line printed.

Methods (weights of Linear and Conv1d/Conv2d layers; biases stay float32):
- ``kbit``: symmetric per-output-channel quantization to ``bits`` (2–8; 1 means binary), one
  value or a JSON mapping per layer; fine-tuning (``epochs`` > 0) with a straight-through
  estimator: the forward pass sees quantized weights, gradients update the float ones;
- ``binary``: XNOR-Net weights sign(W)·α, α = mean|W| per output channel, 1 bit a weight, with
  the first and last layers kept at 8 bits unless ``keep_first_last`` is false; STE fine-tuning;
- ``kmeans``: Deep Compression weight sharing, 2^bits shared values per layer; fine-tuning
  refits each shared value to the mean of its weights after every step;
- ``dynamic-int8``: Linear layers with int8 weights (per output channel) and activations
  quantized to int8 on the fly, run by PyTorch's int8 kernels on the CPU — a real speed-up at
  large batches; time it in the traced form (``benchmark --form traced``): in eager form Python
  dispatch makes batch 1 slower than float32.

Example:
    python -m steps.quantize --run-id <run id> --method kbit --bits 4
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from steps._config import ShrinkflowError, config_to_params, parse_config
from steps._cost import before_after_metrics, cost_summary, packed_bytes
from steps._data import DataSplits, dataset_of
from steps._main import run_main
from steps._quantization import (
    Encoded,
    decode,
    dynamic_int8,
    encode_binary,
    encode_codebook,
    encode_symmetric,
    huffman_bits,
    int8_state,
    refit_codebook,
)
from steps._training import fit, resolve_device, score, seed_everything

__all__ = ["CONFIG", "METHODS", "QuantizeConfig", "main", "quantize"]

METHODS = ("kbit", "binary", "kmeans", "dynamic-int8")
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_EDGE_BITS = 8  # binary: precision of the first and last layers when they are kept


@dataclass(frozen=True)
class QuantizeConfig:
    """Quantize a logged model's weights, optionally fine-tune, and log the packed model."""

    run_id: str = field(metadata={"help": "run id of the step that logged the model"})
    method: str = field(default="kbit", metadata={"help": "kbit, binary, kmeans or dynamic-int8"})
    bits: str = field(default="4", metadata={"help": 'bits 1-8: one value, or JSON {"layer": bits, "*": bits}'})
    keep_first_last: bool = field(default=True, metadata={"help": "binary: first and last layers at 8 bits"})
    epochs: int = field(default=0, metadata={"help": "fine-tuning epochs (STE; kmeans: centroid refits); 0 = none"})
    batch_size: int = field(default=100, metadata={"help": "fine-tuning batch size"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate of fine-tuning (cosine decay)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing in [0, 1)"})
    patience: int = field(default=0, metadata={"help": "early stopping patience in epochs; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed for fine-tuning batch order"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"})

    def __post_init__(self):
        if not self.run_id.strip():
            raise ShrinkflowError("run_id is required: pass the run id printed by a train step")
        if self.method not in METHODS:
            raise ShrinkflowError(f"unknown quantization method {self.method!r}: choose {', '.join(METHODS)}")
        self.bits_map()  # validates
        if self.epochs < 0 or self.batch_size < 1 or self.patience < 0 or self.lr <= 0:
            raise ShrinkflowError("need epochs >= 0, batch_size >= 1, patience >= 0 and lr > 0")
        if self.method == "dynamic-int8" and self.epochs:
            raise ShrinkflowError("dynamic-int8 has no fine-tuning: set epochs 0 (quantization-aware training is qat)")

    def bits_map(self) -> dict[str, int]:
        try:
            parsed = json.loads(self.bits)
        except json.JSONDecodeError:
            raise ShrinkflowError(f"bits must be an integer 1-8 or a JSON object, got {self.bits!r}") from None
        mapping = {"*": parsed} if not isinstance(parsed, dict) else parsed
        for layer, value in mapping.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
                raise ShrinkflowError(f"bits must be integers in 1-8 (the supported set), got {value!r} for {layer!r}")
        return {str(k): int(v) for k, v in mapping.items()}


def _layers(model: nn.Module, cfg: QuantizeConfig) -> dict[str, int]:
    """Bits of every quantized layer (Linear/Conv), checking names given per layer."""
    supported = [name for name, m in model.named_modules() if isinstance(m, _SUPPORTED)]
    bits = cfg.bits_map()
    for name in bits:
        if name == "*" or name in supported:
            continue
        try:
            kind = type(model.get_submodule(name)).__name__
        except AttributeError:
            raise ShrinkflowError(f"unknown layer {name!r}: quantizable layers are {', '.join(supported)}") from None
        raise ShrinkflowError(
            f"layer {name!r} is a {kind}, an unsupported layer type: quantize supports Linear, Conv1d and Conv2d "
            f"({', '.join(supported)})"
        )
    if cfg.method == "binary":
        chosen = {name: 1 for name in supported}
        if cfg.keep_first_last and len(supported) > 1:
            chosen[supported[0]] = chosen[supported[-1]] = _EDGE_BITS
        return chosen
    return {name: bits[name] if name in bits else bits["*"] for name in supported if name in bits or "*" in bits}


def _encode(weight: torch.Tensor, bits: int, method: str) -> Encoded:
    if method == "kmeans":
        return encode_codebook(weight, bits)
    return encode_binary(weight) if bits == 1 else encode_symmetric(weight, bits)


class _StraightThrough(nn.Module):
    """Forward: the quantized weight; backward: the identity, so the float weight learns."""

    def __init__(self, bits: int, method: str):
        super().__init__()
        self.bits, self.method = bits, method

    def forward(self, weight):
        return weight + (decode(_encode(weight, self.bits, self.method)) - weight).detach()


def _fine_tune(model, layers, data: DataSplits, cfg: QuantizeConfig, device, on_epoch) -> None:
    train, val = (data.x_train, data.y_train), (data.x_val, data.y_val)
    if cfg.method == "kmeans":
        codebooks = {name: encode_codebook(model.get_submodule(name).weight, bits) for name, bits in layers.items()}

        @torch.no_grad()
        def share(step: int) -> None:  # keep assignments, move each shared value to its weights' mean
            for name, encoded in codebooks.items():
                weight = model.get_submodule(name).weight
                codebooks[name] = refit_codebook(encoded, weight.cpu())
                weight.copy_(decode(codebooks[name]).to(weight.device))

        share(0)
        fit(model, train, val, cfg, device, on_epoch, after_step=share)
        return
    for name, bits in layers.items():
        parametrize.register_parametrization(model.get_submodule(name), "weight", _StraightThrough(bits, cfg.method))
    try:
        fit(model, train, val, cfg, device, on_epoch)
    finally:
        for name in layers:
            parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=False)


def quantize(model: nn.Module, data: DataSplits, cfg: QuantizeConfig, device, on_epoch=None):
    """Quantize (after optional fine-tuning); return (model, encodings by state-dict name, bits by
    layer). Weight-only methods return the float model holding decoded weights; dynamic-int8
    returns a model whose Linear layers run int8 kernels, and no encodings."""
    if cfg.method == "dynamic-int8":
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ShrinkflowError("dynamic-int8 quantizes Linear layers and this model has none: use kbit")
        return dynamic_int8(model.cpu()), {}, dict.fromkeys(linears, 8)
    layers = _layers(model, cfg)
    seed_everything(cfg.seed)
    if cfg.epochs:
        _fine_tune(model, layers, data, cfg, device, on_epoch)
    model.cpu()
    encodings = {}
    with torch.no_grad():
        for name, bits in layers.items():
            weight = model.get_submodule(name).weight
            encodings[f"{name}.weight"] = _encode(weight, bits, cfg.method)
            weight.copy_(decode(encodings[f"{name}.weight"]))
    return model, encodings, layers


def quantized_description(description: dict, encodings: dict, layers: dict, cfg: QuantizeConfig) -> dict:
    int8 = cfg.method == "dynamic-int8"  # activations are quantized too, to 8 bits
    return {
        **description,
        "storage": "int8-dynamic" if int8 else "packed",
        "quantization": {name: {"scheme": e.scheme, "bits": e.bits} for name, e in encodings.items()},
        "bits": {layer: [bits, 8 if int8 else 32] for layer, bits in layers.items()},  # weight, activation
        "quantize": {"method": cfg.method, "source_run_id": cfg.run_id},
    }


def layer_report(model: nn.Module, encodings: dict) -> pd.DataFrame:
    if not encodings:  # dynamic-int8: the stored tensors themselves
        state = int8_state(model)
        return pd.DataFrame(
            [{"tensor": k, "dtype": str(t.dtype), "elements": t.numel(), "bytes": t.numel() * t.element_size()}
             for k, t in state.items()]
        )  # fmt: skip
    rows = []
    for name, encoded in encodings.items():
        weight = model.get_parameter(name)
        scheme = {"bits": encoded.bits, "scheme": encoded.scheme}
        rows.append({
            "tensor": name, "scheme": encoded.scheme, "bits": encoded.bits, "weights": weight.numel(),
            "packed_bytes": packed_bytes(weight, scheme),
            "huffman_code_bytes": -(-huffman_bits(encoded.codes) // 8), "fp32_bytes": 4 * weight.numel(),
        })  # fmt: skip
    return pd.DataFrame(rows)


def execute(cfg: QuantizeConfig) -> str:
    import mlflow

    from steps import _tracking

    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        model, description, checkpoint = _tracking.load_model(cfg.run_id, Path(tmp))
        costs_before = cost_summary(model, description, checkpoint)
    if description.get("storage") == "packed":
        raise ShrinkflowError(f"run {cfg.run_id!r} already holds a quantized model: quantize its source instead")
    _layers(model, cfg)  # bad layer names fail before a run starts
    data = dataset_of(description)
    cpu = torch.device("cpu")
    accuracy_before = score(model, data.x_test, data.y_test, cpu)["accuracy"]
    with _tracking.step_run("quantize", config_to_params(cfg)) as run:
        mlflow.set_tag("shrinkflow.source_run_id", cfg.run_id)
        _tracking.log_dataset(data, "train")
        on_epoch = lambda epoch, m: mlflow.log_metrics(m, step=epoch)  # noqa: E731
        model, encodings, layers = quantize(model, data, cfg, device, on_epoch)
        new_description = quantized_description(description, encodings, layers, cfg)
        test = score(model, data.x_test, data.y_test, cpu)
        model_id, size = _tracking.log_model(model, new_description, data.x_train[:2], encodings=encodings)
        report = layer_report(model, encodings)
        costs = {**cost_summary(model, new_description), "cost_size_bytes": size}
        metrics = before_after_metrics(accuracy_before, test, costs_before, costs)
        if cfg.method == "kmeans":  # codes Huffman-coded, the rest as stored
            metrics["cost_size_huffman_bytes"] = int(
                report["huffman_code_bytes"].sum() + size - report["packed_bytes"].sum()
            )
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shrinkflow.model_id", model_id)
        _tracking.log_table(report, "quantization")
        print(report.to_string(index=False), file=sys.stderr)
        before = costs_before["cost_size_bytes"]
        print(
            f"{cfg.method} quantization: test_accuracy {accuracy_before:.4f} -> {test['accuracy']:.4f}, "
            f"size {before:.0f} -> {size} bytes ({before / size:.2f}x smaller), "
            f"theoretical {metrics['cost_size_theoretical_bytes']:.0f} bytes",
            file=sys.stderr,
        )
        return run.info.run_id


CONFIG = QuantizeConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(QuantizeConfig, argv)))


if __name__ == "__main__":
    main()
