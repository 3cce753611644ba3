"""Arrow <-> numpy for the run pipeline, without pyarrow's pandas shim.

pyarrow (26) imports pandas the first time it converts between Python/numpy values and Arrow
(``pa.array``, ``to_numpy``, a Python scalar in a compute call) when pandas is installed: 0.2 s
of a ``neardup dedup`` that never uses pandas. These build and read the arrays from their
buffers instead: numbers and booleans are the numpy array's own bytes (no copy where possible),
strings are UTF-8 bytes plus offsets. tests/test_arrow_numpy.py checks them against pyarrow's
own conversions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _bits(flags: np.ndarray) -> pa.Buffer:
    """Booleans packed as an Arrow bitmap (least significant bit first)."""
    return pa.py_buffer(np.packbits(np.ascontiguousarray(flags, dtype=bool), bitorder="little"))


def _valid(chunk: pa.Array) -> np.ndarray:
    """Per row of ``chunk``: True where it holds a value."""
    n, buf = len(chunk), chunk.buffers()[0]
    if buf is None or chunk.null_count == 0:
        return np.ones(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    return bits[chunk.offset:chunk.offset + n].astype(bool)


def from_numpy(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """A 1-d numpy array of booleans or numbers as an Arrow array of the same type (``null``: True
    where the row has no value)."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-d array, got shape {values.shape}")
    n = len(values)
    nulls = int(np.count_nonzero(null)) if null is not None else 0
    validity = _bits(~np.asarray(null, dtype=bool)) if nulls else None
    if values.dtype == bool:
        return pa.Array.from_buffers(pa.bool_(), n, [validity, _bits(values)], null_count=nulls)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"from_numpy takes booleans or numbers, not {values.dtype}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), n, [validity, pa.py_buffer(values)],
                                 null_count=nulls)


def from_strings(values: Sequence[str | None]) -> pa.Array:
    """Python strings (None: null) as an Arrow string array (``large_string`` past 2 GiB of text)."""
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    n = len(encoded)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
    large = bool(offsets[-1] > np.iinfo(np.int32).max)
    null = np.fromiter((v is None for v in values), dtype=bool, count=n)
    nulls = int(null.sum())
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), n,
                                 [_bits(~null) if nulls else None,
                                  pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                  pa.py_buffer(b"".join(encoded))], null_count=nulls)


def to_float64(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric or boolean column as float64, NaN where null."""
    col = pc.cast(column, pa.float64())
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out = np.empty(len(col), dtype=np.float64)
    pos = 0
    for ch in chunks:
        n = len(ch)
        if n:
            data = np.frombuffer(ch.buffers()[1], dtype=np.float64, count=ch.offset + n)[ch.offset:]
            out[pos:pos + n] = np.where(_valid(ch), data, np.nan) if ch.null_count else data
        pos += n
    return out
