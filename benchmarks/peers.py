"""Shrinkflow's int8 models against what a user would pick instead, on this CPU, in one process.

Peers: the same trained fp32 model in PyTorch (eager) and exported to ONNX Runtime, ONNX Runtime's
own ``quantize_static`` (QDQ, calibrated on exactly the samples Shrinkflow's static int8
calibrates on) and ``quantize_dynamic`` of that fp32 ONNX model. torchao's int8 weight-only is not
run: torchao is not a dependency, and its int8 is slower than fp32 on a CPU unless compiled.
Shrinkflow's models run in their deployment form, ONNX Runtime (their own export):
- digits ``cnn``: ``static-int8``, and the ``int8_deploy`` recipe (structured 50% + static-int8);
- digits ``mlp``: ``dynamic-int8``.

Every model runs through the same ONNX Runtime session settings and I/O binding (1 thread), timed
with Shrinkflow's interleaved timer (rounds alternate the models, order reversed every other
round); each speed-up is the median ratio of paired rounds with its 95% interval. Accuracy: the
test split, through the runtime that is timed. Bytes: the ONNX file; Shrinkflow's models also
their checkpoint. Results: benchmarks/results/peers.csv (one row per model and batch size) and
benchmarks/results/peers_head_to_head.csv (the issue's comparisons), shown in docs/benchmarks.md.

    python -m benchmarks.peers [--rounds 30] [--calls 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import shrinkflow as sf
from benchmarks._speedup import write_results
from shrinkflow.latency import OnnxRuntimeModel, first_samples, interleaved_rounds, speedup, torch_threads
from shrinkflow.onnx_export import export_onnx

RESULTS = Path(__file__).resolve().parent / "results" / "peers.csv"
HEAD_TO_HEAD = Path(__file__).resolve().parent / "results" / "peers_head_to_head.csv"
CPU = torch.device("cpu")
BATCH_SIZES = (1, 64)
# (model, reference, what the issue asks of the ratio)
COMPARISONS = {
    "cnn": [
        ("shrinkflow static-int8", "ort quantize_static", ">= 1.0"),
        ("shrinkflow int8_deploy", "fp32 onnxruntime", ">= 1.0 at batch 1, >= 1.9 at batch 64"),
        ("shrinkflow static-int8", "fp32 eager", "report"),
        ("fp32 onnxruntime", "fp32 eager", "report"),
    ],
    "mlp": [
        ("shrinkflow dynamic-int8", "ort quantize_dynamic", ">= 1.0"),
        ("shrinkflow dynamic-int8", "fp32 eager", "report"),
        ("fp32 onnxruntime", "fp32 eager", "report"),
    ],
}


def _ort_peer(fp32_onnx: bytes, folder: Path, calibration: list[torch.Tensor] | None) -> bytes:
    """ONNX Runtime's own int8 of ``fp32_onnx``: static (QDQ, its defaults) when given
    calibration batches, else dynamic (its defaults)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, out = folder / "fp32.onnx", folder / "fp32_pre.onnx", folder / "peer.onnx"
    source.write_bytes(fp32_onnx)
    quant_pre_process(str(source), str(prepared))  # what ONNX Runtime's docs ask for before quantizing
    if calibration is None:
        quantize_dynamic(str(prepared), str(out))
        return out.read_bytes()

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": batch.numpy()} for batch in calibration])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(out), Batches())
    return out.read_bytes()


def build_models(name: str, data, seed: int, folder: Path) -> dict[str, tuple[object, int, int | None]]:
    """{label: (runnable, ONNX bytes or 0, checkpoint bytes or None)}, all trained with ``seed``."""
    sf.seed_everything(seed)
    fp32 = sf.train(sf.new_artifact(name, data, seed=seed), data, sf.FitSettings(seed=seed), CPU).artifact.reloaded()
    fp32_onnx = export_onnx(fp32.model, data.x_test[:2])
    ours = {}
    if name == "cnn":
        settings = sf.QuantizeSettings(method="static-int8", seed=seed)
        ours["shrinkflow static-int8"] = sf.quantize(fp32, data, settings, CPU).artifact.reloaded()
        structured = sf.PruneSettings(method="structured", sparsity=0.5, epochs=60, seed=seed)
        pruned = sf.prune(fp32, data, structured, CPU).artifact
        ours["shrinkflow int8_deploy"] = sf.quantize(pruned, data, settings, CPU).artifact.reloaded()
        # the samples Shrinkflow's static int8 calibrates on: its first batches of the train split
        calibration = list(data.split("train")[0].split(settings.batch_size))[: settings.calibration_batches]
        peer = {"ort quantize_static": _ort_peer(fp32_onnx, folder, calibration)}
    else:
        settings = sf.QuantizeSettings(method="dynamic-int8", seed=seed)
        ours["shrinkflow dynamic-int8"] = sf.quantize(fp32, data, settings, CPU).artifact.reloaded()
        peer = {"ort quantize_dynamic": _ort_peer(fp32_onnx, folder, None)}
    models = {
        "fp32 eager": (fp32.model.eval(), 0, sf.cost(fp32)["cost_size_bytes"]),
        "fp32 onnxruntime": (
            OnnxRuntimeModel.from_onnx(fp32_onnx, 1),
            len(fp32_onnx),
            sf.cost(fp32)["cost_size_bytes"],
        ),
    }
    for label, onnx_model in peer.items():
        models[label] = (OnnxRuntimeModel.from_onnx(onnx_model, 1), len(onnx_model), None)
    for label, artifact in ours.items():
        runner = OnnxRuntimeModel(artifact.model, data.x_test[:2], 1)  # Shrinkflow's export, as deployed
        models[label] = (runner, len(runner.onnx_model), sf.cost(artifact)["cost_size_bytes"])
    return models


def _accuracy(runnable, data) -> float:
    with torch.inference_mode():
        logits = runnable(data.x_test)
        return (logits.argmax(1) == data.y_test).double().mean().item()


def measure(name: str, rounds: int, calls: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = sf.load_dataset("digits")
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        models = build_models(name, data, seed, Path(tmp))
        accuracy = {label: _accuracy(runnable, data) for label, (runnable, _, _) in models.items()}
        runnables = {label: runnable for label, (runnable, _, _) in models.items()}
        timed = {
            size: interleaved_rounds(runnables, first_samples(data.x_test, size), rounds, calls, warmup=50)
            for size in BATCH_SIZES
        }
    rows, pairs = [], []
    for label, (_, onnx_bytes, checkpoint_bytes) in models.items():
        for size in BATCH_SIZES:
            measured = speedup(timed[size]["fp32 eager"], timed[size][label])
            rows.append({"model": name, "form": label, "batch_size": size, "test_accuracy": accuracy[label],
                         "onnx_bytes": onnx_bytes or None, "checkpoint_bytes": checkpoint_bytes,
                         "median_ms": float(np.median(timed[size][label])), "speedup_vs_fp32_eager": measured.median,
                         "low": measured.low, "high": measured.high})  # fmt: skip
    for label, reference, bar in COMPARISONS[name]:
        for size in BATCH_SIZES:
            measured = speedup(timed[size][reference], timed[size][label])
            pairs.append({"model": name, "candidate": label, "reference": reference, "batch_size": size,
                          "speedup": measured.median, "low": measured.low, "high": measured.high,
                          "accuracy_delta_pp": (accuracy[label] - accuracy[reference]) * 100, "bar": bar})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timing rounds (each times every model in turn)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per model and round")
    args = parser.parse_args(argv)
    tables = [measure(name, args.rounds, args.calls) for name in ("cnn", "mlp")]
    write_results(pd.concat([rows for rows, _ in tables]), RESULTS)
    write_results(pd.concat([pairs for _, pairs in tables]), HEAD_TO_HEAD)
    print(f"-> {RESULTS}, {HEAD_TO_HEAD}")


if __name__ == "__main__":
    main()
