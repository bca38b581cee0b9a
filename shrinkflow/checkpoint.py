"""A saved model: a state dict plus a JSON description, never a pickled module.

Layout of a checkpoint folder:
- ``weights.safetensors``: the state dict in safetensors format. Reading it unpickles nothing
  (stricter than ``torch.load(weights_only=True)``), and its container costs ~80 bytes a tensor
  where ``torch.save``'s zip costs ~1.5 KB plus ~200 bytes a tensor: on a 5,000-parameter model
  that is the difference between 5% and 18% over the weights' own bytes;
- ``model.json``: the architecture description (``shrinkflow.zoo.describe``), the class names, the
  dataset it was trained on and the storage format, so a later step can rebuild model and data.

Storage formats (``description["storage"]``):
- ``dense-fp32``: every tensor as it is;
- ``sparse-bitmap``: a weight matrix or kernel whose zeros make it pay is stored as a bitmap of its
  non-zeros (1 bit an element, packed) plus the non-zero values; other tensors stay dense. At 90%
  sparsity a float32 matrix takes 0.1 × 4 + 1/8 = 0.525 bytes an element instead of 4.
- ``packed``: quantized weights (``description["quantization"]`` names them) are stored as their
  integer codes packed k bits each plus float32 scales or codebook (``shrinkflow.encoding``);
  other tensors stay dense. Reloading decodes them to the very floats the model ran with.
- ``int8-dynamic``: Linear layers as int8 weights with float32 scales and int8 zero points per
  output channel, LSTM layers as int8 weights with one float32 scale and int8 zero point each,
  rebuilt on load into PyTorch's dynamic-int8 Linear and LSTM (real int8 kernels, CPU).
- ``int8-static``: Linear and Conv layers as in ``int8-dynamic`` plus each layer's output scale and
  zero point and the input quantizers' ones; on load the float model is traced and converted
  again by the settings in ``description["quantize"]`` (method, observer), and these values
  replace the placeholders of that unfitted conversion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from shrinkflow.config import ShrinkflowError
from shrinkflow.encoding import (
    INT8_STORAGES,
    Encoded,
    bitmap_pays,
    decode,
    int8_skeleton,
    int8_state,
    load_int8_state,
    pack_codes,
    unpack_codes,
    zero_code,
)
from shrinkflow.zoo import build_model

__all__ = [
    "FORMAT_VERSION",
    "QUANTIZED_STORAGES",
    "WEIGHTS_FILE",
    "DESCRIPTION_FILE",
    "checkpoint_bytes",
    "is_quantized",
    "load_checkpoint",
    "read_checkpoint",
    "runs_on_cpu_only",
    "save_checkpoint",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
DESCRIPTION_FILE = "model.json"
STORAGE_FORMATS = ("dense-fp32", "sparse-bitmap", "packed", *INT8_STORAGES)
QUANTIZED_STORAGES = ("packed", *INT8_STORAGES)
_SHAPES_KEY = "sparse_shapes"  # safetensors metadata: JSON {tensor name: shape} of bitmap tensors
_PACKED_KEY = "packed"  # safetensors metadata: JSON {tensor name: {scheme, bits, shape}}


def _bitmap_bytes(tensor: torch.Tensor) -> int:
    return -(-tensor.numel() // 8) + int(torch.count_nonzero(tensor)) * tensor.element_size()


def _stored_as_bitmap(tensor: torch.Tensor, storage: str) -> bool:
    return (
        storage == "sparse-bitmap"
        and tensor.is_floating_point()
        and tensor.dim() >= 2
        and _bitmap_bytes(tensor) < tensor.numel() * tensor.element_size()
    )


def tensor_storage_bytes(tensor: torch.Tensor, storage: str) -> int:
    """Bytes the storage format needs for ``tensor``'s values and index, without container."""
    if _stored_as_bitmap(tensor, storage):
        return _bitmap_bytes(tensor)
    return tensor.numel() * tensor.element_size()


def _encode_bitmaps(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    tensors, shapes = {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if _stored_as_bitmap(tensor, "sparse-bitmap"):
            flat = tensor.flatten()
            keep = flat != 0
            tensors[f"{name}::bitmap"] = torch.from_numpy(np.packbits(keep.numpy()))
            tensors[f"{name}::values"] = flat[keep].clone()
            shapes[name] = list(tensor.shape)
        else:
            tensors[name] = tensor.contiguous().clone()  # clone: tied tensors are saved apart
    return tensors, shapes


def _decode_bitmaps(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    state = {name: t for name, t in tensors.items() if "::" not in name}
    for name, shape in shapes.items():
        numel = int(np.prod(shape))
        keep = torch.from_numpy(np.unpackbits(tensors[f"{name}::bitmap"].numpy(), count=numel).astype(bool))
        values = tensors[f"{name}::values"]
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[keep] = values
        state[name] = flat.reshape(shape)
    return state


def _encode_packed(state: dict[str, torch.Tensor], encodings: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, metadata = {}, {}
    for name, tensor in state.items():
        if name in encodings:
            encoded = encodings[name]
            codes = encoded.codes
            info = {"scheme": encoded.scheme, "bits": encoded.bits, "shape": list(encoded.shape)}
            keep = codes != zero_code(encoded) if encoded.scheme == "symmetric" else None
            if keep is not None and bitmap_pays(codes.numel(), int(keep.sum()), encoded.bits, encoded.scheme):
                tensors[f"{name}::bitmap"] = torch.from_numpy(np.packbits(keep.numpy()))
                codes, info["sparse"] = codes[keep], True
            tensors[f"{name}::codes"] = pack_codes(codes, encoded.bits)
            tensors[f"{name}::scales"] = encoded.scales.float().contiguous()
            metadata[name] = info
        else:
            tensors[name] = tensor.detach().cpu().contiguous().clone()
    return tensors, metadata


def _decode_packed(tensors: dict[str, torch.Tensor], metadata: dict) -> tuple[dict[str, torch.Tensor], dict]:
    state = {name: t for name, t in tensors.items() if "::" not in name}
    encodings = {}
    for name, info in metadata.items():
        count = int(np.prod(info["shape"]))
        encoded = Encoded(info["scheme"], info["bits"], tuple(info["shape"]), None, tensors[f"{name}::scales"])
        if info.get("sparse"):
            keep = torch.from_numpy(np.unpackbits(tensors[f"{name}::bitmap"].numpy(), count=count).astype(bool))
            encoded.codes = torch.full((count,), zero_code(encoded), dtype=torch.int64)
            encoded.codes[keep] = unpack_codes(tensors[f"{name}::codes"], info["bits"], int(keep.sum()))
        else:
            encoded.codes = unpack_codes(tensors[f"{name}::codes"], info["bits"], count)
        state[name], encodings[name] = decode(encoded), encoded
    return state, encodings


def _compact(value) -> str:
    # No indentation: on a 10 KB compressed model every byte of description is ~0.01% of its size.
    return json.dumps(value, separators=(",", ":"))


def save_checkpoint(model: nn.Module, description: dict[str, Any], folder: Path, encodings=None) -> Path:
    """Write ``model``'s weights and ``description`` to ``folder``; return the folder.

    ``encodings`` (``packed`` storage): the ``shrinkflow.encoding.Encoded`` of each quantized
    weight, whose decoded values the model holds.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if description.get("storage", "dense-fp32") in INT8_STORAGES:
        safetensors.torch.save_file(int8_state(model), str(folder / WEIGHTS_FILE))
    elif description.get("storage", "dense-fp32") == "packed":
        tensors, metadata = _encode_packed(model.state_dict(), encodings or {})
        safetensors.torch.save_file(tensors, str(folder / WEIGHTS_FILE), metadata={_PACKED_KEY: _compact(metadata)})
    elif description.get("storage", "dense-fp32") == "sparse-bitmap":
        tensors, shapes = _encode_bitmaps(model.state_dict())
        safetensors.torch.save_file(tensors, str(folder / WEIGHTS_FILE), metadata={_SHAPES_KEY: _compact(shapes)})
    else:
        safetensors.torch.save_model(model.cpu(), str(folder / WEIGHTS_FILE))
    (folder / DESCRIPTION_FILE).write_text(_compact({"format_version": FORMAT_VERSION, **description}))
    return folder


def load_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load its weights (no unpickling of anything)."""
    model, description, _ = read_checkpoint(folder)
    return model, description


def read_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any], dict[str, Encoded]]:
    """``load_checkpoint``, plus the codes of packed weights (by state-dict name; else empty), so
    that saving the model again stores them packed again."""
    folder = Path(folder)
    for name in (DESCRIPTION_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ShrinkflowError(f"checkpoint in {folder} is incomplete: missing {name}")
    try:
        description = json.loads((folder / DESCRIPTION_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {DESCRIPTION_FILE}: {exc}") from exc
    if description.get("format_version") != FORMAT_VERSION:
        raise ShrinkflowError(
            f"checkpoint in {folder} has format version {description.get('format_version')!r}; "
            f"this Shrinkflow reads version {FORMAT_VERSION}"
        )
    model = build_model(description["architecture"])
    try:
        model, encodings = _load_weights(model, folder / WEIGHTS_FILE, description)
    except (safetensors.SafetensorError, KeyError, ValueError) as exc:
        raise ShrinkflowError(f"checkpoint in {folder} is corrupt: {WEIGHTS_FILE}: {exc}") from exc
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ShrinkflowError(f"checkpoint in {folder} does not match its architecture: {first_line}") from exc
    model.eval()
    return model, description, encodings


def _load_weights(model: nn.Module, path: Path, description: dict[str, Any]) -> tuple[nn.Module, dict]:
    """Load the weights into ``model``; return the model (a new one for int8 storages) and the
    codes of packed weights."""
    storage = description.get("storage", "dense-fp32")
    if storage not in STORAGE_FORMATS:
        raise ValueError(f"unknown storage format {storage!r}: this Shrinkflow reads {', '.join(STORAGE_FORMATS)}")
    if storage == "dense-fp32":
        # strict, and restores tensors that safetensors stored once for several names
        safetensors.torch.load_model(model, str(path), strict=True, device="cpu")
        return model, {}
    if storage in INT8_STORAGES:
        input_shape = description["architecture"]["input_shape"]
        skeleton = int8_skeleton(model, storage, input_shape, description.get("quantize", {}))
        return load_int8_state(skeleton, safetensors.torch.load_file(str(path))), {}
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = safetensors.torch.load_file(str(path))
    encodings = {}
    if storage == "packed":
        state, encodings = _decode_packed(tensors, json.loads(metadata[_PACKED_KEY]))
    else:
        state = _decode_bitmaps(tensors, json.loads(metadata[_SHAPES_KEY]))
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
