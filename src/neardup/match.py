"""Match new images against a catalog without changing it: best match and every match >= t.

For each query vector: its best catalog match with the similarity (always, even below t) and
every catalog image with similarity >= t, ranked by similarity (ties: smaller id first). Exact:
the float32 product of the queries against every catalog vector, computed by T threads that each
take catalog tiles in turn (each catalog row read once), multiply a query block by the tile into
a cache-sized buffer and scan it at once with one compiled pass that keeps each row's best match
and collects the hits >= t (64 similarities compared at once into a bit mask, as the dedup pass
does). ``index="ann"`` (:mod:`neardup.similarity.ann_match`) compares each query only with the
catalog partitions nearest to it and reports its recall. Nothing is written to the catalog; it
is opened read-only.

A *leakage* check is the same with both sides from one catalog: the rows of one split (a
``split`` column in the metadata) against the rows of another.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from .catalog import Catalog
from .errors import InputError
from .similarity.incremental import RowSource
from .similarity.matchscan import match_matrix

ProgressFn = Callable[[int, int], None]
FORMATS = ("csv", "parquet", "json")
INDEXES = ("exact", "ann", "auto")
AUTO_ANN_MIN_CATALOG = 300_000  # --index auto: ANN only above this many catalog images (exact match runs at the GEMM's speed) ...
AUTO_ANN_MIN_QUERIES = 2_000    # ... and this many queries (below, partitioning the catalog costs more than it saves)


def choose_index(index: str, n_catalog: int, n_queries: int) -> str:
    """``exact`` or ``ann`` for ``index`` (``auto``: ANN for a large catalog and many queries)."""
    if index not in INDEXES:
        raise InputError(f"index {index!r}: use one of {', '.join(INDEXES)}")
    if index == "auto":
        return "ann" if n_catalog > AUTO_ANN_MIN_CATALOG and n_queries >= AUTO_ANN_MIN_QUERIES else "exact"
    return index


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
          model: str | None = None, visible_only: bool = False, index: str = "exact", nprobe: int = 8,
          progress: ProgressFn | None = None) -> MatchResult:
    """Match query vectors (any norm; normalised here) against a catalog's images; writes nothing."""
    from .dedup import check_threshold
    from .ingest import validate_and_normalise

    t = check_threshold(threshold)
    choose_index(index, 0, 0)  # a bad name is refused before any work
    qids = np.asarray(list(query_ids), dtype=object)
    Q = _canonical(validate_and_normalise(qids, np.asarray(queries), "queries"))
    name, cids, rows = _catalog_side(catalog, model, visible_only=visible_only)
    if rows.X.shape[1] != Q.shape[1]:
        raise InputError(f"queries have dimension {Q.shape[1]}; model {name!r} in the catalog has {rows.X.shape[1]}")
    return _run(Q, qids, rows, cids, t, dict(model=name, mode="match"), progress, index, nprobe)


def id_order_keys(ids: np.ndarray) -> np.ndarray:
    """Position of each id in id order (a compiled string sort: fast for a million ids)."""
    import pyarrow.compute as pc

    order = np.asarray(pc.sort_indices(pa.array(ids.tolist(), pa.string())).to_numpy(), dtype=np.int64)
    keys = np.empty(len(ids), dtype=np.int64)
    keys[order] = np.arange(len(ids))
    return keys


def _run(Q: np.ndarray, qids: np.ndarray, rows: RowSource, cids: np.ndarray, t: float, info: dict[str, Any],
         progress: ProgressFn | None, index: str = "exact", nprobe: int = 8) -> MatchResult:
    t0 = time.perf_counter()
    keys = id_order_keys(cids)
    kind = choose_index(index, rows.n, len(Q))
    extra: dict[str, Any] = {}
    if kind == "ann":
        from .similarity.ann_match import ann_match_matrix

        am = ann_match_matrix(Q, rows, keys, t, nprobe=nprobe, progress=progress)
        q, c, s, best_c, best_v = am.q, am.c, am.s, am.best_c, am.best_v
        extra = dict(recall=am.recall, ann=am.meta)
    else:
        q, c, s, best_c, best_v = match_matrix(Q, rows, keys, t, progress=progress)
    table = rank_matches(qids, cids, q, c, s, best_c, best_v)
    with_match = int(len(np.unique(q)))
    summary = dict(info, threshold=t, queries=len(qids), catalog=len(cids), with_match=with_match,
                   without_match=len(qids) - with_match, matches=int(len(q)), rows=table.num_rows,
                   index=kind, exact=kind == "exact", **extra, seconds=round(time.perf_counter() - t0, 3))
    return MatchResult(table, summary)


def leakage(catalog: Catalog, threshold: float, *, split_column: str = "split", splits: Sequence[str] | None = None,
            model: str | None = None, index: str = "exact", nprobe: int = 8,
            progress: ProgressFn | None = None) -> MatchResult:
    """Images of one split with a near-duplicate in another: the first split's rows matched against the second's.

    ``splits`` names (query split, reference split); by default the column must hold exactly two
    values, and the smaller split is matched against the larger.
    """
    from .dedup import check_threshold

    t = check_threshold(threshold)
    choose_index(index, 0, 0)
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
    return _run(Q, qids, crows, cids, t, info, progress, index, nprobe)


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


__all__ = ["INDEXES", "MatchResult", "choose_index", "leakage", "match", "match_matrix", "rank_matches",
           "write_matches"]
