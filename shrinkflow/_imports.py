"""Resolve user code given as ``package.module:attribute`` strings, and decide whether to run it.

A spec the user passes on the command line (``--model mypkg.models:make``) is their choice and is
trusted for the rest of the process. A spec read from a saved model's description is not: an
artifact must not choose the code that runs when it is loaded (a tampered ``dataset.spec`` of
``os:abort`` would otherwise be called). Such a spec runs only if it is trusted in this process
or listed in the ``SHRINKFLOW_TRUST_CODE`` environment variable (comma-separated specs; ``pkg.mod:*``
trusts every function of a module).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shrinkflow.config import ShrinkflowError

__all__ = ["TRUST_ENV", "is_import_spec", "is_trusted", "load_callable", "trust", "trusted_here", "user_code"]

TRUST_ENV = "SHRINKFLOW_TRUST_CODE"
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TRUSTED_HERE: set[str] = set()  # specs the user named in this process


def is_import_spec(text: str) -> bool:
    """True for anything that looks like it means ``module:function`` (valid or not)."""
    return ":" in text and not text.lower().endswith((".csv", ".parquet", ".pq"))


def trust(spec: str) -> None:
    """Mark ``spec`` as chosen by the user (a command-line or API argument) for this process."""
    _TRUSTED_HERE.add(spec)


def trusted_here() -> frozenset[str]:
    """The specs trusted in this process, for the worker processes it starts."""
    return frozenset(_TRUSTED_HERE)


def is_trusted(spec: str) -> bool:
    """Named by the user in this process, or listed in ``SHRINKFLOW_TRUST_CODE``."""
    if spec in _TRUSTED_HERE:
        return True
    listed = {entry.strip() for entry in os.environ.get(TRUST_ENV, "").split(",") if entry.strip()}
    return spec in listed or f"{spec.split(':')[0]}:*" in listed


def load_callable(spec: str, what: str, *, from_artifact: bool = False) -> Callable[..., Any]:
    """Import ``package.module:function``; ``what`` names the role in error messages. A spec read
    from a saved model (``from_artifact``) must be trusted first; nothing is imported otherwise."""
    if not _SPEC.match(spec):
        raise ShrinkflowError(f"malformed {what} {spec!r}: expected 'package.module:function', e.g. 'mypkg.data:load'")
    if from_artifact and not is_trusted(spec):
        raise ShrinkflowError(
            f"the saved model names the {what} {spec!r}, and Shrinkflow runs code a saved model names only "
            f"if you trust it: set {TRUST_ENV}={spec} (comma-separated; 'module:*' trusts a module)"
        )
    module_name, attribute = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ShrinkflowError(f"cannot import module {module_name!r} for {what} {spec!r}: {exc}") from exc
    target = getattr(module, attribute, None)
    if not callable(target):
        raise ShrinkflowError(f"{what} {spec!r}: module {module_name!r} has no callable {attribute!r}")
    return target


def user_code(spec: str) -> tuple[list[str], list[str]]:
    """What a served model needs to import ``spec``'s module elsewhere: the local file or
    top-level package to copy into the model (MLflow ``code_paths``), or, for an installed
    package, its pip requirement. Neither found: one line saying so, at log time."""
    import importlib.metadata
    import importlib.util
    import sysconfig

    top = spec.split(":")[0].split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not (found.origin or found.submodule_search_locations):
        raise ShrinkflowError(f"cannot find the module of model factory {spec!r} to bundle it with the model")
    path = Path(list(found.submodule_search_locations)[0] if found.submodule_search_locations else found.origin)
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if not any(path.resolve().is_relative_to(root) for root in installed):
        return [str(path)], []  # a local file or package: it travels with the model
    distributions = importlib.metadata.packages_distributions().get(top, [])
    if not distributions:
        raise ShrinkflowError(
            f"model factory {spec!r} comes from an installed module {top!r} that no pip distribution provides: "
            "the served model could not import it; make it a local package or install it from a distribution"
        )
    name = distributions[0]
    return [], [f"{name}=={importlib.metadata.version(name)}"]
