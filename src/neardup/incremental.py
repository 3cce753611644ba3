"""Incremental similarity passes: keep the forest of the whole catalog and update it, not redo it.

The cached state of a model's forest (``<db>.d/forests/<model>-exact-f<floor>.state.npz``)
records, per node, the image id and a 64-bit fingerprint of the vector it was computed on,
plus a hard link to the embeddings file those vectors came from (the catalog writes a new file
for every change, so the link keeps exactly the old vectors alive, at no copy cost). The next
pass compares ids and fingerprints with the current scope:

* nothing changed: the cached forest is the answer;
* rows added: only new x all pairs are scanned and merged (:func:`~neardup.similarity.incremental.extend_forest`);
* rows removed (left the scope: vanished file, a "not a duplicate" decision) or changed (same
  id, new vector: a removal plus an addition): the components they touched are repaired from
  the old vectors (:func:`~neardup.similarity.incremental.remove_nodes`); when the old vectors
  are unavailable (no hard links on this file system, a damaged cache) the pass is recomputed.

The result is the same forest and histogram as a full pass (up to ties among equal weights, which
leave the components unchanged), so every threshold's groups, masters and pair counts agree.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .jit import nb
from .npyfile import chunk_rows, drop_mapped_pages
from .similarity.forest import SimilarityForest
from .similarity.incremental import RowSource, extend_forest, remove_nodes

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .dedup import Scope

ProgressFn = Callable[[int, int], None]


@nb.njit(cache=True, parallel=True)
def _fingerprints(W: np.ndarray, out: np.ndarray) -> None:
    for i in nb.prange(W.shape[0]):
        h = np.uint64(0x9E3779B97F4A7C15)
        for j in range(W.shape[1]):
            h ^= np.uint64(W[i, j])
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
        out[i] = h


def row_fingerprints(X: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's float32 bytes (changed vector <=> changed fingerprint, w.h.p.)."""
    n = int(X.shape[0])
    out = np.empty(n, dtype=np.uint64)
    step = chunk_rows(4 * int(X.shape[1]))
    for a in range(0, n, step):
        block = np.ascontiguousarray(X[a:a + step], dtype=np.float32)
        _fingerprints(block.view(np.uint32), out[a:a + step])
        drop_mapped_pages(X[a:a + step])  # a memory map's pages read here leave the resident set
    return out


@dataclass
class ForestState:
    """A cached forest plus what it was computed on: ids, fingerprints, rows of the linked vectors file."""

    forest: SimilarityForest
    ids: np.ndarray
    fps: np.ndarray
    rows: np.ndarray
    synced: str

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename)."""
        from .tmpfiles import writing

        f = self.forest
        blob = np.frombuffer("\n".join(map(str, self.ids.tolist())).encode(), dtype=np.uint8)
        with writing(path) as tmp:
            np.savez(tmp, n=f.n, src=f.src, dst=f.dst, weight=f.weight, floor=f.floor, hist=f.hist,
                     ids=blob, fps=self.fps, rows=self.rows, synced=self.synced)

    @classmethod
    def load(cls, path: Path) -> "ForestState":
        with np.load(path) as z:
            n = int(z["n"])
            text = z["ids"].tobytes().decode()
            ids = np.asarray(text.split("\n") if n else [], dtype=object)
            forest = SimilarityForest(n, z["src"], z["dst"], z["weight"], float(z["floor"]), z["hist"], {})
            state = cls(forest, ids, z["fps"], z["rows"], str(z["synced"]))
        if len(state.ids) != n or len(state.fps) != n or len(state.rows) != n:
            raise ValueError(f"{path}: inconsistent forest state")
        return state


def _state_paths(cache_dir: Path, model: str, floor: float) -> tuple[Path, Path]:
    stem = f"{model}-exact-f{floor:.6f}"
    return cache_dir / f"{stem}.state.npz", cache_dir / f"{stem}.vectors.npy"


def _find_state(cache_dir: Path, model: str, floor: float) -> tuple[float, Path] | None:
    """The cached state with the highest floor <= ``floor`` (it answers every threshold >= its floor)."""
    prefix = f"{model}-exact-f"
    best: tuple[float, Path] | None = None
    if not cache_dir.exists():
        return None
    for p in cache_dir.glob(prefix + "*.state.npz"):
        try:
            f = float(p.name[len(prefix):-len(".state.npz")])
        except ValueError:
            continue
        if f <= floor + 1e-12 and (best is None or f > best[0]):
            best = (f, p)
    return best


def _store_file(catalog: "Catalog", model: str) -> Path | None:
    row = catalog.one("SELECT file FROM embedding_sets WHERE model = ?", [model])
    return None if row is None else catalog.sidecar / "embeddings" / str(row[0])


def _old_vectors(link: Path, state: ForestState, removed: np.ndarray) -> RowSource | None:
    """The vectors the cached forest was computed on, when the hard link still holds them."""
    try:
        X = np.load(link, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if X.ndim != 2 or len(state.rows) and state.rows.max() >= len(X):
        return None
    src = RowSource(X, state.rows)
    R = np.flatnonzero(removed)
    if len(R) and not np.array_equal(row_fingerprints(X[state.rows[R]]), state.fps[R]):
        return None  # not the file the forest was built on
    return src


def _link(store: Path | None, link: Path) -> bool:
    """Hard-link the current embeddings file beside the state (False where links are unavailable)."""
    tmp = link.with_name(link.name + ".tmp")
    with contextlib.suppress(OSError):
        tmp.unlink()
    if store is None:
        return False
    try:
        os.link(store, tmp)
        tmp.replace(link)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            link.unlink()
        return False


def cached_forest(catalog: "Catalog", scope: "Scope", floor: float, *,
                  full_pass: Callable[[], SimilarityForest], progress: ProgressFn | None = None) -> SimilarityForest:
    """The exact forest of a whole-catalog scope at ``floor``: cached, updated incrementally, or computed.

    ``full_pass()`` computes it from scratch (used when there is no usable cache). The returned
    forest's ``meta["update"]`` says what was done: ``mode`` (cached, incremental or full), rows
    ``added``/``changed``/``removed``, and ``changed_ids`` (images whose vector changed).
    """
    t0 = time.perf_counter()
    cache_dir = catalog.sidecar / "forests"
    synced = f"{scope.model}-v{scope.version}-{scope.key}"
    found = _find_state(cache_dir, scope.model, floor)
    state: ForestState | None = None
    if found is not None:
        try:
            state = ForestState.load(found[1])
        except Exception:  # a damaged cache is just recomputed
            state = None
    if state is not None and state.synced == synced and state.forest.n == len(scope):
        forest = state.forest
        forest.meta = dict(engine="exact", update=dict(mode="cached", added=0, changed=0, removed=0, changed_ids=[]))
        return forest

    fps = row_fingerprints(scope.vectors)
    update: dict[str, Any] = {}
    forest: SimilarityForest | None = None
    if state is not None:
        forest, update = _update(state, found[1], scope, fps, progress)
    if forest is None:
        forest = full_pass()
        update = dict(mode="full", added=len(scope), changed=0, removed=0, changed_ids=[],
                      **({"reason": update["reason"]} if "reason" in update else {}))
    update["seconds"] = round(time.perf_counter() - t0, 3)
    if not catalog.read_only:
        from .tmpfiles import remove_stale

        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(cache_dir)  # temporary files of writers that were killed
        f_use = forest.floor
        state_path, link = _state_paths(cache_dir, scope.model, f_use)
        rows = np.arange(len(scope), dtype=np.int64) if scope.rows is None else np.asarray(scope.rows, np.int64)
        plain = SimilarityForest(forest.n, forest.src, forest.dst, forest.weight, forest.floor, forest.hist, {})
        _link(catalog.sidecar / "embeddings" / scope.file if scope.file else _store_file(catalog, scope.model), link)
        ForestState(plain, scope.ids, fps, rows, synced).save(state_path)
    forest.meta = {**forest.meta, "update": update}
    return forest


def _update(state: ForestState, path: Path, scope: "Scope", fps: np.ndarray,
            progress: ProgressFn | None) -> tuple[SimilarityForest | None, dict[str, Any]]:
    """Bring a cached state up to the scope; ``(None, {reason})`` when only a full pass can."""
    old = state.forest
    floor = old.floor
    pos = {k: i for i, k in enumerate(scope.ids.tolist())}
    new_of_old = np.fromiter((pos.get(k, -1) for k in state.ids.tolist()), dtype=np.int64, count=len(state.ids))
    present = new_of_old >= 0
    same = present.copy()
    same[present] = fps[new_of_old[present]] == state.fps[present]
    removed = ~same
    changed_ids = state.ids[present & ~same].tolist()
    n_new = len(scope)
    is_old = np.zeros(n_new, dtype=bool)
    is_old[new_of_old[same]] = True
    info: dict[str, Any] = dict(mode="incremental", added=int((~is_old).sum()) - len(changed_ids),
                                changed=len(changed_ids), removed=int((~present).sum()), changed_ids=changed_ids)
    edges = (old.src, old.dst, old.weight)
    hist = old.hist.copy()
    if removed.any():
        old_rows = _old_vectors(path.with_name(path.name.replace(".state.npz", ".vectors.npy")), state, removed)
        if old_rows is None:
            return None, dict(reason="the vectors of the cached pass are gone; recomputed")
        edges, lost, stats = remove_nodes(old_rows, edges, floor, removed)
        hist -= lost
        info.update(stats)
    # renumber: survivors first (in scope order), then new or changed rows
    surv_new = np.flatnonzero(is_old)
    work = np.r_[surv_new, np.flatnonzero(~is_old)].astype(np.int64)
    work_of_new = np.empty(n_new, dtype=np.int64)
    work_of_new[work] = np.arange(n_new)
    o_src, o_dst, o_w = edges
    seed = (work_of_new[new_of_old[o_src]], work_of_new[new_of_old[o_dst]], np.asarray(o_w, np.float32))
    (f_src, f_dst, f_w), added_hist = extend_forest(RowSource(scope.vectors, work), len(surv_new), seed, floor,
                                                    progress=progress)
    info["rows_scanned"] = int(n_new - len(surv_new))
    forest = SimilarityForest(n_new, work[f_src], work[f_dst], f_w, floor, hist + added_hist, {"engine": "exact"})
    return forest, info


def _vector_fingerprints(catalog: "Catalog", model: str, ids: list[str]) -> dict[str, int]:
    """Fingerprint of the current vector of each id that has one for ``model``."""
    if not ids:
        return {}
    _, _, vectors = catalog.embedding_vectors(model)
    rows, found = catalog.embedding_rows(model, ids)
    if not len(rows):
        return {}
    fps = row_fingerprints(np.asarray(vectors[rows]))
    return {str(i): int(f) for i, f in zip(found.tolist(), fps.tolist())}


def record_decision_basis(catalog: "Catalog", image_id: str) -> None:
    """Remember what a reviewer decided on: the image's current vector under every model (its fingerprint)."""
    for m in catalog.embedding_models():
        fp = _vector_fingerprints(catalog, m["model"], [image_id]).get(image_id)
        catalog.con.execute("DELETE FROM decision_basis WHERE image_id = ? AND model = ?", [image_id, m["model"]])
        if fp is not None:
            catalog.con.execute("INSERT INTO decision_basis VALUES (?, ?, ?)", [image_id, m["model"], fp])


def stale_decisions(catalog: "Catalog", model: str) -> dict[str, str]:
    """Images whose reviewer decisions no longer apply: ``{id: "changed" | "vanished"}``.

    Changed: the image's vector differs from the one the decision was made on. Vanished: its file
    is missing or unreadable. Every other decision stands.
    """
    decided = sorted({r[0] for r in catalog.con.execute("SELECT DISTINCT image_id FROM overrides").fetchall()})
    if not decided:
        return {}
    gone = catalog.unavailable_ids()
    out = {i: "vanished" for i in decided if i in gone}
    basis = {r[0]: int(r[1]) for r in catalog.con.execute(
        "SELECT image_id, fingerprint FROM decision_basis WHERE model = ?", [model]).fetchall()}
    now = _vector_fingerprints(catalog, model, [i for i in decided if i in basis and i not in out])
    out.update({i: "changed" for i, fp in now.items() if fp != basis[i]})
    return out


def invalidate_decisions(catalog: "Catalog", stale: dict[str, str]) -> int:
    """Move the decisions of ``stale`` images to ``overrides_invalidated`` (kept, with the reason); one transaction."""
    if not stale:
        return 0
    import pyarrow as pa

    from .arrow_numpy import from_strings

    t = pa.table({"image_id": from_strings(list(stale)), "reason": from_strings(list(stale.values()))})
    with catalog.transaction() as con:
        con.register("_stale", t)
        try:
            n = con.execute("SELECT count(*) FROM overrides SEMI JOIN _stale USING (image_id)").fetchone()[0]
            con.execute("INSERT INTO overrides_invalidated SELECT o.image_id, o.kind, o.created_at, o.note, "
                        "current_timestamp, s.reason FROM overrides o JOIN _stale s USING (image_id)")
            con.execute("DELETE FROM overrides WHERE image_id IN (SELECT image_id FROM _stale)")
            con.execute("DELETE FROM decision_basis WHERE image_id IN (SELECT image_id FROM _stale)")
        finally:
            con.unregister("_stale")
        catalog._recompute_suppression()
        catalog.describe("set aside {n} outdated reviewer decision(s)", int(n))
    return int(n)


def whole_catalog_forests(catalog: "Catalog", model: str) -> list[tuple[float, Path]]:
    """Cached forests of the whole current embedding set of ``model`` (node = row), as (floor, path).

    Incremental states count only when synced to the current version with nothing left out;
    plain forest files (the ANN pass) by their name. Load either with :func:`load_forest`.
    """
    d = catalog.sidecar / "forests"
    row = catalog.one("SELECT version FROM embedding_sets WHERE model = ?", [model])
    if not d.is_dir() or row is None:
        return []
    version = int(row[0])
    out: list[tuple[float, Path]] = []
    for p in d.glob(f"{model}-v{version}-all-*-f*.npz"):
        with contextlib.suppress(ValueError):
            out.append((float(p.name.rsplit("-f", 1)[1][:-4]), p))
    prefix = f"{model}-exact-f"
    for p in d.glob(prefix + "*.state.npz"):
        try:
            floor = float(p.name[len(prefix):-len(".state.npz")])
            with np.load(p) as z:
                synced = str(z["synced"])
        except Exception:
            continue
        if synced == f"{model}-v{version}-all":
            out.append((floor, p))
    return sorted(out)


def load_forest(path: Path) -> SimilarityForest:
    """A cached forest from a state file or a plain forest file."""
    if path.name.endswith(".state.npz"):
        return ForestState.load(path).forest
    return SimilarityForest.load(path)


__all__ = ["ForestState", "cached_forest", "invalidate_decisions", "load_forest", "record_decision_basis",
           "row_fingerprints", "stale_decisions", "whole_catalog_forests"]
