"""Finding duplicates among image files: scan → embed (→ dedup), as library calls the CLI wraps.

:func:`embed` only embeds images that lack an up-to-date vector for the model (new, or whose
bytes changed since they were embedded), embeds each distinct file content once (byte-identical
files get a copy of the vector), decodes in a thread pool while the model runs on the calling
thread, and commits every ``chunk_size`` images — so Ctrl-C keeps what is done and the next
call resumes.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .catalog import Catalog
from .embed import EmbeddingModel, get_model
from .embed.base import open_upright, to_rgb
from .errors import InputError
from .sources import STATUS_UNREADABLE, ScanReport, Skip, _classify, _record_skips, scan

ProgressFn = Callable[[int, int], None]

_EMBEDDED_FROM = """CREATE TABLE IF NOT EXISTS embedded_from(
    model VARCHAR NOT NULL, image_id VARCHAR NOT NULL, sha256 VARCHAR, PRIMARY KEY (model, image_id))"""


@dataclass
class EmbedReport:
    """What one :func:`embed` call did."""

    model: str
    pending: int = 0          # images that needed a vector when the call started
    embedded: int = 0         # images given a vector by running the model
    copied: int = 0           # images given a vector copied from a byte-identical file
    up_to_date: int = 0       # images that already had a current vector
    failed: list[Skip] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = (f"{self.model}: {self.embedded} embedded, {self.copied} copied from byte-identical files, "
             f"{self.up_to_date} already up to date")
        if self.failed:
            s += f", {len(self.failed)} unreadable"
        if self.embedded:
            s += f" ({self.images_per_second:.1f} img/s)"
        return s


class EmbedInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`embed`; ``report`` says what was committed before it."""

    def __init__(self, report: EmbedReport) -> None:
        super().__init__("interrupted")
        self.report = report


def _ensure_table(cat: Catalog) -> None:
    with cat.transaction() as con:
        con.execute(_EMBEDDED_FROM)


def pending_images(catalog: Catalog, model: str) -> pa.Table:
    """Images (id, path, sha256) that need a vector for ``model``: none yet, or one from older bytes."""
    _ensure_table(catalog)
    cols = catalog.image_columns()
    status = "coalesce(i.status, 'ok') = 'ok'" if "status" in cols else "true"
    return catalog.sql(
        f"""SELECT i.id, i.path, i.sha256 FROM images i
            LEFT JOIN embedding_rows r ON r.model = ? AND r.image_id = i.id
            LEFT JOIN embedded_from e ON e.model = ? AND e.image_id = i.id
            WHERE i.path IS NOT NULL AND {status}
              AND (r.image_id IS NULL OR (e.sha256 IS NOT NULL AND e.sha256 IS DISTINCT FROM i.sha256))
            ORDER BY i.id""",
        [model, model],
    )


def _reusable_vectors(catalog: Catalog, model: str, shas: list[str]) -> dict[str, int]:
    """sha256 → row of a current vector in the model's embedding file, for content already embedded."""
    if not shas or not catalog.sql("SELECT 1 FROM embedding_sets WHERE model = ?", [model]).num_rows:
        return {}
    t = pa.table({"sha": pa.array(sorted(set(shas)), pa.string())})
    with catalog._lock:
        catalog.con.register("_shas", t)
        try:
            rows = catalog.con.execute(
                """SELECT i.sha256, min(r.row) FROM images i
                   JOIN embedding_rows r ON r.model = ? AND r.image_id = i.id
                   LEFT JOIN embedded_from e ON e.model = ? AND e.image_id = i.id
                   WHERE i.sha256 IN (SELECT sha FROM _shas) AND (e.sha256 IS NULL OR e.sha256 = i.sha256)
                   GROUP BY i.sha256""", [model, model]).fetchall()
        finally:
            catalog.con.unregister("_shas")
    return {r[0]: int(r[1]) for r in rows}


def _decode_for(model: EmbeddingModel, path: str, sha256: str | None) -> Any:
    """Read, check the hash, decode upright RGB and prepare for ``model``; a Skip when unusable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Skip(path, "not found")
    except OSError as exc:
        return Skip(path, f"cannot read: {exc.strerror or exc}")
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        return Skip(path, "changed since it was scanned (run `neardup scan` again)")
    try:
        im = open_upright(io.BytesIO(data), model.input_size)  # type: ignore[arg-type]
        return model.prepare(to_rgb(im))
    except (Exception, MemoryError) as exc:
        return Skip(path, _classify(exc))


def _ordered_prefetch(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Sequence[Any], window: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, keeping at most ``window`` decodes in flight (bounded memory)."""
    q: collections.deque[Future[Any]] = collections.deque()
    it = iter(items)
    for x in it:
        q.append(pool.submit(fn, x))
        if len(q) >= window:
            break
    while q:
        fut = q.popleft()
        nxt = next(it, None)
        if nxt is not None:
            q.append(pool.submit(fn, nxt))
        yield fut.result()


def embed(catalog: Catalog, model: str | EmbeddingModel | None = None, *, batch_size: int = 32,
          chunk_size: int = 1024, workers: int | None = None, progress: ProgressFn | None = None) -> EmbedReport:
    """Give every scanned image an up-to-date vector for ``model`` (default: the bundled ``sscd``).

    Resumable and interrupt-safe: vectors are committed every ``chunk_size`` images; Ctrl-C
    raises :class:`EmbedInterrupted` (a KeyboardInterrupt) whose ``report`` counts what was kept.
    Files that cannot be decoded any more are recorded in ``skipped`` and marked ``unreadable``.
    """
    m = model if isinstance(model, EmbeddingModel) else get_model(model)
    m.check_usable()
    if batch_size < 1 or chunk_size < 1:
        raise InputError("batch size and chunk size must be at least 1")
    report = EmbedReport(model=m.name)
    todo = pending_images(catalog, m.name).to_pylist()
    report.pending = len(todo)
    ok = "coalesce(status, 'ok') = 'ok'" if "status" in catalog.image_columns() else "true"
    total_with_path = catalog.sql(f"SELECT count(*) FROM images WHERE path IS NOT NULL AND {ok}").column(0)[0].as_py()
    report.up_to_date = int(total_with_path) - len(todo)
    t0 = time.perf_counter()
    done = 0
    if progress:
        progress(0, len(todo))
    if not todo:
        return report

    # content already embedded (an earlier byte-identical file): copy its vector
    reuse = _reusable_vectors(catalog, m.name, [r["sha256"] for r in todo if r["sha256"]])
    if reuse:
        existing = catalog.load_embeddings(m.name)
        copy_rows = [r for r in todo if r["sha256"] in reuse]
        if copy_rows:
            vecs = np.asarray(existing.vectors[[reuse[r["sha256"]] for r in copy_rows]], dtype=np.float32)
            _commit(catalog, m.name, [r["id"] for r in copy_rows], vecs, [r["sha256"] for r in copy_rows])
            report.copied += len(copy_rows)
            done += len(copy_rows)
            if progress:
                progress(done, len(todo))
        todo = [r for r in todo if r["sha256"] not in reuse]

    # one representative file per distinct content
    reps: dict[str, list[dict[str, Any]]] = {}
    for r in todo:
        reps.setdefault(r["sha256"] or f"id:{r['id']}", []).append(r)
    groups = list(reps.values())
    nworkers = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="neardup-decode")
    try:
        # One continuous stream (decoding never drains between commits). Commit every
        # ``chunk_size`` images, but never spend more than ~10% of the time committing: each
        # commit rewrites the model's vector file, so with many vectors commits get rarer.
        ids: list[str] = []
        shas: list[str | None] = []
        vec_parts: list[np.ndarray] = []
        failed: list[Skip] = []
        failed_ids: list[str] = []
        batch: list[Any] = []
        batch_groups: list[list[dict[str, Any]]] = []
        last_cost = 0.0
        last_at = time.perf_counter()

        def flush_batch() -> int:
            if not batch:
                return 0
            v = m.embed_prepared(batch)
            n = 0
            for g, vec in zip(batch_groups, v):
                for r in g:
                    ids.append(r["id"])
                    shas.append(r["sha256"])
                vec_parts.append(np.repeat(vec[None, :], len(g), axis=0))
                n += len(g)
            batch.clear()
            batch_groups.clear()
            return n

        def commit() -> None:
            nonlocal last_cost, last_at
            c0 = time.perf_counter()
            if ids:
                n_rep = len(vec_parts)
                _commit(catalog, m.name, ids, np.concatenate(vec_parts), shas)
                report.embedded += n_rep
                report.copied += len(ids) - n_rep
            if failed:
                _record_skips(catalog, failed, [])
                catalog.upsert_images(pa.table({"id": pa.array(failed_ids, pa.string()),
                                                "status": pa.array([STATUS_UNREADABLE] * len(failed_ids), pa.string())}))
                report.failed.extend(failed)
            ids.clear(), shas.clear(), vec_parts.clear(), failed.clear(), failed_ids.clear()
            last_at = time.perf_counter()
            last_cost = last_at - c0

        window = max(2 * batch_size, 2 * nworkers)
        decoded = _ordered_prefetch(pool, lambda g: _decode_for(m, g[0]["path"], g[0]["sha256"]), groups, window)
        for g, item in zip(groups, decoded):
            if isinstance(item, Skip):
                failed.append(item)
                failed_ids.extend(r["id"] for r in g)
                done += len(g)
            else:
                batch.append(item)
                batch_groups.append(g)
                if len(batch) < batch_size:
                    continue
                done += flush_batch()
            if len(ids) + len(failed_ids) >= chunk_size and time.perf_counter() - last_at >= 10 * last_cost:
                commit()
            report.seconds = time.perf_counter() - t0
            if progress:
                progress(done, report.pending)
        done += flush_batch()
        commit()
        if progress:
            progress(done, report.pending)
    except KeyboardInterrupt:
        report.interrupted = True
        report.seconds = time.perf_counter() - t0
        pool.shutdown(wait=False, cancel_futures=True)
        raise EmbedInterrupted(report) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report.seconds = time.perf_counter() - t0
    return report


def _commit(catalog: Catalog, model: str, ids: list[str], vectors: np.ndarray, shas: list[str | None]) -> None:
    """Store vectors and the record of which bytes they came from (so a changed file is re-embedded),
    in one transaction: a crash never leaves a vector without its source record."""
    t = pa.table({"model": pa.array([model] * len(ids), pa.string()), "image_id": pa.array(ids, pa.string()),
                  "sha256": pa.array(shas, pa.string())})

    def record_sources(con: Any) -> None:
        with catalog.registered("_ef", t):
            con.execute("INSERT OR REPLACE INTO embedded_from SELECT model, image_id, sha256 FROM _ef")

    catalog.put_embeddings(model, ids, vectors, also=record_sources)


def scan_and_embed(catalog: Catalog, sources: Sequence[str | os.PathLike[str]], model: str | EmbeddingModel | None = None,
                   *, batch_size: int = 32, chunk_size: int = 1024, workers: int | None = None,
                   progress: ProgressFn | None = None) -> tuple[ScanReport, EmbedReport]:
    """:func:`~neardup.sources.scan` and :func:`embed` in one pass: each new or changed file is
    read and decoded once, and the model runs on one chunk while the pool decodes the next.

    Vectors are committed like :func:`embed` does (every ``chunk_size`` images, ≤ ~10% of the
    time); a final :func:`embed` call then handles whatever the pass did not (byte-identical
    copies of already-embedded files, files scanned earlier but never embedded). Ctrl-C raises
    :class:`EmbedInterrupted`; scanned rows and committed vectors are kept.
    """
    m = model if isinstance(model, EmbeddingModel) else get_model(model)
    m.check_usable()
    _ensure_table(catalog)
    fused = EmbedReport(model=m.name)
    acc_ids: list[str] = []
    acc_shas: list[str | None] = []
    acc_vecs: list[np.ndarray] = []
    computed: dict[str, np.ndarray] = {}     # sha -> vector, for the current commit window
    state: dict[str, Any] = {"last_cost": 0.0, "last_at": time.perf_counter()}
    window = {"embedded": 0, "copied": 0}      # counts not committed yet
    t0 = time.perf_counter()

    def commit() -> None:
        if not acc_ids:
            return
        c0 = time.perf_counter()
        _commit(catalog, m.name, list(acc_ids), np.stack(acc_vecs), list(acc_shas))
        fused.embedded += window["embedded"]
        fused.copied += window["copied"]
        window["embedded"] = window["copied"] = 0
        acc_ids.clear(), acc_shas.clear(), acc_vecs.clear(), computed.clear()
        state["has_vectors"] = True
        state["last_at"] = time.perf_counter()
        state["last_cost"] = state["last_at"] - c0

    # Content embedded before can only be in the catalog if the model has vectors there: without
    # any (a first scan) skip the per-chunk look-up until this call commits some.
    state["has_vectors"] = bool(catalog.sql("SELECT 1 FROM embedding_sets WHERE model = ?", [m.name]).num_rows)

    def on_chunk(items: list[tuple[str, Any]]) -> None:
        reuse = _reusable_vectors(catalog, m.name, [info.sha256 for _, info in items]) if state["has_vectors"] else {}
        todo = [(fid, info) for fid, info in items if info.sha256 not in reuse and info.prepared is not None]
        fresh: dict[str, Any] = {}
        for _, info in todo:
            if info.sha256 not in computed:
                fresh.setdefault(info.sha256, info.prepared)
        shas = list(fresh)
        for b in range(0, len(shas), batch_size):
            part = shas[b:b + batch_size]
            vecs = m.embed_prepared([fresh[h] for h in part])
            for h, v in zip(part, vecs):
                computed[h] = v
        window["embedded"] += len(shas)
        for fid, info in todo:
            acc_ids.append(fid)
            acc_shas.append(info.sha256)
            acc_vecs.append(computed[info.sha256])
        window["copied"] += len(todo) - len(shas)

    def on_write() -> None:     # every image in acc_ids has its catalog row now
        if len(acc_ids) >= chunk_size and time.perf_counter() - state["last_at"] >= 10 * state["last_cost"]:
            commit()

    try:
        # decode one model batch ahead (the first ones smaller, so the model starts at once);
        # write the scanned rows every 256 files, not every batch (each write is ~20 ms of SQL)
        sr = scan(catalog, sources, workers=workers, chunk_size=batch_size, progress=progress,
                  prepare=m.prepare, decode_size=m.input_size, on_chunk=on_chunk,
                  write_every=max(256, batch_size), on_write=on_write)
        commit()
    except KeyboardInterrupt:
        fused.interrupted = True
        fused.seconds = time.perf_counter() - t0
        raise EmbedInterrupted(fused) from None
    fused.seconds = time.perf_counter() - t0
    rest = embed(catalog, m, batch_size=batch_size, chunk_size=chunk_size, workers=workers)
    rest.embedded += fused.embedded
    rest.copied += fused.copied
    rest.up_to_date -= fused.embedded + fused.copied
    rest.pending += fused.embedded + fused.copied
    rest.seconds += fused.seconds
    return sr, rest


@dataclass
class FindResult:
    """The three stages of :func:`find`: what was scanned, embedded, and the dedup result."""

    scan: ScanReport
    embed: EmbedReport
    dedup: Any
    model: str
    threshold: float


def find(sources: Sequence[str | os.PathLike[str]], db: str | os.PathLike[str] | Catalog, *, model: str | None = None,
         threshold: float | None = None, mode: str | None = None, dry_run: bool = False, batch_size: int = 32,
         progress: ProgressFn | None = None) -> FindResult:
    """One shot: scan ``sources`` into the catalog ``db``, embed with ``model``, dedup at ``threshold``.

    ``threshold`` and ``mode`` default to the model's calibrated ones. Nothing is deleted or moved:
    dedup only flags suppressed images in the catalog (undo with ``neardup restore``).
    """
    from .dedup import dedup  # the similarity engine (lead's module), imported when needed

    m = get_model(model)
    m.check_usable()
    t = m.default_threshold if threshold is None else float(threshold)
    if not 0 < t <= 1:
        raise InputError(f"threshold {t}: must be in (0, 1]")
    cat = db if isinstance(db, Catalog) else Catalog(db)
    try:
        sr, er = scan_and_embed(cat, sources, m, batch_size=batch_size, progress=progress)
        if not cat.embedding_models():
            raise InputError("no readable images found in " + ", ".join(str(s) for s in sources))
        result = dedup(cat, t, model=m.name, mode=mode, dry_run=dry_run)
        return FindResult(sr, er, result, m.name, t)
    finally:
        if not isinstance(db, Catalog):
            cat.close()
