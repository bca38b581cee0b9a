"""bits auto: each layer the fewest bits that keep validation loss within the budget, measured."""

from __future__ import annotations

import json

import pytest
import torch

from search.space import load_space
from shrinkflow import QuantizeSettings, ShrinkflowError, quantize
from shrinkflow.checkpoint import load_checkpoint
from shrinkflow.quantization import quantization_table
from shrinkflow.training import score

CPU = torch.device("cpu")


@pytest.fixture
def digits(digits_mlp):
    return digits_mlp[1]


@pytest.fixture
def trained(digits_mlp):
    return digits_mlp[0]


def _val_loss(artifact, digits, method: str, bits: dict[str, int]) -> float:
    settings = QuantizeSettings(method=method, bits=json.dumps(bits), bias_bits=32)
    return score(quantize(artifact, digits, settings, CPU).artifact.model, *digits.val, CPU)["loss"]


@pytest.mark.parametrize("method", ["kbit", "kmeans"])
def test_each_layer_gets_the_fewest_bits_the_budget_allows(trained, digits, method):
    budget = 0.1
    chosen = quantize(trained, digits, QuantizeSettings(method=method, bits="auto", bias_bits=32), CPU).layers
    limit = score(trained.model, *digits.val, CPU)["loss"] * (1 + budget)
    assert set(chosen) == {"layers.1", "layers.3", "layers.5"} and all(2 <= b <= 8 for b in chosen.values())
    assert _val_loss(trained, digits, method, chosen) <= limit + 1e-6  # within the budget
    for layer, bits in chosen.items():  # and no layer can give up one more bit
        if bits > 2:
            assert _val_loss(trained, digits, method, {**chosen, layer: bits - 1}) > limit - 1e-6, layer
    assert min(chosen.values()) < 8  # a trained mlp has room: 10% is far from nothing


def test_the_chosen_bits_are_recorded_and_the_model_round_trips(trained, digits, tmp_path):
    artifact = quantize(trained, digits, QuantizeSettings(method="kbit", bits="auto"), CPU).artifact
    table = quantization_table(artifact)
    weights = table[table["tensor"].str.endswith(".weight")].set_index("tensor")["bits"].to_dict()
    assert weights == {f"{layer}.weight": bits for layer, (bits, _) in artifact.description["bits"].items()}
    assert artifact.description["quantize"]["bits_budget"] == 0.1
    artifact.save(tmp_path / "auto")
    reloaded, _ = load_checkpoint(tmp_path / "auto")
    assert torch.equal(reloaded(digits.x_test).argmax(1), artifact.model(digits.x_test).argmax(1))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"method": "kbit", "bits": "auto:-0.1"}, "bits auto:<share> takes a share >= 0"),
        ({"method": "kbit", "bits": "auto:much"}, "bits auto:<share> takes a share >= 0"),
        ({"method": "binary", "bits": "auto"}, "bits applies to method kbit, kmeans, sws only"),
        ({"method": "kbit", "bits": "atuo"}, "bits must be an integer 1-8, a JSON object or auto"),
    ],
)
def test_bad_auto_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ShrinkflowError, match=message):
        QuantizeSettings(**settings)


def test_auto_is_a_choice_of_the_search_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("quantize: {method: kbit, bits: {choices: [3, auto, 'auto:0.3']}}\n")
    assert load_space(path).stages["quantize"]["bits"].choices == (3, "auto", "auto:0.3")
    path.write_text("quantize: {method: kbit, bits: {choices: [3, 'auto:x']}}\n")
    with pytest.raises(ShrinkflowError, match="quantize.bits='auto:x' is invalid: bits auto:<share> takes a share"):
        load_space(path)
