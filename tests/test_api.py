"""The in-memory API: train → distill → prune → quantize → cost on one model, no MLflow, no run
id — and the very numbers the steps log when chained by run id."""

import subprocess
import sys
import textwrap

import mlflow
import pytest
import torch

import shrinkflow
from shrinkflow import (
    DistillSettings,
    FitSettings,
    PruneSettings,
    QuantizeSettings,
    cost,
    distill,
    load_dataset,
    new_artifact,
    prune,
    quantize,
    score,
    train,
)
from steps import distill as distill_step
from steps import prune as prune_step
from steps import quantize as quantize_step

CPU = torch.device("cpu")
DISTILL = {"student_width": 0.5, "epochs": 2, "input_noise": 0.1}
PRUNE = {"method": "gradual", "sparsity": 0.7, "epochs": 3}
QUANTIZE = {"method": "kbit", "bits": "4", "epochs": 1}


def _chain_in_memory(data):
    """The four techniques on one artifact; settings as the conftest's quick train step."""
    trained = train(new_artifact("mlp", data, seed=0), data, FitSettings(epochs=4, patience=0), CPU).artifact
    student = distill(trained, data, DistillSettings(**DISTILL), CPU).artifact
    pruned = prune(student, data, PruneSettings(**PRUNE), CPU).artifact
    quantized = quantize(pruned, data, QuantizeSettings(**QUANTIZE), CPU).artifact
    return {"train": trained, "distill": student, "prune": pruned, "quantize": quantized}


def _chain_of_steps(train_run_id):
    runs = {"train": train_run_id}
    runs["distill"] = distill_step.execute(distill_step.DistillConfig(run_id=runs["train"], device="cpu", **DISTILL))
    runs["prune"] = prune_step.execute(prune_step.PruneConfig(run_id=runs["distill"], device="cpu", **PRUNE))
    config = quantize_step.QuantizeConfig(run_id=runs["prune"], device="cpu", **QUANTIZE)
    runs["quantize"] = quantize_step.execute(config)
    return {step: mlflow.get_run(run_id).data.metrics for step, run_id in runs.items()}


def test_in_memory_chain_gives_the_numbers_of_the_steps_chained_by_run_id(trained_run_id):
    data = load_dataset("digits")
    artifacts = _chain_in_memory(data)
    logged = _chain_of_steps(trained_run_id)
    for step, artifact in artifacts.items():
        measured = {**cost(artifact), "test_accuracy": score(artifact.model, data.x_test, data.y_test, CPU)["accuracy"]}
        assert measured == {name: logged[step][name] for name in measured}, step
    assert (
        logged["quantize"]["cost_size_bytes"] < logged["prune"]["cost_size_bytes"] < logged["train"]["cost_size_bytes"]
    )


@pytest.mark.slow  # a fresh interpreter; tests/test_layers.py checks the same statically (imports)
def test_the_library_runs_without_mlflow():
    script = textwrap.dedent(
        """
        import sys, torch
        from shrinkflow import *
        data, cpu = load_dataset("digits"), torch.device("cpu")
        a = train(new_artifact("mlp", data), data, FitSettings(epochs=1), cpu).artifact
        a = prune(a, data, PruneSettings(method="structured", sparsity=0.5, epochs=1), cpu).artifact
        a = quantize(a, data, QuantizeSettings(method="static-int8", calibration_batches=2), cpu).artifact
        print(int(cost(a)["cost_size_bytes"]), "mlflow" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    size, mlflow_imported = result.stdout.split()
    assert int(size) > 0 and mlflow_imported == "False"


def test_public_names_are_exported():
    assert set(shrinkflow.__all__) <= set(dir(shrinkflow))
    assert {"Artifact", "prune", "quantize", "distill", "train", "cost"} <= set(shrinkflow.__all__)


@pytest.mark.parametrize(
    "settings,message",
    [
        (lambda: FitSettings(epochs=0), "epochs must be >= 1, got 0"),
        (lambda: PruneSettings(epochs=-1), "epochs must be >= 0, got -1"),
        (lambda: QuantizeSettings(batch_size=0), "batch_size must be >= 1, got 0"),
        (lambda: DistillSettings(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\), got 1.0"),
        (lambda: PruneSettings(lr=0.0), "need lr > 0 and weight_decay >= 0"),
    ],
)
def test_one_fine_tuning_check_guards_every_technique(settings, message):
    with pytest.raises(shrinkflow.ShrinkflowError, match=message):
        settings()
