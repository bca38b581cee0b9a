"""Knowledge distillation: the loss, the student/control pair and the distill step."""

import math

import mlflow
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from shrinkflow import DistillSettings, distill, new_artifact
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import load_dataset
from shrinkflow.distillation import distillation_loss, input_noise, student_architecture
from shrinkflow.zoo import describe
from steps import distill as distill_step
from steps import evaluate

CPU = torch.device("cpu")


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: len(x)]


def test_loss_is_hard_cross_entropy_at_alpha_zero():
    student, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    loss = distillation_loss(_Fixed(torch.randn(4, 3)), temperature=3.0, alpha=0.0, label_smoothing=0.0)
    assert loss(student, targets, torch.zeros(4, 1)) == pytest.approx(F.cross_entropy(student, targets).item())


def test_soft_term_is_t_squared_kl_from_teacher_to_student():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    temperature = 2.0
    loss = distillation_loss(_Fixed(teacher), temperature, alpha=1.0, label_smoothing=0.0)
    p_teacher = F.softmax(teacher / temperature, 1)[0]
    p_student = F.softmax(student / temperature, 1)[0]
    kl = sum(p * math.log(p / q) for p, q in zip(p_teacher.tolist(), p_student.tolist(), strict=True))
    assert loss(student, torch.tensor([0]), torch.zeros(1, 1)).item() == pytest.approx(temperature**2 * kl, rel=1e-5)


def test_soft_term_vanishes_when_student_matches_teacher():
    logits = torch.randn(5, 4)
    loss = distillation_loss(_Fixed(logits), 4.0, alpha=1.0, label_smoothing=0.0)
    assert loss(logits.clone(), torch.zeros(5, dtype=torch.long), torch.zeros(5, 1)).item() == pytest.approx(
        0, abs=1e-6
    )


def test_teacher_gets_no_gradient():
    teacher = nn.Linear(2, 3)
    student_logits = torch.randn(4, 3, requires_grad=True)
    loss = distillation_loss(teacher, 2.0, 0.5, 0.0)(student_logits, torch.tensor([0, 1, 2, 0]), torch.randn(4, 2))
    loss.backward()
    assert teacher.weight.grad is None and student_logits.grad is not None


def _untrained_teacher(data):
    return new_artifact("mlp", data, seed=0)


def test_distill_trains_student_and_control_from_the_same_start():
    data = load_dataset("digits")
    teacher = _untrained_teacher(data)
    settings = DistillSettings(student_width=0.1, epochs=3)
    result = distill(teacher, data, settings, CPU)
    student, control = result.artifact.model, result.control.model
    assert result.artifact.description["architecture"]["params"] == {"hidden_sizes": [30, 10]}
    assert sum(p.numel() for p in student.parameters()) == (64 * 30 + 30) + (30 * 10 + 10) + (10 * 10 + 10)
    assert not torch.equal(student.layers[1].weight, control.layers[1].weight)  # the teacher made a difference
    no_teacher = distill(teacher, data, DistillSettings(student_width=0.1, epochs=3, alpha=0.0), CPU)
    assert torch.equal(no_teacher.artifact.model.layers[1].weight, no_teacher.control.model.layers[1].weight)


def test_input_noise_is_seeded_and_has_the_asked_spread():
    inputs = torch.zeros(4000, 1, 40)
    first, again = input_noise(0.5, seed=3), input_noise(0.5, seed=3)
    noisy = first(inputs)
    assert noisy.std().item() == pytest.approx(0.5, rel=0.02)
    assert torch.equal(noisy, again(inputs))  # same seed, same noise
    assert not torch.equal(first(inputs), noisy)  # fresh noise every batch


def test_student_and_control_see_the_same_noise():
    data = load_dataset("digits")
    teacher = _untrained_teacher(data)
    noisy = distill(teacher, data, DistillSettings(student_width=0.1, epochs=2, alpha=0.0, input_noise=0.3), CPU)
    student = noisy.artifact.model
    assert torch.equal(student.layers[1].weight, noisy.control.model.layers[1].weight)  # alpha 0: only the noise
    quiet = distill(teacher, data, DistillSettings(student_width=0.1, epochs=2, alpha=0.0, control=False), CPU)
    assert quiet.control is None
    assert not torch.equal(student.layers[1].weight, quiet.artifact.model.layers[1].weight)


def test_distill_step_logs_student_gain_and_table(trained_run_id):
    cfg = distill_step.DistillConfig(run_id=trained_run_id, student_width=0.25, epochs=3, device="cpu")
    run = mlflow.get_run(distill_step.execute(cfg))
    metrics = run.data.metrics
    assert metrics["distill_gain_pp"] == pytest.approx(
        (metrics["test_accuracy"] - metrics["control_test_accuracy"]) * 100
    )
    assert metrics["teacher_test_accuracy"] == mlflow.get_run(trained_run_id).data.metrics["test_accuracy"]
    assert metrics["cost_params"] == (64 * 75 + 75) + (75 * 25 + 25) + (25 * 10 + 10)
    assert metrics["student_param_ratio"] == pytest.approx(metrics["cost_params"] / 50_610)
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"distillation.json", "distillation.csv"} <= files
    evaluated = mlflow.get_run(evaluate.execute(evaluate.EvaluateConfig(run_id=run.info.run_id, device="cpu")))
    assert evaluated.data.metrics["test_accuracy"] == metrics["test_accuracy"]


def three_outputs(input_shape, num_classes):
    """A user student that ignores num_classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


class TestBadInput:
    @pytest.mark.parametrize("temperature", ["0", "-1"])
    def test_temperature_not_positive(self, fails_with_bad_input, temperature):
        line = fails_with_bad_input(distill_step.main, ["--run-id", "r", "--temperature", temperature])
        assert line == f"error: temperature must be > 0, got {float(temperature)}"

    @pytest.mark.parametrize("alpha", ["-0.1", "1.5"])
    def test_alpha_outside_unit_interval(self, fails_with_bad_input, alpha):
        line = fails_with_bad_input(distill_step.main, ["--run-id", "r", "--alpha", alpha])
        assert f"alpha must be in [0, 1], got {float(alpha)}" in line

    def test_negative_input_noise(self, fails_with_bad_input):
        line = fails_with_bad_input(distill_step.main, ["--run-id", "r", "--input-noise", "-0.1"])
        assert line == "error: input_noise must be >= 0, got -0.1"

    def test_student_with_other_output_size(self, fails_with_bad_input, trained_run_id):
        line = fails_with_bad_input(
            distill_step.main,
            ["--run-id", trained_run_id, "--student", "test_distill:three_outputs", "--student-width", "1"],
        )
        assert line == (
            "error: model 'test_distill:three_outputs' returns (2, 3) for a batch of 2 samples of shape (1, 8, 8); "
            "expected logits of shape (2, 10) (one per class)"
        )

    def test_bad_control_flag(self, capsys):
        with pytest.raises(SystemExit):
            distill_step.main(["--run-id", "r", "--control", "maybe"])
        assert "expected true or false" in capsys.readouterr().err

    def test_unknown_student(self):
        with pytest.raises(ShrinkflowError, match="unknown model 'tiny'"):
            student_architecture(DistillSettings(student="tiny"), describe("mlp", (1, 8, 8), 10))


def test_an_int8_teacher_teaches(trained_run_id):
    """Its parameters() are empty (packed int8 weights): the report counts them from its cost."""
    from steps import quantize as quantize_step

    teacher = quantize_step.execute(quantize_step.QuantizeConfig(run_id=trained_run_id, method="dynamic-int8",
                                                                 device="cpu"))  # fmt: skip
    run_id = distill_step.execute(distill_step.DistillConfig(run_id=teacher, epochs=1, control=False, device="cpu"))
    metrics = mlflow.get_run(run_id).data.metrics
    assert 0 < metrics["student_param_ratio"] < 1
