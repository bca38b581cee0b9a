"""MLproject, CLI parsers and config dataclasses must agree; so must requirements and conda.yaml."""

import dataclasses
import functools
import importlib
import re
import typing
from pathlib import Path

import pytest
import yaml

from shrinkflow.config import build_parser, flag_name, parse_bool

REPO_ROOT = Path(__file__).resolve().parents[1]
_YAML_TYPES = {str: "string", int: "int", float: "float", bool: "string"}


@functools.cache  # read once: the YAML parser takes ~0.1 s a read
def _entry_points():
    return yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]


def _config_of(command: str):
    module = re.match(r"python -m ([\w.]+)", command).group(1)
    return importlib.import_module(module).main.config


@pytest.mark.parametrize("entry", sorted(_entry_points()))
def test_mlproject_parameters_match_config_and_parser(entry):
    spec = _entry_points()[entry]
    config = _config_of(spec["command"])
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    assert set(spec["parameters"]) == set(fields)
    parser_flags = {a.dest: a.option_strings[0] for a in build_parser(config)._actions if a.dest != "help"}
    assert parser_flags == {name: flag_name(name) for name in fields}
    for name, field in fields.items():
        param = spec["parameters"][name]
        if field.default is dataclasses.MISSING:
            assert param == "string", f"{entry}.{name} has no default in the config, so none in MLproject"
        else:
            assert param["type"] == _YAML_TYPES[hints[name]], name
            convert = parse_bool if hints[name] is bool else hints[name]
            assert convert(param["default"]) == field.default, name
        assert f"{flag_name(name)} {{{name}}}" in spec["command"], f"{entry} command does not pass {name}"


def _requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_conda_yaml_pins_match_requirements():
    conda = yaml.safe_load((REPO_ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip_section == _requirement_lines((REPO_ROOT / "requirements.txt").read_text())


def test_every_requirement_is_pinned():
    for line in _requirement_lines((REPO_ROOT / "requirements.txt").read_text()):
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line), line


def test_the_package_depends_on_the_pinned_requirements():
    """``pip install .`` gets what ``pip install -r requirements.txt`` gets, less the dev tools."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pinned = _requirement_lines((REPO_ROOT / "requirements.txt").read_text())
    assert project["dependencies"] + project["optional-dependencies"]["dev"] == pinned
    assert not {"pytest", "ruff"} & {line.split("==")[0] for line in project["dependencies"]}
    assert project["requires-python"] == ">=3.11"
