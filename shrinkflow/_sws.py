"""Soft weight-sharing (Ullrich, Meeds & Welling 2017): retrain under a Gaussian-mixture prior on
the weights, then snap each weight to the mean of its component.

The prior is one mixture for all the weights of the model: a component pinned at zero with a
fixed mixing proportion (``ZERO_SHARE`` for a dense model, as in the paper; a pruned model's
share of zeros for a pruned one, whose zeros are part of what the prior explains), and 2^bits
others whose means (started at the k-means centroids), precisions and mixing proportions are
learned with the weights. The complexity term, -log p(w) plus Gamma hyperpriors on the
precisions (which keep a component from collapsing onto one weight; the precisions start at
their modes), is added to the loss with weight τ per training sample: weights gather into
clusters, most of them at zero. Afterwards each weight belongs to its most responsible
component: the zero component's weights are pruned, the others take their component's mean (one
codebook shared by every layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ZERO_SHARE", "MixturePrior", "WithPrior"]

ZERO_SHARE = 0.999  # the zero component's fixed mixing proportion in a dense model (the paper's)
# Gamma(α, β) hyperpriors on the precisions, as in the paper: both modes near λ = 2,500 (σ ≈ 0.02);
# the zero component's is the sharper.
_ZERO_GAMMA = (5000.0, 2.0)
_GAMMA = (250.0, 0.1)
_FAST = 10.0


class MixturePrior(nn.Module):
    """The mixture over ``weights`` (all of them, flat; a pruned model's zeros included), its
    means starting at ``centroids`` (the k-means centroids of the non-zero weights)."""

    def __init__(self, weights: torch.Tensor, centroids: torch.Tensor):
        super().__init__()
        zeros = float((weights.detach() == 0).float().mean()) if weights.numel() else 0.0
        # a pruned model's share of zeros is what the zero component explains already (at most
        # ZERO_SHARE: the other components keep a share to learn)
        self.zero_share = min(zeros, ZERO_SHARE) if zeros > 0 else ZERO_SHARE
        self.means = nn.Parameter(centroids.detach().float().clone())
        # every component starts at its hyperprior's mode; the widths and shares move _FAST times
        # the learning rate (a fine-tuning of a few hundred steps must be able to narrow them)
        modes = [(a - 1) / b for a, b in [_ZERO_GAMMA] + [_GAMMA] * centroids.numel()]
        self._log_precision = nn.Parameter(torch.tensor(modes).log() / _FAST)
        self._logits = nn.Parameter(torch.zeros(centroids.numel()))

    @property
    def log_precision(self) -> torch.Tensor:
        return self._log_precision * _FAST

    @property
    def logits(self) -> torch.Tensor:
        return self._logits * _FAST

    def _joint(self, weights: torch.Tensor) -> torch.Tensor:
        """log π_j + log N(w | μ_j, 1/λ_j) for every weight (rows) and component (columns)."""
        means = torch.cat([self.means.new_zeros(1), self.means])
        precision = self.log_precision.exp()
        mixing = torch.cat([
            self.logits.new_full((1,), math.log(self.zero_share)),
            math.log(1 - self.zero_share) + torch.log_softmax(self.logits, 0),
        ])  # fmt: skip
        squared = (weights.reshape(-1, 1) - means) ** 2
        return mixing + 0.5 * (self.log_precision - math.log(2 * math.pi)) - 0.5 * precision * squared

    def complexity(self, weights: torch.Tensor) -> torch.Tensor:
        """-log p(weights) - log p(precisions): the term the prior adds to the loss."""
        alpha = torch.tensor([_ZERO_GAMMA[0]] + [_GAMMA[0]] * self.means.numel(), device=weights.device)
        beta = torch.tensor([_ZERO_GAMMA[1]] + [_GAMMA[1]] * self.means.numel(), device=weights.device)
        hyper = ((alpha - 1) * self.log_precision - beta * self.log_precision.exp()).sum()
        return -torch.logsumexp(self._joint(weights), 1).sum() - hyper

    @torch.no_grad()
    def components_of(self, weights: torch.Tensor) -> torch.Tensor:
        """Each weight's most responsible component: 0 the zero component, j >= 1 the mean j - 1."""
        return self._joint(weights.float()).argmax(1)


class WithPrior(nn.Module):
    """The model and the prior as one module, so that training updates both; it predicts as the
    model does."""

    def __init__(self, model: nn.Module, prior: MixturePrior):
        super().__init__()
        self.model, self.prior = model, prior

    def forward(self, inputs):
        return self.model(inputs)
