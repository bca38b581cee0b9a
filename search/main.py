"""Search distill × prune × quantize for the Pareto front of validation accuracy versus cost.

Consumes: a baseline — the run id of a logged model, or the train step's settings (a FINISHED
train run with the same settings is reused, else the baseline is trained) — and a search space
(``search/default_space.yaml`` unless ``space`` names a YAML file; see ``search.space``).
Produces: a parent MLflow run (tag ``shrinkflow.step=search``) holding one nested run per trial
(its settings as params, val accuracy per stage, every ``cost_*`` metric, a per-layer cost table
and the compressed model); front members tagged ``is_pareto=true`` and given their
``test_accuracy`` (computed after the search, for them only); on the parent the front
(``front.json``/``.csv``), a Pareto plot (``pareto.png``), the hypervolume after each trial
(metric ``hypervolume``) and the champion — the front member with the lowest first cost —
registered as ``models:/<register_name>@champion``. The Optuna study lives in ``storage``
(SQLite by default): rerunning the same command resumes it. The last line printed is the
champion trial's run id (a model that later steps accept).

Example:
    python -m search.main --model mlp --dataset digits --trials 40 --costs size --max-accuracy-drop 0.5
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial
from tqdm.auto import tqdm

from search.progress import SpaceExhausted, TrialLines, format_cost
from search.space import load_space
from search.study import (
    ACCURACY,
    SAMPLERS,
    VAL_LOSS,
    AccuracyBudget,
    Repeat,
    Surplus,
    claim_configuration,
    done_trials,
    front,
    hypervolume_history,
    is_surplus,
    make_sampler,
    open_study,
    ranked_accuracy,
    run_until,
)
from search.trial import (
    COST_METRICS,
    COSTS,
    LatencyReference,
    LatencySetup,
    deployable,
    interleaved_latency_rounds,
    measure_costs,
    objective_values,
    plan_trial,
    run_trial,
)
from shrinkflow import Artifact, DataSplits, ShrinkflowError, cost, new_artifact, score
from shrinkflow.cli import EXIT_FAILURE, NoResult, failure_line, one_line_warnings, run_main
from shrinkflow.config import config_to_params, parse_config
from shrinkflow.cost import layer_costs, layer_table
from shrinkflow.data import dataset_of, load_dataset
from shrinkflow.imports import trust, trusted_here
from shrinkflow.latency import CHECK_BATCH_SIZES, TARGETS, before_after_latency, hardware_tags, speedup
from shrinkflow.runtime import die_with_parent, resolve_device
from steps import train as train_step

__all__ = ["CONFIG", "SearchConfig", "main"]

CPU = torch.device("cpu")
ENGINES = ("processes", "dask")
SPEEDUP_ROUNDS = 15  # the front members' interleaved speed-ups
CHAMPION_MIN_SPEEDUP = 0.95  # a champion at least this fast as the baseline at batch 1 in the target (noise allowed)


@dataclass(frozen=True)
class SearchConfig(train_step.TrainConfig):
    """Search compression settings for the accuracy-versus-cost Pareto front."""

    run_id: str = field(default="", metadata={"help": "baseline model's run id; empty = train it (train settings)"})
    space: str = field(default="", metadata={"help": "search space YAML file, or built-in: default (empty), latency"})
    trials: int = field(default=20, metadata={"help": "done (complete or pruned) trials the study ends with"})
    costs: str = field(
        default="size", metadata={"help": "comma-separated costs to minimize: size, macs, bops, latency"}
    )
    max_accuracy_drop: float = field(
        default=1.0, metadata={"help": "constraint: validation accuracy at most this many pp below the baseline's"}
    )
    sampler: str = field(default="tpe", metadata={"help": "tpe, gp, nsga2 or random (seeded with seed)"})
    storage: str = field(default="sqlite:///optuna.db", metadata={"help": "Optuna storage URL (SQLite, PostgreSQL)"})
    study_name: str = field(default="shrinkflow", metadata={"help": "Optuna study; the same name resumes it"})
    register_name: str = field(default="shrinkflow-champion", metadata={"help": "registered model of the champion"})
    early_stop_pp: float = field(
        default=5.0, metadata={"help": "stop a trial whose val accuracy is this far below the floor at half its epochs"}
    )
    target: str = field(
        default=TARGETS[0],
        metadata={
            "help": "where the models are deployed: onnxruntime, traced or eager; a trial whose model cannot run "
            "there is infeasible, the latency cost is timed there, the champion is served from there"
        },
    )
    latency_batch_size: int = field(default=1, metadata={"help": "latency cost: batch size"})
    latency_threads: int = field(default=1, metadata={"help": "latency cost: torch CPU threads"})
    workers: int = field(default=1, metadata={"help": "processes on the study at once; CPU threads split between"})
    engine: str = field(default="processes", metadata={"help": "processes (this machine) or dask (a Dask cluster)"})
    dask_scheduler: str = field(
        default="", metadata={"help": "engine dask: scheduler address; empty = a LocalCluster of `workers` processes"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.trials < 1:
            raise ShrinkflowError(f"trials must be >= 1, got {self.trials}")
        if self.workers < 1:
            raise ShrinkflowError(f"workers must be >= 1, got {self.workers}")
        if self.engine not in ENGINES:
            raise ShrinkflowError(f"unknown engine {self.engine!r}: choose {', '.join(ENGINES)}")
        if self.dask_scheduler and self.engine != "dask":
            raise ShrinkflowError("dask_scheduler is set but engine is not dask: pass --engine dask")
        unknown = [name for name in self.cost_names() if name not in COSTS]
        if unknown or not self.cost_names():
            raise ShrinkflowError(f"unknown cost(s) {unknown or [self.costs]}: choose from {', '.join(COSTS)}")
        if len(set(self.cost_names())) != len(self.cost_names()):
            raise ShrinkflowError(f"costs name one cost twice: {self.costs!r}")
        if self.sampler not in SAMPLERS:
            raise ShrinkflowError(f"unknown sampler {self.sampler!r}: choose {', '.join(SAMPLERS)}")
        if not 0 <= self.max_accuracy_drop <= 100 or self.early_stop_pp < 0:
            raise ShrinkflowError("need max_accuracy_drop in [0, 100] pp and early_stop_pp >= 0")
        self.latency()  # validates

    def cost_names(self) -> list[str]:
        return [name.strip() for name in self.costs.split(",") if name.strip()]

    def latency(self) -> LatencySetup:
        return LatencySetup(self.target, self.latency_batch_size, self.latency_threads)

    def search_space(self):
        return load_space(self.space)

    def train_config(self) -> train_step.TrainConfig:
        names = train_step.TrainConfig.__dataclass_fields__
        return train_step.TrainConfig(**{k: v for k, v in vars(self).items() if k in names})


def execute(cfg: SearchConfig) -> str:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trial lines, the bar and the summary say enough
    resolve_device(cfg.device)  # an unavailable device fails before anything is created
    cfg.search_space()
    if not cfg.run_id:  # a model or data the baseline cannot train on fails before a study, a run or any training
        new_artifact(cfg.model, load_dataset(cfg.dataset, cfg.label_column, cfg.dataset_args), cfg.width, cfg.depth)
    with _engine(cfg) as client:  # an unreachable Dask scheduler fails before a study or run exists
        study = open_study(cfg.storage, cfg.study_name, cfg.cost_names(), make_sampler(cfg.sampler, cfg.seed),
                           _tracking_store())  # fmt: skip
        champion = _search(cfg, study, client)
    if champion is None:  # the search's run is FINISHED with every trial: nothing is lost
        raise NoResult(
            f"no trial of study {cfg.study_name!r} kept validation accuracy within {cfg.max_accuracy_drop:g} pp of the "
            "baseline's, so there is no champion: allow a larger max_accuracy_drop, or run more trials"
        )
    return champion


def _tracking_store() -> dict[str, str]:
    from shrinkflow import tracking

    return tracking.store_identity()


def _engine(cfg: SearchConfig):
    if cfg.engine != "dask":
        return contextlib.nullcontext()
    from search.dask_engine import dask_client

    return dask_client(cfg.dask_scheduler, cfg.workers)


def _search(cfg: SearchConfig, study: optuna.Study, client) -> str | None:
    import mlflow

    from shrinkflow import tracking

    with tracking.step_run("search", config_to_params(cfg)) as parent:
        mlflow.set_tags({"shrinkflow.study": cfg.study_name, "shrinkflow.storage": cfg.storage})
        baseline_run_id = cfg.run_id or _baseline_run(cfg)
        baseline, _ = tracking.load_model(baseline_run_id)
        data = tracking.dataset_of_run(baseline_run_id, baseline.description)
        base = _measure(baseline, data, cfg)
        mlflow.set_tag("shrinkflow.baseline_run_id", baseline_run_id)
        budget = AccuracyBudget(base[ACCURACY], cfg.max_accuracy_drop, len(data.val[1]))
        print(f"search: {budget}", file=sys.stderr)
        mlflow.log_metrics({**{f"baseline_{k}": v for k, v in base.items()}, "accuracy_floor": budget.floor,
                            "accuracy_budget_samples": budget.extra_errors})  # fmt: skip
        _mark_stale_runs_killed(study)
        job = _Job(cfg, baseline_run_id, parent.info.run_id, parent.info.experiment_id, mlflow.get_tracking_uri(),
                   floor=budget.floor,
                   threads=max(1, (os.cpu_count() or 1) // cfg.workers),
                   baseline_latency_ms=base.get(COST_METRICS["latency"]), trusted_code=trusted_here())  # fmt: skip
        if client is not None:
            _work_on_dask(job, client)
        else:
            _work_in_processes(job, baseline, data)
        study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)  # as the workers left it
        _mark_stale_runs_killed(study)  # a killed worker's trial is failed by now (heartbeat)
        return _report(cfg, study, data, base, baseline_run_id, baseline, budget.floor)


@dataclass(frozen=True)
class _Job:
    """What a worker process needs to join the search (picklable)."""

    cfg: SearchConfig
    baseline_run_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    floor: float  # lowest validation accuracy within the budget
    threads: int  # torch CPU threads of each worker
    baseline_latency_ms: float | None  # with a latency cost: the baseline's, measured at the start
    trusted_code: frozenset[str] = frozenset()  # user code this command trusts (shrinkflow.imports)


def _work_in_processes(job: _Job, baseline: Artifact, data: DataSplits) -> None:
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


def _helper(job: _Job, index: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)  # daemon=True stops helpers when the parent exits, not when it is killed
    with one_line_warnings():  # as in the process the user started
        _work(job, index)


def _work_on_dask(job: _Job, client) -> None:
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


def _dask_work(job: _Job, index: int, threads: int, storage) -> None:
    _work(dataclasses.replace(job, threads=threads), index, storage=storage)


def _work(
    job: _Job, index: int, baseline: Artifact | None = None, data: DataSplits | None = None, storage=None
) -> None:
    """One worker: a share of the CPU threads, trials until the study is full; on ``storage``
    when given (a Dask worker), else on the configured storage URL."""
    import mlflow

    from shrinkflow import tracking

    cfg = job.cfg
    for spec in job.trusted_code:  # a worker process trusts what the command that started it trusts
        trust(spec)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial says what it would
    mlflow.set_tracking_uri(job.tracking_uri)
    torch.set_num_threads(job.threads)
    space = cfg.search_space()
    # one seed for every worker: each trial's draws come from its number (search.study.trial_seed)
    sampler = make_sampler(cfg.sampler, cfg.seed, space.configuration)
    study = open_study(storage or cfg.storage, cfg.study_name, cfg.cost_names(), sampler)
    if baseline is None:  # a helper process loads its own
        baseline, _ = tracking.load_model(job.baseline_run_id)
        data = dataset_of(baseline.description)
    objective = _objective(job, study, baseline, data, space, resolve_device(cfg.device), index)
    progress = tqdm(total=cfg.trials, initial=done_trials(study), desc="search", unit="trial",
                    disable=None if index == 0 and storage is None else True)  # fmt: skip
    watch = TrialLines(cfg.trials, cfg.cost_names(), job.floor, progress)
    try:
        run_until(study, cfg.trials, objective, catch=(ShrinkflowError, Surplus, Repeat), on_trial=watch)
    except SpaceExhausted as exc:
        tqdm.write(f"search: {exc}", file=sys.stderr)
    progress.close()


def _measure(artifact: Artifact, data: DataSplits, cfg: SearchConfig, reference=None) -> dict[str, float]:
    costs = measure_costs(artifact, data, cfg.cost_names(), cfg.latency(), reference)
    val = score(artifact.model, *data.val, CPU)
    return {ACCURACY: val["accuracy"], VAL_LOSS: val["loss"], **costs}


def _baseline_run(cfg: SearchConfig) -> str:
    """A FINISHED train run with these settings (MLflow keeps params as strings), or a new one."""
    import mlflow

    # nproc and compile change how the baseline is trained, not what it is trained on or for
    how = ("nproc", "compile", "parallel")
    wanted = {k: str(v) for k, v in config_to_params(cfg.train_config()).items() if k not in how}
    runs = mlflow.search_runs(
        filter_string="tags.`shrinkflow.step` = 'train' and attributes.status = 'FINISHED'", output_format="list"
    )
    # a run from before a parameter existed ran with its default
    defaults = {f.name: str(f.default) for f in dataclasses.fields(train_step.TrainConfig)}
    for run in runs:
        logged = {k: run.data.params.get(k, defaults[k]) for k in wanted}
        if logged == wanted and run.outputs and run.outputs.model_outputs:
            print(f"search: reusing baseline train run {run.info.run_id}", file=sys.stderr)
            return run.info.run_id
    return train_step.execute(cfg.train_config())


def _objective(job: _Job, study, baseline, data, space, device, worker: int):
    """The Optuna objective: one nested MLflow run per trial, written through the client API
    (a fluent ``start_run`` costs ~0.1 s of run-context lookups; one ``log_batch`` replaces
    dozens of calls), so that bookkeeping stays a small share of a trial."""
    import mlflow

    from shrinkflow import tracking

    cfg, floor = job.cfg, job.floor
    client = mlflow.MlflowClient()
    reference = LatencyReference(baseline, job.baseline_latency_ms) if job.baseline_latency_ms else None
    hardware = hardware_tags(torch.get_num_threads())  # once per worker: it reads /proc/cpuinfo

    def objective(trial: optuna.Trial):
        if is_surplus(study, trial.number, cfg.trials):
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the study already holds {cfg.trials} trials")
        try:
            planned = plan_trial(trial, baseline, space)
        except Exception as exc:
            if (failure := _trial_failure(trial, exc)) is None:
                raise
            raise failure from exc
        claim_configuration(study, trial, space.configuration)  # a repeat steps back here, before any work
        tags = {"mlflow.parentRunId": job.parent_run_id, "shrinkflow.step": "trial", "shrinkflow.study": cfg.study_name,
                "shrinkflow.trial_number": str(trial.number), "shrinkflow.worker": str(worker),
                **tracking.process_tags(), **hardware}  # fmt: skip
        run_id = client.create_run(job.experiment_id, run_name=f"trial {trial.number}", tags=tags).info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        record, started = {}, time.perf_counter()
        status = "FAILED"
        try:
            artifact, stopped = run_trial(planned, baseline, data, device, floor, cfg.early_stop_pp, record)
            runs, why_not = deployable(artifact, data, cfg.target)
            # not deployable: infeasible, not failed (its accuracy and size still teach the sampler); its
            # latency, if a cost, is timed in a fallback form
            tags = {} if runs else {"shrinkflow.not_deployable": why_not[:5000]}
            if stopped:
                tags.update({"shrinkflow.trial_state": "STOPPED", "shrinkflow.stopped_because": stopped})
            measured = _measure(artifact, data, cfg, reference)
            trial.set_constraint("accuracy_drop", floor - measured[ACCURACY])  # <= 0: within the budget
            trial.set_constraint("deployable", 0.0 if runs else 1.0)
            trial.set_user_attr("record", {"stages": record, "worker": worker, ACCURACY: measured[ACCURACY],
                                           "stopped": stopped, "compute_s": time.perf_counter() - started})  # fmt: skip
            _log_trial(client, run_id, record, measured, artifact, tags)
            status = "FINISHED"
            accuracy = ranked_accuracy(measured[ACCURACY], measured[VAL_LOSS], len(data.val[1]))
            return [accuracy, *objective_values(measured, cfg.cost_names())]
        except Exception as exc:
            if (failure := _trial_failure(trial, exc)) is None:
                raise
            client.set_tag(run_id, "shrinkflow.error", str(failure)[:5000])
            raise failure from exc
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            client.set_terminated(run_id, status)

    return objective


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


def _log_trial(client, run_id: str, record: dict, metrics: dict, artifact: Artifact | None, tags=None) -> None:
    """Settings, metrics and tags in one batch, then the checkpoint (front members get a servable
    model after the search) and the per-layer cost table in one upload: each MLflow call is
    ~10-30 ms of a ~1.4 s trial."""
    from mlflow.entities import Metric, Param, RunTag

    from shrinkflow import tracking

    now = int(time.time() * 1000)
    metrics = {**metrics, **{f"{stage}_val_accuracy": r["val_accuracy"] for stage, r in record.items()
                             if "val_accuracy" in r}}  # fmt: skip
    batch = {
        "metrics": [Metric(key, float(value), now, 0) for key, value in metrics.items()],
        "params": [Param(key, str(value)) for key, value in _settings_params(record).items()],
    }
    if artifact is None:
        client.log_batch(run_id, **batch, tags=[RunTag(key, value) for key, value in (tags or {}).items()])
        return
    table = layer_table(layer_costs(artifact.model, artifact.input_shape, artifact.description.get("bits")))
    with tracking.checkpoint_files(artifact, {"layers.json": table}) as (folder, file_tags):
        client.log_batch(run_id, **batch, tags=[RunTag(k, v) for k, v in {**(tags or {}), **file_tags}.items()])
        client.log_artifacts(run_id, str(folder))


def _settings_params(record: dict) -> dict[str, object]:
    params = {f"{stage}.{name}": value for stage, r in record.items() for name, value in r["settings"].items()}
    return {**params, "stages": ",".join(record) or "none"}


def _trial_params(trial: FrozenTrial) -> dict[str, object]:
    return _settings_params(trial.user_attrs.get("record", {}).get("stages", {}))


def _mark_stale_runs_killed(study: optuna.Study) -> None:
    """Mark KILLED the MLflow runs a killed worker left RUNNING: trial runs whose Optuna trial no
    longer runs and, once no trial of the study runs, the searches' parent runs but this one."""
    import mlflow

    running = {t.user_attrs.get("mlflow_run_id") for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))}
    stale = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`shrinkflow.study` = '{study.study_name}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    active = mlflow.active_run().info.run_id
    for run in stale:
        is_trial = run.data.tags.get("shrinkflow.step") == "trial"
        if run.info.run_id != active and run.info.run_id not in running and (is_trial or not running):
            mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")


def _report(
    cfg: SearchConfig, study, data: DataSplits, base: dict, baseline_run_id: str, baseline: Artifact, floor: float
) -> str | None:
    """Tag the front, score it on test, log front table, plot and hypervolume, register the
    champion; print the search's, the baseline's and the champion's run ids; return the
    champion's (None when the front is empty)."""
    import mlflow

    from shrinkflow import tracking

    members = front(study)
    _untag_former_members(study.study_name, {t.user_attrs["mlflow_run_id"] for t in members})
    artifacts = {t.user_attrs["mlflow_run_id"]: tracking.load_model(t.user_attrs["mlflow_run_id"])[0] for t in members}
    speedups = _speedups(cfg, artifacts, data, baseline)
    rows = []
    for trial in members:
        run_id = trial.user_attrs["mlflow_run_id"]
        artifact = artifacts[run_id]
        test_accuracy = score(artifact.model, data.x_test, data.y_test, CPU)["accuracy"]
        with mlflow.start_run(run_id=run_id, nested=True):
            mlflow.log_metrics({"test_accuracy": test_accuracy, **speedups.get(run_id, {})})
            mlflow.set_tag("is_pareto", "true")
            if "shrinkflow.model_id" not in mlflow.get_run(run_id).data.tags:  # logged by an earlier report
                mlflow.set_tag("shrinkflow.model_id", tracking.log_model(artifact, data, cfg.target))
        rows.append({**_front_row(trial, run_id, test_accuracy, cfg), **speedups.get(run_id, {})})
    table = pd.DataFrame(rows)
    costs = [base[COST_METRICS[name]] for name in cfg.cost_names()]
    for number, volume in hypervolume_history(study, costs):
        mlflow.log_metric("hypervolume", volume, step=number)
    mlflow.log_metric("front_size", len(members))
    if rows:
        tracking.log_table(table, "front")
        tracking.log_figure(_pareto_plot(study, members, base, cfg, floor), "pareto.png")
    print(_summary(table, base, cfg), file=sys.stderr)
    champion = _champion(cfg, members, artifacts, baseline, data)
    runs = {"search run": mlflow.active_run().info.run_id, "baseline run": baseline_run_id,
            "champion run": champion or "none (the front is empty)"}  # fmt: skip
    for label, run_id in runs.items():
        print(f"{label + ':':14}{run_id}", file=sys.stderr)
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}", file=sys.stderr)
    return champion


def _speedups(cfg: SearchConfig, artifacts: dict[str, Artifact], data: DataSplits, baseline: Artifact) -> dict:
    """With a latency cost: each front member's speed-up over the baseline (median of paired
    rounds, with its 95% interval), timed interleaved with it in this process (the search's own
    timings, minutes apart, drift with the machine)."""
    if "latency" not in cfg.cost_names() or not artifacts:
        return {}
    timed = interleaved_latency_rounds({"baseline": baseline, **artifacts}, data, cfg.latency(), SPEEDUP_ROUNDS)
    return {
        run_id: speedup(timed["baseline"], timed[run_id]).metrics("latency_speedup_interleaved") for run_id in artifacts
    }


def _untag_former_members(study_name: str, members: set[str]) -> None:
    """Trials an earlier report put on the front that a later trial has beaten."""
    import mlflow

    tagged = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`shrinkflow.study` = '{study_name}' and tags.is_pareto = 'true'",
        output_format="list",
    )
    for run in tagged:
        if run.info.run_id not in members:
            mlflow.MlflowClient().set_tag(run.info.run_id, "is_pareto", "false")


def _front_row(trial, run_id: str, test_accuracy: float, cfg: SearchConfig) -> dict:
    methods = {k: v for k, v in _trial_params(trial).items() if k.endswith((".method", "stages"))}
    costs = dict(zip(cfg.cost_names(), trial.values[1:], strict=True))
    accuracy = trial.user_attrs["record"].get(ACCURACY, trial.values[0])  # exact, not the tie-broken objective
    return {"trial": trial.number, "run_id": run_id, ACCURACY: accuracy, "test_accuracy": test_accuracy,
            **costs, **methods}  # fmt: skip


def _champion(cfg: SearchConfig, members, artifacts: dict, baseline: Artifact, data: DataSplits) -> str | None:
    """Register the front member with the lowest first cost that is not slower than the baseline
    in the target (>= ``CHAMPION_MIN_SPEEDUP`` at batch 1, timed interleaved), or the lowest
    first cost when none is; log and print its size and speed-up; return its run id."""
    import mlflow

    if not members:
        return None
    ranked = sorted(members, key=lambda t: (t.values[1], -t.values[0]))
    checks = {}
    for trial in ranked:
        run_id = trial.user_attrs["mlflow_run_id"]
        checks[run_id] = before_after_latency(
            baseline.model, artifacts[run_id].reloaded().model, data.x_test, cfg.target, "champion"
        )
        if checks[run_id].metrics["speedup_bs1"] >= CHAMPION_MIN_SPEEDUP:
            best = trial
            break
    else:
        best = ranked[0]
    run_id = best.user_attrs["mlflow_run_id"]
    model_id = mlflow.get_run(run_id).data.tags["shrinkflow.model_id"]
    version = mlflow.register_model(f"models:/{model_id}", cfg.register_name)
    mlflow.MlflowClient().set_registered_model_alias(cfg.register_name, "champion", version.version)
    mlflow.set_tags({"shrinkflow.champion_run_id": run_id, "shrinkflow.champion": f"{cfg.register_name}@champion"})
    print(f"champion: trial {best.number}, run {run_id}, models:/{cfg.register_name}@champion", file=sys.stderr)
    if best is not ranked[0]:
        print(
            f"search: the smallest-cost front member (trial {ranked[0].number}) is slower than the baseline in "
            f"{cfg.target}; the champion is the next that is not",
            file=sys.stderr,
        )
    _champion_speed(cfg, baseline, artifacts[run_id], checks[run_id])
    return run_id


def _champion_speed(cfg: SearchConfig, baseline: Artifact, champion: Artifact, check) -> None:
    """Log the champion's speed-up against the baseline in the target (interleaved, with
    intervals) and print it beside its size: a size-only search can pick a slower model."""
    import mlflow

    mlflow.log_metrics({f"champion_{name}": value for name, value in check.metrics.items()})
    mlflow.set_tag("shrinkflow.champion_timed_form", check.form)
    smaller = cost(baseline)["cost_size_bytes"] / cost(champion)["cost_size_bytes"]
    speeds = ", ".join(
        f"{check.metrics[f'speedup_bs{size}']:.2f}x at batch {size} ({check.metrics[f'speedup_bs{size}_low']:.2f}-"
        f"{check.metrics[f'speedup_bs{size}_high']:.2f})"
        for size in CHECK_BATCH_SIZES
    )
    print(f"champion: {smaller:.1f}x smaller than the baseline; speed-up in {check.form}: {speeds}", file=sys.stderr)
    for line in check.warnings:
        print(line, file=sys.stderr)
    if check.metrics["speedup_bs1"] < CHAMPION_MIN_SPEEDUP:
        print(
            f"search: no front member is as fast as the baseline in {check.form} at batch 1; this search minimized "
            f"{cfg.cost_names()[0]}: add latency to costs to trade accuracy for speed",
            file=sys.stderr,
        )


def _pareto_plot(study: optuna.Study, members, base: dict, cfg: SearchConfig, floor: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = cfg.cost_names()[0]
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=14, c="0.7", label="trials")
    best = sorted(members, key=lambda t: t.values[1])
    axes.plot([t.values[1] for t in best], [t.values[0] for t in best], "o-", c="tab:blue", label="Pareto front")
    axes.scatter([base[COST_METRICS[cost]]], [base[ACCURACY]], marker="*", s=120, c="tab:red", label="baseline")
    axes.axhline(floor, ls="--", c="tab:red", lw=0.8, label="accuracy floor")
    axes.set(xscale="log", xlabel=cost, ylabel="validation accuracy", title=f"study {study.study_name}")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _summary(table: pd.DataFrame, base: dict, cfg: SearchConfig) -> str:
    if table.empty:
        return "search: the front is empty"
    shown = table.drop(columns=["run_id"])
    for name in cfg.cost_names():  # in the units people read: 5.2 KB, MACs 1.3M
        shown[name] = [format_cost(name, value).split(" ", 1)[1] for value in shown[name]]
    with pd.option_context("display.width", 200, "display.max_columns", None):
        text = shown.to_string(index=False, float_format="%.4g")
    cost = cfg.cost_names()[0]
    return f"Pareto front ({len(table)} trials; baseline {format_cost(cost, base[COST_METRICS[cost]])}, " \
           f"val_accuracy {base[ACCURACY]:.4f}):\n{text}"  # fmt: skip


CONFIG = SearchConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(SearchConfig, argv)))


if __name__ == "__main__":
    main()
