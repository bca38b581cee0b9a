"""Shared by the benchmarks: time a baseline and a candidate model in one process; write a results table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from shrinkflow.latency import deployed, measure_latency


def speedup_table(
    models: dict[str, torch.nn.Module],
    input_shape,
    runs: tuple[tuple[int, int], ...],
    forms=("eager", "traced"),
    engines: tuple[str, ...] = (),
) -> pd.DataFrame:
    """``models``: {baseline name: model, candidate name: model}; ``runs``: (batch size, timed
    passes) pairs. One row per batch size, execution form and int8 engine of ``engines`` (none:
    the engine set now), 1 thread, 50 warm-up passes."""
    (base, candidate) = models
    cpu = torch.device("cpu")
    torch.set_num_threads(1)
    rows = []
    for batch_size, repetitions in runs:
        example = torch.randn(batch_size, *input_shape)
        for form in forms:
            for engine in engines or (torch.backends.quantized.engine,):
                p50 = {}
                for name, model in models.items():
                    with deployed(model, example, form, engine) as run:
                        p50[name] = measure_latency(run.runnable, example, cpu, 50, repetitions).p50_ms
                rows.append({"batch_size": batch_size, "form": form, **({"engine": engine} if engines else {}),
                             f"{base}_p50_ms": p50[base], f"{candidate}_p50_ms": p50[candidate],
                             "speedup": p50[base] / p50[candidate]})  # fmt: skip
    return pd.DataFrame(rows)


def write_results(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.4f")
    print(table.to_string(index=False, float_format="%.4f"))
