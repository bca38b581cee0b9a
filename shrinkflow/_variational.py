"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): a dropout rate learned for
every weight; weights whose rate is high carry only noise and are removed.

Each weight w gets a Gaussian posterior N(θ, σ²) with α = σ²/θ² its dropout rate. Training adds
σ·ε to the weights of each forward pass (the additive reparameterization: θ and log σ² are the
parameters, so gradients for a high α stay sane) and the loss adds the KL divergence from the
log-uniform prior, in the paper's approximation, divided by the number of training samples: the
prior pulls α up wherever the data does not need the weight. In evaluation the weights are θ,
with those whose log α exceeds ``LOG_ALPHA_THRESHOLD`` (3: α ≈ 20) set to zero. (The paper draws
one noise sample per activation, the local reparameterization trick, for lower-variance
gradients; per-weight noise keeps every layer kind working unchanged, at the price of noisier
steps.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["LOG_ALPHA_THRESHOLD", "VariationalWeights"]

LOG_ALPHA_THRESHOLD = 3.0
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695  # the paper's fit of the KL divergence
_INITIAL_LOG_SIGMA2 = -10.0  # the weights start almost noise-free: training begins from the trained model


class _Noisy(nn.Module):
    """A parametrization: θ → θ + σ·ε while training, θ with the dropped weights zeroed in eval."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.log_sigma2 = nn.Parameter(torch.full_like(weight, _INITIAL_LOG_SIGMA2))

    def log_alpha(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.log_sigma2 - torch.log(theta * theta + 1e-8)).clamp(-10.0, 10.0)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if self.training:
            return theta + torch.exp(0.5 * self.log_sigma2) * torch.randn_like(theta)
        return theta * (self.log_alpha(theta) <= LOG_ALPHA_THRESHOLD)


class VariationalWeights:
    """Variational dropout on ``weights`` (state-dict name → parameter) of ``model``, until
    ``remove`` leaves plain weights and returns which are kept."""

    def __init__(self, model: nn.Module, weights: dict[str, nn.Parameter]):
        self.model, self.names = model, list(weights)
        self._orders = {}  # module -> its parameters' names in order (a removed parametrization re-adds it last)
        for name in self.names:
            module, param = self._owner(name)
            self._orders.setdefault(module, list(module._parameters))
            parametrize.register_parametrization(module, param, _Noisy(getattr(module, param)))

    def _owner(self, name: str) -> tuple[nn.Module, str]:
        layer, _, param = name.rpartition(".")
        return self.model.get_submodule(layer), param

    def _parts(self):
        for name in self.names:
            module, param = self._owner(name)
            parametrization = module.parametrizations[param]
            yield name, parametrization.original, parametrization[0]

    def kl(self) -> torch.Tensor:
        """KL(q ‖ prior) summed over the weights (the paper's approximation, up to a constant)."""
        total = 0.0
        for _, theta, noisy in self._parts():
            log_alpha = noisy.log_alpha(theta)
            negative = _K1 * torch.sigmoid(_K2 + _K3 * log_alpha) - 0.5 * nn.functional.softplus(-log_alpha) - _K1
            total = total - negative.sum()
        return total

    @torch.no_grad()
    def kept(self) -> dict[str, torch.Tensor]:
        """Name → the weights whose log α is within the threshold (True: kept)."""
        return {name: noisy.log_alpha(theta) <= LOG_ALPHA_THRESHOLD for name, theta, noisy in self._parts()}

    @torch.no_grad()
    def remove(self) -> dict[str, torch.Tensor]:
        """Drop the noise: every weight becomes θ, zero where it was dropped; return the masks."""
        masks = self.kept()
        for name in self.names:
            module, param = self._owner(name)
            parametrize.remove_parametrizations(module, param, leave_parametrized=False)
            weight = getattr(module, param)
            weight.copy_(torch.where(masks[name].to(weight.device), weight, 0.0))  # +0.0: θ·0 is -0.0 for θ < 0
        for module, order in self._orders.items():  # the state dict's order, hence the same checkpoint bytes
            module._parameters = {key: module._parameters[key] for key in order}
        return masks
