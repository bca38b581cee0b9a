"""The CUDA paths, exercised on a GPU machine: bf16 autocast (AMP) training, DDP and FSDP over
NCCL under torchrun, compiled training, and latency on the GPU beside the CPU.

Library calls only, no MLflow (the GPU machine this ran on has no MLflow; the steps add nothing
on the device path but logging). Results go to a JSON file.

    python -m benchmarks.gpu_check single --out gpu_single.json
    torchrun --nproc-per-node 1 -m benchmarks.gpu_check nccl --out gpu_nccl.json

With one GPU, NCCL runs with one process (NCCL refuses two processes on one GPU): the process
group, DistributedDataParallel's gradient all-reduce and FSDP's all-gather / reduce-scatter all
go through NCCL, over one rank. ``--device cpu`` runs the same code on the CPU (gloo), to try
the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from shrinkflow import distributed
from shrinkflow.artifact import new_artifact
from shrinkflow.data import load_dataset
from shrinkflow.latency import deployable, first_samples, measure_latency, torch_threads
from shrinkflow.training import Execution, FitSettings, score, train

CPU = torch.device("cpu")


def _train(data, device: torch.device, epochs: int, execution: Execution | None = None, model: str = "cnn"):
    """Train ``model`` on ``data``; return what was measured and the trained artifact."""
    execution = execution or Execution()
    settings = FitSettings(epochs=epochs, patience=0, seed=0)
    start = time.perf_counter()
    result = train(new_artifact(model, data, seed=0), data, settings, device, execution=execution)
    seconds = time.perf_counter() - start
    return {
        "device": str(device),
        "autocast": "bf16" if device.type == "cuda" else "none (fp32)",
        "compile": execution.compile,
        "parallel": execution.parallel if torch.distributed.is_initialized() else "none",
        "epochs": epochs,
        "seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / epochs, 4),
        "val_accuracy": result.fit.best_val_accuracy,
        "test_accuracy": score(result.artifact.model, data.x_test, data.y_test, CPU)["accuracy"],
        "params_per_process": result.params_per_process,
    }, result.artifact


def _latency(model: torch.nn.Module, data, devices, forms, batch_sizes) -> list[dict]:
    rows = []
    for device in devices:
        for form in forms:
            for size in batch_sizes:
                example = first_samples(data.x_test, size).to(device)
                with torch_threads(1):
                    runnable = deployable(model.to(device), example, form)
                    result = measure_latency(runnable, example, device, 20, 200, model)
                rows.append({
                    "device": device.type, "form": form, "batch_size": size, "p50_ms": result.p50_ms,
                    "throughput_sps": result.throughput_sps, "peak_memory_bytes": result.peak_memory_bytes,
                })  # fmt: skip
        model.to(CPU)
    return rows


def single(device: torch.device, epochs: int) -> dict:
    data = load_dataset("digits", "label")
    report = {"torch": torch.__version__, "platform": platform.platform()}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    report["train_cpu_fp32"], _ = _train(data, CPU, epochs)
    report["train_amp"], trained = _train(data, device, epochs)
    report["train_amp_compiled"], _ = _train(data, device, epochs, Execution(compile=True))
    devices = (CPU, device) if device.type == "cuda" else (CPU,)
    report["latency"] = _latency(trained.model, data, devices, ("eager", "compiled"), (1, 64, 1024))
    return report


def nccl(device: torch.device, epochs: int) -> dict:
    device = distributed.setup(device)
    data = load_dataset("digits", "label")
    report = {
        "backend": torch.distributed.get_backend(),
        "world_size": torch.distributed.get_world_size(),
        "device": str(device),
    }
    report["ddp"], _ = _train(data, device, epochs, Execution(parallel="ddp"))
    report["fsdp"], _ = _train(data, device, epochs, Execution(parallel="fsdp"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("single", "nccl"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    device = torch.device(args.device)
    report = single(device, args.epochs) if args.mode == "single" else nccl(device, args.epochs)
    if distributed.is_main():
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
