import pytest
import torch

from shrinkflow.checkpoint import DESCRIPTION_FILE, WEIGHTS_FILE, checkpoint_bytes, load_checkpoint, save_checkpoint
from shrinkflow.config import ShrinkflowError
from shrinkflow.zoo import MODELS, build_model, describe

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "cnn1d": (1, 40), "lstm": (1, 40)}


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


def test_checkpoint_bytes_counts_weights_and_description(tmp_path):
    _, folder = _saved(tmp_path)
    expected = (folder / WEIGHTS_FILE).stat().st_size + (folder / DESCRIPTION_FILE).stat().st_size
    assert checkpoint_bytes(folder) == expected
    # fp32 weights dominate: 4 bytes per parameter plus a header of under 100 bytes per tensor
    params = (64 * 150 + 150) + (150 * 50 + 50) + (50 * 10 + 10)
    assert 4 * params < (folder / WEIGHTS_FILE).stat().st_size < 4 * params + 6 * 100


def test_corrupt_weights_give_clear_error(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ShrinkflowError, match="is corrupt"):
        load_checkpoint(folder)


class _Payload:
    """Anything that is not a tensor: weights_only loading must refuse to unpickle it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_code_in_weights_is_refused(tmp_path):
    _, folder = _saved(tmp_path)
    torch.save({"evil": _Payload()}, folder / WEIGHTS_FILE)  # a pickle where weights belong
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
    folder = save_checkpoint(model, {"architecture": {}}, tmp_path / "tied")
    reloaded, _ = load_checkpoint(folder)
    assert reloaded.decoder.weight is reloaded.encoder.weight
    assert torch.equal(reloaded.encoder.weight, model.encoder.weight)


def test_missing_file_is_named(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / DESCRIPTION_FILE).unlink()
    with pytest.raises(ShrinkflowError, match="missing model.json"):
        load_checkpoint(folder)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    _, folder = _saved(tmp_path)
    other = build_model(describe("mlp", (1, 8, 8), 10, width=1.0))
    save_checkpoint(other, {}, tmp_path / "other")
    (tmp_path / "other" / WEIGHTS_FILE).replace(folder / WEIGHTS_FILE)
    with pytest.raises(ShrinkflowError, match="does not match its architecture"):
        load_checkpoint(folder)
