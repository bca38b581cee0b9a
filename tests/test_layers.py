"""The layering: the library stands alone, only its tracking module talks to MLflow (for the steps,
the search and the recipes too), no module reaches into another package's private modules, and
the library's imports form no circle."""

import ast
import functools
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shrinkflow", "steps", "pipelines", "search", "benchmarks", "tests")
_MLFLOW_MODULES = {"tracking", "pyfunc_model"}  # the one place that logs, and the file MLflow loads


def _python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports in functions included)."""
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_package_is_checked():
    assert all(_python_files(package) for package in PACKAGES)


@pytest.mark.parametrize("path", _python_files("shrinkflow"), ids=lambda p: p.stem)
def test_the_library_imports_no_step_pipeline_or_search(path):
    upward = {name for name in _imports(path) if name.split(".")[0] in set(PACKAGES) - {"shrinkflow"}}
    assert upward == set(), f"{path.name} imports {upward}"


@pytest.mark.parametrize("path", _python_files("steps"), ids=lambda p: p.stem)
def test_steps_never_import_the_search_or_pipelines(path):
    upward = {name for name in _imports(path) if name.split(".")[0] in ("search", "pipelines")}
    assert upward == set(), f"{path.name} imports {upward}"


@pytest.mark.parametrize("path", _python_files("search") + _python_files("pipelines"), ids=lambda p: p.stem)
def test_the_search_and_recipes_import_no_step_but_the_train_config(path):
    """They run techniques through the library; recipes start steps by name (``importlib``)."""
    steps = {name for name in _imports(path) if name.split(".")[0] == "steps"} - {"steps", "steps.train"}
    assert steps == set(), f"{path.name} imports {steps}"


_APPLICATION = ("shrinkflow", "steps", "search", "pipelines")


@pytest.mark.parametrize(
    "path", [p for package in _APPLICATION for p in _python_files(package)], ids=lambda p: f"{p.parent.name}.{p.stem}"
)
def test_only_tracking_talks_to_mlflow(path):
    """The steps, the search and the recipes log and read runs through ``shrinkflow.tracking``."""
    uses_mlflow = any(name.split(".")[0] == "mlflow" for name in _imports(path))
    assert uses_mlflow == (path.parent.name == "shrinkflow" and path.stem in _MLFLOW_MODULES), path.name


_HARNESS = ("tests", "benchmarks")  # the library's own tests and measurements may look inside it


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_module_is_imported_from_outside_its_package(package):
    for path in _python_files(package):
        for name in _imports(path):
            parts = name.split(".")
            private = [part for part in parts[1:] if part.startswith("_") and not part.startswith("__")]
            harness = parts[0] == "shrinkflow" and package in _HARNESS
            if parts[0] in PACKAGES and parts[0] != package and private and not harness:
                pytest.fail(f"{path.relative_to(REPO_ROOT)} imports the private {name}")


def test_the_library_exports_a_small_surface():
    """What users call is ``shrinkflow.__all__``; implementation modules are private (``_storage``)."""
    import shrinkflow

    assert 20 <= len(shrinkflow.__all__) <= 30
    assert all(hasattr(shrinkflow, name) for name in shrinkflow.__all__)
    modules = {path.stem for path in _python_files("shrinkflow")}
    assert {"_storage", "_entropy", "_encoding", "_masks"} <= modules
    assert not {"storage", "entropy", "encoding", "masks"} & modules


def test_library_imports_form_no_circle():
    modules = {path.stem: path for path in _python_files("shrinkflow") if path.stem != "__init__"}
    graph = {
        module: {name.split(".")[1] for name in _imports(path) if name.startswith("shrinkflow.")} & set(modules)
        for module, path in modules.items()
    }
    done, visiting = set(), []

    def visit(module):
        if module in visiting:
            pytest.fail("import circle: " + " -> ".join([*visiting[visiting.index(module) :], module]))
        if module not in done:
            visiting.append(module)
            for imported in sorted(graph[module]):
                visit(imported)
            visiting.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("package", _APPLICATION)
def test_no_function_is_longer_than_50_lines(package):
    """Short functions: a longer one is split by what its parts do."""
    long = []
    for path in _python_files(package):
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                long.append(
                    f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                )
    assert long == []
