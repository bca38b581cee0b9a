"""Soft weight-sharing (``sws``) against k-means sharing, alone and after learned pruning.

For the digits ``mlp`` and ``cnn`` and the MNIST-1D ``cnn1d`` (default training, seeds 0-2; name
some of them to run only those): ``sws`` at 4 bits on the trained model (60 epochs); then after
``variational`` pruning (60 epochs, ``kl_weight`` 0.3 and 1: the learned_compression benchmark's
best rows) ``kmeans`` (no fine-tuning) beside ``sws`` (30 epochs) at 4 and 3 bits;
``prior_weight`` at its default. Bytes of the saved checkpoint against the float32 baseline's,
validation accuracy (what defaults are chosen on) and test accuracy (reported), the entropy
bound, seconds an epoch of the last stage.
Results: benchmarks/results/soft_weight_sharing.csv (the rows of the models run replace their
earlier rows), shown in docs/benchmarks.md.

    python -m benchmarks.soft_weight_sharing [mlp] [cnn] [cnn1d]
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
CASES = {"mlp": ("digits", "mlp"), "cnn": ("digits", "cnn"), "cnn1d": ("mnist1d", "cnn1d")}


def _timed(make):
    began = time.perf_counter()
    artifact = make()
    return artifact, time.perf_counter() - began


def _rows(case: tuple[str, str], seed: int, folder: Path) -> list[dict]:
    data = sf.load_dataset(case[0])
    trained = sf.train(sf.new_artifact(case[1], data, seed=seed), data, sf.FitSettings(seed=seed), CPU).artifact
    float_bytes = sf.cost(trained)["cost_size_bytes"]
    rows = [_row(case, seed, "none", "float32", trained, data, float_bytes, 0.0, folder)]

    def add(pruning: str, start, method: str, bits: str, epochs: int) -> None:
        settings = sf.QuantizeSettings(method=method, bits=bits, epochs=epochs, seed=seed)
        made, seconds = _timed(lambda: sf.quantize(start, data, settings, CPU).artifact)
        rows.append(
            _row(case, seed, pruning, f"{method} {bits}", made, data, float_bytes, seconds / max(epochs, 1), folder)
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


def main(argv: list[str] | None = None) -> None:
    names = (sys.argv[1:] if argv is None else argv) or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}: choose from {', '.join(CASES)}")
    earlier = pd.read_csv(RESULTS) if RESULTS.exists() else pd.DataFrame(columns=["model"])
    rows = earlier[~earlier["model"].isin(names)].to_dict("records")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for seed in (0, 1, 2):
                rows += _rows(CASES[name], seed, Path(tmp))
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(RESULTS, index=False)  # what is done so far survives an interruption
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
