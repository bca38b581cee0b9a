"""Does a speed-up survive a busy machine? compare's timer on the digits cnn pair, quiet and loaded.

The pair: the fp32 cnn and the ``int8_deploy`` model (structured 50% + static int8), both in the
default target (ONNX Runtime, 1 thread), built as ``benchmarks.peers`` builds them. Each trial
times them with compare's interleaved timer at its defaults (20 rounds of 50 calls, the order
reversed every other round) at batch 1 and 64, alternately on a quiet machine and with one
busy-loop process beside it (a pure-Python spin, as another tenant's job would be). Written:
benchmarks/results/compare_under_load.csv (one row per trial, load and batch size: the median
speed-up, its 95% interval, whether compare would warn that it is too noisy), shown in
docs/benchmarks.md with the busy median over the quiet one.

    python -m benchmarks.compare_under_load [--trials 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks._speedup import write_results
from benchmarks.peers import build_models
from shrinkflow import load_dataset
from shrinkflow.latency import first_samples, interleaved_rounds, speedup, torch_threads
from steps.compare import CompareConfig

RESULTS = Path(__file__).resolve().parent / "results" / "compare_under_load.csv"
PAIR = ("fp32 onnxruntime", "shrinkflow int8_deploy")


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(1000))


def _timed(runnables: dict, data, size: int) -> tuple:
    defaults = CompareConfig(run_ids="x")  # compare's own rounds, calls and warm-up
    example = first_samples(data.x_test, size)
    timed = interleaved_rounds(runnables, example, defaults.rounds, defaults.repetitions, defaults.warmup)
    return speedup(timed[PAIR[0]], timed[PAIR[1]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="quiet/busy pairs of measurements")
    args = parser.parse_args(argv)
    data = load_dataset("digits")
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models("cnn", data, 0, Path(tmp))
    runnables = {name: models[name][0] for name in PAIR}
    rows = []
    with torch_threads(1):
        for trial in range(args.trials):
            for load in ("quiet", "busy"):
                stop = multiprocessing.Event()
                spinner = multiprocessing.Process(target=_spin, args=(stop,)) if load == "busy" else None
                if spinner:
                    spinner.start()
                    time.sleep(0.5)  # let it take its core
                try:
                    for size in (1, 64):
                        measured = _timed(runnables, data, size)
                        rows.append({"trial": trial, "load": load, "batch_size": size, "speedup": measured.median,
                                     "low": measured.low, "high": measured.high, "noisy": measured.noisy})  # fmt: skip
                finally:
                    if spinner:
                        stop.set()
                        spinner.join()
    table = pd.DataFrame(rows)
    write_results(table, RESULTS)
    medians = table.groupby(["batch_size", "load"])["speedup"].median().unstack()
    print((medians["busy"] / medians["quiet"]).rename("busy_over_quiet").to_string())
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
