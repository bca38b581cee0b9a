"""One trial: distill → prune → quantize on the baseline artifact, in memory, then score and cost.

No MLflow here (``search.main`` logs what a trial returns) and no files but the temporary
checkpoint every size and latency is measured on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import optuna
import torch

from search.space import Space
from shrinkflow import Artifact, DataSplits, ShrinkflowError, cost, score
from shrinkflow.latency import (
    TARGETS,
    common_form,
    deployed,
    fallback_forms,
    first_samples,
    interleaved_rounds,
    torch_threads,
)
from shrinkflow.techniques import TECHNIQUES
from shrinkflow.training import StopTraining

__all__ = [
    "COSTS",
    "COST_METRICS",
    "LatencyReference",
    "LatencySetup",
    "deployable",
    "interleaved_latency",
    "interleaved_latency_rounds",
    "measure_costs",
    "objective_values",
    "plan_trial",
    "run_trial",
]

# cost name -> the metric that holds it
COST_METRICS = {
    "size": "cost_size_bytes",
    "macs": "cost_macs_effective",
    "bops": "cost_bops",
    "latency": "cost_latency_ms_p50",
}
COSTS = tuple(COST_METRICS)
CPU = torch.device("cpu")
REFERENCE_ROUNDS = 3


@dataclass(frozen=True)
class LatencySetup:
    """How the ``latency`` cost is measured: on the reloaded artifact, on the CPU, in the
    deployment target (``form``)."""

    form: str = TARGETS[0]
    batch_size: int = 1
    threads: int = 1
    # Timing is cheap next to exporting or tracing (a small model runs in tens of µs); medians of
    # 50 runs after 10 warm-ups swung ±50% between trials of the same architecture in ORT.
    warmup: int = 50
    repetitions: int = 300

    def __post_init__(self):
        fallback_forms(self.form)
        if self.batch_size < 1 or self.threads < 1 or self.repetitions < 1 or self.warmup < 0:
            raise ShrinkflowError("latency needs batch_size, threads and repetitions >= 1 and warmup >= 0")


@dataclass(frozen=True)
class LatencyReference:
    """The baseline and its latency measured once at the start of the search."""

    artifact: Artifact
    ms: float


def deployable(artifact: Artifact, data: DataSplits, target: str) -> tuple[bool, str]:
    """Whether ``artifact``, reloaded from its checkpoint, runs in ``target``, and if not, why."""
    form, reason = common_form([artifact.reloaded().model], first_samples(data.x_test, 1), target)
    return form == target, reason


def measure_costs(
    artifact: Artifact, data: DataSplits, names, latency: LatencySetup, reference: LatencyReference | None = None
) -> dict[str, float]:
    """Every ``cost_*`` metric of ``artifact`` (size on its saved checkpoint) and, when ``latency``
    is among ``names``, the median latency of the checkpoint reloaded, in ``latency.form`` (the
    caller checks ``deployable`` first).

    With a ``reference``, the model is timed in turn with the baseline (``REFERENCE_ROUNDS``
    rounds) and its latency is its ratio to the baseline's (``cost_latency_relative``) times the
    baseline's latency at the start: a machine that slows down between trials, as shared ones do
    by ±30% over minutes, slows both alike and the ratio stays.
    """
    costs = cost(artifact)
    if "latency" not in names:
        return costs
    if reference is None:
        timed = interleaved_latency({"model": artifact}, data, latency, REFERENCE_ROUNDS)
        costs[COST_METRICS["latency"]] = timed["model"]
        return costs
    timed = interleaved_latency({"model": artifact, "baseline": reference.artifact}, data, latency, REFERENCE_ROUNDS)
    costs["cost_latency_relative"] = timed["model"] / timed["baseline"]
    costs[COST_METRICS["latency"]] = costs["cost_latency_relative"] * reference.ms
    return costs


def interleaved_latency(artifacts: dict[str, Artifact], data: DataSplits, latency: LatencySetup, rounds: int = 5):
    """Median latency (ms) of each artifact, reloaded from its checkpoint, over ``rounds`` rounds
    that time every artifact in turn: a machine slowing down slows them all alike."""
    timed = interleaved_latency_rounds(artifacts, data, latency, rounds)
    return {name: float(np.median(values)) for name, values in timed.items()}


def interleaved_latency_rounds(
    artifacts: dict[str, Artifact], data: DataSplits, latency: LatencySetup, rounds: int
) -> dict[str, np.ndarray]:
    """Each artifact's median latency (ms) per round of ``interleaved_rounds``, reloaded from its
    checkpoint, in ``latency.form`` (or the first fallback every artifact runs in)."""
    example = first_samples(data.x_test, latency.batch_size)
    models = {name: artifact.reloaded().model for name, artifact in artifacts.items()}
    form, _ = common_form(list(models.values()), example, latency.form)  # the target, unless one cannot run there
    with torch_threads(latency.threads):
        runnables, engines = {}, {}
        for name, model in models.items():
            with deployed(model, example, form) as run:  # int8: its fastest engine
                runnables[name], engines[name] = run.runnable, run.engine
        return interleaved_rounds(runnables, example, rounds, latency.repetitions, latency.warmup, engines)


def objective_values(costs: dict[str, float], names) -> list[float]:
    return [costs[COST_METRICS[name]] for name in names]


def plan_trial(trial: optuna.Trial, baseline: Artifact, space: Space) -> dict:
    """Every stage's settings for this trial, sampled before any work: the whole configuration is
    in the study at once, so a repeat of an earlier trial is found before it costs anything. The
    per-layer knobs of the stages after one that reshapes the model (``distill``) are named after
    its new model's layers (untrained, of the sampled architecture: only its names count here)."""
    planned, model = {}, baseline.model
    for stage, technique in TECHNIQUES.items():
        settings = space.sample(trial, stage, model)
        if settings is None:
            continue
        planned[stage] = settings
        if technique.reshapes is not None:
            model = technique.reshapes(settings, baseline.description)
    return planned


def run_trial(
    planned: dict,
    baseline: Artifact,
    data: DataSplits,
    device: torch.device,
    accuracy_floor: float,
    early_stop_pp: float,
    record: dict,
) -> tuple[Artifact, str]:
    """Run each planned stage on the previous stage's artifact; return the last artifact and, when
    the trial was stopped early, why (else ""). ``record`` receives, stage by stage, the settings
    used and the validation accuracy reached.

    Early stopping (Optuna's pruners refuse multi-objective studies): a stage that fine-tunes stops
    fine-tuning when, at or after half its epochs (gradual pruning: after its ramp), its validation
    accuracy is still more than ``early_stop_pp`` points below ``accuracy_floor`` (0 turns this
    off). The trial still ends like any other — the later stages run without fine-tuning, and the
    model is scored and costed — so it completes as infeasible by the accuracy it reached: every
    sampler learns that the region falls short. (Stopped as PRUNED, it taught the samplers nothing:
    10 of the quick start's 20 trials proposed the very configuration just stopped.)
    """
    artifact, stopped = baseline, ""
    for stage, settings in planned.items():
        record[stage] = {"settings": dict(vars(settings))}
        if stopped:
            settings = _least_fine_tuning(settings)
            record[stage]["fine_tuning_skipped"] = True
        watch = None if stopped else _EarlyStop.make(stage, settings, accuracy_floor, early_stop_pp)
        artifact = TECHNIQUES[stage].apply(artifact, data, settings, device, on_epoch=watch).artifact
        record[stage]["val_accuracy"] = score(artifact.model, *data.val, CPU)["accuracy"]
        if watch is not None and watch.reason:
            stopped = record[stage]["stopped"] = watch.reason
    return artifact, stopped


def _least_fine_tuning(settings):
    """``settings`` with no fine-tuning, or one epoch where the method needs some (gradual, qat)."""
    if "epochs" not in {f.name for f in dataclasses.fields(settings)}:  # a technique that does not fine-tune
        return settings
    try:
        return dataclasses.replace(settings, epochs=0)
    except ShrinkflowError:
        return dataclasses.replace(settings, epochs=1)


class _EarlyStop:
    """The ``on_epoch`` hook that ends a hopeless fine-tuning: from half its epochs on (for gradual
    pruning, from the end of its ramp, when the sparsity stops growing); ``reason`` says why."""

    def __init__(self, stage: str, epochs: int, first: int, floor: float, margin_pp: float):
        self.stage, self.epochs, self.first, self.floor, self.margin_pp = stage, epochs, first, floor, margin_pp
        self.reason = ""

    @classmethod
    def make(cls, stage: str, settings, floor: float, margin_pp: float) -> _EarlyStop | None:
        epochs = getattr(settings, "epochs", 0)
        if margin_pp <= 0 or epochs < 2:
            return None
        first = -(-epochs // 2)
        if getattr(settings, "method", None) == "gradual":
            first = max(first, settings.ramp() + 1)
        return cls(stage, epochs, first, floor, margin_pp)

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        accuracy = metrics["val_accuracy"]
        if epoch >= self.first and accuracy < self.floor - self.margin_pp / 100:
            self.reason = (
                f"{self.stage} epoch {epoch}/{self.epochs}: val_accuracy {accuracy:.4f} is more than "
                f"{self.margin_pp:g} pp below the floor {self.floor:.4f}"
            )
            raise StopTraining(self.reason)
