"""Quantization as a technique: settings, the method registry and the ``quantize`` core.

A method is a function registered under its name with ``@quantization_method``; it receives a
copy of the model and returns a ``Quantized`` (the model it runs as, the packed codes of its
weights where it has them, bits by layer). The registry also says how a method stores its model
and whether it fine-tunes; ``quantize`` does the guards and the description for every method
alike, and ``tests/test_methods.py`` runs its contract over every registered method.

Weight methods (Linear and Conv1d/Conv2d weights; biases stay float32), stored ``packed``:
integer codes k bits each plus scales or codebook, decoded to floats on load. The arithmetic
then runs in float32: sizes are real, but these methods do not make the model compute faster.
- ``kbit``: symmetric per-output-channel quantization to ``bits`` (2–8; 1 means binary), one
  value or a JSON mapping per layer; fine-tuning (``epochs`` > 0) with a straight-through
  estimator: the forward pass sees quantized weights, gradients update the float ones;
- ``binary``: XNOR-Net weights sign(W)·α, α = mean|W| per output channel, 1 bit a weight, with
  the first and last layers kept at 8 bits unless ``keep_first_last`` is false; STE fine-tuning;
- ``kmeans``: Deep Compression weight sharing, 2^bits shared values per layer; fine-tuning
  refits each shared value to the mean of its weights after every step.

int8 methods, stored as int8 weights (with the activations' scales), run PyTorch's int8 kernels
(CPU only):
- ``dynamic-int8``: Linear layers with int8 weights (per output channel; LSTM layers per
  tensor) and activations quantized to int8 on the fly;
- ``static-int8``: weights and activations int8 (post-training static quantization, FX graph
  mode): Conv/Linear layers fused with the ReLU after them, observers (``observer``) record the
  activation ranges on ``calibration_batches`` batches of the ``calibration_split``;
- ``qat``: quantization-aware training: the same graph with fake quantizers fine-tuned for
  ``epochs``, then converted as ``static-int8`` is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowError
from shrinkflow.cost import packed_bytes
from shrinkflow.data import DataSplits
from shrinkflow.encoding import (
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
from shrinkflow.runtime import seed_everything
from shrinkflow.training import FitSettings, fit

__all__ = [
    "CALIBRATION_SPLITS",
    "QUANTIZATION_METHODS",
    "QuantizationMethod",
    "QuantizeResult",
    "QuantizeSettings",
    "Quantized",
    "check_quantizing",
    "quantization_table",
    "quantization_method",
    "quantize",
]

CALIBRATION_SPLITS = ("train", "val")  # never test: the test split only scores
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_EDGE_BITS = 8  # binary: precision of the first and last layers when they are kept


@dataclass
class Quantized:
    """What a method returns."""

    model: nn.Module
    encodings: dict[str, Encoded]  # packed codes by state-dict name; empty for int8 methods
    layers: dict[str, int]  # weight bits by layer


@dataclass(frozen=True)
class QuantizationMethod:
    name: str
    run: Callable[[nn.Module, QuantizeSettings, DataSplits, torch.device, Callable | None], Quantized]
    storage: str  # checkpoint storage format of its models
    fine_tuning: str  # "optional", "none" or "required"
    observers: tuple[str, ...] = ()  # activation observers it accepts; () = it has none
    default_observer: str = ""
    calibrates: bool = False  # observes batches of the calibration split

    @property
    def activation_bits(self) -> int:
        return 32 if self.storage == "packed" else 8


QUANTIZATION_METHODS: dict[str, QuantizationMethod] = {}


def quantization_method(name: str, *, storage: str, fine_tuning: str, **options):
    """Register ``run(model, settings, data, device, on_epoch) -> Quantized`` as method ``name``."""

    def register(run):
        QUANTIZATION_METHODS[name] = QuantizationMethod(name, run, storage, fine_tuning, **options)
        return run

    return register


@dataclass(frozen=True)
class QuantizeSettings(FitSettings):
    """How to quantize, and whether to fine-tune first (by default not)."""

    MIN_EPOCHS: ClassVar[int] = 0

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
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate of fine-tuning (cosine decay)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    patience: int = field(default=0, metadata={"help": "early stopping patience in epochs; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed for fine-tuning batch order"})

    def __post_init__(self):
        super().__post_init__()
        if self.method not in QUANTIZATION_METHODS:
            raise ShrinkflowError(
                f"unknown quantization method {self.method!r}: choose {', '.join(QUANTIZATION_METHODS)}"
            )
        self.bits_map()  # validates
        method = QUANTIZATION_METHODS[self.method]
        if method.fine_tuning == "none" and self.epochs:
            raise ShrinkflowError(f"{self.method} has no fine-tuning: set epochs 0 (quantization-aware training: qat)")
        if method.fine_tuning == "required" and not self.epochs:
            raise ShrinkflowError(f"{self.method} fine-tunes with fake quantization: set epochs >= 1")
        if self.observer != "auto" and self.observer not in OBSERVERS:
            raise ShrinkflowError(f"unknown observer {self.observer!r}: choose auto, {', '.join(OBSERVERS)}")
        if method.observers and self.observer_name() not in method.observers:
            raise ShrinkflowError(
                f"{self.method} observes activations while training: choose observer {' or '.join(method.observers)}"
            )
        if self.calibration_batches < 1:
            raise ShrinkflowError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.calibration_split not in CALIBRATION_SPLITS:
            raise ShrinkflowError(
                f"unknown calibration split {self.calibration_split!r}: choose {', '.join(CALIBRATION_SPLITS)}"
            )

    def observer_name(self) -> str:
        return QUANTIZATION_METHODS[self.method].default_observer if self.observer == "auto" else self.observer

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


@dataclass
class QuantizeResult:
    artifact: Artifact
    layers: dict[str, int]  # weight bits by layer


def check_quantizing(artifact: Artifact, settings: QuantizeSettings, data: DataSplits) -> None:
    """Fail on what ``quantize`` cannot do: a model quantized already, layer names it does not
    have, an empty calibration split."""
    artifact.require_float("quantize")
    if QUANTIZATION_METHODS[settings.method].storage == "packed":
        _weight_bits(artifact.model, settings)
    if QUANTIZATION_METHODS[settings.method].calibrates:
        _calibration_batches(data, settings)


def quantize(
    artifact: Artifact, data: DataSplits, settings: QuantizeSettings, device: torch.device, *, on_epoch=None
) -> QuantizeResult:
    """Quantize a copy of ``artifact``'s model (after optional fine-tuning); return the quantized
    artifact: weight methods give the float model holding the decoded weights and their codes,
    int8 methods a model whose layers run int8 kernels."""
    check_quantizing(artifact, settings, data)
    method = QUANTIZATION_METHODS[settings.method]
    quantized = method.run(artifact.copy().model, settings, data, device, on_epoch)
    description = _quantized_description(artifact.description, quantized, method, settings)
    return QuantizeResult(Artifact(quantized.model, description, quantized.encodings), quantized.layers)


def _quantized_description(description: dict, quantized: Quantized, method, settings: QuantizeSettings) -> dict:
    record = {"method": method.name}
    if settings.observer_name():
        record["observer"] = settings.observer_name()  # rebuilding the int8 graph on load needs it
    encodings = quantized.encodings
    return {
        **description,
        "storage": method.storage,
        "quantization": {name: {"scheme": e.scheme, "bits": e.bits} for name, e in encodings.items()},
        "bits": {layer: [bits, method.activation_bits] for layer, bits in quantized.layers.items()},
        "quantize": record,
    }


def quantization_table(artifact: Artifact) -> pd.DataFrame:
    """One row per stored quantized tensor: packed and Huffman-coded bytes of weight methods,
    dtype and bytes of int8 tensors."""
    if not artifact.encodings:  # int8 methods: the stored tensors themselves
        state = int8_state(artifact.model)
        return pd.DataFrame(
            [{"tensor": k, "dtype": str(t.dtype), "elements": t.numel(), "bytes": t.numel() * t.element_size()}
             for k, t in state.items()]
        )  # fmt: skip
    rows = []
    for name, encoded in artifact.encodings.items():
        weight = artifact.model.get_parameter(name)
        scheme = {"bits": encoded.bits, "scheme": encoded.scheme}
        rows.append({
            "tensor": name, "scheme": encoded.scheme, "bits": encoded.bits, "weights": weight.numel(),
            "packed_bytes": packed_bytes(weight, scheme),
            "huffman_code_bytes": -(-huffman_bits(encoded.codes) // 8), "fp32_bytes": 4 * weight.numel(),
        })  # fmt: skip
    return pd.DataFrame(rows)


# --- weight methods: kbit, binary, kmeans ------------------------------------------------------


def _weight_bits(model: nn.Module, settings: QuantizeSettings) -> dict[str, int]:
    """Bits of every quantized layer (Linear/Conv), checking names given per layer."""
    supported = [name for name, m in model.named_modules() if isinstance(m, _SUPPORTED)]
    bits = settings.bits_map()
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
    if settings.method == "binary":
        chosen = {name: 1 for name in supported}
        if settings.keep_first_last and len(supported) > 1:
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


def _fine_tune(model, layers, data: DataSplits, settings: QuantizeSettings, device, on_epoch) -> None:
    if settings.method == "kmeans":
        codebooks = {name: encode_codebook(model.get_submodule(name).weight, bits) for name, bits in layers.items()}

        @torch.no_grad()
        def share(step: int) -> None:  # keep assignments, move each shared value to its weights' mean
            for name, encoded in codebooks.items():
                weight = model.get_submodule(name).weight
                codebooks[name] = refit_codebook(encoded, weight.cpu())
                weight.copy_(decode(codebooks[name]).to(weight.device))

        share(0)
        fit(model, data.train, data.val, settings, device, on_epoch=on_epoch, after_step=share)
        return
    for name, bits in layers.items():
        straight_through = _StraightThrough(bits, settings.method)
        parametrize.register_parametrization(model.get_submodule(name), "weight", straight_through)
    try:
        fit(model, data.train, data.val, settings, device, on_epoch=on_epoch)
    finally:
        for name in layers:
            parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=False)


def _quantize_weights(model: nn.Module, settings: QuantizeSettings, data: DataSplits, device, on_epoch) -> Quantized:
    layers = _weight_bits(model, settings)
    seed_everything(settings.seed)
    if settings.epochs:
        _fine_tune(model, layers, data, settings, device, on_epoch)
    model.cpu()
    encodings = {}
    with torch.no_grad():
        for name, bits in layers.items():
            weight = model.get_submodule(name).weight
            encodings[f"{name}.weight"] = _encode(weight, bits, settings.method)
            weight.copy_(decode(encodings[f"{name}.weight"]))
    return Quantized(model, encodings, layers)


for _name in ("kbit", "binary", "kmeans"):
    quantization_method(_name, storage="packed", fine_tuning="optional")(_quantize_weights)


# --- int8 methods: dynamic-int8, static-int8, qat ----------------------------------------------


@quantization_method("dynamic-int8", storage="int8-dynamic", fine_tuning="none")
def _dynamic_int8(model: nn.Module, settings: QuantizeSettings, data: DataSplits, device, on_epoch) -> Quantized:
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.LSTM))]
    if not layers:
        raise ShrinkflowError("dynamic-int8 quantizes Linear and LSTM layers and this model has none: use kbit")
    return Quantized(dynamic_int8(model.cpu()), {}, dict.fromkeys(layers, 8))


def _calibration_batches(data: DataSplits, settings: QuantizeSettings) -> list[torch.Tensor]:
    x, _ = data.split(settings.calibration_split)
    if len(x) == 0:
        others = " or ".join(s for s in CALIBRATION_SPLITS if s != settings.calibration_split)
        raise ShrinkflowError(
            f"calibration on an empty split: the {settings.calibration_split!r} split of dataset {data.name!r} has "
            f"no samples; choose calibration_split {others}"
        )
    return list(x.split(settings.batch_size))[: settings.calibration_batches]


def _static_int8(model: nn.Module, settings: QuantizeSettings, data: DataSplits, device, on_epoch) -> Quantized:
    """Post-training static int8 (observe calibration batches) or QAT (fine-tune with fake
    quantization), converted to a model that runs int8 kernels."""
    seed_everything(settings.seed)
    qat = settings.method == "qat"
    batches = [] if qat else _calibration_batches(data, settings)
    try:
        prepared = prepare_static_int8(model.cpu(), data.x_train[:1], settings.observer_name(), qat)
    except Exception as exc:  # torch.fx raises many types on code it cannot trace
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(
            f"{settings.method} traces the model with torch.fx, which failed: {first_line}; use dynamic-int8 or kbit"
        ) from exc
    if qat:
        fit(prepared, data.train, data.val, settings, device, on_epoch=on_epoch)
    else:
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
    int8 = convert_int8(prepared)
    return Quantized(int8, {}, {name: 8 for name, m in int8.named_modules() if is_int8_layer(m)})


quantization_method(
    "static-int8", storage="int8-static", fine_tuning="none", observers=OBSERVERS, default_observer="histogram",
    calibrates=True,
)(_static_int8)  # fmt: skip
quantization_method(
    "qat", storage="int8-static", fine_tuning="required", observers=("minmax", "moving-average"),
    default_observer="moving-average",
)(_static_int8)  # fmt: skip
