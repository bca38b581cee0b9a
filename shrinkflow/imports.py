"""Resolve user code given as ``package.module:attribute`` strings."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from shrinkflow.config import ShrinkflowError

__all__ = ["is_import_spec", "load_callable"]

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_import_spec(text: str) -> bool:
    """True for anything that looks like it means ``module:function`` (valid or not)."""
    return ":" in text and not text.lower().endswith((".csv", ".parquet", ".pq"))


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:function``; ``what`` names the role in error messages."""
    if not _SPEC.match(spec):
        raise ShrinkflowError(f"malformed {what} {spec!r}: expected 'package.module:function', e.g. 'mypkg.data:load'")
    module_name, attribute = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ShrinkflowError(f"cannot import module {module_name!r} for {what} {spec!r}: {exc}") from exc
    target = getattr(module, attribute, None)
    if not callable(target):
        raise ShrinkflowError(f"{what} {spec!r}: module {module_name!r} has no callable {attribute!r}")
    return target
