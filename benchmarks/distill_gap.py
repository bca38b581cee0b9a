"""How close does distillation bring a quarter-size student to its teacher? mnist1d, 3 seeds.

For seeds 0, 1 and 2: trains the ``cnn1d`` teacher with ``train``'s defaults, then distills it
into ``cnn1d`` width 0.4, depth 4 (1,300 of 5,210 parameters) with the distill step's core
function, once with the step's defaults and once with function matching (T 1, α 1,
``input_noise`` 0.2, 600 epochs); each run also trains its from-scratch control. CPU, 1 thread.
Results: benchmarks/results/distill_gap.csv (one row per seed and recipe, then the means),
summarized in the README. Takes about 7 minutes.

    python -m benchmarks.distill_gap
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from benchmarks._speedup import write_results
from steps import distill, train
from steps._data import load_dataset
from steps._training import score, seed_everything
from steps._zoo import build_model

RESULTS = Path(__file__).resolve().parent / "results" / "distill_gap.csv"
CPU = torch.device("cpu")
RECIPES = {
    "defaults": {},
    "function matching": {"temperature": 1.0, "alpha": 1.0, "input_noise": 0.2, "epochs": 600},
}


def _teacher(data, seed: int) -> tuple[torch.nn.Module, dict]:
    cfg = train.TrainConfig(model="cnn1d", dataset="mnist1d", seed=seed, device="cpu")
    seed_everything(seed)
    description = train.build_description(cfg, data)
    model = build_model(description["architecture"])
    train.train(model, data, cfg, CPU)
    return model.cpu().eval(), description


def _row(seed: int, recipe: str, teacher, description, data) -> dict:
    cfg = distill.DistillConfig(
        run_id="-", student_width=0.4, student_depth=4, seed=seed, device="cpu", **RECIPES[recipe]
    )
    arch = distill.student_architecture(cfg, description["architecture"])
    student, control = distill.distill(teacher, arch, data, cfg, CPU)
    accuracy = {name: score(m, data.x_test, data.y_test, CPU)["accuracy"] * 100
                for name, m in (("teacher", teacher), ("student", student), ("control", control))}  # fmt: skip
    return {
        "seed": seed, "recipe": recipe, **{f"{k}_accuracy": v for k, v in accuracy.items()},
        "gain_pp": accuracy["student"] - accuracy["control"], "gap_pp": accuracy["teacher"] - accuracy["student"],
        "param_share": sum(p.numel() for p in student.parameters()) / sum(p.numel() for p in teacher.parameters()),
    }  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    rows = []
    for seed in (0, 1, 2):
        teacher, description = _teacher(data, seed)
        for recipe in RECIPES:
            rows.append(_row(seed, recipe, teacher, description, data))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    means = table.drop(columns="seed").groupby("recipe", sort=False).mean().reset_index().assign(seed="mean")
    write_results(pd.concat([table, means], ignore_index=True), RESULTS)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
