"""Every pruning and quantization method on the digits models, as the step docs' tables show them.

Each zoo baseline is trained with the ``train`` step's defaults (seed 0, CPU); then, each from
its trained model, the methods below with the steps' defaults but for the settings named in the
row. Every number is measured on the saved and reloaded checkpoint: test accuracy (nothing here
is chosen on it), bytes on disk, the entropy bound of what it stores, effective MACs. Latency:
the reloaded model against its baseline, timed interleaved in one process
(``latency.interleaved_latency``: ONNX Runtime, one thread, the first of traced/eager that runs
both where it cannot), median milliseconds per call at batch 1 and 64, and the speed-up with its
95% interval. Results: ``benchmarks/results/methods.csv`` (one row per model and method) and
``benchmarks/results/baselines.csv`` (every zoo baseline's test accuracy and size), shown in the
docs by ``benchmarks/tables.py``.

    python -m benchmarks.methods              # digits mlp and cnn, and the baselines (~6 minutes on 2 cores)
    python -m benchmarks.methods mlp          # one model's rows (the others' rows are kept)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import shrinkflow as sf
from shrinkflow.artifact import Artifact
from shrinkflow.latency import interleaved_latency, speedup

RESULTS = Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")

Q, P = sf.QuantizeSettings, sf.PruneSettings


def _then(first, second):
    return lambda artifact, data: second(first(artifact, data), data)


def _prune(**settings):
    return lambda artifact, data: sf.prune(artifact, data, P(**settings), CPU).artifact


def _quantize(**settings):
    return lambda artifact, data: sf.quantize(artifact, data, Q(**settings), CPU).artifact


METHODS = {  # model -> method label -> technique(s) applied to the trained baseline
    "mlp": {
        "prune global 90%": _prune(method="global", sparsity=0.9),
        "quantize dynamic-int8": _quantize(method="dynamic-int8"),
        "quantize kbit 8": _quantize(method="kbit", bits="8"),
        "quantize kbit 4": _quantize(method="kbit", bits="4"),
        "quantize kbit 2": _quantize(method="kbit", bits="2"),
        "quantize kbit 2, 30 epochs": _quantize(method="kbit", bits="2", epochs=30),
        "quantize binary, 30 epochs": _quantize(method="binary", keep_first_last=False, epochs=30),
        "quantize binary, first/last 8 bits": _quantize(method="binary"),
        "quantize kmeans 4": _quantize(method="kmeans", bits="4"),
        "quantize kmeans 2, 10 epochs": _quantize(method="kmeans", bits="2", epochs=10),
        "prune global 90% + kbit 4": _then(_prune(method="global", sparsity=0.9), _quantize(method="kbit", bits="4")),
        "prune gradual 92% + kmeans 4": _then(
            _prune(method="gradual", sparsity=0.92), _quantize(method="kmeans", bits="4")
        ),
    },
    "cnn": {
        "prune structured 50%": _prune(method="structured", sparsity=0.5),
        "quantize static-int8": _quantize(method="static-int8"),
        "quantize qat, 5 epochs": _quantize(method="qat", epochs=5),
    },
}
BASELINES = {"digits": ("mlp", "cnn", "transformer"), "mnist1d": ("cnn1d", "mlp")}


def _reloaded(artifact: Artifact, folder: Path, name: str) -> Artifact:
    return Artifact.load(artifact.save(folder / name.replace(" ", "_").replace("%", "").replace(",", "")))


def _row(model: str, method: str, made: Artifact, base: Artifact, base_row: dict | None, data, seconds: float) -> dict:
    accuracy = sf.score(made.model, data.x_test, data.y_test, CPU)["accuracy"]
    costs = sf.cost(made)
    row = {
        "model": model,
        "method": method,
        "test_accuracy": round(accuracy, 4),
        "accuracy_delta_pp": round(100 * (accuracy - base_row["test_accuracy"]), 2) if base_row else 0.0,
        "size_bytes": int(costs["cost_size_bytes"]),
        "size_reduction": round(base_row["size_bytes"] / costs["cost_size_bytes"], 2) if base_row else 1.0,
        "entropy_bytes": int(costs["cost_size_entropy_bytes"]),
        "macs_effective": int(costs["cost_macs_effective"]),
    }
    timed, form, _ = interleaved_latency({"base": base.model, "made": made.model}, data.x_test, batch_sizes=(1, 64))
    for batch, rounds in timed.items():
        measured = speedup(rounds["base"], rounds["made"])
        row[f"bs{batch}_ms"] = round(float(np.median(rounds["made"])), 4)
        row[f"speedup_bs{batch}"] = round(measured.median, 2)
        row[f"speedup_bs{batch}_interval"] = f"{measured.low:.2f}-{measured.high:.2f}"
        row["timed_form"] = form  # after the batch-1 columns, as in methods.csv
    row["seconds"] = round(seconds, 1)
    print(row, flush=True)
    return row


def method_rows(model: str, folder: Path) -> list[dict]:
    data = sf.load_dataset("digits")
    start = time.perf_counter()
    trained = sf.train(sf.new_artifact(model, data, seed=0), data, sf.FitSettings(), CPU).artifact
    base = _reloaded(trained, folder, model)
    base_row = _row(model, "baseline (float32)", base, base, None, data, time.perf_counter() - start)
    rows = [base_row]
    for method, make in METHODS[model].items():
        start = time.perf_counter()
        made = _reloaded(make(base, data), folder, f"{model}-{method}")
        rows.append(_row(model, method, made, base, base_row, data, time.perf_counter() - start))
    return rows


def baseline_rows() -> list[dict]:
    rows = []
    for dataset, models in BASELINES.items():
        data = sf.load_dataset(dataset)
        for model in models:
            start = time.perf_counter()
            trained = sf.train(sf.new_artifact(model, data, seed=0), data, sf.FitSettings(), CPU)
            costs = sf.cost(trained.artifact)
            rows.append({
                "dataset": dataset, "model": model, "params": int(costs["cost_params"]),
                "test_accuracy": round(sf.score(trained.artifact.model, data.x_test, data.y_test, CPU)["accuracy"], 4),
                "size_bytes": int(costs["cost_size_bytes"]), "best_epoch": trained.fit.best_epoch,
                "epochs_run": trained.fit.epochs_run, "seconds": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def _merge(path: Path, rows: list[dict], models: list[str]) -> pd.DataFrame:
    """``rows`` in place of ``models``' earlier rows in ``path``; other models' rows kept."""
    new = pd.DataFrame(rows)
    if path.exists():
        kept = pd.read_csv(path)
        new = pd.concat([kept[~kept["model"].isin(models)], new], ignore_index=True)
    return new


def main(argv: list[str] | None = None) -> None:
    chosen = (sys.argv[1:] if argv is None else argv) or [*METHODS, "baselines"]
    parts = [*METHODS, "baselines"]
    if unknown := set(chosen) - set(parts):
        sys.exit(f"error: unknown part(s) {', '.join(sorted(unknown))}: choose from {', '.join(parts)}")
    models = [m for m in chosen if m in METHODS]
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for model in models for row in method_rows(model, Path(tmp))]
    if models:
        _merge(RESULTS / "methods.csv", rows, models).to_csv(RESULTS / "methods.csv", index=False)
    if "baselines" in chosen:
        pd.DataFrame(baseline_rows()).to_csv(RESULTS / "baselines.csv", index=False)


if __name__ == "__main__":
    main()
