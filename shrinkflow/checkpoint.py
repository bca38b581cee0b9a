"""A saved model: one file holding a JSON description and every tensor, never a pickled module.

``model.shrinkflow`` (format version 2) is laid out as
- 4 bytes ``SFLW``, 1 byte version, 4 bytes header length, 4 bytes CRC-32 of the header;
- the header, deflate-compressed JSON: the model's description (architecture, class names,
  dataset, storage, what each technique recorded; ``shrinkflow.zoo.describe``) and one entry per
  tensor — name, dtype, shape, format, section lengths, byte count and CRC-32;
- the tensors' bytes, one after another, each in the smallest of the formats of
  ``shrinkflow._storage`` (raw; bitmap or entropy-coded positions plus non-zero values; packed or
  entropy-coded quantization codes plus scales or codebook).
Compressing the header matters on small models: a 5 KB compressed network would otherwise spend a
third of its bytes on names and shapes. The CRCs make a truncated or flipped file one clear error
instead of wrong weights. Reading it runs no code the file names: the architecture is built by
``shrinkflow.zoo``, the tensors decoded by NumPy, torch and constriction.

Storage (``description["storage"]``) says what the tensors are:
- ``dense-fp32`` and ``sparse`` (pruned): the state dict as floats — zeros stored by position;
- ``packed``: quantized weights (``description["quantization"]`` names them) as their integer
  codes plus float32 scales or codebook (``shrinkflow._encoding``); other tensors as floats.
  Reloading decodes them to the very floats the model ran with;
- ``int8-dynamic``: Linear layers as int8 weights with float32 scales and int8 zero points per
  output channel, LSTM and GRU layers as int8 weights with one float32 scale and int8 zero point
  each, rebuilt on load into PyTorch's dynamic-int8 Linear, LSTM and GRU (real int8 kernels, CPU);
- ``int8-static``: Linear and Conv layers as in ``int8-dynamic`` plus each layer's output scale and
  zero point and the input quantizers' ones; on load the float model is traced and converted
  again by the settings in ``description["quantize"]`` (method, observer), and these values
  replace the placeholders of that unfitted conversion.

Checkpoints of format version 1 (``weights.safetensors`` + ``model.json``, storages
``dense-fp32``, ``sparse-bitmap``, ``packed`` and the int8 ones) still load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from shrinkflow._encoding import (
    INT8_STORAGES,
    Encoded,
    decode,
    int8_skeleton,
    int8_state,
    load_int8_state,
    unpack_codes,
)
from shrinkflow._entropy import CodingError
from shrinkflow._storage import StoredTensor, load_tensor, store_tensor
from shrinkflow.config import ShrinkflowError
from shrinkflow.zoo import build_model

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_INPUT_ELEMENTS",
    "PARAMETERS_PER_BYTE",
    "QUANTIZED_STORAGES",
    "checkpoint_bytes",
    "checkpoint_digest",
    "file_digest",
    "holds_checkpoint",
    "is_quantized",
    "load_checkpoint",
    "read_checkpoint",
    "runs_on_cpu_only",
    "save_checkpoint",
    "stored_tensors",
]

FORMAT_VERSION = 2
CHECKPOINT_FILE = "model.shrinkflow"
STORAGE_FORMATS = ("dense-fp32", "sparse", "packed", *INT8_STORAGES)
# Bounds checked before anything is allocated, so that a small hostile file cannot ask for
# gigabytes: the header inflates to at most MAX_HEADER_BYTES; a model may hold at most
# PARAMETERS_PER_BYTE parameters (and buffers) per byte of its file, or MIN_PARAMETER_BOUND
# whatever the file (Shrinkflow's densest files hold about 40 per byte: 4-bit codes of a
# 92%-sparse model, entropy coded); an input at most MAX_INPUT_ELEMENTS values.
MAX_HEADER_BYTES = 16 * 2**20
PARAMETERS_PER_BYTE = 256
MIN_PARAMETER_BOUND = 2**20
MAX_INPUT_ELEMENTS = 2**24
QUANTIZED_STORAGES = ("packed", *INT8_STORAGES)
_MAGIC = b"SFLW"
_PREFIX = struct.Struct("<4sBII")  # magic, version, header length, header CRC-32
# Deflate's preset dictionary for the header: strings every header repeats, so that a small
# model's header costs its own names and numbers only. Part of format version 2: never change it.
_HEADER_DICTIONARY = (
    b'"architecture":{"name":"mlp","params":{"hidden_sizes":[300,100]},"input_shape":[1,8,8],"num_classes":10},'
    b'"class_names":["0","1","2","3","4","5","6","7","8","9"],"dataset":{"spec":"digits","label_column":"label"},'
    b'"storage":"dense-fp32","pruning":{"method":"gradual","sparsity":0.9},"quantize":{"method":"kmeans"},'
    b'"bits":{"layers.1":[4,32],"quantization":{"layers.1.weight":{"scheme":"codebook","bits":4},'
    b'{"scheme":"symmetric","bits":8},"distillation":{"format_version":2,"description":'
    b'"tensors":[{"n":"layers.1.weight","d":"f32","s":[300,64],"f":"coded","l":[],"b":,"c":,"q":"codebook","k":4,"m":1}'
    b'{"n":"features.0.bias","d":"f32","s":[],"f":"raw","l":[],"b":,"c":,"q":"symmetric","k":8,"m":0}]}'
)


def stored_tensors(model: nn.Module, description: dict[str, Any], encodings=None) -> list[StoredTensor]:
    """Every tensor of ``model`` as its checkpoint stores it (a tensor tied to an earlier one is
    stored once, as a reference to it)."""
    storage = description.get("storage", "dense-fp32")
    if storage not in STORAGE_FORMATS:
        raise ShrinkflowError(f"unknown storage format {storage!r}: choose {', '.join(STORAGE_FORMATS)}")
    state = int8_state(model) if storage in INT8_STORAGES else model.state_dict()
    encodings = (encodings or {}) if storage == "packed" else {}
    stored, first_name = [], {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in first_name:
            stored.append(StoredTensor(name, "alias", {"f": "alias", "a": first_name[key]}, b"", 0.0))
            continue
        if tensor.numel():
            first_name[key] = name
        stored.append(store_tensor(name, tensor, encodings.get(name)))
    return stored


def save_checkpoint(model: nn.Module, description: dict[str, Any], folder: Path, encodings=None) -> Path:
    """Write ``model``'s tensors and ``description`` to ``folder``; return the folder.

    ``encodings`` (``packed`` storage): the ``shrinkflow._encoding.Encoded`` of each quantized
    weight, whose decoded values the model holds.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = stored_tensors(model, description, encodings)
    entries = [
        {"n": t.name, **t.header, "b": len(t.payload), "c": zlib.crc32(t.payload)} if t.format != "alias"
        else {"n": t.name, **t.header}
        for t in tensors
    ]  # fmt: skip
    header_json = json.dumps({"description": {"format_version": FORMAT_VERSION, **description}, "tensors": entries},
                             separators=(",", ":"))  # fmt: skip
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=_HEADER_DICTIONARY)  # raw deflate
    header = packer.compress(header_json.encode()) + packer.flush()
    prefix = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header))
    (folder / CHECKPOINT_FILE).write_bytes(prefix + header + b"".join(t.payload for t in tensors))
    return folder


def checkpoint_digest(folder: Path) -> str:
    """SHA-256 over the checkpoint folder's files (relative names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def holds_checkpoint(folder: Path) -> bool:
    """Does ``folder`` hold a checkpoint's file (format 2, or format 1's description)?"""
    return (Path(folder) / CHECKPOINT_FILE).is_file() or (Path(folder) / _V1_DESCRIPTION).is_file()


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its description and load its weights (no unpickling of anything)."""
    model, description, _ = read_checkpoint(folder)
    return model, description


def read_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any], dict[str, Encoded]]:
    """``load_checkpoint``, plus the codes of packed weights (by state-dict name; else empty), so
    that saving the model again stores them packed again."""
    folder = Path(folder)
    if not (folder / CHECKPOINT_FILE).is_file() and (folder / _V1_DESCRIPTION).is_file():
        return _read_v1(folder)
    if not (folder / CHECKPOINT_FILE).is_file():
        raise ShrinkflowError(f"checkpoint in {folder} is incomplete: missing {CHECKPOINT_FILE}")
    blob = (folder / CHECKPOINT_FILE).read_bytes()
    with _corrupt_as_one_line(folder):
        description, entries, offset = _parse_header(blob)
    _check_format(description, folder)
    expected = _expected_shapes(description, folder, parameter_bound(len(blob)))
    with _corrupt_as_one_line(folder):
        _check_entries(entries, expected, folder)
        tensors = _decode(blob, entries, offset)
    model = _checked_model(description, folder)
    try:
        model, encodings = _fill(model, tensors, description)
    except (KeyError, ValueError) as exc:
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {CHECKPOINT_FILE}: {exc}") from None
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ShrinkflowError(f"checkpoint in {folder} does not match its architecture: {first_line}") from exc
    model.eval()
    return model, description, encodings


def parameter_bound(file_bytes: int) -> int:
    """The most parameters (and buffers) a checkpoint file of ``file_bytes`` may describe."""
    return max(MIN_PARAMETER_BOUND, PARAMETERS_PER_BYTE * file_bytes)


@contextlib.contextmanager
def _corrupt_as_one_line(folder: Path) -> Iterator[None]:
    """Whatever a damaged or hostile file makes the parser raise, as one line."""
    try:
        yield
    except ShrinkflowError:
        raise
    except KeyError as exc:
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {CHECKPOINT_FILE}: no field {exc}") from None
    except RecursionError:
        raise ShrinkflowError(
            f"checkpoint in {folder} is corrupt: {CHECKPOINT_FILE}: its header nests too deeply"
        ) from None
    except (ValueError, TypeError, IndexError, AttributeError, struct.error, zlib.error, MemoryError) as exc:
        raise ShrinkflowError(
            f"checkpoint in {folder} is corrupt: {CHECKPOINT_FILE}: {_clipped(str(exc) or type(exc).__name__)}"
        ) from None


def _clipped(text: str, limit: int = 200) -> str:
    """A value from a file, quoted in a message: a hostile file may hold megabytes of it."""
    return text if len(text) <= limit else text[:limit] + "…"


def _parse_header(blob: bytes) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """(description, tensor entries, offset of the first tensor's bytes)."""
    if len(blob) < _PREFIX.size or blob[:4] != _MAGIC:
        raise ValueError("not a Shrinkflow checkpoint (it does not start with SFLW)")
    _, version, header_length, header_crc = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}; this Shrinkflow reads version {FORMAT_VERSION}")
    header = blob[_PREFIX.size : _PREFIX.size + header_length]
    if len(header) != header_length or zlib.crc32(header) != header_crc:
        raise ValueError("the header is truncated or damaged (CRC mismatch)")
    unpacker = zlib.decompressobj(-15, zdict=_HEADER_DICTIONARY)
    text = unpacker.decompress(header, MAX_HEADER_BYTES + 1)  # stops one byte past the cap
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"the header inflates to more than {MAX_HEADER_BYTES} bytes")
    parsed = json.loads(text + unpacker.flush())
    description, entries = parsed["description"], parsed["tensors"]
    if not isinstance(description, dict) or not isinstance(entries, list):
        raise ValueError("the header has no description or tensor list")
    if not all(isinstance(entry, dict) and isinstance(entry.get("n"), str) for entry in entries):
        raise ValueError("a tensor entry is not an object with a name")
    return description, entries, _PREFIX.size + header_length


def _check_format(description: dict[str, Any], folder: Path) -> None:
    if description.get("format_version") != FORMAT_VERSION:
        raise ShrinkflowError(
            f"checkpoint in {folder} has format version {_clipped(repr(description.get('format_version')), 40)}; "
            f"this Shrinkflow reads version {FORMAT_VERSION}"
        )
    storage = description.get("storage", "dense-fp32")
    if storage not in STORAGE_FORMATS:
        raise ShrinkflowError(
            f"checkpoint in {folder} is corrupt: unknown storage format {_clipped(repr(storage), 40)}: "
            f"this Shrinkflow reads {', '.join(STORAGE_FORMATS)}"
        )
    if problem := _description_problem(description):
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: its description {problem}")


def _expected_shapes(description: dict[str, Any], folder: Path, bound: int) -> dict[str, tuple[int, ...]]:
    """The shapes of the architecture's parameters and buffers, found without allocating them
    (built on PyTorch's meta device); refused when they hold more than ``bound`` values."""
    inputs = math.prod(description["architecture"]["input_shape"])
    if inputs > MAX_INPUT_ELEMENTS:
        raise ShrinkflowError(
            f"checkpoint in {folder} is corrupt: its input shape has {inputs} values, more than the "
            f"{MAX_INPUT_ELEMENTS} a Shrinkflow model may take"
        )
    with torch.device("meta"):
        skeleton = _checked_model(description, folder)
    shapes = {name: tuple(t.shape) for name, t in (*skeleton.named_parameters(), *skeleton.named_buffers())}
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > bound:
        raise ShrinkflowError(
            f"checkpoint in {folder} is corrupt: its architecture has {count} parameters, more than the {bound} a "
            f"file of its size may hold ({PARAMETERS_PER_BYTE} per byte, at least {MIN_PARAMETER_BOUND})"
        )
    return shapes


def _check_entries(entries: list[dict[str, Any]], expected: dict[str, tuple[int, ...]], folder: Path) -> None:
    """Every tensor's declared shape is a list of non-negative sizes, and the architecture's
    where it names one of its tensors (int8 storages name their packed tensors otherwise); all
    together they hold no more values than the architecture may, so decoding allocates no more."""
    declared = 0
    for entry in entries:
        if entry.get("f") == "alias":
            continue
        shape = entry["s"]
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"tensor {_clipped(entry['n'], 80)} has an invalid shape")
        if entry["n"] in expected and tuple(shape) != expected[entry["n"]]:
            raise ShrinkflowError(
                f"checkpoint in {folder} does not match its architecture: tensor {entry['n']} is declared "
                f"{tuple(shape)}, where the architecture has {expected[entry['n']]}"
            )
        if not isinstance(entry["b"], int) or entry["b"] < 0:
            raise ValueError(f"tensor {entry['n']} has an invalid byte count")
        declared += math.prod(shape)
    # int8 storages add a scale and zero point per channel: twice the architecture is room enough
    if declared > 2 * sum(math.prod(shape) for shape in expected.values()) + 64 * len(entries):
        raise ValueError(f"its tensors declare {declared} values, more than the architecture has")


def _decode(
    blob: bytes, entries: list[dict[str, Any]], offset: int
) -> dict[str, tuple[torch.Tensor, Encoded | None] | str]:
    """{name: (tensor, codes or None) or the name of the tensor it is tied to}."""
    tensors = {}
    for entry in entries:
        if entry.get("f") == "alias":
            tensors[entry["n"]] = entry["a"]
            continue
        payload = blob[offset : offset + entry["b"]]
        offset += entry["b"]
        if len(payload) != entry["b"]:
            raise ValueError(f"tensor {entry['n']} is truncated: {len(payload)} of {entry['b']} bytes")
        if zlib.crc32(payload) != entry["c"]:
            raise ValueError(f"tensor {entry['n']} is damaged (CRC mismatch)")
        try:
            tensors[entry["n"]] = load_tensor(entry, payload)
        except (ValueError, CodingError) as exc:
            raise ValueError(f"tensor {entry['n']} does not decode: {exc}") from None
    if offset != len(blob):
        raise ValueError(f"{len(blob) - offset} unexpected bytes after the last tensor")
    return tensors


def _description_problem(description: Any) -> str | None:
    """What is wrong with a description read from a file (None if its shape is right): a
    tampered or damaged one must fail as one line, not deep inside a model constructor."""
    if not isinstance(description, dict):
        return f"is a {type(description).__name__}, not an object"
    arch = description.get("architecture")
    if not isinstance(arch, dict):
        return "has no architecture object"
    shape, classes = arch.get("input_shape"), arch.get("num_classes")
    checks = {
        "architecture.name": isinstance(arch.get("name"), str),
        "architecture.params": isinstance(arch.get("params", {}), dict),
        "architecture.input_shape": isinstance(shape, list) and bool(shape)
        and all(isinstance(n, int) and n > 0 for n in shape),
        "architecture.num_classes": isinstance(classes, int) and classes >= 2,
        "class_names": isinstance(description.get("class_names", []), list),
        "dataset": isinstance(description.get("dataset", {}), dict)
        and all(isinstance(v, str) for v in description.get("dataset", {}).values()),
        "storage": isinstance(description.get("storage", "dense-fp32"), str),
        "preprocessing": isinstance(description.get("preprocessing", {}), dict),
    }  # fmt: skip
    bad = [name for name, ok in checks.items() if not ok]
    return f"has a missing or ill-typed {', '.join(bad)}" if bad else None


def _checked_model(description: Any, folder: Path) -> nn.Module:
    """The model a description read from ``folder`` describes, after checking its shape."""
    if problem := _description_problem(description):
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: its description {problem}")
    try:
        return build_model(description["architecture"])
    except (TypeError, ValueError) as exc:  # params the architecture's constructor does not take
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: its architecture does not build: {exc}") from None


def _fill(model: nn.Module, tensors: dict, description: dict[str, Any]) -> tuple[nn.Module, dict[str, Encoded]]:
    """Load the decoded tensors into ``model``; return it (a new one for int8 storages) and the
    codes of packed weights."""
    state, encodings = {}, {}
    for name, value in tensors.items():
        if isinstance(value, str):
            continue
        state[name] = value[0]
        if value[1] is not None:
            encodings[name] = value[1]
    for name, target in tensors.items():
        if isinstance(target, str):
            state[name] = state[target]
    storage = description.get("storage", "dense-fp32")
    if storage in INT8_STORAGES:
        input_shape = description["architecture"]["input_shape"]
        skeleton = int8_skeleton(model, storage, input_shape, description.get("quantize", {}))
        return load_int8_state(skeleton, state), {}
    model.load_state_dict(state, strict=True)
    return model, encodings


# --- format version 1, read only: weights.safetensors + model.json ----------------------------

_V1_WEIGHTS, _V1_DESCRIPTION = "weights.safetensors", "model.json"
_V1_STORAGES = ("dense-fp32", "sparse-bitmap", "packed", *INT8_STORAGES)


def _read_v1(folder: Path) -> tuple[nn.Module, dict[str, Any], dict[str, Encoded]]:
    if not (folder / _V1_WEIGHTS).is_file():
        raise ShrinkflowError(f"checkpoint in {folder} is incomplete: missing {_V1_WEIGHTS}")
    if (folder / _V1_DESCRIPTION).stat().st_size > MAX_HEADER_BYTES:
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {_V1_DESCRIPTION} is over {MAX_HEADER_BYTES} bytes")
    try:
        description = json.loads((folder / _V1_DESCRIPTION).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = "it nests too deep" if isinstance(exc, RecursionError) else _clipped(str(exc))
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {_V1_DESCRIPTION}: {reason}") from None
    if problem := _description_problem(description):
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: its description {problem}")
    if description.get("format_version") != 1:
        raise ShrinkflowError(
            f"checkpoint in {folder} has format version {description.get('format_version')!r}; "
            f"this Shrinkflow reads versions 1 and {FORMAT_VERSION}"
        )
    _expected_shapes(description, folder, parameter_bound(checkpoint_bytes(folder)))
    model = _checked_model(description, folder)
    try:
        model, encodings = _load_v1_weights(model, folder / _V1_WEIGHTS, description)
    except (safetensors.SafetensorError, KeyError, ValueError, TypeError, IndexError, RecursionError) as exc:
        reason = _clipped(str(exc) or type(exc).__name__)
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {_V1_WEIGHTS}: {reason}") from None
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ShrinkflowError(f"checkpoint in {folder} does not match its architecture: {first_line}") from exc
    model.eval()
    if description.get("storage") == "sparse-bitmap":
        description["storage"] = "sparse"  # saved again, it is stored the version 2 way
    description["format_version"] = FORMAT_VERSION
    return model, description, encodings


def _load_v1_weights(model: nn.Module, path: Path, description: dict[str, Any]) -> tuple[nn.Module, dict]:
    storage = description.get("storage", "dense-fp32")
    if storage not in _V1_STORAGES:
        raise ValueError(f"unknown storage format {storage!r}: version 1 has {', '.join(_V1_STORAGES)}")
    if storage == "dense-fp32":
        safetensors.torch.load_model(model, str(path), strict=True, device="cpu")
        return model, {}
    tensors = safetensors.torch.load_file(str(path))
    if storage in INT8_STORAGES:
        input_shape = description["architecture"]["input_shape"]
        skeleton = int8_skeleton(model, storage, input_shape, description.get("quantize", {}))
        return load_int8_state(skeleton, tensors), {}
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = {name: t for name, t in tensors.items() if "::" not in name}
    encodings = {}
    key = "packed" if storage == "packed" else "sparse_shapes"
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, info in json.loads(metadata[key]).items():
        shape = info["shape"] if storage == "packed" else info
        if expected.get(name) != tuple(shape):
            raise ValueError(
                f"tensor {_clipped(str(name), 80)} is declared {_clipped(str(shape), 80)}, not as the model has it"
            )
        count = int(np.prod(shape))
        kept = None
        if storage != "packed" or info.get("sparse"):
            kept = torch.from_numpy(np.unpackbits(tensors[f"{name}::bitmap"].numpy(), count=count).astype(bool))
        if storage != "packed":
            flat = torch.zeros(count, dtype=tensors[f"{name}::values"].dtype)
            flat[kept] = tensors[f"{name}::values"]
            state[name] = flat.reshape(shape)
            continue
        bits = info["bits"]
        codes = torch.full((count,), 2 ** (bits - 1) - 1, dtype=torch.int64)  # v1 sparse: symmetric zero code
        if kept is not None:
            codes[kept] = unpack_codes(tensors[f"{name}::codes"], bits, int(kept.sum()))
        else:
            codes = unpack_codes(tensors[f"{name}::codes"], bits, count)
        encoded = Encoded(info["scheme"], bits, tuple(shape), codes, tensors[f"{name}::scales"])
        state[name], encodings[name] = decode(encoded), encoded
    model.load_state_dict(state, strict=True)
    return model, encodings


def runs_on_cpu_only(description: dict[str, Any]) -> bool:
    """int8 models run PyTorch's CPU int8 kernels only."""
    return description.get("storage") in INT8_STORAGES


def is_quantized(description: dict[str, Any]) -> bool:
    """Does the checkpoint hold quantized weights (which pruning or quantizing again would spoil)?"""
    return description.get("storage") in QUANTIZED_STORAGES


def checkpoint_bytes(folder: Path) -> int:
    """Bytes on disk of everything needed to rebuild the model."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
