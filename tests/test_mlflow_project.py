"""`mlflow run` on this project, as a user types it (subprocesses, a few seconds each)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _mlflow_run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if "--experiment-name" in args:  # the tests' own experiment would conflict with the one named
        env.pop("MLFLOW_EXPERIMENT_ID")
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_train_then_evaluate_via_mlflow_run():
    trained = _mlflow_run("-e", "train", "-P", "model=cnn", "-P", "dataset=digits", "-P", "epochs=3")
    assert trained.returncode == 0, trained.stderr[-2000:]
    train_id = trained.stdout.strip().splitlines()[-1]
    evaluated = _mlflow_run("-e", "evaluate", "-P", f"run_id={train_id}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    evaluate_id = evaluated.stdout.strip().splitlines()[-1]
    train_run, evaluate_run = mlflow.get_run(train_id), mlflow.get_run(evaluate_id)
    assert train_run.info.status == evaluate_run.info.status == "FINISHED"
    assert evaluate_run.data.metrics["test_accuracy"] == train_run.data.metrics["test_accuracy"]
    assert evaluate_run.data.tags["mlflow.project.entryPoint"] == "evaluate"

    benchmarked = _mlflow_run("-e", "benchmark", "-P", f"run_id={train_id}", "-P", "repetitions=20")
    assert benchmarked.returncode == 0, benchmarked.stderr[-2000:]
    benchmark_run = mlflow.get_run(benchmarked.stdout.strip().splitlines()[-1])
    assert benchmark_run.data.tags["hw.torch_threads"] == "1"
    assert benchmark_run.data.metrics["cost_macs"] == 347_392
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(benchmark_run.info.run_id)}
    assert {"benchmark.json", "benchmark.csv", "layers.json"} <= files

    pruned = _mlflow_run("-e", "prune", "-P", f"run_id={train_id}", "-P", "method=structured", "-P", "epochs=1")
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    prune_run = mlflow.get_run(pruned.stdout.strip().splitlines()[-1])
    assert prune_run.data.metrics["cost_macs"] < prune_run.data.metrics["baseline_cost_macs"]


@pytest.mark.slow  # mlflow run starts the step in its own process
def test_bad_input_via_mlflow_run_fails_the_run():
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    result = _mlflow_run("-e", "train", "-P", "model=resnet")
    assert result.returncode != 0
    assert "error: unknown model 'resnet'" in result.stderr
    new = [
        r for r in mlflow.search_runs(search_all_experiments=True, output_format="list") if r.info.run_id not in before
    ]
    assert [r.info.status for r in new] == ["FAILED"]


@pytest.mark.slow
def test_default_pipeline_on_digits_cnn_reaches_floor():
    """The baseline recipe, full default training: `mlflow run . -e pipeline -P set=trained.model=cnn`;
    run twice, the second reuses every stage."""
    result = _mlflow_run("-e", "pipeline", "-P", "set=trained.model=cnn", "-P", "force=true")
    assert result.returncode == 0, result.stderr[-2000:]
    parent = mlflow.get_run(result.stdout.strip().splitlines()[-1])
    train_run = mlflow.get_run(parent.data.tags["shrinkflow.stage.trained"])
    assert parent.data.metrics["test_accuracy"] == train_run.data.metrics["test_accuracy"] >= 0.98
    started = time.time()
    again = _mlflow_run("-e", "pipeline", "-P", "set=trained.model=cnn")
    assert again.returncode == 0, again.stderr[-2000:]
    second = mlflow.get_run(again.stdout.strip().splitlines()[-1])
    assert second.data.metrics["stages_reused"] == 3 and second.data.metrics["stages_run"] == 0
    assert second.data.tags["shrinkflow.stage.trained"] == train_run.info.run_id
    print(f"second run of the recipe: {time.time() - started:.1f} s")


@pytest.mark.slow
def test_quick_start_main_job_is_a_short_search_ending_with_a_model_run_id(tmp_path):
    """`mlflow run .` (the README's first command), with the study in a temporary file; its output
    through a pipe, as in a CI log or under nohup."""
    started = time.perf_counter()
    result = _mlflow_run("--experiment-name", "shrinkflow", "-P", f"storage=sqlite:///{tmp_path / 'optuna.db'}")
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert seconds < 300, f"the main job took {seconds:.0f} s"
    assert "Pareto front" in result.stderr and "champion: trial" in result.stderr
    printed = result.stderr.splitlines()
    assert [line.split(" (")[0] for line in printed if line.startswith("trial ")] == [
        f"trial {n}/20" for n in range(1, 21)
    ]
    # what a person reads: sizes in KB, no library warnings (PyTorch's, Python's) among the lines
    assert all(re.search(r" size \d+(\.\d+)? (B|KB|MB)", line) for line in printed if line.startswith("trial "))
    assert not [line for line in printed if re.search(r"\w+Warning\b|warnings\.warn", line)]
    labels = ("search run:", "baseline run:", "champion run:")
    labelled = {line.split(":")[0]: line.split()[-1] for line in printed if line.startswith(labels)}
    champion = mlflow.get_run(result.stdout.strip().splitlines()[-1])
    assert labelled["champion run"] == champion.info.run_id
    assert labelled["search run"] == champion.data.tags["mlflow.parentRunId"]
    assert mlflow.get_run(labelled["baseline run"]).data.tags["shrinkflow.step"] == "train"
    assert mlflow.get_experiment(champion.info.experiment_id).name == "shrinkflow"
    assert champion.data.tags["shrinkflow.step"] == "trial" and champion.data.tags["is_pareto"] == "true"
    assert champion.outputs.model_outputs  # a run later steps accept
    search_run = mlflow.get_run(champion.data.tags["mlflow.parentRunId"])
    assert search_run.data.tags["mlflow.project.entryPoint"] == "main"
    # deployed: served from its ONNX form, timed against the baseline there, and not slower unless it says so
    assert champion.data.tags["shrinkflow.served_form"] == "onnxruntime"
    assert search_run.data.tags["shrinkflow.champion_timed_form"] == "onnxruntime"
    metrics = search_run.data.metrics
    assert (
        metrics["champion_speedup_bs1_low"] <= metrics["champion_speedup_bs1"] <= metrics["champion_speedup_bs1_high"]
    )
    assert "x smaller than the baseline; speed-up in onnxruntime: " in result.stderr
    slower_said = "no front member is as fast as the baseline in onnxruntime" in result.stderr
    assert (metrics["champion_speedup_bs1"] < 0.95) == slower_said
    exported = _mlflow_run("-e", "export", "-P", f"run_id={champion.info.run_id}")
    assert exported.returncode == 0, exported.stderr[-2000:]
    print(
        f"main job: {seconds:.0f} s, front {metrics['front_size']:.0f}, champion {metrics['champion_speedup_bs1']:.2f}x"
    )


@pytest.mark.slow
def test_nproc_trains_under_torchrun_inside_the_project_run_and_export_follows():
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    trained = _mlflow_run("-e", "train", "-P", "model=cnn", "-P", "epochs=2", "-P", "nproc=2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_id = trained.stdout.strip().splitlines()[-1]
    new = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")} - before
    assert new == {run_id}  # rank 0 logged into the run `mlflow run` made; no other process made one
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.tags["shrinkflow.world_size"] == "2"
    exported = _mlflow_run("-e", "export", "-P", f"run_id={run_id}")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert mlflow.get_run(exported.stdout.strip().splitlines()[-1]).data.metrics["onnx_argmax_agreement"] == 1.0


@pytest.mark.slow
def test_a_stopped_mlflow_run_takes_its_step_down_and_its_run_says_killed():
    """`timeout mlflow run ...` sends SIGTERM to MLflow's command: the step it started must not
    go on alone, and its run must end as the step's last line says (KILLED)."""
    import signal

    import psutil

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    argv = [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local", "-e", "train",
            "-P", "epochs=500", "-P", "patience=0", "-P", "device=cpu"]  # fmt: skip
    command = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, run = time.time() + 180, None
    while time.time() < deadline and run is None:
        time.sleep(0.5)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="attributes.status = 'RUNNING'")  # fmt: skip
        run = next((r for r in runs if r.info.run_id not in before and "val_accuracy" in r.data.metrics), None)
    assert run is not None, "the step never started training"
    step_pid = int(run.data.tags["shrinkflow.pid"])
    command.send_signal(signal.SIGTERM)
    _, stderr = command.communicate(timeout=60)
    assert command.returncode != 0
    assert not psutil.pid_exists(step_pid) or psutil.Process(step_pid).status() == psutil.STATUS_ZOMBIE
    assert "the step's run is marked KILLED" in stderr
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"
