import pytest
import torch
from torch import nn

from shrinkflow.config import ShrinkflowError
from shrinkflow.data import load_dataset
from shrinkflow.runtime import resolve_device, seed_everything
from shrinkflow.training import FitSettings, fit, score
from shrinkflow.zoo import build_model, describe

CPU = torch.device("cpu")


def _settings(**overrides):
    values = dict(epochs=5, batch_size=100, lr=1e-2, weight_decay=0.1, label_smoothing=0.1, patience=0, seed=0)
    values.update(overrides)
    return FitSettings(**values)


def _fit(settings, model_name="mlp"):
    data = load_dataset("digits")
    seed_everything(settings.seed)
    model = build_model(describe(model_name, data.input_shape, data.num_classes))
    history = []
    result = fit(model, data.train, data.val, settings, CPU, on_epoch=lambda e, m: history.append(m))
    return model, result, history, data


def test_fit_learns_digits_in_a_few_epochs():
    model, result, history, data = _fit(_settings())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert score(model, data.x_test, data.y_test, CPU)["accuracy"] > 0.9
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in history)


def test_same_seed_gives_identical_weights_and_metrics():
    first, _, history_a, _ = _fit(_settings(epochs=2))
    second, _, history_b, _ = _fit(_settings(epochs=2))
    assert history_a == history_b
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_other_seed_gives_other_weights():
    first, *_ = _fit(_settings(epochs=1))
    second, *_ = _fit(_settings(epochs=1, seed=1))
    assert not torch.equal(first.state_dict()["layers.1.weight"], second.state_dict()["layers.1.weight"])


def test_early_stopping_without_improvement():
    # lr so small that val accuracy never improves after epoch 1
    _, result, history, _ = _fit(_settings(epochs=50, lr=1e-12, weight_decay=0.0, patience=3))
    assert result.stopped_early and result.epochs_run == 4 and len(history) == 4


def test_model_keeps_best_validation_weights():
    model, result, history, data = _fit(_settings(epochs=6))
    assert score(model, data.x_val, data.y_val, CPU)["accuracy"] == pytest.approx(result.best_val_accuracy)


def test_cosine_schedule_decays_learning_rate():
    _, _, history, _ = _fit(_settings(epochs=4))
    rates = [h["lr"] for h in history]
    assert rates[0] == pytest.approx(1e-2) and rates == sorted(rates, reverse=True)


def test_unknown_device_lists_choices():
    with pytest.raises(ShrinkflowError, match="unknown device 'tpu'.*auto, cpu, cuda, mps"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ShrinkflowError, match="CUDA is not available"):
        resolve_device("cuda")


def test_training_refuses_an_empty_validation_split():
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    with pytest.raises(ShrinkflowError, match="the val split is empty"):
        fit(torch.nn.Linear(3, 2), (x, y), (x[:0], y[:0]), _settings(epochs=1), CPU)


def test_running_out_of_memory_is_one_line_naming_the_batch_size():
    class Hungry(nn.Module):  # asks the CPU allocator for ~40 TB on its first batch
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x) + torch.empty(10**7, 10**6)[:1, :2].sum()

    x, y = torch.zeros(20, 4), torch.zeros(20, dtype=torch.long)
    with pytest.raises(ShrinkflowError, match="ran out of cpu memory at batch_size 10: pass a smaller --batch-size"):
        fit(Hungry(), (x, y), (x, y), FitSettings(epochs=1, batch_size=10), torch.device("cpu"))
