"""The techniques a model goes through — ``distill``, ``prune``, ``quantize`` — in one registry
that the steps, the search and the recipes all read.

A technique is a settings class, a pure ``apply(artifact, data, settings, device, *, on_epoch)``
whose result holds the new ``.artifact``, a ``check(artifact, settings, data)`` that fails on bad
input before any work, and what the search needs to sample it (its method registry, the setting
it may draw per layer). Adding one is a library module, one ``register_technique`` call and a
short step built on ``steps/_compress.py``: the CLI, the search space (a stage of that name) and
recipes (a step of that name) pick it up. A search trial runs the techniques in the order they
were registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from shrinkflow._masks import prunable_layers
from shrinkflow.config import ShrinkflowError, method_applies
from shrinkflow.distillation import DistillSettings, check_distilling, distill, student_architecture
from shrinkflow.pruning import PRUNING_METHODS, PruneSettings, check_pruning, prune
from shrinkflow.quantization import (
    QUANTIZATION_METHODS,
    QuantizeSettings,
    check_quantizing,
    quantizable_layers,
    quantize,
)
from shrinkflow.zoo import build_model

__all__ = ["TECHNIQUES", "Technique", "register_technique", "technique"]


@dataclass(frozen=True)
class Technique:
    name: str
    settings: type  # a frozen dataclass whose __post_init__ refuses bad values
    apply: Callable[..., Any]  # (artifact, data, settings, device, *, on_epoch=None) -> result with .artifact
    check: Callable[..., Any]  # (artifact, settings, data): raises ShrinkflowError before any work
    made: str  # what its model is called beside its source's: "pruned", "student"
    float_only: bool = True  # refuses a model already quantized to int8
    methods: Mapping[str, Any] = field(default_factory=dict)  # its method registry (each method's ``reads``)
    per_layer: str = ""  # the setting a search may draw one value per layer of
    layers: Callable[[nn.Module], list[str]] | None = None  # the layers ``per_layer`` names
    # the model it makes, before any work (to name the next stage's per-layer knobs); None: same layers
    reshapes: Callable[[Any, dict], nn.Module] | None = None

    @property
    def applies(self) -> dict[str, tuple[str, ...]]:
        """Setting → the methods that read it; settings not listed apply to every method."""
        return method_applies(self.methods)


TECHNIQUES: dict[str, Technique] = {}


def register_technique(technique: Technique) -> Technique:
    """Add ``technique`` to ``TECHNIQUES`` (after those there: a search trial runs it last)."""
    if technique.name in TECHNIQUES:
        raise ShrinkflowError(f"a technique named {technique.name!r} is registered already")
    if technique.per_layer and technique.layers is None:
        raise ShrinkflowError(f"technique {technique.name!r}: per_layer needs layers, the names it takes")
    TECHNIQUES[technique.name] = technique
    return technique


def technique(name: str) -> Technique:
    """The technique registered as ``name``."""
    try:
        return TECHNIQUES[name]
    except KeyError:
        raise ShrinkflowError(f"unknown technique {name!r}: choose {', '.join(TECHNIQUES)}") from None


def _student(settings: DistillSettings, description: dict) -> nn.Module:
    return build_model(student_architecture(settings, description["architecture"]))


register_technique(
    Technique("distill", DistillSettings, distill, check_distilling, made="student", float_only=False,
              reshapes=_student)
)  # fmt: skip
register_technique(
    Technique("prune", PruneSettings, prune, check_pruning, made="pruned", methods=PRUNING_METHODS,
              per_layer="thresholds", layers=prunable_layers)
)  # fmt: skip
register_technique(
    Technique("quantize", QuantizeSettings, quantize, check_quantizing, made="quantized",
              methods=QUANTIZATION_METHODS, per_layer="bits", layers=quantizable_layers)
)  # fmt: skip
