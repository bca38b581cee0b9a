"""The zoo ``transformer`` on digits through the techniques, and whether the pruned one runs faster.

The baseline is the train step's defaults (seed 0, CPU) with ``patience 0`` (all 150 epochs; the
default patience stops a transformer in its long plateau: see docs/data-and-models.md). Then, each from the
trained model:
- ``kbit`` 4 bits (no fine-tuning, and 5 epochs of straight-through fine-tuning),
- ``gradual`` to 90% sparsity (60 epochs), then ``kmeans`` 4 bits,
- ``structured`` 50% (whole heads and feed-forward units, 60 epochs of fine-tuning),
- ``dynamic-int8``, exported to ONNX and checked in ONNX Runtime.
Every size is the checkpoint the technique's artifact saves, measured on disk; accuracy is measured
on the reloaded checkpoint (test split; nothing here is chosen on it). ``float_share`` is the
share of the weights the technique left in float32 (its warning line).
The structured model and the baseline, both reloaded, are timed in the deploy form (their ONNX
exports in ONNX Runtime, 1 thread) interleaved in one process: 20 alternating rounds at batch 1
and 64, the speed-up the median of the rounds' ratios with its 95% interval.
Results: benchmarks/results/transformer.csv and transformer_speedup.csv, shown in docs/benchmarks.md.

    python -m benchmarks.transformer
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import torch

import shrinkflow as sf
from benchmarks._speedup import speedup_table, write_results
from benchmarks._techniques import technique_row
from shrinkflow.onnx_export import check_onnx, default_tolerance, export_onnx

RESULTS = Path(__file__).resolve().parent / "results" / "transformer.csv"
SPEEDUP = Path(__file__).resolve().parent / "results" / "transformer_speedup.csv"
CPU = torch.device("cpu")


def _onnx_check(model: torch.nn.Module, data) -> str:
    """The export in ONNX Runtime against PyTorch on the test split: '' when faithful, else why."""
    check = check_onnx(model, export_onnx(model, data.x_test[:1]), data.x_test)
    problem = check.problem(default_tolerance(model))
    return problem or f"ok: same class for {check.argmax_agreement:.1%} of {check.samples}"


def main() -> None:
    data = sf.load_dataset("digits")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trained = sf.train(sf.new_artifact("transformer", data, seed=0), data, sf.FitSettings(patience=0), CPU).artifact
        base, base_model = technique_row("float32", lambda: trained, data, None, folder)
        rows.append(base)
        gradual = sf.PruneSettings(method="gradual", sparsity=0.9)
        techniques = {
            "kbit 4": lambda: sf.quantize(trained, data, sf.QuantizeSettings(method="kbit", bits="4"), CPU),
            "kbit 4, 5 epochs": lambda: sf.quantize(
                trained, data, sf.QuantizeSettings(method="kbit", bits="4", epochs=5), CPU
            ),
            "gradual 90% + kmeans 4": lambda: sf.quantize(
                sf.prune(trained, data, gradual, CPU).artifact,
                data,
                sf.QuantizeSettings(method="kmeans", bits="4"),
                CPU,
            ),
            "structured 50%": lambda: sf.prune(trained, data, sf.PruneSettings(method="structured", sparsity=0.5), CPU),
            "dynamic-int8": lambda: sf.quantize(trained, data, sf.QuantizeSettings(method="dynamic-int8"), CPU),
        }
        reloaded = {}
        for name, make in techniques.items():
            row, reloaded[name] = technique_row(name, lambda make=make: make().artifact, data, base, folder)
            rows.append(row)
        rows[-1]["onnx_check"] = _onnx_check(reloaded["dynamic-int8"].model, data)
        models = {"baseline": base_model.model.eval(), "structured": reloaded["structured 50%"].model.eval()}
        write_results(speedup_table(models, (1, 8, 8), ((1, 1000), (64, 200)), ("onnxruntime",)), SPEEDUP)
    RESULTS.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
