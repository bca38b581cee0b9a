"""How one tensor is stored: the smallest of several formats, measured, and what its content is worth.

Every tensor of a checkpoint is encoded in each format that applies to it and stored in the
smallest (Deep Compression stores pruned, shared weights as relative offsets and codebook indices,
both Huffman-coded; here an ANS coder takes positions and codes to within ~1% of their entropy):

- ``raw``: the tensor's bytes as they are (any dtype);
- ``bitmap`` (a float tensor with zeros): 1 bit an element marking the non-zeros, then the
  non-zero values;
- ``coded`` (a float tensor with zeros): the same bitmap entropy-coded (~H(p) bits an element at
  density p: 0.08 bits at 99% sparsity instead of 1), then the non-zero values;
- ``packed`` (quantized weights): k-bit codes packed into bytes — of the kept weights only, after
  a bitmap, when the tensor was pruned — then float32 scales or codebook;
- ``coded`` (quantized weights; int8 tensors): one symbol a weight — 0 for a pruned weight, code + 1
  for a kept one — entropy-coded, then the scales or codebook.

Each format decodes to the identical tensor (and codes). ``StoredTensor.entropy_bits`` is the
information bound of the content: the empirical entropy of the symbols (positions and codes)
plus the float values and scales it must keep, 32 bits each.

Pure NumPy/PyTorch; no files, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shrinkflow._encoding import Encoded, decode, pack_codes, unpack_codes
from shrinkflow._entropy import decode_symbols, encode_symbols, entropy_bits

__all__ = ["StoredTensor", "load_tensor", "store_tensor"]

_DTYPES = {
    "f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16,
    "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8, "u8": torch.uint8,
    "bool": torch.bool,
}  # fmt: skip
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_SMALL_INTEGERS = (torch.int8, torch.uint8)  # entropy-coded as symbols of a 256-letter alphabet


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as stored: its format, what decoding needs (``header``), its bytes, its bound."""

    name: str
    format: str
    header: dict[str, Any]
    payload: bytes
    entropy_bits: float

    @property
    def entropy_bytes(self) -> float:
        return self.entropy_bits / 8


def store_tensor(name: str, tensor: torch.Tensor, encoded: Encoded | None = None) -> StoredTensor:
    """``tensor`` (or its quantized codes ``encoded``) in the smallest format that applies."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype not in _NAMES:
        raise ValueError(f"tensor {name} has dtype {tensor.dtype}, which checkpoints do not store")
    header = {"d": _NAMES[tensor.dtype], "s": list(tensor.shape)}
    if encoded is not None:
        candidates, bound = _quantized_candidates(encoded), _quantized_bound(encoded)
        header.update({"q": encoded.scheme, "k": encoded.bits, "m": int(encoded.kept is not None)})
    elif tensor.is_floating_point():
        candidates, bound = _float_candidates(tensor), _float_bound(tensor)
    elif tensor.dtype in _SMALL_INTEGERS and tensor.numel():
        symbols = _small_integer_symbols(tensor)
        candidates = {"raw": [_raw(tensor)], "coded": [encode_symbols(symbols, 256)]}
        bound = entropy_bits(symbols)
    else:
        candidates, bound = {"raw": [_raw(tensor)]}, 8.0 * tensor.numel() * tensor.element_size()
    fmt, sections = min(candidates.items(), key=lambda item: sum(map(len, item[1])))
    header.update({"f": fmt, "l": [len(s) for s in sections[:-1]]})  # the last section's length is implied
    return StoredTensor(name, fmt, header, b"".join(sections), bound)


def load_tensor(header: dict[str, Any], payload: bytes) -> tuple[torch.Tensor, Encoded | None]:
    """Inverse of ``store_tensor``: the tensor, and the codes of a quantized one. Raises
    ``ValueError`` (``CodingError``) on bytes that do not decode to the header's tensor."""
    if header["d"] not in _DTYPES:
        raise ValueError(f"unknown dtype {str(header['d'])[:20]!r}: one of {', '.join(_DTYPES)}")
    dtype, shape = _DTYPES[header["d"]], tuple(header["s"])
    sections = _split(payload, header["l"])
    count = int(np.prod(shape, dtype=np.int64))
    if "q" in header:
        encoded = _load_quantized(header, sections, shape, count)
        return decode(encoded).to(dtype).reshape(shape), encoded
    fmt = header["f"]
    if fmt == "raw":
        return _from_raw(sections[0], dtype, shape), None
    if fmt == "coded" and dtype in _SMALL_INTEGERS:
        symbols = decode_symbols(sections[0], count, 256)
        offset = 128 if dtype == torch.int8 else 0
        return torch.from_numpy((symbols - offset).astype(np.int64)).to(dtype).reshape(shape), None
    kept = _load_positions(fmt, sections[0], count)
    values = _from_raw(sections[1], dtype, (int(kept.sum()),))
    flat = torch.zeros(count, dtype=dtype)
    flat[torch.from_numpy(kept)] = values
    return flat.reshape(shape), None


# --- float tensors ---------------------------------------------------------------------------


def _float_candidates(tensor: torch.Tensor) -> dict[str, list[bytes]]:
    candidates = {"raw": [_raw(tensor)]}
    kept = (tensor.flatten() != 0).numpy()
    if not kept.all():
        values = _raw(tensor.flatten()[torch.from_numpy(kept)])
        candidates["bitmap"] = [np.packbits(kept).tobytes(), values]
        candidates["coded"] = [encode_symbols(kept.astype(np.int64), 2), values]
    return candidates


def _float_bound(tensor: torch.Tensor) -> float:
    kept = (tensor.flatten() != 0).numpy()
    return entropy_bits(kept.astype(np.int64)) + 8.0 * tensor.element_size() * int(kept.sum())


def _load_positions(fmt: str, section: bytes, count: int) -> np.ndarray:
    if fmt == "bitmap":
        if len(section) != -(-count // 8):
            raise ValueError(f"a bitmap of {count} elements takes {-(-count // 8)} bytes, found {len(section)}")
        return np.unpackbits(np.frombuffer(section, dtype=np.uint8), count=count).astype(bool)
    if fmt == "coded":
        return decode_symbols(section, count, 2).astype(bool)
    raise ValueError(f"unknown tensor format {fmt!r}")


# --- quantized weights -----------------------------------------------------------------------


def _quantized_candidates(encoded: Encoded) -> dict[str, list[bytes]]:
    scales = _raw(encoded.scales.float())
    symbols = encoded.symbols().numpy()
    alphabet = encoded.alphabet + (encoded.kept is not None)
    if encoded.kept is None:
        packed = [pack_codes(encoded.codes, encoded.bits).numpy().tobytes()]
    else:
        kept = encoded.kept.numpy()
        packed = [np.packbits(kept).tobytes(), pack_codes(encoded.codes[encoded.kept], encoded.bits).numpy().tobytes()]
    return {"packed": [*packed, scales], "coded": [encode_symbols(symbols, alphabet), scales]}


def _quantized_bound(encoded: Encoded) -> float:
    return entropy_bits(encoded.symbols().numpy()) + 32.0 * encoded.scales.numel()


def _load_quantized(header: dict[str, Any], sections: list[bytes], shape: tuple[int, ...], count: int) -> Encoded:
    scheme, bits, masked = header["q"], int(header["k"]), bool(header["m"])
    shape = (1, count) if len(shape) == 1 else shape  # a vector (bias) has one scale
    if scheme not in ("symmetric", "binary", "codebook") or not 1 <= bits <= 8:
        raise ValueError(f"unknown quantization {scheme!r} with {bits} bits")
    scales = _from_raw(sections[-1], torch.float32, (-1,))
    expected_scales = 2**bits if scheme == "codebook" else shape[0]
    if scales.numel() != expected_scales:
        raise ValueError(f"{scheme} weights need {expected_scales} scales, found {scales.numel()}")
    kept = None
    if header["f"] == "coded":
        symbols = torch.from_numpy(decode_symbols(sections[0], count, 2**bits + masked))
        if masked:
            kept = symbols > 0
            codes = torch.where(kept, symbols - 1, 0)
        else:
            codes = symbols
    elif header["f"] == "packed":
        if masked:
            kept = torch.from_numpy(_load_positions("bitmap", sections[0], count))
            codes = torch.zeros(count, dtype=torch.int64)
            codes[kept] = _unpack(sections[1], bits, int(kept.sum()))
        else:
            codes = _unpack(sections[0], bits, count)
    else:
        raise ValueError(f"unknown tensor format {header['f']!r}")
    return Encoded(scheme, bits, shape, codes, scales, kept)


def _unpack(section: bytes, bits: int, count: int) -> torch.Tensor:
    if len(section) != -(-count * bits // 8):
        raise ValueError(f"{count} codes of {bits} bits take {-(-count * bits // 8)} bytes, found {len(section)}")
    return unpack_codes(torch.frombuffer(bytearray(section), dtype=torch.uint8), bits, count)


# --- bytes -----------------------------------------------------------------------------------


def _raw(tensor: torch.Tensor) -> bytes:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    array = tensor.numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _from_raw(section: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    size = torch.empty(0, dtype=dtype).element_size()
    if len(section) % size or (-1 not in shape and len(section) != size * int(np.prod(shape, dtype=np.int64))):
        raise ValueError(f"{len(section)} bytes do not hold a {dtype} tensor of shape {list(shape)}")
    if not section:
        return torch.empty(shape, dtype=dtype) if -1 not in shape else torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(section), dtype=dtype).reshape(shape).clone()


def _split(payload: bytes, lengths: list[int]) -> list[bytes]:
    if sum(lengths) > len(payload) or any(length < 0 for length in lengths):
        raise ValueError("the tensor's sections are longer than its bytes")
    sections, start = [], 0
    for length in lengths:
        sections.append(payload[start : start + length])
        start += length
    return [*sections, payload[start:]]


def _small_integer_symbols(tensor: torch.Tensor) -> np.ndarray:
    return tensor.flatten().to(torch.int64).numpy() + (128 if tensor.dtype == torch.int8 else 0)
