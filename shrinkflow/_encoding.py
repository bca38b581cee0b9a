"""Weight quantization with packed storage: k-bit symmetric, binary (XNOR-Net) and k-means sharing.

Pure PyTorch; no MLflow, no files. Each quantizer turns a float weight into an ``Encoded``
(integer codes plus per-channel scales or a codebook) and back; the model is then run with the
decoded weights, so saving the codes and reloading gives bit-identical predictions. The last
section makes models that run real int8 kernels (dynamic and static int8) and turns them into
plain tensors and back.

- ``symmetric`` (k = 2..8 bits): per output channel, s = max|w| / (2^(k−1) − 1),
  q = round(w / s) ∈ [−(2^(k−1) − 1), 2^(k−1) − 1], w ≈ q·s. (The article's "integerization"
  rounds raw weights to integers with no scale, which sends almost every weight of a trained
  network to 0.)
- ``binary`` (1 bit, Rastegari et al. 2016): w ≈ α·sign(w), α = mean|w| per output channel.
- ``codebook`` (Han et al. 2016, Deep Compression): 2^k shared values per layer found by 1-D
  k-means (linear initialization), each weight an index into them.

A pruned tensor (one with exact zeros) is quantized with its set of ``kept`` weights: the zeros
stay exact zeros, coded apart from the codes (``Encoded.symbols``), and only they — the symmetric
grid gives a kept weight the nearest non-zero level, k-means and α are fitted to kept weights
only. Deep Compression quantizes the weights that survive pruning in the same way. How the codes
are stored (packed k bits each, or entropy-coded) is ``shrinkflow._storage``'s business.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "DYNAMIC_RECURRENT",
    "Encoded",
    "decode",
    "dynamic_int8",
    "encode_binary",
    "encode_codebook",
    "encode_symmetric",
    "INT8_GRAPH",
    "INT8_STORAGES",
    "WEIGHT_SCALES",
    "INT8_ENGINES",
    "OBSERVERS",
    "convert_int8",
    "int8_engines",
    "int8_skeleton",
    "int8_state",
    "is_dynamic_int8_linear",
    "is_dynamic_int8_rnn",
    "has_int8_layers",
    "is_int8_layer",
    "kept_weights",
    "load_int8_state",
    "prepare_static_int8",
    "quantized_engine",
    "repacked_int8",
    "pack_codes",
    "per_tensor_as_channels",
    "refit_codebook",
    "unpack_codes",
]


@dataclass
class Encoded:
    scheme: str  # "symmetric", "binary" or "codebook"
    bits: int
    shape: tuple[int, ...]
    codes: torch.Tensor  # int64, unsigned codes in [0, 2^bits), flattened
    scales: torch.Tensor  # (C_out,) float32 for symmetric/binary; (2^bits,) codebook values for codebook
    kept: torch.Tensor | None = None  # flat bool: the weights that are stored; the others are exact zeros

    @property
    def alphabet(self) -> int:
        return 2**self.bits

    def symbols(self) -> torch.Tensor:
        """One symbol a weight: its code, or with ``kept`` 0 for a pruned weight and code + 1 for a
        kept one — the stream that storage entropy-codes (positions and codes in one)."""
        return self.codes if self.kept is None else torch.where(self.kept, self.codes + 1, 0)


def kept_weights(weight: torch.Tensor) -> torch.Tensor | None:
    """The non-zero weights of a pruned tensor (flat), None for a tensor without zeros. Quantizing
    with this set keeps pruned weights exactly zero, and only them."""
    kept = weight.detach().flatten() != 0
    return None if bool(kept.all()) else kept.cpu()


def _per_channel(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1)  # (C_out, fan_in)


def _rows_kept(weight: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    if kept is None:
        return torch.ones(_per_channel(weight).shape, dtype=torch.bool, device=weight.device)
    return kept.to(weight.device).reshape(weight.shape[0], -1)


def encode_symmetric(weight: torch.Tensor, bits: int, kept: torch.Tensor | None = None) -> Encoded:
    """With ``kept``, the scale comes from the kept weights and a kept weight takes the nearest
    non-zero level: zero is the pruned weights' value only (Deep Compression quantizes the weights
    that survive pruning)."""
    qmax = 2 ** (bits - 1) - 1
    rows = _per_channel(weight).float()  # on the weight's device: STE encodes every forward pass
    mask = _rows_kept(weight, kept)
    scales = (rows.abs() * mask).amax(dim=1) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero channel stays zero
    q = torch.clamp(torch.round(rows / scales[:, None]), -qmax, qmax).to(torch.int64)
    if kept is not None:
        q = torch.where(q == 0, torch.where(rows < 0, -1, 1), q)
        q = torch.where(mask, q, -qmax)  # a pruned weight's code is never read: 0
    kept = None if kept is None else mask.flatten()
    return Encoded("symmetric", bits, tuple(weight.shape), (q + qmax).flatten(), scales, kept)


def encode_binary(weight: torch.Tensor, kept: torch.Tensor | None = None) -> Encoded:
    """α = mean |w| of the kept weights of a channel; pruned weights stay zero."""
    rows = _per_channel(weight).float()
    mask = _rows_kept(weight, kept)
    alpha = (rows.abs() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    codes = ((rows >= 0) & mask).to(torch.int64).flatten()
    return Encoded("binary", 1, tuple(weight.shape), codes, alpha, None if kept is None else mask.flatten())


def _nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return (values[:, None] - centroids[None, :]).abs().argmin(dim=1)


def encode_codebook(weight: torch.Tensor, bits: int, kept: torch.Tensor | None = None, iterations: int = 30) -> Encoded:
    """k-means over the kept weights only: no centroid is spent on (or pulled towards) the zeros."""
    flat = weight.detach().flatten().float().cpu()
    values = flat if kept is None else flat[kept]
    count = 2**bits
    if values.numel() == 0:
        values = torch.zeros(1)
    centroids = torch.linspace(values.min().item(), values.max().item(), count)  # Han et al.: linear init
    for _ in range(iterations):
        codes = _nearest(values, centroids)
        sums = torch.zeros(count).index_add_(0, codes, values)
        sizes = torch.bincount(codes, minlength=count)
        updated = torch.where(sizes > 0, sums / sizes.clamp(min=1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    codes = _nearest(flat, centroids) if kept is None else torch.where(kept, _nearest(flat, centroids), 0)
    return Encoded("codebook", bits, tuple(weight.shape), codes, centroids, kept)


def refit_codebook(encoded: Encoded, weight: torch.Tensor) -> Encoded:
    """Centroid fine-tuning: each shared value becomes the mean of its weights after an update."""
    values = weight.detach().flatten().float().cpu()
    kept = torch.ones_like(values, dtype=torch.bool) if encoded.kept is None else encoded.kept
    count = encoded.scales.numel()
    sums = torch.zeros(count).index_add_(0, encoded.codes[kept], values[kept])
    sizes = torch.bincount(encoded.codes[kept], minlength=count)
    centroids = torch.where(sizes > 0, sums / sizes.clamp(min=1), encoded.scales)
    return Encoded("codebook", encoded.bits, encoded.shape, encoded.codes, centroids, encoded.kept)


def decode(encoded: Encoded) -> torch.Tensor:
    codes = encoded.codes
    if encoded.scheme == "codebook":
        values = encoded.scales[codes]
    else:
        rows = codes.reshape(encoded.shape[0], -1)
        if encoded.scheme == "binary":
            values = (rows.float() * 2 - 1) * encoded.scales[:, None]
        else:
            qmax = 2 ** (encoded.bits - 1) - 1
            values = (rows - qmax).float() * encoded.scales[:, None]
        values = values.flatten()
    if encoded.kept is not None:
        values = torch.where(encoded.kept, values, 0.0)
    return values.reshape(encoded.shape)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [0, 2^bits) → uint8 bytes, ``bits`` bits each, most significant first."""
    as_bits = (codes.numpy()[:, None] >> np.arange(bits - 1, -1, -1)) & 1  # (N, bits)
    return torch.from_numpy(np.packbits(as_bits.astype(np.uint8).flatten()))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    as_bits = np.unpackbits(packed.numpy(), count=count * bits).reshape(count, bits).astype(np.int64)
    return torch.from_numpy(as_bits @ (1 << np.arange(bits - 1, -1, -1)))


# --- int8 with real kernels ------------------------------------------------------------------
# torch.ao.quantization is deprecated in torch 2.13 but is what runs int8 Linear and Conv kernels
# on the CPU without compilation (torchao's int8 was slower than fp32 uncompiled, and its static
# flow lowers through torch.compile). Only this section touches it, so moving to its successor
# changes one place. Static int8 uses FX graph mode: it traces the model, fuses Conv/Linear with
# the ReLU after them, and places the activation quantizers itself, so zoo and user models need
# no QuantStub edits.

INT8_STORAGES = ("int8-dynamic", "int8-static")
OBSERVERS = ("histogram", "minmax", "moving-average")
_BACKEND = "x86"  # fbgemm/onednn kernels; activations use 7 bits of range (reduce_range) as they need


WEIGHT_SCALES = ("per-channel", "per-tensor")


# The recurrent layers dynamic int8 quantizes, recorded in a model's description
# (``quantize.int8_recurrent``) so that a checkpoint is rebuilt as it was made: before GRU was
# added, a GRU stayed float32.
DYNAMIC_RECURRENT = ("LSTM", "GRU")


def dynamic_int8(
    model: nn.Module, weight_scales: str = "per-channel", recurrent: tuple[str, ...] = DYNAMIC_RECURRENT
) -> nn.Module:
    """A copy of ``model`` whose Linear and ``recurrent`` layers run int8 kernels: weights int8
    (per output channel for Linear, or one scale a layer with ``weight_scales`` per-tensor; per
    tensor for LSTM and GRU, the only kernels there are), activations quantized to int8 on the fly,
    batch by batch."""
    import torch.ao.quantization as tq

    linear = tq.default_dynamic_qconfig if weight_scales == "per-tensor" else tq.per_channel_dynamic_qconfig
    mapping = {nn.Linear: linear, **{getattr(nn, kind): tq.default_dynamic_qconfig for kind in recurrent}}
    with _quiet():
        quantized = per_tensor_as_channels(tq.quantize_dynamic(model.eval(), mapping, dtype=torch.qint8))
    for layer in quantized.modules():
        if isinstance(layer, nn.TransformerEncoderLayer):
            # PyTorch's fused encoder path reads its Linears' float weights, which int8 layers no
            # longer have; this flag is one of the conditions it checks (the plain path ignores it)
            layer.activation_relu_or_gelu = 0
    return quantized


def per_tensor_as_channels(model: nn.Module) -> nn.Module:
    """``model`` with every Linear/Conv int8 weight of one scale written per output channel, all
    channels at that scale: the same codes and the same arithmetic, in the one layout that
    checkpoints and the ONNX export read (the export writes equal scales back as one)."""
    for module in model.modules():
        if is_int8_layer(module) and not is_dynamic_int8_rnn(module):
            weight = module.weight()
            if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                channels = weight.shape[0]
                scales = torch.full((channels,), weight.q_scale(), dtype=torch.float64)
                zero_points = torch.full((channels,), weight.q_zero_point(), dtype=torch.int64)
                spread = torch._make_per_channel_quantized_tensor(weight.int_repr(), scales, zero_points, 0)
                module.set_weight_bias(spread, module.bias())
    return model


def _quiet():
    # torch.ao's deprecation notices, and its notes on observers that saw no data when a saved
    # model's structure is rebuilt before its values are loaded
    return warnings.catch_warnings(action="ignore")


def _qconfig_mapping(observer: str, qat: bool, weight_scales: str = "per-channel"):
    import torch.ao.quantization as tq

    activation = {
        "histogram": tq.HistogramObserver,
        "minmax": tq.MinMaxObserver,
        "moving-average": tq.MovingAverageMinMaxObserver,
    }[observer].with_args(reduce_range=True)
    if qat:
        qconfig = tq.QConfig(
            activation=tq.FakeQuantize.with_args(observer=activation, quant_min=0, quant_max=255),
            weight=tq.default_weight_fake_quant
            if weight_scales == "per-tensor"
            else tq.default_per_channel_weight_fake_quant,
        )
        # Embeddings stay float32, as static int8 leaves them: the global per-channel weight
        # quantizer is refused for a lookup table, and the warning line names them.
        mapping = tq.get_default_qat_qconfig_mapping(_BACKEND).set_global(qconfig)
        return mapping.set_object_type(nn.Embedding, None).set_object_type(nn.EmbeddingBag, None)
    weight = tq.default_weight_observer if weight_scales == "per-tensor" else tq.default_per_channel_weight_observer
    qconfig = tq.QConfig(activation=activation, weight=weight)
    return tq.get_default_qconfig_mapping(_BACKEND).set_global(qconfig)


# Version of the static int8 graph, recorded in a model's description (``quantize.int8_graph``) so
# that a checkpoint is rebuilt with the graph it was made with. 2: nn.Flatten shares its input's
# observer, as torch.flatten and MaxPool already did, so its int8 values keep their scale; in
# version 1 it had an observer of its own, and the flattened features were requantized to another
# scale. PyTorch still dequantizes around the module (its lowering knows torch.flatten only), but
# in ONNX the DequantizeLinear/QuantizeLinear pair around Flatten now has one scale and ONNX
# Runtime drops it: two operators fewer per pass (~10% of the digits cnn's time at batch 1).
INT8_GRAPH = 2


def _backend_config(int8_graph: int):
    from torch.ao.quantization.backend_config import BackendPatternConfig, ObservationType, get_native_backend_config

    config = get_native_backend_config()  # what prepare_fx and convert_fx use by default
    if int8_graph >= 2:
        pool = next(c for c in config.configs if c.pattern is nn.MaxPool2d)  # a share-qparams op: same dtypes
        config.set_backend_pattern_config(
            BackendPatternConfig(nn.Flatten)
            .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
            .set_dtype_configs(pool.dtype_configs)
        )
    return config


def prepare_static_int8(
    model: nn.Module,
    example: torch.Tensor,
    observer: str,
    qat: bool = False,
    int8_graph: int = INT8_GRAPH,
    weight_scales: str = "per-channel",
) -> nn.Module:
    """``model`` traced by torch.fx with observers (``qat``: fake quantizers) after every
    quantized layer's inputs and outputs; run batches through it, then ``convert_int8``."""
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    mapping, config = _qconfig_mapping(observer, qat, weight_scales), _backend_config(int8_graph)
    with _quiet():
        if qat:
            return prepare_qat_fx(model.train(), mapping, (example,), backend_config=config)
        return prepare_fx(model.eval(), mapping, (example,), backend_config=config)


def convert_int8(prepared: nn.Module, int8_graph: int = INT8_GRAPH) -> nn.Module:
    """The int8 model: Conv/Linear (fused with their ReLU) as int8 kernels, activations int8
    between them at the scales the observers chose."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet():
        return per_tensor_as_channels(convert_fx(prepared.cpu().eval(), backend_config=_backend_config(int8_graph)))


def int8_skeleton(float_model: nn.Module, storage: str, input_shape, quantize: dict) -> nn.Module:
    """An int8 model with the structure that ``storage`` and the quantize settings produce, its
    values to be filled by ``load_int8_state``."""
    if storage == "int8-dynamic":  # checkpoints from before GRU was quantized: LSTM only
        return dynamic_int8(float_model, recurrent=tuple(quantize.get("int8_recurrent", ["LSTM"])))
    example = torch.zeros(1, *input_shape)
    graph = quantize.get("int8_graph", 1)  # checkpoints from before the version was recorded: 1
    prepared = prepare_static_int8(float_model, example, quantize["observer"], quantize["method"] == "qat", graph)
    return convert_int8(prepared, graph)


def is_int8_layer(module: nn.Module) -> bool:
    """A Linear or Conv layer with int8 weights (dynamic or static), or a dynamic-int8 LSTM or GRU."""
    from torch.ao.nn.quantized import Linear
    from torch.ao.nn.quantized.modules.conv import _ConvNd

    return isinstance(module, (Linear, _ConvNd)) or is_dynamic_int8_rnn(module)


def is_dynamic_int8_rnn(module: nn.Module) -> bool:
    """A dynamic-int8 LSTM or GRU."""
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase

    return isinstance(module, RNNBase)


def int8_rnn_tensors(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(int8 weights, float32 biases) of a dynamic-int8 LSTM or GRU, named as nn.LSTM/nn.GRU name them."""
    return module.get_weight(), module.get_bias()


def is_dynamic_int8_linear(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(module, DynamicLinear)


def int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors that describe an int8 model: for each int8 layer its int8 codes, float32
    scales and int8 zero points per output channel, float32 bias and (static layers) the float32
    scale and int64 zero point of its output; every other module's own tensors, among them the
    input quantizers' scales of a static model. The observers' scales are float32 values, so
    float32 stores them exactly."""
    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_dynamic_int8_rnn(module):  # per-tensor int8 weights, float32 biases
            weights, biases = int8_rnn_tensors(module)
            for key, weight in weights.items():
                state[f"{prefix}{key}::int8"] = weight.int_repr().contiguous()
                state[f"{prefix}{key}::scale"] = torch.tensor(weight.q_scale(), dtype=torch.float32)
                state[f"{prefix}{key}::zero_point"] = torch.tensor(weight.q_zero_point(), dtype=torch.int8)
            state.update({f"{prefix}{key}": bias.detach().contiguous().clone() for key, bias in biases.items()})
        elif is_int8_layer(module):
            weight = module.weight()
            state[f"{prefix}weight::int8"] = weight.int_repr().contiguous()
            state[f"{prefix}weight::scales"] = weight.q_per_channel_scales().to(torch.float32).contiguous()
            state[f"{prefix}weight::zero_points"] = weight.q_per_channel_zero_points().to(torch.int8).contiguous()
            if module.bias() is not None:
                state[f"{prefix}bias"] = module.bias().detach().contiguous().clone()
            if not is_dynamic_int8_linear(module):
                state[f"{prefix}scale"] = torch.tensor(module.scale, dtype=torch.float32)
                state[f"{prefix}zero_point"] = torch.tensor(module.zero_point, dtype=torch.int64)
        elif not any(is_int8_layer(parent) for parent in _parents(model, name)):
            for key, tensor in list(module._parameters.items()) + list(module._buffers.items()):
                if tensor is not None:
                    state[f"{prefix}{key}"] = tensor.detach().contiguous().clone()
    return state


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".") if name else []
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


@torch.no_grad()
def load_int8_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Fill ``int8_skeleton``'s model with ``int8_state``'s tensors (KeyError when one is missing)."""
    used = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_dynamic_int8_rnn(module):
            used |= _load_int8_rnn(module, prefix, state)
            continue
        if not is_int8_layer(module):
            continue
        keys = [f"{prefix}weight::int8", f"{prefix}weight::scales", f"{prefix}weight::zero_points", f"{prefix}bias"]
        codes, scales = state[keys[0]], state[keys[1]].to(torch.float64)
        zero_points = state[keys[2]].to(torch.int64)
        per_channel = (-1,) + (1,) * (codes.dim() - 1)
        values = ((codes.to(torch.float64) - zero_points.reshape(per_channel)) * scales.reshape(per_channel)).float()
        weight = torch.quantize_per_channel(values, scales, zero_points, axis=0, dtype=torch.qint8)
        module.set_weight_bias(weight, state.get(keys[3]))
        if not is_dynamic_int8_linear(module):
            module.scale, module.zero_point = float(state[f"{prefix}scale"]), int(state[f"{prefix}zero_point"])
            keys += [f"{prefix}scale", f"{prefix}zero_point"]
        used.update(keys)
    for key, tensor in state.items():
        if key in used:
            continue
        owner, _, attribute = key.rpartition(".")
        getattr(model.get_submodule(owner) if owner else model, attribute).copy_(tensor)
    return model.eval()


def _load_int8_rnn(module: nn.Module, prefix: str, state: dict[str, torch.Tensor]) -> set[str]:
    weights, biases = int8_rnn_tensors(module)
    tensors, used = {}, set()
    for key in weights:
        codes, scale, zero_point = (state[f"{prefix}{key}::{part}"] for part in ("int8", "scale", "zero_point"))
        values = ((codes.to(torch.float64) - int(zero_point)) * float(scale)).float()  # requantizes to codes
        tensors[key] = torch.quantize_per_tensor(values, float(scale), int(zero_point), torch.qint8)
        used |= {f"{prefix}{key}::int8", f"{prefix}{key}::scale", f"{prefix}{key}::zero_point"}
    for key in biases:
        tensors[key] = state[f"{prefix}{key}"]
        used.add(f"{prefix}{key}")
    module.set_weight_bias(tensors)
    return used


# --- int8 engines ----------------------------------------------------------------------------
# PyTorch's int8 CPU kernels come from one of several libraries, chosen by one process-wide
# setting, torch.backends.quantized.engine: it is read when a layer's weights are packed (on
# loading) and when the layer runs. Measured on the digits cnn (traced, 1 thread): x86, the
# default, runs oneDNN convolutions that are the fastest at batch 64 but pay ~10 µs of setup a
# call, so fbgemm and qnnpack run batch 1 ~1.6-1.9x faster and batch 64 2.5x slower. The engine is
# therefore a property of how a model is run, like its execution form, not of the checkpoint.

INT8_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


def int8_engines() -> tuple[str, ...]:
    """The ``INT8_ENGINES`` this PyTorch build has."""
    return tuple(engine for engine in INT8_ENGINES if engine in torch.backends.quantized.supported_engines)


@contextlib.contextmanager
def quantized_engine(engine: str):
    """Run the block with ``engine``'s int8 kernels, then restore the engine that was set."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def has_int8_layers(model: nn.Module) -> bool:
    return any(is_int8_layer(module) for module in model.modules())


def repacked_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its int8 weights packed for the engine set now, exactly as loading
    its checkpoint under that engine packs them. Engines round differently in places (qnnpack its
    requantization, onednn its on-the-fly quantization of dynamic int8), so outputs can differ
    slightly: on the digits models, the same class for every test image, logits within 1.3%."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if is_dynamic_int8_rnn(module):
                weights, biases = int8_rnn_tensors(module)
                module.set_weight_bias({**weights, **biases})
            elif is_int8_layer(module):
                module.set_weight_bias(module.weight(), module.bias())
    return model
