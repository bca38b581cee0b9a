"""Hostile and damaged files fail fast, in one line, within bounded memory: a checkpoint's header
is checked (inflated size, nesting, entries, shapes, the architecture's parameter count against
the file's size) before anything is allocated or decoded.

Every forged file is loaded in one fresh Python process, which reports each case's message, its
time and the process's peak memory (``resource``): the peak after all cases bounds each of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from shrinkflow import checkpoint
from shrinkflow.zoo import describe

REPO_ROOT = Path(__file__).resolve().parents[1]
PEAK_GROWTH_MB = 100  # over the process's own peak after importing torch and loading a real model
CASE_SECONDS = 1.0


def _forged(header: dict | bytes, payload: bytes = b"", version: int = checkpoint.FORMAT_VERSION) -> bytes:
    """A ``model.shrinkflow`` written by hand: the prefix, a deflated header (a JSON object, or
    raw bytes to deflate), then ``payload``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=checkpoint._HEADER_DICTIONARY)
    deflated = packer.compress(text) + packer.flush()
    prefix = checkpoint._PREFIX.pack(checkpoint._MAGIC, version, len(deflated), zlib.crc32(deflated))
    return prefix + deflated + payload


def _description(**params) -> dict:
    arch = describe("mlp", (1, 8, 8), 10)
    arch["params"].update(params)
    return {"format_version": checkpoint.FORMAT_VERSION, "architecture": arch, "class_names": list("0123456789")}


def _entry(name: str, shape, payload: bytes = b"", **more) -> dict:
    return {"n": name, "d": "f32", "s": shape, "f": "raw", "l": [], "b": len(payload), "c": zlib.crc32(payload),
            **more}  # fmt: skip


def _nested(depth: int) -> bytes:
    return b'{"description": ' + b"[" * depth + b"]" * depth + b', "tensors": []}'


# name: (file bytes, what the one line must say)
CASES = {
    "inflation bomb": (_forged(b'{"description": {}, "tensors": []' + b" " * (64 * 2**20) + b"}"),
                       "inflates to more than"),
    "nested header": (_forged(_nested(200_000)), "nests too deep"),
    "nested description": (_forged({"description": {**_description(), "architecture": [[[[[[[[[[[]]]]]]]]]]]},
                                    "tensors": []}), "has no architecture object"),
    "entry not an object": (_forged({"description": _description(), "tensors": [7]}), "tensor entry is not an object"),
    "negative shape": (_forged({"description": _description(), "tensors": [_entry("layers.1.weight", [-300, 64])]}),
                       "invalid shape"),
    "shape not a list": (_forged({"description": _description(), "tensors": [_entry("layers.1.weight", "300")]}),
                         "invalid shape"),
    "mismatched shape": (_forged({"description": _description(), "tensors": [_entry("layers.1.weight", [2**31, 64])]}),
                         "does not match its architecture: tensor layers.1.weight is declared"),
    "declared count 2e9": (_forged({"description": _description(), "tensors": [_entry("extra", [2_000_000_000])]}),
                           "declare 2000000000 values, more than the architecture has"),
    "negative byte count": (_forged({"description": _description(), "tensors": [_entry("extra", [3], b"", b=-5)]}),
                            "invalid byte count"),
    "huge widths": (_forged({"description": _description(hidden_sizes=[1_000_000, 1_000_000]), "tensors": []}),
                    "more than the 1048576 a file of its size may hold"),
    "huge input": (_forged({"description": {**_description(), "architecture": describe("mlp", (1, 100_000, 100_000),
                                                                                       10)}, "tensors": []}),
                   "its input shape has 10000000000 values"),
    "long storage name": (_forged({"description": {**_description(), "storage": "x" * 5_000_000}, "tensors": []}),
                          "unknown storage format 'xxxxxxxx"),
    "wrong version": (_forged({"description": _description(), "tensors": []}, version=9), "format version 9"),
    "truncated prefix": (b"SFLW\x02", "not a Shrinkflow checkpoint"),
    "no tensor list": (_forged({"description": _description()}), "no field 'tensors'"),
    "tensors not a list": (_forged({"description": _description(), "tensors": {"a": 1}}),
                           "no description or tensor list"),
    "unknown dtype": (_forged({"description": _description(), "tensors": [_entry("extra", [3], b"x" * 12, d="f128")]},
                              b"x" * 12), "unknown dtype 'f128'"),
    "negative section": (_forged({"description": _description(),
                                  "tensors": [_entry("extra", [3], b"x" * 12, l=[-4], f="bitmap")]}, b"x" * 12),
                         "sections are longer than its bytes"),
    "huge class count": (_forged({"description": {**_description(), "architecture": describe("mlp", (1, 8, 8),
                                                                                             10**9)}, "tensors": []}),
                         "a file of its size may hold"),
    "huge resized width": (_forged({"description": {**_description(), "architecture": {
                                **describe("mlp", (1, 8, 8), 10), "resized": {"layers.1": {"in_features": 64,
                                                                                          "out_features": 10**8}}}},
                                    "tensors": []}), "a file of its size may hold"),
    "zero input size": (_forged({"description": {**_description(), "architecture": {**describe("mlp", (1, 8, 8), 10),
                                                                                   "input_shape": [1, 0, 8]}},
                                 "tensors": []}), "architecture.input_shape"),
    "unknown parameters": (_forged({"description": _description(wings=3), "tensors": []}), "does not build"),
    "description a list": (_forged({"description": [1, 2], "tensors": []}), "no description or tensor list"),
    "trailing bytes": (_forged({"description": _description(), "tensors": []}, b"x" * 10), "unexpected bytes"),
    "v1 huge widths": ({"model.json": json.dumps({**_description(hidden_sizes=[10**6, 10**6]), "format_version": 1}),
                        "weights.safetensors": b""}, "a file of its size may hold"),
    "v1 nested description": ({"model.json": "[" * 100_000 + "]" * 100_000, "weights.safetensors": b""},
                              "nests too deep"),
    "header length past the end": (checkpoint._PREFIX.pack(checkpoint._MAGIC, 2, 2**31, 0), "truncated or damaged"),
}  # fmt: skip

_LOADER = """
import json, resource, sys, time
from pathlib import Path
import torch
from shrinkflow.checkpoint import load_checkpoint, save_checkpoint
from shrinkflow.config import ShrinkflowError
from shrinkflow.zoo import build_model, describe

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

root = Path(sys.argv[1])
real = {"architecture": describe("mlp", (1, 8, 8), 10), "class_names": list("0123456789")}
load_checkpoint(save_checkpoint(build_model(real["architecture"]), real, root / "real"))  # warm: imports, kernels
results = {"baseline_peak_mb": peak_mb(), "cases": {}}
for folder in sorted(p for p in root.iterdir() if p.name != "real"):
    started = time.perf_counter()
    try:
        load_checkpoint(folder)
        message = None
    except ShrinkflowError as exc:
        message = str(exc)
    results["cases"][folder.name] = {"message": message, "seconds": time.perf_counter() - started}
results["peak_mb"] = peak_mb()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    for index, (files, _) in enumerate(CASES.values()):
        (root / f"case{index:02d}").mkdir()
        for name, content in (files if isinstance(files, dict) else {checkpoint.CHECKPOINT_FILE: files}).items():
            path = root / f"case{index:02d}" / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    done = subprocess.run([sys.executable, "-c", _LOADER, str(root)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])
    results["by_name"] = {name: results["cases"][f"case{i:02d}"] for i, name in enumerate(CASES)}
    return results


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_checkpoint_fails_in_one_line_fast(loaded, name):
    result = loaded["by_name"][name]
    assert result["message"] is not None, "it loaded"
    assert CASES[name][1] in result["message"]
    assert "\n" not in result["message"] and len(result["message"]) < 400
    assert result["seconds"] < CASE_SECONDS


def test_no_hostile_checkpoint_takes_memory(loaded):
    assert loaded["peak_mb"] - loaded["baseline_peak_mb"] < PEAK_GROWTH_MB


def test_the_parameter_bound_follows_the_file_size():
    assert checkpoint.parameter_bound(10) == checkpoint.MIN_PARAMETER_BOUND
    assert checkpoint.parameter_bound(10**6) == checkpoint.PARAMETERS_PER_BYTE * 10**6


ALIAS_BOMB = "\n".join(
    [
        'a: &a ["x","x","x","x","x","x","x","x","x"]',
        *(f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdef", "bcdefg", strict=True)),
    ]
)
YAML_CASES = {
    "aliases": (ALIAS_BOMB + "\nprune: {method: *g}\n", "aliases (*name) are not allowed here"),
    "nesting": ("[" * 100_000 + "]" * 100_000, "it nests deeper than 50 levels"),
    "size": ("prune: {method: global}\n" + "#" * (2**20 + 1), "more than the 1048576 allowed"),
}


@pytest.mark.parametrize("kind", ["space", "recipe"])
@pytest.mark.parametrize("case", YAML_CASES)
def test_a_hostile_yaml_file_fails_in_one_line_fast(tmp_path, kind, case):
    import time

    from pipelines.recipe import load_recipe
    from search.space import load_space
    from shrinkflow import ShrinkflowError

    text, expected = YAML_CASES[case]
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(ShrinkflowError, match=r"not valid YAML") as refused:
        (load_space if kind == "space" else load_recipe)(str(path))
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert time.perf_counter() - started < CASE_SECONDS


def test_an_override_value_with_an_alias_is_refused():
    from pipelines.recipe import parse_overrides
    from shrinkflow import ShrinkflowError

    with pytest.raises(ShrinkflowError, match="override 'pruned.sparsity=\\*a': the value is not valid YAML"):
        parse_overrides("pruned.sparsity=*a")
