"""The technique registry: one registration and a short step put a new technique in the CLI,
the search space and recipes, with no edit anywhere else.

The technique here, ``round``, is registered by this test only: it rounds every weight to
``decimals`` decimal places (a crude fixed point that makes nothing smaller: it stands for any
technique).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field, replace

import mlflow
import numpy as np
import optuna
import pytest
import torch

from pipelines import main as pipeline
from pipelines.recipe import known_steps, load_recipe, makes_model
from search.space import load_space
from search.trial import plan_trial, run_trial
from shrinkflow import ShrinkflowError, load_dataset, new_artifact, tracking
from shrinkflow.cli import entry_point
from shrinkflow.techniques import TECHNIQUES, Technique, register_technique, technique
from steps import Outcome, SourceOptions, compress_step

CPU = torch.device("cpu")


# --- the library module of the new technique ----------------------------------------------------
@dataclass(frozen=True)
class RoundSettings:
    decimals: int = field(default=2, metadata={"help": "decimal places kept, 0-6"})

    def __post_init__(self):
        if not 0 <= self.decimals <= 6:
            raise ShrinkflowError(f"decimals must be in 0-6, got {self.decimals}")


@dataclass
class RoundResult:
    artifact: object


def round_weights(artifact, data, settings: RoundSettings, device, *, on_epoch=None) -> RoundResult:
    rounded = artifact.copy()
    with torch.no_grad():
        for parameter in rounded.model.parameters():
            parameter.copy_(torch.round(parameter, decimals=settings.decimals))
    return RoundResult(rounded)


def check_rounding(artifact, settings: RoundSettings, data) -> None:
    artifact.require_float("round")


ROUND = Technique("round", RoundSettings, round_weights, check_rounding, made="rounded")


# --- its step: the config and what only it reports ----------------------------------------------
def _step_module() -> types.ModuleType:
    @dataclass(frozen=True)
    class RoundConfig(SourceOptions, RoundSettings):
        """Round a logged model's weights."""

    def report(outcome: Outcome) -> dict[str, float]:
        print(outcome.summary(f"rounding to {outcome.cfg.decimals} decimals"), file=sys.stderr)
        return outcome.before_after_metrics()

    module = types.ModuleType("steps.round")
    module.__file__ = __file__
    module.execute = lambda cfg: compress_step(cfg, technique("round"), report)
    module.main = entry_point(RoundConfig, module.execute)
    return module


@pytest.fixture
def round_step(monkeypatch):
    monkeypatch.setitem(TECHNIQUES, "round", ROUND)
    module = _step_module()
    monkeypatch.setitem(sys.modules, "steps.round", module)
    return module


def _weights(run_id: str) -> list[np.ndarray]:
    artifact, _ = tracking.load_model(run_id)
    return [p.detach().numpy() for p in artifact.model.parameters()]


def test_the_built_in_techniques_are_registered_in_the_order_a_trial_runs_them():
    assert list(TECHNIQUES)[:3] == ["distill", "prune", "quantize"]
    assert technique("prune").applies["thresholds"] == ("threshold",)  # from the methods' registered reads
    assert technique("quantize").applies["bits"] == ("kbit", "kmeans", "sws")
    with pytest.raises(ShrinkflowError, match="unknown technique 'fold': choose distill, prune, quantize"):
        technique("fold")
    with pytest.raises(ShrinkflowError, match="a technique named 'prune' is registered already"):
        register_technique(replace(technique("prune")))


def test_a_registered_technique_runs_as_a_step_from_the_cli(round_step, trained_run_id, capsys, fails_with_bad_input):
    round_step.main(["--run-id", trained_run_id, "--decimals", "1", "--device", "cpu"])
    printed = capsys.readouterr()
    run_id = printed.out.strip().splitlines()[-1]
    assert "rounding to 1 decimals: test_accuracy " in printed.err
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["shrinkflow.step"] == "round"
    assert run.data.tags["shrinkflow.source_run_id"] == trained_run_id
    assert {"test_accuracy_before", "test_accuracy", "cost_size_bytes", "speedup_bs1"} <= set(run.data.metrics)
    for before, after in zip(_weights(trained_run_id), _weights(run_id), strict=True):
        np.testing.assert_allclose(after, np.round(before, 1), atol=1e-6)  # saved, reloaded, rounded
    line = fails_with_bad_input(round_step.main, ["--run-id", trained_run_id, "--decimals", "9"])
    assert line == "error: decimals must be in 0-6, got 9"


def test_a_registered_technique_is_a_stage_of_the_search_space(round_step, tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("quantize: {enabled: false}\nround: {decimals: {choices: [0, 1]}}\n")
    space = load_space(space_file)
    data = load_dataset("digits")
    baseline = new_artifact("mlp", data)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    planned = plan_trial(trial, baseline, space)
    assert list(planned) == ["round"] and planned["round"].decimals == trial.params["round.decimals"]
    artifact, stopped = run_trial(planned, baseline, data, CPU, 0.0, 0.0, record := {})
    assert stopped == "" and "val_accuracy" in record["round"]
    weights = next(artifact.model.parameters()).detach()
    assert torch.equal(weights, torch.round(weights, decimals=planned["round"].decimals))
    space_file.write_text("round: {decimals: {choices: [1, 9]}}\n")
    with pytest.raises(ShrinkflowError, match=r"round.decimals=9 is invalid: decimals must be in 0-6"):
        load_space(space_file)


def test_a_registered_technique_is_a_step_of_recipes(round_step, tmp_path):
    assert "round" in known_steps() and makes_model("round")
    recipe = tmp_path / "rounded.yaml"
    recipe.write_text(
        "stages:\n"
        "  - {name: trained, step: train, params: {model: mlp, epochs: 1, patience: 0, device: cpu}}\n"
        "  - {name: rounded, step: round, params: {decimals: 1, device: cpu}}\n"
        "  - {name: evaluated, step: evaluate}\n"
    )
    assert [stage.inputs for stage in load_recipe(str(recipe)).stages] == [(), ("trained",), ("rounded",)]
    parent_id = pipeline.execute(pipeline.PipelineConfig(recipe=str(recipe), force=True))
    stages = {row.stage: row for row in mlflow.load_table("stages.json", run_ids=[parent_id]).itertuples()}
    rounded = mlflow.get_run(stages["rounded"].run_id)
    assert rounded.data.tags["shrinkflow.source_run_id"] == stages["trained"].run_id
    assert mlflow.get_run(stages["evaluated"].run_id).data.tags["shrinkflow.source_run_id"] == rounded.info.run_id
    recipe.write_text("stages:\n  - {name: r, step: round, params: {run_id: x, digits: 1}}\n")
    with pytest.raises(ShrinkflowError, match="unknown parameter 'digits': round takes decimals, device, nproc"):
        load_recipe(str(recipe))


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_every_registered_technique_keeps_the_contract(name, digits_mlp):
    """Its source untouched, its model saved and reloaded predicting exactly as made, bad input
    refused by its settings in one line (a ShrinkflowError), for each technique of the registry."""
    source, data = digits_mlp
    registered = technique(name)
    before = {key: value.clone() for key, value in source.model.state_dict().items()}
    settings = registered.settings(epochs=1)
    registered.check(source, settings, data)
    made = registered.apply(source, data, settings, CPU).artifact
    assert all(torch.equal(before[key], value) for key, value in source.model.state_dict().items())
    reloaded = made.reloaded()
    with torch.no_grad():
        assert torch.equal(reloaded.model.eval()(data.x_test), made.model.eval()(data.x_test))
    with pytest.raises(ShrinkflowError):
        registered.settings(epochs=-1)
