"""README and docs: every bash and Python example runs, calls real entry points and flags, every
table of measured numbers equals the CSV it comes from, the README fits on a screen, and the site
builds with ``mkdocs build --strict``.

An example runs as written, in a copy of the repository with a new tracking store, page by page
(one shell per page, so a run id captured in one block is there in the next), with two changes:
the quick start's install prefix is dropped (the test already runs in the installed environment;
``tests/test_packaging.py`` installs from scratch), and budgets are capped through the entry
points' own flags — ``epochs`` at 30 and ``trials`` at 4, appended as ``-P epochs=30`` or
``--epochs 30`` where the example asks for more. A block preceded by
``<!-- not run: why -->`` is a template that needs what a test machine lacks (other machines, a
server left running, the test suite itself); it still has to name real entry points and flags."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from benchmarks.tables import MARKER, documents, stale_tables
from pipelines.console import COMMANDS
from shrinkflow.config import flag_name

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt"
BUDGET = {"epochs": 30, "trials": 4}
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?:<!-- not run: (?P<why>[^>]*?) -->\n[ \t]*)?"
    r"```(?P<lang>bash|python)\n(?P<body>.*?)^[ \t]*```$",
    re.M | re.S,
)
MLFLOW_RUN = re.compile(r"mlflow run \. --env-manager local(?P<args>[^|;&)#\n]*)")
MODULE_RUN = re.compile(
    r"(?:python -m (?P<module>(?:steps|search|pipelines)\.\w+)|(?<![\w/.-])shrinkflow (?P<command>\w+))"
    r"(?P<args>[^|;&)#\n]*)"
)


class Example(NamedTuple):
    path: Path
    line: int
    lang: str
    body: str
    not_run: str | None

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def examples(path: Path) -> list[Example]:
    text = path.read_text()
    found = []
    for match in BLOCK.finditer(text):
        indent = match["indent"]
        body = "\n".join(line.removeprefix(indent) for line in match["body"].splitlines()) + "\n"
        found.append(Example(path, text.count("\n", 0, match.start()) + 1, match["lang"], body, match["why"]))
    return found


ALL = [example for path in documents() for example in examples(path)]


def _entry_points() -> dict:
    return yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]


def _defaults(module: str) -> dict[str, object]:
    """The parameters of ``module``'s config and their defaults (None: required)."""
    fields = dataclasses.fields(importlib.import_module(module).main.config)
    return {f.name: None if f.default is dataclasses.MISSING else f.default for f in fields}


def _mlproject_defaults(entry: str) -> dict[str, object] | None:
    if entry not in _entry_points():
        return None
    params = _entry_points()[entry]["parameters"]
    return {name: spec.get("default") if isinstance(spec, dict) else None for name, spec in params.items()}


def _joined(script: str) -> str:
    return script.replace("\\\n", " ")


def _calls(script: str):
    """Each entry point an example starts: (match, entry-point parameters, given {name: value}, style)."""
    for match in MLFLOW_RUN.finditer(script):
        entry = (re.search(r"-e (\w+)", match["args"]) or [None, "main"])[1]
        params = _mlproject_defaults(entry)
        yield match, entry, params, dict(re.findall(r"-P (\w+)=(\S+)", match["args"])), "mlflow"
    for match in MODULE_RUN.finditer(script):
        module = match["module"] or COMMANDS.get(match["command"], (None,))[0]
        params = _defaults(module) if module else None
        given = {flag.replace("-", "_"): value for flag, value in re.findall(r"--([\w-]+) (\S+)", match["args"])}
        yield match, module or match["command"], params, given, "cli"


def reduced(script: str) -> str:
    """``script`` with the install prefix dropped and the budgets capped (see the module docstring)."""
    script = _joined(script).replace(INSTALL + " && ", "").replace(INSTALL, "")
    edits = []
    for match, _, params, given, style in _calls(script):
        args = match["args"].rstrip()
        for name, cap in BUDGET.items():
            if name not in (params or {}) or float(given.get(name, params[name] or 0)) <= cap:
                continue  # no such budget, or one within the cap already (given or by default)
            if style == "mlflow":
                args = re.sub(rf"\s*-P {name}=\S+", "", args) + f" -P {name}={cap}"
            else:
                args = re.sub(rf"\s*{flag_name(name)} \S+", "", args) + f" {flag_name(name)} {cap}"
        edits.append((match.start("args"), match.end("args"), args + " "))
    for start, end, args in sorted(edits, reverse=True):
        script = script[:start] + args + script[end:]
    return script


def test_every_example_calls_real_entry_points_and_flags():
    checked = 0
    for example in ALL:
        if example.lang != "bash":
            continue
        for _, entry, params, given, _ in _calls(_joined(example.body)):
            assert params is not None, f"{example}: no entry point {entry!r}"
            assert set(given) <= set(params), f"{example}: {entry} has no {sorted(set(given) - set(params))}"
            checked += 1
    assert checked >= 30


def test_every_template_says_why_it_is_not_run():
    templates = [example for example in ALL if example.not_run is not None]
    assert all(len(example.not_run.split()) >= 3 for example in templates)
    assert len(templates) < len(ALL) / 2  # templates are the exception


def test_budgets_are_capped_through_the_entry_points_own_flags():
    script = "RUN=$(mlflow run . --env-manager local -e distill -P run_id=$T -P epochs=600 | tail -n 1)  # note\n"
    assert (
        reduced(script)
        == "RUN=$(mlflow run . --env-manager local -e distill -P run_id=$T -P epochs=30 | tail -n 1)  # note\n"
    )
    assert reduced("mlflow run . --env-manager local -P trials=2\n").endswith("-P trials=2 -P epochs=30 \n")
    assert (
        reduced("python -m search.main --workers 2\n") == "python -m search.main --workers 2 --epochs 30 --trials 4 \n"
    )
    assert reduced(INSTALL + " && python -m steps.evaluate --run-id x\n") == "python -m steps.evaluate --run-id x \n"
    static = "mlflow run . --env-manager local -e quantize -P run_id=x -P method=static-int8\n"
    assert reduced(static) == static.replace("\n", " \n")  # its default, 0 epochs, is within the cap


def test_the_readme_fits_on_a_screen():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_table_of_measured_numbers_equals_its_csv():
    tables = [match["spec"] for path in documents() for match in MARKER.finditer(path.read_text())]
    assert len(tables) >= 20
    assert stale_tables() == []


def test_a_table_edited_by_hand_is_caught(tmp_path, monkeypatch):
    import benchmarks.tables as tables

    page = tmp_path / "page.md"
    page.write_text(
        "<!-- table: peers_head_to_head.csv columns=model,speedup -->\n\n| model | speedup |\n<!-- end table -->\n"
    )
    monkeypatch.setattr(tables, "documents", lambda: [page])
    monkeypatch.setattr(tables, "REPO_ROOT", tmp_path)
    assert tables.stale_tables() == ["page.md: peers_head_to_head.csv columns=model,speedup"]
    page.write_text(tables.rendered(page.read_text()))
    assert tables.stale_tables() == []


@pytest.mark.slow  # .ci/run builds the site before the suites; this also checks the API page
def test_the_site_builds_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('id="shrinkflow.') >= 20


def _repository_copy(into: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, into / name)
    return into


def _page_script(path: Path) -> str:
    lines = ["set -euo pipefail"]
    for example in examples(path):
        if example.not_run is not None:
            continue
        lines.append(f"echo '--- {example}' >&2")
        if example.lang == "bash":
            lines.append(reduced(example.body))
        else:
            lines.append(f"python - <<'PYTHON_EXAMPLE'\n{example.body}PYTHON_EXAMPLE")
    return "\n".join(lines) + "\n"


RUNNABLE = [path for path in documents() if any(example.not_run is None for example in examples(path))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_example_on_the_page_runs(page, tmp_path):
    repo = _repository_copy(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-c", _page_script(page)], cwd=repo, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
