"""Compare logged models side by side: accuracy, size, MACs and latency, with ratios to a baseline.

Consumes: comma-separated run ids of steps that logged models, the baseline first.
Produces: an MLflow run with the comparison as ``comparison.json`` (MLflow table) and
``comparison.csv``, printed to the terminal too. Every number is measured in this one process
on the reloaded artifacts — accuracy on the chosen split, size on disk, exact MACs, CPU latency
at one batch size and thread count — so ratios compare like with like. A model with int8 layers
runs with the int8 engine ``quantized_engine`` (``auto``: its fastest at this batch size), and its
accuracy is measured with that engine too (column ``quantized_engine``). The run id is the last
line printed.

Example:
    python -m steps.compare --run-ids <baseline run id>,<pruned run id>
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pandas as pd
import torch

from shrinkflow.cli import run_main
from shrinkflow.config import ShrinkflowError, config_to_params, parse_config
from shrinkflow.data import SPLITS, dataset_of
from shrinkflow.latency import ENGINE_CHOICES, FORMS, deployed, hardware_tags, measure_latency, torch_threads
from shrinkflow.training import score
from steps.benchmark import example_batch

__all__ = ["CONFIG", "CompareConfig", "comparison_table", "main"]

# Columns of the comparison table that get a ratio to the baseline (baseline / model: > 1 is better)
_RATIO_COLUMNS = {"size_bytes": "size_reduction", "macs_effective": "macs_reduction", "latency_ms_p50": "speedup"}


@dataclass(frozen=True)
class CompareConfig:
    """Measure several logged models in one process and tabulate them against the first."""

    run_ids: str = field(metadata={"help": "comma-separated run ids of logged models, the baseline first"})
    split: str = field(default="test", metadata={"help": "split on which accuracy is measured: train, val or test"})
    batch_size: int = field(default=1, metadata={"help": "batch size of the CPU latency measurement"})
    warmup: int = field(default=20, metadata={"help": "untimed forward passes before timing"})
    repetitions: int = field(default=200, metadata={"help": "timed forward passes per model"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads during timing"})
    form: str = field(
        default="eager",
        metadata={
            "help": "form timed: eager, traced (TorchScript, frozen), compiled (torch.compile) or onnxruntime (CPU)"
        },
    )

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
        if self.batch_size < 1 or self.repetitions < 1 or self.threads < 1 or self.warmup < 0:
            raise ShrinkflowError("need batch_size, repetitions and threads >= 1 and warmup >= 0")
        if self.form not in FORMS:
            raise ShrinkflowError(f"unknown execution form {self.form!r}: choose {', '.join(FORMS)}")
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


def _measure(run_id: str, cfg: CompareConfig) -> dict:
    from shrinkflow import tracking

    artifact, costs = tracking.load_model(run_id)
    model, description = artifact.model, artifact.description
    data = dataset_of(description)
    tracking.check_dataset(run_id, data)
    cpu = torch.device("cpu")
    example = example_batch(data, cfg.batch_size)
    with deployed(model, example, cfg.form, cfg.quantized_engine) as run:  # scored as it is timed
        latency = measure_latency(run.runnable, example, cpu, cfg.warmup, cfg.repetitions, weights_of=run.model)
        accuracy = score(run.model, *data.split(cfg.split), cpu)["accuracy"]
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
        "form": cfg.form,
        "quantized_engine": run.engine,
        "latency_ms_p50": latency.p50_ms,
    }


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
    import mlflow

    from shrinkflow import tracking

    with torch_threads(cfg.threads):
        rows = [_measure(run_id, cfg) for run_id in cfg.ids()]
    _same_dataset(rows)
    table = comparison_table([{k: v for k, v in row.items() if k != "dataset"} for row in rows])
    with tracking.step_run("compare", config_to_params(cfg)) as run:
        mlflow.set_tags({"shrinkflow.baseline_run_id": cfg.ids()[0], **hardware_tags(cfg.threads)})
        last = table.iloc[-1]  # the last model against the first, as metrics (a recipe's verdict)
        mlflow.log_metrics({name: float(last[name]) for name in ("accuracy_delta_pp", *_RATIO_COLUMNS.values())})
        tracking.log_table(table, "comparison")
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(table.drop(columns=["run_id"]).to_string(index=False, float_format="%.4g"), file=sys.stderr)
        return run.info.run_id


CONFIG = CompareConfig  # the entry point's config, read by tests/test_project_spec.py


def main(argv: list[str] | None = None) -> None:
    run_main(lambda: execute(parse_config(CompareConfig, argv)))


if __name__ == "__main__":
    main()
