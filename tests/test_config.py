import dataclasses

import pytest

from shrinkflow.config import ShrinkflowError, build_parser, config_to_params, parse_bool, parse_config


@dataclasses.dataclass(frozen=True)
class _Example:
    """An example config."""

    name: str = dataclasses.field(metadata={"help": "a required name"})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "batch size"})
    rate: float = 0.5
    verbose: bool = False


def test_parser_flags_are_kebab_case_with_defaults():
    cfg = parse_config(_Example, ["--name", "x", "--batch-size", "7", "--verbose", "true"])
    assert cfg == _Example(name="x", batch_size=7, rate=0.5, verbose=True)


def test_required_field_without_default_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(_Example, [])
    assert exit_info.value.code == 2
    assert "--name" in capsys.readouterr().err


def test_help_text_comes_from_field_metadata():
    help_text = build_parser(_Example).format_help()
    assert "a required name" in help_text and "batch size" in help_text


def test_bad_number_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_config(_Example, ["--name", "x", "--rate", "fast"])
    assert "--rate" in capsys.readouterr().err


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("1", True), ("no", False)])
def test_parse_bool(text, value):
    assert parse_bool(text) is value


def test_config_to_params_is_flat_dict():
    assert config_to_params(_Example(name="n")) == {"name": "n", "batch_size": 32, "rate": 0.5, "verbose": False}


def test_train_config_rejects_negative_epochs():
    from steps.train import TrainConfig

    with pytest.raises(ShrinkflowError, match="epochs must be >= 1"):
        TrainConfig(epochs=-1)
