"""The scan's 64-wide compare-to-mask intrinsic against numpy, at unaligned offsets and with NaN."""

import numba as nb
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from neardup.similarity.bitmask import ge_mask64, lowest_bit


@nb.njit(cache=False)
def _masks(S, threshold):
    out = np.empty((S.shape[0], S.shape[1] - 63), np.uint64)
    for r in range(S.shape[0]):
        for c in range(S.shape[1] - 63):
            out[r, c] = ge_mask64(S, r, c, threshold)
    return out


@nb.njit(cache=False)
def _set_bits(mask):
    out = []
    while mask:
        out.append(lowest_bit(mask))
        mask &= mask - np.uint64(1)
    return out


def _numpy_mask(row: np.ndarray, threshold: np.float32) -> int:
    return sum(1 << int(k) for k in np.flatnonzero(row >= threshold))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cols=st.integers(64, 200), threshold=st.floats(-1.0, 1.0, width=32))
def test_mask_matches_numpy_at_every_offset(seed: int, cols: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    S = rng.uniform(-1, 1, (3, cols)).astype(np.float32)
    S[rng.random(S.shape) < 0.05] = np.float32(threshold)  # ties count as >=
    S[rng.random(S.shape) < 0.02] = np.nan  # NaN is never >= anything
    t = np.float32(threshold)
    got = _masks(S, t)
    for r in range(S.shape[0]):
        for c in range(cols - 63):
            assert int(got[r, c]) == _numpy_mask(S[r, c:c + 64], t)


def test_set_bits_in_order() -> None:
    for bits in ([0], [63], [0, 1, 2, 63], [5, 17, 40], list(range(64))):
        mask = np.uint64(sum(1 << b for b in bits))
        assert list(_set_bits(mask)) == bits


def test_mask_on_a_row_view_of_a_larger_block() -> None:
    # the scan hands over blocks that are views into one reused buffer
    buf = np.arange(4 * 130, dtype=np.float32) / 520
    S = buf[: 3 * 130].reshape(3, 130)
    got = _masks(S, np.float32(0.5))
    for r in range(3):
        for c in (0, 1, 33, 66):
            assert int(got[r, c]) == _numpy_mask(S[r, c:c + 64], np.float32(0.5))
