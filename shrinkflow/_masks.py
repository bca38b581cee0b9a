"""Pruning primitives: magnitude masks, the gradual schedule, and physical channel removal
(``shrinkflow.pruning`` turns them into methods).

Pure PyTorch (and Torch-Pruning for the dependency graph); no MLflow, no files.

Unstructured methods zero weights of the *prunable* tensors — every parameter named *weight* of
Linear, Conv1d/Conv2d, LSTM/GRU/RNN (``weight_ih_l*``, ``weight_hh_l*``), MultiheadAttention (the
packed ``in_proj_weight``; its ``out_proj`` is a Linear) and Embedding layers (biases and
normalization scales are left alone, as in Han et al.) — and keep a mask so fine-tuning cannot
bring them back. The article's "clipping" sample zeroes the weights
*above* a threshold; magnitude pruning removes the *small* ones, which carry the least signal.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shrinkflow.config import ShrinkflowError

__all__ = [
    "Masks",
    "apply_masks",
    "cubic_sparsity",
    "global_masks",
    "layerwise_masks",
    "masks_sparsity",
    "prunable_layers",
    "prunable_weights",
    "sparsity_error",
    "structured_prune",
    "threshold_masks",
    "unread_units",
]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase, nn.MultiheadAttention, nn.Embedding)
Masks = dict[str, torch.Tensor]


def prunable_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, _PRUNABLE)]


def prunable_weights(model: nn.Module, layers: list[str] | None = None) -> dict[str, nn.Parameter]:
    """Weight tensors (not biases) of the chosen layers (default: all), by parameter name."""
    available = prunable_layers(model)
    unknown = sorted(set(layers or []) - set(available))
    if unknown:
        raise ShrinkflowError(
            f"unknown layer {', '.join(map(repr, unknown))}: prunable layers are {', '.join(available)}"
        )
    chosen = layers or available
    weights = {}
    for layer in chosen:
        for name, param in model.get_submodule(layer).named_parameters(recurse=False):
            if "weight" in name:
                weights[f"{layer}.{name}"] = param
    return weights


def threshold_masks(weights: dict[str, torch.Tensor], thresholds: dict[str, float]) -> Masks:
    """Keep |w| >= t, per layer: ``thresholds`` maps layer names (or ``"*"``, any layer) to t."""
    masks = {}
    for name, weight in weights.items():
        layer = name.rsplit(".", 1)[0]
        threshold = thresholds.get(layer, thresholds.get("*"))
        if threshold is not None:
            masks[name] = weight.detach().abs() >= threshold
    return masks


def _keep_largest(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping the largest ``(1 - sparsity)`` share of ``magnitudes`` (ties broken by order)."""
    flat = magnitudes.flatten()
    prune_count = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if prune_count:
        keep[torch.argsort(flat, stable=True)[:prune_count]] = False
    return keep.reshape(magnitudes.shape)


def global_masks(weights: dict[str, torch.Tensor], sparsity: float, min_density: float = 0.0) -> Masks:
    """One magnitude ranking across all layers: ``sparsity`` of all their weights become zero,
    but every layer keeps at least ``min_density`` of its weights (Han et al. keep a small
    output layer far denser than the rest: ranked globally, a 100→10 layer's weights are small
    and nearly all go). Where the floor stops a layer, the others give up more instead."""
    counts = {name: w.numel() for name, w in weights.items()}
    floors = {name: min(n, math.ceil(min_density * n)) for name, n in counts.items()}
    target = min(int(round(sparsity * sum(counts.values()))), sum(counts[n] - floors[n] for n in counts))
    at_floor: set[str] = set()
    while True:  # each pass fixes at least one more layer at its floor, so this ends
        free = [name for name in weights if name not in at_floor]
        left = target - sum(counts[n] - floors[n] for n in at_floor)
        pruned = _pruned_counts({n: weights[n] for n in free}, left)
        over = {n for n in free if counts[n] - pruned[n] < floors[n]}
        if not over:
            break
        at_floor |= over
    masks = {name: _keep_largest(weights[name].detach().abs(), (counts[name] - floors[name]) / counts[name])
             for name in at_floor}  # fmt: skip
    if free:
        masks.update(_ranked_together({n: weights[n] for n in free}, left))
    return {name: masks[name] for name in weights}


def _pruned_counts(weights: dict[str, torch.Tensor], prune_count: int) -> dict[str, int]:
    return {name: int((~mask).sum()) for name, mask in _ranked_together(weights, prune_count).items()}


def _ranked_together(weights: dict[str, torch.Tensor], prune_count: int) -> Masks:
    """Masks zeroing the ``prune_count`` smallest magnitudes of ``weights`` ranked together."""
    names = list(weights)
    if not names:
        return {}
    magnitudes = torch.cat([weights[n].detach().abs().flatten() for n in names])
    keep = _keep_largest(magnitudes, prune_count / magnitudes.numel())
    masks, start = {}, 0
    for name in names:
        count = weights[name].numel()
        masks[name] = keep[start : start + count].reshape(weights[name].shape)
        start += count
    return masks


def layerwise_masks(weights: dict[str, torch.Tensor], sparsity: float | dict[str, float]) -> Masks:
    """The same ``sparsity`` in every layer (or each layer's own, from a mapping of layer names,
    ``*`` for the rest), by magnitude within the layer."""
    share = sparsity if isinstance(sparsity, dict) else {"*": sparsity}
    return {
        name: _keep_largest(weight.detach().abs(), share.get(name.removesuffix(".weight"), share.get("*", 0.0)))
        for name, weight in weights.items()
    }


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    for name, mask in masks.items():
        model.get_parameter(name).mul_(mask.to(model.get_parameter(name).device))


def cubic_sparsity(step: int, final: float, initial: float, ramp_steps: int) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − t / (nΔt))³ for 0 <= t <= nΔt, from t0 = 0."""
    progress = min(max(step / ramp_steps, 0.0), 1.0) if ramp_steps > 0 else 1.0
    return final + (initial - final) * (1.0 - progress) ** 3


# --- structured pruning -------------------------------------------------------------------


def _output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Linear/Conv called in a forward pass: its outputs are the classes, never cut."""
    called: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda module, *_: called.append(module))
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return called[-1]


# Leaf modules a unit's output may pass through on its way to the layers that read it: elementwise
# activations, pooling, dropout, per-channel BatchNorm, flattening. A model with any other kind
# (LayerNorm mixes channels; an RNN, attention or embedding has its own wiring) is left alone.
_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Dropout, nn.Flatten, nn.Identity,
                 nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d)  # fmt: skip
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Torch-Pruning's nodes for functional steps that move channels without reading them
_MOVING_OPS = ("_ElementWiseOp", "_ReshapeOp", "_ConcatOp", "_SplitOp", "_UnbindOp")


def unread_units(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """{layer name: True for each output unit no later layer reads} for the Linear/Conv layers of
    ``model`` but the output one: every Linear or Conv that takes the unit as input has all its
    weights on it zero, and only elementwise, pooling, per-channel or reshaping steps lie between
    (Torch-Pruning's dependency graph follows them, a flatten into a Linear included). Pruning
    leaves many such units, hidden units whose outgoing weights were all removed: their biases
    change nothing. A model with other kinds of layers, or grouped convolutions, gets {}."""
    import torch_pruning as tp

    leaves = [m for m in model.modules() if not list(m.children())]
    if any(not isinstance(m, _WEIGHTED + _PASS_THROUGH) or getattr(m, "groups", 1) != 1 for m in leaves):
        return {}
    training = model.training
    model.eval()  # both look-ups run the model: BatchNorm must not update its statistics
    try:
        output = _output_layer(model, example)
        with torch.enable_grad():  # the graph is traced through autograd
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        model.train(training)
    unread = {}
    for name, layer in model.named_modules():
        if isinstance(layer, _WEIGHTED) and layer is not output:
            prune = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
            groups = [graph.get_pruning_group(layer, prune, idxs=[unit]) for unit in range(_width(layer))]
            unread[name] = torch.tensor([_unread(group, layer) for group in groups], dtype=torch.bool)
    return unread


def _unread(group, layer: nn.Module) -> bool:
    """Whether nothing in the dependency ``group`` of one output unit of ``layer`` reads it: the
    layers taking it as input (there is one at least) have zero weights there."""
    readers = 0
    for item in group.items:
        module, handler = item.dep.target.module, item.dep.handler.__name__
        if module is layer or type(module).__name__ in _MOVING_OPS or isinstance(module, _PASS_THROUGH):
            continue
        if isinstance(module, _WEIGHTED) and handler == "prune_out_channels":
            continue  # another layer's unit added to this one: read, if at all, further on
        if not isinstance(module, _WEIGHTED) or handler != "prune_in_channels":
            return False
        if module.weight.detach()[:, list(item.idxs)].any():
            return False
        readers += 1
    return readers > 0


def _channel_norms(weight: torch.Tensor, p: int, units: int) -> torch.Tensor:
    return weight.detach().reshape(units, -1).norm(p=p, dim=1)


@torch.no_grad()
def _prune_lstm_units(model: nn.Module, ratio: float, p: int) -> None:
    """Remove the same number of hidden units from every layer of ``model.lstm`` (one
    ``hidden_size`` for all layers is an nn.LSTM constraint), by the p-norm of each unit's gate
    rows, and the matching inputs of the next layer and of ``model.fc``."""
    lstm, fc = model.lstm, model.fc
    hidden = lstm.hidden_size
    keep_count = _keep_count(hidden, ratio)
    new = nn.LSTM(lstm.input_size, keep_count, lstm.num_layers, bias=lstm.bias, batch_first=lstm.batch_first)
    previous_keep = torch.arange(lstm.input_size)
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        score = sum(_channel_norms(w.reshape(4, hidden, -1).transpose(0, 1), p, hidden) for w in (w_ih, w_hh))
        keep = _kept(score, ratio)
        rows = torch.cat([keep + gate * hidden for gate in range(4)])  # gates i, f, g, o
        getattr(new, f"weight_ih_l{layer}").copy_(w_ih[rows][:, previous_keep])
        getattr(new, f"weight_hh_l{layer}").copy_(w_hh[rows][:, keep])
        if lstm.bias:
            getattr(new, f"bias_ih_l{layer}").copy_(getattr(lstm, f"bias_ih_l{layer}")[rows])
            getattr(new, f"bias_hh_l{layer}").copy_(getattr(lstm, f"bias_hh_l{layer}")[rows])
        previous_keep = keep
    model.lstm, model.fc = new, _narrowed(fc, columns=previous_keep)


def _narrowed(linear: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    """A copy of ``linear`` keeping only the output ``rows`` and input ``columns`` given."""
    weight = linear.weight if rows is None else linear.weight[rows]
    weight = weight if columns is None else weight[:, columns]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    new.weight.copy_(weight)
    if linear.bias is not None:
        new.bias.copy_(linear.bias if rows is None else linear.bias[rows])
    return new


def _keep_count(units: int, ratio: float) -> int:
    """How many of ``units`` are left when ``ratio`` of them is removed: one at least."""
    return max(1, units - int(round(ratio * units)))


def _kept(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (in order) of the highest-scoring ``_keep_count`` units."""
    return torch.sort(torch.argsort(score, descending=True)[: _keep_count(len(score), ratio)]).values


@torch.no_grad()
def _prune_transformer(model: nn.Module, ratio: float, p: int) -> None:
    """Remove ``ratio`` of the heads of every block's attention (by the p-norm of each head's
    query, key and value rows and output columns: a head goes whole, so the head size stays) and
    of its feed-forward units (by their input row and output column). The residual width, the
    embedding and the classifier stay: every block adds into them."""
    for block in model.blocks:
        attention, ffn = block.attention, block.ffn
        heads = attention.query.out_features // attention.head_size
        score = sum(_channel_norms(linear.weight, p, heads) for linear in attention.projections())
        score = score + _channel_norms(attention.out.weight.t(), p, heads)
        rows = (_kept(score, ratio)[:, None] * attention.head_size + torch.arange(attention.head_size)).flatten()
        attention.query, attention.key, attention.value = (
            _narrowed(linear, rows=rows) for linear in attention.projections()
        )
        attention.out = _narrowed(attention.out, columns=rows)
        units = ffn[0].out_features
        score = _channel_norms(ffn[0].weight, p, units) + _channel_norms(ffn[2].weight.t(), p, units)
        keep = _kept(score, ratio)
        ffn[0], ffn[2] = _narrowed(ffn[0], rows=keep), _narrowed(ffn[2], columns=keep)


def structured_prune(model: nn.Module, ratio: float, p: int, example: torch.Tensor) -> nn.Module:
    """Physically remove ``ratio`` of the channels/neurons of every prunable group, ranked by the
    p-norm of their weights; the output layer keeps its classes. Torch-Pruning's dependency graph
    keeps coupled layers consistent (residual adds, BatchNorm, flatten into Linear).
    """
    import torch_pruning as tp

    from shrinkflow.zoo import LSTMClassifier, Transformer

    model.eval()
    if isinstance(model, Transformer):  # whole heads and feed-forward units, by hand
        _prune_transformer(model, ratio, p)
        return model
    if any(isinstance(m, nn.LSTM) for m in model.modules()):
        if not isinstance(model, LSTMClassifier):
            raise ShrinkflowError("structured pruning of LSTM layers is supported for the zoo 'lstm' model only")
        _prune_lstm_units(model, ratio, p)
        return model
    output = _output_layer(model, example)
    # Torch-Pruning skips a layer whose share would remove every channel (0.999 of 32 rounds to
    # 32), so a ratio near 1 removed nothing; each layer keeps one channel at least instead.
    ratios = {
        m: min(ratio, 1 - (1 + 1e-6) / _width(m))  # the margin: Torch-Pruning rounds n·(1 - ratio) down
        for m in model.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m is not output and _width(m) > 0
    }
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=p),
        pruning_ratio=ratio,
        pruning_ratio_dict=ratios,
        ignored_layers=[output],
        root_module_types=[nn.Conv1d, nn.Conv2d, nn.Linear],
    )
    pruner.step()
    return model


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, (nn.Conv1d, nn.Conv2d)) else module.out_features


def masks_sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def sparsity_error(value: float, name: str = "sparsity") -> str | None:
    if not (0.0 <= value < 1.0) or math.isnan(value):
        return f"{name} must be in [0, 1), got {value}"
    return None
