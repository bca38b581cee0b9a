"""Shared by the benchmarks: untrained digits models saved and reloaded as checkpoints; time a
baseline and a candidate model interleaved in one process; write a results table."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shrinkflow.checkpoint import load_checkpoint, save_checkpoint
from shrinkflow.latency import deployed, interleaved_rounds, speedup
from shrinkflow.zoo import build_model, describe

ROUNDS = 20  # alternating rounds per measurement (the one timer: shrinkflow.latency.interleaved_rounds)


def untrained_digits_model(name: str) -> tuple[torch.nn.Module, dict]:
    """A zoo model for the 8x8 digits, seeded but untrained (weights do not change the speed of
    dense kernels), and its description."""
    torch.manual_seed(0)
    description = {"architecture": describe(name, (1, 8, 8), 10), "class_names": [str(i) for i in range(10)]}
    return build_model(description["architecture"]).eval(), description


def reloaded(models: dict[str, tuple[torch.nn.Module, dict]], folder: Path) -> dict[str, torch.nn.Module]:
    """Each (model, description) saved as a checkpoint under ``folder`` and loaded back: the form
    that is timed is the one users deploy."""
    for name, (model, description) in models.items():
        save_checkpoint(model, description, folder / name)
    return {name: load_checkpoint(folder / name)[0] for name in models}


def speedup_table(
    models: dict[str, torch.nn.Module],
    input_shape,
    runs: tuple[tuple[int, int], ...],
    forms=("eager", "traced"),
    engines: tuple[str, ...] = (),
) -> pd.DataFrame:
    """``models``: {baseline name: model, candidate name: model}; ``runs``: (batch size, timed
    passes per model) pairs. One row per batch size, execution form and int8 engine of
    ``engines`` (none: the engine set now), 1 thread: the two models timed in ``ROUNDS``
    alternating rounds after 50 warm-up passes; the speed-up is the median of the rounds' paired
    ratios with its 95% interval."""
    (base, candidate) = models
    torch.set_num_threads(1)
    rows = []
    for batch_size, repetitions in runs:
        example = torch.randn(batch_size, *input_shape)
        for form in forms:
            for engine in engines or (torch.backends.quantized.engine,):
                with contextlib.ExitStack() as stack:
                    runs_ = {
                        name: stack.enter_context(deployed(m, example, form, engine)) for name, m in models.items()
                    }
                    timed = interleaved_rounds(
                        {name: run.runnable for name, run in runs_.items()}, example, ROUNDS,
                        max(1, repetitions // ROUNDS), 50, {name: run.engine for name, run in runs_.items()},
                    )  # fmt: skip
                measured = speedup(timed[base], timed[candidate])
                rows.append({"batch_size": batch_size, "form": form, **({"engine": engine} if engines else {}),
                             f"{base}_p50_ms": float(np.median(timed[base])),
                             f"{candidate}_p50_ms": float(np.median(timed[candidate])),
                             "speedup": measured.median, "low": measured.low, "high": measured.high})  # fmt: skip
    return pd.DataFrame(rows)


def write_results(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.4f")
    print(table.to_string(index=False, float_format="%.4f"))
