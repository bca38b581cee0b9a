"""The ``shrinkflow`` command: one subcommand per MLproject entry point, same module, same flags."""

import re
from pathlib import Path

import pytest
import yaml

from pipelines.console import COMMANDS, main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_mlproject_entry_point_is_a_subcommand_running_the_same_module():
    entry_points = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]
    modules = {name: re.match(r"python -m ([\w.]+)", spec["command"]).group(1) for name, spec in entry_points.items()}
    assert {name: module for name, (module, _) in COMMANDS.items()} == modules


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: shrinkflow <command>")
    assert all(f"  {name} " in out for name in COMMANDS)


def test_a_subcommand_takes_its_steps_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: shrinkflow prune") and "--sparsity" in out


def test_an_unknown_subcommand_is_one_line_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["shrink"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown command 'shrink': choose one of {', '.join(COMMANDS)}\n"
