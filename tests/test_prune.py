"""Pruning: masks, schedule, sparse storage, structured surgery and the prune step."""

import mlflow
import pytest
import torch
from torch import nn

from shrinkflow import FitSettings, PruneSettings, new_artifact, prune, train
from shrinkflow._masks import (
    apply_masks,
    cubic_sparsity,
    global_masks,
    layerwise_masks,
    prunable_weights,
    structured_prune,
    threshold_masks,
)
from shrinkflow.checkpoint import load_checkpoint, save_checkpoint
from shrinkflow.config import ShrinkflowError
from shrinkflow.cost import cost_summary
from shrinkflow.data import load_dataset
from shrinkflow.runtime import seed_everything
from shrinkflow.training import score
from shrinkflow.zoo import build_model, describe, module_shapes
from steps import evaluate
from steps import prune as prune_step

CPU = torch.device("cpu")
SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "cnn1d": (1, 40), "lstm": (1, 40), "transformer": (1, 8, 8)}


def _model(name="mlp", seed=0):
    seed_everything(seed)
    description = {"architecture": describe(name, SHAPES[name], 10), "class_names": [str(i) for i in range(10)]}
    return build_model(description["architecture"]).eval(), description


def test_threshold_zeroes_small_weights_not_large_ones():
    weight = torch.tensor([[0.01, -0.5], [-0.02, 0.3]])
    mask = threshold_masks({"fc.weight": weight}, {"fc": 0.1})["fc.weight"]
    # the article's sample zeroes weights *above* the threshold; magnitude pruning keeps them
    assert mask.tolist() == [[False, True], [False, True]]


def test_threshold_per_layer_with_default():
    model, _ = _model()
    weights = prunable_weights(model)
    masks = threshold_masks(weights, {"layers.1": 10.0, "*": 0.0})
    assert not masks["layers.1.weight"].any() and masks["layers.3.weight"].all()


def test_global_masks_hit_exact_sparsity_across_layers():
    model, _ = _model()
    weights = prunable_weights(model)
    masks = global_masks(weights, 0.9)
    total = sum(w.numel() for w in weights.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    kept = torch.cat([w.detach().abs()[m] for w, m in zip(weights.values(), masks.values(), strict=True)])
    pruned = torch.cat([w.detach().abs()[~m] for w, m in zip(weights.values(), masks.values(), strict=True)])
    assert pruned.max() <= kept.min()


def test_layerwise_masks_prune_every_layer_equally():
    model, _ = _model()
    for name, mask in layerwise_masks(prunable_weights(model), 0.5).items():
        assert int((~mask).sum()) == round(0.5 * mask.numel()), name


def test_cubic_schedule_of_zhu_and_gupta():
    assert cubic_sparsity(0, 0.9, 0.0, 100) == 0.0
    assert cubic_sparsity(100, 0.9, 0.0, 100) == pytest.approx(0.9)
    assert cubic_sparsity(50, 0.9, 0.0, 100) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert cubic_sparsity(500, 0.9, 0.1, 100) == pytest.approx(0.9)


def test_unknown_layer_lists_prunable_layers():
    model, _ = _model()
    with pytest.raises(ShrinkflowError, match="unknown layer 'layers.9'.*layers.1, layers.3, layers.5"):
        prunable_weights(model, ["layers.9"])


def test_sparse_checkpoint_round_trip_is_exact_and_small(tmp_path):
    model, description = _model()
    dense_folder = save_checkpoint(model, description, tmp_path / "dense")
    apply_masks(model, global_masks(prunable_weights(model), 0.9))
    sparse = {**description, "storage": "sparse"}
    sparse_folder = save_checkpoint(model, sparse, tmp_path / "sparse")
    reloaded, _ = load_checkpoint(sparse_folder)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    dense_cost, sparse_cost = cost_summary(model, description, dense_folder), cost_summary(model, sparse, sparse_folder)
    assert dense_cost["cost_size_bytes"] / sparse_cost["cost_size_bytes"] >= 5
    assert 1 < sparse_cost["cost_size_bytes"] / sparse_cost["cost_size_entropy_bytes"] < 1.05
    # positions entropy-coded (at most H(0.1) = 0.47 bits a weight), below a bitmap's 1 bit; 4 bytes a non-zero
    weights = 64 * 300 + 300 * 100 + 100 * 10
    nonzero = weights - round(0.9 * weights)
    bitmaps = sum(-(-n // 8) for n in (64 * 300, 300 * 100, 100 * 10))
    values = 4 * nonzero + 4 * (300 + 100 + 10)
    assert values < sparse_cost["cost_size_entropy_bytes"] < values + 0.5 * bitmaps
    assert sparse_cost["cost_size_bytes"] < values + bitmaps


@pytest.mark.parametrize("name", list(SHAPES))
def test_structured_pruning_shrinks_and_reloads_every_zoo_model(name, tmp_path):
    model, description = _model(name)
    dense_macs = cost_summary(model, description)["cost_macs"]
    structured_prune(model, 0.5, 1, torch.zeros(1, *SHAPES[name]))
    description["architecture"]["resized"] = module_shapes(model)
    assert cost_summary(model, description)["cost_macs"] < 0.6 * dense_macs
    reloaded, _ = load_checkpoint(save_checkpoint(model, description, tmp_path / name))
    x = torch.randn(4, *SHAPES[name])
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert reloaded(x).shape == (4, 10)


def test_structured_pruning_of_the_transformer_removes_its_weakest_heads_and_units_whole():
    """Heads and feed-forward units whose weights are zero go first, and removing them changes
    no prediction; the heads keep their size, so the attention still splits evenly."""
    model, description = _model("transformer")
    with torch.no_grad():
        for block in model.blocks:
            for projection in (block.attention.query, block.attention.key, block.attention.value):
                projection.weight[32:48] = 0  # head 2 of 4 (16 dims each)
            block.attention.out.weight[:, 32:48] = 0
            block.ffn[0].weight[::4] = 0  # every 4th of the 128 feed-forward units
            block.ffn[2].weight[:, ::4] = 0
    x = torch.randn(8, *SHAPES["transformer"])
    with torch.no_grad():
        before = model.eval()(x)
    structured_prune(model, 0.25, 1, x[:1])
    for block in model.blocks:
        assert block.attention.query.out_features == block.attention.out.in_features == 48  # 3 heads left
        assert block.ffn[0].out_features == block.ffn[2].in_features == 96
        assert bool((block.ffn[0].weight != 0).any(dim=1).all())  # every zeroed unit was the one removed
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)


class ResidualCNN(nn.Module):
    """Not in the zoo: a residual block with BatchNorm, the case Torch-Pruning's graph is for."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels = 16
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.block(x)))


def residual_cnn(input_shape, num_classes):
    return ResidualCNN(input_shape, num_classes)


def test_residual_cnn_with_batchnorm_is_pruned_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    description = {
        "architecture": describe("test_prune:residual_cnn", (1, 8, 8), 10),
        "class_names": list("0123456789"),
    }
    model = build_model(description["architecture"])
    model.train()
    with torch.no_grad():  # give BatchNorm real running statistics
        model(torch.randn(32, 1, 8, 8))
    model.eval()
    structured_prune(model, 0.5, 2, torch.zeros(1, 1, 8, 8))
    shapes = module_shapes(model)
    # the residual add ties stem and block outputs: both cut to the same 8 channels
    assert shapes["stem.0"]["out_channels"] == shapes["block.3"]["out_channels"] == 8
    assert shapes["block.1"]["num_features"] == shapes["head.2"]["in_features"] == 8
    description["architecture"]["resized"] = shapes
    reloaded, _ = load_checkpoint(save_checkpoint(model, description, tmp_path / "residual"))
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained(name, digits, epochs=150):
    """The default recipe (150 epochs, early stopping): what the acceptance bars were set on."""
    settings = FitSettings(epochs=epochs)
    return train(new_artifact(name, digits, seed=settings.seed), digits, settings, CPU).artifact


def test_gradual_pruning_reaches_target_and_zeros_stay_zero(digits):
    trained = _trained("mlp", digits, epochs=5)
    settings = PruneSettings(method="gradual", sparsity=0.8, epochs=6)
    sparsity_seen = []
    result = prune(trained, digits, settings, CPU, on_epoch=lambda e, m: sparsity_seen.append(m["sparsity"]))
    assert result.sparsity == pytest.approx(0.8, abs=1e-4)
    assert sparsity_seen == sorted(sparsity_seen) and sparsity_seen[0] < 0.8  # ramps up, never back
    assert _zeros(result.artifact.model) == pytest.approx(0.8, abs=1e-4)  # the kept epoch is at full sparsity
    assert _zeros(trained.model) == 0  # the artifact it was given is untouched


def _zeros(model):
    weights = prunable_weights(model)
    return sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())


@pytest.mark.slow
def test_acceptance_mlp_global_90_percent(digits):
    trained = _trained("mlp", digits)
    baseline = score(trained.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    result = prune(trained, digits, PruneSettings(sparsity=0.9), CPU)
    pruned = score(result.artifact.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    print(f"mlp global 90%: {baseline:.4f} -> {pruned:.4f}")
    assert _zeros(result.artifact.model) == pytest.approx(0.9, abs=1e-4)
    assert pruned >= baseline - 0.005


@pytest.mark.slow
def test_acceptance_cnn_half_the_channels(digits):
    trained = _trained("cnn", digits)
    baseline = score(trained.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    result = prune(trained, digits, PruneSettings(method="structured", sparsity=0.5), CPU)
    pruned = score(result.artifact.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    print(f"cnn structured 50%: {baseline:.4f} -> {pruned:.4f}")
    assert module_shapes(result.artifact.model)["features.3"]["out_channels"] == 32
    assert pruned >= baseline - 0.01


def test_prune_step_logs_a_smaller_model_that_evaluates_identically(trained_run_id):
    cfg = prune_step.PruneConfig(run_id=trained_run_id, method="layerwise", sparsity=0.75, epochs=2, device="cpu")
    run = mlflow.get_run(prune_step.execute(cfg))
    metrics = run.data.metrics
    assert metrics["prune_sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert metrics["cost_macs_effective"] < 0.3 * metrics["baseline_cost_macs_effective"]
    assert metrics["cost_size_bytes"] < 0.5 * metrics["baseline_cost_size_bytes"]
    assert run.data.tags["shrinkflow.source_run_id"] == trained_run_id
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"layers.json", "layers_before.json"} <= files
    evaluated = mlflow.get_run(evaluate.execute(evaluate.EvaluateConfig(run_id=run.info.run_id, device="cpu")))
    assert evaluated.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert evaluated.data.metrics["cost_size_bytes"] == metrics["cost_size_bytes"]


class TestBadInput:
    @pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "1.5"])
    def test_sparsity_outside_unit_interval(self, fails_with_bad_input, sparsity):
        line = fails_with_bad_input(prune_step.main, ["--run-id", "r", "--sparsity", sparsity])
        assert line == f"error: sparsity must be in [0, 1), got {float(sparsity)}"

    def test_negative_threshold(self, fails_with_bad_input):
        line = fails_with_bad_input(prune_step.main, ["--run-id", "r", "--method", "threshold", "--thresholds", "-0.1"])
        assert line == "error: thresholds must be >= 0, got -0.1"

    def test_unknown_method(self, fails_with_bad_input):
        line = fails_with_bad_input(prune_step.main, ["--run-id", "r", "--method", "random"])
        assert "unknown pruning method 'random'" in line and "threshold, global, layerwise, gradual, structured" in line

    def test_unknown_layer_name(self, fails_with_bad_input, trained_run_id):
        line = fails_with_bad_input(prune_step.main, ["--run-id", trained_run_id, "--layers", "conv9", "--epochs", "0"])
        assert "unknown layer 'conv9'" in line and "layers.1, layers.3, layers.5" in line

    def test_unknown_layer_in_thresholds(self, fails_with_bad_input, trained_run_id):
        argv = ["--run-id", trained_run_id, "--method", "threshold", "--thresholds", '{"fc9": 0.1}', "--epochs", "0"]
        assert "unknown layer(s) ['fc9']" in fails_with_bad_input(prune_step.main, argv)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_structured_sparsity_near_one_removes_more_not_nothing(name):
    """Torch-Pruning skips a layer whose share would remove every channel; 0.999 removed nothing."""
    from shrinkflow import load_dataset, new_artifact
    from shrinkflow._masks import structured_prune

    data = load_dataset("digits")
    sizes = []
    for ratio in (0.9, 0.99, 0.999):
        model = structured_prune(new_artifact(name, data, seed=0).model, ratio, 1, data.x_train[:1])
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes[0] > sizes[1] >= sizes[2]
    assert model(data.x_val[:3]).shape == (3, 10)  # every layer keeps a channel


def test_global_pruning_keeps_every_layer_above_its_floor_and_takes_the_rest_elsewhere():
    torch.manual_seed(0)
    weights = {"big.weight": torch.randn(100, 100), "small.weight": torch.randn(10, 10) * 1e-3}
    unfloored = global_masks(weights, 0.95)
    assert int(unfloored["small.weight"].sum()) == 0  # ranked globally, the small layer is wiped out
    masks = global_masks(weights, 0.95, min_density=0.04)
    assert int(masks["small.weight"].sum()) == 4  # its floor: 4% of 100
    assert sum(int(m.sum()) for m in masks.values()) == round(0.05 * 10_100)  # still 95% overall
    # the kept weights of the small layer are its largest
    kept = weights["small.weight"].abs()[masks["small.weight"]]
    assert kept.min() >= weights["small.weight"].abs()[~masks["small.weight"]].max()


def test_a_floor_that_cannot_allow_the_target_stops_at_the_floor():
    weights = {"a.weight": torch.randn(50, 20), "b.weight": torch.randn(30, 10)}
    masks = global_masks(weights, 0.95, min_density=0.1)
    assert {name: int(m.sum()) for name, m in masks.items()} == {"a.weight": 100, "b.weight": 30}


def test_layerwise_pruning_takes_per_layer_sparsities(digits):
    layers = '{"layers.1": 0.5, "layers.5": 0.0}'
    settings = PruneSettings(method="layerwise", sparsity=0.8, layer_sparsity=layers, epochs=0)
    pruned = prune(_trained("mlp", digits, epochs=1), digits, settings, CPU).artifact.model
    density = {name: float((w != 0).float().mean()) for name, w in prunable_weights(pruned).items()}
    assert density == pytest.approx({"layers.1.weight": 0.5, "layers.3.weight": 0.2, "layers.5.weight": 1.0}, abs=1e-3)


def test_layer_sparsity_errors():
    with pytest.raises(ShrinkflowError, match=r"layer_sparsity of 'layers.1' must be in \[0, 1\)"):
        PruneSettings(method="layerwise", layer_sparsity='{"layers.1": 1.5}')
    with pytest.raises(ShrinkflowError, match="layer_sparsity must be a JSON object of numbers"):
        PruneSettings(method="layerwise", layer_sparsity="0.5")
    with pytest.raises(ShrinkflowError, match=r"min_layer_density must be in \[0, 1\)"):
        PruneSettings(min_layer_density=1.0)


@pytest.mark.slow
def test_global_pruning_at_95_percent_of_the_zoo_mlp_stays_within_a_point():
    """Issue 13: every layer above its floor, and test accuracy within 2 pp after fine-tuning
    (150 epochs at 95%: the 60 of the default lose 1.7 pp on validation). Measured −0.83 pp on
    one machine, −1.11 to −1.67 pp over seeds 0-2 on another: 1 pp was one CPU's number."""
    cpu = CPU
    data = load_dataset("digits")
    baseline = _trained("mlp", data)
    result = prune(baseline, data, PruneSettings(method="global", sparsity=0.95, epochs=150), cpu)
    assert result.sparsity == pytest.approx(0.95, abs=1e-4)
    for name, weight in prunable_weights(result.artifact.model).items():
        assert float((weight != 0).float().mean()) >= PruneSettings().min_layer_density, name
    before = score(baseline.model, data.x_test, data.y_test, cpu)["accuracy"]
    after = score(result.artifact.model, data.x_test, data.y_test, cpu)["accuracy"]
    assert after >= before - 0.02


@pytest.mark.parametrize(
    "spec, bare",
    [("tests.test_quantize:gru_classifier", ["gru.weight_ih_l0", "gru.weight_hh_l0"]),
     ("tests.test_cost:encoder_factory", ["encoder.layers.0.self_attn.in_proj_weight"])],
)  # fmt: skip
def test_global_pruning_reaches_recurrent_and_attention_weights_and_round_trips(spec, bare, tmp_path):
    """A GRU's weight matrices and attention's packed in_proj_weight are bare parameters: pruned
    with the rest, so the sparsity asked for is the sparsity of every weight the model has."""
    data = load_dataset("digits")
    result = prune(new_artifact(spec, data), data, PruneSettings(method="global", sparsity=0.8, epochs=1), CPU)
    model = result.artifact.model
    weights = {n: p for n, p in model.named_parameters() if "weight" in n and "norm" not in n}
    zeros = sum(int((p == 0).sum()) for p in weights.values())
    assert zeros / sum(p.numel() for p in weights.values()) == pytest.approx(0.8, abs=1e-3)
    assert all(float((weights[name] == 0).float().mean()) > 0.3 for name in bare)
    reloaded, _ = load_checkpoint(result.artifact.save(tmp_path / "pruned"))
    with torch.no_grad():
        assert torch.equal(model.eval()(data.x_test), reloaded(data.x_test))


@pytest.mark.parametrize(
    "spec, message",
    [("tests.test_quantize:gru_classifier",
      "structured pruning removes no channel of this model (structured pruning does not cut GRU layers yet): "
      "use global or gradual"),
     ("tests.test_cost:encoder_factory",
      "structured pruning cut encoder.layers.0.self_attn.in_proj_weight to (24, 8), which the model's description "
      "cannot rebuild (it would have (48, 16)) (structured pruning does not cut MultiheadAttention layers yet)")],
)  # fmt: skip
def test_structured_pruning_refuses_before_training_a_cut_it_cannot_save(spec, message):
    """A cut that removes nothing, or one whose checkpoint would not reload, fails in one line
    before any fine-tuning epoch."""
    data = load_dataset("digits")
    epochs = []
    with pytest.raises(ShrinkflowError) as refused:
        prune(new_artifact(spec, data), data, PruneSettings(method="structured", sparsity=0.5, epochs=3), CPU,
              on_epoch=lambda epoch, metrics: epochs.append(epoch))  # fmt: skip
    assert message in str(refused.value) and epochs == []


def test_unstructured_pruning_names_the_weights_it_cannot_prune(recwarn):
    from shrinkflow.config import ShrinkflowWarning

    class WithBilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.pair, self.head = nn.Linear(64, 32), nn.Bilinear(32, 32, 32), nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.features(x.flatten(1)))
            return self.head(self.pair(h, h))

    data = load_dataset("digits")
    from shrinkflow import Artifact

    artifact = Artifact(WithBilinear(), new_artifact("mlp", data).description)  # a user's model, in memory
    prune(artifact, data, PruneSettings(method="global", sparsity=0.5, epochs=0), CPU)
    (warned,) = [str(w.message) for w in recwarn if issubclass(w.category, ShrinkflowWarning)]
    assert warned == (
        "global pruning left 1 weight tensor(s), 93% of the weights, dense: pair.weight (global does not prune "
        "Bilinear here)"
    )
