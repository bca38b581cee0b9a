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
import os
import sys
from dataclasses import dataclass, field

import optuna

from search.report import report
from search.space import load_space
from search.study import ACCURACY, SAMPLERS, AccuracyBudget, make_sampler, open_study
from search.trial import COST_METRICS, COSTS, LatencySetup
from search.workers import Job, mark_stale_runs_killed, measure, work_in_processes, work_on_dask
from shrinkflow import ShrinkflowError, new_artifact
from shrinkflow.cli import NoResult, entry_point
from shrinkflow.config import config_to_params
from shrinkflow.data import load_dataset
from shrinkflow.latency import TARGETS
from shrinkflow.runtime import resolve_device
from shrinkflow.zoo import trusted_here
from steps import train as train_step

__all__ = ["SearchConfig", "main"]

ENGINES = ("processes", "dask")


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
    from shrinkflow import tracking

    with tracking.step_run("search", config_to_params(cfg)) as parent:
        tracking.set_tags({"shrinkflow.study": cfg.study_name, "shrinkflow.storage": cfg.storage})
        baseline_run_id = cfg.run_id or _baseline_run(cfg)
        baseline, _ = tracking.load_model(baseline_run_id)
        data = tracking.dataset_of_run(baseline_run_id, baseline.description)
        base = measure(baseline, data, cfg)
        tracking.set_tags({"shrinkflow.baseline_run_id": baseline_run_id})
        budget = AccuracyBudget(base[ACCURACY], cfg.max_accuracy_drop, len(data.val[1]))
        print(f"search: {budget}", file=sys.stderr)
        tracking.log_metrics({**{f"baseline_{k}": v for k, v in base.items()}, "accuracy_floor": budget.floor,
                            "accuracy_budget_samples": budget.extra_errors})  # fmt: skip
        mark_stale_runs_killed(study)
        job = Job(cfg, baseline_run_id, parent.info.run_id, parent.info.experiment_id, tracking.tracking_uri(),
                   floor=budget.floor,
                   threads=max(1, (os.cpu_count() or 1) // cfg.workers),
                   baseline_latency_ms=base.get(COST_METRICS["latency"]), trusted_code=trusted_here())  # fmt: skip
        if client is not None:
            work_on_dask(job, client)
        else:
            work_in_processes(job, baseline, data)
        study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)  # as the workers left it
        mark_stale_runs_killed(study)  # a killed worker's trial is failed by now (heartbeat)
        return report(cfg, study, data, base, baseline_run_id, baseline, budget.floor)


def _baseline_run(cfg: SearchConfig) -> str:
    """A FINISHED train run with these settings (MLflow keeps params as strings), or a new one."""
    from shrinkflow import tracking

    # nproc and compile change how the baseline is trained, not what it is trained on or for
    how = ("nproc", "compile", "parallel")
    wanted = {k: str(v) for k, v in config_to_params(cfg.train_config()).items() if k not in how}
    runs = tracking.find_runs("tags.`shrinkflow.step` = 'train' and attributes.status = 'FINISHED'", False)
    # a run from before a parameter existed ran with its default
    defaults = {f.name: str(f.default) for f in dataclasses.fields(train_step.TrainConfig)}
    for run in runs:
        logged = {k: run.data.params.get(k, defaults[k]) for k in wanted}
        if logged == wanted and run.outputs and run.outputs.model_outputs:
            print(f"search: reusing baseline train run {run.info.run_id}", file=sys.stderr)
            return run.info.run_id
    return train_step.execute(cfg.train_config())


main = entry_point(SearchConfig, execute, __name__)
