"""Killed steps leave no RUNNING run; steps started at once on a new SQLite store both finish."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from shrinkflow import tracking
from steps import evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]
LONG_TRAIN = [sys.executable, "-m", "steps.train", "--epochs", "500", "--patience", "0", "--device", "cpu"]


def _as_in_a_terminal() -> None:
    """SIGHUP at its default in the child, as in a terminal: under nohup (a CI runner may use it)
    the child inherits it ignored, and a step keeps an ignored signal ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _start_long_train() -> tuple[subprocess.Popen, str]:
    """A train step that runs for minutes, once its run is RUNNING; return it and the run id."""
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    process = subprocess.Popen(
        LONG_TRAIN, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_as_in_a_terminal,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = mlflow.search_runs(
            search_all_experiments=True, filter_string="attributes.status = 'RUNNING'", output_format="list"
        )
        new = [r for r in runs if r.info.run_id not in before and r.data.metrics.get("val_accuracy") is not None]
        if new:  # training has begun: its run is open
            return process, new[0].info.run_id
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the train step never started training")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_inside_a_step_marks_its_run_killed_and_exits_by_it(sig, capsys, running_runs):
    """What a terminated step does, in this process: the signal arrives while its run is open."""
    from shrinkflow.cli import run_main

    opened = []

    def step() -> str:
        with tracking.step_run("train", {}) as run:
            opened.append(run.info.run_id)
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this ends
        return run.info.run_id

    before = signal.signal(sig, signal.SIG_DFL)  # as in a terminal (under nohup SIGHUP is ignored)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_main(step)
        after = signal.getsignal(sig)
    finally:
        signal.signal(sig, before)
    assert exit_info.value.code == 128 + sig.value
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"error: stopped by {sig.name}; the step's run is marked KILLED"
    )
    assert mlflow.get_run(opened[0]).info.status == "KILLED" and running_runs() == []
    assert after is signal.SIG_DFL  # the step's handlers are gone again


def test_a_step_under_nohup_keeps_ignoring_sighup(capsys):
    """nohup ignores SIGHUP so that closing the terminal does not stop the job: a step keeps it so."""
    from shrinkflow.cli import run_main

    def step() -> str:
        with tracking.step_run("train", {}) as run:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the step goes on
        return run.info.run_id

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        run_main(step)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert mlflow.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow  # a real step in its own process (the test above covers the same path in process)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_step_marks_its_run_killed_and_says_so(sig):
    process, run_id = _start_long_train()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig.value, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"error: stopped by {sig.name}; the step's run is marked KILLED"
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_a_run_left_running_by_a_dead_process_is_marked_killed_by_the_next_step(running_runs, trained_run_id):
    """What a SIGKILLed step leaves behind (its run RUNNING, its process gone), made in process."""
    import socket

    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names no process
    client = mlflow.MlflowClient()
    tags = {tracking.HOST_TAG: socket.gethostname(), tracking.PID_TAG: str(finished.pid)}
    orphan = client.create_run(mlflow.get_run(trained_run_id).info.experiment_id, tags=tags).info.run_id
    alive = client.create_run(
        mlflow.get_run(trained_run_id).info.experiment_id, tags={**tags, tracking.PID_TAG: str(os.getpid())}
    )
    evaluate.execute(evaluate.EvaluateConfig(run_id=trained_run_id, device="cpu"))  # the next step starts
    assert mlflow.get_run(orphan).info.status == "KILLED"
    assert mlflow.get_run(alive.info.run_id).info.status == "RUNNING"  # its process lives: left alone
    client.set_terminated(alive.info.run_id)
    assert running_runs() == []


@pytest.mark.slow  # a real step in its own process, killed mid-training
def test_a_sigkilled_steps_run_is_marked_killed_by_the_next_step(running_runs, trained_run_id):
    process, run_id = _start_long_train()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert mlflow.get_run(run_id).info.status == "RUNNING"  # nothing could mark it
    evaluate.execute(evaluate.EvaluateConfig(run_id=trained_run_id, device="cpu"))  # the next step starts
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert running_runs() == []
    assert tracking.mark_dead_runs_killed() == []


@pytest.mark.slow
def test_two_steps_started_at_once_on_a_new_store_both_finish(tmp_path):
    quick = [sys.executable, "-m", "steps.train", "--epochs", "1", "--device", "cpu"]
    for attempt in range(10):
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / f'store-{attempt}.db'}"}
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        env["MLFLOW_ARTIFACTS_DESTINATION"] = str(tmp_path / "artifacts")
        env["PYTHONPATH"] = str(REPO_ROOT)
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        both = [subprocess.Popen(quick, cwd=tmp_path, env=env, **pipes) for _ in range(2)]
        for process in both:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, f"attempt {attempt}: {stderr[-3000:]}"


_OPEN_STUDY = """
import sys, time
from search.study import open_study
import optuna
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all imported: start together
study = open_study(sys.argv[1], "shared", ["size"], optuna.samplers.RandomSampler(seed=0))
print(study.metric_names)
"""


@pytest.mark.slow  # ~20 s: processes that wait to start together
def test_searches_started_at_once_on_a_new_optuna_file_share_one_study(tmp_path):
    """Without the lock, two searches on a new SQLite file died with ``UNIQUE constraint failed:
    alembic_version.version_num``, or saw the study before its objectives were named."""
    for attempt in range(2):  # without the lock, the first attempt failed
        url = f"sqlite:///{tmp_path / f'optuna-{attempt}.db'}"
        together = str(time.time() + 10)
        argv = [sys.executable, "-c", _OPEN_STUDY, url, together]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        starts = [subprocess.Popen(argv, cwd=REPO_ROOT, **pipes) for _ in range(4)]
        for process in starts:
            stdout, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, f"attempt {attempt}: {stderr[-2000:]}"
            assert stdout.strip() == "['val_accuracy', 'size']"
        import optuna

        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["shared"]


def test_a_step_tags_the_run_mlflow_run_started_for_it_before_it_loads_anything(monkeypatch):
    """Killed while still loading, its run would stay RUNNING with no process named to check."""
    import shrinkflow.cli
    from shrinkflow.cli import JOINED_RUN_ENV, run_main

    watched = []  # the step watches `mlflow run`, its parent (tests/test_mlflow_project.py kills it)
    monkeypatch.setattr(shrinkflow.cli, "die_with_parent", watched.append)
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id
    monkeypatch.setenv(JOINED_RUN_ENV, run_id)
    seen = {}

    def step():  # what a step sees when it starts loading
        seen.update(client.get_run(run_id).data.tags)
        return run_id

    run_main(step)
    assert seen[tracking.HOST_TAG] and seen[tracking.PID_TAG] == str(os.getpid())
    assert watched == [os.getppid()]
    client.set_terminated(run_id, "KILLED")


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only file system (a tmpfs mounted ro): root, which ignores permissions, cannot
    write there either."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a read-only tmpfs needs root: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow  # a real step in its own process, on a read-only mount
@pytest.mark.parametrize("where", ["tracking store", "artifact store"])
def test_a_read_only_store_is_one_line_before_any_training(where, read_only_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    if where == "tracking store":
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{read_only_folder / 'mlflow.db'}"
    if where == "artifact store":
        client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])  # not this process's store
        client.create_experiment("read-only artifacts", artifact_location=str(read_only_folder / "artifacts"))
        env["MLFLOW_EXPERIMENT_NAME"] = "read-only artifacts"
    argv = [sys.executable, "-m", "steps.train", "--epochs", "30", "--patience", "0", "--device", "cpu"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ") and "read-only" in lines[-1].lower(), lines[-1]
    if where == "artifact store":
        (run,) = client.search_runs([client.get_experiment_by_name("read-only artifacts").experiment_id])
        assert run.info.status == "FAILED"
        assert run.data.metrics == {}  # refused before the training (its epochs log metrics), not after it
