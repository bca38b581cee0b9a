"""Data-parallel training under torchrun (gloo on the CPU): the same results as one process,
one run logged by rank 0, two "nodes" through c10d rendezvous, and a killed rank fails the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import psutil
import pytest
import torch.distributed.run

from shrinkflow import distributed, tracking
from shrinkflow.config import ShrinkflowError, flag_name
from steps import distill, prune, quantize, train

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = {step.main.config: step for step in (train, prune, quantize, distill)}


def _run_ids() -> set[str]:
    return {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}


def _new_run(before: set[str]) -> mlflow.entities.Run:
    """The one run created since ``before``."""
    new = _run_ids() - before
    assert len(new) == 1, f"expected exactly one new run, got {len(new)}"
    return mlflow.get_run(new.pop())


def _history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def _launch(config) -> str:
    """Run a step's ``execute`` with ``nproc`` > 1: it starts torchrun and returns rank 0's run id."""
    return STEPS[type(config)].execute(config)


SETTINGS = {"model": "cnn", "epochs": 3, "seed": 3}


@pytest.fixture(scope="module")
def single_process_run(quick_train_config) -> str:
    return train.execute(quick_train_config(**SETTINGS))


@pytest.mark.slow  # torchrun: two processes that each import torch and MLflow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_on_the_batches_one_process_does_and_log_one_run(
    quick_train_config, single_process_run, parallel
):
    before = _run_ids()
    run_id = _launch(quick_train_config(**SETTINGS, nproc=2, parallel=parallel))
    run = _new_run(before)
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["shrinkflow.world_size"] == "2" and run.data.tags["shrinkflow.backend"] == "gloo"
    assert run.data.tags["shrinkflow.parallel"] == parallel
    # the same global batches in the same order: the losses agree up to float summation order
    single = single_process_run
    assert _history(run.info.run_id, "train_loss") == pytest.approx(_history(single, "train_loss"), rel=1e-3)
    one = mlflow.get_run(single).data.metrics
    assert abs(run.data.metrics["test_accuracy"] - one["test_accuracy"]) <= 0.01
    assert abs(run.data.metrics["val_accuracy"] - one["val_accuracy"]) <= 0.01
    # fsdp: each process held half of every layer's weights (the first dimension split in two)
    held, total = run.data.metrics["params_per_process"], one["params_per_process"]
    assert held == (total if parallel == "ddp" else _sharded_share(single))


def _sharded_share(run_id: str) -> int:
    """Rank 0's share of the weights when every tensor's first dimension is split in two."""
    artifact, _ = tracking.load_model(run_id)
    return sum(-(-p.shape[0] // 2) * p[0].numel() for p in artifact.model.parameters())


@pytest.mark.slow  # torchrun, three steps
def test_prune_quantize_and_distill_fine_tune_under_torchrun(trained_run_id):
    for config in (
        prune.PruneConfig(run_id=trained_run_id, method="global", sparsity=0.8, epochs=2, device="cpu", nproc=2),
        quantize.QuantizeConfig(run_id=trained_run_id, method="kbit", bits="4", epochs=2, device="cpu", nproc=2),
        distill.DistillConfig(run_id=trained_run_id, student_width=0.5, epochs=2, control=False, nproc=2),
    ):
        before = _run_ids()
        _launch(config)
        run = _new_run(before)
        assert run.info.status == "FINISHED", type(config).__name__
        assert run.data.tags["shrinkflow.world_size"] == "2"
        assert len(_history(run.info.run_id, "train_loss")) == 2  # both fine-tuning epochs, logged once
        assert run.data.metrics["test_accuracy"] > 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # torchrun, two launchers
def test_two_nodes_meet_through_c10d_rendezvous_on_one_machine():
    """What two machines run (README), with both "nodes" on 127.0.0.1."""
    endpoint, job = f"127.0.0.1:{_free_port()}", f"shrinkflow-{uuid.uuid4().hex[:8]}"
    before = _run_ids()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id={job}",
                "-m",
                "steps.train",
                "--model",
                "mlp",
                "--epochs",
                "2",
                "--device",
                "cpu",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    run = _new_run(before)
    assert run.info.status == "FINISHED"
    assert run.data.tags["shrinkflow.world_size"] == "2"
    assert sum(out.strip().splitlines()[-1:] == [run.info.run_id] for out, _ in outputs) == 1  # printed by rank 0


def _rank_process(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.slow  # torchrun
def test_killing_one_rank_ends_the_job_and_fails_the_run():
    before = _run_ids()
    command = [sys.executable, "-m", "steps.train", "--epochs", "500", "--patience", "0", "--device", "cpu"]
    job = subprocess.Popen([*command, "--nproc", "2"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    deadline, victim = time.time() + 120, None
    while time.time() < deadline and victim is None:
        runs = [mlflow.get_run(run_id) for run_id in _run_ids() - before]
        if runs and "val_accuracy" in runs[0].data.metrics:  # training has begun
            victim = _rank_process(psutil.Process(job.pid), 1)
        assert job.poll() is None, job.communicate()[1][-2000:]
        time.sleep(0.2)
    assert victim is not None, "rank 1 never started training"
    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode != 0
    assert time.time() - killed_at < 60
    run = _new_run(before)
    assert run.info.status == "FAILED", stderr[-3000:]


def test_no_step_flag_is_taken_for_one_of_torchruns_own():
    """torchrun reads the flags after ``-m module`` itself first, and takes a prefix of its own
    flags (``--nproc`` for ``--nproc-per-node``) for that flag: a step's flags must not be one."""
    torchrun_flags = [s for a in torch.distributed.run.get_args_parser()._actions for s in a.option_strings]
    for config in STEPS:
        for name in config.__dataclass_fields__:
            flag = flag_name(name)
            clashes = [s for s in torchrun_flags if s.startswith(flag) and name != "nproc"]
            assert clashes == [], f"{config.__name__}.{name}: {flag} abbreviates torchrun's {clashes}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"nproc": 0}, "nproc must be >= 1 (1 = this process alone), got 0"),
        ({"nproc": 4, "batch_size": 3}, "batch_size 3 cannot be shared by 4 processes: pass --batch-size >= 4"),
    ],
)
def test_bad_nproc_is_one_line_before_anything_starts(quick_train_config, overrides, message):
    with pytest.raises(ShrinkflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        distributed.launch_if_asked("steps.train", quick_train_config(**overrides))
    assert "WORLD_SIZE" not in os.environ


@pytest.mark.slow
def test_two_process_ddp_reaches_the_one_process_test_accuracy_at_full_length(quick_train_config):
    """The default training of digits cnn (150 epochs, early stopping), 1 process against 2."""
    full = {"model": "cnn", "epochs": 150, "patience": 30, "seed": 0}
    single = mlflow.get_run(train.execute(quick_train_config(**full))).data.metrics
    before = _run_ids()
    _launch(quick_train_config(**full, nproc=2))
    run = _new_run(before)
    assert run.info.status == "FINISHED"
    assert abs(run.data.metrics["test_accuracy"] - single["test_accuracy"]) <= 0.01
