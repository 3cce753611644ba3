"""Memory-mapped vectors (issue 14, memory): the exact pass reads a map chunk by chunk and drops each
chunk's pages from the resident set, with the same answer as the brute-force reference.

Checked against independent references: numpy's fancy indexing for the row order, a float64 numpy
transcription of the quantisation formula for the codes, tests/reference.py for the pass; the
resident pages of the map are read from /proc/self/smaps (Linux).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import GRID, grid_ints
from test_int8 import check_against_reference

from neardup import npyfile
from neardup.npyfile import drop_mapped_pages
from neardup.similarity.canonical import canonical_vectors
from neardup.similarity.exact import exact_forest
from neardup.similarity.locality import take_rows
from neardup.similarity.quantized import Quantized
from neardup.synthetic import seed_shaped

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps")


def mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total = 0
    text = Path("/proc/self/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        if block.splitlines()[0].endswith(str(path)):
            total += int(re.search(r"^Rss:\s+(\d+)", block, re.M).group(1))
    return total


def saved(tmp_path: Path, X: np.ndarray, name: str = "v.npy") -> Path:
    p = tmp_path / name
    np.save(p, X)
    return p


@linux
def test_dropping_a_maps_pages_keeps_its_data(tmp_path):
    X = np.random.default_rng(0).random((6000, 256), dtype=np.float32)  # 6 MB
    p = saved(tmp_path, X)
    M = np.load(p, mmap_mode="r")
    assert float(np.asarray(M, dtype=np.float64).sum()) == float(X.astype(np.float64).sum())
    assert mapped_kb(p) > 5000
    assert drop_mapped_pages(np.asarray(M)[5000:5500])  # a plain view of the map: found through .base
    assert 3000 < mapped_kb(p) < 5800  # widened to 2 MB boundaries: the file's last 2 MB or so
    assert drop_mapped_pages(M[::2])  # any strides: the span it covers
    assert mapped_kb(p) <= 8
    assert np.array_equal(np.asarray(M), X)  # read again from the page cache


@linux
def test_a_shared_maps_written_pages_survive_a_drop(tmp_path):
    p = saved(tmp_path, np.zeros((2000, 128), np.float32))
    W = np.load(p, mmap_mode="r+")
    W[1500, 7] = 3.5
    assert drop_mapped_pages(W)
    assert W[1500, 7] == 3.5
    W.flush()
    del W
    assert np.load(p)[1500, 7] == 3.5


def test_only_read_or_shared_maps_are_dropped(tmp_path):
    p = saved(tmp_path, np.ones((100, 16), np.float32))
    C = np.load(p, mmap_mode="c")  # copy-on-write: written pages exist only in this process
    C[3, 3] = 7.0
    assert not drop_mapped_pages(C)
    assert C[3, 3] == 7.0
    assert not drop_mapped_pages(np.ones((100, 16), np.float32))
    assert not drop_mapped_pages(np.load(p, mmap_mode="r")[:0])


@pytest.mark.parametrize("chunk", [1 << 12, 1 << 26])
def test_take_rows_from_a_map_is_numpys_gather(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(npyfile, "CHUNK_BYTES", chunk)  # 4 KB: 8 rows a chunk, many chunks
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1001, 128)).astype(np.float32)
    p = saved(tmp_path, X)
    order = rng.permutation(len(X))
    M = np.load(p, mmap_mode="r")
    got = take_rows(M, order)
    assert np.array_equal(got, X[order])
    assert got.flags.c_contiguous and not isinstance(got, np.memmap)
    assert np.array_equal(take_rows(X, order), X[order])  # in memory: the gather
    bad = order.copy()
    bad[5] = bad[6]
    with pytest.raises(ValueError, match="permutation"):
        take_rows(M, bad)


def reference_codes(X: np.ndarray, level: int) -> np.ndarray:
    """The quantisation formula of neardup.similarity.quantized in float64 numpy: q + 128 as uint8."""
    K = grid_ints(X).astype(np.float64)
    m = np.maximum(np.abs(K).max(axis=1), 1.0)
    q = np.clip(np.rint(K * (level / m)[:, None]), -level, level)
    return (q + 128).astype(np.uint8)


@pytest.mark.parametrize("level", [127, 63])
def test_codes_of_a_map_in_chunks(tmp_path, monkeypatch, level):
    monkeypatch.setattr(npyfile, "CHUNK_BYTES", 64 * 4 * 37)  # 37 rows a chunk
    X = canonical_vectors(seed_shaped(500, 64, seed=3).vectors)
    M = np.load(saved(tmp_path, X), mmap_mode="r")
    Q = Quantized(M, level)
    assert np.array_equal(Q.u8, reference_codes(X, level))
    assert np.array_equal(Q.n2, (grid_ints(X).astype(np.float64) ** 2).sum(axis=1) / GRID**2)


@linux
@pytest.mark.parametrize("path", ["int8-vnni", "int8-7bit"])
def test_the_pass_over_a_map_gives_the_reference_answer_and_leaves_no_pages(tmp_path, monkeypatch, path):
    monkeypatch.setattr(npyfile, "CHUNK_BYTES", 64 * 4 * 101)  # 101 rows a chunk: many chunks
    X = canonical_vectors(seed_shaped(1300, 64, seed=4).vectors)
    p = saved(tmp_path, X)
    M = np.load(p, mmap_mode="r")
    f = exact_forest(M, 0.95, kernel=path, block_rows=256, col_chunk=384)
    check_against_reference(X, 0.95, f, [0.95, 0.97, 0.98, 0.99, 0.995])
    assert mapped_kb(p) <= 8  # the map was read and let go: the pass holds its ordered copy only
