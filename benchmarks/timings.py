"""How long what the README and docs tell a user to run takes: wall and CPU time, on this machine.

Parts (all but ``ci`` by default):
- ``quickstart``: the README's main command, ``mlflow run . --env-manager local``, in a fresh clone
  of this repository (a new tracking store and study; the installed environment is reused);
- ``tests``: the README's test command, ``python -m pytest`` (the default suite), here;
- ``recipes``: every shipped recipe, ``python -m pipelines.main --recipe NAME``, each on a new
  tracking store (nothing cached), with the first and last stage's test accuracy and size and the
  last stage's speed-up over the first from its stage table;
- ``ci``: ``bash .ci/run`` in a fresh clone (a new venv and install, lint, both suites).

Each row records the machine (CPU model, cores), the date, and the load average before it started:
times grow with load (two parts run at once on 2 cores took ~2x as long each), so run this on a
quiet machine. CPU time is user + system of the command and its children. Results:
``benchmarks/results/timings.csv`` (a part's new rows replace its old ones), shown in the docs.

    python -m benchmarks.timings                    # quickstart, tests, recipes (~10 minutes on 2 cores)
    python -m benchmarks.timings recipes ci         # only these parts
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "timings.csv"
RECIPES = ("baseline", "deep_compression", "learned_compression", "int8_deploy", "distill_quantize",
           "search_then_deploy")  # fmt: skip
PARTS = ("quickstart", "tests", "recipes", "ci")
QUICKSTART = "mlflow run . --env-manager local --experiment-name shrinkflow"


def _machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )  # fmt: skip
    return f"{model}, {os.cpu_count()} cores"


def timed(command: str, cwd: Path, env: dict[str, str | None] | None = None) -> tuple[dict, str]:
    """Run ``command`` (a shell line) in ``cwd`` with ``env`` added to the environment (a value of
    None removes that variable); its wall and CPU seconds, exit status, and stdout."""
    environment = {**os.environ, **(env or {})}
    environment = {name: value for name, value in environment.items() if value is not None}
    load = os.getloadavg()[0]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=cwd, env=environment, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
    row = {
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "exit": done.returncode, "load_before": round(load, 2),
        "machine": _machine(), "date": datetime.date.today().isoformat(),
    }  # fmt: skip
    return row, done.stdout


def _clone(into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(into)], check=True)
    return into


def quickstart(tmp: Path) -> list[dict]:
    repo = _clone(tmp / "quickstart")
    row, _ = timed(QUICKSTART, repo, {"MLFLOW_TRACKING_URI": None})
    return [{"part": "quickstart", "what": QUICKSTART, **row}]


def tests(tmp: Path) -> list[dict]:
    row, _ = timed(f"{sys.executable} -m pytest -q", REPO_ROOT)
    return [{"part": "tests", "what": "python -m pytest", **row}]


CI_LOG = Path(tempfile.gettempdir()) / "shrinkflow-timings-ci.log"


def ci(tmp: Path) -> list[dict]:
    repo = _clone(tmp / "ci")
    print(f"ci: its output goes to {CI_LOG}", flush=True)
    row, _ = timed(f"bash .ci/run > {CI_LOG} 2>&1", repo, {"CI": "true"})
    return [{"part": "ci", "what": "bash .ci/run", **row}]


def recipes(tmp: Path) -> list[dict]:
    rows = []
    for recipe in RECIPES:
        store = tmp / recipe
        store.mkdir()
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "PYTHONPATH": str(REPO_ROOT)}
        row, stdout = timed(f"{sys.executable} -m pipelines.main --recipe {recipe}", store, env)
        parent = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        rows.append({"part": "recipes", "what": recipe, **row, **_verdict(parent, env["MLFLOW_TRACKING_URI"])})
        print(rows[-1], flush=True)
    return rows


def _verdict(parent_run: str, tracking_uri: str) -> dict:
    """First and last stage's test accuracy and size, and the last's speed-up over the first."""
    from mlflow import MlflowClient

    if not parent_run:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient(tracking_uri).download_artifacts(parent_run, "stages.json", tmp)
        logged = json.loads(Path(path).read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"]).dropna(subset=["test_accuracy"])
    first, last = table.iloc[0], table.iloc[-1]
    return {
        "first_test_accuracy": round(first["test_accuracy"], 4), "last_test_accuracy": round(last["test_accuracy"], 4),
        "first_bytes": int(first["size_bytes"]), "last_bytes": int(last["size_bytes"]),
        "size_reduction": round(first["size_bytes"] / last["size_bytes"], 2),
        "speedup_bs1": round(last["speedup_bs1"], 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    chosen = (sys.argv[1:] if argv is None else argv) or [p for p in PARTS if p != "ci"]
    if unknown := set(chosen) - set(PARTS):
        sys.exit(f"error: unknown part(s) {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for part in PARTS if part in chosen for row in globals()[part](Path(tmp))]
    new = pd.DataFrame(rows)
    if RESULTS.exists():
        new = pd.concat([(old := pd.read_csv(RESULTS))[~old["part"].isin(chosen)], new], ignore_index=True)
    for column in ("exit", "first_bytes", "last_bytes"):  # whole numbers, blank where a part has none
        if column in new:
            new[column] = new[column].astype("Int64")
    new["order"] = new["part"].map(PARTS.index)
    new = new.sort_values("order", kind="stable").drop(columns="order")
    new.to_csv(RESULTS, index=False)
    print(new.to_string(index=False))


if __name__ == "__main__":
    main()
