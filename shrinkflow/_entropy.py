"""Entropy coding of integer symbols, within a few percent of their empirical entropy.

A stream of symbols in ``[0, alphabet)`` is coded with constriction's ANS coder (a compiled,
maintained entropy coder: ~1 ms for 266,000 symbols) under the categorical distribution of the
stream's own symbol counts. The counts travel in front of the code, Elias-gamma coded (as they are,
or as differences between neighbours: codes of weights are ordered by value, so their histogram is
smooth), and the decoder rebuilds the very same distribution. On the weight codes of a compressed model this lands
within 1% of the empirical entropy, where a Huffman code loses up to one bit a symbol — most of
it at high sparsity, where the zero symbol is almost certain and Huffman still pays a whole bit.

Pure NumPy and constriction; no torch, no files.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CodingError", "decode_symbols", "encode_symbols", "entropy_bits"]


class CodingError(ValueError):
    """A coded stream that cannot be decoded: truncated, corrupt or of another shape."""


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of a stream, in bits: Σ −c·log2(c/n) over the counts c of its symbols.
    No code that knows nothing else about the stream is shorter (up to rounding)."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64).ravel())
    counts = counts[counts > 0].astype(np.float64)
    total = counts.sum()
    return float(-(counts * np.log2(counts / total)).sum()) if total else 0.0


def encode_symbols(symbols: np.ndarray, alphabet: int) -> bytes:
    """Code ``symbols`` (integers in ``[0, alphabet)``): the count table, then the ANS words."""
    import constriction

    symbols = np.asarray(symbols, dtype=np.int32).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet})")
    counts = np.bincount(symbols, minlength=alphabet)
    table = _table_encode(counts)
    if np.count_nonzero(counts) <= 1:
        return table  # one symbol repeated (or none): the counts say everything
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _model(counts))
    return table + coder.get_compressed().astype("<u4").tobytes()


def decode_symbols(blob: bytes, count: int, alphabet: int) -> np.ndarray:
    """Inverse of ``encode_symbols``: the ``count`` symbols coded in ``blob``."""
    import constriction

    counts, used = _table_decode(blob, alphabet)
    if counts.min(initial=0) < 0 or counts.sum() != count:
        raise CodingError(f"the count table holds {counts.sum()} symbols, expected {count}")
    words = blob[used:]
    if np.count_nonzero(counts) <= 1:
        if words:
            raise CodingError("unexpected bytes after a single-symbol table")
        return np.full(count, int(np.argmax(counts)) if count else 0, dtype=np.int64)
    if len(words) % 4:
        raise CodingError("the code is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    try:
        symbols = coder.decode(_model(counts), count)
    except Exception as exc:  # constriction raises its own errors on an exhausted stream
        raise CodingError(f"the code ended early: {exc}") from None
    if not coder.is_empty() or np.bincount(symbols, minlength=alphabet).tolist() != counts.tolist():
        raise CodingError("the decoded symbols do not match their count table")
    return symbols.astype(np.int64)


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)


def _table_encode(counts: np.ndarray) -> bytes:
    """The symbol counts: a byte saying how, then Elias-gamma codes of either the counts themselves
    (a few symbols in a wide alphabet: empty counts cost a bit each) or the zigzagged differences
    of neighbouring counts (a smooth histogram) — whichever is shorter."""
    steps = np.diff(counts, prepend=0)
    by_difference = _gamma_encode(np.where(steps >= 0, 2 * steps, -2 * steps - 1) + 1)  # 0, -1, 1, -2...
    by_count = _gamma_encode(counts + 1)
    return b"\x01" + by_difference if len(by_difference) < len(by_count) else b"\x00" + by_count


def _table_decode(blob: bytes, alphabet: int) -> tuple[np.ndarray, int]:
    if not blob or blob[0] not in (0, 1):
        raise CodingError("the count table is missing or of an unknown kind")
    values, used = _gamma_decode(blob[1:], alphabet)
    if blob[0] == 0:
        return values - 1, used + 1
    zigzag = values - 1
    return np.cumsum(np.where(zigzag % 2 == 0, zigzag // 2, -(zigzag + 1) // 2)), used + 1


def _gamma_encode(values: np.ndarray) -> bytes:
    """Elias-gamma code of positive integers: ⌊log2 v⌋ zeros, then v's binary digits. A count
    table of mostly small or empty counts costs a few bits an entry instead of four bytes."""
    values = np.asarray(values, dtype=np.int64)
    digits = np.zeros(len(values), dtype=np.int64)  # binary digits of each value
    while (rest := values >> digits).any():
        digits += rest > 0
    ends = np.cumsum(2 * digits - 1)  # each code: digits - 1 zeros, then the digits
    first_digit = ends - digits  # where each value's leading 1 goes
    owner = np.repeat(np.arange(len(values)), digits)  # one entry a digit, most significant first
    place = np.arange(int(digits.sum())) - np.repeat(np.cumsum(digits) - digits, digits)
    bits = np.zeros(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
    bits[first_digit[owner] + place] = (values[owner] >> (digits[owner] - 1 - place)) & 1
    return np.packbits(bits).tobytes()


def _gamma_decode(blob: bytes, count: int) -> tuple[np.ndarray, int]:
    """(``count`` Elias-gamma values read from the front of ``blob``, bytes they used)."""
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))
    values, position = np.empty(count, dtype=np.int64), 0
    ones = np.flatnonzero(bits)
    for i in range(count):
        start = np.searchsorted(ones, position)
        if start == len(ones):
            raise CodingError("the count table is truncated")
        length = int(ones[start]) - position  # leading zeros
        end = position + 2 * length + 1
        if end > len(bits) or length > 40:
            raise CodingError("the count table is truncated or corrupt")
        values[i] = int("".join(map(str, bits[position + length : end])), 2)
        position = end
    return values, -(-position // 8)
