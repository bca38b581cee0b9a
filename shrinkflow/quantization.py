"""Quantization as a technique: settings, the method registry and the ``quantize`` core.

A method is a function registered under its name with ``@quantization_method``; it receives a
copy of the model and returns a ``Quantized`` (the model it runs as, the packed codes of its
weights where it has them, bits by layer). The registry also says how a method stores its model
and whether it fine-tunes; ``quantize`` does the guards and the description for every method
alike, and ``tests/test_methods.py`` runs its contract over every registered method.

Weight methods (Linear and Conv1d/Conv2d weights; their biases at 8 bits where validation
accuracy is unchanged), stored ``packed``: integer codes plus scales or codebook, decoded to floats
on load. A pruned model's zeros stay exactly its zeros, through fine-tuning too. The arithmetic
then runs in float32: sizes are real, but these methods do not make the model compute faster.
- ``kbit``: symmetric per-output-channel quantization to ``bits`` (2–8; 1 means binary), one
  value or a JSON mapping per layer; fine-tuning (``epochs`` > 0) with a straight-through
  estimator: the forward pass sees quantized weights, gradients update the float ones;
- ``binary``: XNOR-Net weights sign(W)·α, α = mean|W| per output channel, 1 bit a weight, with
  the first and last layers kept at 8 bits unless ``keep_first_last`` is false; STE fine-tuning;
- ``kmeans``: Deep Compression weight sharing, 2^bits shared values per layer; fine-tuning
  refits each shared value to the mean of its weights after every step.
- ``sws``: soft weight-sharing (Ullrich et al. 2017): ``epochs`` of retraining under a Gaussian
  mixture prior (weight ``prior_weight``) whose 2^bits means, widths and shares are learned, plus
  a component pinned at zero; then every weight takes its component's mean, the zero
  component's weights pruned: one codebook for the whole model, stored as kmeans stores its own.

int8 methods, stored as int8 weights (with the activations' scales), run PyTorch's int8 kernels
(CPU only):
- ``dynamic-int8``: Linear layers with int8 weights (per output channel; LSTM and GRU layers per
  tensor) and activations quantized to int8 on the fly;
- ``static-int8``: weights and activations int8 (post-training static quantization, FX graph
  mode): Conv/Linear layers fused with the ReLU after them, observers (``observer``) record the
  activation ranges on ``calibration_batches`` batches of the ``calibration_split``;
- ``qat``: quantization-aware training: the same graph with fake quantizers fine-tuned for
  ``epochs``, then converted as ``static-int8`` is.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from shrinkflow._encoding import (
    DYNAMIC_RECURRENT,
    INT8_GRAPH,
    OBSERVERS,
    WEIGHT_SCALES,
    Encoded,
    convert_int8,
    decode,
    dynamic_int8,
    encode_binary,
    encode_codebook,
    encode_symmetric,
    is_int8_layer,
    kept_weights,
    prepare_static_int8,
    refit_codebook,
)
from shrinkflow._masks import unread_units
from shrinkflow._mixed_precision import AUTO_BITS, allocate_bits
from shrinkflow._sws import MixturePrior, WithPrior, sampled
from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowError, ShrinkflowWarning, check_applies, check_method
from shrinkflow.cost import NORMALIZATION_LAYERS, left_weights_line, storage_table, weight_tensors
from shrinkflow.data import DataSplits
from shrinkflow.runtime import seed_everything
from shrinkflow.training import FineTuneSettings, fit, fit_loss, score

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
    "quantizable_layers",
    "quantize",
]

CALIBRATION_SPLITS = ("train", "val")  # never test: the test split only scores
# Layers whose weight tensors the weight methods quantize: every parameter of the layer named
# *weight* (a recurrent layer's weight_ih_l*/weight_hh_l*, attention's in_proj_weight; attention's
# out_proj is a Linear of its own), one bit-width a layer.
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase, nn.MultiheadAttention, nn.Embedding)
_SUPPORTED_NAMES = "Linear, Conv1d, Conv2d, LSTM, GRU, RNN, MultiheadAttention and Embedding"
_EDGE_BITS = 8  # binary: precision of the first and last layers when they are kept
AUTO_BITS_BUDGET = 0.1  # bits auto: validation loss may exceed the float model's by 10%
SWS_PRIOR_WEIGHT = 0.005  # sws: tau, the prior's weight per training sample


@dataclass
class Quantized:
    """What a method returns."""

    model: nn.Module
    encodings: dict[str, Encoded]  # packed codes by state-dict name; empty for int8 methods
    layers: dict[str, int]  # weight bits by layer
    weight_scales: str = ""  # int8 methods: per-channel or per-tensor, as chosen


@dataclass(frozen=True)
class QuantizationMethod:
    name: str
    run: Callable[[nn.Module, QuantizeSettings, DataSplits, torch.device, Callable | None], Quantized]
    storage: str  # checkpoint storage format of its models
    fine_tuning: str  # "optional", "none" or "required"
    observers: tuple[str, ...] = ()  # activation observers it accepts; () = it has none
    default_observer: str = ""
    calibrates: bool = False  # observes batches of the calibration split
    reads: tuple[str, ...] = ()  # the method-specific settings it reads (the others stay at their defaults)
    prunes: bool = False  # may set kept weights to zero too (a pruned model's zeros stay zero)

    @property
    def minimal(self) -> dict[str, Any]:
        """Settings with which it runs at all: an epoch where it must fine-tune."""
        return {"epochs": 1} if self.fine_tuning == "required" else {}

    @property
    def activation_bits(self) -> int:
        return 32 if self.storage == "packed" else 8


QUANTIZATION_METHODS: dict[str, QuantizationMethod] = {}


def quantization_method(name: str, *, storage: str, fine_tuning: str, reads: tuple[str, ...] = (), **options):
    """Register ``run(model, settings, data, device, on_epoch) -> Quantized`` as method ``name``,
    which reads the method-specific settings ``reads``."""

    def register(run):
        QUANTIZATION_METHODS[name] = QuantizationMethod(name, run, storage, fine_tuning, reads=tuple(reads), **options)
        return run

    return register


@dataclass(frozen=True)
class QuantizeSettings(FineTuneSettings):
    """How to quantize, and whether to fine-tune first (by default not)."""

    epochs: int = field(default=0, metadata={"help": "fine-tuning epochs (STE; kmeans: centroid refits); 0 = none"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate of fine-tuning (cosine decay)"})
    method: str = field(default="kbit", metadata={"help": "kbit, binary, kmeans, sws, dynamic-int8, static-int8, qat"})
    bits: str = field(
        default="4",
        metadata={"help": 'bits 1-8: one value, JSON {"layer": bits, "*": bits}, or auto: each layer the fewest '
                  "bits (2-8) that keep validation loss within 10% of the float model's (auto:0.3: 30%)"},
    )  # fmt: skip
    # sws: tau; larger shares and prunes more
    prior_weight: float = field(default=SWS_PRIOR_WEIGHT, metadata={"help": "sws: weight of the prior per sample"})
    keep_first_last: bool = field(default=True, metadata={"help": "binary: first and last layers at 8 bits"})
    observer: str = field(
        default="auto",
        metadata={"help": "static-int8/qat activation observer: histogram, minmax, moving-average; "
                  "auto = histogram (static-int8), moving-average (qat)"},
    )  # fmt: skip
    weight_scales: str = field(
        default="auto",
        metadata={"help": "int8 weights: per-channel (a scale per output channel), per-tensor (one a layer: ONNX "
                  "Runtime's fastest kernels) or auto: per-tensor where validation accuracy is not lower "
                  "(qat: per-channel)"},
    )  # fmt: skip
    bias_bits: int = field(
        default=8,
        metadata={"help": "kbit/binary/kmeans: biases, then normalization scales, at 8 bits (one scale a "
                  "tensor) where validation accuracy is unchanged, else float32; 32 = always float32"},
    )  # fmt: skip
    calibration_batches: int = field(default=10, metadata={"help": "static-int8: batches of batch_size observed"})
    calibration_split: str = field(default="train", metadata={"help": "static-int8: split calibrated on (train, val)"})

    def __post_init__(self):
        super().__post_init__()
        check_method(self, QUANTIZATION_METHODS, "quantization")
        self.bits_map()  # validates
        method = QUANTIZATION_METHODS[self.method]
        if method.fine_tuning == "none" and self.epochs:
            raise ShrinkflowError(f"{self.method} has no fine-tuning: set epochs 0 (quantization-aware training: qat)")
        if method.fine_tuning == "required" and not self.epochs:
            raise ShrinkflowError(f"{self.method} quantizes while it fine-tunes: set epochs >= 1")
        if self.observer != "auto" and self.observer not in OBSERVERS:
            raise ShrinkflowError(f"unknown observer {self.observer!r}: choose auto, {', '.join(OBSERVERS)}")
        if method.observers and self.observer_name() not in method.observers:
            raise ShrinkflowError(
                f"{self.method} observes activations while training: choose observer {' or '.join(method.observers)}"
            )
        if self.weight_scales != "auto" and self.weight_scales not in WEIGHT_SCALES:
            raise ShrinkflowError(
                f"unknown weight_scales {self.weight_scales!r}: choose auto, {', '.join(WEIGHT_SCALES)}"
            )
        if self.method == "sws" and (self.auto_bits or set(self.bits_map()) != {"*"}):
            raise ShrinkflowError(
                f"sws shares one set of values across all layers: bits must be one value, got {self.bits!r}"
            )
        if not 0 <= self.prior_weight < math.inf:
            raise ShrinkflowError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if self.bias_bits not in (8, 32):
            raise ShrinkflowError(f"bias_bits must be 8 or 32, got {self.bias_bits}")
        if self.calibration_batches < 1:
            raise ShrinkflowError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.calibration_split not in CALIBRATION_SPLITS:
            raise ShrinkflowError(
                f"unknown calibration split {self.calibration_split!r}: choose {', '.join(CALIBRATION_SPLITS)}"
            )
        check_applies(self, QUANTIZATION_METHODS)

    def observer_name(self) -> str:
        return QUANTIZATION_METHODS[self.method].default_observer if self.observer == "auto" else self.observer

    @property
    def auto_bits(self) -> bool:
        return self.bits.strip().split(":")[0] == "auto"

    def bits_budget(self) -> float:
        """bits auto[:share]: how much validation loss may exceed the float model's, as a share."""
        _, _, share = self.bits.strip().partition(":")
        try:
            budget = float(share) if share else AUTO_BITS_BUDGET
        except ValueError:
            budget = -1.0
        if not 0 <= budget < float("inf"):
            raise ShrinkflowError(f"bits auto:<share> takes a share >= 0 such as auto:0.3, got {self.bits!r}")
        return budget

    def bits_map(self) -> dict[str, int]:
        """Bits by layer name, ``"*"`` for the others (bits auto: 8 for every layer, the start)."""
        if self.auto_bits:
            self.bits_budget()  # validates
            return {"*": AUTO_BITS[0]}
        try:
            parsed = json.loads(self.bits)
        except json.JSONDecodeError:
            raise ShrinkflowError(f"bits must be an integer 1-8, a JSON object or auto, got {self.bits!r}") from None
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
    if line := float_weights_line(artifact.model, quantized.model, quantized.encodings, method.name):
        warnings.warn(line, ShrinkflowWarning, stacklevel=2)
    return QuantizeResult(Artifact(quantized.model, description, quantized.encodings), quantized.layers)


def float_weights_line(source: nn.Module, quantized: nn.Module, encodings: dict, method: str) -> str | None:
    """One line naming the weights ``method`` left in float32 (neither coded nor in an int8 layer)
    and their share of ``source``'s weights; None when it left none."""
    left = {name: tensor for name, tensor in weight_tensors(quantized).items() if name not in encodings}
    return left_weights_line(f"{method} left", "in float32", f"{method} does not quantize", quantized, left, source)


def _quantized_description(description: dict, quantized: Quantized, method, settings: QuantizeSettings) -> dict:
    record = {"method": method.name}
    if settings.observer_name():
        record["observer"] = settings.observer_name()  # rebuilding the int8 graph on load needs it
        record["int8_graph"] = INT8_GRAPH
    if quantized.weight_scales:
        record["weight_scales"] = quantized.weight_scales
    if method.storage == "int8-dynamic":  # rebuilding the int8 model on load needs it
        record["int8_recurrent"] = list(DYNAMIC_RECURRENT)
    if settings.auto_bits and "bits" in method.reads:  # how the per-layer bits below were chosen
        record["bits_budget"] = settings.bits_budget()
    encodings = quantized.encodings
    return {
        **description,
        "storage": method.storage,
        "quantization": {name: {"scheme": e.scheme, "bits": e.bits} for name, e in encodings.items()},
        "bits": {layer: [bits, method.activation_bits] for layer, bits in quantized.layers.items()},
        "quantize": record,
    }


def quantization_table(artifact: Artifact) -> pd.DataFrame:
    """One row per stored tensor: scheme and bits of quantized weights, storage format, stored
    bytes and entropy bound (``shrinkflow.cost.storage_table``)."""
    table = storage_table(artifact.model, artifact.description, artifact.encodings)
    encodings = artifact.encodings
    table.insert(1, "scheme", [encodings[t].scheme if t in encodings else "" for t in table["tensor"]])
    table.insert(2, "bits", [encodings[t].bits if t in encodings else 0 for t in table["tensor"]])
    table["kept"] = [
        int(encodings[t].kept.sum()) if t in encodings and encodings[t].kept is not None else n
        for t, n in zip(table["tensor"], table["elements"], strict=True)
    ]
    return table


# --- weight methods: kbit, binary, kmeans ------------------------------------------------------


def quantizable_layers(model: nn.Module) -> list[str]:
    """The layers whose weights kbit, kmeans and binary quantize (one bit-width a layer)."""
    return [name for name, m in model.named_modules() if isinstance(m, _SUPPORTED)]


def _weight_bits(model: nn.Module, settings: QuantizeSettings) -> dict[str, int]:
    """Bits of every quantized layer (``quantizable_layers``), checking names given per layer."""
    supported = quantizable_layers(model)
    bits = settings.bits_map()
    for name in bits:
        if name == "*" or name in supported:
            continue
        try:
            kind = type(model.get_submodule(name)).__name__
        except AttributeError:
            raise ShrinkflowError(f"unknown layer {name!r}: quantizable layers are {', '.join(supported)}") from None
        raise ShrinkflowError(
            f"layer {name!r} is a {kind}, an unsupported layer type: quantize supports {_SUPPORTED_NAMES} "
            f"({', '.join(supported)})"
        )
    if settings.method == "binary":
        chosen = {name: 1 for name in supported}
        if settings.keep_first_last and len(supported) > 1:
            chosen[supported[0]] = chosen[supported[-1]] = _EDGE_BITS
        return chosen
    return {name: bits[name] if name in bits else bits["*"] for name in supported if name in bits or "*" in bits}


def _encode(weight: torch.Tensor, bits: int, method: str, kept: torch.Tensor | None) -> Encoded:
    if method == "kmeans":
        return encode_codebook(weight, bits, kept)
    return encode_binary(weight, kept) if bits == 1 else encode_symmetric(weight, bits, kept)


class _StraightThrough(nn.Module):
    """Forward: the quantized weight — pruned weights exactly zero, whatever their float shadow
    does; backward: the identity, so the float weight learns."""

    def __init__(self, bits: int, method: str, kept: torch.Tensor | None):
        super().__init__()
        self.bits, self.method, self.kept = bits, method, kept

    def forward(self, weight):
        quantized = decode(_encode(weight, self.bits, self.method, self.kept)).to(weight.device)
        return weight + (quantized - weight).detach()


def _layer_params(model: nn.Module, layers: dict[str, int], kind: str) -> dict[str, tuple[nn.Module, str, int]]:
    """(module, parameter name, bits) of every parameter of ``layers`` whose name holds ``kind``
    (``weight``: a Linear's weight, an LSTM's weight_ih_l0, attention's in_proj_weight; ``bias``),
    by state-dict name."""
    found = {}
    for layer, bits in layers.items():
        module = model.get_submodule(layer)
        for param, _ in module.named_parameters(recurse=False):
            if kind in param:
                found[f"{layer}.{param}" if layer else param] = (module, param, bits)
    return found


def _fine_tune(model, tensors, kept, data: DataSplits, settings: QuantizeSettings, device, on_epoch) -> None:
    if settings.method == "kmeans":
        codebooks = {
            name: encode_codebook(getattr(module, param), bits, kept[name])
            for name, (module, param, bits) in tensors.items()
        }

        @torch.no_grad()
        def share(step: int) -> None:  # keep assignments, move each shared value to its weights' mean
            for name, encoded in codebooks.items():
                module, param, _ = tensors[name]
                weight = getattr(module, param)
                codebooks[name] = refit_codebook(encoded, weight.cpu())
                weight.copy_(decode(codebooks[name]).to(weight.device))

        share(0)
        fit(model, data.train, data.val, settings, device, on_epoch=on_epoch, after_step=share)
        return
    for name, (module, param, bits) in tensors.items():
        parametrize.register_parametrization(module, param, _StraightThrough(bits, settings.method, kept[name]))
    try:
        fit(model, data.train, data.val, settings, device, on_epoch=on_epoch)
    finally:
        for module, param, _ in tensors.values():
            if parametrize.is_parametrized(module, param):
                parametrize.remove_parametrizations(module, param, leave_parametrized=False)


def _quantize_weights(model: nn.Module, settings: QuantizeSettings, data: DataSplits, device, on_epoch) -> Quantized:
    layers = _weight_bits(model, settings)
    tensors = _layer_params(model, layers, "weight")
    kept = {name: kept_weights(getattr(module, param)) for name, (module, param, _) in tensors.items()}  # zeros stay
    if settings.auto_bits:
        layers = _allocated_bits(model, layers, kept, settings, data)
        tensors = _layer_params(model, layers, "weight")
    seed_everything(settings.seed)
    if settings.epochs:
        _fine_tune(model, tensors, kept, data, settings, device, on_epoch)
    model.cpu()
    encodings = {}
    with torch.no_grad():
        for name, (module, param, bits) in tensors.items():
            weight = getattr(module, param)
            encodings[name] = _encode(weight, bits, settings.method, kept[name])
            weight.copy_(decode(encodings[name]))
    encodings.update(_compressed_biases(model, layers, settings, data))
    return Quantized(model, encodings, layers)


def _compressed_biases(model: nn.Module, layers: dict[str, int], settings, data: DataSplits) -> dict[str, Encoded]:
    """The biases of units no layer reads set to 0 (stored as pruned); then, with ``bias_bits``
    8, the biases of ``layers`` and the normalization scales, each group at 8 bits where
    validation accuracy is unchanged."""
    _zero_unread_biases(model, data)
    if settings.bias_bits != 8:
        return {}
    biases = {name: getattr(module, p) for name, (module, p, _) in _layer_params(model, layers, "bias").items()}
    return {
        **_at_8_bits_if_harmless(model, biases, data),
        **_at_8_bits_if_harmless(model, _normalization_params(model), data),
    }


@torch.no_grad()
def _zero_unread_biases(model: nn.Module, data: DataSplits) -> None:
    """The biases of units no later layer reads (``_masks.unread_units``: their outgoing weights
    are all zero, as pruning and sws leave most hidden units of a small network: 212 of 300 in the
    digits mlp at 97% sparsity) set to 0. The logits stay the same, bit for bit (checked on the
    validation split; were they not, the biases would be put back)."""
    x = data.x_val if len(data.x_val) else data.x_train[:256]
    training = model.training
    model.eval()
    before, saved = model(x), {}
    for name, unread in unread_units(model, x[:1]).items():
        bias = model.get_submodule(name).bias
        if bias is not None and bias[unread].any():
            saved[name] = bias.detach().clone()
            bias[unread] = 0
    if saved and not torch.equal(model(x), before):
        for name, bias in saved.items():
            model.get_submodule(name).bias.copy_(bias)
    model.train(training)


def _allocated_bits(model: nn.Module, layers: dict[str, int], kept, settings: QuantizeSettings, data: DataSplits):
    """bits auto: each layer's bits by its measured sensitivity (``shrinkflow._mixed_precision``)."""
    model.cpu()
    weights = {name: (layer, getattr(module, param)) for layer in layers
               for name, (module, param, _) in _layer_params(model, {layer: 0}, "weight").items()}  # fmt: skip

    def quantized(name: str, weight: torch.Tensor, bits: int) -> torch.Tensor:
        return decode(_encode(weight, bits, settings.method, kept[name]))

    return allocate_bits(model, weights, quantized, data.x_val, data.y_val, settings.bits_budget())


def _normalization_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The scales and shifts of LayerNorm, BatchNorm, GroupNorm and RMSNorm layers, by state-dict name."""
    return {
        f"{name}.{param}" if name else param: tensor
        for name, module in model.named_modules()
        if isinstance(module, NORMALIZATION_LAYERS)
        for param, tensor in module.named_parameters(recurse=False)
    }


@torch.no_grad()
def _at_8_bits_if_harmless(model: nn.Module, tensors: dict[str, nn.Parameter], data: DataSplits) -> dict[str, Encoded]:
    """``tensors`` (biases: a recurrent layer's bias_ih_l*, attention's in_proj_bias; or
    normalization scales) at 8 bits, one scale a tensor — kept only if validation accuracy is
    unchanged, else all left float32. On a model compressed 30x, float32 biases are a quarter of
    the bytes; a transformer's LayerNorms, a fifth."""
    tensors = {name: tensor for name, tensor in tensors.items() if tensor.any()}  # all zero: stored as pruned
    x, y = (data.x_val, data.y_val) if len(data.x_val) else (data.x_train, data.y_train)
    cpu = torch.device("cpu")
    accuracy = score(model, x, y, cpu)["accuracy"]
    floats = {name: tensor.detach().clone() for name, tensor in tensors.items()}
    encodings = {}
    for name, tensor in tensors.items():
        encodings[name] = encode_symmetric(tensor.reshape(1, -1), 8, kept_weights(tensor))
        tensor.copy_(decode(encodings[name]).reshape(tensor.shape))
    if encodings and score(model, x, y, cpu)["accuracy"] < accuracy:
        for name, tensor in tensors.items():
            tensor.copy_(floats[name])
        return {}
    return encodings


for _name, _reads in (("kbit", ("bits", "bias_bits")), ("binary", ("keep_first_last", "bias_bits")),
                      ("kmeans", ("bits", "bias_bits"))):  # fmt: skip
    quantization_method(_name, storage="packed", fine_tuning="optional", reads=_reads)(_quantize_weights)


# --- soft weight-sharing -------------------------------------------------------------------------


@quantization_method("sws", storage="packed", fine_tuning="required", reads=("bits", "bias_bits", "prior_weight"),
                     prunes=True)  # fmt: skip
def _soft_weight_sharing(model: nn.Module, settings: QuantizeSettings, data: DataSplits, device, on_epoch):
    """Retrain under a mixture prior, then snap every weight to its component (``shrinkflow._sws``):
    2^bits shared values for the whole model and the zero component's weights pruned, codes
    stored as kmeans stores its own."""
    layers = _weight_bits(model, settings)
    tensors = _layer_params(model, layers, "weight")
    kept = {name: kept_weights(getattr(module, param)) for name, (module, param, _) in tensors.items()}
    bits = next(iter(layers.values()))

    def kept_values() -> torch.Tensor:  # a pruned model's zeros are held at zero: the prior counts them apart
        flat = {name: getattr(module, param).flatten() for name, (module, param, _) in tensors.items()}
        return torch.cat([w if kept[n] is None else w[kept[n].to(w.device)] for n, w in flat.items()])

    seed_everything(settings.seed)
    start = kept_values().detach().cpu()
    zeros = sum(int((~mask).sum()) for mask in kept.values() if mask is not None)
    prior = MixturePrior(start, encode_codebook(start, bits).scales, zeros)
    samples = len(data.x_train)

    def loss_fn(logits, targets, inputs):
        values, scale = sampled(kept_values())
        complexity = settings.prior_weight * prior.complexity(values, zeros, scale) / samples
        return fit_loss(logits, targets, settings) + complexity

    fit(WithPrior(model, prior), data.train, data.val, settings, device, on_epoch=on_epoch,
        after_step=_holding_zeros(model), loss_fn=loss_fn)  # fmt: skip
    model.cpu()
    encodings = _snapped(tensors, kept, prior.cpu(), bits)
    return Quantized(model, {**encodings, **_compressed_biases(model, layers, settings, data)}, layers)


@torch.no_grad()
def _snapped(tensors, kept, prior: MixturePrior, bits: int) -> dict[str, Encoded]:
    """Every weight set to its component's mean (the zero component's: pruned), as codebook codes."""
    means = prior.means.detach().clone()
    encodings = {}
    for name, (module, param, _) in tensors.items():
        weight = getattr(module, param)
        component = prior.components_of(weight.flatten())
        keep = component > 0 if kept[name] is None else (component > 0) & kept[name]
        codes = torch.where(keep, component - 1, 0)
        encodings[name] = Encoded("codebook", bits, tuple(weight.shape), codes, means, None if keep.all() else keep)
        weight.copy_(decode(encodings[name]).reshape(weight.shape))
    return encodings


# --- int8 methods: dynamic-int8, static-int8, qat ----------------------------------------------


@quantization_method("dynamic-int8", storage="int8-dynamic", fine_tuning="none", reads=("weight_scales",))
def _dynamic_int8(model: nn.Module, settings: QuantizeSettings, data: DataSplits, device, on_epoch) -> Quantized:
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.LSTM, nn.GRU))]
    if not layers:
        raise ShrinkflowError("dynamic-int8 quantizes Linear, LSTM and GRU layers and this model has none: use kbit")
    scales, int8 = _chosen_scales(lambda scales: dynamic_int8(copy.deepcopy(model).cpu(), scales), settings, data)
    quantized = [name for name, m in int8.named_modules() if is_int8_layer(m)]  # not attention's out_proj
    return Quantized(int8, {}, dict.fromkeys(quantized, 8), scales)


def _chosen_scales(make: Callable[[str], nn.Module], settings: QuantizeSettings, data: DataSplits):
    """(weight scales, int8 model made by ``make(scales)``): the scales asked for, or with auto the
    per-tensor model unless the per-channel one scores higher on validation (one scale a layer runs
    faster in ONNX Runtime: ~1.15x at batch 1 on the digits mlp; one a channel can fit layers whose
    rows differ in range)."""
    if settings.weight_scales != "auto":
        return settings.weight_scales, make(settings.weight_scales)
    models = {scales: make(scales) for scales in WEIGHT_SCALES}
    accuracy = {scales: score(m, *data.val, torch.device("cpu"))["accuracy"] for scales, m in models.items()}
    scales = "per-tensor" if accuracy["per-tensor"] >= accuracy["per-channel"] else "per-channel"
    return scales, models[scales]


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
    if qat:  # auto: one fine-tuning, per channel
        scales = "per-channel" if settings.weight_scales == "auto" else settings.weight_scales
        prepared = _prepared(model.cpu(), data, settings, scales)
        fit(prepared, data.train, data.val, settings, device, on_epoch=on_epoch, after_step=_holding_zeros(prepared))
        int8 = convert_int8(prepared)
    else:
        batches, observed = _calibration_batches(data, settings), []

        def calibrated(scales: str) -> nn.Module:
            return _calibrated(copy.deepcopy(model).cpu(), data, settings, scales, batches, observed)

        scales, int8 = _chosen_scales(calibrated, settings, data)
    return Quantized(int8, {}, {name: 8 for name, m in int8.named_modules() if is_int8_layer(m)}, scales)


def _prepared(model: nn.Module, data: DataSplits, settings: QuantizeSettings, scales: str) -> nn.Module:
    try:
        return prepare_static_int8(
            model, data.x_train[:1], settings.observer_name(), settings.method == "qat", weight_scales=scales
        )
    except Exception as exc:  # torch.fx raises many types on code it cannot trace
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(
            f"{settings.method} traces the model with torch.fx, which failed: {first_line}; use dynamic-int8 or kbit"
        ) from exc


def _calibrated(model: nn.Module, data: DataSplits, settings, scales: str, batches, observed: list) -> nn.Module:
    """The int8 model calibrated on ``batches``. The activation observers see the same batches
    whatever the weights' scales: the first calibration's observers (kept in ``observed``) serve
    the second model of weight_scales auto, which is not run again."""
    prepared = _prepared(model, data, settings, scales)
    if observed:
        prepared.load_state_dict(observed[0])
    else:
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        observed.append(copy.deepcopy(prepared.state_dict()))
    return convert_int8(prepared)


def _holding_zeros(model: nn.Module) -> Callable[[int], None]:
    """An ``after_step`` that puts every weight that is zero now back to zero: the pruned weights
    of a pruned model stay pruned through quantization-aware training."""
    masks = {
        name: p != 0 for name, p in model.named_parameters() if name.endswith("weight") and not bool((p != 0).all())
    }

    @torch.no_grad()
    def hold(step: int) -> None:
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask.to(model.get_parameter(name).device))

    return hold


quantization_method(
    "static-int8", storage="int8-static", fine_tuning="none", observers=OBSERVERS, default_observer="histogram",
    calibrates=True, reads=("observer", "weight_scales", "calibration_batches", "calibration_split"),
)(_static_int8)  # fmt: skip
quantization_method(
    "qat", storage="int8-static", fine_tuning="required", observers=("minmax", "moving-average"),
    default_observer="moving-average", reads=("observer", "weight_scales"),
)(_static_int8)  # fmt: skip
