"""Is dynamic int8 faster than float32? The digits MLP timed in both, in the same execution form.

Builds the default digits ``mlp`` (LeNet-300-100), its dynamic-int8 copy, saves and reloads both
as checkpoints, and times them in one process (1 thread, 50 warm-up passes, 1,000 timed passes
at batch 1 and 300 at batch 256), eager and traced-and-frozen. Weights do not change the speed of
dense kernels, so no training is needed. Results: benchmarks/results/int8_speedup.csv,
summarized in the README.

    python -m benchmarks.int8_speedup
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import torch

from steps._checkpoint import load_checkpoint, save_checkpoint
from steps._latency import deployable, measure_latency
from steps._quantization import dynamic_int8
from steps._zoo import build_model, describe

RESULTS = Path(__file__).resolve().parent / "results" / "int8_speedup.csv"


def _artifacts(folder: Path) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    description = {"architecture": describe("mlp", (1, 8, 8), 10), "class_names": [str(i) for i in range(10)]}
    fp32 = build_model(description["architecture"]).eval()
    save_checkpoint(fp32, description, folder / "fp32")
    save_checkpoint(dynamic_int8(fp32), {**description, "storage": "int8-dynamic"}, folder / "int8")
    return {name: load_checkpoint(folder / name)[0] for name in ("fp32", "int8")}


def main() -> None:
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        models = _artifacts(Path(tmp))
    rows = []
    for batch_size, repetitions in ((1, 1000), (256, 300)):
        example = torch.randn(batch_size, 1, 8, 8)
        for form in ("eager", "traced"):
            p50 = {
                name: measure_latency(deployable(model, example, form), example, cpu, 50, repetitions).p50_ms
                for name, model in models.items()
            }
            rows.append({"batch_size": batch_size, "form": form, "fp32_p50_ms": p50["fp32"],
                         "int8_p50_ms": p50["int8"], "speedup": p50["fp32"] / p50["int8"]})  # fmt: skip
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS, index=False, float_format="%.4f")
    print(table.to_string(index=False, float_format="%.4f"))
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
