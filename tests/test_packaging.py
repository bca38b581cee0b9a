"""``pip install .`` in a fresh virtual environment: the package imports, the ``shrinkflow`` command
runs, and the README's library example prints its model's accuracy and size — all from an empty
folder outside the repository, so nothing is found through the working tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.test_docs import REPO_ROOT, _repository_copy, examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(an empty folder, an environment whose python has Shrinkflow installed from a wheel of this tree)."""
    root = tmp_path_factory.mktemp("package")
    source = _repository_copy(root / "source")  # the build writes build/ and *.egg-info next to the source
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(source)], check=True, timeout=1200)
    empty = root / "empty"
    empty.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("MLFLOW_")
    }
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    return empty, env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_package_imports_from_its_install_not_the_repository(installed):
    empty, env = installed
    done = _run(["python", "-c", "import shrinkflow, steps, search, pipelines; print(shrinkflow.__file__)"], empty, env)
    assert done.returncode == 0, done.stderr
    location = Path(done.stdout.strip())
    assert "site-packages" in location.parts and not location.is_relative_to(REPO_ROOT)


def test_the_command_lists_its_subcommands_and_runs_a_step(installed):
    empty, env = installed
    shown = _run(["shrinkflow", "--help"], empty, env)
    assert shown.returncode == 0 and "prune" in shown.stdout and "search" in shown.stdout
    trained = _run(["shrinkflow", "train", "--epochs", "2"], empty, env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert re.fullmatch(r"[0-9a-f]{32}", trained.stdout.strip().splitlines()[-1])
    assert (empty / "mlflow.db").is_file()  # the default store, in the folder it ran in
    recipe = _run(["shrinkflow", "pipeline", "--recipe", "baseline", "--set", "trained.epochs=2"], empty, env)
    assert recipe.returncode == 0, recipe.stderr[-2000:]  # the shipped recipes are in the package


def test_the_readme_library_example_prints_accuracy_and_size(installed):
    empty, env = installed
    example = next(e for e in examples(REPO_ROOT / "README.md") if e.lang == "python")
    done = _run(["python", "-c", example.body], empty, env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(re.search(r"test accuracy \d+\.\d\d%, \d+\.\d KB", line) for line in lines)
    assert (empty / "small-model" / "model.shrinkflow").is_file()
    shutil.rmtree(empty / "small-model")


def test_a_wheel_holds_the_shipped_recipes_and_spaces(tmp_path):
    source = _repository_copy(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True, timeout=600,
    )  # fmt: skip
    import zipfile

    (wheel,) = tmp_path.glob("shrinkflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pipelines/deep_compression.yaml", "search/default_space.yaml", "pipelines/console.py"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
