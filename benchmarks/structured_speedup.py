"""Does removing half the channels make the digits CNN faster? Latency of the reloaded artifacts.

Builds the default digits ``cnn`` and a copy with 50% of its channels and hidden neurons removed
by ``structured_prune``, saves and reloads both as checkpoints, and times both in one process
(1 thread, 50 warm-up and 1,000 timed passes at batch 1, 200 at batch 64) in every execution
form: eager, TorchScript-traced-and-frozen, and ONNX Runtime. Weights do not change latency, so
no training is needed.
Results: benchmarks/results/structured_speedup.csv, shown in docs/benchmarks.md.

    python -m benchmarks.structured_speedup
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from benchmarks._speedup import reloaded, speedup_table, untrained_digits_model, write_results
from shrinkflow._masks import structured_prune
from shrinkflow.cost import cost_summary
from shrinkflow.latency import FORMS
from shrinkflow.zoo import module_shapes

RESULTS = Path(__file__).resolve().parent / "results" / "structured_speedup.csv"


def _artifacts(folder: Path) -> dict[str, torch.nn.Module]:
    baseline, description = untrained_digits_model("cnn")
    pruned = structured_prune(copy.deepcopy(baseline), 0.5, 1, torch.zeros(1, 1, 8, 8))  # prunes in place
    resized = {**description, "architecture": {**description["architecture"], "resized": module_shapes(pruned)}}
    return reloaded({"baseline": (baseline, description), "pruned": (pruned, resized)}, folder)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = _artifacts(Path(tmp))
    write_results(speedup_table(models, (1, 8, 8), ((1, 1000), (64, 200)), FORMS), RESULTS)
    macs = [cost_summary(m, {"architecture": {"input_shape": [1, 8, 8]}})["cost_macs"] for m in models.values()]
    print(f"MACs per sample: {macs[0]} -> {macs[1]} ({macs[0] / macs[1]:.2f}x fewer)  ->  {RESULTS}")


if __name__ == "__main__":
    main()
