"""Quantize a logged model's weights — k-bit, binary or k-means shared — and store them packed.

Consumes: the run id of a step that logged a model (a pruned one too: zeros stay zero under the
symmetric and binary schemes' zero-centred grids).
Produces: an MLflow run tagged ``shrinkflow.source_run_id`` with ``test_accuracy_before``,
``test_accuracy``, the static cost after (``cost_*``; ``cost_bops`` counts the weight bits) and
before (``baseline_cost_*``), ``cost_size_huffman_bytes`` for k-means, per-epoch fine-tuning
metrics, a per-layer table ``quantization.json``, and the quantized model stored ``packed``:
integer codes k bits each plus scales or codebook, decoded to floats on load. The arithmetic then
runs in float32: sizes are real, but these methods do not make the model compute faster.
``dynamic-int8``, ``static-int8`` and ``qat`` are stored as int8 weights (with the activations'
scales) and run int8 kernels (CPU only). The run id is the last line printed.

Methods (weights of Linear and Conv1d/Conv2d layers; biases stay float32):
- ``kbit``: symmetric per-output-channel quantization to ``bits`` (2–8; 1 means binary), one
  value or a JSON mapping per layer; fine-tuning (``epochs`` > 0) with a straight-through
  estimator: the forward pass sees quantized weights, gradients update the float ones;
- ``binary``: XNOR-Net weights sign(W)·α, α = mean|W| per output channel, 1 bit a weight, with
  the first and last layers kept at 8 bits unless ``keep_first_last`` is false; STE fine-tuning;
- ``kmeans``: Deep Compression weight sharing, 2^bits shared values per layer; fine-tuning
  refits each shared value to the mean of its weights after every step;
- ``dynamic-int8``: Linear layers with int8 weights (per output channel; LSTM layers per
  tensor) and activations quantized to int8 on the fly, run by PyTorch's int8 kernels on the
  CPU — a real speed-up at large batches; time it in the traced form (``benchmark --form
  traced``): in eager form Python dispatch makes an MLP's batch 1 slower than float32.
- ``static-int8``: weights and activations int8 (post-training static quantization, FX graph
  mode): Conv/Linear layers are fused with the ReLU after them, observers (``observer``) record
  the activation ranges on ``calibration_batches`` batches of the ``calibration_split``, and the
  converted model runs int8 from its input quantizer to its last layer. CNNs included; an LSTM
  stays float32 between int8 layers.
- ``qat``: quantization-aware training: the same graph with fake quantizers (int8 rounding in the
  forward pass, straight-through gradients) fine-tuned for ``epochs``, then converted to the real
  int8 model as ``static-int8`` is.

Example:
    python -m steps.quantize --run-id <run id> --method kbit --bits 4
    python -m steps.quantize --run-id <run id> --method static-int8 --calibration-batches 10
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

from steps._checkpoint import is_quantized
from steps._config import ShrinkflowError, config_to_params, parse_config
from steps._cost import before_after_metrics, cost_summary, packed_bytes
from steps._data import DataSplits, dataset_of
from steps._main import run_main
from steps._quantization import (
    OBSERVERS,
    Encoded,
    convert_int8,
    decode,
    dynamic_int8,
    encode_binary,
    encode_codebook,
    encode_symmetric,
    huffman_bits,
    int8_state,
    is_int8_layer,
    prepare_static_int8,
    refit_codebook,
)
from steps._training import fit, resolve_device, score, seed_everything

__all__ = ["CONFIG", "METHODS", "QuantizeConfig", "main", "quantize"]

METHODS = ("kbit", "binary", "kmeans", "dynamic-int8", "static-int8", "qat")
INT8_METHODS = ("dynamic-int8", "static-int8", "qat")
CALIBRATION_SPLITS = ("train", "val")  # never test: the test split only scores
_DEFAULT_OBSERVER = {"static-int8": "histogram", "qat": "moving-average"}
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_EDGE_BITS = 8  # binary: precision of the first and last layers when they are kept


@dataclass(frozen=True)
class QuantizeConfig:
    """Quantize a logged model's weights, optionally fine-tune, and log the packed model."""

    run_id: str = field(metadata={"help": "run id of the step that logged the model"})
    method: str = field(default="kbit", metadata={"help": "kbit, binary, kmeans, dynamic-int8, static-int8 or qat"})
    bits: str = field(default="4", metadata={"help": 'bits 1-8: one value, or JSON {"layer": bits, "*": bits}'})
    keep_first_last: bool = field(default=True, metadata={"help": "binary: first and last layers at 8 bits"})
    observer: str = field(
        default="auto",
        metadata={"help": "static-int8/qat activation observer: histogram, minmax, moving-average; "
                  "auto = histogram (static-int8), moving-average (qat)"},
    )  # fmt: skip
    calibration_batches: int = field(default=10, metadata={"help": "static-int8: batches of batch_size observed"})
    calibration_split: str = field(default="train", metadata={"help": "static-int8: split calibrated on (train, val)"})
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
        if self.method in ("dynamic-int8", "static-int8") and self.epochs:
            raise ShrinkflowError(f"{self.method} has no fine-tuning: set epochs 0 (quantization-aware training: qat)")
        if self.method == "qat" and not self.epochs:
            raise ShrinkflowError("qat fine-tunes with fake quantization: set epochs >= 1")
        if self.observer != "auto" and self.observer not in OBSERVERS:
            raise ShrinkflowError(f"unknown observer {self.observer!r}: choose auto, {', '.join(OBSERVERS)}")
        if self.method == "qat" and self.observer == "histogram":
            raise ShrinkflowError("qat observes activations while training: choose observer minmax or moving-average")
        if self.calibration_batches < 1:
            raise ShrinkflowError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.calibration_split not in CALIBRATION_SPLITS:
            raise ShrinkflowError(
                f"unknown calibration split {self.calibration_split!r}: choose {', '.join(CALIBRATION_SPLITS)}"
            )

    def observer_name(self) -> str:
        return _DEFAULT_OBSERVER.get(self.method, "") if self.observer == "auto" else self.observer

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


def _calibration_batches(data: DataSplits, cfg: QuantizeConfig) -> list[torch.Tensor]:
    x, _ = data.split(cfg.calibration_split)
    if len(x) == 0:
        others = " or ".join(s for s in CALIBRATION_SPLITS if s != cfg.calibration_split)
        raise ShrinkflowError(
            f"calibration on an empty split: the {cfg.calibration_split!r} split of dataset {data.name!r} has no "
            f"samples; choose calibration_split {others}"
        )
    return list(x.split(cfg.batch_size))[: cfg.calibration_batches]


def _static_int8(model: nn.Module, data: DataSplits, cfg: QuantizeConfig, device, on_epoch) -> nn.Module:
    """Post-training static int8 (observe calibration batches) or QAT (fine-tune with fake
    quantization), converted to a model that runs int8 kernels."""
    batches = _calibration_batches(data, cfg) if cfg.method == "static-int8" else []
    try:
        prepared = prepare_static_int8(model.cpu(), data.x_train[:1], cfg.observer_name(), cfg.method == "qat")
    except Exception as exc:  # torch.fx raises many types on code it cannot trace
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(
            f"{cfg.method} traces the model with torch.fx, which failed: {first_line}; use dynamic-int8 or kbit"
        ) from exc
    if cfg.method == "qat":
        fit(prepared, (data.x_train, data.y_train), (data.x_val, data.y_val), cfg, device, on_epoch)
    else:
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
    return convert_int8(prepared)


def quantize(model: nn.Module, data: DataSplits, cfg: QuantizeConfig, device, on_epoch=None):
    """Quantize (after optional fine-tuning); return (model, encodings by state-dict name, bits by
    layer). Weight-only methods return the float model holding decoded weights; the int8 methods
    return a model whose layers run int8 kernels, and no encodings."""
    if cfg.method == "dynamic-int8":
        layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.LSTM))]
        if not layers:
            raise ShrinkflowError("dynamic-int8 quantizes Linear and LSTM layers and this model has none: use kbit")
        return dynamic_int8(model.cpu()), {}, dict.fromkeys(layers, 8)
    if cfg.method in ("static-int8", "qat"):
        seed_everything(cfg.seed)
        int8 = _static_int8(model, data, cfg, device, on_epoch)
        return int8, {}, {name: 8 for name, m in int8.named_modules() if is_int8_layer(m)}
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
    int8 = cfg.method in INT8_METHODS  # activations are quantized too, to 8 bits
    storage = {"dynamic-int8": "int8-dynamic", "static-int8": "int8-static", "qat": "int8-static"}
    settings = {"method": cfg.method, "source_run_id": cfg.run_id}
    if cfg.observer_name():
        settings["observer"] = cfg.observer_name()  # rebuilding the int8 graph on load needs it
    return {
        **description,
        "storage": storage.get(cfg.method, "packed"),
        "quantization": {name: {"scheme": e.scheme, "bits": e.bits} for name, e in encodings.items()},
        "bits": {layer: [bits, 8 if int8 else 32] for layer, bits in layers.items()},  # weight, activation
        "quantize": settings,
    }


def layer_report(model: nn.Module, encodings: dict) -> pd.DataFrame:
    if not encodings:  # int8 methods: the stored tensors themselves
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
    if is_quantized(description):
        raise ShrinkflowError(
            f"run {cfg.run_id!r} already holds a quantized model (storage {description['storage']}): "
            "quantize the model it was quantized from instead"
        )
    _layers(model, cfg)  # bad layer names fail before a run starts
    data = dataset_of(description)
    if cfg.method == "static-int8":
        _calibration_batches(data, cfg)  # an empty split fails before a run starts
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
