"""Bits per layer by measured sensitivity (``bits=auto`` of the k-bit and k-means methods).

Every layer starts at 8 bits. Step by step, the layer given one bit fewer is the one that saves
the most weight bits for the rise of validation loss it causes, measured with every layer
quantized at once, as long as that loss stays within the budget: ``(1 + budget)`` times the
float model's. It stops when no layer can lose a bit within the budget, so each layer ends with
the fewest bits the others leave room for. Measured, not estimated: a few hundred forward passes
over the validation split, each quantized weight computed once per bit-width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from shrinkflow.config import ShrinkflowError
from shrinkflow.training import score

__all__ = ["AUTO_BITS", "allocate_bits"]

AUTO_BITS = range(8, 1, -1)  # the bit-widths tried, from the most: 2 is the fewest k-bit codes can hold
CPU = torch.device("cpu")


@torch.no_grad()
def allocate_bits(
    model: nn.Module,
    tensors: dict[str, tuple[str, torch.Tensor]],
    quantized: Callable[[str, torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    budget: float,
) -> dict[str, int]:
    """Bits of each layer. ``tensors``: weight name → (its layer, the weight, changed in place and
    restored); ``quantized(name, weight, bits)``: that float weight decoded from ``bits``-bit codes; ``x, y``:
    the validation split; ``budget``: the share by which its loss may exceed the float model's."""
    if not len(x):
        raise ShrinkflowError("bits auto measures the validation loss, and the validation split is empty")
    floats = {name: weight.detach().clone() for name, (_, weight) in tensors.items()}
    cache: dict[tuple[str, int], torch.Tensor] = {}

    def loss(bits: dict[str, int]) -> float:
        for name, (layer, weight) in tensors.items():
            if (name, bits[layer]) not in cache:
                cache[name, bits[layer]] = quantized(name, floats[name], bits[layer]).reshape(weight.shape)
            weight.copy_(cache[name, bits[layer]])
        return score(model, x, y, CPU)["loss"]

    try:
        limit = score(model, x, y, CPU)["loss"] * (1 + budget)
        return _descend(_weights_per_layer(tensors), loss, limit)
    finally:
        for name, (_, weight) in tensors.items():
            weight.copy_(floats[name])


def _weights_per_layer(tensors: dict[str, tuple[str, torch.Tensor]]) -> dict[str, int]:
    """Layer → its weights that are not pruned: the bits one bit fewer saves."""
    counts: dict[str, int] = {}
    for layer, weight in tensors.values():
        counts[layer] = counts.get(layer, 0) + int(weight.count_nonzero())
    return counts


def _descend(weights: dict[str, int], loss: Callable[[dict[str, int]], float], limit: float) -> dict[str, int]:
    bits = dict.fromkeys(weights, AUTO_BITS[0])
    current = loss(bits)
    while True:
        moves = []
        for layer in weights:
            if bits[layer] == AUTO_BITS[-1]:
                continue
            trial = loss({**bits, layer: bits[layer] - 1})
            if trial <= limit:  # bits saved per unit of loss; a step that lowers the loss comes first
                moves.append((weights[layer] / max(trial - current, 1e-12), layer, trial))
        if not moves:
            return bits
        _, layer, current = max(moves)
        bits[layer] -= 1
