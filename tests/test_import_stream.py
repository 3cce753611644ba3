"""The streamed import (issue 14): vectors read, checked, normalised and written chunk by chunk.

Chunks are made tiny here (a few rows) so that every boundary case is hit with small inputs, and
every stored store is compared with an independent plain-numpy reference (normalise the whole
array at once, round to the 1/2048 grid, update/append by id in a dict), never with the code's
own output. Refusals leave the catalog and its sidecar folder exactly as they were.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import canonical_f64
from test_bad_input import snapshot  # every table's columns and rows, and the sidecar's files

import neardup.catalog.embeddings as store_mod
import neardup.ingest as ingest
from neardup import Catalog
from neardup.cli import main
from neardup.errors import InputError
from neardup.ingest import import_embeddings

DIM = 6


def unit_reference(X: np.ndarray) -> np.ndarray:
    """What an import stores for rows ``X`` (as read from the file): plain numpy, whole array.

    Rows whose norm is 1 to 1e-6, or that are on the 1/2048 grid with a norm within sqrt(d)/4096
    of 1 (a re-import of stored vectors), are kept; the others are divided by their norm (in
    float64, then float32). Then every coordinate is rounded to a multiple of 1/2048.
    """
    x = np.asarray(X, dtype=np.float64)
    norm = np.sqrt((x * x).sum(axis=1))
    on_grid = (np.rint(x * 2048) == x * 2048).all(axis=1)
    keep = (np.abs(norm - 1) <= 1e-6) | (on_grid & (np.abs(norm - 1) <= np.sqrt(x.shape[1]) / 4096))
    unit = np.where(keep[:, None], x, x / norm[:, None]).astype(np.float32)
    return canonical_f64(unit)


def store_reference(imports: list[tuple[list[str], np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """The store after a sequence of imports: ids in row order and their vectors (float64)."""
    order: list[str] = []
    vec: dict[str, np.ndarray] = {}
    for ids, X in imports:
        for i, v in zip(ids, unit_reference(X)):
            if i not in vec:
                order.append(i)
            vec[i] = v
    return order, np.array([vec[i] for i in order])


def stored(db: Path, model: str = "precomputed") -> tuple[list[str], np.ndarray]:
    with Catalog(db, read_only=True) as cat:
        e = cat.load_embeddings(model)
        return [str(i) for i in e.ids], np.asarray(e.vectors, dtype=np.float64)


@pytest.fixture
def chunk(monkeypatch) -> Any:
    """Set the rows per chunk of both the reader and the store's copy of the old version."""
    def set_rows(k: int) -> None:
        monkeypatch.setattr(ingest, "_chunk_rows", lambda dim: k)
        monkeypatch.setattr(store_mod, "_chunk_rows", lambda dim: k)
    return set_rows


def raw_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Rows of every kind the import treats differently: any norm, exactly unit, already canonical."""
    X = (rng.standard_normal((n, dim)) * rng.uniform(0.1, 30, (n, 1))).astype(np.float32)
    k = n // 5
    X[:k] /= np.linalg.norm(X[:k], axis=1, keepdims=True)                          # unit to float32 rounding
    X[k:2 * k] = (np.rint(X[k:2 * k] / np.linalg.norm(X[k:2 * k], axis=1, keepdims=True) * 2048) / 2048)
    return X


def write_npy(d: Path, name: str, ids: list[str], X: np.ndarray) -> tuple[Path, Path]:
    np.save(d / f"{name}.npy", X)
    (d / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return d / f"{name}.npy", d / f"{name}.txt"


@pytest.mark.parametrize("rows_per_chunk", [1, 3, 7, 50, 1000])
def test_npy_import_at_any_chunk_size_stores_the_reference(tmp_path: Path, chunk, rows_per_chunk: int) -> None:
    chunk(rows_per_chunk)
    rng = np.random.default_rng(rows_per_chunk)
    ids = [f"r{k:03d}" for k in range(50)]
    X = raw_vectors(rng, 50)
    v, i = write_npy(tmp_path, "v", ids, X)
    with Catalog(tmp_path / "c.duckdb") as cat:
        rep = import_embeddings(cat, v, i)
    assert (rep.added, rep.updated, rep.dim) == (50, 0, DIM)
    got_ids, got = stored(tmp_path / "c.duckdb")
    ref_ids, ref = store_reference([(ids, X)])
    assert got_ids == ref_ids
    np.testing.assert_array_equal(got, ref)


def test_float64_and_integer_npy_are_read_as_float32_first(tmp_path: Path, chunk) -> None:
    chunk(4)
    rng = np.random.default_rng(1)
    X64 = rng.standard_normal((11, DIM)) * 3
    Xi = rng.integers(-5, 6, (11, DIM)).astype(np.int16)
    Xi[:, 0] = 7                                                            # no all-zero row
    for name, X in (("f64", X64), ("i16", Xi)):
        ids = [f"{name}{k}" for k in range(11)]
        v, i = write_npy(tmp_path, name, ids, X)
        with Catalog(tmp_path / f"{name}.duckdb") as cat:
            import_embeddings(cat, v, i)
        np.testing.assert_array_equal(stored(tmp_path / f"{name}.duckdb")[1], unit_reference(X.astype(np.float32)))


def test_reimport_updates_some_rows_in_place_and_appends_the_rest(tmp_path: Path, chunk) -> None:
    chunk(3)
    rng = np.random.default_rng(7)
    ids1 = [f"a{k:02d}" for k in range(40)]
    X1 = raw_vectors(rng, 40)
    # 12 existing ids in a shuffled order (scattered rows, some runs), 9 new ones between them
    upd = [ids1[k] for k in rng.permutation([0, 1, 2, 3, 17, 18, 25, 31, 38, 39, 9, 5])]
    new = [f"b{k}" for k in range(9)]
    ids2 = list(rng.permutation(upd + new))
    X2 = raw_vectors(rng, len(ids2))
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, *write_npy(tmp_path, "v1", ids1, X1))
        rep = import_embeddings(cat, *write_npy(tmp_path, "v2", ids2, X2))
    assert (rep.added, rep.updated) == (9, 12)
    got_ids, got = stored(db)
    ref_ids, ref = store_reference([(ids1, X1), (ids2, X2)])
    assert got_ids == ref_ids
    np.testing.assert_array_equal(got, ref)
    with Catalog(db, read_only=True) as cat:
        assert cat.scalar("SELECT count(*) FROM images") == 49
        assert sorted(p.name for p in (cat.sidecar / "embeddings").iterdir()) == ["precomputed.v2.npy"]


@pytest.mark.parametrize("dim", [DIM, 512])
def test_reimporting_the_stored_vectors_changes_nothing(tmp_path: Path, chunk, dim: int) -> None:
    """Stored vectors are canonical: importing them again keeps them bit for bit (the grid rule;
    at 512 dimensions a canonical row's norm is up to ~5e-3 from 1, so dividing would move it)."""
    chunk(5)
    rng = np.random.default_rng(3)
    ids = [f"s{k}" for k in range(23)]
    db = tmp_path / "c.duckdb"
    X = raw_vectors(rng, 23, dim)
    if dim == 512:  # on the grid, norm 1.004: kept as it is (dividing would move 0.977 by 8 grid steps)
        X[22] = 0
        X[22, 0], X[22, 1:100] = 2000 / 2048, 48 / 2048
    with Catalog(db) as cat:
        import_embeddings(cat, *write_npy(tmp_path, "v", ids, X))
    before = stored(db)[1]
    np.testing.assert_array_equal(before, unit_reference(X))
    with Catalog(db) as cat:
        rep = import_embeddings(cat, *write_npy(tmp_path, "w", ids, before.astype(np.float32)))
    assert (rep.added, rep.updated) == (0, 23)
    np.testing.assert_array_equal(stored(db)[1], before)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n1=st.integers(1, 30), n2=st.integers(1, 30), overlap=st.integers(0, 30), k=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_any_sequence_of_two_imports_matches_the_reference(tmp_path_factory, monkeypatch, n1: int, n2: int,
                                                           overlap: int, k: int, seed: int) -> None:
    monkeypatch.setattr(ingest, "_chunk_rows", lambda dim: k)
    monkeypatch.setattr(store_mod, "_chunk_rows", lambda dim: k)
    rng = np.random.default_rng(seed)
    d = tmp_path_factory.mktemp("h")
    ids1 = [f"x{j}" for j in range(n1)]
    both = list(rng.choice(ids1, min(overlap, n1, n2), replace=False))
    ids2 = list(rng.permutation(both + [f"y{j}" for j in range(n2 - len(both))]))
    X1, X2 = raw_vectors(rng, n1), raw_vectors(rng, n2)
    with Catalog(d / "c.duckdb") as cat:
        import_embeddings(cat, X1, ids1)                      # in-memory array
        import_embeddings(cat, *write_npy(d, "v2", ids2, X2))  # file
    got_ids, got = stored(d / "c.duckdb")
    ref_ids, ref = store_reference([(ids1, X1), (ids2, X2)])
    assert got_ids == ref_ids
    np.testing.assert_array_equal(got, ref)


# --- Parquet: read in record batches ----------------------------------------------------------------


def write_parquet(path: Path, ids: list[Any], X: np.ndarray, *, fixed: bool, row_group: int) -> Path:
    flat = pa.array(X.reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(flat, X.shape[1]) if fixed else \
        pa.ListArray.from_arrays(pa.array(np.arange(0, X.size + 1, X.shape[1], dtype=np.int32)), flat)
    pq.write_table(pa.table({"id": ids, "emb": col}), path, row_group_size=row_group)
    return path


@pytest.mark.parametrize("fixed", [False, True], ids=["list", "fixed_size_list"])
@pytest.mark.parametrize("row_group,rows_per_chunk", [(10, 7), (3, 8), (100, 4)])
def test_parquet_in_batches_stores_the_reference(tmp_path: Path, chunk, fixed: bool, row_group: int,
                                                 rows_per_chunk: int) -> None:
    chunk(rows_per_chunk)
    rng = np.random.default_rng(row_group)
    ids = [f"p{k}" for k in range(37)]
    X = raw_vectors(rng, 37)
    p = write_parquet(tmp_path / "v.parquet", ids, X, fixed=fixed, row_group=row_group)
    with Catalog(tmp_path / "c.duckdb") as cat:
        rep = import_embeddings(cat, p)
    assert (rep.added, rep.dim) == (37, DIM)
    got_ids, got = stored(tmp_path / "c.duckdb")
    assert got_ids == ids
    np.testing.assert_array_equal(got, unit_reference(X))


def test_parquet_integer_ids_are_their_decimal_strings(tmp_path: Path, chunk) -> None:
    chunk(4)
    X = raw_vectors(np.random.default_rng(0), 9)
    p = write_parquet(tmp_path / "v.parquet", list(range(100, 109)), X, fixed=False, row_group=4)
    with Catalog(tmp_path / "c.duckdb") as cat:
        import_embeddings(cat, p)
    assert stored(tmp_path / "c.duckdb")[0] == [str(k) for k in range(100, 109)]


# --- refusals: one line naming the row, and nothing written -----------------------------------------


def refused(db: Path, call: Any, *needles: str) -> None:
    before = snapshot(db)
    with pytest.raises(InputError) as exc:
        with Catalog(db) as cat:
            call(cat)
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert snapshot(db) == before


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A catalog with 20 vectors already imported (so a refusal must keep v1 and add no file)."""
    rng = np.random.default_rng(11)
    with Catalog(tmp_path / "c.duckdb") as cat:
        import_embeddings(cat, raw_vectors(rng, 20), [f"a{k}" for k in range(20)])
    return tmp_path / "c.duckdb"


@pytest.mark.parametrize("bad,needle", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (0.0, "all zeros")])
def test_a_bad_row_in_the_last_chunk_writes_nothing(tmp_path: Path, db: Path, chunk, bad: float, needle: str) -> None:
    chunk(4)
    ids = [f"a{k}" for k in range(10)] + [f"n{k}" for k in range(15)]   # updates and new rows
    X = raw_vectors(np.random.default_rng(5), 25)
    if bad == 0.0:
        X[24] = 0
    else:
        X[24, 3] = bad
    v, i = write_npy(tmp_path, "bad", ids, X)
    refused(db, lambda cat: import_embeddings(cat, v, i), f"{v} row 24", "(id 'n14')", needle)


def test_duplicate_ids_in_different_chunks_are_refused_before_any_vector_is_read(tmp_path: Path, db: Path,
                                                                                  chunk, monkeypatch) -> None:
    chunk(4)
    ids = [f"n{k}" for k in range(30)]
    ids[27] = ids[2]                                                   # chunk 0 and chunk 6
    ids[29] = ids[28] = "zz"                                          # a larger duplicate id: the smallest is named
    v, i = write_npy(tmp_path, "dup", ids, raw_vectors(np.random.default_rng(2), 30))
    monkeypatch.setattr(ingest, "normalise_rows", lambda *a: pytest.fail("vectors read before the ids were checked"))
    refused(db, lambda cat: import_embeddings(cat, v, i), f"{v} rows 2 and 27: duplicate id 'n2'")


def test_parquet_refusals_name_the_row_in_the_file(tmp_path: Path, db: Path, chunk) -> None:
    chunk(4)
    X = raw_vectors(np.random.default_rng(4), 22)
    ids = [f"q{k}" for k in range(22)]
    # a vector of the wrong length in the last batch
    lists = [list(map(float, r)) for r in X]
    lists[21] = lists[21][:-1]
    p = tmp_path / "len.parquet"
    pq.write_table(pa.table({"id": ids, "emb": pa.array(lists, pa.list_(pa.float32()))}), p, row_group_size=5)
    refused(db, lambda cat: import_embeddings(cat, p), f"{p} row 21", f"{DIM - 1} values, row 0 has {DIM}")
    # a null vector in a later batch
    lists = [list(map(float, r)) for r in X]
    lists[13] = None
    p = tmp_path / "null.parquet"
    pq.write_table(pa.table({"id": ids, "emb": pa.array(lists, pa.list_(pa.float32()))}), p, row_group_size=5)
    refused(db, lambda cat: import_embeddings(cat, p), f"{p} row 13", "'emb' is null")
    # a null value inside a vector
    lists = [list(map(float, r)) for r in X]
    lists[17][2] = None
    p = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"id": ids, "emb": pa.array(lists, pa.list_(pa.float32()))}), p, row_group_size=5)
    refused(db, lambda cat: import_embeddings(cat, p), f"{p} row 17", "(id 'q17')", "NaN")
    # duplicate ids in different row groups
    p = write_parquet(tmp_path / "dup.parquet", ids[:20] + ["q3", "q21"], X, fixed=True, row_group=5)
    refused(db, lambda cat: import_embeddings(cat, p), f"{p} rows 3 and 20: duplicate id 'q3'")


def test_a_dimension_clash_is_refused_before_the_vectors_are_read(tmp_path: Path, db: Path, monkeypatch) -> None:
    v, i = write_npy(tmp_path, "wide", ["a1", "b1"], np.ones((2, DIM + 2), np.float32))
    monkeypatch.setattr(ingest, "normalise_rows", lambda *a: pytest.fail("vectors read before the dimension check"))
    refused(db, lambda cat: import_embeddings(cat, v, i), f"has dimension {DIM}", f"these vectors have {DIM + 2}")


def at_chunk(monkeypatch, k: int, action: Any) -> None:
    """Run ``action()`` (an interrupt) as the import normalises its ``k``-th chunk, then go on."""
    calls = []
    real = ingest.normalise_rows

    def normalise(*a: Any) -> np.ndarray:
        calls.append(1)
        if len(calls) == k:
            action()
        return real(*a)

    monkeypatch.setattr(ingest, "normalise_rows", normalise)


def test_an_interrupt_while_streaming_deletes_the_unfinished_file(tmp_path: Path, db: Path, chunk, monkeypatch) -> None:
    chunk(3)

    def interrupt() -> None:
        raise KeyboardInterrupt

    at_chunk(monkeypatch, 3, interrupt)
    v, i = write_npy(tmp_path, "v", [f"n{k}" for k in range(20)], raw_vectors(np.random.default_rng(8), 20))
    before = snapshot(db)
    with Catalog(db) as cat, pytest.raises(KeyboardInterrupt):
        import_embeddings(cat, v, i)
    assert snapshot(db) == before                       # no .tmp left, v1 in force


def test_ctrl_c_while_streaming_exits_130_and_says_nothing_changed(tmp_path: Path, db: Path, chunk, monkeypatch,
                                                                    capsys) -> None:
    chunk(3)
    at_chunk(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    v, i = write_npy(tmp_path, "v", [f"n{k}" for k in range(20)], raw_vectors(np.random.default_rng(8), 20))
    before = snapshot(db)
    with pytest.raises(SystemExit) as exc:
        main(["import-embeddings", str(v), "--ids", str(i), "--db", str(db)])
    assert exc.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["interrupted: nothing was changed (the catalog is as it was before this command)"]
    assert snapshot(db) == before


def test_put_embeddings_in_chunks_matches_the_reference_and_names_a_bad_row(tmp_path: Path, chunk) -> None:
    """The library's in-memory put (embed's path) goes through the same stream."""
    chunk(4)
    rng = np.random.default_rng(9)
    X = raw_vectors(rng, 13)
    U = (X / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    ids = [f"e{k}" for k in range(13)]
    with Catalog(tmp_path / "c.duckdb") as cat:
        assert cat.put_embeddings("m", ids, U) == (13, 0)
        assert cat.put_embeddings("m", ids[5:] + ["e99"], U[:9]) == (1, 8)
    W = U.copy()
    W[10] *= 2                                                         # not unit: refused, by its row
    refused(tmp_path / "c.duckdb", lambda cat: cat.put_embeddings("m", ids, W), "row 10: norm")
    ref_ids, ref = store_reference([(ids, U), (ids[5:] + ["e99"], U[:9])])
    got_ids, got = stored(tmp_path / "c.duckdb", "m")
    assert got_ids == ref_ids
    np.testing.assert_array_equal(got, ref)


def test_progress_counts_rows_chunk_by_chunk(tmp_path: Path, chunk) -> None:
    chunk(4)
    seen: list[tuple[int, int]] = []
    v, i = write_npy(tmp_path, "v", [f"r{k}" for k in range(10)], raw_vectors(np.random.default_rng(0), 10))
    with Catalog(tmp_path / "c.duckdb") as cat:
        import_embeddings(cat, v, i, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 10), (4, 10), (8, 10), (10, 10)]


@pytest.mark.parametrize("where", ["reserve", "write"])
def test_a_full_disk_is_one_line_and_writes_nothing(tmp_path: Path, db: Path, chunk, monkeypatch, where: str) -> None:
    """No space for the new version file: at once when its size is reserved, or while writing (a file
    system without fallocate); one line, the unfinished file deleted, the catalog unchanged."""
    import errno

    import neardup.npyfile as npyfile
    from neardup.errors import CatalogError

    chunk(4)

    def no_space(*a: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "reserve":
        monkeypatch.setattr(npyfile.os, "posix_fallocate", no_space)
    else:
        real_pwrite = os.pwrite
        calls = []

        def pwrite(fd: int, data: Any, pos: int) -> int:
            calls.append(1)
            if len(calls) == 3:
                no_space()
            return real_pwrite(fd, data, pos)

        monkeypatch.setattr(npyfile.os, "pwrite", pwrite)
    v, i = write_npy(tmp_path, "v", [f"n{k}" for k in range(20)], raw_vectors(np.random.default_rng(1), 20))
    before = snapshot(db)
    with pytest.raises(CatalogError) as exc:
        with Catalog(db) as cat:
            import_embeddings(cat, v, i)
    monkeypatch.undo()
    msg = str(exc.value)
    assert "\n" not in msg and "precomputed.v2.npy.tmp" in msg and "not enough free disk space" in msg
    assert "catalog is unchanged" in msg
    assert snapshot(db) == before
