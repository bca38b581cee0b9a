"""Soft weight-sharing: the prior's term, one codebook for the model, learned pruning, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from shrinkflow import QuantizeSettings, ShrinkflowError, quantize
from shrinkflow._sws import SAMPLED_WEIGHTS, ZERO_SHARE, MixturePrior, sampled

CPU = torch.device("cpu")


def test_the_complexity_is_the_mixtures_negative_log_density_plus_the_hyperpriors():
    weights = torch.tensor([0.01, 0.1, -0.3, 0.31])
    prior = MixturePrior(weights, torch.tensor([-0.3, 0.3]))
    precisions = [(5000 - 1) / 2, (250 - 1) / 0.1, (250 - 1) / 0.1]  # each Gamma hyperprior's mode, to start
    shares = [ZERO_SHARE, (1 - ZERO_SHARE) / 2, (1 - ZERO_SHARE) / 2]

    def density(w: float) -> float:
        return sum(
            share * math.sqrt(lam / (2 * math.pi)) * math.exp(-lam * (w - mean) ** 2 / 2)
            for share, lam, mean in zip(shares, precisions, (0, -0.3, 0.3), strict=True)
        )

    hyper = sum(
        (a - 1) * math.log(lam) - b * lam
        for (a, b), lam in zip([(5000, 2), (250, 0.1), (250, 0.1)], precisions, strict=True)
    )
    expected = -sum(math.log(density(float(w))) for w in weights) - hyper
    assert float(prior.complexity(weights).detach()) == pytest.approx(expected, rel=1e-4)
    assert prior.components_of(weights).tolist() == [0, 0, 1, 2]  # 0.1 is within the zero component's reach
    pruned = MixturePrior(torch.tensor([0.0, 0.0, 0.0, 0.3]), torch.tensor([-0.3, 0.3]))
    assert pruned.zero_share == 0.75  # a pruned model's zeros: the zero component's share
    apart = MixturePrior(torch.tensor([0.3]), torch.tensor([-0.3, 0.3]), zeros=3)  # its zeros counted apart
    assert apart.zero_share == 0.75
    together = float(pruned.complexity(torch.tensor([0.0, 0.0, 0.0, 0.3])).detach())
    assert float(apart.complexity(torch.tensor([0.3]), zeros=3).detach()) == pytest.approx(together, rel=1e-6)
    assert MixturePrior(torch.zeros(4), torch.zeros(2)).zero_share == ZERO_SHARE  # at most


def test_sws_shares_one_codebook_across_the_model_and_prunes_as_it_shares(digits_mlp):
    trained, data = digits_mlp
    result = quantize(trained, data, QuantizeSettings(method="sws", bits="3", epochs=3), CPU)
    weights = {name: e for name, e in result.artifact.encodings.items() if name.endswith("weight")}
    assert len(weights) == 3 and all(e.scheme == "codebook" and e.bits == 3 for e in weights.values())
    codebook = next(iter(weights.values())).scales
    assert all(torch.equal(e.scales, codebook) for e in weights.values())
    model = result.artifact.model
    values = torch.cat([model.get_parameter(name).flatten() for name in weights])
    assert set(values[values != 0].unique().tolist()) <= set(codebook.tolist())  # 8 shared values and zero
    assert 0.3 < float((values == 0).float().mean()) < 1  # the zero component took weights: learned pruning


def test_a_heavier_prior_shares_and_prunes_more(digits_mlp):
    trained, data = digits_mlp
    zeros = []
    for prior_weight in (0.0, 1.0):
        settings = QuantizeSettings(method="sws", bits="4", epochs=2, prior_weight=prior_weight)
        model = quantize(trained, data, settings, CPU).artifact.model
        weights = torch.cat([p.flatten() for name, p in model.named_parameters() if name.endswith("weight")])
        zeros.append(float((weights == 0).float().mean()))
    assert zeros[0] < zeros[1]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"bits": '{"*": 4, "layers.1": 2}', "epochs": 2}, "sws shares one set of values across all layers"),
        ({"bits": "auto", "epochs": 2}, "bits must be one value"),
        ({"epochs": 0}, "sws quantizes while it fine-tunes: set epochs >= 1"),
        ({"epochs": 2, "prior_weight": -1.0}, "prior_weight must be >= 0"),
        ({"method": "kmeans", "prior_weight": 0.1}, "prior_weight applies to method sws only"),
    ],
)
def test_bad_sws_settings_are_one_line(settings, message):
    with pytest.raises(ShrinkflowError, match=message):
        QuantizeSettings(**{"method": "sws", **settings})


def test_the_prior_is_estimated_on_a_seeded_sample_of_a_large_models_weights():
    few = torch.randn(SAMPLED_WEIGHTS)
    assert sampled(few)[0] is few and sampled(few)[1] == 1.0
    many = torch.arange(4 * SAMPLED_WEIGHTS, dtype=torch.float32)
    torch.manual_seed(0)
    first, scale = sampled(many)
    torch.manual_seed(0)
    assert torch.equal(sampled(many)[0], first) and scale == 4.0 and first.numel() == SAMPLED_WEIGHTS
    assert float(first.mean()) == pytest.approx(float(many.mean()), rel=0.02)  # a fair sample


def test_the_written_out_gradients_of_the_log_density_are_autograds():
    from shrinkflow._sws import _LogDensity

    generator = torch.Generator().manual_seed(0)
    inputs = (
        0.2 * torch.randn(40, generator=generator, dtype=torch.float64),
        torch.randn(5, generator=generator, dtype=torch.float64),
        torch.randn(5, generator=generator, dtype=torch.float64),
        torch.log_softmax(torch.randn(5, generator=generator, dtype=torch.float64), 0),
    )
    assert torch.autograd.gradcheck(_LogDensity.apply, tuple(t.requires_grad_() for t in inputs))
