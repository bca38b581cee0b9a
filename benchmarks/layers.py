"""Layers beyond Linear and Conv: a user's GRU classifier on MNIST-1D through the techniques.

The model is a ``package.module:factory`` of this file (a user's own code, as Shrinkflow sees it):
a GRU of 128 units over the 40 steps of an MNIST-1D signal, then a Linear head. Trained for 30
epochs, the train step's defaults otherwise (seed 0, CPU), then, each from the trained model:
- ``dynamic-int8`` (the GRU's int8 kernel and the head),
- ``kbit`` 4 bits, no fine-tuning, and with 5 epochs of straight-through fine-tuning,
- ``global`` magnitude pruning to 80%, 10 epochs of fine-tuning.
Every size is the checkpoint the technique's artifact saves, measured on disk; accuracy is measured
on the reloaded checkpoint (test split; nothing here is chosen on it). ``float_share`` is the
share of the weights the technique left in float32 (its warning line), ``macs`` the cost model's
MACs per sample (40 steps × 3 gates × 128 × (1 + 128) + 128 × 10, computed by hand in the test of
the cost model for a smaller GRU).
Results: benchmarks/results/layers.csv, shown in docs/benchmarks.md.

    python -m benchmarks.layers
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import shrinkflow as sf
from benchmarks._techniques import technique_row

RESULTS = Path(__file__).resolve().parent / "results" / "layers.csv"
CPU = torch.device("cpu")
HIDDEN = 128
EPOCHS = 30


class GRUClassifier(nn.Module):
    def __init__(self, num_classes: int, hidden: int = HIDDEN):
        super().__init__()
        self.gru, self.head = nn.GRU(1, hidden, batch_first=True), nn.Linear(hidden, num_classes)

    def forward(self, x):  # (B, 1, 40): 40 steps of one feature
        return self.head(self.gru(x.transpose(1, 2))[0][:, -1])


def gru_classifier(input_shape, num_classes):
    return GRUClassifier(num_classes)


def main() -> None:
    data = sf.load_dataset("mnist1d")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = sf.new_artifact("benchmarks.layers:gru_classifier", data, seed=0)
        trained = sf.train(model, data, sf.FitSettings(epochs=EPOCHS), CPU)
        base = technique_row("float32", lambda: trained.artifact, data, None, folder)[0]
        rows.append(base)
        techniques = {
            "dynamic-int8": lambda: sf.quantize(
                trained.artifact, data, sf.QuantizeSettings(method="dynamic-int8"), CPU
            ),
            "kbit 4": lambda: sf.quantize(trained.artifact, data, sf.QuantizeSettings(method="kbit", bits="4"), CPU),
            "kbit 4, 5 epochs": lambda: sf.quantize(
                trained.artifact, data, sf.QuantizeSettings(method="kbit", bits="4", epochs=5), CPU
            ),
            "global 80%, 10 epochs": lambda: sf.prune(
                trained.artifact, data, sf.PruneSettings(method="global", sparsity=0.8, epochs=10), CPU
            ),
        }
        for name, make in techniques.items():
            rows.append(technique_row(name, lambda make=make: make().artifact, data, base, folder)[0])
    RESULTS.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
