"""Sparse variational dropout: the prior's KL term, the dropped weights, the learned sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkflow import PruneSettings, ShrinkflowError, prune
from shrinkflow._variational import LOG_ALPHA_THRESHOLD, VariationalWeights

CPU = torch.device("cpu")


def _with_log_alpha(log_alpha: float) -> VariationalWeights:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    variational = VariationalWeights(layer, {"weight": layer.weight})
    noisy = layer.parametrizations["weight"][0]
    with torch.no_grad():  # log α = log σ² − log θ²
        noisy.log_sigma2.fill_(log_alpha + float(torch.log(torch.tensor(0.25))))
    return variational


def test_the_kl_term_is_positive_and_falls_as_the_dropout_rate_grows():
    kls = [float(_with_log_alpha(a).kl().detach()) / 12 for a in (-8.0, -2.0, 0.0, 2.0, 8.0)]
    assert all(kl > -1e-4 for kl in kls) and kls == sorted(kls, reverse=True)
    assert kls[0] == pytest.approx(4.636, abs=0.01)  # 0.5 log(1 + 1/α) + k1 (1 - σ(k2 + k3 log α)) at log α = -8
    assert kls[-1] == pytest.approx(0.0, abs=1e-3)  # a weight that is all noise costs nothing


def test_weights_above_the_threshold_are_zero_in_eval_and_removed():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1e-4, -0.5, 2.0], [-1e-4, 0.3, 1.0, -3.0]]))
    variational = VariationalWeights(layer, {"weight": layer.weight})
    layer.eval()
    expected = torch.tensor([[True, False, True, True], [False, True, True, True]])  # log α = -10 - log θ²
    assert torch.equal(layer.weight != 0, expected)
    assert -10 - 2 * torch.log(torch.tensor(1e-4)) > LOG_ALPHA_THRESHOLD
    masks = variational.remove()
    assert torch.equal(masks["weight"], expected) and [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert torch.equal(layer.weight != 0, expected) and not hasattr(layer, "parametrizations")


def test_a_heavier_prior_learns_more_sparsity(digits_mlp):
    trained, data = digits_mlp
    light = prune(trained, data, PruneSettings(method="variational", kl_weight=0.01, epochs=8), CPU)
    heavy = prune(trained, data, PruneSettings(method="variational", kl_weight=3.0, epochs=8), CPU)
    assert 0 < light.sparsity < heavy.sparsity < 1
    for result in (light, heavy):  # the masks are what the model holds
        kept = sum(int(mask.sum()) for mask in result.masks.values())
        assert kept == sum(int((result.artifact.model.get_parameter(n) != 0).sum()) for n in result.masks)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"method": "variational", "kl_weight": -1.0, "epochs": 2}, "kl_weight must be >= 0"),
        ({"method": "variational", "epochs": 0}, "variational pruning happens during fine-tuning: set epochs >= 1"),
        ({"method": "variational", "sparsity": 0.5, "epochs": 2}, "sparsity applies to method"),
        ({"method": "global", "kl_weight": 0.5}, "kl_weight applies to method variational only"),
    ],
)
def test_bad_variational_settings_are_refused(settings, message):
    with pytest.raises(ShrinkflowError, match=message):
        PruneSettings(**settings)
