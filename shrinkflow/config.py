"""Config dataclasses → argparse parsers, so a step's CLI and help text cannot drift from its config.

Every step declares a frozen dataclass whose fields carry their help text in
``field(metadata={"help": ...})``. ``build_parser`` turns it into an argparse parser with
kebab-case flags; ``parse_config`` returns the dataclass. The MLproject passes every field through
(``tests/test_project_spec.py`` checks that MLproject, parser and dataclass agree).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, get_type_hints

__all__ = [
    "ShrinkflowError",
    "ShrinkflowWarning",
    "Terminated",
    "check_applies",
    "check_method",
    "method_applies",
    "build_parser",
    "check_run_id",
    "config_to_params",
    "flag_name",
    "parse_bool",
    "parse_config",
    "read_yaml",
]

MAX_YAML_BYTES = 2**20  # a search space or a recipe is a page of text
MAX_YAML_DEPTH = 50


class ShrinkflowError(ValueError):
    """Bad user input: reported as one line, with the valid choices, and a non-zero exit."""


class ShrinkflowWarning(UserWarning):
    """Something the user should know that does not stop the work (a layer the cost model cannot
    count, say): steps print it as one ``warning:`` line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``kill``, ``timeout``, a closed terminal) inside a step's run: stop as
    Ctrl-C does, so that the run is marked KILLED."""


def read_yaml(text: str) -> Any:
    """``yaml.safe_load`` for files a user (or anyone) wrote: no aliases — a few hundred bytes of
    nested aliases expand to billions of nodes — no nesting deeper than ``MAX_YAML_DEPTH`` and
    no more than ``MAX_YAML_BYTES``.
    Raises ``yaml.YAMLError`` for each, as for any invalid YAML."""
    import yaml

    class Bounded(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here", mark)
            if self.depth >= MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"it nests deeper than {MAX_YAML_DEPTH} levels")
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    if len(text) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"{len(text)} characters, more than the {MAX_YAML_BYTES} allowed")
    return yaml.load(text, Loader=Bounded)  # noqa: S506 - a SafeLoader


def method_applies(methods: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Setting → the methods that read it, from each registered method's ``reads``; a setting
    that no method names is read by every method."""
    applies: dict[str, tuple[str, ...]] = {}
    for method in methods.values():
        for setting in method.reads:
            applies[setting] = (*applies.get(setting, ()), method.name)
    return applies


def check_method(settings: Any, methods: Mapping[str, Any], kind: str) -> None:
    """Refuse a ``settings.method`` that is not in ``methods`` (the ``kind`` method registry)."""
    if settings.method not in methods:
        raise ShrinkflowError(f"unknown {kind} method {settings.method!r}: choose {', '.join(methods)}")


def check_applies(settings: Any, methods: Mapping[str, Any]) -> None:
    """Refuse a setting changed from its default where ``settings.method`` does not read it
    (``methods``: the method registry, each method naming what it ``reads``): it would be logged
    but change nothing."""
    defaults = {f.name: f.default for f in dataclasses.fields(settings)}
    for name, readers in method_applies(methods).items():
        value = getattr(settings, name)
        if settings.method not in readers and value != defaults[name]:
            raise ShrinkflowError(
                f"{name} applies to method {', '.join(readers)} only; method {settings.method} would ignore "
                f"{name}={value!r}: leave it at {defaults[name]!r}"
            )


def check_run_id(run_id: str, producer: str = "a train step") -> None:
    """A step that reads a logged model needs the run id of the step that logged it."""
    if not run_id.strip():
        raise ShrinkflowError(f"run_id is required: pass the run id printed by {producer}")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _field_types(config_cls: type) -> dict[str, type]:
    return get_type_hints(config_cls)


class _OneLineErrors(argparse.ArgumentParser):
    """A bad flag is one ``error: ...`` line and exit 2, like every other bad input (argparse
    would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """One flag per dataclass field; the field's type converts the string MLflow passes."""
    parser = _OneLineErrors(
        description=description or config_cls.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    types = _field_types(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = types[field.name]
        convert = parse_bool if kind is bool else kind
        required = field.default is dataclasses.MISSING
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            type=convert,
            required=required,
            default=None if required else field.default,
            help=field.metadata.get("help", ""),
            metavar=kind.__name__.upper(),
        )
    return parser


def parse_config(config_cls: type, argv: list[str] | None = None) -> Any:
    namespace = build_parser(config_cls).parse_args(argv)
    return config_cls(**vars(namespace))


def config_to_params(config: Any) -> dict[str, Any]:
    """Flat dict of a config, for ``mlflow.log_params``."""
    return dataclasses.asdict(config)
