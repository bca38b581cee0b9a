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
# transformer on 8x8: 16 patches of 2x2 as tokens of 64 (4 heads of 16), 2 blocks, feed-forward 128
TRANSFORMER_DIGITS = (
    16 * 64 * 4  # the patch embedding: 64 features of each 2x2 patch at 16 positions
    + 2
    * (
        4 * 16 * 64 * 64  # query, key, value and output projections at 16 positions
        + 2 * 16 * 16 * 64  # Q·Kᵀ and A·V: 16 x 16 scores, 64 dims summed over the 4 heads
        + 16 * 64 * 128
        + 16 * 128 * 64  # the feed-forward layers
    )
    + 64 * 10  # the head, on the tokens' mean
)

CASES = {
    "mlp": ((1, 8, 8), MLP_DIGITS),
    "cnn": ((1, 8, 8), CNN_DIGITS),
    "cnn1d": ((1, 40), CNN1D_MNIST1D),
    "lstm": ((1, 40), LSTM_MNIST1D),
    "transformer": ((1, 8, 8), TRANSFORMER_DIGITS),
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
    assert TRANSFORMER_DIGITS == 1_118_848


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
    with torch.no_grad():  # as after training: LayerNorm's biases start all zero, stored as pruned
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_()
    folder = save_checkpoint(model, {**description, "class_names": [str(i) for i in range(10)]}, tmp_path / name)
    summary = cost_summary(model, description, folder)
    params = sum(p.numel() for p in model.parameters())
    table = storage_table(model, description)
    assert (
        summary["cost_size_entropy_bytes"] == table["entropy_bytes"].sum() == table["stored_bytes"].sum() == 4 * params
    )
    assert 0 < summary["cost_size_bytes"] / summary["cost_size_entropy_bytes"] - 1 < 0.05


class _Recurrent(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(16, 10)

    def forward(self, x):  # (B, 1, 40) -> a sequence of 40 steps of 1 feature
        return self.head(self.rnn(x.transpose(1, 2))[0][:, -1])


def _macs(model, shape):
    return sum(c.macs for c in layer_costs(model, shape))


def test_gru_macs_are_three_gates_per_step():
    model = _Recurrent(nn.GRU(1, 16, num_layers=2, batch_first=True))
    per_step = 3 * 16 * (1 + 16) + 3 * 16 * (16 + 16)  # layer 1: 3 gates × H × (input + H); layer 2 the same on H
    assert _macs(model, (1, 40)) == 40 * per_step + 16 * 10 == 40 * 2352 + 160


def test_a_cell_called_every_step_costs_every_step():
    class Cells(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.cell, self.head = cell, nn.Linear(16, 10)

        def forward(self, x):
            state = None
            for t in range(x.shape[-1]):
                state = self.cell(x[:, :, t], state)
            return self.head(state[0] if isinstance(state, tuple) else state)

    assert _macs(Cells(nn.GRUCell(1, 16)), (1, 40)) == 40 * 3 * 16 * (1 + 16) + 160
    assert _macs(Cells(nn.LSTMCell(1, 16)), (1, 40)) == 40 * 4 * 16 * (1 + 16) + 160


class _Encoder(nn.Module):
    """Digits as a sequence of 8 rows of 8 pixels: the rows embedded to 16, two heads."""

    def __init__(self, layers: int = 1):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x[:, 0])).mean(1))


def test_attention_macs_are_the_projections_and_both_products():
    attention = nn.MultiheadAttention(16, 2, batch_first=True)
    (measured,) = layer_costs(_SelfAttention(attention), (8, 16))
    projections = 3 * 8 * 16 * 16 + 8 * 16 * 16  # Q, K, V and output: 8 positions × 16 × 16 each
    products = 2 * 8 * 8 * 16  # Q·Kᵀ and A·V: 8 × 8 scores, 16 dims summed over the 2 heads
    assert (measured.layer, measured.macs, measured.params) == ("attention", projections + products, 4 * (16 * 16 + 16))
    with torch.no_grad():
        attention.in_proj_weight[:16] = 0  # the query projection: used at 8 positions
    (zeroed,) = layer_costs(_SelfAttention(attention), (8, 16))
    assert zeroed.effective_macs == measured.macs - 8 * 16 * 16


class _SelfAttention(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def test_a_transformer_layer_counts_attention_and_feed_forward_even_on_the_fast_path():
    model = _Encoder().eval()
    attention = 4 * 8 * 16 * 16 + 2 * 8 * 8 * 16
    feed_forward = 8 * 16 * 32 + 8 * 32 * 16
    expected = 8 * 8 * 16 + attention + feed_forward + 16 * 10  # embedding of 8 rows, the layer, the head
    assert torch.backends.mha.get_fastpath_enabled()
    assert _macs(model, (1, 8, 8)) == expected == 19_616
    assert torch.backends.mha.get_fastpath_enabled()  # switched off only while counting


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.norm = nn.Embedding(10, 8), nn.LayerNorm(8)
        self.odd = nn.Bilinear(8, 8, 4)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        rows = self.norm(self.embedding(x[:, 0, 0].long()))
        return self.head(rows) + self.odd(rows, rows).sum()


UNCOUNTED = "the cost model counts no MACs for odd (Bilinear, 260 parameters): MACs and BOPs leave them out"


def test_layers_without_macs_count_their_parameters_and_unknown_ones_are_named(recwarn):
    from shrinkflow.config import ShrinkflowWarning

    summary = cost_summary(_Mixed(), {"architecture": {"input_shape": [1, 8, 8]}, "storage": "dense-fp32"})
    assert summary["cost_macs"] == 8 * 8 * 10  # the head, at each of the 8 embedded positions
    assert summary["cost_params"] == 10 * 8 + 2 * 8 + (8 * 8 * 4 + 4) + (8 * 10 + 10)
    (warned,) = [w for w in recwarn if issubclass(w.category, ShrinkflowWarning)]
    assert str(warned.message) == UNCOUNTED


def test_a_step_prints_the_cost_warning_once_as_one_line(capsys):
    from shrinkflow.cli import run_main

    def step() -> str:
        for _ in range(3):  # a step costs its model more than once
            layer_costs(_Mixed(), (1, 8, 8))
        return "run-id"

    run_main(step)
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"warning: {UNCOUNTED}"] and captured.out == "run-id\n"


def encoder_factory(input_shape, num_classes):
    """The encoder above as a user's ``module:factory`` (tests elsewhere compress it)."""
    model = _Encoder()
    model.head = nn.Linear(16, num_classes)
    return model


def test_costs_print_as_a_person_reads_them():
    from shrinkflow.cost import cost_line, format_bytes

    assert [format_bytes(n) for n in (512, 4896, 202_574, 1_234_567)] == ["512 B", "4.9 KB", "203 KB", "1.23 MB"]
    costs = {"cost_params": 50610, "cost_nonzero_params": 4325, "cost_sparsity": 0.914543, "cost_macs": 50200,
             "cost_macs_effective": 4016, "cost_bops": 6.4256e06, "cost_size_entropy_bytes": 4504,
             "cost_size_bytes": 4896}  # fmt: skip
    assert cost_line(costs) == (
        "size 4.9 KB (entropy bound 4.5 KB), 4,325 of 50,610 weights nonzero (91.5% sparse), "
        "MACs 50,200 (effective 4,016), BOPs 6.43e+06"
    )
