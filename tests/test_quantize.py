"""Weight quantization: codes, packing, packed checkpoints and the quantize step."""

import mlflow
import pytest
import torch
from torch import nn

from shrinkflow import FitSettings, QuantizeSettings, new_artifact, quantize, train
from shrinkflow._encoding import (
    decode,
    dynamic_int8,
    encode_binary,
    encode_codebook,
    encode_symmetric,
    pack_codes,
    unpack_codes,
)
from shrinkflow.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint
from shrinkflow.config import ShrinkflowError
from shrinkflow.cost import cost_summary
from shrinkflow.data import load_dataset
from shrinkflow.quantization import quantization_table
from shrinkflow.training import score
from steps import evaluate
from steps import prune as prune_step
from steps import quantize as quantize_step
from steps import train as train_step

CPU = torch.device("cpu")


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_round_trips_and_takes_bits_per_code(bits):
    codes = torch.randint(0, 2**bits, (1001,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)


def test_symmetric_grid_keeps_zero_and_bounds_error():
    weight = torch.randn(8, 20)
    weight[0, :5] = 0
    encoded = encode_symmetric(weight, 4)
    restored = decode(encoded)
    assert torch.all(restored[0, :5] == 0)
    # error at most half a step of the channel's scale
    assert torch.all((restored - weight).abs() <= encoded.scales[:, None] / 2 + 1e-6)
    assert len(torch.unique(restored[3])) <= 15


def test_integerization_without_scale_is_what_the_article_got_wrong():
    weight = torch.randn(50, 50) * 0.05  # trained-network magnitudes
    assert torch.count_nonzero(torch.round(weight)) == 0  # the article's sample: everything rounds to 0
    assert torch.count_nonzero(decode(encode_symmetric(weight, 8))) > 2000


def test_binary_is_sign_times_mean_magnitude():
    weight = torch.tensor([[0.5, -1.5, 1.0], [-0.2, -0.2, 0.2]])
    restored = decode(encode_binary(weight))
    assert torch.allclose(restored, torch.tensor([[1.0, -1.0, 1.0], [-0.2, -0.2, 0.2]]))


def test_codebook_uses_at_most_two_to_the_bits_values_and_beats_its_linear_start():
    torch.manual_seed(0)
    weight = torch.randn(40, 40)
    encoded = encode_codebook(weight, 3)
    assert len(torch.unique(decode(encoded))) <= 8
    linear = encode_codebook(weight, 3, iterations=0)  # Han et al.'s linear initialization alone
    kmeans_error = (decode(encoded) - weight).pow(2).mean()
    assert kmeans_error < 0.8 * (decode(linear) - weight).pow(2).mean()


def test_a_pruned_weight_stays_zero_and_a_kept_one_does_not_become_zero():
    torch.manual_seed(0)
    weight = torch.randn(16, 30)
    weight[weight.abs() < 0.8] = 0  # ~58% pruned
    kept = weight.flatten() != 0
    small = torch.nonzero(kept.reshape(16, 30)[0]).flatten()[:2]
    weight[0, small] *= 0.01  # two kept weights far below half a step of their channel
    for encoded in (encode_symmetric(weight, 3, kept), encode_binary(weight, kept), encode_codebook(weight, 3, kept)):
        restored = decode(encoded)
        assert torch.equal(restored.flatten() != 0, kept), encoded.scheme
    without_mask = decode(encode_symmetric(weight, 3))
    assert torch.count_nonzero(without_mask) < int(kept.sum())  # plain rounding would prune the small ones


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_mlp(digits):
    """The default recipe: the accuracy bars below were set on it."""
    return train(new_artifact("mlp", digits), digits, FitSettings(), CPU).artifact


def _quantize(artifact, digits, on_epoch=None, **settings):
    """(model, encodings, layers, description) of the quantized artifact."""
    result = quantize(artifact, digits, QuantizeSettings(**settings), CPU, on_epoch=on_epoch)
    return result.artifact.model, result.artifact.encodings, result.layers, result.artifact.description


@pytest.mark.parametrize(
    "method,bits", [("kbit", "4"), ("kbit", '{"layers.1": 8, "*": 3}'), ("binary", None), ("kmeans", "4")]
)
def test_every_method_round_trips_exactly_near_its_entropy_bound(trained_mlp, digits, tmp_path, method, bits):
    model, encodings, layers, packed = _quantize(trained_mlp, digits, method=method, **({"bits": bits} if bits else {}))
    folder = save_checkpoint(model, packed, tmp_path / method, encodings)
    reloaded, _ = load_checkpoint(folder)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    cost = cost_summary(reloaded, packed, folder, encodings)
    assert 1 < cost["cost_size_bytes"] / cost["cost_size_entropy_bytes"] < 1.10


def test_four_bit_mlp_within_one_point_and_seven_times_smaller(trained_mlp, digits, tmp_path):
    baseline = score(trained_mlp.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    result = quantize(trained_mlp, digits, QuantizeSettings(bits="4"), CPU).artifact
    model, packed = result.model, result.description
    accuracy = score(model, digits.x_test, digits.y_test, CPU)["accuracy"]
    table = quantization_table(result).set_index("tensor")
    weights = table.loc[["layers.1.weight", "layers.3.weight", "layers.5.weight"]]
    # at most 50,200 codes of 4 bits + 410 float32 scales; entropy-coded when that is smaller
    assert weights["stored_bytes"].sum() <= 50_200 // 2 + 4 * 410
    assert (weights["entropy_bytes"] <= weights["stored_bytes"]).all()
    biases = table.loc[["layers.1.bias", "layers.3.bias", "layers.5.bias"]]
    assert (biases["bits"] == 8).all() and biases["stored_bytes"].sum() <= 410 + 3 * 4  # a scale each
    assert accuracy >= baseline - 0.01
    assert cost_summary(model, packed)["cost_bops"] == 50_200 * 4 * 32


def test_pruned_then_quantized_stores_bitmap_and_nonzero_codes(trained_mlp, digits, tmp_path):
    from shrinkflow._masks import apply_masks, global_masks, prunable_weights

    pruned = trained_mlp.copy()
    apply_masks(pruned.model, global_masks(prunable_weights(pruned.model), 0.9))
    model, encodings, layers, packed = _quantize(pruned, digits, bits="4")
    nonzero = sum(int(torch.count_nonzero(model.get_parameter(f"{name}.weight"))) for name in layers)
    assert nonzero <= 5_020  # pruned weights stay zero under the symmetric grid
    folder = save_checkpoint(model, packed, tmp_path / "pruned4", encodings)
    reloaded, _ = load_checkpoint(folder)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    cost = cost_summary(reloaded, packed, folder, encodings)
    # positions and codes entropy-coded: below the bitmap + 4-bit codes of format version 1
    per_layer = {"layers.1": 64 * 300, "layers.3": 300 * 100, "layers.5": 100 * 10}
    bitmaps = sum(-(-n // 8) for n in per_layer.values())
    codes = sum(-(-int(torch.count_nonzero(model.get_parameter(f"{n}.weight"))) * 4 // 8) for n in per_layer)
    assert cost["cost_size_entropy_bytes"] < cost["cost_size_bytes"] < bitmaps + codes + 4 * 410 + 410
    assert 0 < cost["cost_size_bytes"] - cost["cost_size_entropy_bytes"] < 600  # header and coding overhead
    # Deep Compression: prune, then quantize. Biases take 8 bits only when that leaves validation
    # accuracy unchanged, a knife-edge on 180 samples that falls either way between CPUs: count
    # them at 8 bits (a byte each, plus a float32 scale per layer) whatever was chosen.
    from shrinkflow.artifact import Artifact

    table = quantization_table(Artifact(model, packed, encodings)).set_index("tensor")
    stored_biases = table.loc[[f"{name}.bias" for name in per_layer], "stored_bytes"].sum()
    assert cost["cost_size_bytes"] - stored_biases + 410 + 3 * 4 < 203_355 / 25


def test_unread_units_are_those_whose_outgoing_weights_are_all_zero():
    from shrinkflow._masks import unread_units

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        mlp[3].weight[:, [1, 4]] = 0  # hidden units 1 and 4 of the first layer: nothing reads them
        mlp[3].weight[2, 0] = 0  # unit 0 is still read by the other four
    unread = unread_units(mlp, torch.rand(1, 1, 4, 4))
    assert set(unread) == {"1", "3"}  # the output layer's units are the classes
    assert unread["1"].tolist() == [False, True, False, False, True, False] and not unread["3"].any()

    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)
    )
    with torch.no_grad():
        cnn[4].weight[:, 8:12] = 0  # channel 2's four positions, flattened
    assert unread_units(cnn, torch.rand(1, 1, 4, 4))["0"].tolist() == [False, False, True, False]
    batch_normed = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).train()
    with torch.no_grad():
        batch_normed[3].weight[:, 1] = 0  # per channel, BatchNorm passes unit 1 on to no one
    statistics = batch_normed[1].running_mean.clone()
    assert unread_units(batch_normed, torch.rand(2, 4))["0"].tolist() == [False, True, False]
    assert batch_normed.training and torch.equal(batch_normed[1].running_mean, statistics)  # looked, not trained
    normalized = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))  # LayerNorm reads every unit
    assert unread_units(normalized, torch.rand(1, 4)) == {}


def test_a_unit_nothing_reads_stores_a_zero_bias_and_the_logits_stay_the_same(
    trained_mlp, digits, monkeypatch, tmp_path
):
    """Pruning leaves hidden units whose outgoing weights are all zero; their biases are stored as
    zeros (pruned), which changes no logit and makes the file smaller."""
    from shrinkflow import quantization

    pruned = trained_mlp.copy()
    with torch.no_grad():
        pruned.model.layers[3].weight[:, :150] = 0  # half of the first hidden layer: read by nothing
    at_8_bits = _quantize(pruned, digits, method="kmeans", bits="4")
    bias = at_8_bits[1]["layers.1.bias"]  # its codes: the 150 zeros pruned, the others kept
    assert not bias.kept[:150].any() and bias.kept[150:].any()
    float_biases = {"method": "kmeans", "bits": "4", "bias_bits": 32}  # exact: the 8-bit scale depends on the max
    zeroed = _quantize(pruned, digits, **float_biases)
    monkeypatch.setattr(quantization, "_zero_unread_biases", lambda model, data: None)
    as_trained = _quantize(pruned, digits, **float_biases)
    assert (zeroed[0].layers[1].bias[:150] == 0).all() and as_trained[0].layers[1].bias[:150].all()
    with torch.no_grad():
        assert torch.equal(zeroed[0](digits.x_test), as_trained[0](digits.x_test))
    folders = [save_checkpoint(model, description, tmp_path / str(index), encodings)
               for index, (model, encodings, _, description) in enumerate((zeroed, as_trained))]  # fmt: skip
    assert checkpoint_bytes(folders[1]) - checkpoint_bytes(folders[0]) >= 150 * 4 * 0.9  # their float32 values


def test_binary_weights_take_one_bit(trained_mlp, digits):
    model, encodings, layers, int8 = _quantize(trained_mlp, digits, method="binary", keep_first_last=False)
    assert set(layers.values()) == {1}
    codes_bytes = sum(-(-e.codes.numel() // 8) for name, e in encodings.items() if name.endswith("weight"))
    assert codes_bytes * 32 == pytest.approx(4 * 50_200, rel=0.001)  # 1/32 of the fp32 weights


def test_binary_keeps_first_and_last_layer_at_8_bits(trained_mlp, digits):
    _, _, layers, _ = _quantize(trained_mlp, digits, method="binary")
    assert layers == {"layers.1": 8, "layers.3": 1, "layers.5": 8}


def test_straight_through_fine_tuning_recovers_two_bit_accuracy(trained_mlp, digits):
    results = {}
    for epochs in (0, 5):
        model, *_ = _quantize(trained_mlp, digits, bits="2", epochs=epochs)
        results[epochs] = score(model, digits.x_test, digits.y_test, CPU)["accuracy"]
    assert results[5] > results[0] + 0.2


def test_quantize_step_logs_a_packed_model_that_evaluates_identically(trained_run_id):
    cfg = quantize_step.QuantizeConfig(run_id=trained_run_id, method="kmeans", bits="3", device="cpu")
    run = mlflow.get_run(quantize_step.execute(cfg))
    metrics = run.data.metrics
    assert metrics["cost_size_bytes"] < metrics["baseline_cost_size_bytes"] / 8
    assert metrics["cost_size_entropy_bytes"] <= metrics["cost_size_bytes"]
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"quantization.json", "quantization.csv"} <= files
    evaluated = mlflow.get_run(evaluate.execute(evaluate.EvaluateConfig(run_id=run.info.run_id, device="cpu")))
    assert evaluated.data.metrics["test_accuracy"] == metrics["test_accuracy"]


@pytest.fixture(scope="module")
def trained_cnn(digits):
    return train(new_artifact("cnn", digits), digits, FitSettings(epochs=20, patience=0), CPU).artifact


def _raw_bytes(int8_model) -> int:
    """Bytes of the plain tensors an int8 model is stored as, before entropy coding."""
    from shrinkflow._encoding import int8_state

    return sum(t.numel() * t.element_size() for t in int8_state(int8_model).values())


def _graph_quantizer_bytes(model) -> int:
    """Bytes of the scale (float32) and zero point (int64) of each quantize op in the int8 graph."""
    return sum(t.numel() * t.element_size() for name, t in model.named_buffers() if "." not in name)


@pytest.mark.parametrize("observer", ["histogram", "minmax"])
def test_static_int8_cnn_runs_int8_layers_and_round_trips_exactly(trained_cnn, digits, tmp_path, observer):
    from shrinkflow._encoding import is_int8_layer

    baseline = score(trained_cnn.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    model, encodings, layers, int8 = _quantize(trained_cnn, digits, method="static-int8", observer=observer)
    assert set(layers) == {"features.0", "features.3", "classifier.1", "classifier.3"}
    assert all(is_int8_layer(model.get_submodule(name)) for name in layers)
    seen = []
    hook = model.get_submodule("features.3").register_forward_hook(lambda m, inputs, output: seen.append(output))
    with torch.no_grad():
        model(digits.x_test[:4])
    hook.remove()
    assert seen[0].dtype == torch.quint8  # activations travel between layers as int8
    assert score(model, digits.x_test, digits.y_test, CPU)["accuracy"] >= baseline - 0.01
    assert int8["storage"] == "int8-static" and int8["quantize"]["observer"] == observer
    folder = save_checkpoint(model, int8, tmp_path / "int8", encodings)
    reloaded, _ = load_checkpoint(folder)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    cost = cost_summary(reloaded, int8, folder)
    weights, channels = 288 + 18_432 + 32_768 + 1_280, 32 + 64 + 128 + 10
    # int8 weights; per output channel a float32 scale, an int8 zero point and a float32 bias;
    # per layer its output's float32 scale and int64 zero point; the graph's input quantizers
    expected = weights + channels * (4 + 1 + 4) + len(layers) * (4 + 8) + _graph_quantizer_bytes(reloaded)
    assert _raw_bytes(reloaded) == expected and cost["cost_size_entropy_bytes"] < expected
    assert cost["cost_bops"] == 347_392 * 8 * 8
    assert cost["cost_size_bytes"] < 0.3 * 4 * (weights + 2 * channels)


def test_static_int8_traces_for_deployment(trained_cnn, digits):
    from shrinkflow.latency import deployable

    model, *_ = _quantize(trained_cnn, digits, method="static-int8", calibration_batches=2)
    traced = deployable(model, digits.x_test[:8], "traced")
    with torch.no_grad():
        assert torch.equal(traced(digits.x_test[:8]), model(digits.x_test[:8]))


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("method,model", [("static-int8", "cnn"), ("dynamic-int8", "mlp")])
def test_every_int8_engine_runs_the_quantized_model_as_loading_under_it_would(
    trained_cnn, trained_mlp, digits, method, model
):
    from shrinkflow._encoding import int8_engines, quantized_engine, repacked_int8

    trained = {"cnn": trained_cnn, "mlp": trained_mlp}[model]
    quantized, *_ = _quantize(trained, digits, method=method)
    default = torch.backends.quantized.engine
    with torch.no_grad():
        reference = quantized(digits.x_test)
    assert int8_engines()  # x86 machines have four; ARM ones qnnpack
    for engine in int8_engines():
        with quantized_engine(engine), torch.no_grad():
            assert torch.backends.quantized.engine == engine
            logits = repacked_int8(quantized)(digits.x_test)
        if engine == default:
            assert torch.equal(logits, reference)
        else:  # other kernels: their own rounding of requantized (static) or quantized (dynamic) values
            assert _agreement(logits, reference) >= 0.99, engine
            assert (logits - reference).abs().max() < 0.05 * reference.abs().max(), engine
    assert torch.backends.quantized.engine == default
    with torch.no_grad():
        assert torch.equal(quantized(digits.x_test), reference)  # the model given is left as it was


def test_more_calibration_batches_observe_more_of_the_range(trained_cnn, digits):
    scales = {}
    for batches in (1, 12):
        model, *_ = _quantize(trained_cnn, digits, method="static-int8", observer="minmax", calibration_batches=batches)
        scales[batches] = model.get_submodule("features.3").scale
    assert scales[12] > scales[1]  # min/max over 1,200 images reach further than over 100


def test_qat_fine_tunes_with_fake_quantization_and_converts_to_int8(trained_mlp, digits, tmp_path):
    from shrinkflow._encoding import is_int8_layer

    epochs = []
    model, encodings, layers, int8 = _quantize(
        trained_mlp, digits, on_epoch=lambda e, m: epochs.append(e), method="qat", epochs=2
    )
    assert epochs == [1, 2]
    assert set(layers) == {"layers.1", "layers.3", "layers.5"}
    assert all(is_int8_layer(model.get_submodule(name)) for name in layers)
    assert score(model, digits.x_test, digits.y_test, CPU)["accuracy"] > 0.95
    assert int8["quantize"] == {
        "method": "qat", "observer": "moving-average", "int8_graph": 2, "weight_scales": "per-channel"
    }  # fmt: skip
    reloaded, _ = load_checkpoint(save_checkpoint(model, int8, tmp_path / "qat", encodings))
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))


def test_quantize_step_logs_a_static_int8_model_that_evaluates_identically(trained_run_id):
    cfg = quantize_step.QuantizeConfig(run_id=trained_run_id, method="static-int8", calibration_batches=3, device="cpu")
    run = mlflow.get_run(quantize_step.execute(cfg))
    metrics = run.data.metrics
    assert metrics["cost_size_bytes"] < 0.3 * metrics["baseline_cost_size_bytes"]
    evaluated = mlflow.get_run(evaluate.execute(evaluate.EvaluateConfig(run_id=run.info.run_id)))
    assert evaluated.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    line = "run .*: the model is already quantized \\(storage int8-static\\): quantize the float model"
    with pytest.raises(ShrinkflowError, match=line):
        quantize_step.execute(quantize_step.QuantizeConfig(run_id=run.info.run_id, device="cpu"))
    with pytest.raises(ShrinkflowError, match="already quantized .*: prune the float model it was quantized from"):
        prune_step.execute(prune_step.PruneConfig(run_id=run.info.run_id, sparsity=0.5, device="cpu"))


_SWITCHABLE_DATA = """
import os
from sklearn.datasets import load_digits

def load():
    x, y = load_digits(return_X_y=True)
    x = (x / 16).reshape(-1, 1, 8, 8)
    val = slice(0, 0) if os.environ.get("SHRINKFLOW_TEST_EMPTY_VAL") else slice(1000, 1200)
    return {"train": (x[:1000], y[:1000]), "val": (x[val], y[val]), "test": (x[1200:], y[1200:])}
"""


def test_data_changed_since_training_fails_before_a_run(tmp_path, monkeypatch, fails_with_bad_input, all_run_ids):
    (tmp_path / "switchable_digits.py").write_text(_SWITCHABLE_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_id = train_step.execute(
        train_step.TrainConfig(model="mlp", dataset="switchable_digits:load", epochs=1, device="cpu")
    )
    monkeypatch.setenv("SHRINKFLOW_TEST_EMPTY_VAL", "1")  # the user's data changed since training
    runs_before = len(all_run_ids())
    argv = ["--run-id", run_id, "--method", "static-int8", "--calibration-split", "val"]
    line = fails_with_bad_input(quantize_step.main, argv)
    assert f"dataset 'switchable_digits:load' is not what run '{run_id}' used: its val split had digest" in line
    assert len(all_run_ids()) == runs_before  # no run was started


def test_calibration_on_an_empty_split_is_refused(tmp_path, monkeypatch):
    import dataclasses

    data = load_dataset("digits")
    empty_val = dataclasses.replace(data, x_val=data.x_val[:0], y_val=data.y_val[:0])
    artifact = new_artifact("mlp", data, seed=0)
    settings = QuantizeSettings(method="static-int8", calibration_split="val")
    with pytest.raises(ShrinkflowError, match="calibration on an empty split: the 'val' split of dataset 'digits'"):
        quantize(artifact, empty_val, settings, torch.device("cpu"))


class TestBadInput:
    @pytest.mark.parametrize("bits", ["0", "9", "4.5", '{"*": 12}'])
    def test_bits_outside_supported_set(self, fails_with_bad_input, bits):
        line = fails_with_bad_input(quantize_step.main, ["--run-id", "r", "--bits", bits])
        assert "bits must be integers in 1-8 (the supported set)" in line or "bits must be an integer 1-8" in line

    def test_unsupported_layer_type(self, fails_with_bad_input, trained_run_id):
        line = fails_with_bad_input(quantize_step.main, ["--run-id", trained_run_id, "--bits", '{"layers.2": 4}'])
        assert (
            "layer 'layers.2' is a ReLU, an unsupported layer type" in line and "layers.1, layers.3, layers.5" in line
        )

    def test_unknown_method(self, fails_with_bad_input):
        line = fails_with_bad_input(quantize_step.main, ["--run-id", "r", "--method", "int3"])
        assert "unknown quantization method 'int3': choose kbit, binary, kmeans" in line


def test_dynamic_int8_runs_int8_kernels_and_round_trips_exactly(trained_mlp, digits, tmp_path):
    from shrinkflow._encoding import is_dynamic_int8_linear

    baseline = score(trained_mlp.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    model, encodings, layers, int8 = _quantize(trained_mlp, digits, method="dynamic-int8")
    assert all(is_dynamic_int8_linear(model.get_submodule(name)) for name in layers)
    assert score(model, digits.x_test, digits.y_test, CPU)["accuracy"] >= baseline - 0.005
    folder = save_checkpoint(model, int8, tmp_path / "int8", encodings)
    reloaded, _ = load_checkpoint(folder)
    assert all(is_dynamic_int8_linear(reloaded.get_submodule(name)) for name in layers)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    cost = cost_summary(reloaded, int8, folder)
    # int8 weights + float32 scale and int8 zero point per output channel + float32 biases
    assert _raw_bytes(reloaded) == 50_200 + 410 * (4 + 1) + 410 * 4
    assert cost["cost_size_entropy_bytes"] < cost["cost_size_bytes"] < _raw_bytes(reloaded)  # int8 codes coded
    assert cost["cost_size_bytes"] <= 0.30 * 203_355  # the fp32 artifact
    assert cost["cost_bops"] == 50_200 * 8 * 8 and cost["cost_params"] == 50_610


def test_dynamic_int8_lstm_runs_int8_and_round_trips_exactly(digits, tmp_path):
    from shrinkflow._encoding import is_dynamic_int8_rnn
    from shrinkflow.latency import state_tensors

    trained = train(new_artifact("lstm", digits), digits, FitSettings(epochs=6, patience=0), CPU).artifact
    baseline = score(trained.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    model, encodings, layers, int8 = _quantize(trained, digits, method="dynamic-int8")
    assert layers == {"lstm": 8, "fc": 8} and is_dynamic_int8_rnn(model.lstm)
    assert score(model, digits.x_test, digits.y_test, CPU)["accuracy"] >= baseline - 0.01
    folder = save_checkpoint(model, int8, tmp_path / "lstm", encodings)
    reloaded, _ = load_checkpoint(folder)
    assert is_dynamic_int8_rnn(reloaded.lstm)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    cost = cost_summary(reloaded, int8, folder)
    lstm_weights, lstm_biases = 4 * 128 * (8 + 128) + 4 * 128 * (128 + 128), 2 * 2 * 4 * 128
    # LSTM: int8 weights, a float32 scale and int8 zero point per matrix (4), float32 biases;
    # fc: int8 weights, per output channel a float32 scale, an int8 zero point and a float32 bias
    expected = lstm_weights + 4 * (4 + 1) + 4 * lstm_biases + 128 * 10 + 10 * (4 + 1 + 4)
    assert _raw_bytes(reloaded) == expected
    assert cost["cost_params"] == lstm_weights + lstm_biases + 128 * 10 + 10
    assert cost["cost_bops"] == (8 * lstm_weights + 128 * 10) * 8 * 8  # the LSTM runs 8 steps, fc once
    resident = sum(t.numel() * t.element_size() for t in state_tensors(reloaded))  # counted by benchmark
    assert lstm_weights + 4 * lstm_biases < resident < expected


class _GRUClassifier(torch.nn.Module):
    """A user's GRU over the 8 rows of a digit."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.gru, self.head = torch.nn.GRU(8, 64, batch_first=True), torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(self.gru(x[:, 0])[0][:, -1])


def gru_classifier(input_shape, num_classes):
    return _GRUClassifier(num_classes)


def test_dynamic_int8_gru_runs_int8_round_trips_and_is_counted(digits, tmp_path):
    from shrinkflow._encoding import is_dynamic_int8_rnn
    from shrinkflow.onnx_export import export_onnx

    model = new_artifact("tests.test_quantize:gru_classifier", digits)
    trained = train(model, digits, FitSettings(epochs=4, patience=0), CPU).artifact
    baseline = score(trained.model, digits.x_test, digits.y_test, CPU)["accuracy"]
    model, encodings, layers, int8 = _quantize(trained, digits, method="dynamic-int8")
    assert layers == {"gru": 8, "head": 8} and is_dynamic_int8_rnn(model.gru)
    assert int8["quantize"]["int8_recurrent"] == ["LSTM", "GRU"]
    assert score(model, digits.x_test, digits.y_test, CPU)["accuracy"] >= baseline - 0.01
    reloaded, _ = load_checkpoint(save_checkpoint(model, int8, tmp_path / "gru", encodings))
    assert is_dynamic_int8_rnn(reloaded.gru)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    gru_weights = 3 * 64 * (8 + 64)  # one layer: 3 gates × H × (input + H)
    cost = cost_summary(reloaded, int8, tmp_path / "gru")
    assert cost["cost_macs"] == 8 * gru_weights + 64 * 10 == 111_232  # 8 steps, then the head once
    assert cost["cost_bops"] == cost["cost_macs"] * 8 * 8
    floats = save_checkpoint(trained.model, trained.description, tmp_path / "float")
    assert cost_summary(trained.model, trained.description, floats)["cost_size_bytes"] > 3.5 * cost["cost_size_bytes"]
    with pytest.raises(ShrinkflowError, match=r"no operator for a dynamic-int8 GRU \(quantized::quantized_gru\)"):
        export_onnx(reloaded, digits.x_test[:2])


@pytest.mark.parametrize("spec", ["tests.test_quantize:gru_classifier", "tests.test_cost:encoder_factory"])
def test_kbit_codes_every_weight_of_recurrent_and_attention_layers(digits, tmp_path, spec):
    """A GRU's weight_ih/weight_hh and attention's packed in_proj_weight are bare parameters, not a
    Linear's weight: they are coded (and fine-tuned through their codes) like any other."""
    original = new_artifact(spec, digits)
    model, encodings, _, description = _quantize(original, digits, method="kbit", bits="4", epochs=1)
    weights = {name for name, _ in model.named_parameters() if "weight" in name and "norm" not in name}
    assert weights <= set(encodings)  # every weight tensor but LayerNorm's scales
    assert all(encodings[name].bits == 4 for name in weights)
    if "gru" in spec:
        assert {"gru.weight_ih_l0", "gru.weight_hh_l0"} <= weights
    else:
        assert "encoder.layers.0.self_attn.in_proj_weight" in weights
    folder = save_checkpoint(model, description, tmp_path / "coded", encodings)
    reloaded, _ = load_checkpoint(folder)
    with torch.no_grad():
        assert torch.equal(model.eval()(digits.x_test), reloaded(digits.x_test))
    if "gru" in spec:  # 4-bit codes, biases at 8 bits when validation allows
        floats = save_checkpoint(original.model, original.description, tmp_path / "float")
        assert (
            cost_summary(original.model, original.description, floats)["cost_size_bytes"]
            > 6 * (cost_summary(reloaded, description, folder)["cost_size_bytes"])
        )


def test_dynamic_int8_runs_a_transformer_and_names_the_weights_it_left_float(digits, tmp_path, recwarn):
    """Its Linears go int8 (PyTorch's fused encoder path, which would read their float weights, is
    not taken); attention's projections stay float32, and one warning line says so."""
    from shrinkflow.config import ShrinkflowWarning
    from shrinkflow.onnx_export import check_onnx, export_onnx

    model, encodings, layers, int8 = _quantize(new_artifact("tests.test_cost:encoder_factory", digits), digits,
                                               method="dynamic-int8")  # fmt: skip
    assert set(layers) == {"embed", "encoder.layers.0.linear1", "encoder.layers.0.linear2", "head"}
    (warned,) = [str(w.message) for w in recwarn if issubclass(w.category, ShrinkflowWarning)]
    assert warned.startswith(
        "dynamic-int8 left 2 weight tensor(s), 44% of the weights, in float32: "
        "encoder.layers.*.self_attn.in_proj_weight, encoder.layers.*.self_attn.out_proj.weight"
    )
    reloaded, _ = load_checkpoint(save_checkpoint(model, int8, tmp_path / "int8", encodings))
    with torch.no_grad():  # eval without gradients: where the fused path would be taken
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    assert check_onnx(reloaded, export_onnx(reloaded, digits.x_test[:2]), digits.x_test).problem(0.05) is None


def test_static_int8_names_the_recurrent_weights_it_leaves_float(digits, recwarn):
    from shrinkflow.config import ShrinkflowWarning

    _quantize(new_artifact("tests.test_quantize:gru_classifier", digits), digits, method="static-int8")
    (warned,) = [str(w.message) for w in recwarn if issubclass(w.category, ShrinkflowWarning)]
    assert warned == (
        "static-int8 left 2 weight tensor(s), 96% of the weights, in float32: gru.weight_ih_l0, gru.weight_hh_l0 "
        "(static-int8 does not quantize GRU here)"
    )


def test_a_dynamic_int8_checkpoint_from_before_gru_was_quantized_keeps_its_gru_float(digits, tmp_path):
    trained = new_artifact("tests.test_quantize:gru_classifier", digits)
    model, encodings, _, int8 = _quantize(trained, digits, method="dynamic-int8")
    old = {**int8, "quantize": {k: v for k, v in int8["quantize"].items() if k != "int8_recurrent"}}
    old_model = dynamic_int8(trained.model, recurrent=("LSTM",))  # what dynamic-int8 made then
    reloaded, _ = load_checkpoint(save_checkpoint(old_model, old, tmp_path / "old", encodings))
    assert isinstance(reloaded.gru, torch.nn.GRU)
    with torch.no_grad():
        assert torch.equal(old_model(digits.x_test), reloaded(digits.x_test))


def test_dynamic_int8_traces_for_deployment(trained_mlp, digits):
    from shrinkflow.latency import deployable

    model, *_ = _quantize(trained_mlp, digits, method="dynamic-int8")
    traced = deployable(model, digits.x_test[:8], "traced")
    with torch.no_grad():
        assert torch.equal(traced(digits.x_test[:8]), model(digits.x_test[:8]))


def test_dynamic_int8_has_no_fine_tuning():
    with pytest.raises(ShrinkflowError, match="dynamic-int8 has no fine-tuning"):
        quantize_step.QuantizeConfig(run_id="r", method="dynamic-int8", epochs=3)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--method", "static-int8", "--observer", "max"], "unknown observer 'max': choose auto, histogram"),
        (["--method", "qat"], "qat quantizes while it fine-tunes: set epochs >= 1"),
        (["--method", "qat", "--epochs", "2", "--observer", "histogram"], "qat observes activations while training"),
        (["--method", "static-int8", "--epochs", "2"], "static-int8 has no fine-tuning"),
        (["--method", "static-int8", "--calibration-batches", "0"], "calibration_batches must be >= 1, got 0"),
        (["--method", "static-int8", "--calibration-split", "test"], "unknown calibration split 'test': choose"),
    ],
)
def test_int8_settings_are_checked(fails_with_bad_input, argv, message):
    assert message in fails_with_bad_input(quantize_step.main, ["--run-id", "r", *argv])


def _flatten_keeps_scale(model) -> bool:
    """Whether the int8 cnn quantizes its flattened features at the scale its last conv block gave them."""
    return model.classifier_0_scale_0.item() == model.get_submodule("features.3").scale


def test_flatten_passes_int8_through_and_older_checkpoints_keep_their_graph(trained_cnn_and_data, tmp_path):
    """int8 graph 2: nn.Flatten keeps its input's int8 scale (graph 1 requantized the flattened
    features to a scale of their own); a checkpoint saved without a graph version is rebuilt as 1."""
    from shrinkflow._encoding import convert_int8, prepare_static_int8

    trained, data = trained_cnn_and_data
    model, _, _, description = _quantize(trained, data, method="static-int8")
    assert description["quantize"]["int8_graph"] == 2 and _flatten_keeps_scale(model)
    old = prepare_static_int8(trained.copy().model, data.x_train[:1], "histogram", int8_graph=1)
    with torch.no_grad():
        for batch in data.x_train.split(100)[:10]:
            old(batch)
    old = convert_int8(old, int8_graph=1)
    assert not _flatten_keeps_scale(old)
    legacy = {k: v for k, v in description.items() if k != "quantize"}
    legacy["quantize"] = {"method": "static-int8", "observer": "histogram"}  # as checkpoints before the version
    reloaded, _ = load_checkpoint(save_checkpoint(old, legacy, tmp_path / "graph1"))
    assert not _flatten_keeps_scale(reloaded)
    with torch.no_grad():
        assert torch.equal(old(data.x_test), reloaded(data.x_test))


@pytest.fixture(scope="module")
def trained_cnn_and_data(digits):
    cnn = train(new_artifact("cnn", digits), digits, FitSettings(epochs=3, patience=0), CPU).artifact
    return cnn, digits


def _onnx_weight_axes(model, example) -> list[bool]:
    """For each DequantizeLinear of the exported model: whether it dequantizes per axis."""
    import onnx

    from shrinkflow.onnx_export import export_onnx

    graph = onnx.load_from_string(export_onnx(model, example)).graph
    return [any(a.name == "axis" for a in n.attribute) for n in graph.node if n.op_type == "DequantizeLinear"]


def test_weight_scales_per_tensor_export_as_one_scale_and_auto_picks_by_validation(trained_cnn_and_data):
    from shrinkflow._encoding import is_int8_layer

    trained, data = trained_cnn_and_data
    models = {}
    for scales in ("per-channel", "per-tensor", "auto"):
        model, _, _, description = _quantize(trained, data, method="static-int8", weight_scales=scales)
        models[scales] = (model, description["quantize"]["weight_scales"])
    layers = [m for m in models["per-tensor"][0].modules() if is_int8_layer(m)]
    assert layers and all(len(set(m.weight().q_per_channel_scales().tolist())) == 1 for m in layers)
    assert not any(_onnx_weight_axes(models["per-tensor"][0], data.x_test[:2]))  # one scale each: ORT's fast path
    assert any(_onnx_weight_axes(models["per-channel"][0], data.x_test[:2]))
    accuracy = {s: score(models[s][0], *data.val, CPU)["accuracy"] for s in ("per-channel", "per-tensor")}
    expected = "per-tensor" if accuracy["per-tensor"] >= accuracy["per-channel"] else "per-channel"
    assert models["auto"][1] == expected
    with torch.no_grad():
        assert torch.equal(models["auto"][0](data.x_test), models[expected][0](data.x_test))


def test_weight_methods_store_normalization_scales_at_8_bits_unless_validation_accuracy_drops(digits, tmp_path):
    """A transformer's LayerNorm scales and shifts go to 8 bits after the biases, and reload
    exactly; with bias_bits 32 they stay float32."""
    artifact = train(new_artifact("transformer", digits, seed=0), digits, FitSettings(epochs=3, patience=0), CPU)
    layers = ("blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "norm")
    norms = {f"{layer}.{param}" for layer in layers for param in ("weight", "bias")}
    model, encodings, _, description = _quantize(artifact.artifact, digits, method="kbit", bits="4")
    assert norms <= encodings.keys() and encodings["norm.weight"].bits == 8
    reloaded, _ = load_checkpoint(save_checkpoint(model, description, tmp_path / "kbit", encodings))
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), reloaded(digits.x_test))
    _, floats, _, _ = _quantize(artifact.artifact, digits, method="kbit", bits="4", bias_bits=32)
    assert not norms & floats.keys()
