"""bits auto (bits per layer by measured validation loss) against one bit-width for every layer.

For the digits ``mlp`` and ``cnn`` (default training, seeds 0-2), dense and after the
``deep_compression`` recipe's pruning (gradual to 92%, 60 epochs), quantized with ``kbit`` and
``kmeans`` at a uniform 3 and 4 bits and at ``auto`` with budgets 5-30%: bytes of the saved
checkpoint, validation accuracy (what a default is chosen on) and test accuracy (reported).
No fine-tuning after quantization, so the rows compare the allocations alone.
Results: benchmarks/results/mixed_precision.csv, shown in docs/benchmarks.md.

    python -m benchmarks.mixed_precision
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import shrinkflow as sf

RESULTS = Path(__file__).resolve().parent / "results" / "mixed_precision.csv"
CPU = torch.device("cpu")
BITS = ("3", "4", "auto:0.05", "auto:0.1", "auto:0.2", "auto:0.3")


def _rows(model: str, seed: int, data, folder: Path) -> list[dict]:
    trained = sf.train(sf.new_artifact(model, data, seed=seed), data, sf.FitSettings(seed=seed), CPU).artifact
    pruned = sf.prune(
        trained, data, sf.PruneSettings(method="gradual", sparsity=0.92, epochs=60, seed=seed), CPU
    ).artifact
    rows, float_bytes = [], sf.cost(trained)["cost_size_bytes"]
    for start_name, start in (("dense", trained), ("gradual 92%", pruned)):
        base = sf.cost(start)["cost_size_bytes"]
        for method in ("kbit", "kmeans"):
            for bits in BITS:
                began = time.perf_counter()
                result = sf.quantize(start, data, sf.QuantizeSettings(method=method, bits=bits), CPU)
                seconds = time.perf_counter() - began
                reloaded = sf.Artifact.load(result.artifact.save(folder / f"{model}-{seed}-{method}-{bits}"))
                rows.append({
                    "model": model, "seed": seed, "start": start_name, "method": method, "bits": bits,
                    "bits_by_layer": ",".join(str(b) for b in result.layers.values()),
                    "size_bytes": int(size := sf.cost(reloaded)["cost_size_bytes"]),
                    "reduction_vs_float": round(float_bytes / size, 2),
                    "start_bytes": int(base),
                    "val_accuracy": round(sf.score(reloaded.model, *data.val, CPU)["accuracy"], 4),
                    "test_accuracy": round(sf.score(reloaded.model, data.x_test, data.y_test, CPU)["accuracy"], 4),
                    "start_val_accuracy": round(sf.score(start.model, *data.val, CPU)["accuracy"], 4),
                    "start_test_accuracy": round(sf.score(start.model, data.x_test, data.y_test, CPU)["accuracy"], 4),
                    "quantize_s": round(seconds, 2),
                })  # fmt: skip
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    data = sf.load_dataset("digits")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("mlp", "cnn"):
            for seed in (0, 1, 2):
                rows += _rows(model, seed, data, Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
