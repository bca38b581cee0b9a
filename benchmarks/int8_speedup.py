"""Is dynamic int8 faster than float32? The digits MLP timed in both, in the same execution form.

Builds the default digits ``mlp`` (LeNet-300-100), its dynamic-int8 copy, saves and reloads both
as checkpoints, and times them in one process (1 thread, 50 warm-up passes, 1,000 timed passes
at batch 1 and 300 at batch 256), eager and traced-and-frozen, the int8 model with each of
PyTorch's int8 engines (x86, fbgemm, qnnpack, onednn). Weights do not change the speed of
dense kernels, so no training is needed. Results: benchmarks/results/int8_speedup.csv,
summarized in the README.

    python -m benchmarks.int8_speedup
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks._speedup import speedup_table, write_results
from shrinkflow.checkpoint import load_checkpoint, save_checkpoint
from shrinkflow.encoding import dynamic_int8, int8_engines
from shrinkflow.zoo import build_model, describe

RESULTS = Path(__file__).resolve().parent / "results" / "int8_speedup.csv"


def _artifacts(folder: Path) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    description = {"architecture": describe("mlp", (1, 8, 8), 10), "class_names": [str(i) for i in range(10)]}
    fp32 = build_model(description["architecture"]).eval()
    save_checkpoint(fp32, description, folder / "fp32")
    save_checkpoint(dynamic_int8(fp32), {**description, "storage": "int8-dynamic"}, folder / "int8")
    return {name: load_checkpoint(folder / name)[0] for name in ("fp32", "int8")}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = _artifacts(Path(tmp))
    write_results(speedup_table(models, (1, 8, 8), ((1, 1000), (256, 300)), engines=int8_engines()), RESULTS)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
