"""Is dynamic int8 faster than float32? The digits MLP timed in both, in the same execution form.

Builds the default digits ``mlp`` (LeNet-300-100), its dynamic-int8 copy, saves and reloads both
as checkpoints, and times them in one process (1 thread, 50 warm-up passes, 1,000 timed passes
at batch 1 and 300 at batch 256), eager and traced-and-frozen, the int8 model with each of
PyTorch's int8 engines (x86, fbgemm, qnnpack, onednn). Weights do not change the speed of
dense kernels, so no training is needed. Results: benchmarks/results/int8_speedup.csv,
shown in docs/benchmarks.md.

    python -m benchmarks.int8_speedup
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks._speedup import reloaded, speedup_table, untrained_digits_model, write_results
from shrinkflow._encoding import dynamic_int8, int8_engines

RESULTS = Path(__file__).resolve().parent / "results" / "int8_speedup.csv"


def _artifacts(folder: Path) -> dict[str, torch.nn.Module]:
    fp32, description = untrained_digits_model("mlp")
    int8 = (dynamic_int8(fp32), {**description, "storage": "int8-dynamic"})
    return reloaded({"fp32": (fp32, description), "int8": int8}, folder)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = _artifacts(Path(tmp))
    write_results(speedup_table(models, (1, 8, 8), ((1, 1000), (256, 300)), engines=int8_engines()), RESULTS)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
