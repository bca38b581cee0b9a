"""Soft weight-sharing (Ullrich, Meeds & Welling 2017): retrain under a Gaussian-mixture prior on
the weights, then snap each weight to the mean of its component.

The prior is one mixture for all the weights of the model: a component pinned at zero with a
fixed mixing proportion (``ZERO_SHARE`` for a dense model, as in the paper; a pruned model's
share of zeros for a pruned one, whose zeros are part of what the prior explains), and 2^bits
others whose means (started at the k-means centroids), precisions and mixing proportions are
learned with the weights. The complexity term, -log p(w) plus Gamma hyperpriors on the
precisions (which keep a component from collapsing onto one weight; the precisions start at
their modes), is added to the loss with weight τ per training sample: weights gather into
clusters, most of them at zero (each step on a sample of at most ``SAMPLED_WEIGHTS`` kept weights,
scaled up; a pruned model's zeros counted exactly). Afterwards each weight belongs to its most responsible
component: the zero component's weights are pruned, the others take their component's mean (one
codebook shared by every layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SAMPLED_WEIGHTS", "ZERO_SHARE", "MixturePrior", "WithPrior", "sampled"]

ZERO_SHARE = 0.999  # the zero component's fixed mixing proportion in a dense model (the paper's)
# Gamma(α, β) hyperpriors on the precisions, as in the paper: both modes near λ = 2,500 (σ ≈ 0.02);
# the zero component's is the sharper.
_ZERO_GAMMA = (5000.0, 2.0)
_GAMMA = (250.0, 0.1)
_FAST = 10.0
_LOG_2PI = math.log(2 * math.pi)
# Weights the prior's term is computed on in one training step: more are a random sample, the term
# scaled up (an unbiased estimate, as the minibatch's loss is of the data term). Its cost grows
# with weights x components; at 16,384 an epoch of the dense digits mlp (266,000 weights) costs
# ~2.5x a plain fine-tuning epoch instead of ~6x. A pruned model's kept weights are usually fewer.
SAMPLED_WEIGHTS = 16_384


class MixturePrior(nn.Module):
    """The mixture over ``weights`` (flat) and ``zeros`` more weights that are exactly zero (a
    pruned model's), its means starting at ``centroids`` (the k-means centroids of the kept
    weights)."""

    def __init__(self, weights: torch.Tensor, centroids: torch.Tensor, zeros: int = 0):
        super().__init__()
        total = weights.numel() + zeros
        zero_fraction = (int((weights.detach() == 0).sum()) + zeros) / total if total else 0.0
        # a pruned model's share of zeros is what the zero component explains already (at most
        # ZERO_SHARE: the other components keep a share to learn)
        self.zero_share = min(zero_fraction, ZERO_SHARE) if zero_fraction > 0 else ZERO_SHARE
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

    def _components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means, log precisions, log mixing proportions), the zero component first."""
        means = torch.cat([self.means.new_zeros(1), self.means])
        log_mixing = torch.cat([
            self.logits.new_full((1,), math.log(self.zero_share)),
            math.log(1 - self.zero_share) + torch.log_softmax(self.logits, 0),
        ])  # fmt: skip
        return means, self.log_precision, log_mixing

    def _joint(self, weights: torch.Tensor) -> torch.Tensor:
        """log π_j + log N(w | μ_j, 1/λ_j) for every weight (rows) and component (columns)."""
        means, log_precision, log_mixing = self._components()
        return _log_joint(weights.reshape(-1, 1) - means, log_precision, log_mixing)

    def complexity(self, weights: torch.Tensor, zeros: int = 0, scale: float = 1.0) -> torch.Tensor:
        """-log p(weights) - log p(precisions): the term the prior adds to the loss. ``zeros``
        more weights that are exactly zero (a pruned model's) count as one term times their
        number: a pruned model pays for the weights it kept only. ``scale``: how many weights
        each of ``weights`` stands for (a random sample of them)."""
        alpha = torch.tensor([_ZERO_GAMMA[0]] + [_GAMMA[0]] * self.means.numel(), device=weights.device)
        beta = torch.tensor([_ZERO_GAMMA[1]] + [_GAMMA[1]] * self.means.numel(), device=weights.device)
        hyper = ((alpha - 1) * self.log_precision - beta * self.log_precision.exp()).sum()
        at_zero = torch.logsumexp(self._joint(weights.new_zeros(1)), 1).sum() * zeros if zeros else 0.0
        return -scale * _LogDensity.apply(weights.reshape(-1), *self._components()) - at_zero - hyper

    @torch.no_grad()
    def components_of(self, weights: torch.Tensor) -> torch.Tensor:
        """Each weight's most responsible component: 0 the zero component, j >= 1 the mean j - 1."""
        return self._joint(weights.float()).argmax(1)


def sampled(weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(at most ``SAMPLED_WEIGHTS`` of ``weights``, drawn with the global generator: the seed
    decides them; how many weights each stands for)."""
    if weights.numel() <= SAMPLED_WEIGHTS:
        return weights, 1.0
    chosen = torch.randint(weights.numel(), (SAMPLED_WEIGHTS,), device=weights.device)
    return weights[chosen], weights.numel() / SAMPLED_WEIGHTS


def _log_joint(offset: torch.Tensor, log_precision: torch.Tensor, log_mixing: torch.Tensor) -> torch.Tensor:
    """log π_j + log N(w_i | μ_j, 1/λ_j) from the offsets w_i - μ_j (weights x components)."""
    return log_mixing + 0.5 * (log_precision - _LOG_2PI) - 0.5 * log_precision.exp() * offset.square()


class _LogDensity(torch.autograd.Function):
    """Σ_i log Σ_j π_j N(w_i | μ_j, 1/λ_j) with its gradients written out (through each weight's
    responsibilities r_ij): autograd's chain over the weights × components tensors cost ~3x."""

    @staticmethod
    def forward(ctx, weights, means, log_precision, log_mixing):
        offset = weights[:, None] - means
        joint = _log_joint(offset, log_precision, log_mixing)
        total = torch.logsumexp(joint, 1)
        responsibility = joint.sub_(total[:, None]).exp_()
        ctx.save_for_backward(offset, responsibility, log_precision)
        return total.sum()

    @staticmethod
    def backward(ctx, grad):
        offset, responsibility, log_precision = ctx.saved_tensors
        precision = log_precision.exp()
        pulled = responsibility * offset  # r_ij (w_i - μ_j)
        share = responsibility.sum(0)
        d_weights = -(pulled @ precision) * grad
        d_means = pulled.sum(0) * precision * grad
        d_log_precision = 0.5 * (share - precision * (pulled * offset).sum(0)) * grad
        return d_weights, d_means, d_log_precision, share * grad


class WithPrior(nn.Module):
    """The model and the prior as one module, so that training updates both; it predicts as the
    model does."""

    def __init__(self, model: nn.Module, prior: MixturePrior):
        super().__init__()
        self.model, self.prior = model, prior

    def forward(self, inputs):
        return self.model(inputs)
