"""Hold numpy's OpenBLAS to one thread while our own threads each run their own GEMM tiles.

A scan that follows a multi-threaded GEMM block re-reads the whole block from memory and waits
at two barriers per block (the GEMM's, then the scan's). Running T worker threads that each do
GEMM-then-scan on a cache-sized tile needs a single-threaded BLAS in each worker; OpenBLAS has
one process-wide thread count, set here through its C API (the library numpy loaded, found in
``/proc/self/maps``, as threadpoolctl does). Where no OpenBLAS is found (another BLAS, another
OS), :func:`single_threaded_blas` yields ``False`` and the caller keeps its threaded path.
"""

from __future__ import annotations

import ctypes
import re
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_lock = threading.Lock()
_api: tuple[Any, Any] | None | bool = None  # (get, set), or False when not found
_holders = 0
_saved = 0


def _openblas() -> tuple[Any, Any] | None:
    """(get_num_threads, set_num_threads) of the OpenBLAS numpy loaded, or None."""
    global _api
    if _api is None:
        _api = False
        import numpy  # noqa: F401  (loads the BLAS)

        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
                libs = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", fh.read())))
        except OSError:
            libs = []
        for path in libs:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                                   ("openblas_", "")):
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    _api = (get, set_)
                    break
            if _api:
                break
    return _api or None


@contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """While inside, numpy's OpenBLAS runs each call in the calling thread; yields whether it could.

    Process-wide (OpenBLAS has one setting): nested and concurrent holders share it, and the last
    one out restores the thread count found on entry.
    """
    global _holders, _saved
    api = _openblas()
    if api is None:
        yield False
        return
    get, set_ = api
    with _lock:
        if _holders == 0:
            _saved = int(get())
            set_(1)
        _holders += 1
    try:
        yield True
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                set_(_saved)


__all__ = ["single_threaded_blas"]
