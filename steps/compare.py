"""Compare logged models side by side: accuracy, size, MACs and latency, with ratios to a baseline.

Consumes: comma-separated run ids of steps that logged models, the baseline first.
Produces: an MLflow run with the comparison as ``comparison.json`` (MLflow table) and
``comparison.csv``, printed to the terminal too. Every number is measured in this one process
on the reloaded artifacts — accuracy on the chosen split, size on disk, exact MACs, CPU latency
at one batch size and thread count — so ratios compare like with like. Latency: every model in
the deployment ``target`` (``onnxruntime`` by default; when one of them cannot run there, all
fall back to traced, then eager, with a warning line; column ``form``), timed in ``rounds``
alternating rounds (A B C, C B A, ...); ``speedup`` is the median over rounds of the baseline's
time over the model's, ``speedup_low``/``speedup_high`` its 95% interval, and a warning line
says when the interval is wider than ±25% of the median (a busy machine). A model with int8
layers run by PyTorch uses the int8 engine ``quantized_engine`` (``auto``: its fastest at this
batch size), and its accuracy is measured with that engine too (column ``quantized_engine``). The
run id is the last line printed.

Example:
    python -m steps.compare --run-ids <baseline run id>,<pruned run id>
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from shrinkflow.cli import entry_point
from shrinkflow.config import ShrinkflowError, config_to_params
from shrinkflow.cost import format_bytes
from shrinkflow.data import SPLITS
from shrinkflow.latency import (
    ENGINE_CHOICES,
    TARGET_HELP,
    TARGETS,
    Speedup,
    common_form,
    deployed,
    fallback_forms,
    fallback_warning,
    first_samples,
    hardware_tags,
    interleaved_rounds,
    noisy_warning,
    quantized_engine,
    speedup,
    torch_threads,
)  # fmt: skip
from shrinkflow.training import score

__all__ = ["CompareConfig", "comparison_table", "main", "printable"]

# Columns of the comparison table that get a ratio to the baseline (baseline / model: > 1 is better)
_RATIO_COLUMNS = {"size_bytes": "size_reduction", "macs_effective": "macs_reduction"}


@dataclass(frozen=True)
class CompareConfig:
    """Measure several logged models in one process and tabulate them against the first."""

    run_ids: str = field(metadata={"help": "comma-separated run ids of logged models, the baseline first"})
    split: str = field(default="test", metadata={"help": "split on which accuracy is measured: train, val or test"})
    batch_size: int = field(default=1, metadata={"help": "batch size of the CPU latency measurement"})
    warmup: int = field(default=20, metadata={"help": "untimed forward passes of each model before timing"})
    rounds: int = field(default=20, metadata={"help": "timing rounds; each times every model in turn"})
    repetitions: int = field(default=50, metadata={"help": "timed forward passes per model and round"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads during timing"})
    target: str = field(default=TARGETS[0], metadata={"help": TARGET_HELP + "; or compiled (torch.compile)"})

    quantized_engine: str = field(
        default="auto",
        metadata={
            "help": "int8 kernels of a quantized model: auto (the fastest engine for it at this batch size, "
            "timed) or " + ", ".join(ENGINE_CHOICES[1:])
        },
    )

    def __post_init__(self):
        if not self.ids():
            raise ShrinkflowError("run_ids is required: pass one or more run ids separated by commas")
        if self.split not in SPLITS:
            raise ShrinkflowError(f"unknown split {self.split!r}: choose one of {', '.join(SPLITS)}")
        if min(self.batch_size, self.repetitions, self.threads, self.rounds) < 1 or self.warmup < 0:
            raise ShrinkflowError("need batch_size, rounds, repetitions and threads >= 1 and warmup >= 0")
        fallback_forms(self.target)
        if self.quantized_engine not in ENGINE_CHOICES:
            raise ShrinkflowError(
                f"unknown quantized_engine {self.quantized_engine!r}: choose {', '.join(ENGINE_CHOICES)}"
            )

    def ids(self) -> list[str]:
        return [part.strip() for part in self.run_ids.split(",") if part.strip()]


def comparison_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of measurements (first = baseline) → table with ratios to the baseline.

    Each row needs ``accuracy`` and the keys of ``_RATIO_COLUMNS``; ``accuracy_delta_pp`` is the
    accuracy difference to the baseline in percentage points.
    """
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["accuracy_delta_pp"] = (table["accuracy"] - base["accuracy"]) * 100
    for column, ratio in _RATIO_COLUMNS.items():
        table[ratio] = base[column] / table[column]
    return table


def printable(table: pd.DataFrame) -> str:
    """The comparison as a person reads it: each row labelled by its run id, sizes in KB/MB."""
    shown = pd.DataFrame({
        "run_id": table["run_id"], "model": table["model"], "storage": table["storage"],
        "accuracy": table["accuracy"].map("{:.2%}".format),
        "size": table["size_bytes"].map(format_bytes), "smaller": table["size_reduction"].map("{:.1f}x".format),
        "effective_macs": table["macs_effective"].map("{:,.0f}".format),
        "latency": table["latency_ms_p50"].map(lambda ms: f"{ms * 1000:.1f} us"),
        "faster": [f"{m:.2f}x ({lo:.2f}-{hi:.2f})" for m, lo, hi in
                   zip(table["speedup"], table["speedup_low"], table["speedup_high"], strict=True)],
    })  # fmt: skip
    with pd.option_context("display.width", 250, "display.max_columns", None):
        return shown.to_string(index=False)


def _loaded(run_id: str) -> tuple:
    from shrinkflow import tracking

    artifact, costs = tracking.load_model(run_id)
    data = tracking.dataset_of_run(run_id, artifact.description)
    return artifact, costs, data


def _row(run_id: str, artifact, costs: dict, run, accuracy: float) -> dict:
    description = artifact.description
    return {
        "run_id": run_id,
        "dataset": description["dataset"],
        "model": description["architecture"]["name"],
        "storage": description.get("storage", "dense-fp32"),
        "accuracy": accuracy,
        "params": costs["cost_params"],
        "nonzero_params": costs["cost_nonzero_params"],
        "size_bytes": costs["cost_size_bytes"],
        "macs": costs["cost_macs"],
        "macs_effective": costs["cost_macs_effective"],
        "form": run.form,
        "quantized_engine": run.engine,
    }


def _accuracy(run, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the model as it is timed: ONNX Runtime's session, or PyTorch with its int8 engine."""
    if run.form != "onnxruntime":
        with quantized_engine(run.engine or torch.backends.quantized.engine):
            return score(run.model, x, y, torch.device("cpu"))["accuracy"]
    return (run.runnable(x).argmax(1) == y).double().mean().item()


def _measure(cfg: CompareConfig) -> tuple[list[dict], str]:
    """A row per model, timed interleaved in one form; also why the target was passed over."""
    loaded = [(run_id, *_loaded(run_id)) for run_id in cfg.ids()]  # a run may come twice
    _same_dataset([{"run_id": run_id, "dataset": artifact.description["dataset"]} for run_id, artifact, *_ in loaded])
    data = loaded[0][3]
    example = first_samples(data.x_test, cfg.batch_size)
    form, reason = common_form([artifact.model for _, artifact, _, _ in loaded], example, cfg.target)
    rows, runnables, engines = [], {}, {}
    with contextlib.ExitStack() as stack:
        for index, (run_id, artifact, costs, _) in enumerate(loaded):
            run = stack.enter_context(deployed(artifact.model, example, form, cfg.quantized_engine))
            runnables[index], engines[index] = run.runnable, run.engine
            rows.append(_row(run_id, artifact, costs, run, _accuracy(run, *data.split(cfg.split))))
        timed = interleaved_rounds(runnables, example, cfg.rounds, cfg.repetitions, cfg.warmup, engines)
    for index, row in enumerate(rows):
        row["latency_ms_p50"] = float(np.median(timed[index]))
        row.update(speedup(timed[0], timed[index]).metrics("speedup"))
    return rows, reason


def _same_dataset(rows: list[dict]) -> None:
    """Accuracies on different datasets are no comparison."""
    base = rows[0]
    for row in rows[1:]:
        if row["dataset"] != base["dataset"]:
            raise ShrinkflowError(
                f"run {row['run_id']!r} was trained on dataset {row['dataset']['spec']!r}, the baseline run "
                f"{base['run_id']!r} on {base['dataset']['spec']!r}: compare models of one dataset"
            )


def execute(cfg: CompareConfig) -> str:
    from shrinkflow import tracking

    with torch_threads(cfg.threads):
        rows, reason = _measure(cfg)
    table = comparison_table([{k: v for k, v in row.items() if k != "dataset"} for row in rows])
    form = rows[0]["form"]
    if reason:
        print(fallback_warning("a model", cfg.target, form, reason), file=sys.stderr)
    for row in rows[1:]:
        measured = Speedup(row["speedup"], row["speedup_low"], row["speedup_high"], cfg.rounds)
        if line := noisy_warning(f"the speed-up of run {row['run_id']}", measured):
            print(line, file=sys.stderr)
    with tracking.step_run("compare", config_to_params(cfg)) as run:
        tracking.set_tags(
            {"shrinkflow.baseline_run_id": cfg.ids()[0], "shrinkflow.timed_form": form, **hardware_tags(cfg.threads)}
        )
        last = table.iloc[-1]  # the last model against the first, as metrics (a recipe's verdict)
        verdict = ("accuracy_delta_pp", *_RATIO_COLUMNS.values(), "speedup", "speedup_low", "speedup_high")
        tracking.log_metrics({name: float(last[name]) for name in verdict})
        tracking.log_table(table, "comparison")
        print(printable(table), file=sys.stderr)
        print(f"(accuracy on {cfg.split}; latency: median of {cfg.rounds} interleaved rounds at batch "
              f"{cfg.batch_size}, {form}, {cfg.threads} CPU thread(s); faster: against the first row, with its "
              "95% interval)", file=sys.stderr)  # fmt: skip
        return run.info.run_id


main = entry_point(CompareConfig, execute, __name__)
