"""An int8 pre-pass with a proven error bound: which pairs can reach the floor at all.

Stored vectors are canonical (multiples of 2**-11, :mod:`.canonical`), so ``K = 2048 x`` is an
integer vector. Each row gets its own scale ``s = max|K| / L`` (L = 127, or 63 where the CPU's
int8 kernel could saturate) and ``q = round(K / s)`` in [-L, L]; ``x^ = s q / 2048`` and
``e = x - x^``. For any two rows, exactly (real numbers, Cauchy-Schwarz):

    x.y = x^.y^ + x^.e_y + e_x.y^ + e_x.e_y
    |x.y - x^.y^| <= |x^| |e_y| + |e_x| |y^| + |e_x| |e_y|  =: B(x, y)

``x^.y^ = s_x s_y (q_x.q_y) / 2048**2`` and ``q_x.q_y`` is an exact integer (512 * 127 * 127 <
2**31; onnxruntime's ``MatMulInteger`` accumulates in int32). So a pair with
``x^.y^ + B(x, y) < floor`` is surely below the floor and needs no exact value.

The pass only asks whether a pair *can reach the floor*, and a pair that does is close:
``|x - y|^2 = |x|^2 + |y|^2 - 2 x.y <= 2 M - 2 floor =: D^2`` (M the largest |x|^2; D = 0.2 at
0.98). Substituting ``x^ = x - e_x`` and ``y^ = y - e_y`` (exact algebra):

    x.y = x^.y^ + a_x + a_y + (x - y).(e_y - e_x) - e_x.e_y,      a_x := x.e_x (one number a row)

so a pair with x.y >= floor has ``x.y <= x^.y^ + a_x + a_y + D (|e_x| + |e_y|) + |e_x| |e_y|``
(Cauchy-Schwarz on the two last terms). Contrapositive: where the right side is < floor, so is
x.y. Its error term is ~D (|e_x| + |e_y|) instead of ~|e_x| + |e_y|: 5x tighter at 0.98
(:meth:`Quantized.near_bound`; the pass's test). Every other pair (a *candidate*) gets its
exact float32 dot product. Norms and a_x are computed in float64 (|x|^2 exactly: canonical
coordinates are multiples of 2**-11) and rounded up; the float32 arithmetic of the test is
covered by a margin (:data:`MARGIN`) far above its rounding error, so the test never drops a
pair >= floor.

Kernel paths (:func:`kernel_path`), chosen once per process, all with identical results:

* ``int8-vnni`` -- L = 127: CPUs whose int8 dot instruction accumulates u8 x s8 products
  straight into int32 (AVX-512 VNNI, AVX-VNNI, AMX; ARM's dot product instructions);
* ``int8-7bit`` -- L = 63: x86 CPUs without VNNI, whose ``vpmaddubsw`` adds two u8 x s8
  products in saturating int16 (2 * 255 * 63 < 2**15 keeps it exact);
* ``float32`` -- no int8 pre-pass (the plain blocked float32 GEMM).

Either int8 path must also pass a self-test on first use (products at the extremes of the
range, compared with numpy's int64 product), else the next path down is taken. The environment
variable ``NEARDUP_KERNEL`` (``int8-vnni``, ``int8-7bit``, ``float32``) forces a path.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..cpu import KERNEL_ENV, PATHS, VNNI_FLAGS, cpu_flags, planned_kernel_path
from ..cpu import describe_kernel as _describe
from ..jit import nb
from ..npyfile import chunk_rows, drop_mapped_pages
from .ortgemm import int8_gemm

LEVELS = {"int8-vnni": 127, "int8-7bit": 63}
#: Added to every bound: covers the float32 rounding of the classification test (a few ulps of
#: values below 2, i.e. < 1e-6) with a wide safety factor.
MARGIN = 2.0**-16


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def _self_test(level: int) -> bool:
    """The int8 GEMM equals numpy's int64 product at the extremes of the range (saturation shows here)."""
    try:
        rng = np.random.default_rng(12345)
        k = 512
        q_a = rng.integers(-level, level + 1, (64, k))
        q_b = rng.integers(-level, level + 1, (48, k))
        q_a[:8] = level            # all-maximum rows and columns: the largest int16 pair sums
        q_a[8:16] = -level
        q_b[:8] = level
        q_b[8:16] = -level
        q_a[16:24] = np.where(np.arange(k) % 2, level, -level)
        q_b[16:24] = np.where(np.arange(k) % 2, -level, level)
        a_u8 = (q_a + 128).astype(np.uint8)
        b_s8 = np.ascontiguousarray(q_b.T.astype(np.int8))
        got = int8_gemm(a_u8, b_s8, threads=1)
        return bool(np.array_equal(got.astype(np.int64), q_a @ q_b.T))
    except Exception:  # no onnxruntime, an unsupported op, anything: the int8 path is not available
        return False


def _auto_path() -> str:
    vnni = bool(cpu_flags() & VNNI_FLAGS)
    for path in (("int8-vnni", "int8-7bit") if vnni else ("int8-7bit",)):
        if _self_test(LEVELS[path]):
            return path
    return "float32"


@functools.lru_cache(maxsize=None)
def _resolved(forced: str | None) -> str:
    if forced is None:
        return _auto_path()
    if forced not in PATHS:
        raise ValueError(f"{KERNEL_ENV}={forced!r}: use one of {', '.join(PATHS)}")
    if forced != "float32" and not _self_test(LEVELS[forced]):
        raise RuntimeError(f"{KERNEL_ENV}={forced}: the int8 GEMM failed its self-test on this CPU")
    return forced


def kernel_path(forced: str | None = None) -> str:
    """The exact pass's kernel path on this machine: ``int8-vnni``, ``int8-7bit`` or ``float32``.

    ``forced`` (else the environment variable ``NEARDUP_KERNEL``) picks one; results are
    identical on every path, only speed differs.
    """
    return _resolved(forced or os.environ.get(KERNEL_ENV) or None)


def describe_kernel(path: str | None = None) -> str:
    """One line naming the kernel path this process uses (after the self-test) and what it does."""
    return _describe(kernel_path(path))


# ---------------------------------------------------------------------------------------------
# quantisation and the bound
# ---------------------------------------------------------------------------------------------
@nb.njit(cache=True, parallel=True)
def _quantize(X, level, u8, scale, nh, ne, ex, n2):  # type: ignore[no-untyped-def]
    """Codes and norms of each row (float64 arithmetic; see :class:`Quantized`)."""
    n, d = X.shape
    up = 1.0 + 2.0**-30
    for i in nb.prange(n):
        m = 1.0
        for k in range(d):
            m = max(m, abs(np.float64(X[i, k]) * 2048.0))
        s = m / level
        inv = level / m
        h2 = 0.0
        e2 = 0.0
        xe = 0.0
        x2 = 0.0
        for k in range(d):
            K = np.float64(X[i, k]) * 2048.0          # an exact integer (canonical vectors)
            q = min(max(np.rint(K * inv), -level), level)
            u8[i, k] = np.uint8(q + 128.0)
            xh = q * s                                 # 2048 x^
            h2 += xh * xh
            e2 += (K - xh) * (K - xh)
            xe += K * (K - xh)
            x2 += K * K                                # exact: integers below 2**53
        scale[i] = s / 2048.0
        nh[i] = np.sqrt(h2) / 2048.0 * up + 2.0**-40
        ne[i] = np.sqrt(e2) / 2048.0 * up + 2.0**-40
        ex[i] = xe / (2048.0 * 2048.0) + abs(xe) * 2.0**-40 / (2048.0 * 2048.0) + 2.0**-40
        n2[i] = x2 / (2048.0 * 2048.0)


class Quantized:
    """Per-row int8 codes of canonical vectors and what the bound needs.

    ``u8`` = q + 128 (uint8; ``u8 ^ 128`` viewed as int8 is q); ``scale`` = s / 2048 (float32,
    so that x^.y^ = scale_x scale_y (q_x.q_y) up to float32 rounding); ``nh`` = |x^| and
    ``ne`` = |e|, computed in float64 and rounded up (float64 rounding is ~1e-13 relative, the
    round-up 1e-9), so that B(x, y) = nh_x ne_y + ne_x nh_y + ne_x ne_y (:meth:`bound`). ``ex`` =
    x.e (float64, rounded up) and ``n2`` = |x|^2 (float64, exact) serve :meth:`near_bound`. The
    float32 roundings of scale, nh, ne and of the test itself stay below 1e-6, inside
    MARGIN. Any codes q with |q| <= L give a valid bound; rounding to nearest makes it small.
    """

    def __init__(self, X: np.ndarray, level: int) -> None:
        n, d = X.shape
        self.level = int(level)
        self.u8 = np.empty((n, d), np.uint8)
        scale, nh, ne = np.empty(n), np.empty(n), np.empty(n)
        self.ex, self.n2 = np.empty(n), np.empty(n)
        step = chunk_rows(4 * d)  # ~64 MB of float32 at a time: no full-size temporaries
        for a in range(0, n, step):
            b = min(n, a + step)
            _quantize(np.ascontiguousarray(X[a:b], dtype=np.float32), float(level), self.u8[a:b], scale[a:b],
                      nh[a:b], ne[a:b], self.ex[a:b], self.n2[a:b])
            drop_mapped_pages(X[a:b])  # a memory map's pages read here leave the resident set
        self.scale = scale.astype(np.float32)
        self.nh = nh.astype(np.float32)
        self.ne = ne.astype(np.float32)

    def reach(self, floor: float) -> float:
        """D: the largest |x - y| of two of these rows with x.y >= ``floor`` (sqrt(2 max|x|^2 - 2 floor), rounded up)."""
        m = float(self.n2.max()) if len(self.n2) else 1.0
        return float(np.sqrt(max(0.0, 2.0 * m - 2.0 * float(floor)))) * (1.0 + 2.0**-30) + 2.0**-40

    def near_shift(self, floor: float) -> np.ndarray:
        """Per row, a_x + D |e_x| (float64): the row's share of :meth:`near_bound`."""
        return self.ex + self.reach(floor) * self.ne.astype(np.float64)

    def take(self, order: np.ndarray) -> "Quantized":
        """The same codes in another row order."""
        out = Quantized.__new__(Quantized)
        out.level = self.level
        from .locality import take_rows

        out.u8 = take_rows(self.u8, order)
        for name in ("scale", "nh", "ne", "ex", "n2"):
            setattr(out, name, getattr(self, name)[order])
        return out

    def codes(self) -> np.ndarray:
        """q as int8 (rows)."""
        return (self.u8 ^ np.uint8(128)).view(np.int8)

    def bound(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """B(x_i, x_j) for index arrays (float64): the proven |x.y - x^.y^| bound, before MARGIN."""
        nh, ne = self.nh.astype(np.float64), self.ne.astype(np.float64)
        return nh[i] * ne[j] + ne[i] * nh[j] + ne[i] * ne[j]

    def near_bound(self, i: np.ndarray, j: np.ndarray, floor: float) -> np.ndarray:
        """An upper bound on x_i.x_j (float64, before MARGIN) for the pairs with x_i.x_j >= ``floor``:
        x^.y^ + a_x + a_y + D (|e_x| + |e_y|) + |e_x| |e_y| (module docstring)."""
        ne = self.ne.astype(np.float64)
        u = self.near_shift(floor)
        return self.approx(i, j) + u[i] + u[j] + ne[i] * ne[j]

    def approx(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """x^_i . x^_j (float64) from the exact integer dot products of the codes."""
        q = self.codes()
        dots = np.einsum("ij,ij->i", q[i].astype(np.int64), q[j].astype(np.int64))
        return dots * (self.scale[i].astype(np.float64) * self.scale[j])


__all__ = ["KERNEL_ENV", "LEVELS", "MARGIN", "PATHS", "Quantized", "describe_kernel", "kernel_path", "planned_kernel_path"]
