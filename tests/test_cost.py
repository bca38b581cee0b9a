"""Exact costs of the zoo models against hand-computed values."""

import pytest
import torch
from torch import nn

from shrinkflow.checkpoint import save_checkpoint
from shrinkflow.cost import cost_summary, layer_costs, layer_table, storage_table
from shrinkflow.zoo import build_model, describe

# Hand-computed MACs per sample (matrix products only):
MLP_DIGITS = 64 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100 on 8x8 inputs
CNN_DIGITS = (
    (32 * 8 * 8) * (1 * 9)  # conv1: 32 channels of 8x8, each 1x3x3
    + (64 * 4 * 4) * (32 * 9)  # conv2 after a 2x2 pool: 64 channels of 4x4, each 32x3x3
    + 256 * 128  # fc after the second pool: 64 * 2 * 2 -> 128
    + 128 * 10
)
CNN1D_MNIST1D = (25 * 19) * 5 + (25 * 10) * (25 * 3) + (25 * 5) * (25 * 3) + 125 * 10  # lengths 40->19->10->5
LSTM_MNIST1D = 40 * (4 * 128 * (1 + 128) + 4 * 128 * (128 + 128)) + 128 * 10  # 40 steps, 2 layers, head

CASES = {
    "mlp": ((1, 8, 8), MLP_DIGITS),
    "cnn": ((1, 8, 8), CNN_DIGITS),
    "cnn1d": ((1, 40), CNN1D_MNIST1D),
    "lstm": ((1, 40), LSTM_MNIST1D),
}


def _model(name):
    shape, _ = CASES[name]
    description = {"architecture": describe(name, shape, 10), "storage": "dense-fp32"}
    return build_model(description["architecture"]), description


@pytest.mark.parametrize("name", CASES)
def test_macs_equal_hand_computed(name):
    model, description = _model(name)
    summary = cost_summary(model, description)
    assert summary["cost_macs"] == CASES[name][1]
    assert summary["cost_bops"] == CASES[name][1] * 32 * 32


def test_hand_computed_values():
    # the constants above, spelled out once
    assert (MLP_DIGITS, CNN_DIGITS, CNN1D_MNIST1D, LSTM_MNIST1D) == (50_200, 347_392, 31_750, 7_886_080)


def test_effective_macs_skip_zero_weights():
    model, description = _model("mlp")
    with torch.no_grad():
        model.layers[1].weight[:, :32] = 0  # half the inputs of the first layer: 32 * 300 weights
    summary = cost_summary(model, description)
    assert summary["cost_macs"] == MLP_DIGITS
    assert summary["cost_macs_effective"] == MLP_DIGITS - 32 * 300
    assert summary["cost_nonzero_params"] == summary["cost_params"] - 32 * 300


def test_effective_conv_macs_count_each_weight_per_output_position():
    model, description = _model("cnn1d")
    with torch.no_grad():
        model.features[0].weight[:5] = 0  # 5 of 25 output channels of conv1, 5 weights each
    assert cost_summary(model, description)["cost_macs_effective"] == CNN1D_MNIST1D - 5 * 5 * 19


def test_layer_table_reports_sparsity_per_layer():
    model, description = _model("mlp")
    with torch.no_grad():
        model.layers[3].weight.zero_()
    table = layer_table(layer_costs(model, (1, 8, 8))).set_index("layer")
    assert list(table.index) == ["layers.1", "layers.3", "layers.5"]
    assert table.loc["layers.3", "sparsity"] == pytest.approx(30_000 / 30_100)
    assert table.loc["layers.1", "sparsity"] == 0.0
    assert table.loc["layers.5", "macs"] == 1_000


def test_bits_per_layer_scale_bops():
    model, _ = _model("mlp")
    costs = {c.layer: c for c in layer_costs(model, (1, 8, 8), bits={"layers.1": (4, 8)})}
    assert costs["layers.1"].bops == 64 * 300 * 4 * 8
    assert costs["layers.3"].bops == 300 * 100 * 32 * 32


def test_shared_layer_called_twice_costs_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(self.fc(x))

    (cost,) = layer_costs(Twice(), (6,))
    assert cost.macs == 2 * 36


@pytest.mark.parametrize("name", CASES)
def test_artifact_bytes_within_five_percent_of_the_entropy_bound(name, tmp_path):
    model, description = _model(name)
    folder = save_checkpoint(model, {**description, "class_names": [str(i) for i in range(10)]}, tmp_path / name)
    summary = cost_summary(model, description, folder)
    params = sum(p.numel() for p in model.parameters())
    table = storage_table(model, description)
    assert (
        summary["cost_size_entropy_bytes"] == table["entropy_bytes"].sum() == table["stored_bytes"].sum() == 4 * params
    )
    assert 0 < summary["cost_size_bytes"] / summary["cost_size_entropy_bytes"] - 1 < 0.05
