"""How repeatable is the benchmark step's latency? Time each zoo model twice in one process.

For every zoo model and batch size, two back-to-back measurements (the benchmark step's
defaults: 20 warm-up passes, 200 timed passes, 1 thread) and the ratio of their medians.
Results: benchmarks/results/latency_repeatability.csv, shown in docs/benchmarks.md.

    python -m benchmarks.latency_repeatability
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from benchmarks._speedup import write_results
from shrinkflow.latency import measure_latency
from shrinkflow.zoo import build_model, describe

RESULTS = Path(__file__).resolve().parent / "results" / "latency_repeatability.csv"
SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "cnn1d": (1, 40), "lstm": (1, 40)}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, shape in SHAPES.items():
        model = build_model(describe(name, shape, 10)).eval()
        for batch_size in (1, 64):
            example = torch.randn(batch_size, *shape)
            first, second = (measure_latency(model, example, torch.device("cpu"), 20, 200) for _ in range(2))
            rows.append(
                {
                    "model": name,
                    "batch_size": batch_size,
                    "p50_ms_first": first.p50_ms,
                    "p50_ms_second": second.p50_ms,
                    "ratio": second.p50_ms / first.p50_ms,
                }
            )
    table = pd.DataFrame(rows)
    write_results(table, RESULTS)
    print(f"worst |ratio - 1|: {(table['ratio'] - 1).abs().max():.3f}  ->  {RESULTS}")


if __name__ == "__main__":
    main()
