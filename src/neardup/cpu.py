"""Which kernel path the exact similarity pass takes on this CPU, named without loading any library.

The paths (see :mod:`neardup.similarity.quantized`): ``int8-vnni`` (8-bit codes where the CPU's
int8 dot product accumulates in int32), ``int8-7bit`` (7-bit codes, saturation-safe without
VNNI), ``float32`` (the plain GEMM). ``NEARDUP_KERNEL`` forces one. This module imports only the
standard library, so ``neardup models`` can print the path at once; the pass itself also runs a
self-test of the int8 product on first use (:func:`neardup.similarity.quantized.kernel_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

KERNEL_ENV = "NEARDUP_KERNEL"
PATHS = ("int8-vnni", "int8-7bit", "float32")
#: /proc/cpuinfo flags of an int8 dot product that accumulates u8 x s8 products in int32 (no int16 step)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, ARM ``Features``); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def forced_path() -> str | None:
    """The path ``NEARDUP_KERNEL`` names, or None (an unknown name raises ValueError)."""
    forced = os.environ.get(KERNEL_ENV) or None
    if forced is not None and forced not in PATHS:
        raise ValueError(f"{KERNEL_ENV}={forced!r}: use one of {', '.join(PATHS)}")
    return forced


def planned_kernel_path() -> str:
    """The path the pass will take, from the environment and the CPU's flags alone (the int8
    self-test at first use may still fall back to the next path down)."""
    forced = forced_path()
    if forced is not None:
        return forced
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "float32"
    return "int8-vnni" if cpu_flags() & VNNI_FLAGS else "int8-7bit"


def describe_kernel(path: str, *, checked: bool = True) -> str:
    """One line naming a kernel path and what it does; ``checked=False`` adds that the int8
    self-test runs at first use."""
    why = {"int8-vnni": "8-bit codes, then exact float32 where a pair can reach the floor",
           "int8-7bit": "7-bit codes (no VNNI), then exact float32 where a pair can reach the floor",
           "float32": "float32 GEMM over every pair"}[path]
    note = "" if checked or path == "float32" else "; self-tested at first use"
    return f"similarity kernel: {path} ({why}{note}). Same results on every path; {KERNEL_ENV} forces one."


__all__ = ["KERNEL_ENV", "PATHS", "VNNI_FLAGS", "cpu_flags", "describe_kernel", "forced_path", "planned_kernel_path"]
