"""Deep Compression on digits, side by side with Han et al. (2016): bytes on disk of each stage.

For the digits ``mlp`` (LeNet-300-100 shape on 8x8 images) and ``cnn`` (LeNet-5 style), seed 0:
1. baseline: the train step's defaults, saved as fp32;
2. pruned: gradual magnitude pruning to 92% sparsity (Han et al. keep 8% of LeNet's weights),
   the prune step's defaults otherwise;
3. shared: k-means weight sharing of the pruned model, no fine-tuning, at the fewest bits in
   (4, 5, 6) whose *validation* accuracy is within 0.5 pp of the pruned model's (biases at 8 bits
   where validation accuracy is unchanged, the quantize step's default).
Every size is the checkpoint the stage saves, measured on disk after a save; accuracy is measured
on the reloaded checkpoint. ``entropy_ratio`` is stored bytes ÷ the entropy bound of the tensors
(``cost_size_entropy_bytes``): how close the storage comes to the information it holds. Load time
is the median of 20 ``Artifact.load`` calls of the stage's checkpoint.
Results: benchmarks/results/deep_compression.csv, shown in docs/benchmarks.md.

    python -m benchmarks.deep_compression
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from shrinkflow import FitSettings, PruneSettings, QuantizeSettings, load_dataset, new_artifact, prune, quantize, train
from shrinkflow.artifact import Artifact
from shrinkflow.cost import cost
from shrinkflow.training import score

RESULTS = Path(__file__).resolve().parent / "results" / "deep_compression.csv"
SPARSITY = 0.92
BITS = (4, 5, 6)
PAPER = {  # Han et al. 2016, Table 1 (MNIST): compression of pruning alone, and of the full pipeline
    "mlp": {"pruned": 12.0, "shared": 40.0},
    "cnn": {"pruned": 13.0, "shared": 39.0},
}
CPU = torch.device("cpu")


def _load_ms(folder: Path) -> float:
    times = []
    for _ in range(20):
        start = time.perf_counter()
        Artifact.load(folder)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _row(model: str, stage: str, artifact: Artifact, data, baseline_bytes: int | None, folder: Path) -> dict:
    saved = artifact.save(folder / f"{model}-{stage}")
    reloaded = Artifact.load(saved)
    costs = cost(reloaded)
    size = costs["cost_size_bytes"]
    return {
        "model": model,
        "stage": stage,
        "detail": "",
        "val_accuracy": score(reloaded.model, data.x_val, data.y_val, CPU)["accuracy"],
        "test_accuracy": score(reloaded.model, data.x_test, data.y_test, CPU)["accuracy"],
        "bytes": size,
        "ratio": (baseline_bytes or size) / size,
        "paper_ratio": PAPER[model].get(stage, 1.0),
        "entropy_bytes": costs["cost_size_entropy_bytes"],
        "entropy_ratio": size / costs["cost_size_entropy_bytes"],
        "sparsity": costs["cost_sparsity"],
        "load_ms": _load_ms(saved),
    }


def run(model: str, folder: Path) -> list[dict]:
    data = load_dataset("digits")
    baseline = train(new_artifact(model, data, seed=0), data, FitSettings(), CPU).artifact
    rows = [_row(model, "baseline", baseline, data, None, folder)]
    fp32 = rows[0]["bytes"]
    pruned = prune(baseline, data, PruneSettings(method="gradual", sparsity=SPARSITY), CPU).artifact
    rows.append({**_row(model, "pruned", pruned, data, fp32, folder), "detail": f"gradual {SPARSITY:.0%}"})
    pruned_val = rows[-1]["val_accuracy"]
    for bits in BITS:  # chosen on validation; the test column is reported, never used to choose
        shared = quantize(pruned, data, QuantizeSettings(method="kmeans", bits=str(bits)), CPU).artifact
        row = {**_row(model, "shared", shared, data, fp32, folder), "detail": f"k-means {bits} bits"}
        if row["val_accuracy"] >= pruned_val - 0.005 or bits == BITS[-1]:
            return [*rows, row]
    raise AssertionError("unreachable")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for model in ("mlp", "cnn") for row in run(model, Path(tmp))]
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False, float_format="%.4f")
    print(table.to_string(index=False))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
