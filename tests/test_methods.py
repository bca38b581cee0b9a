"""The contract every registered pruning and quantization method keeps; a new method registered
with ``@pruning_method`` or ``@quantization_method`` is tested here without a line of its own."""

import re
import warnings

import pytest
import torch

from shrinkflow import (
    PRUNING_METHODS,
    QUANTIZATION_METHODS,
    Artifact,
    FitSettings,
    PruneSettings,
    QuantizeSettings,
    ShrinkflowError,
    cost,
    load_dataset,
    new_artifact,
    prune,
    quantize,
    train,
)
from shrinkflow._encoding import is_dynamic_int8_linear, is_int8_layer
from shrinkflow.config import ShrinkflowWarning
from shrinkflow.cost import model_parameters, weight_tensors

CPU = torch.device("cpu")
# What a method needs beyond the defaults to run at all (and briefly).
# threshold and variational read no sparsity (0.9 is its default)
_PRUNE_NEEDS = {"threshold": {"thresholds": "0.05", "sparsity": 0.9}, "variational": {"sparsity": 0.9}}
# Quantizing a pruned model keeps its zero set exactly, with and without fine-tuning: every
# (method, epochs) pair the method accepts
_ZERO_SET_CASES = [
    (m, epochs)
    for m in sorted(QUANTIZATION_METHODS)
    for epochs in (0, 1)
    if not (QUANTIZATION_METHODS[m].fine_tuning == "none" and epochs)
    and not (QUANTIZATION_METHODS[m].fine_tuning == "required" and not epochs)
]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    return train(new_artifact("mlp", digits), digits, FitSettings(epochs=3, patience=0), CPU).artifact


@pytest.fixture(scope="module")
def pruned(trained, digits):
    return prune(trained, digits, PruneSettings(sparsity=0.8, epochs=0), CPU).artifact


def _prune_settings(method, **overrides):
    return PruneSettings(
        **{"method": method, "sparsity": 0.6, "epochs": 2, **_PRUNE_NEEDS.get(method, {}), **overrides}
    )


def _quantize_settings(method, **overrides):
    return QuantizeSettings(method=method, **{**QUANTIZATION_METHODS[method].minimal, **overrides})


def _state(artifact: Artifact) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in artifact.model.state_dict().items()}


def _same_state(before: dict, artifact: Artifact) -> bool:
    after = artifact.model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _reloaded(artifact: Artifact, folder) -> Artifact:
    return Artifact.load(artifact.save(folder))


def _predictions(artifact: Artifact, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return artifact.model.eval()(x)


def _weight_zeros(model) -> dict[str, torch.Tensor]:
    """Positions of the zero weights of every Linear layer, float or int8 (its int8 codes)."""
    zeros = {}
    for name, module in model.named_modules():
        if is_int8_layer(module) or is_dynamic_int8_linear(module):
            weight = module.weight()
            zeros[name] = (weight.int_repr() if weight.is_quantized else weight) == 0
        elif isinstance(module, torch.nn.Linear):
            zeros[name] = module.weight.detach() == 0
    return zeros


# --- pruning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(PRUNING_METHODS))
def test_pruning_leaves_its_input_alone_and_round_trips(method, trained, digits, tmp_path):
    before = _state(trained)
    result = prune(trained, digits, _prune_settings(method), CPU)
    assert _same_state(before, trained)
    reloaded = _reloaded(result.artifact, tmp_path)
    x = digits.x_test
    assert torch.equal(_predictions(result.artifact, x), _predictions(reloaded, x))
    assert cost(reloaded) == cost(result.artifact)
    assert cost(result.artifact)["cost_size_bytes"] < cost(trained)["cost_size_bytes"]


@pytest.mark.parametrize("method", sorted(PRUNING_METHODS))
def test_pruning_keeps_its_zeros_through_fine_tuning_and_reload(method, trained, digits, tmp_path):
    result = prune(trained, digits, _prune_settings(method), CPU)
    model = result.artifact.model
    if PRUNING_METHODS[method].structural:
        params = sum(p.numel() for p in model.parameters())
        assert params == pytest.approx((1 - result.sparsity) * sum(p.numel() for p in trained.model.parameters()))
        assert result.sparsity > 0.3 and not result.masks
    else:
        assert result.masks and 0 < result.sparsity < 1
        for name, mask in result.masks.items():
            assert torch.count_nonzero(model.get_parameter(name)[~mask]) == 0  # fine-tuning revived none
    reloaded = _reloaded(result.artifact, tmp_path).model
    assert all(torch.equal(a, b) for a, b in zip(model_parameters(model), model_parameters(reloaded), strict=True))


@pytest.mark.parametrize("method", sorted(PRUNING_METHODS))
def test_pruning_refuses_bad_input(method, pruned, digits):
    with pytest.raises(ShrinkflowError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        _prune_settings(method, sparsity=1.0)
    quantized = quantize(pruned, digits, QuantizeSettings(bits="4"), CPU).artifact
    with pytest.raises(ShrinkflowError, match=r"already quantized \(storage packed\): prune the float model"):
        prune(quantized, digits, _prune_settings(method), CPU)


# --- quantization ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(QUANTIZATION_METHODS))
def test_quantization_leaves_its_input_alone_and_round_trips(method, trained, digits, tmp_path):
    before = _state(trained)
    result = quantize(trained, digits, _quantize_settings(method), CPU)
    assert _same_state(before, trained)
    assert result.artifact.storage == QUANTIZATION_METHODS[method].storage
    reloaded = _reloaded(result.artifact, tmp_path / "once")
    x = digits.x_test
    assert torch.equal(_predictions(result.artifact, x), _predictions(reloaded, x))
    assert cost(reloaded) == cost(result.artifact)  # saved again: the same bytes, codes included
    assert cost(result.artifact)["cost_size_bytes"] < 0.5 * cost(trained)["cost_size_bytes"]


@pytest.mark.parametrize("method,epochs", _ZERO_SET_CASES)
def test_quantizing_a_pruned_model_keeps_its_zeros_and_is_smaller(method, epochs, pruned, digits, tmp_path):
    zeros_before = _weight_zeros(pruned.model)
    result = quantize(pruned, digits, _quantize_settings(method, epochs=epochs), CPU)
    reloaded = _reloaded(result.artifact, tmp_path)
    assert cost(result.artifact)["cost_size_bytes"] < cost(pruned)["cost_size_bytes"]
    for model in (result.artifact.model, reloaded.model):
        zeros_after = _weight_zeros(model)
        if QUANTIZATION_METHODS[method].prunes:  # the pruned weights stay pruned; it may prune more
            assert all(bool(zeros_after[name][zeros_before[name]].all()) for name in zeros_before)
        else:  # the same zero set: no kept weight becomes zero
            assert all(torch.equal(zeros_after[name], zeros_before[name]) for name in zeros_before)


@pytest.mark.parametrize("method", sorted(QUANTIZATION_METHODS))
def test_quantization_refuses_bad_input(method, trained, digits):
    with pytest.raises(ShrinkflowError, match="bits must be integers in 1-8"):
        _quantize_settings(method, bits="9")
    quantized = quantize(trained, digits, _quantize_settings(method), CPU).artifact
    with pytest.raises(ShrinkflowError, match="already quantized"):
        quantize(quantized, digits, _quantize_settings(method), CPU)


# --- every layer kind ------------------------------------------------------------------------
# The zoo transformer (convolution stem, attention, LayerNorm, a position embedding) and a user's
# GRU, through every method: each round-trips, or refuses the model in one line; whatever it
# leaves float32 or dense is named in its one warning line, never silently.
_LAYER_MODELS = {"transformer": "transformer", "gru": "tests.test_quantize:gru_classifier"}
_REFUSALS = {("gru", "structured"): "structured pruning removes no channel of this model"}


@pytest.fixture(scope="module")
def layer_models(digits):
    settings = FitSettings(epochs=2, patience=0)
    return {
        key: train(new_artifact(spec, digits), digits, settings, CPU).artifact for key, spec in _LAYER_MODELS.items()
    }


def _left_names(artifact: Artifact, method: str) -> set[str]:
    """Weight tensors the method left float32 (quantization) or with no zero (pruning)."""
    weights = weight_tensors(artifact.model)
    if method in QUANTIZATION_METHODS:
        return {name for name in weights if name not in artifact.encodings}
    return {name for name, tensor in weights.items() if bool((tensor != 0).all())}


@pytest.mark.parametrize("method", [*sorted(PRUNING_METHODS), *sorted(QUANTIZATION_METHODS)])
@pytest.mark.parametrize("model", sorted(_LAYER_MODELS))
def test_every_method_round_trips_a_transformer_and_a_gru_or_refuses_in_one_line(
    model, method, layer_models, digits, tmp_path
):
    trained = layer_models[model]
    if method in PRUNING_METHODS:
        run, settings = prune, _prune_settings(method, epochs=1)
    else:
        brief = {"calibration_batches": 1} if method == "static-int8" else {}
        run, settings = quantize, _quantize_settings(method, **brief)
    if (model, method) in _REFUSALS:
        with pytest.raises(ShrinkflowError, match=_REFUSALS[model, method]) as refused:
            run(trained, digits, settings, CPU)
        assert "\n" not in str(refused.value)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(trained, digits, settings, CPU).artifact
    reloaded = _reloaded(result, tmp_path)
    x = digits.x_test[:100]
    assert torch.equal(_predictions(result, x), _predictions(reloaded, x))
    assert cost(reloaded) == cost(result)
    lines = [str(w.message) for w in caught if issubclass(w.category, ShrinkflowWarning)]
    structural = method in PRUNING_METHODS and PRUNING_METHODS[method].structural
    for name in set() if structural else _left_names(result, method):
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        assert any(pattern in line for line in lines), f"{name} left as it was, and no warning says so: {lines}"
