"""The search space: which stages run and how each knob is chosen, read from YAML.

A space maps stages — the registered techniques (``shrinkflow.techniques``: ``distill``,
``prune``, ``quantize``) — to their knobs. ``enabled`` is ``true``, ``false`` or ``search``;
every other key is a field of the technique's settings (``shrinkflow.DistillSettings``,
``PruneSettings``, ``QuantizeSettings``), given as
- a fixed value: ``sparsity: 0.9``;
- a range: ``sparsity: {low: 0.5, high: 0.97}`` (ints stay ints; ``log: true``, ``step: 0.05``);
- a choice: ``method: {choices: [global, gradual]}``;
and ``per_layer: true`` on a range or choice of the technique's per-layer setting
(``prune.thresholds``, ``quantize.bits``) samples one value per layer of the model the stage
receives. A stage's ``method`` may include ``none`` (the stage is off).

Every fixed value, range end and choice is checked against the settings class when the file is
read, and every method with every end of the other knobs, so a knob outside its range, or values
that cannot run together, fail before a study exists. Every knob is drawn in every trial; those
that do not apply to the drawn method (the settings its registration does not list in
``reads``: ``sparsity`` for ``threshold``, ``bits`` for the int8 methods, ...) are left out of its
settings and of its ``configuration``; a stage's fine-tuning ``epochs`` are forced to 0 for
methods that have none.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from torch import nn

from shrinkflow import ShrinkflowError
from shrinkflow.config import read_yaml
from shrinkflow.techniques import TECHNIQUES

__all__ = ["BUILT_IN_SPACES", "DEFAULT_SPACE", "Knob", "Space", "load_space"]

DEFAULT_SPACE = Path(__file__).resolve().parent / "default_space.yaml"
# Spaces a search names instead of giving a path: ``--space latency``.
BUILT_IN_SPACES = {
    "default": DEFAULT_SPACE,
    "latency": Path(__file__).resolve().parent / "latency_space.yaml",
    "auto_bits": Path(__file__).resolve().parent / "auto_bits_space.yaml",
    "learned": Path(__file__).resolve().parent / "learned_space.yaml",
}
NO_METHOD = "none"  # a stage's method that turns the stage off
_ENABLED = (True, False, "search")
MAX_COMBINATIONS = 4096  # of the knobs' ends, per method, checked when a space is read


@dataclass(frozen=True)
class Knob:
    """How one setting is chosen: ``fixed`` or sampled from ``choices`` or [``low``, ``high``]."""

    name: str
    fixed: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    per_layer: bool = False

    @property
    def searched(self) -> bool:
        return self.choices is not None or self.low is not None

    def suggest(self, trial: optuna.Trial, param: str) -> Any:
        if not self.searched:
            return self.fixed
        if self.choices is not None:
            return trial.suggest_categorical(param, list(self.choices))
        if self._is_int():
            return trial.suggest_int(param, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(param, float(self.low), float(self.high), step=self.step, log=self.log)

    def _is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float)

    def check_distribution(self) -> None:
        """Raise Optuna's own ``ValueError`` for a range it refuses (log with low ≤ 0, log with
        a step, a step that is not positive), which ``suggest`` would raise only in a trial."""
        if self.choices is not None or not self.searched:
            return
        if self._is_int():
            optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=int(self.step or 1))
        else:
            optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def values_to_check(self) -> list:
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high] if self.searched else [self.fixed]


@dataclass(frozen=True)
class Space:
    stages: dict[str, dict[str, Knob]]  # stage -> knob name -> knob; "enabled" among them

    def without_methods(self, stage: str, methods) -> Space:
        """This space minus ``methods`` of ``stage`` (those the costs cannot be measured on)."""
        knob = self.stages.get(stage, {}).get("method")
        if knob is None:
            return self
        if knob.choices is None:
            if knob.fixed in methods:
                raise ShrinkflowError(f"{stage} method {knob.fixed!r} cannot be measured here: choose another")
            return self
        left = tuple(m for m in knob.choices if m not in methods)
        if not left:
            raise ShrinkflowError(f"every {stage} method of the space is one of {list(methods)}: none can be measured")
        knobs = {**self.stages[stage], "method": dataclasses.replace(knob, choices=left)}
        return Space({**self.stages, stage: knobs})

    def sample(self, trial: optuna.Trial, stage: str, model: nn.Module):
        """The settings of ``stage`` for this trial, or None when the stage is off (or ``none``).

        Every knob of the stage is drawn in every trial, also those the drawn method does not
        read (they are then left out of the settings): a model-based sampler (gp) models only the
        parameters every trial has, and drawn only when they applied, the per-layer bits and the
        epochs were left to chance in every trial."""
        knobs = self.stages.get(stage)
        if not knobs:
            return None
        enabled = knobs["enabled"].suggest(trial, f"{stage}.enabled")
        method = knobs["method"].suggest(trial, f"{stage}.method") if "method" in knobs else None
        drawn = {name: self._suggest(trial, stage, knob, model) for name, knob in knobs.items()
                 if name not in ("enabled", "method")}  # fmt: skip
        if not enabled or method == NO_METHOD:
            return None
        values = {name: value for name, value in drawn.items() if _reads(stage, name, method)}
        if method is not None:
            values["method"] = method
        _fit_epochs_to_method(stage, values)
        return TECHNIQUES[stage].settings(**values)

    @staticmethod
    def _suggest(trial: optuna.Trial, stage: str, knob: Knob, model: nn.Module):
        if knob.per_layer:
            return json.dumps(
                {layer: knob.suggest(trial, f"{stage}.{knob.name}.{layer}") for layer in _layers(stage, model)}
            )
        return _as_field(stage, knob.name, knob.suggest(trial, f"{stage}.{knob.name}"))

    def configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        """What a trial with these parameters runs: the parameters its stages read (not the knobs
        its methods ignore, nor any of a stage that is off). Two trials run the same model when,
        and only when, their configurations are equal."""
        kept = {}
        for stage, knobs in self.stages.items():
            enabled = params.get(f"{stage}.enabled", knobs["enabled"].fixed)
            method = params.get(f"{stage}.method", knobs["method"].fixed if "method" in knobs else None)
            if not enabled or method == NO_METHOD:
                kept[f"{stage}.enabled"] = False
                continue
            for name, value in params.items():
                parts = name.split(".")
                if parts[0] == stage and (parts[1] in ("enabled", "method") or _reads(stage, parts[1], method)):
                    kept[name] = value
        return kept


def _reads(stage: str, knob: str, method: str | None) -> bool:
    """Does ``method`` of ``stage`` read ``knob``? (int8 post-training methods take no epochs.)"""
    return _applies(stage, knob, method) and not _no_epochs(stage, knob, method)


def _as_field(stage: str, name: str, value: Any) -> Any:
    """YAML's 4 or 0.05 for a text setting (``bits``, ``thresholds``) becomes the JSON text it takes."""
    text_field = TECHNIQUES[stage].settings.__dataclass_fields__[name].type in ("str", str)
    return json.dumps(value) if text_field and not isinstance(value, str) else value


def _applies(stage: str, knob: str, method: str | None) -> bool:
    methods = TECHNIQUES[stage].applies.get(knob)
    return methods is None or method in methods


def _fine_tuning(stage: str, method: str | None) -> str:
    """ "none" (int8 post-training), "required" (qat) or "optional", as the method registers it."""
    return getattr(TECHNIQUES[stage].methods.get(method), "fine_tuning", "optional")


def _no_epochs(stage: str, knob: str, method: str | None) -> bool:
    """Methods without fine-tuning (int8 post-training) take no epochs: they are not sampled."""
    return knob == "epochs" and _fine_tuning(stage, method) == "none"


def _layers(stage: str, model: nn.Module) -> list[str]:
    return TECHNIQUES[stage].layers(model)


def _fit_epochs_to_method(stage: str, values: dict) -> None:
    """Methods without fine-tuning (int8 post-training) take no epochs; ``qat`` needs one at least."""
    fine_tuning = _fine_tuning(stage, values.get("method"))
    if fine_tuning == "none":
        values["epochs"] = 0
    elif fine_tuning == "required":
        values["epochs"] = max(1, values.get("epochs", 1))


def load_space(path: str | Path | None = None) -> Space:
    """Read and check a space file, or a built-in space by name (``default`` when ``path`` is empty)."""
    path = BUILT_IN_SPACES.get(str(path or "default")) or Path(path)
    if not path.is_file():
        raise ShrinkflowError(
            f"search space file {str(path)!r} does not exist (built-in spaces: {', '.join(BUILT_IN_SPACES)})"
        )
    try:
        document = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ShrinkflowError(f"search space file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict) or not document:
        raise ShrinkflowError(f"search space file {path} is empty: give at least one of {', '.join(TECHNIQUES)}")
    unknown = sorted(set(document) - set(TECHNIQUES))
    if unknown:
        raise ShrinkflowError(f"search space {path}: unknown stage(s) {unknown}: stages are {', '.join(TECHNIQUES)}")
    stages = {stage: _stage(stage, spec, path) for stage, spec in document.items()}
    for stage, knobs in stages.items():
        _check_combinations(stage, knobs, path)
    if all(knobs["enabled"].fixed is False for knobs in stages.values()):
        raise ShrinkflowError(f"search space {path}: every stage is disabled, so there is nothing to search")
    return Space(stages)


def _stage(stage: str, spec: Any, path: Path) -> dict[str, Knob]:
    if not isinstance(spec, dict):
        raise ShrinkflowError(f"search space {path}: stage {stage!r} must be a mapping of knobs, got {spec!r}")
    fields = {f.name for f in dataclasses.fields(TECHNIQUES[stage].settings)}
    unknown = sorted(set(spec) - fields - {"enabled"})
    if unknown:
        raise ShrinkflowError(
            f"search space {path}: unknown knob(s) {unknown} in {stage}: knobs are enabled, {', '.join(sorted(fields))}"
        )
    enabled = spec.get("enabled", True)
    if enabled not in _ENABLED:
        raise ShrinkflowError(f"search space {path}: {stage}.enabled must be true, false or search, got {enabled!r}")
    knobs = {"enabled": Knob("enabled", choices=(True, False)) if enabled == "search" else Knob("enabled", enabled)}
    for name, value in spec.items():
        if name != "enabled":
            knobs[name] = _knob(stage, name, value, path)
            _check_values(stage, knobs[name], path)
    return knobs


def _knob(stage: str, name: str, value: Any, path: Path) -> Knob:
    where = f"search space {path}: {stage}.{name}"
    if not isinstance(value, dict):
        return Knob(name, fixed=value)
    allowed = {"choices", "low", "high", "log", "step", "per_layer"}
    if set(value) - allowed or not ({"choices"} <= set(value) or {"low", "high"} <= set(value)):
        raise ShrinkflowError(f"{where} must be a value, {{low: .., high: ..}} or {{choices: [..]}}, got {value}")
    if value.get("per_layer") and TECHNIQUES[stage].per_layer != name:
        per_layer = [f"{t.name}.{t.per_layer}" for t in TECHNIQUES.values() if t.per_layer]
        raise ShrinkflowError(f"{where}: per_layer applies to {' and '.join(per_layer)} only")
    if "choices" in value:
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ShrinkflowError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return Knob(name, choices=tuple(choices), per_layer=bool(value.get("per_layer")))
    low, high = value["low"], value["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ShrinkflowError(f"{where}: need numbers low < high, got low={low!r}, high={high!r}")
    knob = Knob(name, low=low, high=high, log=bool(value.get("log")), step=value.get("step"),
                per_layer=bool(value.get("per_layer")))  # fmt: skip
    try:
        knob.check_distribution()
    except (ValueError, TypeError) as exc:
        raise ShrinkflowError(f"{where}: Optuna refuses this range: {exc}") from None
    return knob


def _check_values(stage: str, knob: Knob, path: Path) -> None:
    """Build the stage's settings with each value the knob can take: its checks are the space's."""
    if knob.name == "method":
        valid = [*TECHNIQUES[stage].methods, NO_METHOD]
        bad = [m for m in knob.values_to_check() if m not in valid]
        if bad:
            raise ShrinkflowError(f"search space {path}: unknown {stage} method(s) {bad}: choose {', '.join(valid)}")
        return
    for value in knob.values_to_check():
        setting = json.dumps({"*": value}) if knob.per_layer else _as_field(stage, knob.name, value)
        try:
            TECHNIQUES[stage].settings(**_probe(stage, knob.name, setting))
        except (ShrinkflowError, TypeError) as exc:
            raise ShrinkflowError(f"search space {path}: {stage}.{knob.name}={value!r} is invalid: {exc}") from None


def _check_combinations(stage: str, knobs: dict[str, Knob], path: Path) -> None:
    """Build the stage's settings with every method and every end of the other knobs together:
    values valid one by one but not together (gradual pruning with ``epochs: 0``, ``threshold``
    without ``thresholds``) fail here, before any training, not in every trial that draws them."""
    methods = knobs["method"].values_to_check() if "method" in knobs else [None]
    others = [knob for name, knob in knobs.items() if name not in ("enabled", "method")]
    for method in methods:
        if method == NO_METHOD:
            continue
        used = [k for k in others if _reads(stage, k.name, method)]
        for values in itertools.islice(itertools.product(*(k.values_to_check() for k in used)), MAX_COMBINATIONS):
            settings = {k.name: json.dumps({"*": v}) if k.per_layer else _as_field(stage, k.name, v)
                        for k, v in zip(used, values, strict=True)}  # fmt: skip
            if method is not None:
                settings["method"] = method
                _fit_epochs_to_method(stage, settings)
            try:
                TECHNIQUES[stage].settings(**settings)
            except (ShrinkflowError, TypeError) as exc:
                shown = ", ".join(f"{name}={value}" for name, value in settings.items())
                raise ShrinkflowError(f"search space {path}: {stage} cannot run with {shown}: {exc}") from None


def _probe(stage: str, name: str, value: Any) -> dict:
    """Settings that accept ``name=value`` on its own: a method the knob applies to, with what
    that method needs to run at all (its registration's ``minimal``: thresholds, an epoch)."""
    probe = {name: value}
    readers = TECHNIQUES[stage].applies.get(name)
    if readers:
        probe["method"] = readers[0]
        for setting, needed in TECHNIQUES[stage].methods[readers[0]].minimal.items():
            probe.setdefault(setting, needed)
    return probe
