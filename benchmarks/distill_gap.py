"""How close does distillation bring a quarter-size student to its teacher? mnist1d, 3 seeds.

For seeds 0, 1 and 2: trains the ``cnn1d`` teacher with ``train``'s defaults, then distills it
into ``cnn1d`` width 0.4, depth 4 (1,300 of 5,210 parameters) with the library's ``distill``,
once with the step's defaults and once with function matching (T 1, α 1,
``input_noise`` 0.2, 600 epochs); each run also trains its from-scratch control. CPU, 1 thread.
Results: benchmarks/results/distill_gap.csv (one row per seed and recipe, then the means),
shown in docs/benchmarks.md. Takes about 7 minutes.

    python -m benchmarks.distill_gap
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from benchmarks._speedup import write_results
from shrinkflow import Artifact, DistillSettings, FitSettings, distill, load_dataset, new_artifact, score, train

RESULTS = Path(__file__).resolve().parent / "results" / "distill_gap.csv"
CPU = torch.device("cpu")
RECIPES = {
    "defaults": {},
    "function matching": {"temperature": 1.0, "alpha": 1.0, "input_noise": 0.2, "epochs": 600},
}


def _teacher(data, seed: int) -> Artifact:
    settings = FitSettings(seed=seed)  # the train step's defaults
    return train(new_artifact("cnn1d", data, seed=seed), data, settings, CPU).artifact


def _row(seed: int, recipe: str, teacher: Artifact, data) -> dict:
    settings = DistillSettings(student_width=0.4, student_depth=4, seed=seed, **RECIPES[recipe])
    result = distill(teacher, data, settings, CPU)
    models = {"teacher": teacher.model, "student": result.artifact.model, "control": result.control.model}
    accuracy = {name: score(m, data.x_test, data.y_test, CPU)["accuracy"] * 100 for name, m in models.items()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    return {
        "seed": seed, "recipe": recipe, **{f"{k}_accuracy": v for k, v in accuracy.items()},
        "gain_pp": accuracy["student"] - accuracy["control"], "gap_pp": accuracy["teacher"] - accuracy["student"],
        "param_share": params["student"] / params["teacher"],
    }  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    rows = []
    for seed in (0, 1, 2):
        teacher = _teacher(data, seed)
        for recipe in RECIPES:
            rows.append(_row(seed, recipe, teacher, data))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    means = table.drop(columns="seed").groupby("recipe", sort=False).mean().reset_index().assign(seed="mean")
    write_results(pd.concat([table, means], ignore_index=True), RESULTS)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
