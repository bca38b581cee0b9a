import json

import numpy as np
import pytest
import safetensors.torch
import torch

from shrinkflow.checkpoint import CHECKPOINT_FILE, checkpoint_bytes, load_checkpoint, save_checkpoint, stored_tensors
from shrinkflow.config import ShrinkflowError
from shrinkflow.zoo import MODELS, build_model, describe

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "cnn1d": (1, 40), "lstm": (1, 40), "transformer": (1, 8, 8)}


def _saved(tmp_path, name="mlp"):
    torch.manual_seed(0)
    description = {"architecture": describe(name, SHAPES[name], 10, width=0.5), "class_names": list("0123456789")}
    model = build_model(description["architecture"])
    return model, save_checkpoint(model, description, tmp_path / "ckpt")


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_gives_identical_predictions(tmp_path, name):
    model, folder = _saved(tmp_path, name)
    reloaded, description = load_checkpoint(folder)
    x = torch.randn(7, *SHAPES[name])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert description["architecture"]["name"] == name


def test_checkpoint_is_one_file_of_weights_plus_a_small_header(tmp_path):
    model, folder = _saved(tmp_path)
    assert [p.name for p in folder.iterdir()] == [CHECKPOINT_FILE]
    assert checkpoint_bytes(folder) == (folder / CHECKPOINT_FILE).stat().st_size
    params = (64 * 150 + 150) + (150 * 50 + 50) + (50 * 10 + 10)
    # dense fp32: 4 bytes a parameter, plus a compressed header of description and 6 tensor entries
    assert 4 * params < checkpoint_bytes(folder) < 4 * params + 300


def test_corrupt_weights_give_clear_error(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ShrinkflowError, match="is corrupt: model.shrinkflow: not a Shrinkflow checkpoint"):
        load_checkpoint(folder)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_tensor_is_named_not_loaded(tmp_path, damage):
    _, folder = _saved(tmp_path)
    path = folder / CHECKPOINT_FILE
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[:-100]  # the last tensor loses its end
        expected = r"tensor layers.5.bias is truncated|tensor layers.5.weight is truncated"
    else:
        blob[-100] ^= 0x10  # one bit of the last weight matrix
        expected = "tensor layers.5.weight is damaged"
    path.write_bytes(bytes(blob))
    with pytest.raises(ShrinkflowError, match=expected):
        load_checkpoint(folder)


def test_a_damaged_header_is_refused(tmp_path):
    _, folder = _saved(tmp_path)
    path = folder / CHECKPOINT_FILE
    blob = bytearray(path.read_bytes())
    blob[20] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ShrinkflowError, match="header is truncated or damaged"):
        load_checkpoint(folder)


class _Payload:
    """Anything that is not a tensor: weights_only loading must refuse to unpickle it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_code_in_weights_is_refused(tmp_path):
    _, folder = _saved(tmp_path)
    torch.save({"evil": _Payload()}, folder / CHECKPOINT_FILE)  # a pickle where weights belong
    with pytest.raises(ShrinkflowError, match="is corrupt"):
        load_checkpoint(folder)


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)
        self.decoder = torch.nn.Linear(4, 4)
        self.decoder.weight = self.encoder.weight


def test_tied_weights_survive_the_round_trip(tmp_path, monkeypatch):
    from shrinkflow import checkpoint as _checkpoint

    monkeypatch.setattr(_checkpoint, "build_model", lambda arch: _Tied())
    model = _Tied()
    architecture = {"name": "tied", "input_shape": [4], "num_classes": 4}  # built by the patched build_model
    folder = save_checkpoint(model, {"architecture": architecture}, tmp_path / "tied")
    reloaded, _ = load_checkpoint(folder)
    assert reloaded.decoder.weight is reloaded.encoder.weight
    assert torch.equal(reloaded.encoder.weight, model.encoder.weight)


def test_missing_file_is_named(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / CHECKPOINT_FILE).unlink()
    with pytest.raises(ShrinkflowError, match="missing model.shrinkflow"):
        load_checkpoint(folder)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    _, folder = _saved(tmp_path)
    _, description = load_checkpoint(folder)
    other = build_model(describe("mlp", (1, 8, 8), 10, width=1.0))
    save_checkpoint(other, description, folder)  # wider tensors under the narrower architecture
    with pytest.raises(ShrinkflowError, match="does not match its architecture"):
        load_checkpoint(folder)


def test_version_1_checkpoints_still_load(tmp_path):
    """weights.safetensors + model.json, as Shrinkflow wrote them before format version 2."""
    model, _ = _saved(tmp_path)
    architecture = describe("mlp", SHAPES["mlp"], 10, width=0.5)
    with torch.no_grad():
        model.layers[1].weight[model.layers[1].weight.abs() < 0.05] = 0
    dense, sparse = tmp_path / "v1-dense", tmp_path / "v1-sparse"
    dense.mkdir()
    safetensors.torch.save_model(model, str(dense / "weights.safetensors"))
    (dense / "model.json").write_text(json.dumps({"format_version": 1, "architecture": architecture}))
    sparse.mkdir()
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "layers.1.weight"}
    weight = model.layers[1].weight.detach().flatten()
    state["layers.1.weight::bitmap"] = torch.from_numpy(np.packbits((weight != 0).numpy()))
    state["layers.1.weight::values"] = weight[weight != 0].clone()
    shapes = json.dumps({"layers.1.weight": list(model.layers[1].weight.shape)})
    safetensors.torch.save_file(state, str(sparse / "weights.safetensors"), metadata={"sparse_shapes": shapes})
    description = {"format_version": 1, "architecture": architecture, "storage": "sparse-bitmap"}
    (sparse / "model.json").write_text(json.dumps(description))
    for folder in (dense, sparse):
        reloaded, description = load_checkpoint(folder)
        assert all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
        )
        assert description["format_version"] == 2  # saved again, it is written the version 2 way
    assert description["storage"] == "sparse"


def test_every_tensor_reports_its_entropy_bound():
    model = build_model(describe("mlp", SHAPES["mlp"], 10, width=0.5))
    stored = stored_tensors(model, {"storage": "dense-fp32"})
    assert [t.format for t in stored] == ["raw"] * 6
    assert all(
        t.entropy_bytes == len(t.payload) == 4 * p.numel() for t, p in zip(stored, model.parameters(), strict=True)
    )
