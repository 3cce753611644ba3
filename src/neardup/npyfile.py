""".npy files read and written in row chunks with plain file I/O.

Neither side memory-maps the data: a page read or written through a memory map stays in the
process's resident set until it is unmapped, so a pass over a 20 GB file through ``np.load(...,
mmap_mode="r")`` ends with ~20 GB resident. With ``readinto``/``pwrite`` the data passes through
the page cache (which the kernel can drop) and the process holds one chunk at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@dataclass(frozen=True)
class NpyLayout:
    """Where an .npy file's array lies: its shape, dtype and the byte offset of its first element."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    fortran: bool

    @property
    def row_bytes(self) -> int:
        return int(self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)))


def npy_layout(path: str | Path) -> NpyLayout:
    """Parse an .npy header (numpy's own parser, so the same files are accepted and refused as by
    ``np.load``); raises what ``np.load(mmap_mode="r")`` raises. Nothing of the data is read."""
    p = Path(path)
    arr = np.load(p, mmap_mode="r", allow_pickle=False)  # a memmap (empty arrays too): header parsed only
    try:
        fortran = bool(arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous)
        return NpyLayout(p, tuple(int(s) for s in arr.shape), arr.dtype, int(arr.offset), fortran)
    finally:
        mm = getattr(arr, "_mmap", None)
        del arr
        if mm is not None:
            with contextlib.suppress(Exception):
                mm.close()


class NpyRowReader:
    """Rows ``[start, stop)`` of a 2-D .npy as a fresh array of the file's dtype (file reads, no map)."""

    def __init__(self, layout: NpyLayout) -> None:
        self.layout = layout
        self._f = open(layout.path, "rb", buffering=0)
        self._map: np.ndarray | None = None
        if layout.fortran:  # rows are not contiguous on disk: read through a map (rare layout)
            self._map = np.load(layout.path, mmap_mode="r", allow_pickle=False)
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read(self, start: int, stop: int) -> np.ndarray:
        lay = self.layout
        if self._map is not None:
            return np.ascontiguousarray(self._map[start:stop])
        n = max(0, stop - start)
        raw = np.empty(n * lay.row_bytes, dtype=np.uint8)
        view = memoryview(raw)
        pos, got = lay.offset + start * lay.row_bytes, 0
        while got < len(raw):
            k = _pread_into(self._f, view[got:], pos + got)
            if not k:
                raise EOFError(f"{lay.path}: the file ends inside row {start + got // max(lay.row_bytes, 1)}")
            got += k
        return raw.view(lay.dtype).reshape((n,) + lay.shape[1:])

    def chunks(self, step: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, rows)`` for consecutive chunks of ``step`` rows."""
        stop = self.layout.shape[0] if stop is None else stop
        for s in range(start, stop, step):
            yield s, self.read(s, min(s + step, stop))

    def close(self) -> None:
        self._map = None
        self._f.close()

    def __enter__(self) -> NpyRowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NpyRowWriter:
    """A new 2-D C-order .npy of a given shape, written row range by row range at any position.

    The file's full size is reserved when it is created (``posix_fallocate``), so a disk that
    cannot hold it fails at once, not after minutes of writing.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int], dtype: np.dtype | type = np.float32) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * self.shape[1]
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(os.dup(self._fd), "wb") as f:
                np.lib.format.write_array_header_1_0(f, header) if _fits_v1(header) else \
                    np.lib.format.write_array_header_2_0(f, header)
                self.offset = f.tell()
            size = self.offset + self.shape[0] * self.row_bytes
            try:
                os.posix_fallocate(self._fd, 0, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise
                os.ftruncate(self._fd, size)  # a file system without fallocate
        except BaseException:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise

    def write(self, row: int, rows: np.ndarray) -> None:
        """Write ``rows`` (C-contiguous, this file's dtype) as rows ``row, row + 1, ...``."""
        a = np.ascontiguousarray(rows, dtype=self.dtype)
        if a.ndim != 2 or a.shape[1] != self.shape[1] or row < 0 or row + a.shape[0] > self.shape[0]:
            raise ValueError(f"rows of shape {a.shape} do not fit at row {row} of {self.shape}")
        buf = memoryview(a.reshape(-1).view(np.uint8))
        pos, done = self.offset + row * self.row_bytes, 0
        while done < len(buf):
            done += os.pwrite(self._fd, buf[done:done + (1 << 30)], pos + done)

    def write_at(self, rows_at: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[k]`` as row ``rows_at[k]``, one write per run of consecutive destinations."""
        rows_at = np.asarray(rows_at, dtype=np.int64)
        if len(rows_at) == 0:
            return
        if rows_at[-1] - rows_at[0] == len(rows_at) - 1 and (len(rows_at) == 1 or (np.diff(rows_at) == 1).all()):
            self.write(int(rows_at[0]), rows)
            return
        order = np.argsort(rows_at, kind="stable")
        dest = rows_at[order]
        cuts = np.flatnonzero(np.diff(dest) != 1) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(dest)]):
            self.write(int(dest[a]), rows[order[a:b]])

    def finish(self) -> None:
        """Flush the data to disk and close (the caller then renames the file into place)."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1

    def abort(self) -> None:
        """Close and delete the file (an error or Ctrl-C before it was put in place)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            self.path.unlink()


#: Bytes per chunk of a pass that reads a (possibly memory-mapped) array chunk by chunk.
CHUNK_BYTES = 1 << 26


def chunk_rows(row_bytes: int) -> int:
    """Rows of ``row_bytes`` bytes each per chunk of about :data:`CHUNK_BYTES` (at least one)."""
    return max(1, CHUNK_BYTES // max(int(row_bytes), 1))


def drop_mapped_pages(a: np.ndarray) -> bool:
    """Take the pages ``a`` spans, widened to 2 MB boundaries, out of this process's resident set when
    ``a`` is a view of a file memory map (``np.memmap`` or ``np.load(mmap_mode=...)``, modes ``r``,
    ``r+``, ``w+``); True when done.

    The data stays as it is: the next access reads it again from the page cache (or the file). A
    pass that reads a map chunk by chunk calls this after each chunk, so that the map's pages do
    not pile up in its peak RSS (``MADV_DONTNEED``: file pages are only unmapped; written pages of a
    shared map stay dirty in the page cache). The widening also drops what a read fault mapped
    beside the chunk (Linux's fault-around maps cached pages around a fault: 64 KB by default, at
    most 2 MB, aligned), so dropping consecutive chunks leaves none of them resident. Copy-on-write
    maps (mode ``c``, whose written pages only this process holds) and plain arrays are left alone.
    """
    import mmap

    mm, mode, base = None, None, a
    for _ in range(64):  # the chain of views down to the map
        if isinstance(base, np.memmap) and mode is None:
            mode = getattr(base, "mode", None)
        if isinstance(base, mmap.mmap):
            mm = base
            break
        base = getattr(base, "base", None)
        if base is None:
            break
    if mm is None or mode not in ("r", "r+", "w+") or a.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    try:
        start = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
        lo, hi = _byte_bounds(a)
        unit = 1 << 21  # a multiple of the page size; the map starts on a page boundary
        lo = max(0, (lo - start) // unit * unit)
        hi = min(len(mm), -(-(hi - start) // unit) * unit)
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return True
    except (OSError, ValueError, AttributeError):  # a closed map, a platform without madvise
        return False


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    """The first byte of ``a`` and one past its last (any strides)."""
    lo = hi = int(a.ctypes.data)
    for n, st in zip(a.shape, a.strides):
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    return lo, hi + a.itemsize


def _pread_into(f: Any, view: memoryview, pos: int) -> int:
    """Read into ``view`` from byte ``pos`` of ``f``; the number of bytes read (0 at the end)."""
    if hasattr(os, "preadv"):
        return os.preadv(f.fileno(), [view], pos)
    f.seek(pos)  # Windows
    return f.readinto(view) or 0


def _fits_v1(header: dict) -> bool:
    """Whether a header fits numpy's version 1.0 format (a 2-byte header length)."""
    return len(repr(header)) < 65000


__all__ = ["NpyLayout", "NpyRowReader", "NpyRowWriter", "chunk_rows", "drop_mapped_pages", "npy_layout"]
