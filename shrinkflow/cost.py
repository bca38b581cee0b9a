"""Static cost of a model: parameters, sparsity, MACs, BOPs and size — exact, per layer.

MACs are counted per sample for the matrix products of Linear, Conv1d/Conv2d, recurrent and
attention layers (biases, activations, pooling, normalization and the gates' element-wise
products are not MACs):
- Linear: positions × in × out (positions = product of the non-feature dims, 1 for (B, F));
- Conv: output positions × C_out × (C_in / groups) × kernel size;
- LSTM, GRU, RNN: per layer and direction, steps × gates·H × (input size + H) (gates: 4, 3, 1);
  LSTMCell, GRUCell, RNNCell: the same for one step, per call;
- MultiheadAttention (query length L, key length S, embedding E): the projections L·E·E (query),
  S·E·kdim and S·E·vdim (key, value), L·E·E (output), and the two attention products Q·Kᵀ and
  A·V, L·S·E each (summed over heads);
- the zoo transformer's ``SelfAttention``: its four Linears as above, and Q·Kᵀ and A·V, L·L·D
  each (D: the query projection's width, all heads), counted on the attention module itself;
- Embedding, LayerNorm, BatchNorm, GroupNorm, RMSNorm, PReLU: parameters, no MACs (a lookup,
  element-wise work).
A module with weights of any other kind is not counted: ``layer_costs`` names it in a
``ShrinkflowWarning`` with its parameter count (its parameters still count in ``cost_params``).
The fused fast path of ``nn.TransformerEncoderLayer`` is switched off while counting (it would
bypass the layers it fuses). *Effective* MACs skip weights that are exactly zero (each non-zero
weight is used once per output position or step): removed channels are gone from the layer
shapes already. BOPs = MACs × weight bits × activation bits (32 × 32 for float32).

Size: ``cost_size_bytes`` is measured on the saved checkpoint folder; ``cost_size_entropy_bytes``
is the information bound of its tensors (``shrinkflow._storage``: the empirical entropy of the
positions of non-zeros and of the quantization codes, plus 4 bytes a float value, scale or codebook
entry kept), which no coder of these symbols beats; ``storage_table`` gives both per tensor.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from shrinkflow._encoding import (
    int8_rnn_tensors,
    is_dynamic_int8_rnn,
    is_int8_layer,
)
from shrinkflow.artifact import Artifact
from shrinkflow.checkpoint import checkpoint_bytes, stored_tensors
from shrinkflow.config import ShrinkflowWarning
from shrinkflow.zoo import SelfAttention

__all__ = [
    "NORMALIZATION_LAYERS",
    "LayerCost",
    "before_after_metrics",
    "cost",
    "cost_line",
    "cost_summary",
    "format_bytes",
    "layer_costs",
    "layer_table",
    "model_parameters",
    "storage_table",
    "left_weights_line",
    "uncounted_layers",
    "weight_tensors",
]

FLOAT_BITS = 32
_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, SelfAttention)
# scales, not weights to compress (weight methods store them at 8 bits at most, as biases)
NORMALIZATION_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
# weights that take part in no matrix product: counted as parameters, with no MACs
_NO_MACS = (nn.Embedding, nn.PReLU, *NORMALIZATION_LAYERS)


@dataclass(frozen=True)
class LayerCost:
    layer: str
    kind: str
    params: int
    nonzero_params: int
    macs: int
    effective_macs: int
    weight_bits: int = FLOAT_BITS
    activation_bits: int = FLOAT_BITS

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    @property
    def bops(self) -> int:
        return self.macs * self.weight_bits * self.activation_bits


def _nonzero(tensors) -> int:
    return int(sum(torch.count_nonzero(t).item() for t in tensors))


def _own_tensors(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weights that take part in MACs, all parameters) of one module, not of its children.
    An int8 layer keeps its weight packed: its int8 codes stand in for it."""
    if is_dynamic_int8_rnn(module):
        weights, biases = int8_rnn_tensors(module)
        codes = [w.int_repr() for w in weights.values()]
        return codes, codes + list(biases.values())
    if is_int8_layer(module):
        weight = module.weight().int_repr()
        return [weight], [weight] + ([module.bias()] if module.bias() is not None else [])
    params = list(module.named_parameters(recurse=False))
    return [p for name, p in params if "weight" in name], [p for _, p in params]


def weight_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float weight tensors of ``model`` by state-dict name (parameters named *weight*),
    normalization scales aside: what compression methods compress."""
    return {
        f"{name}.{param}" if name else param: tensor
        for name, module in model.named_modules()
        if not isinstance(module, NORMALIZATION_LAYERS)
        for param, tensor in module.named_parameters(recurse=False)
        if "weight" in param and tensor.is_floating_point()
    }


def left_weights_line(
    did: str, state: str, cannot: str, model: nn.Module, left: dict[str, torch.Tensor], source: nn.Module
) -> str | None:
    """``"<did> N weight tensor(s), S% of the weights, <state>: <names> (<cannot> <kinds> here)"``
    for the weights a method ``left`` of ``model``, S their share of ``source``'s weights; None for none."""
    if not left:
        return None
    share = sum(t.numel() for t in left.values()) / max(sum(t.numel() for t in weight_tensors(source).values()), 1)
    patterns = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in left))  # layers.0, layers.1: one
    shown = ", ".join(patterns[:4]) + (f" and {len(patterns) - 4} more" if len(patterns) > 4 else "")
    kinds = sorted({type(model.get_submodule(name.rpartition(".")[0])).__name__ for name in left})
    counted = f"{len(left)} weight tensor(s), {share:.0%} of the weights"
    return f"{did} {counted}, {state}: {shown} ({cannot} {', '.join(kinds)} here)"


def model_parameters(model: nn.Module) -> list[torch.Tensor]:
    """All parameters, the packed weights and biases of int8 layers included."""
    return [t for module in model.modules() for t in _own_tensors(module)[1]]


def _layer_parameters(module: nn.Module) -> list[torch.Tensor]:
    """``_own_tensors``' parameters, plus, for attention, those of its output projection: the
    attention module uses that Linear's weight itself, so the Linear is never called (nor counted)
    alone."""
    params = _own_tensors(module)[1]
    return params + _own_tensors(module.out_proj)[1] if isinstance(module, nn.MultiheadAttention) else params


def _macs(module: nn.Module, inputs: tuple, kwargs: dict, output) -> tuple[int, int]:
    """(dense MACs, effective MACs) of one call with batch size 1."""
    if isinstance(module, nn.MultiheadAttention):
        return _attention_macs(module, inputs, kwargs)
    if isinstance(module, SelfAttention):  # its Linears count themselves; Q·Kᵀ and A·V have no weights
        tokens = inputs[0].shape[1]
        products = 2 * tokens * tokens * module.query.out_features  # float or int8 Linear
        return products, products
    weights = _own_tensors(module)[0]
    if hasattr(module, "out_features"):  # Linear, float or int8
        positions = output.numel() // module.out_features
        return positions * module.in_features * module.out_features, positions * _nonzero(weights)
    if hasattr(module, "out_channels"):  # Conv, float or int8
        positions = output.numel() // module.out_channels
        return positions * weights[0].numel(), positions * _nonzero(weights)
    if isinstance(module, nn.RNNCellBase):  # one step: every weight used once
        return sum(w.numel() for w in weights), _nonzero(weights)
    # LSTM, GRU, RNN: (B, T, I) with batch_first, else (T, B, I); every weight is used once per step
    if getattr(module, "proj_size", 0):
        raise ValueError("LSTM with proj_size is not supported by the cost model")
    sequence = inputs[0]
    if isinstance(sequence, nn.utils.rnn.PackedSequence):
        steps = len(sequence.data)  # batch size 1: one row per step
    else:
        steps = sequence.shape[-2] if sequence.dim() == 2 else sequence.shape[1 if module.batch_first else 0]
    return steps * sum(w.numel() for w in weights), steps * _nonzero(weights)


def _attention_macs(module: nn.MultiheadAttention, inputs: tuple, kwargs: dict) -> tuple[int, int]:
    """The four projections (weights) and the two attention products (activations only)."""
    query = inputs[0] if inputs else kwargs["query"]
    key = inputs[1] if len(inputs) > 1 else kwargs["key"]

    def length(x: torch.Tensor) -> int:  # (L, E) unbatched, (N, L, E) batch first, else (L, N, E)
        return x.shape[0] if x.dim() == 2 else x.shape[1 if module.batch_first else 0]

    queries, keys, dim = length(query), length(key), module.embed_dim
    keys += (module.bias_k is not None) + module.add_zero_attn  # an extra key position each
    if module._qkv_same_embed_dim:
        packed = module.in_proj_weight
        projections = [packed[:dim], packed[dim : 2 * dim], packed[2 * dim :]]
    else:
        projections = [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
    positions = [queries, keys, keys]
    dense = sum(n * w.numel() for n, w in zip(positions, projections, strict=True))
    effective = sum(n * _nonzero([w]) for n, w in zip(positions, projections, strict=True))
    output = module.out_proj.weight
    dense, effective = dense + queries * output.numel(), effective + queries * _nonzero([output])
    products = 2 * queries * keys * dim  # Q·Kᵀ and A·V over all heads: no weights, nothing skipped
    return dense + products, effective + products


def uncounted_layers(model: nn.Module, counted: set[str]) -> list[tuple[str, str, int]]:
    """(name, kind, parameters) of every module with weights of its own that the cost model has
    no MACs for: not among ``counted``, not of a kind without MACs, not attention's output Linear."""
    inside_attention = {
        f"{name}.out_proj" if name else "out_proj"
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }
    found = []
    for name, module in model.named_modules():
        params = _own_tensors(module)[1]
        if not params or name in counted or name in inside_attention or isinstance(module, _NO_MACS):
            continue
        found.append((name, type(module).__name__, sum(p.numel() for p in params)))
    return found


def _macs_per_layer(model: nn.Module, input_shape) -> dict[str, tuple[int, int]]:
    """Layer name → (dense, effective) MACs of one forward pass on a sample of zeros, counted by
    forward hooks (a layer called twice costs twice)."""
    calls: dict[str, tuple[int, int]] = {}
    names = {module: name for name, module in model.named_modules()}

    def record(module, inputs, kwargs, output):
        output = output[0] if isinstance(output, tuple) else output
        dense, effective = _macs(module, inputs, kwargs, output)
        previous = calls.get(names[module], (0, 0))  # a layer called twice costs twice
        calls[names[module]] = (previous[0] + dense, previous[1] + effective)

    counted = [m for m in model.modules() if isinstance(m, _COUNTED) or is_int8_layer(m)]
    handles = [m.register_forward_hook(record, with_kwargs=True) for m in counted]
    was_training, fast_path = model.training, torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder layer calls no submodule
        device = next(iter(model_parameters(model))).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(fast_path)
        model.train(was_training)
    return calls


def layer_costs(model: nn.Module, input_shape, bits: Mapping[str, tuple[int, int]] | None = None) -> list[LayerCost]:
    """Cost of every layer of ``model`` that does matrix products, for one sample of ``input_shape``.

    ``bits`` maps layer names to (weight bits, activation bits); unlisted layers are float32.
    """
    bits = bits or {}
    calls = _macs_per_layer(model, input_shape)
    if uncounted := uncounted_layers(model, set(calls)):
        listed = ", ".join(f"{name} ({kind}, {params} parameters)" for name, kind, params in uncounted)
        warnings.warn(f"the cost model counts no MACs for {listed}: MACs and BOPs leave them out", ShrinkflowWarning,
                      stacklevel=2)  # fmt: skip
    costs = []
    for name, (dense, effective) in calls.items():
        module = model.get_submodule(name)
        params = _layer_parameters(module)
        weight_bits, activation_bits = bits.get(name, (FLOAT_BITS, FLOAT_BITS))
        costs.append(
            LayerCost(
                layer=name,
                kind=type(module).__name__,
                params=sum(p.numel() for p in params),
                nonzero_params=_nonzero(params),
                macs=dense,
                effective_macs=effective,
                weight_bits=weight_bits,
                activation_bits=activation_bits,
            )
        )
    return costs


def layer_table(costs: list[LayerCost]) -> pd.DataFrame:
    rows = [{**asdict(c), "sparsity": c.sparsity, "bops": c.bops} for c in costs]
    return pd.DataFrame(rows, columns=[*LayerCost.__dataclass_fields__, "sparsity", "bops"])


def storage_table(model: nn.Module, description: Mapping[str, Any], encodings=None) -> pd.DataFrame:
    """One row per stored tensor: its format, elements, stored bytes (without the container's
    header), entropy bound in bytes, and their ratio."""
    rows = []
    for stored in stored_tensors(model, dict(description), encodings):
        if stored.format == "alias":
            continue
        bound = stored.entropy_bytes
        rows.append({
            "tensor": stored.name, "format": stored.format, "elements": int(np.prod(stored.header["s"])),
            "stored_bytes": len(stored.payload), "entropy_bytes": round(bound, 1),
            "stored_over_entropy": len(stored.payload) / bound if bound else 1.0,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["tensor", "format", "elements", "stored_bytes", "entropy_bytes",
                                       "stored_over_entropy"])  # fmt: skip


def cost_summary(
    model: nn.Module, description: Mapping[str, Any], checkpoint: Path | None = None, encodings=None
) -> dict[str, float]:
    """The ``cost_*`` metrics of a model (``encodings``: the codes of its packed weights); artifact
    bytes only when its checkpoint folder is given."""
    bits = {layer: tuple(pair) for layer, pair in description.get("bits", {}).items()}
    costs = layer_costs(model, description["architecture"]["input_shape"], bits)
    params = model_parameters(model)
    total = sum(p.numel() for p in params)
    nonzero = _nonzero(params)
    summary: dict[str, float] = {
        "cost_params": total,
        "cost_nonzero_params": nonzero,
        "cost_sparsity": 1.0 - nonzero / total if total else 0.0,
        "cost_macs": sum(c.macs for c in costs),
        "cost_macs_effective": sum(c.effective_macs for c in costs),
        "cost_bops": sum(c.bops for c in costs),
        "cost_size_entropy_bytes": round(float(storage_table(model, description, encodings)["entropy_bytes"].sum())),
    }
    if checkpoint is not None:
        summary["cost_size_bytes"] = checkpoint_bytes(checkpoint)
    return summary


def cost(artifact: Artifact) -> dict[str, float]:
    """Every ``cost_*`` metric of ``artifact``, ``cost_size_bytes`` measured on the checkpoint it
    saves (to a temporary folder: what ``mlflow`` logs is the same bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = artifact.save(Path(tmp) / "checkpoint")
        return cost_summary(artifact.model, artifact.description, folder, artifact.encodings)


def before_after_metrics(
    accuracy_before: float,
    test: Mapping[str, float],
    costs_before: Mapping[str, float],
    costs_after: Mapping[str, float],
) -> dict[str, float]:
    """Metrics of a step that compresses a model: test accuracy and loss after, accuracy before,
    the costs after (``cost_*``) and before (``baseline_cost_*``)."""
    return {
        "test_accuracy_before": accuracy_before,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        **{f"baseline_{k}": v for k, v in costs_before.items()},
        **costs_after,
    }


def format_bytes(size: float) -> str:
    """``size`` bytes as a person reads it: ``4.9 KB``, ``203 KB``, ``1.2 MB`` (SI units, 3 digits)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}" if size / scale < 100 else f"{size / scale:.0f} {unit}"
    return f"{size:.0f} B"


def cost_line(costs: Mapping[str, float]) -> str:
    """``cost``'s numbers as a person reads them: ``size 4.9 KB (entropy bound 4.5 KB), 4,325 of
    50,610 weights nonzero (91.5% sparse), MACs 50,200 (effective 4,016), BOPs 6.43e+06``."""
    return (
        f"size {format_bytes(costs['cost_size_bytes'])} "
        f"(entropy bound {format_bytes(costs['cost_size_entropy_bytes'])}), "
        f"{costs['cost_nonzero_params']:,.0f} of {costs['cost_params']:,.0f} weights nonzero "
        f"({costs['cost_sparsity']:.1%} sparse), MACs {costs['cost_macs']:,.0f} "
        f"(effective {costs['cost_macs_effective']:,.0f}), BOPs {costs['cost_bops']:.3g}"
    )
