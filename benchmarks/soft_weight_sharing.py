"""Soft weight-sharing (``sws``) against k-means sharing, alone and after learned pruning.

For the digits ``mlp`` (default training, seeds 0-2): ``sws`` at 4 bits on the trained model (60
epochs); then after ``variational`` pruning (60 epochs, ``kl_weight`` 0.3 and 1: the
learned_compression benchmark's best rows) ``kmeans`` (no fine-tuning) beside ``sws`` (30
epochs) at 4 and 3 bits; ``prior_weight`` at its default. Bytes of the saved checkpoint against
the float32 baseline's, validation accuracy (what defaults are chosen on) and test accuracy
(reported), the entropy bound, seconds an epoch of the last stage.
Results: benchmarks/results/soft_weight_sharing.csv, summarized in the README.

    python -m benchmarks.soft_weight_sharing
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import shrinkflow as sf
from benchmarks.learned_compression import _row

RESULTS = Path(__file__).resolve().parent / "results" / "soft_weight_sharing.csv"
CPU = torch.device("cpu")
CASE = ("digits", "mlp")


def _timed(make):
    began = time.perf_counter()
    artifact = make()
    return artifact, time.perf_counter() - began


def _rows(seed: int, folder: Path) -> list[dict]:
    data = sf.load_dataset(CASE[0])
    trained = sf.train(sf.new_artifact(CASE[1], data, seed=seed), data, sf.FitSettings(seed=seed), CPU).artifact
    float_bytes = sf.cost(trained)["cost_size_bytes"]
    rows = [_row(CASE, seed, "none", "float32", trained, data, float_bytes, 0.0, folder)]

    def add(pruning: str, start, method: str, bits: str, epochs: int) -> None:
        settings = sf.QuantizeSettings(method=method, bits=bits, epochs=epochs, seed=seed)
        made, seconds = _timed(lambda: sf.quantize(start, data, settings, CPU).artifact)
        rows.append(
            _row(CASE, seed, pruning, f"{method} {bits}", made, data, float_bytes, seconds / max(epochs, 1), folder)
        )
        print(rows[-1], file=sys.stderr, flush=True)

    add("none", trained, "sws", "4", 60)
    for kl_weight, bits_choices in ((0.3, ("4", "3")), (1.0, ("4",))):
        variational = sf.PruneSettings(method="variational", kl_weight=kl_weight, epochs=60, seed=seed)
        pruned = sf.prune(trained, data, variational, CPU).artifact
        for bits in bits_choices:
            add(f"variational kl {kl_weight}", pruned, "kmeans", bits, 0)
            add(f"variational kl {kl_weight}", pruned, "sws", bits, 30)
    return rows


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1, 2):
            rows += _rows(seed, Path(tmp))
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(RESULTS, index=False)  # what is done so far survives an interruption
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
