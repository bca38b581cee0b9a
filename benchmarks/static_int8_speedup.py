"""Is static int8 faster than float32 for a CNN? The digits CNN timed in both, in the same form.

Builds the default digits ``cnn``, its static-int8 copy (FX graph mode, histogram observer,
calibrated on 10 batches of 100 random images: ranges change the scales, not the speed), saves
and reloads both as checkpoints, and times them in one process (1 thread, 50 warm-up passes,
1,000 timed passes at batch 1 and 300 at batch 64), eager and traced-and-frozen, the int8 model
with each of PyTorch's int8 engines (x86, fbgemm, qnnpack, onednn). Results:
benchmarks/results/static_int8_speedup.csv, shown in docs/benchmarks.md.

    python -m benchmarks.static_int8_speedup
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from benchmarks._speedup import speedup_table, write_results
from shrinkflow._encoding import INT8_GRAPH, convert_int8, int8_engines, prepare_static_int8
from shrinkflow.checkpoint import load_checkpoint, save_checkpoint
from shrinkflow.zoo import build_model, describe

RESULTS = Path(__file__).resolve().parent / "results" / "static_int8_speedup.csv"
_SHAPE = (1, 8, 8)


def _artifacts(folder: Path) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    description = {"architecture": describe("cnn", _SHAPE, 10), "class_names": [str(i) for i in range(10)]}
    fp32 = build_model(description["architecture"]).eval()
    save_checkpoint(fp32, description, folder / "fp32")
    prepared = prepare_static_int8(copy.deepcopy(fp32), torch.zeros(1, *_SHAPE), "histogram")
    with torch.no_grad():
        for _ in range(10):
            prepared(torch.rand(100, *_SHAPE))
    quantize = {"method": "static-int8", "observer": "histogram", "int8_graph": INT8_GRAPH}
    save_checkpoint(
        convert_int8(prepared), {**description, "storage": "int8-static", "quantize": quantize}, folder / "int8"
    )
    return {name: load_checkpoint(folder / name)[0] for name in ("fp32", "int8")}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = _artifacts(Path(tmp))
    write_results(speedup_table(models, _SHAPE, ((1, 1000), (64, 300)), engines=int8_engines()), RESULTS)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
