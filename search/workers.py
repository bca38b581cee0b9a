"""The study's workers: processes on this machine or on a Dask cluster that run trials until the
study holds the trials asked, each trial a nested MLflow run (through ``shrinkflow.tracking``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import optuna
import torch
from tqdm.auto import tqdm

from search.progress import SpaceExhausted, TrialLines
from search.study import (
    ACCURACY,
    VAL_LOSS,
    Repeat,
    Surplus,
    claim_configuration,
    done_trials,
    is_surplus,
    make_sampler,
    open_study,
    ranked_accuracy,
    run_until,
)
from search.trial import LatencyReference, deployable, measure_costs, objective_values, plan_trial, run_trial
from shrinkflow import Artifact, DataSplits, ShrinkflowError, score
from shrinkflow.cli import EXIT_FAILURE, failure_line, one_line_warnings
from shrinkflow.cost import layer_costs, layer_table
from shrinkflow.data import dataset_of
from shrinkflow.latency import hardware_tags
from shrinkflow.runtime import die_with_parent, resolve_device
from shrinkflow.zoo import trust

if TYPE_CHECKING:
    from search.main import SearchConfig

__all__ = ["Job", "mark_stale_runs_killed", "measure", "settings_params", "work_in_processes", "work_on_dask"]

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Job:
    """What a worker process needs to join the search (picklable)."""

    cfg: SearchConfig
    baseline_run_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    floor: float  # lowest validation accuracy within the budget
    threads: int  # torch CPU threads of each worker
    baseline_latency_ms: float | None  # with a latency cost: the baseline's, measured at the start
    trusted_code: frozenset[str] = frozenset()  # user code this command trusts (shrinkflow._imports)


def measure(artifact: Artifact, data: DataSplits, cfg: SearchConfig, reference=None) -> dict[str, float]:
    """Validation accuracy and loss, and every cost the search minimizes, of ``artifact``."""
    costs = measure_costs(artifact, data, cfg.cost_names(), cfg.latency(), reference)
    val = score(artifact.model, *data.val, CPU)
    return {ACCURACY: val["accuracy"], VAL_LOSS: val["loss"], **costs}


def work_in_processes(job: Job, baseline: Artifact, data: DataSplits) -> None:
    """``workers`` - 1 helper processes and this one run trials on the study until it is full."""
    context = multiprocessing.get_context("spawn")  # fork would copy torch's and MLflow's threads
    helpers = [context.Process(target=_helper, args=(job, index, os.getpid()), daemon=True)
               for index in range(1, job.cfg.workers)]  # fmt: skip
    for helper in helpers:
        helper.start()
    _work(job, 0, baseline, data)  # this process has them loaded already
    for helper in helpers:
        helper.join()
    failed = [helper.exitcode for helper in helpers if helper.exitcode]
    if failed:
        raise ShrinkflowError(f"{len(failed)} of {len(helpers)} helper workers failed (exit codes {failed})")


def _helper(job: Job, index: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)  # daemon=True stops helpers when the parent exits, not when it is killed
    with one_line_warnings():  # as in the process the user started
        _work(job, index)


def work_on_dask(job: Job, client) -> None:
    """One search worker on each worker of the Dask cluster, all on the study through the
    scheduler's ``DaskStorage``; the bar here follows them."""
    from search.dask_engine import run_on_dask

    cfg = job.cfg
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
    progress = tqdm(total=cfg.trials, initial=done_trials(study), desc="search (dask)", unit="trial", disable=None)
    try:
        run_on_dask(client, cfg.storage, partial(_dask_work, job),
                    on_progress=lambda: progress.update(done_trials(study) - progress.n))  # fmt: skip
    except ShrinkflowError:
        raise
    except Exception as exc:  # a worker that died or raised: one line (its traceback is in the Dask logs)
        raise ShrinkflowError(f"a Dask worker failed: {type(exc).__name__}: {exc}") from None
    progress.update(done_trials(study) - progress.n)
    progress.close()


def _dask_work(job: Job, index: int, threads: int, storage) -> None:
    _work(dataclasses.replace(job, threads=threads), index, storage=storage)


def _work(job: Job, index: int, baseline: Artifact | None = None, data: DataSplits | None = None, storage=None) -> None:
    """One worker: a share of the CPU threads, trials until the study is full; on ``storage``
    when given (a Dask worker), else on the configured storage URL."""
    from shrinkflow import tracking

    cfg = job.cfg
    for spec in job.trusted_code:  # a worker process trusts what the command that started it trusts
        trust(spec)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial says what it would
    tracking.use_tracking_uri(job.tracking_uri)
    torch.set_num_threads(job.threads)
    space = cfg.search_space()
    # one seed for every worker: each trial's draws come from its number (search.study.trial_seed)
    sampler = make_sampler(cfg.sampler, cfg.seed, space.configuration)
    study = open_study(storage or cfg.storage, cfg.study_name, cfg.cost_names(), sampler)
    if baseline is None:  # a helper process loads its own
        baseline, _ = tracking.load_model(job.baseline_run_id)
        data = dataset_of(baseline.description)
    objective = _Objective(job, study, baseline, data, space, resolve_device(cfg.device), index)
    progress = tqdm(total=cfg.trials, initial=done_trials(study), desc="search", unit="trial",
                    disable=None if index == 0 and storage is None else True)  # fmt: skip
    watch = TrialLines(cfg.trials, cfg.cost_names(), job.floor, progress)
    try:
        run_until(study, cfg.trials, objective, catch=(ShrinkflowError, Surplus, Repeat), on_trial=watch)
    except SpaceExhausted as exc:
        tqdm.write(f"search: {exc}", file=sys.stderr)
    progress.close()


class _Objective:
    """The Optuna objective: one nested MLflow run per trial, written through the client API
    (a fluent ``start_run`` costs ~0.1 s of run-context lookups; one batch replaces dozens of
    calls), so that bookkeeping stays a small share of a trial."""

    def __init__(self, job: Job, study, baseline: Artifact, data: DataSplits, space, device, worker: int):
        self.job, self.study, self.baseline, self.data = job, study, baseline, data
        self.space, self.device, self.worker = space, device, worker
        ms = job.baseline_latency_ms
        self.reference = LatencyReference(baseline, ms) if ms else None
        self.hardware = hardware_tags(torch.get_num_threads())  # once per worker: it reads /proc/cpuinfo

    def __call__(self, trial: optuna.Trial) -> list[float]:
        from shrinkflow import tracking

        cfg = self.job.cfg
        if is_surplus(self.study, trial.number, cfg.trials):
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the study already holds {cfg.trials} trials")
        try:
            planned = plan_trial(trial, self.baseline, self.space)
        except Exception as exc:
            if (failure := _trial_failure(trial, exc)) is None:
                raise
            raise failure from exc
        claim_configuration(self.study, trial, self.space.configuration)  # a repeat steps back here, before work
        tags = {"shrinkflow.step": "trial", "shrinkflow.study": cfg.study_name,
                "shrinkflow.trial_number": str(trial.number), "shrinkflow.worker": str(self.worker),
                **tracking.process_tags(), **self.hardware}  # fmt: skip
        run_id = tracking.start_child_run(self.job.experiment_id, self.job.parent_run_id, f"trial {trial.number}", tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        status = "FAILED"
        try:
            values = self._run(trial, planned, run_id)
            status = "FINISHED"
            return values
        except Exception as exc:
            if (failure := _trial_failure(trial, exc)) is None:
                raise
            tracking.tag_run(run_id, {"shrinkflow.error": str(failure)[:5000]})
            raise failure from exc
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracking.end_run(run_id, status)

    def _run(self, trial: optuna.Trial, planned: dict, run_id: str) -> list[float]:
        """Run the planned stages, measure the model, record and log the trial; its objectives."""
        cfg, data, floor, started, record = self.job.cfg, self.data, self.job.floor, time.perf_counter(), {}
        artifact, stopped = run_trial(planned, self.baseline, data, self.device, floor, cfg.early_stop_pp, record)
        runs, why_not = deployable(artifact, data, cfg.target)
        # not deployable: infeasible, not failed (its accuracy and size still teach the sampler); its
        # latency, if a cost, is timed in a fallback form
        tags = {} if runs else {"shrinkflow.not_deployable": why_not[:5000]}
        if stopped:
            tags.update({"shrinkflow.trial_state": "STOPPED", "shrinkflow.stopped_because": stopped})
        measured = measure(artifact, data, cfg, self.reference)
        trial.set_constraint("accuracy_drop", floor - measured[ACCURACY])  # <= 0: within the budget
        trial.set_constraint("deployable", 0.0 if runs else 1.0)
        trial.set_user_attr("record", {"stages": record, "worker": self.worker, ACCURACY: measured[ACCURACY],
                                       "stopped": stopped, "compute_s": time.perf_counter() - started})  # fmt: skip
        _log_trial(run_id, record, measured, artifact, tags)
        accuracy = ranked_accuracy(measured[ACCURACY], measured[VAL_LOSS], len(data.val[1]))
        return [accuracy, *objective_values(measured, cfg.cost_names())]


def _trial_failure(trial: optuna.Trial, exc: Exception) -> ShrinkflowError | None:
    """What fails one trial and not the study, as a one-line ``ShrinkflowError`` recorded as the
    trial's ``error``: an invalid combination, and any error inside the techniques — a layer one
    cannot handle, a bug, memory (the line says which). None for what the stores or the machine
    refused: that stops the study."""
    if isinstance(exc, ShrinkflowError):
        failure = exc
    else:
        line, status = failure_line(exc)
        if status != EXIT_FAILURE and not isinstance(exc, (MemoryError, RecursionError)):
            return None
        failure = ShrinkflowError(line)
    trial.set_user_attr("error", str(failure)[:1000])
    return failure


def _log_trial(run_id: str, record: dict, metrics: dict, artifact: Artifact, tags: dict) -> None:
    """Settings, metrics and tags in one batch, with the checkpoint (front members get a servable
    model after the search) and the per-layer cost table in one upload: each MLflow call is
    ~10-30 ms of a ~1.4 s trial."""
    from shrinkflow import tracking

    metrics = {**metrics, **{f"{stage}_val_accuracy": r["val_accuracy"] for stage, r in record.items()
                             if "val_accuracy" in r}}  # fmt: skip
    table = layer_table(layer_costs(artifact.model, artifact.input_shape, artifact.description.get("bits")))
    with tracking.checkpoint_files(artifact, {"layers.json": table}) as (folder, file_tags):
        tracking.log_run_batch(run_id, metrics, settings_params(record), {**tags, **file_tags}, folder)


def settings_params(record: dict) -> dict[str, object]:
    """A trial's settings as run params: ``<stage>.<setting>``, and ``stages`` that ran."""
    params = {f"{stage}.{name}": value for stage, r in record.items() for name, value in r["settings"].items()}
    return {**params, "stages": ",".join(record) or "none"}


def mark_stale_runs_killed(study: optuna.Study) -> None:
    """Mark KILLED the MLflow runs a killed worker left RUNNING: trial runs whose Optuna trial no
    longer runs and, once no trial of the study runs, the searches' parent runs but this one."""
    from shrinkflow import tracking

    running = {t.user_attrs.get("mlflow_run_id") for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))}
    stale = tracking.find_runs(f"tags.`shrinkflow.study` = '{study.study_name}' and attributes.status = 'RUNNING'")
    active = tracking.active_run_id()
    for run in stale:
        is_trial = run.data.tags.get("shrinkflow.step") == "trial"
        if run.info.run_id != active and run.info.run_id not in running and (is_trial or not running):
            tracking.end_run(run.info.run_id, "KILLED")
