"""Training throughput, one process against two under torchrun, on this machine's cores.

Trains mnist1d ``cnn1d`` at 4x width (the same global batch of 100, seed, and epochs every
time) in these set-ups, each timed around ``train`` (startup excluded, per-epoch validation
included):
- 1 process with 1 thread, and with as many threads as the machine has cores;
- 2 processes under torchrun (gloo), 1 thread each, as DDP and as FSDP.
Samples per second = epochs x training samples / seconds. On a 2-core machine two processes
compete for the same two cores that one process with 2 threads already uses: data parallelism
pays across machines or GPUs, not across the cores of one small CPU.
Results: benchmarks/results/ddp_throughput.csv, shown in docs/benchmarks.md.

    python -m benchmarks.ddp_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from shrinkflow import distributed
from shrinkflow.artifact import new_artifact
from shrinkflow.data import load_dataset
from shrinkflow.training import Execution, FitSettings, train

RESULTS = Path(__file__).resolve().parent / "results" / "ddp_throughput.csv"
EPOCHS, WIDTH = 30, 4.0


def measure(parallel: str) -> dict:
    """Train once in this process (under torchrun: as one of its processes); what was measured."""
    device = distributed.setup(torch.device("cpu"))
    data = load_dataset("mnist1d", "label")
    start = time.perf_counter()
    result = train(
        new_artifact("cnn1d", data, width=WIDTH, seed=0), data, FitSettings(epochs=EPOCHS, patience=0, seed=0),
        device, execution=Execution(parallel=parallel),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "samples_per_second": round(EPOCHS * len(data.x_train) / seconds, 1),
        "val_accuracy": result.fit.best_val_accuracy,
        "params": sum(p.numel() for p in result.artifact.model.parameters()),
        "params_per_process": result.params_per_process,
    }


def _run(setup: str, processes: int, threads: int, parallel: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        worker = ["-m", "benchmarks.ddp_throughput", "--worker", parallel, "--out", str(out)]
        if processes == 1:
            command = [sys.executable, *worker]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
            command += worker
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
        measured = json.loads(out.read_text())
    row = {"setup": setup, "processes": processes, "threads_per_process": threads, "parallel": parallel, **measured}
    print(row, file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        measured = measure(args.worker)
        if distributed.is_main():
            args.out.write_text(json.dumps(measured))
        return
    cores = os.cpu_count() or 1
    rows = [
        _run("1 process, 1 thread", 1, 1, "ddp"),
        _run(f"1 process, {cores} threads", 1, cores, "ddp"),
        _run("2 processes (DDP), 1 thread each", 2, 1, "ddp"),
        _run("2 processes (FSDP), 1 thread each", 2, 1, "fsdp"),
    ]
    table = pd.DataFrame(rows)
    table["speedup_vs_1_thread"] = (table["samples_per_second"] / table["samples_per_second"][0]).round(2)
    table.insert(0, "cores", cores)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
