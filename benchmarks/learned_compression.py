"""Sparsity learned while fine-tuning (sparse variational dropout) against Deep Compression.

For the digits ``mlp`` and ``cnn`` and the MNIST-1D ``cnn1d`` (default training, seeds 0-2):
the ``deep_compression`` recipe's stages (gradual pruning to 92% over 60 epochs, then k-means
4 bits) and ``variational`` pruning (60 epochs, ``kl_weight`` 0.1, 0.3, 1) followed by k-means at
4 bits and at ``bits auto``. Bytes of the saved checkpoint against the float32 baseline's,
validation accuracy (what defaults are chosen on) and test accuracy (reported), the entropy
bound of what is stored, and the seconds an epoch of each pruning method takes.
Results: benchmarks/results/learned_compression.csv, shown in docs/benchmarks.md.

    python -m benchmarks.learned_compression
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import shrinkflow as sf

RESULTS = Path(__file__).resolve().parent / "results" / "learned_compression.csv"
CPU = torch.device("cpu")
EPOCHS = 60
CASES = (("digits", "mlp"), ("digits", "cnn"), ("mnist1d", "cnn1d"))
KL_WEIGHTS = (0.1, 0.3, 1.0)


def _pruned(trained, data, seed: int):
    """(name, pruned artifact, seconds an epoch) for gradual 92% and each variational weight."""
    settings = {"gradual 92%": sf.PruneSettings(method="gradual", sparsity=0.92, epochs=EPOCHS, seed=seed)}
    for weight in KL_WEIGHTS:
        settings[f"variational {weight}"] = sf.PruneSettings(method="variational", kl_weight=weight, epochs=EPOCHS,
                                                          seed=seed)  # fmt: skip
    for name, chosen in settings.items():
        began = time.perf_counter()
        artifact = sf.prune(trained, data, chosen, CPU).artifact
        yield name, artifact, (time.perf_counter() - began) / EPOCHS


def _row(case, seed, pruning, bits, artifact, data, float_bytes, epoch_s, folder) -> dict:
    reloaded = sf.Artifact.load(artifact.save(folder / f"{case[1]}-{seed}-{pruning}-{bits}".replace(" ", "_")))
    costs = sf.cost(reloaded)
    return {
        "dataset": case[0], "model": case[1], "seed": seed, "pruning": pruning, "bits": bits,
        "size_bytes": int(costs["cost_size_bytes"]), "reduction": round(float_bytes / costs["cost_size_bytes"], 2),
        "entropy_bound_ratio": round(costs["cost_size_bytes"] / costs["cost_size_entropy_bytes"], 3),
        "sparsity": round(costs["cost_sparsity"], 4),
        "val_accuracy": round(sf.score(reloaded.model, *data.val, CPU)["accuracy"], 4),
        "test_accuracy": round(sf.score(reloaded.model, data.x_test, data.y_test, CPU)["accuracy"], 4),
        "prune_epoch_s": round(epoch_s, 3),
    }  # fmt: skip


def _rows(case: tuple[str, str], seed: int, folder: Path) -> list[dict]:
    data = sf.load_dataset(case[0])
    began = time.perf_counter()
    result = sf.train(sf.new_artifact(case[1], data, seed=seed), data, sf.FitSettings(seed=seed), CPU)
    trained, train_epoch_s = result.artifact, (time.perf_counter() - began) / result.fit.epochs_run
    float_bytes = sf.cost(trained)["cost_size_bytes"]
    rows = [_row(case, seed, "none", "float32", trained, data, float_bytes, train_epoch_s, folder)]
    for pruning, pruned, epoch_s in _pruned(trained, data, seed):
        for bits in ("4", "auto"):
            if pruning.startswith("gradual") and bits == "auto":
                continue
            quantized = sf.quantize(pruned, data, sf.QuantizeSettings(method="kmeans", bits=bits), CPU).artifact
            rows.append(_row(case, seed, pruning, bits, quantized, data, float_bytes, epoch_s, folder))
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            for seed in (0, 1, 2):
                rows += _rows(case, seed, Path(tmp))
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(RESULTS, index=False)  # what is done so far survives an interruption
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
