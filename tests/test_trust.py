"""A saved model cannot choose the code that runs when it is loaded (shrinkflow._imports)."""

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from shrinkflow import Artifact, ShrinkflowError, _imports, load_dataset, new_artifact
from shrinkflow.data import dataset_of
from shrinkflow.zoo import build_model, describe

SPEC = "test_trust:small_factory"


def small_factory(input_shape, num_classes):
    """A user model factory."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """As in a new process: nothing the user named yet, no allowlist."""
    monkeypatch.setattr(_imports, "_TRUSTED_HERE", set())
    monkeypatch.delenv(_imports.TRUST_ENV, raising=False)


def _saved(tmp_path, description_edit=None, name="mlp"):
    data = load_dataset("digits")
    artifact = new_artifact(name, data, seed=0)
    if description_edit:
        description_edit(artifact.description)
    return artifact.save(tmp_path / "model"), artifact


def test_a_tampered_architecture_cannot_import_or_call_anything(tmp_path):
    def tamper(description):
        description["architecture"]["name"] = "os:abort"

    folder, _ = _saved(tmp_path, tamper)
    with pytest.raises(ShrinkflowError, match="names the model factory 'os:abort'.*SHRINKFLOW_TRUST_CODE=os:abort"):
        Artifact.load(folder)  # os.abort would have killed this test process


def test_a_tampered_dataset_spec_cannot_call_anything(tmp_path):
    handlers = list(logging.root.handlers)

    def tamper(description):
        description["dataset"]["spec"] = "logging:basicConfig"

    folder, _ = _saved(tmp_path, tamper)
    loaded = Artifact.load(folder)  # the weights load; the dataset is what refuses
    with pytest.raises(ShrinkflowError, match="names the dataset function 'logging:basicConfig'"):
        dataset_of(loaded.description)
    assert logging.root.handlers == handlers  # basicConfig never ran


def test_a_user_factory_runs_when_named_here_or_allowed_by_the_environment(tmp_path, monkeypatch):
    data = load_dataset("digits")
    arch = describe(SPEC, data.input_shape, data.num_classes)  # the user names it: trusted here
    model = build_model(arch)
    artifact = Artifact(model, {**new_artifact("mlp", data, seed=0).description, "architecture": arch})
    folder = artifact.save(tmp_path / "model")
    monkeypatch.setattr(_imports, "_TRUSTED_HERE", set())  # a later process, e.g. `evaluate --run-id`
    with pytest.raises(ShrinkflowError, match="SHRINKFLOW_TRUST_CODE=test_trust:small_factory"):
        Artifact.load(folder)
    for allowed in (SPEC, "other:thing, test_trust:*"):
        monkeypatch.setenv(_imports.TRUST_ENV, allowed)
        reloaded = Artifact.load(folder)
        x = torch.as_tensor(data.x_val[:4])
        torch.testing.assert_close(reloaded.model(x), model(x))
    monkeypatch.setenv(_imports.TRUST_ENV, "test_trust:other_factory,test_trus:*")
    with pytest.raises(ShrinkflowError, match="trust"):
        Artifact.load(folder)


def _local_checkpoint_file(run_id: str):
    """The checkpoint file of the run's logged model, where the local artifact store keeps it."""
    from urllib.parse import urlparse

    import mlflow

    model = mlflow.get_logged_model(mlflow.get_run(run_id).outputs.model_outputs[-1].model_id)
    return next((urlparse(model.artifact_location).path / Path("artifacts/checkpoint")).glob("model.*"))


def test_a_bit_flipped_in_the_artifact_store_is_refused(trained_run_id, fails_with_bad_input):
    from shrinkflow import tracking
    from steps import evaluate

    path = _local_checkpoint_file(trained_run_id)
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x04
    path.write_bytes(bytes(flipped))
    try:
        refused = f"model of run '{trained_run_id}' cannot be used: its checkpoint is not the one it logged"
        with pytest.raises(ShrinkflowError, match=refused):
            tracking.load_model(trained_run_id)
        line = fails_with_bad_input(evaluate.main, ["--run-id", trained_run_id])
        assert "is not the one it logged" in line
    finally:
        path.write_bytes(original)
    tracking.load_model(trained_run_id)  # restored: loads again


def _logged_model_folder(run_id: str) -> Path:
    from urllib.parse import urlparse

    import mlflow

    model = mlflow.get_logged_model(mlflow.get_run(run_id).outputs.model_outputs[-1].model_id)
    return Path(urlparse(model.artifact_location).path) / "artifacts"


def _flip_a_weight_bit(trained_run_id: str, changed: str) -> tuple[Path, bytes, str, str]:
    """One weight's lowest bit flipped in the logged model's ``changed`` file: its path, the
    original bytes, the model's URI and the refusal expected."""
    import mlflow

    folder = _logged_model_folder(trained_run_id)
    path = folder / {"onnx": "model.onnx", "checkpoint": "checkpoint/model.shrinkflow"}[changed]
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) * 3 // 4] ^= 0x01  # inside the weights
    path.write_bytes(bytes(flipped))
    uri = f"models:/{mlflow.get_run(trained_run_id).outputs.model_outputs[-1].model_id}"
    return path, original, uri, f"the model's {changed} differs from the SHA-256 digest recorded when it was logged"


@pytest.mark.parametrize("changed", ["onnx", "checkpoint"])
def test_a_weight_changed_in_the_artifact_store_is_not_served(trained_run_id, changed):
    """pyfunc checks the digests the model recorded when it was logged: a changed file is refused
    in one line (not served with the weights it holds)."""
    import mlflow

    path, original, uri, expected = _flip_a_weight_bit(trained_run_id, changed)
    try:
        with pytest.raises(ShrinkflowError, match=expected):
            mlflow.pyfunc.load_model(uri)
    finally:
        path.write_bytes(original)
    assert mlflow.pyfunc.load_model(uri).predict(load_dataset("digits").x_test[:2].numpy()).shape == (2,)


@pytest.mark.slow  # starts mlflow models serve in its own process
def test_mlflow_models_serve_refuses_a_changed_weight(trained_run_id):
    """``mlflow models serve`` loads through the same check as pyfunc."""
    import os
    import subprocess
    import sys

    from tests.serving import REPO_ROOT

    path, original, uri, expected = _flip_a_weight_bit(trained_run_id, "onnx")
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", "0"]  # fmt: skip
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    try:
        server = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        path.write_bytes(original)
    assert server.returncode != 0 and expected in server.stderr


def test_a_model_logged_without_a_digest_loads_with_a_warning(trained_run_id, capsys):
    import mlflow

    from shrinkflow import tracking

    model_id = mlflow.get_run(trained_run_id).outputs.model_outputs[-1].model_id
    digest = mlflow.get_logged_model(model_id).tags[tracking.DIGEST_TAG]
    mlflow.delete_logged_model_tag(model_id, tracking.DIGEST_TAG)  # as logged before digests were recorded
    try:
        capsys.readouterr()
        artifact, _ = tracking.load_model(trained_run_id)
        assert "records no checkpoint digest" in capsys.readouterr().err
        assert artifact.model is not None
    finally:
        mlflow.set_logged_model_tags(model_id, {tracking.DIGEST_TAG: digest})
    tracking.load_model(trained_run_id)
    assert "records no checkpoint digest" not in capsys.readouterr().err
