"""Shared by the benchmarks that run a trained model through techniques: one row a technique."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from shrinkflow import cost, score
from shrinkflow.artifact import Artifact
from shrinkflow.config import ShrinkflowWarning

CPU = torch.device("cpu")


def technique_row(name: str, make, data, baseline: dict | None, folder: Path) -> tuple[dict, Artifact]:
    """Run ``make`` (-> Artifact), save and reload its artifact, and return its row — test
    accuracy of the reloaded checkpoint, its size on disk, MACs, and the share of the weights its
    warning line says it left float32 — with the reloaded artifact."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ShrinkflowWarning)
        artifact = make()
    warned = [str(w.message) for w in caught if issubclass(w.category, ShrinkflowWarning)]
    reloaded = Artifact.load(artifact.save(folder / name.replace(" ", "_").replace(",", "").replace("%", "")))
    costs = cost(reloaded)
    accuracy = score(reloaded.model, data.x_test, data.y_test, CPU)["accuracy"]
    share = next((line.split(", ")[1].split(" of")[0] for line in warned if " left " in line), "0%")
    row = {
        "technique": name,
        "test_accuracy": round(accuracy, 4),
        "accuracy_delta_pp": round(100 * (accuracy - baseline["test_accuracy"]), 2) if baseline else 0.0,
        "size_bytes": int(costs["cost_size_bytes"]),
        "size_reduction": round(baseline["size_bytes"] / costs["cost_size_bytes"], 2) if baseline else 1.0,
        "macs": int(costs["cost_macs"]),
        "float_share": share,
    }
    print(row, flush=True)
    return row, reloaded
