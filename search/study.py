"""The Optuna side of the search: storage, samplers, the study's objectives, the exact trial
count shared by every worker, the front and its hypervolume. No MLflow here."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from shrinkflow import ShrinkflowError
from shrinkflow.runtime import sqlite_lock

__all__ = [
    "ACCURACY",
    "AccuracyBudget",
    "VAL_LOSS",
    "SAMPLERS",
    "Repeat",
    "Surplus",
    "TrialSampler",
    "claim_configuration",
    "done_trials",
    "front",
    "ranked_accuracy",
    "hypervolume",
    "hypervolume_history",
    "make_sampler",
    "open_study",
    "rdb_storage",
    "run_until",
    "trial_seed",
]

ACCURACY = "val_accuracy"
VAL_LOSS = "val_loss"
SAMPLERS = ("tpe", "nsga2", "random", "gp")
HEARTBEAT_S = 5  # a worker's trial proves it is alive this often ...
GRACE_S = 20  # ... and is failed as stale (killed worker) after this long without
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)
CLAIMED, REPEAT_OF = "configuration", "repeat_of"  # trial user attributes
Configuration = Callable[[dict], dict]  # a trial's parameters -> what it runs (Space.configuration)
TRACKING_STORE = "tracking_store"  # study user attribute: shrinkflow.tracking.store_identity()


class Surplus(Exception):
    """Raised by a trial that another worker's trials already make one too many."""


def make_sampler(name: str, seed: int, configuration: Configuration = dict) -> optuna.samplers.BaseSampler:
    """Sampler ``name`` (gp, tpe, nsga2, random), seeded per trial from ``seed`` and the trial
    number, that proposes no ``configuration`` twice (``TrialSampler``)."""
    _sampler(name, seed)  # validates the name
    return TrialSampler(partial(_sampler, name), seed, configuration)


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":  # Gaussian process (logEHVI, constraint-aware); knobs outside the shared space go random
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ShrinkflowError(f"unknown sampler {name!r}: choose {', '.join(SAMPLERS)}")


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: its randomness depends on the trial, not on which
    worker runs it (seeded per worker, a restarted or second command repeated trials 0-1 exactly)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSampler(optuna.samplers.BaseSampler):
    """The sampler ``make(seed)`` makes, made anew for each trial with ``trial_seed(seed, number)``;
    a relative proposal that some earlier trial already ran is replaced by the independent draws. GPSampler's
    acquisition can settle on one point: in a 40-trial cnn latency search it proposed the same
    corner of the space (width 1, depth 2, no pruning) for trials 14 to 39."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int, configuration=dict):
        self._make, self._seed, self._configuration = make, seed, configuration
        self._sampler = make(seed)

    def before_trial(self, study, trial):
        self._sampler = self._make(trial_seed(self._seed, trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        proposal = self._sampler.sample_relative(study, trial, search_space)
        if not proposal:
            return proposal
        proposed = self._configuration(proposal)
        taken = _configurations(study, trial.number, self._configuration).values()
        return {} if any(_agrees(proposed, configuration) for configuration in taken) else proposal

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self._sampler.reseed_rng()


class Repeat(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a trial whose configuration another trial holds: it steps back before any work."""


def claim_configuration(study: optuna.Study, trial: optuna.Trial, configuration: Configuration = dict) -> None:
    """Mark ``trial``'s configuration (``configuration`` of its parameters, every one sampled) as
    taken, then raise ``Repeat`` if another trial holds the same one, whatever its state:
    complete, stopped, failed, or running and claimed. Each trial claims before it looks, so of
    two identical trials started at once the one that looks second sees the other's claim: at
    most one runs (both may step back, which costs nothing but a draw)."""
    mine = configuration(trial.params)
    trial.set_user_attr(CLAIMED, mine)
    for number, theirs in _configurations(study, trial.number, configuration).items():
        if _same(theirs, mine):
            trial.set_user_attr(REPEAT_OF, number)
            raise Repeat(f"same configuration as trial {number}")


def _configurations(study: optuna.Study, number: int, configuration: Configuration) -> dict[int, dict]:
    """The configuration of every trial but ``number`` that holds one: each that claimed it
    (running, complete, stopped or failed) and the done trials of older studies; not those that
    stepped back, nor those that failed before drawing (one too many)."""
    return {
        t.number: t.user_attrs.get(CLAIMED) or configuration(t.params)
        for t in study.get_trials(deepcopy=False)
        if t.number != number and REPEAT_OF not in t.user_attrs and (CLAIMED in t.user_attrs or t.state in _DONE)
    }


def _equal(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) if isinstance(a, float) else a == b


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_equal(a[name], b[name]) for name in a)


def _agrees(proposal: dict, params: dict) -> bool:
    """A relative proposal (a subset of the parameters) that an earlier trial already ran."""
    return bool(params) and all(name in params and _equal(value, params[name]) for name, value in proposal.items())


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats: a rerun fails the trials of a killed worker."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # sqlalchemy raises by driver and URL: one line whatever it is
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(f"cannot open the Optuna storage {url!r}: {first_line}") from None


def open_study(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    costs: Sequence[str],
    sampler: optuna.samplers.BaseSampler,
    tracking_store: dict[str, str] | None = None,
) -> optuna.Study:
    """Create the study, or load it to resume, in ``storage`` (an RDB URL, or a storage such as
    ``dask_storage``'s); a study of that name with other objectives is an error. With
    ``tracking_store`` (``shrinkflow.tracking.store_identity``), a new study records the store its
    runs live in, and one that lives in another store is an error: its trials' runs and models
    are not where this search looks for them."""
    url = storage if isinstance(storage, str) else ""
    with sqlite_lock(url):  # a new SQLite file: one process creates its schema and the study
        return _open_study(storage, name, costs, sampler, tracking_store)


def _open_study(storage, name, costs, sampler, tracking_store) -> optuna.Study:
    metric_names = [ACCURACY, *costs]
    directions = [optuna.study.StudyDirection.MAXIMIZE] + [optuna.study.StudyDirection.MINIMIZE] * len(costs)
    url = storage if isinstance(storage, str) else "the Dask scheduler's storage"
    if isinstance(storage, str):
        storage = rdb_storage(storage)
    existing = {summary.study_name: summary for summary in storage.get_all_studies()}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        if list(study.directions) != directions or study.metric_names != metric_names:
            raise ShrinkflowError(
                f"study {name!r} in {url} has objectives {study.metric_names} ({_directions(study.directions)}); "
                f"this search has {metric_names}: pass another study_name"
            )
        _check_tracking_store(study, url, tracking_store)
        return study
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names)
    if tracking_store:
        study.set_user_attr(TRACKING_STORE, tracking_store)
    return study


def _check_tracking_store(study: optuna.Study, url: str, store: dict[str, str] | None) -> None:
    if not store:
        return
    recorded = study.user_attrs.get(TRACKING_STORE)
    if recorded is None:  # a study from before stores were recorded: it adopts this one
        study.set_user_attr(TRACKING_STORE, store)
    elif recorded.get("created") != store["created"] or (not store["created"] and recorded["uri"] != store["uri"]):
        same_uri = " (the same URI, made anew since)" if recorded["uri"] == store["uri"] else ""
        raise ShrinkflowError(
            f"study {study.study_name!r} in {url} keeps its runs in the tracking store {recorded['uri']}, not in "
            f"this one, {store['uri']}{same_uri}: pass another study_name, or another storage (e.g. delete "
            "optuna.db to start afresh)"
        )


def _directions(directions) -> str:
    return ", ".join(d.name.lower() for d in directions)


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=(*_DONE, TrialState.RUNNING))
    done = sum(t.state in _DONE for t in trials)
    return done, len(trials) - done


def done_trials(study: optuna.Study) -> int:
    """Trials that count towards ``trials``: complete or pruned (not failed, not running)."""
    return _counts(study)[0]


def is_surplus(study: optuna.Study, number: int, trials: int) -> bool:
    """Do the done or running trials numbered before ``number`` already make ``trials``? (Two
    workers that both saw one trial missing both asked; the later one steps back.)"""
    earlier = study.get_trials(deepcopy=False, states=(*_DONE, TrialState.RUNNING))
    return sum(t.number < number for t in earlier) >= trials


def run_until(
    study: optuna.Study, trials: int, objective: Callable, catch: tuple, on_trial: Callable | None = None
) -> None:
    """Run ``objective`` until the study holds exactly ``trials`` done (complete or pruned)
    trials, whatever other workers do. A worker waits while the running trials of others may
    finish the count, and fails trials left running by a killed worker once their heartbeat
    is older than the grace period."""
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        done, running = _counts(study)
        if done >= trials:
            return
        if done + running >= trials:
            time.sleep(1.0)
            continue
        study.optimize(objective, n_trials=1, catch=catch, callbacks=[on_trial] if on_trial else None)


@dataclass(frozen=True)
class AccuracyBudget:
    """``max_accuracy_drop`` in the unit the data has: validation accuracy moves in steps of one
    sample (0.56 pp of digits' 180), so a budget of ``drop_pp`` allows ``extra_errors`` errors
    more than the baseline's, no fraction of one; ``floor`` is the lowest accuracy within it."""

    accuracy: float  # the baseline's, on validation
    drop_pp: float
    samples: int  # in the validation split

    @property
    def extra_errors(self) -> int:
        return math.floor(self.drop_pp / 100 * self.samples + 1e-9)

    @property
    def correct(self) -> int:
        return round(self.accuracy * self.samples)

    @property
    def floor(self) -> float:
        return (self.correct - self.extra_errors) / self.samples

    def __str__(self) -> str:
        step = 100 / self.samples
        text = (
            f"accuracy budget {self.drop_pp:g} pp of {self.samples} validation samples (one sample is {step:.2f} pp) "
            f"allows {self.extra_errors} error(s) more than the baseline's {self.samples - self.correct}: floor "
            f"{self.correct - self.extra_errors}/{self.samples} = {self.floor:.4f}"
        )
        if self.extra_errors == 0 and self.drop_pp > 0:
            text += f"; under one sample, it allows none (max_accuracy_drop {step:.2f} allows one)"
        return text


def ranked_accuracy(accuracy: float, loss: float, samples: int) -> float:
    """The first objective: validation ``accuracy`` over ``samples`` samples, ties broken by the
    validation ``loss`` (lower ranks higher). A small validation split saturates: on digits
    (180 samples) every feasible trial of a 40-trial search scored the baseline's 176, so the
    front held one model, the smallest, whichever of the tied models was really better. The
    term stays under half a sample (0.5 / samples), so different accuracies keep their order."""
    return accuracy - 0.5 / samples * loss / (1.0 + loss)


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front (trials within the accuracy constraint), by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` (all objectives minimized) up to ``reference``,
    by slicing along the last objective; fine for the few dozen points of a front."""
    inside = sorted((tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))),
                    key=lambda p: p[-1])  # fmt: skip
    if not inside:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in inside)
    volume = 0.0
    for i, point in enumerate(inside):
        upper = inside[i + 1][-1] if i + 1 < len(inside) else reference[-1]
        if upper > point[-1]:
            volume += hypervolume([p[:-1] for p in inside[: i + 1]], reference[:-1]) * (upper - point[-1])
    return volume


def normalized(trial: FrozenTrial, baseline_costs: Sequence[float]) -> tuple[float, ...]:
    """A trial in the hypervolume's space: validation error, then each cost ÷ the baseline's."""
    accuracy, *costs = trial.values
    return (1.0 - accuracy, *(c / b for c, b in zip(costs, baseline_costs, strict=True)))


def hypervolume_history(study: optuna.Study, baseline_costs: Sequence[float]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the feasible trials up to it) for every done trial. Space:
    validation error and costs relative to the baseline; reference point: error 1, every cost
    equal to the baseline's — a model counts for the part of the space it beats the baseline in."""
    reference = (1.0, *[1.0] * len(baseline_costs))
    points, history = [], []
    for trial in sorted(study.get_trials(deepcopy=False, states=_DONE), key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.constraints.values()):
            points.append(normalized(trial, baseline_costs))
        history.append((trial.number, hypervolume(points, reference)))
    return history
