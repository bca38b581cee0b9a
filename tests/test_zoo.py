import pytest
import torch
from torch import nn

from shrinkflow.config import ShrinkflowError
from shrinkflow.zoo import MODELS, build_model, describe

# (model, input shape) pairs that every zoo model must handle
SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "cnn1d": (1, 40), "lstm": (1, 40), "transformer": (1, 8, 8)}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_maps_batch_to_logits(name):
    model = build_model(describe(name, SHAPES[name], 10))
    assert model(torch.randn(5, *SHAPES[name])).shape == (5, 10)


def test_default_parameter_counts_match_hand_computed():
    # LeNet-300-100 on 8x8: (64*300+300) + (300*100+100) + (100*10+10)
    assert _params(build_model(describe("mlp", (1, 8, 8), 10))) == 19_500 + 30_100 + 1_010
    # cnn: conv 1->32 (3x3), conv 32->64 (3x3), 8x8 -> 2x2 after two pools, fc 256->128, 128->10
    assert _params(build_model(describe("cnn", (1, 8, 8), 10))) == (
        (9 * 32 + 32) + (32 * 9 * 64 + 64) + (256 * 128 + 128) + (128 * 10 + 10)
    )
    # cnn1d (Greydanus): conv 1->25 k5, 25->25 k3 twice, length 40 -> 19 -> 10 -> 5, fc 125->10
    assert _params(build_model(describe("cnn1d", (1, 40), 10))) == (
        (5 * 25 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    )
    # lstm: two layers of 4 gates, each W_ih, W_hh and two biases; input size 1 then 128
    lstm = 4 * 128 * (1 + 128 + 2) + 4 * 128 * (128 + 128 + 2)
    assert _params(build_model(describe("lstm", (1, 40), 10))) == lstm + 128 * 10 + 10
    # transformer: a 2x2 patch -> 64 convolution, 16 positions, 2 blocks (two LayerNorms, four
    # 64x64 projections, feed-forward 64->128->64), a final LayerNorm and the head
    block = 2 * 128 + 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    transformer = (4 * 64 + 64) + 16 * 64 + 2 * block + 128 + (64 * 10 + 10)
    assert _params(build_model(describe("transformer", (1, 8, 8), 10))) == transformer == 69_066


def test_width_and_depth_knobs():
    narrow = describe("mlp", (1, 8, 8), 10, width=0.1, depth=3)
    assert narrow["params"] == {"hidden_sizes": [30, 10, 10]}
    assert describe("cnn", (1, 8, 8), 10, width=0.5, depth=1)["params"] == {"channels": [16], "hidden_sizes": [64]}
    assert describe("lstm", (1, 40), 10, width=0.25, depth=1)["params"] == {"hidden_size": 32, "num_layers": 1}
    halved = {"heads": 2, "ffn_size": 64, "num_layers": 1}  # width scales heads (of 16), not the head size
    assert describe("transformer", (1, 8, 8), 10, width=0.5, depth=1)["params"] == halved


@pytest.mark.parametrize(
    "shape, message",
    [((1, 7, 7), r"cuts samples into patches of 2; shape \(1, 7, 7\) does not divide"),
     ((64,), r"needs images \(C, H, W\) or signals \(C, L\).*\(64,\) \(use mlp or lstm")],
)  # fmt: skip
def test_transformer_refuses_shapes_it_cannot_cut_into_patches(shape, message):
    with pytest.raises(ShrinkflowError, match=message):
        build_model(describe("transformer", shape, 10))


def test_lstm_reads_image_rows_and_table_columns():
    assert build_model(describe("lstm", (1, 8, 8), 3))(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert build_model(describe("lstm", (6,), 3))(torch.randn(2, 6)).shape == (2, 3)


def test_description_is_json_round_trippable():
    import json

    arch = describe("cnn", (1, 8, 8), 10, width=2.0)
    assert json.loads(json.dumps(arch)) == arch


def test_unknown_model_lists_choices():
    with pytest.raises(ShrinkflowError, match="unknown model 'resnet'.*mlp, cnn, cnn1d, lstm"):
        describe("resnet", (1, 8, 8), 10)


def test_image_model_on_signals_explains_shape():
    with pytest.raises(ShrinkflowError, match=r"needs images \(C, H, W\).*\(1, 40\)"):
        build_model(describe("cnn", (1, 40), 10))


def test_too_deep_cnn_for_small_images():
    with pytest.raises(ShrinkflowError, match="too deep"):
        build_model(describe("cnn", (1, 8, 8), 10, depth=4))


@pytest.mark.parametrize("bad", [dict(width=0), dict(depth=-1)])
def test_bad_knobs(bad):
    with pytest.raises(ShrinkflowError):
        describe("mlp", (1, 8, 8), 10, **bad)


def tiny_factory(input_shape, num_classes):
    """A user model factory."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))


def not_a_model(input_shape, num_classes):
    return "oops"


def test_user_factory_builds_a_model():
    model = build_model(describe("test_zoo:tiny_factory", (1, 8, 8), 4))
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 4)


def test_user_factory_must_return_module():
    with pytest.raises(ShrinkflowError, match="not a torch.nn.Module"):
        build_model(describe("test_zoo:not_a_model", (1, 8, 8), 4))
