"""The search: space files, the exact trial count, MLflow lineage, the front, the champion, resume."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from serving import invoke, serving

from search import main as search
from search import workers
from search.space import load_space
from search.study import hypervolume, ranked_accuracy
from shrinkflow import ShrinkflowError, load_dataset, new_artifact, tracking
from shrinkflow.cli import NoResult

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_SPACE = """
prune:
  method: {choices: [global, structured]}
  sparsity: {low: 0.3, high: 0.9}
  epochs: 1
quantize:
  method: {choices: [kbit, dynamic-int8, none]}
  bits: {choices: [4, 8], per_layer: true}
  epochs: 0
"""


@pytest.fixture
def small_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SMALL_SPACE)
    return str(path)


def _config(tmp_path, small_space, **overrides):
    settings = {
        "space": small_space, "trials": 4, "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "study_name": "test", "max_accuracy_drop": 5.0, "device": "cpu", "register_name": f"champion-{tmp_path.name}",
    }  # fmt: skip
    settings.update(overrides)
    return search.SearchConfig(**settings)


def _study(cfg):
    return optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)


def _done(study):
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def _ran(study):
    """The configurations (parameters) of the trials that ran, whatever their state: not the
    redraws that stepped back as repeats."""
    return [json.dumps(t.user_attrs["configuration"], sort_keys=True) for t in study.trials
            if "configuration" in t.user_attrs and "repeat_of" not in t.user_attrs]  # fmt: skip


def _children(parent_run_id):
    return mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`shrinkflow.step` = 'trial'",
        output_format="list",
    )


def test_search_logs_every_trial_tags_the_front_and_registers_a_champion(trained_run_id, tmp_path, small_space, capsys):
    cfg = _config(tmp_path, small_space, run_id=trained_run_id)
    champion_run_id = search.execute(cfg)
    printed = capsys.readouterr().err
    study = _study(cfg)
    assert len(_done(study)) == 4 and study.metric_names == ["val_accuracy", "size"]
    parent = mlflow.get_run(champion_run_id).data.tags["mlflow.parentRunId"]
    trials = _children(parent)
    assert len(trials) == 4 and all(run.info.status == "FINISHED" for run in trials)
    front = [run for run in trials if run.data.tags.get("is_pareto") == "true"]
    assert front and all("test_accuracy" in run.data.metrics for run in front)
    assert all("test_accuracy" not in run.data.metrics for run in trials if run not in front)  # test: front only
    assert champion_run_id in {run.info.run_id for run in front}
    assert all(mlflow.get_run(run.info.run_id).outputs.model_outputs for run in front)  # servable models
    for run in trials:  # every trial's checkpoint feeds later steps by run id, at the bytes it was scored
        assert tracking.load_model(run.info.run_id)[1]["cost_size_bytes"] == run.data.metrics["cost_size_bytes"]
    sizes = {run.info.run_id: run.data.metrics["cost_size_bytes"] for run in front}
    # the cheapest member within the budget, unless that one is slower than the baseline in the target
    passed_over = "is slower than the baseline in onnxruntime; the champion is the next that is not" in printed
    assert (sizes[champion_run_id] == min(sizes.values())) != passed_over
    assert "x smaller than the baseline; speed-up in onnxruntime: " in printed
    artifact, _ = tracking.load_model(champion_run_id)
    x = load_dataset("digits").x_test[:8]
    served = mlflow.pyfunc.load_model(f"models:/{cfg.register_name}@champion")
    with torch.no_grad():
        expected = artifact.model(x).numpy()
    # served from its ONNX form (the default target), as it was timed: PyTorch's logits within int8/float rounding
    np.testing.assert_allclose(
        served.predict(x.numpy(), params={"output": "logits"}), expected, rtol=0, atol=0.05 * np.abs(expected).max()
    )
    assert mlflow.get_run(champion_run_id).data.tags["shrinkflow.served_form"] == "onnxruntime"
    speed = mlflow.get_run(parent).data
    assert speed.tags["shrinkflow.champion_timed_form"] == "onnxruntime"
    for size in (1, 64):  # the champion against the baseline, in the target, with an interval
        low, median, high = (speed.metrics[f"champion_speedup_bs{size}{end}"] for end in ("_low", "", "_high"))
        assert 0 < low <= median <= high
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(parent)}
    assert {"front.json", "front.csv", "pareto.png"} <= files
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="front.csv"))
    exact = {run.info.run_id: run.data.metrics["val_accuracy"] for run in front}
    assert dict(zip(table["run_id"], table["val_accuracy"], strict=True)) == pytest.approx(exact, abs=1e-12)
    samples = len(load_dataset("digits").val[1])
    for trial in _done(study):  # the objective: the exact accuracy, less a loss term under half a sample
        run = next(r for r in trials if r.info.run_id == trial.user_attrs["mlflow_run_id"])
        accuracy, loss = run.data.metrics["val_accuracy"], run.data.metrics["val_loss"]
        assert trial.values[0] == pytest.approx(ranked_accuracy(accuracy, loss, samples))
        assert accuracy - 0.5 / samples < trial.values[0] < accuracy
    history = mlflow.MlflowClient().get_metric_history(parent, "hypervolume")
    assert len(history) == 4 and [m.value for m in history] == sorted(m.value for m in history)


@pytest.mark.parametrize("samples", [180, 360, 10_000])
def test_the_loss_breaks_accuracy_ties_and_never_reorders_accuracies(samples):
    high, low = 176 / samples, 175 / samples
    assert ranked_accuracy(high, 0.10, samples) > ranked_accuracy(high, 0.20, samples)  # a tie: lower loss first
    for loss in (0.0, 0.5, 3.0, 1e6):  # one sample more is better at any loss
        assert ranked_accuracy(high, loss, samples) > ranked_accuracy(low, 0.0, samples)
    assert ranked_accuracy(high, 0.0, samples) == high


def test_rerun_resumes_the_study_without_repeating_a_trial(trained_run_id, tmp_path, small_space):
    search.execute(_config(tmp_path, small_space, run_id=trained_run_id, trials=2))
    first = {t.number: t.values for t in _done(_study(_config(tmp_path, small_space)))}
    search.execute(_config(tmp_path, small_space, run_id=trained_run_id, trials=3))
    search.execute(_config(tmp_path, small_space, run_id=trained_run_id, trials=3))  # already done: no trial
    done = _done(_study(_config(tmp_path, small_space)))
    assert sorted(t.number for t in done) == [0, 1, 2]
    assert {t.number: t.values for t in done if t.number in first} == first
    ran = _ran(_study(_config(tmp_path, small_space)))
    assert len(ran) == 3 == len(set(ran))  # the rerun drew from trial numbers, not from the same seed again


def test_without_a_run_id_the_baseline_is_trained_once_then_reused(tmp_path, small_space):
    cfg = _config(tmp_path, small_space, trials=1, epochs=2, width=0.5)

    def train_runs():
        return mlflow.search_runs(filter_string="tags.`shrinkflow.step` = 'train' and params.width = '0.5'")

    search.execute(cfg)
    assert len(train_runs()) == 1
    search.execute(_config(tmp_path, small_space, trials=2, epochs=2, width=0.5))
    assert len(train_runs()) == 1


def test_space_samples_per_layer_bits_and_only_the_knobs_a_method_uses(small_space):
    space = load_space(small_space)
    model = new_artifact("mlp", load_dataset("digits")).model
    fixed = {"prune.enabled": True, "prune.method": "structured", "prune.sparsity": 0.5}
    prune = space.sample(optuna.trial.FixedTrial(fixed), "prune", model)
    assert (prune.method, prune.sparsity, prune.epochs) == ("structured", 0.5, 1)
    bits = {"quantize.enabled": True, "quantize.method": "kbit", "quantize.bits.layers.1": 8,
            "quantize.bits.layers.3": 4, "quantize.bits.layers.5": 4}  # fmt: skip
    quantize = space.sample(optuna.trial.FixedTrial(bits), "quantize", model)
    assert json.loads(quantize.bits) == {"layers.1": 8, "layers.3": 4, "layers.5": 4}
    int8 = space.sample(optuna.trial.FixedTrial({**bits, "quantize.method": "dynamic-int8"}), "quantize", model)
    assert int8.method == "dynamic-int8" and int8.epochs == 0  # bits drawn (every trial draws every knob), not used
    assert space.sample(optuna.trial.FixedTrial({**bits, "quantize.method": "none"}), "quantize", model) is None
    # what a trial runs: the knobs its methods read
    assert space.configuration({**fixed, **bits, "quantize.method": "dynamic-int8"}) == {
        **fixed, "quantize.enabled": True, "quantize.method": "dynamic-int8"}  # fmt: skip
    assert space.configuration({**fixed, **bits}) == {**fixed, **bits}
    assert space.configuration({**fixed, **bits, "quantize.method": "none"}) == {**fixed, "quantize.enabled": False}


def test_hypervolume_is_exact():
    assert hypervolume([(0.5, 0.5)], (1.0, 1.0)) == pytest.approx(0.25)
    assert hypervolume([(0.2, 0.6), (0.6, 0.2)], (1.0, 1.0)) == pytest.approx(0.48)
    assert hypervolume([(0.2, 0.6), (0.6, 0.2), (0.7, 0.7)], (1.0, 1.0)) == pytest.approx(0.48)  # dominated
    assert hypervolume([(0.5, 0.5, 0.5), (1.5, 0.1, 0.1)], (1.0, 1.0, 1.0)) == pytest.approx(0.125)


class TestBadInput:
    @pytest.mark.parametrize(
        "argv,message",
        [
            (["--costs", "energy"], "unknown cost(s) ['energy']: choose from size, macs, bops, latency"),
            (["--sampler", "grid"], "unknown sampler 'grid': choose tpe, nsga2, random, gp"),
            (["--trials", "0"], "trials must be >= 1, got 0"),
            (["--engine", "spark"], "unknown engine 'spark': choose processes, dask"),
            (["--dask-scheduler", "tcp://127.0.0.1:1"], "dask_scheduler is set but engine is not dask"),
            (["--space", "/nonexistent.yaml"], "search space file '/nonexistent.yaml' does not exist"),
            (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the Optuna storage"),
        ],
    )
    def test_one_line_and_no_study_or_run(self, fails_with_bad_input, all_run_ids, argv, message):
        runs_before = len(all_run_ids())
        assert message in fails_with_bad_input(search.main, argv)
        assert len(all_run_ids()) == runs_before

    @pytest.mark.parametrize(
        "text,message",
        [
            ("", "is empty"),
            ("prune: [1, 2", "is not valid YAML"),
            ("tune:\n  epochs: 1\n", "unknown stage(s) ['tune']"),
            (
                "prune:\n  sparsity: {low: 0.5, high: 1.5}\n",
                "prune.sparsity=1.5 is invalid: sparsity must be in [0, 1)",
            ),
            ("quantize:\n  bits: {choices: [4, 12]}\n", "quantize.bits=12 is invalid"),
            ("quantize:\n  method: {choices: [kbit, int3]}\n", "unknown quantize method(s) ['int3']"),
            ("prune:\n  epoch: 3\n", "unknown knob(s) ['epoch'] in prune"),
            ("prune:\n  enabled: false\n", "every stage is disabled"),
        ],
    )
    def test_bad_space_file(self, tmp_path, fails_with_bad_input, text, message):
        path = tmp_path / "space.yaml"
        path.write_text(text)
        line = fails_with_bad_input(search.main, ["--space", str(path), "--storage", f"sqlite:///{tmp_path}/o.db"])
        assert message in line
        assert not (tmp_path / "o.db").exists()  # no study was created

    def test_unreachable_dask_scheduler(self, tmp_path, fails_with_bad_input, monkeypatch):
        from search import dask_engine

        monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT_S", 1)
        storage = f"sqlite:///{tmp_path / 'o.db'}"
        argv = ["--engine", "dask", "--dask-scheduler", "tcp://127.0.0.1:1", "--storage", storage]
        assert "cannot reach the Dask scheduler 'tcp://127.0.0.1:1'" in fails_with_bad_input(search.main, argv)
        assert not (tmp_path / "o.db").exists()

    def test_study_with_other_objectives(self, tmp_path, fails_with_bad_input, small_space):
        storage = f"sqlite:///{tmp_path / 'o.db'}"
        optuna.create_study(study_name="taken", storage=storage, directions=["maximize"])
        line = fails_with_bad_input(search.main, ["--storage", storage, "--study-name", "taken"])
        assert "study 'taken'" in line and "pass another study_name" in line

    def test_library_errors_are_shrinkflow_errors(self):
        with pytest.raises(ShrinkflowError, match="costs name one cost twice"):
            search.SearchConfig(costs="size,size")


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_storage(request, tmp_path):
    """A study storage two processes share; the PostgreSQL study is deleted afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}", "shared"
        return
    url, name = "postgresql://postgres@127.0.0.1:5432/test", f"shared-{uuid.uuid4().hex[:8]}"
    yield url, name
    optuna.delete_study(study_name=name, storage=url)


@pytest.mark.slow
def test_two_workers_finish_exactly_the_trials_asked_without_duplicates(trained_run_id, tmp_path, shared_storage):
    storage, name = shared_storage
    # trials of ~3 s, so that the helper (~5 s to start) gets some: at 60 epochs (~1.4 s a
    # trial) the first worker once finished all 8 before the helper asked for one
    slower = tmp_path / "slower.yaml"
    slower.write_text(SMALL_SPACE.replace("epochs: 1", "epochs: 150"))
    cfg = _config(tmp_path, str(slower), run_id=trained_run_id, trials=8, workers=2, storage=storage, study_name=name)
    champion = search.execute(cfg)
    done = _done(_study(cfg))
    assert len(done) == 8 and len({t.number for t in done}) == 8
    assert len(set(_ran(_study(cfg)))) == len(_ran(_study(cfg))) == 8  # no configuration twice
    assert {t.user_attrs["record"]["worker"] for t in done} == {0, 1}  # both processes ran trials
    runs = _children(mlflow.get_run(champion).data.tags["mlflow.parentRunId"])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["shrinkflow.trial_number"]) for r in finished) == sorted(t.number for t in done)
    assert all(r.info.status != "RUNNING" for r in runs)
    assert all(r.data.tags["hw.cpu_cores"] == str(os.cpu_count()) for r in runs)  # the hardware it ran on


@pytest.mark.slow
def test_a_dask_cluster_finishes_exactly_the_trials_asked_without_duplicates(trained_run_id, tmp_path, shared_storage):
    storage, name = shared_storage
    slower = tmp_path / "slower.yaml"
    slower.write_text(SMALL_SPACE.replace("epochs: 1", "epochs: 60"))
    cfg = _config(tmp_path, str(slower), run_id=trained_run_id, trials=6, workers=2, storage=storage,
                  study_name=name, engine="dask")  # fmt: skip
    champion = search.execute(cfg)
    done = _done(_study(cfg))
    assert len(done) == 6 and len({t.number for t in done}) == 6
    assert len(set(_ran(_study(cfg)))) == len(_ran(_study(cfg))) == 6  # no configuration twice
    assert {t.user_attrs["record"]["worker"] for t in done} == {0, 1}  # both Dask workers ran trials
    runs = _children(mlflow.get_run(champion).data.tags["mlflow.parentRunId"])
    assert sorted(int(r.data.tags["shrinkflow.trial_number"]) for r in runs if r.info.status == "FINISHED") == sorted(
        t.number for t in done
    )
    assert all(r.info.status != "RUNNING" for r in runs)


def test_the_dask_storage_forwards_heartbeats_so_a_dead_workers_trial_is_failed(tmp_path):
    import sqlite3

    from distributed import Client, LocalCluster

    from search.dask_engine import dask_storage
    from search.study import GRACE_S

    url = f"sqlite:///{tmp_path / 'o.db'}"
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        study = optuna.create_study(study_name="s", storage=dask_storage(url, client))
        trial = study.ask()
        study._storage.record_heartbeat(trial._trial_id)
        assert study._storage._get_stale_trial_ids(study._study_id) == []
        with sqlite3.connect(tmp_path / "o.db") as db:  # as if its worker died GRACE_S + 1 seconds ago
            (beats,) = db.execute("select count(*) from trial_heartbeats").fetchone()
            db.execute(f"update trial_heartbeats set heartbeat = datetime(heartbeat, '-{GRACE_S + 1} seconds')")
        assert beats == 1
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state == optuna.trial.TrialState.FAIL


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(trained_run_id, tmp_path, running_runs):
    slower = tmp_path / "slower.yaml"
    slower.write_text(SMALL_SPACE.replace("epochs: 1", "epochs: 60"))
    cfg = _config(tmp_path, str(slower), trials=6)
    argv = [sys.executable, "-m", "search.main", "--run-id", trained_run_id, "--space", str(slower), "--trials", "6",
            "--storage", cfg.storage, "--study-name", cfg.study_name, "--max-accuracy-drop", "5", "--device", "cpu",
            "--register-name", cfg.register_name]  # fmt: skip
    worker = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _killable(cfg):
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {t.number: t.values for t in _done(_study(cfg))}
    assert 2 <= len(before) < 6 and _running(cfg)  # killed with trials done and one running
    rerun = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done = _done(_study(cfg))
    assert len(done) == 6 and len({t.number for t in done}) == 6
    assert {t.number: t.values for t in done if t.number in before} == before  # none lost, none redone
    ran = _ran(_study(cfg))  # the 6 done and the one killed (FAILED): its configuration is not run again
    assert len(ran) == 7 == len(set(ran))
    assert not _running(cfg) and running_runs() == []


def _running(cfg):
    return _study(cfg).get_trials(states=(optuna.trial.TrialState.RUNNING,))


def _killable(cfg):
    try:
        return len(_done(_study(cfg))) >= 2 and _running(cfg)
    except KeyError:  # the study does not exist yet
        return False


@pytest.mark.slow
def test_the_champion_answers_rest_requests_like_the_local_model(trained_run_id, tmp_path, small_space):
    cfg = _config(tmp_path, small_space, run_id=trained_run_id, trials=2)
    artifact, _ = tracking.load_model(search.execute(cfg))
    x = load_dataset("digits").x_test[:16]
    with serving(f"models:/{cfg.register_name}@champion") as url:
        logits = invoke(url, {"inputs": x.numpy().tolist(), "params": {"output": "logits"}})
        labels = invoke(url, {"inputs": x.numpy().tolist()})
    with torch.no_grad():
        expected = artifact.model(x).numpy()
    np.testing.assert_allclose(
        np.asarray(logits, dtype=np.float32), expected, rtol=0, atol=0.05 * np.abs(expected).max()
    )
    assert labels == [artifact.description["class_names"][i] for i in expected.argmax(1)]


def test_a_trial_whose_model_cannot_run_in_the_target_is_infeasible(trained_run_id, tmp_path, small_space, monkeypatch):
    monkeypatch.setattr(workers, "deployable", lambda artifact, data, target: (False, "no ONNX operator for it"))
    cfg = _config(tmp_path, small_space, run_id=trained_run_id, trials=2, study_name="undeployable")
    with pytest.raises(NoResult, match="no trial of study 'undeployable' kept validation accuracy"):
        search.execute(cfg)  # no champion: exit 3 (run_main), the search's run FINISHED
    trials = _done(_study(cfg))
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # not failed
    assert all(t.constraints["deployable"] == 1.0 for t in trials)
    runs = [mlflow.get_run(t.user_attrs["mlflow_run_id"]) for t in trials]
    assert all(run.data.tags["shrinkflow.not_deployable"] == "no ONNX operator for it" for run in runs)


def test_an_unforeseen_error_inside_a_trial_fails_that_trial_not_the_study(
    trained_run_id, tmp_path, small_space, monkeypatch
):
    """Say a technique meets a layer it cannot handle: the trial fails with one line, the rest run."""
    real = workers.run_trial

    def broken_first(planned, baseline, *args):
        if not getattr(broken_first, "done", False):
            broken_first.done = True
            raise AttributeError("'function' object has no attribute 'device'")
        return real(planned, baseline, *args)

    monkeypatch.setattr(workers, "run_trial", broken_first)
    cfg = _config(tmp_path, small_space, run_id=trained_run_id, trials=3, study_name="unforeseen")
    search.execute(cfg)
    trials = _study(cfg).trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and len(_done(_study(cfg))) == 3
    assert (
        failed[0]
        .user_attrs["error"]
        .startswith("unexpected AttributeError: 'function' object has no attribute 'device' — a Shrinkflow bug")
    )
    run = mlflow.get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["shrinkflow.error"] == failed[0].user_attrs["error"]


def test_a_latency_search_reports_speedups_timed_interleaved_with_the_baseline(trained_run_id, tmp_path, small_space):
    cfg = _config(tmp_path, small_space, run_id=trained_run_id, trials=2, costs="latency,size", study_name="lat")
    champion = mlflow.get_run(search.execute(cfg))
    assert _study(cfg).metric_names == ["val_accuracy", "latency", "size"]
    metrics = champion.data.metrics
    low, median, high = (metrics[f"latency_speedup_interleaved{end}"] for end in ("_low", "", "_high"))
    assert 0 < low <= median <= high
    parent = mlflow.get_run(champion.data.tags["mlflow.parentRunId"]).data.metrics
    # the trial's latency is its ratio to the baseline, timed in turn, times the baseline's at the start
    assert champion.data.metrics["cost_latency_ms_p50"] == pytest.approx(
        champion.data.metrics["cost_latency_relative"] * parent["baseline_cost_latency_ms_p50"]
    )


def test_the_built_in_latency_space_searches_only_what_changes_dense_kernels():
    space = load_space("latency")
    assert space.stages["prune"]["method"].fixed == "structured"
    assert space.stages["distill"]["student_depth"].choices == (1, 2)
    assert space.stages["distill"]["control"].fixed is False
    assert space.stages["quantize"]["enabled"].fixed is False
    assert load_space("default").stages == load_space("").stages
    with pytest.raises(ShrinkflowError, match="built-in spaces: default, latency, auto_bits, learned"):
        load_space("fastest")
    auto_bits = load_space("auto_bits").stages["quantize"]["bits"]
    assert "auto" in auto_bits.choices and not auto_bits.per_layer


def test_the_built_in_learned_space_plans_every_pruning_and_sharing_method():
    from search.trial import plan_trial

    space, baseline = load_space("learned"), new_artifact("mlp", load_dataset("digits"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    planned = [plan_trial(study.ask(), baseline, space) for _ in range(40)]
    pairs = {(plan["prune"].method, plan["quantize"].method) for plan in planned}
    assert pairs == {(p, q) for p in ("gradual", "variational") for q in ("kmeans", "sws")}
    assert all(plan["quantize"].epochs >= 1 for plan in planned if plan["quantize"].method == "sws")


def test_a_repeated_relative_proposal_becomes_an_independent_draw():
    from search.study import TrialSampler

    class SameCorner(optuna.samplers.RandomSampler):  # a relative sampler stuck on one point
        def infer_relative_search_space(self, study, trial):
            return {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

        def sample_relative(self, study, trial, search_space):
            return {"x": 1.0}

    study = optuna.create_study(sampler=TrialSampler(lambda seed: SameCorner(seed=seed), 0))
    xs = []
    for _ in range(4):
        trial = study.ask()
        xs.append(trial.suggest_float("x", 0.0, 1.0))
        study.tell(trial, xs[-1])
    assert xs[0] == 1.0 and len(set(xs)) == 4 and all(0.0 <= x < 1.0 for x in xs[1:])


def test_each_trial_draws_from_its_number_not_from_the_worker():
    from search.study import make_sampler

    def first_draws(n):  # a new sampler object, as a restarted or second command has
        study = optuna.create_study(sampler=make_sampler("random", 0))
        for _ in range(n):
            trial = study.ask()
            study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
        return [t.params["x"] for t in study.trials]

    draws = first_draws(4)
    assert draws == first_draws(4)  # deterministic
    assert len(set(draws)) == 4
    resumed = optuna.create_study(sampler=make_sampler("random", 0))  # a study with 2 trials, a fresh sampler
    for x in draws[:2]:
        resumed.enqueue_trial({"x": x})
        trial = resumed.ask()
        resumed.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    trial = resumed.ask()  # trial 2 draws trial 2's value, not trial 0's again
    assert trial.suggest_float("x", 0.0, 1.0) == draws[2]


def test_a_configuration_another_trial_holds_steps_back_before_any_work():
    from search.study import Repeat, claim_configuration

    study = optuna.create_study()

    def drawn(bits):  # a trial whose configuration is bits=<bits>
        study.enqueue_trial({"bits": bits})
        trial = study.ask()
        trial.suggest_categorical("bits", [4, 8])
        return trial

    first = drawn(4)
    claim_configuration(study, first)  # running and claimed: it holds bits 4
    with pytest.raises(Repeat, match="same configuration as trial 0"):
        claim_configuration(study, drawn(4))
    claim_configuration(study, drawn(8))  # another configuration
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(Repeat, match="same configuration as trial 0"):  # a failed trial still holds its own
        claim_configuration(study, drawn(4))
    assert [t.user_attrs.get("repeat_of") for t in study.trials] == [None, 0, None, 0]


def test_a_trial_stopped_early_completes_infeasible_with_what_it_reached(trained_run_id, tmp_path):
    hopeless = tmp_path / "hopeless.yaml"  # 99% of the weights gone, then 4-bit codes
    hopeless.write_text("prune: {method: global, sparsity: 0.99, epochs: 4}\nquantize: {method: kbit, bits: 4}\n")
    cfg = _config(tmp_path, str(hopeless), run_id=trained_run_id, trials=1, max_accuracy_drop=0.0, early_stop_pp=0.5)
    with pytest.raises(NoResult):
        search.execute(cfg)
    (trial,) = _study(cfg).trials
    record = trial.user_attrs["record"]
    assert trial.state == optuna.trial.TrialState.COMPLETE  # it teaches the sampler, as no PRUNED trial did
    assert record["stopped"].startswith("prune epoch 2/4: val_accuracy")
    assert trial.constraints["accuracy_drop"] > 0  # infeasible by the accuracy it reached
    assert record["stages"]["quantize"]["fine_tuning_skipped"] and "quantize" in record["stages"]
    run = mlflow.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["shrinkflow.trial_state"] == "STOPPED"
    assert run.data.metrics["val_accuracy"] == record["val_accuracy"] and "cost_size_bytes" in run.data.metrics


@pytest.mark.slow  # a full search whose redraws all repeat (~3.5 s)
def test_a_space_with_a_single_configuration_ends_after_it_instead_of_redrawing_forever(trained_run_id, tmp_path):
    single = tmp_path / "single.yaml"
    single.write_text("prune: {method: global, sparsity: 0.5, epochs: 1}\nquantize: {enabled: false}\n")
    cfg = _config(tmp_path, str(single), run_id=trained_run_id, trials=3)
    search.execute(cfg)
    study = _study(cfg)
    assert len(_done(study)) == 1 and len(_ran(study)) == 1  # drawn again and again, run once


def test_a_study_is_refused_against_another_tracking_store_before_any_run(tracking_store, tmp_path, small_space):
    from shrinkflow.tracking import store_identity

    cfg = _config(tmp_path, small_space, trials=1)
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    search.open_study(cfg.storage, cfg.study_name, cfg.cost_names(), optuna.samplers.RandomSampler(),
                      store_identity())  # fmt: skip
    before = len(optuna.get_all_study_summaries(cfg.storage))
    mlflow.set_tracking_uri(other)
    try:
        with pytest.raises(
            ShrinkflowError, match=r"keeps its runs in the tracking store sqlite:///.*, not in this one"
        ):
            search.execute(cfg)
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []  # no run
    finally:
        mlflow.set_tracking_uri(tracking_store)  # (set_tracking_uri sets the environment variable too)
    assert len(optuna.get_all_study_summaries(cfg.storage)) == before  # no study


def test_values_valid_alone_but_not_together_are_refused_when_the_space_is_read(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("prune: {method: {choices: [global, gradual]}, sparsity: 0.8, epochs: {choices: [0, 5]}}\n")
    with pytest.raises(ShrinkflowError, match="prune cannot run with sparsity=0.8, epochs=0, method=gradual"):
        load_space(space)


@pytest.mark.slow  # a search in its own process
def test_a_search_through_a_pipe_prints_a_line_per_trial_and_the_three_runs(trained_run_id, tmp_path, small_space):
    cfg = _config(tmp_path, small_space, trials=2)
    argv = [sys.executable, "-m", "search.main", "--run-id", trained_run_id, "--space", small_space, "--trials", "2",
            "--storage", cfg.storage, "--study-name", "piped", "--max-accuracy-drop", "50", "--device", "cpu",
            "--register-name", cfg.register_name]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # as a user's shell has it
    done = subprocess.run(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    lines = done.stdout.splitlines()
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert [line.split(" (")[0] for line in trial_lines] == ["trial 1/2", "trial 2/2"]
    assert all(" COMPLETE val 0." in line and " KB" in line for line in trial_lines)
    labelled = {line.split(":")[0]: line.split()[-1] for line in lines if line.startswith(("search run", "baseline run",
                                                                                          "champion run"))}  # fmt: skip
    assert labelled["baseline run"] == trained_run_id and labelled["champion run"] == lines[-1]
    assert mlflow.get_run(labelled["search run"]).data.tags["shrinkflow.step"] == "search"


def test_data_or_a_space_that_cannot_run_leaves_no_run_and_no_study(tmp_path, small_space, all_run_ids):
    gradual0 = tmp_path / "gradual0.yaml"
    gradual0.write_text("prune: {method: gradual, sparsity: 0.8, epochs: 0}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    one_class = _config(tmp_path, small_space, dataset="test_data:one_class_val", epochs=1)
    cases = [
        (one_class, "the val split holds 1 class"),
        (_config(tmp_path, str(gradual0), epochs=1), "prune cannot run"),
    ]
    before = len(all_run_ids())
    for cfg, message in cases:
        with pytest.raises(ShrinkflowError, match=message):
            search.execute(cfg)
    assert len(all_run_ids()) == before  # no run
    assert not (tmp_path / "optuna.db").exists() or optuna.get_all_study_summaries(storage) == []  # no study


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["processes", "dask"])  # dask: a LocalCluster's worker processes
def test_a_sigkilled_searchs_helper_workers_end_with_it(engine, trained_run_id, tmp_path):
    import psutil

    slower = tmp_path / "slower.yaml"
    slower.write_text(SMALL_SPACE.replace("epochs: 1", "epochs: 60"))
    cfg = _config(tmp_path, str(slower), trials=20)
    argv = [sys.executable, "-m", "search.main", "--run-id", trained_run_id, "--space", str(slower), "--trials", "20",
            "--storage", cfg.storage, "--study-name", cfg.study_name, "--max-accuracy-drop", "5", "--device", "cpu",
            "--register-name", cfg.register_name, "--workers", "2", "--engine", engine]  # fmt: skip
    search_process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (_running(cfg) if _study_exists(cfg) else False):
        time.sleep(0.2)
    helpers = [p for p in psutil.Process(search_process.pid).children(recursive=True) if "python" in p.name()]
    assert helpers, "the search started no helper process"
    search_process.send_signal(signal.SIGKILL)
    search_process.wait()
    gone, alive = psutil.wait_procs(helpers, timeout=10)
    assert alive == [], f"{len(alive)} helper(s) outlived the search by 10 s"


def _study_exists(cfg) -> bool:
    try:
        _study(cfg)
        return True
    except KeyError:
        return False
