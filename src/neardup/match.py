"""Match new images against a catalog without changing it: best match and every match >= t.

For each query vector: its best catalog match with the similarity (always, even below t) and
every catalog image with similarity >= t, ranked by similarity (ties: smaller id first). Exact:
one float32 GEMM of the queries against the catalog in blocks (each catalog block read once),
with a compiled scan per block that keeps each row's best match and collects the hits >= t
(64 similarities compared at once into a bit mask, as the dedup pass does). Nothing is written
to the catalog; it is opened read-only.

A *leakage* check is the same with both sides from one catalog: the rows of one split (a
``split`` column in the metadata) against the rows of another.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numba as nb
import numpy as np
import pyarrow as pa

from .catalog import Catalog
from .errors import InputError
from .similarity.bitmask import lowest_bit, row_mask
from .similarity.forest import ceil_f32
from .similarity.incremental import RowSource

ProgressFn = Callable[[int, int], None]
FORMATS = ("csv", "parquet", "json")


@nb.njit(cache=True, parallel=True)
def _scan_match(S, col0, t32, key, best_v, best_k, best_c, out_q, out_c, out_s, out_n, row0, row_lo, row_hi):
    """Per row of one block: update the best match (ties: smaller key) and collect hits >= t.

    One 64-wide compare per chunk against min(best so far, t): the set bits are the hits and the
    candidates for a new best (after a row's first chunks, almost never one below t).
    Thread t owns rows [row_lo[t], row_hi[t]); it stops early when its buffer might overflow and
    leaves row_lo[t] at the first row it did not do (the caller empties buffers and calls again).
    """
    ncols = S.shape[1]
    cap = out_q.shape[1]
    for t in nb.prange(row_lo.shape[0]):
        cnt = out_n[t]
        r = row_lo[t]
        while r < row_hi[t]:
            if cnt + ncols > cap:
                break
            q = row0 + r
            bv = best_v[q]
            bk = best_k[q]
            bc = best_c[q]
            for c_lo in range(0, ncols, 64):
                lim = bv if bv < t32 else t32
                mask = row_mask(S, r, c_lo, ncols, lim)
                while mask:
                    c = c_lo + lowest_bit(mask)
                    mask &= mask - np.uint64(1)
                    v = S[r, c]
                    if v >= bv:
                        k = key[col0 + c]
                        if v > bv or k < bk:
                            bv = v
                            bk = k
                            bc = col0 + c
                    if v >= t32:
                        out_q[t, cnt] = q
                        out_c[t, cnt] = col0 + c
                        out_s[t, cnt] = v
                        cnt += 1
            best_v[q] = bv
            best_k[q] = bk
            best_c[q] = bc
            r += 1
        row_lo[t] = r
        out_n[t] = cnt


def match_matrix(queries: np.ndarray, catalog: RowSource, keys: np.ndarray, threshold: float, *,
                 query_block: int = 2048, col_chunk: int = 8192,
                 progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact matching of unit-norm ``queries`` against the rows of ``catalog``.

    ``keys[j]`` orders tied catalog rows (smaller first). Returns ``(q, c, s)`` for every pair
    with similarity >= threshold, and per query its best catalog row and similarity.
    """
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    nq, n = len(Q), catalog.n
    t32 = ceil_f32(threshold)  # exact float32 similarities: s >= t iff s >= t32
    best_v = np.full(nq, -np.inf, dtype=np.float32)
    best_k = np.full(nq, np.iinfo(np.int64).max, dtype=np.int64)
    best_c = np.full(nq, -1, dtype=np.int64)
    T = max(1, int(nb.get_num_threads()))
    cap = 32 * col_chunk + 4096  # rows with thousands of hits (a dense group) need room
    out_q, out_c = np.empty((T, cap), np.int64), np.empty((T, cap), np.int64)
    out_s = np.empty((T, cap), np.float32)
    hits: list[tuple[np.ndarray, ...]] = []
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    buf = np.empty(min(query_block, max(nq, 1)) * min(col_chunk, max(n, 1)), dtype=np.float32)
    for c0 in range(0, n, col_chunk):
        c1 = min(n, c0 + col_chunk)
        Xc = catalog.take(c0, c1)
        for a in range(0, nq, query_block):
            b = min(nq, a + query_block)
            S = buf[: (b - a) * (c1 - c0)].reshape(b - a, c1 - c0)
            np.matmul(Q[a:b], Xc.T, out=S)
            bounds = np.linspace(0, b - a, T + 1).astype(np.int64)
            row_lo, row_hi = bounds[:-1].copy(), bounds[1:].copy()
            while True:
                out_n = np.zeros(T, np.int64)
                _scan_match(S, c0, t32, keys, best_v, best_k, best_c, out_q, out_c, out_s, out_n, a, row_lo, row_hi)
                for t in range(T):
                    k = int(out_n[t])
                    if k:
                        hits.append((out_q[t, :k].copy(), out_c[t, :k].copy(), out_s[t, :k].copy()))
                if np.all(row_lo >= row_hi):
                    break
        if progress is not None:
            progress(c1, n)
    if hits:
        q, c, s = (np.concatenate([h[i] for h in hits]) for i in range(3))
    else:
        q, c, s = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return q, c, s, best_c, best_v


@dataclass
class MatchResult:
    """One row per (query, match): the best match of every query, and every match >= t."""

    table: pa.Table
    summary: dict[str, Any] = field(default_factory=dict)


def rank_matches(query_ids: np.ndarray, catalog_ids: np.ndarray, q: np.ndarray, c: np.ndarray, s: np.ndarray,
                 best_c: np.ndarray, best_v: np.ndarray) -> pa.Table:
    """The result table: per query its hits by similarity (desc, then match id), or its best match alone."""
    none = np.ones(len(query_ids), dtype=bool)
    none[q] = False
    lonely = np.flatnonzero(none & (best_c >= 0))
    q = np.r_[q, lonely]
    c = np.r_[c, best_c[lonely]]
    s = np.r_[s, best_v[lonely]].astype(np.float32)
    # ties in similarity go by match id: rank the ids of the matched rows only (not the whole catalog)
    uc, inv = np.unique(c, return_inverse=True)
    id_rank = id_order_keys(catalog_ids[uc])
    order = np.lexsort((id_rank[inv], -s.astype(np.float64), q))
    q, c, s = q[order], c[order], s[order]
    start = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(start, np.arange(len(q)), 0)) if len(q) else np.zeros(0, np.int64)
    rank = np.arange(len(q)) - first + 1
    return pa.table({"query_id": pa.array(query_ids[q].tolist(), pa.string()),
                     "match_id": pa.array(catalog_ids[c].tolist(), pa.string()),
                     "similarity": pa.array(s.astype(np.float64)),
                     "rank": pa.array(rank.astype(np.int64))})


def _canonical(X: np.ndarray) -> np.ndarray:
    """Round queries the way the catalog stores vectors, so every similarity is an exact dot product."""
    from .similarity.canonical import canonical_vectors

    try:
        return canonical_vectors(X)
    except ValueError as exc:
        raise InputError(f"queries: {exc}") from None


def _catalog_side(cat: Catalog, model: str | None, ids: Sequence[str] | None = None,
                  visible_only: bool = False) -> tuple[str, np.ndarray, RowSource]:
    """``(model, ids, rows)`` of the catalog images to match against (vanished files left out)."""
    name = model or cat.default_model()
    if visible_only:
        vis = {r[0] for r in cat.con.execute("SELECT id FROM visible").fetchall()}
        ids = [i for i in (ids if ids is not None else vis) if i in vis]
    gone = cat.unavailable_ids()
    name, version, vectors = cat.embedding_vectors(name)
    rows, scope_ids = cat.embedding_rows(name, ids, sorted(gone) if gone else None)
    if len(rows) == len(vectors) and (len(rows) == 0 or rows[-1] == len(rows) - 1):
        return name, scope_ids, RowSource(vectors)
    return name, scope_ids, RowSource(vectors, rows)


def match(catalog: Catalog, queries: np.ndarray, query_ids: Sequence[str], threshold: float, *,
          model: str | None = None, visible_only: bool = False, progress: ProgressFn | None = None) -> MatchResult:
    """Match query vectors (any norm; normalised here) against a catalog's images; writes nothing."""
    from .dedup import check_threshold
    from .ingest import validate_and_normalise

    t = check_threshold(threshold)
    qids = np.asarray(list(query_ids), dtype=object)
    Q = _canonical(validate_and_normalise(qids, np.asarray(queries), "queries"))
    name, cids, rows = _catalog_side(catalog, model, visible_only=visible_only)
    if rows.X.shape[1] != Q.shape[1]:
        raise InputError(f"queries have dimension {Q.shape[1]}; model {name!r} in the catalog has {rows.X.shape[1]}")
    return _run(Q, qids, rows, cids, t, dict(model=name, mode="match"), progress)


def id_order_keys(ids: np.ndarray) -> np.ndarray:
    """Position of each id in id order (a compiled string sort: fast for a million ids)."""
    import pyarrow.compute as pc

    order = np.asarray(pc.sort_indices(pa.array(ids.tolist(), pa.string())).to_numpy(), dtype=np.int64)
    keys = np.empty(len(ids), dtype=np.int64)
    keys[order] = np.arange(len(ids))
    return keys


def _run(Q: np.ndarray, qids: np.ndarray, rows: RowSource, cids: np.ndarray, t: float, info: dict[str, Any],
         progress: ProgressFn | None) -> MatchResult:
    t0 = time.perf_counter()
    keys = id_order_keys(cids)
    q, c, s, best_c, best_v = match_matrix(Q, rows, keys, t, progress=progress)
    table = rank_matches(qids, cids, q, c, s, best_c, best_v)
    with_match = int(len(np.unique(q)))
    summary = dict(info, threshold=t, queries=len(qids), catalog=len(cids), with_match=with_match,
                   without_match=len(qids) - with_match, matches=int(len(q)), rows=table.num_rows, exact=True,
                   seconds=round(time.perf_counter() - t0, 3))
    return MatchResult(table, summary)


def leakage(catalog: Catalog, threshold: float, *, split_column: str = "split", splits: Sequence[str] | None = None,
            model: str | None = None, progress: ProgressFn | None = None) -> MatchResult:
    """Images of one split with a near-duplicate in another: the first split's rows matched against the second's.

    ``splits`` names (query split, reference split); by default the column must hold exactly two
    values, and the smaller split is matched against the larger.
    """
    from .dedup import check_threshold

    t = check_threshold(threshold)
    cols = catalog.image_columns()
    if split_column not in cols:
        raise InputError(f"{catalog.path}: no {split_column!r} column in the image metadata "
                         f"(import one with --meta; columns: {', '.join(cols)})")
    name = model or catalog.default_model()
    rows = catalog.sql(f'SELECT i.id, CAST(i."{split_column}" AS VARCHAR) AS s FROM images i '
                       "SEMI JOIN embedding_rows r ON r.image_id = i.id AND r.model = ? "
                       f'WHERE i."{split_column}" IS NOT NULL', [name]).to_pylist()
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r["s"], []).append(r["id"])
    if splits is None:
        if len(by) != 2:
            raise InputError(f"column {split_column!r} holds {len(by)} splits ({', '.join(sorted(by)) or 'none'}); "
                             "name two with --splits QUERY,REFERENCE")
        splits = sorted(by, key=lambda k: (len(by[k]), k))
    else:
        splits = list(splits)
        if len(splits) != 2 or splits[0] == splits[1]:
            raise InputError("--splits takes two different split names: QUERY,REFERENCE")
        for sp in splits:
            if sp not in by:
                raise InputError(f"no image has {split_column} = {sp!r} (splits: {', '.join(sorted(by))})")
    name, qids, qrows = _catalog_side(catalog, name, by[splits[0]])
    _, cids, crows = _catalog_side(catalog, name, by[splits[1]])
    Q = qrows.take(0, qrows.n)
    info = dict(model=name, mode="leakage", split_column=split_column, query_split=splits[0], reference_split=splits[1])
    return _run(Q, qids, crows, cids, t, info, progress)


def write_matches(table: pa.Table, out: str | Path, fmt: str | None = None) -> str:
    """Write the match table as CSV, Parquet or JSON (from ``fmt`` or the suffix); returns the format."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
    if fmt not in FORMATS:
        raise InputError(f"output format {fmt!r}: use csv, parquet or json")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name")
    if not out.parent.exists():
        raise InputError(f"{out.parent}: no such folder")
    tmp = out.with_name(out.name + ".tmp")
    try:
        if fmt == "csv":
            pacsv.write_csv(table, tmp)
        elif fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            tmp.write_text(json.dumps(table.to_pylist()) + "\n", encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return fmt


__all__ = ["MatchResult", "leakage", "match", "match_matrix", "rank_matches", "write_matches"]
