"""Recipes: stages chained by run id under one parent run, a cache that reuses exactly what is
unchanged, and malformed recipes refused before any run."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest

from pipelines import main as pipeline
from pipelines import recipe as recipes
from tests.serving import REPO_ROOT

SMALL = """
stages:
  - name: trained
    step: train
    params: {model: mlp, epochs: 2, patience: 0, device: cpu}
  - name: pruned
    step: prune
    params: {method: global, sparsity: 0.8, epochs: 1, device: cpu}
  - name: quantized
    step: quantize
    params: {method: kbit, bits: 4, device: cpu}
  - name: evaluated
    step: evaluate
    input: pruned
"""


@pytest.fixture
def small_recipe(tmp_path) -> str:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return str(path)


def _stages(parent_id: str):
    table = mlflow.load_table("stages.json", run_ids=[parent_id])
    return {row.stage: row for row in table.itertuples()}


def _run(recipe: str, overrides: str = "", force: bool = False) -> dict:
    return _stages(pipeline.execute(pipeline.PipelineConfig(recipe=recipe, set=overrides, force=force)))


def test_a_recipe_chains_its_stages_under_one_parent(small_recipe):
    parent_id = pipeline.execute(pipeline.PipelineConfig(recipe=small_recipe, force=True))
    stages = _stages(parent_id)
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list"
    )
    assert sorted(c.data.tags["shrinkflow.step"] for c in children) == ["evaluate", "prune", "quantize", "train"]
    pruned = mlflow.get_run(stages["pruned"].run_id)
    assert pruned.data.tags["shrinkflow.source_run_id"] == stages["trained"].run_id
    assert mlflow.get_run(stages["quantized"].run_id).data.tags["shrinkflow.source_run_id"] == pruned.info.run_id
    assert mlflow.get_run(stages["evaluated"].run_id).data.tags["shrinkflow.source_run_id"] == pruned.info.run_id
    assert stages["quantized"].size_reduction > 4  # 4 bits of an 80%-sparse model
    # every row's model timed in one process against the first: the first is 1x, each has an interval
    assert stages["trained"].speedup_bs1 == 1.0 and stages["trained"].latency_bs1_ms > 0
    assert all(row.speedup_bs1_low <= row.speedup_bs1 <= row.speedup_bs1_high for row in stages.values())
    assert stages["evaluated"].latency_bs1_ms == stages["pruned"].latency_bs1_ms  # one model, timed once
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(parent_id)}
    assert {"stages.json", "stages.csv", "stages.png"} <= files


def test_a_second_run_reuses_every_stage_and_a_change_reruns_from_there(small_recipe):
    first = _run(small_recipe)  # runs what no earlier test left in the cache
    again = _run(small_recipe)
    assert all(row.reused for row in again.values())
    assert {name: row.run_id for name, row in again.items()} == {name: row.run_id for name, row in first.items()}
    changed = _run(small_recipe, "pruned.sparsity=0.7")
    assert changed["trained"].reused and changed["trained"].run_id == first["trained"].run_id
    assert not any(changed[name].reused for name in ("pruned", "quantized", "evaluated"))
    # the string "0.7" from the command line and a YAML 0.7 are one typed value: the same key
    assert all(row.reused for row in _run(small_recipe, "pruned.sparsity=0.70").values())


def _checkpoint_file(run_id: str) -> Path:
    """The file the artifact store holds for ``run_id``'s logged model (a local store)."""
    (output,) = mlflow.get_run(run_id).outputs.model_outputs
    location = mlflow.get_logged_model(output.model_id).artifact_location
    return Path(urlparse(location).path) / "artifacts" / "checkpoint" / "model.shrinkflow"


@pytest.mark.parametrize("tamper", ["truncated", pytest.param("deleted", marks=pytest.mark.slow)])
def test_a_cached_stage_whose_checkpoint_was_damaged_runs_again_with_those_after_it(small_recipe, tamper, capsys):
    first = _run(small_recipe)  # what the cache holds now (or runs it)
    path = _checkpoint_file(first["pruned"].run_id)
    if tamper == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    capsys.readouterr()
    again = _run(small_recipe)
    assert again["trained"].reused and again["trained"].run_id == first["trained"].run_id
    assert not any(again[name].reused for name in ("pruned", "quantized", "evaluated"))
    assert again["pruned"].run_id != first["pruned"].run_id
    reason = {"truncated": "SHA-256 differs", "deleted": "model.shrinkflow is missing"}[tamper]
    # (an earlier test's damaged copy of this stage, if any, is passed over with its own line)
    (line,) = [
        line for line in capsys.readouterr().err.splitlines() if f"not reusing run {first['pruned'].run_id}" in line
    ]
    assert f"stage pruned (prune): not reusing run {first['pruned'].run_id}" in line and reason in line
    # the new table is the model's own: the same training seed gives the same pruned model
    assert again["pruned"].test_accuracy == first["pruned"].test_accuracy
    assert again["quantized"].size_bytes == first["quantized"].size_bytes
    assert all(row.reused for row in _run(small_recipe).values())  # the new runs are reusable


def test_edited_step_code_invalidates_its_stages(small_recipe, monkeypatch):
    first = _run(small_recipe)
    version = recipes.code_version
    monkeypatch.setattr(pipeline, "code_version", lambda step: version(step) + ("edited" if step == "quantize" else ""))
    after = _run(small_recipe)
    assert after["trained"].reused and after["pruned"].reused and after["evaluated"].reused
    assert not after["quantized"].reused and after["quantized"].run_id != first["quantized"].run_id


def test_the_code_version_follows_the_files(tmp_path, monkeypatch):
    for folder in ("shrinkflow", "steps"):
        shutil.copytree(recipes._ROOT / folder, tmp_path / folder)
    monkeypatch.setattr(recipes, "_ROOT", tmp_path)
    before = {step: recipes.code_version(step) for step in ("train", "prune")}
    with (tmp_path / "steps" / "prune.py").open("a") as file:
        file.write("\n# edited\n")
    assert recipes.code_version("prune") != before["prune"] and recipes.code_version("train") == before["train"]
    with (tmp_path / "shrinkflow" / "training.py").open("a") as file:
        file.write("\n# edited\n")
    assert recipes.code_version("train") != before["train"]


def test_every_shipped_recipe_loads():
    shipped = sorted(p.stem for p in recipes.RECIPES_DIR.glob("*.yaml"))
    assert shipped == [
        "baseline",
        "deep_compression",
        "distill_quantize",
        "int8_deploy",
        "learned_compression",
        "search_then_deploy",
    ]
    for name in shipped:
        assert recipes.load_recipe(name).stages


BAD = [
    ("stages:\n  - name: a\n    step: train\n   params: {}\n", "line 4: not valid YAML"),
    ("stages: []\n", "needs a non-empty list 'stages'"),
    ("stages:\n  - {name: a, step: fit}\n", "stage 'a': unknown step 'fit': choose train, evaluate"),
    ("stages:\n  - {name: a, step: train, params: {epoch: 3}}\n", "stage 'a' (train): unknown parameter 'epoch'"),
    ("stages:\n  - {name: a, step: train, params: {epochs: many}}\n", "stage 'a': epochs must be int, got 'many'"),
    ("stages:\n  - {name: a, step: train, params: {epochs: 0}}\n", "stage 'a' (train): epochs must be >= 1, got 0"),
    ("stages:\n  - {name: a, step: train}\n  - {name: b, step: prune, input: c}\n  - {name: c, step: train}\n",
     "stage 'b': input 'c' names a later stage"),
    ("stages:\n  - {name: a, step: train}\n  - {name: b, step: prune, input: z}\n",
     "stage 'b': input 'z' names no stage"),
    ("stages:\n  - {name: b, step: prune}\n", "stage 'b' (prune) has no input model"),
    ("stages:\n  - {name: a, step: train}\n  - {name: a, step: train}\n", "two stages are named 'a'"),
    ("stages:\n  - {name: a, step: train, params: {method: x}}\n", "unknown parameter 'method'"),
    ("stages:\n  - {name: a, step: train}\n  - {name: b, step: prune, params: {norm: l2}}\n",
     "stage 'b' (prune): norm applies to method structured only"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", BAD)
def test_a_malformed_recipe_is_one_line_and_starts_no_run(tmp_path, text, message, fails_with_bad_input, all_run_ids):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = len(all_run_ids())
    line = fails_with_bad_input(pipeline.main, ["--recipe", str(path)])
    assert message in line
    assert len(all_run_ids()) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "nosuch"], "recipe 'nosuch' not found"),
        (["--set", "trained"], "override 'trained' must look like stage.param=value"),
        (["--set", "ghost.epochs=3"], "override ghost.epochs: recipe baseline has no stage 'ghost'"),
        (["--set", "trained.model=resnet"], "stage 'trained' (train): unknown model 'resnet'"),
    ],
)
def test_bad_recipe_arguments(argv, message, fails_with_bad_input):
    assert message in fails_with_bad_input(pipeline.main, argv)


@pytest.mark.slow  # torchrun
def test_a_stage_under_torchrun_nests_under_the_recipes_run(tmp_path):
    path = tmp_path / "ddp.yaml"
    path.write_text("stages:\n  - {name: trained, step: train, params: {epochs: 1, device: cpu, nproc: 2}}\n")
    parent_id = pipeline.execute(pipeline.PipelineConfig(recipe=str(path), force=True))
    stage = mlflow.get_run(_stages(parent_id)["trained"].run_id)
    assert stage.data.tags["shrinkflow.world_size"] == "2"
    assert stage.data.tags["mlflow.parentRunId"] == parent_id


@pytest.mark.slow  # two recipes in two processes
def test_two_identical_recipes_started_at_once_run_each_stage_once(small_recipe, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    # a seed no other test uses: no stage of it is in the store yet
    argv = [sys.executable, "-m", "pipelines.main", "--recipe", small_recipe, "--set", "trained.seed=4242"]
    both = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    parents = []
    for process in both:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
        parents.append(stdout.strip().splitlines()[-1])
    tables = [_stages(parent) for parent in parents]
    run_ids = [{name: row.run_id for name, row in table.items()} for table in tables]
    assert run_ids[0] == run_ids[1]
    for name in tables[0]:  # one ran it, the other reused it
        assert sorted([tables[0][name].reused, tables[1][name].reused]) == [False, True]


def test_a_stage_table_whose_models_cannot_be_loaded_keeps_its_rows_without_latency(monkeypatch, capsys):
    import pandas as pd

    from shrinkflow import tracking
    from shrinkflow.config import ShrinkflowError

    def no_model(run_id):
        raise ShrinkflowError(f"run {run_id!r} has no model")

    monkeypatch.setattr(tracking, "load_model", no_model)
    table = pd.DataFrame({"stage": ["trained"], "step": ["train"], "run_id": ["r1"], "reused": [False],
                          "test_accuracy": [0.98], "size_bytes": [202574.0], "macs_effective": [50200.0],
                          "size_reduction": [1.0]})  # fmt: skip
    timed = pipeline._with_latency(table, ["r1"])
    assert timed["latency_bs1_ms"].isna().all() and timed["speedup_bs1"].isna().all()
    assert "warning: the stage table has no latency: run 'r1' has no model" in capsys.readouterr().err
    assert "203 KB" in pipeline.printable(timed)
