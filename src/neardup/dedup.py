"""Dedup: forest -> groups at a threshold -> masters -> a run, applied to the catalog reversibly.

``dedup(catalog, 0.98)`` is the whole job on embeddings already in the catalog. The similarity
forest it builds is cached beside the catalog (keyed by model, embedding version, scope and
floor), so a later sweep or a dedup at another threshold above the floor costs no new pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from .arrow_numpy import from_numpy, from_strings, to_float64
from .catalog import Catalog, EmbeddingSet
from .errors import CatalogError, InputError
from .grouping import (MODES, Grouping, check_bound, default_grouping, default_window, group_nodes,
                       group_weakest_links)
from .paths import atomic_output, check_output_file
from .policy import (DEFAULT_POLICY, GROUP_KEYS, decided_by, group_centrality, parse_policy, policy_columns,
                     policy_text as _policy_text, priority_rank)
from .similarity.canonical import canonical_vectors
from .similarity.forest import SimilarityForest

GROUP_SCORES = ("sum", "max", "mean")
INDEXES = ("exact", "ann", "auto")
ENGINES = ("local", "ray")
#: --index auto: exact up to this many vectors, ANN above -- where exact stops being the faster pass. Measured
#: side by side on 2 cores (2026-11-27, seed-shaped vectors, floor 0.98, load ~1): exact / ANN wall 1.2 / 0.9 s
#: at 25k, 3.6 / 1.8 at 50k, 12.4 / 3.2 at 100k, 38.9 / 6.7 at 200k; on sparse and clustered synthetic sets too
#: ANN is the faster pass above 25k (bench/auto_index.py, docs/benchmarks-scale.md). The default
#: index stays exact: ANN can miss a duplicate (it prints the recall it measured), never adds one.
AUTO_EXACT_MAX = 20_000
ProgressFn = Callable[[int, int], None]


def check_threshold(t: float) -> float:
    t = float(t)
    if not (0.0 < t <= 1.0) or np.isnan(t):
        raise InputError(f"threshold {t} is outside (0, 1]")
    return t


@dataclass
class Scope:
    """The rows of one model's embedding matrix that a pass runs on."""

    model: str
    version: int
    ids: np.ndarray          # image id per local row
    rows: np.ndarray | None  # rows of the full matrix (None = all, in order)
    vectors: np.ndarray      # canonical float32 (memory map when rows is None; rounded here if the
                             # catalog predates canonical vectors)
    key: str                 # cache key of the scope
    whole: bool = False      # the whole catalog (minus exclusions): its forest is kept up to date incrementally
    file: str | None = None  # the embeddings version file the vectors are read from (in the sidecar)

    def __len__(self) -> int:
        return len(self.ids)


def load_scope(catalog: Catalog, model: str | None = None, ids: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None) -> Scope:
    """The embeddings of ``ids`` (default: all), minus ``exclude``, for ``model``.

    Images whose file has vanished or stopped decoding since their scan are always left out.
    """
    gone = catalog.unavailable_ids()
    if gone:
        exclude = sorted(set(map(str, exclude or ())) | gone)
    if ids is None and not exclude:
        es: EmbeddingSet = catalog.load_embeddings(model)
        return Scope(es.model, es.version, es.ids, None, canonical_vectors(es.vectors), "all", True,
                     _version_file(catalog, es.model))
    name, version, vectors = catalog.embedding_vectors(model)
    rows, scope_ids = catalog.embedding_rows(name, ids, exclude)
    if ids is not None:
        wanted = set(map(str, ids))
        if len(wanted) != len(scope_ids) + len(wanted & set(map(str, exclude or ()))):
            missing = sorted(wanted - set(scope_ids.tolist()) - set(map(str, exclude or ())))
            raise InputError(f"{len(missing)} ids have no {name} embedding (e.g. {missing[0]!r})")
    digest = hashlib.sha1("\n".join(scope_ids.tolist()).encode()).hexdigest()[:16]
    return Scope(name, version, scope_ids, rows, canonical_vectors(np.ascontiguousarray(vectors[rows])), digest,
                 ids is None, _version_file(catalog, name))


def _version_file(catalog: Catalog, model: str) -> str | None:
    return catalog.scalar("SELECT file FROM embedding_sets WHERE model = ?", [model])


def check_options(*, mode: str | None = "components", prefer: str | Sequence[str] | None = DEFAULT_POLICY,
                  index: str = "exact", engine: str = "local", bound: float | None = None,
                  window: float | None = None, window_link: float | None = None) -> None:
    """Refuse a bad mode, bound, window, policy, index or engine at once (before any note or any work): one line."""
    if mode is not None and mode not in MODES:
        raise InputError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if isinstance(prefer, str) and not prefer.strip():
        raise InputError("--prefer is empty: give policy keys, e.g. score,brightness (or leave it out for the default)")
    if bound is not None:
        check_bound(bound)
        if mode not in (None, "bounded"):
            raise InputError(f"--bound applies to mode bounded, not {mode}")
    if window is not None and (np.isnan(float(window)) or float(window) < 0):
        raise InputError(f"--window {window}: give seconds >= 0 (0 turns the capture-time window off)")
    if window_link is not None:
        if np.isnan(float(window_link)) or not (0.0 < float(window_link) <= 1.0):
            raise InputError(f"--window-link {window_link} is outside (0, 1]")
    if (window or window_link is not None) and mode not in (None, "bounded"):
        raise InputError(f"--window/--window-link apply to mode bounded, not {mode}")
    parse_policy(prefer)
    if index not in INDEXES:
        raise InputError(f"index {index!r}: use one of {', '.join(INDEXES)}")
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")


def compute_forest(vectors: np.ndarray, floor: float, *, index: str = "exact", engine: str = "local",
                   progress: ProgressFn | None = None) -> SimilarityForest:
    """One similarity pass over ``vectors`` -> the forest of pairs >= floor (exact, ANN or Ray)."""
    if index not in INDEXES:
        raise InputError(f"index {index!r}: use one of {', '.join(INDEXES)}")
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if index == "auto":
        index = "exact" if len(vectors) <= AUTO_EXACT_MAX else "ann"
    if engine == "ray":
        from .distributed import ray_forest

        return ray_forest(vectors, floor, index=index, progress=progress)
    if index == "ann":
        from .similarity.ann import ann_forest

        return ann_forest(vectors, floor, progress=progress)
    from .similarity.exact import exact_forest

    return exact_forest(vectors, floor, progress=progress)


def index_summary(requested: str, forest: SimilarityForest, n: int) -> dict[str, Any]:
    """Which pass a run used (``exact`` or ``ann``) and, for ``--index auto``, why: the summary's ``index``."""
    meta = forest.meta or {}
    used = meta.get("index", "exact") if meta.get("engine") == "ray" else meta.get("engine", "exact")
    out: dict[str, Any] = {"requested": requested, "used": used}
    if requested == "auto":
        out["reason"] = (f"{n:,} images <= {AUTO_EXACT_MAX:,}" if n <= AUTO_EXACT_MAX else
                         f"{n:,} images > {AUTO_EXACT_MAX:,}, where ANN is the faster pass (measured)")
    return out


def similarity_forest(catalog: Catalog, floor: float, *, scope: Scope | None = None, model: str | None = None,
                      index: str = "exact", engine: str = "local", progress: ProgressFn | None = None,
                      use_cache: bool = True) -> SimilarityForest:
    """The forest for a scope, from the cache when one with a floor <= ``floor`` exists.

    The exact forest of the whole catalog is kept up to date incrementally (see
    :mod:`neardup.incremental`): after rows are added only the new x all pairs are computed.
    """
    scope = scope if scope is not None else load_scope(catalog, model)  # an empty Scope is falsy
    cache_dir = catalog.sidecar / "forests"
    kind = "exact" if index == "exact" or (index == "auto" and len(scope) <= AUTO_EXACT_MAX) else "ann"
    if use_cache and kind == "exact" and scope.whole:
        from .incremental import cached_forest

        return cached_forest(catalog, scope, floor, progress=progress, full_pass=lambda: compute_forest(
            scope.vectors, floor, index="exact", engine=engine, progress=progress))
    prefix = f"{scope.model}-v{scope.version}-{scope.key}-{kind}-f"
    if use_cache and cache_dir.exists():
        best: tuple[float, Path] | None = None
        for p in cache_dir.glob(prefix + "*.npz"):
            try:
                f = float(p.name[len(prefix):-4])
            except ValueError:
                continue
            if f <= floor + 1e-12 and (best is None or f > best[0]):
                best = (f, p)
        if best is not None:
            try:
                return SimilarityForest.load(best[1])
            except Exception:  # a damaged cache file is just recomputed
                pass
    forest = compute_forest(scope.vectors, floor, index=index, engine=engine, progress=progress)
    if use_cache and not catalog.read_only:
        from .tmpfiles import TMP_SUFFIX, remove_stale, writing

        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(cache_dir)  # temporary files of writers that were killed
        for old in cache_dir.glob(f"{scope.model}-v*-{scope.key}-{kind}-f*.npz"):
            if not old.name.startswith(f"{scope.model}-v{scope.version}-") and not old.name.endswith(TMP_SUFFIX):
                old.unlink(missing_ok=True)
        with writing(cache_dir / f"{prefix}{floor:.6f}.npz") as tmp:
            forest.save(tmp)
    return forest


@dataclass
class DedupResult:
    """What a dedup decided: one row per image in ``members`` plus the summary."""

    threshold: float
    mode: str
    model: str
    policy: str
    members: pa.Table
    summary: dict[str, Any]
    run_id: int | None = None
    dry_run: bool = False
    forest: SimilarityForest | None = field(default=None, repr=False)
    replaced: list[int] = field(default_factory=list)  # runs this one put out of force
    unchanged: bool = False  # the run in force already had exactly this result: nothing was written

    def group(self, group_id: int) -> pa.Table:
        import pyarrow.compute as pc

        return self.members.filter(pc.equal(self.members["group_id"], group_id))


def group_images(forest: SimilarityForest, scope: Scope, threshold: float, rank: np.ndarray,
                 mode: str = "components", bound: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(group_label, master_node, sim_to_master)`` for every node of the scope (see grouping.py)."""
    g = group_nodes(forest, scope.vectors, threshold, rank, mode, bound)
    return g.labels, g.master, g.sim


def _count_decided(per_group: Sequence[Any]) -> dict[str, int]:
    """How many groups each policy key decided, most first."""
    counts: dict[str, int] = {}
    for k in per_group:
        counts[str(k)] = counts.get(str(k), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class InputsChanged(CatalogError):
    """What a released pass read changed before its run could be recorded (nothing was written)."""


def inputs_digest(catalog: Catalog, model: str) -> dict[str, Any]:
    """What a dedup reads, summed up per table: the model's vector set (file and version), the images
    (metadata, scores, status, suppression), the reviewer decisions and the runs (id, status). Equal
    digests: the pass would read the same."""
    row = catalog.one(
        "SELECT (SELECT sum(hash(e)) FROM embedding_sets e WHERE e.model = ?), (SELECT sum(hash(i)) FROM images i), "
        "(SELECT sum(hash(o)) FROM overrides o), (SELECT sum(hash(r.id, r.status)) FROM runs r)", [model])
    return dict(zip(("vectors", "images", "decisions", "runs"), row or (None,) * 4))


@dataclass
class RunPlan:
    """Everything a run decides from except the threshold: scope, policy, reviewer decisions, grouping.

    :func:`plan_run` builds it; :meth:`group_at` groups at one threshold exactly as ``dedup``
    does, so ``sweep`` (and its plot and the review page's explorer) count what a run would do.
    """

    scope: Scope
    base: Scope
    policy: list[tuple[str, bool]]
    meta: pa.Table                  # policy columns of each scope node, in node order
    mode: str
    bound: float | None
    window_s: float | None
    window_link: float | None
    times: np.ndarray | None        # capture time of each node in seconds (NaN: unknown); None: no window
    boost: np.ndarray | None        # nodes a reviewer made master
    kept: np.ndarray                # nodes a reviewer keeps visible
    not_dup: set[str]               # images a reviewer took out of every group (singletons)
    stale: dict[str, str]
    checker: Any = None             # neardup.verify.PairChecker: geometric check of untimed pairs below window_link
    check_stats: dict[str, int] = field(default_factory=dict)
    _links: dict[float, SimilarityForest] = field(default_factory=dict, repr=False)

    @property
    def uses_central(self) -> bool:
        return any(k in GROUP_KEYS for k, _ in self.policy)

    def describe(self) -> str:
        """The grouping in words, e.g. ``bounded (bound 0.75; captured > 1 s apart: linked from 0.95) + geometric check``."""
        return grouping_text(self.mode, self.bound, self.window_s, self.window_link, self.checker is not None)

    def links(self, forest: SimilarityForest, floor: float) -> SimilarityForest | None:
        """The time-aware link forest at ``floor`` (built once, cut at every threshold above it)."""
        if self.mode != "bounded" or self.window_s is None or self.times is None:
            return None
        for f, lf in self._links.items():
            if f <= floor + 1e-12:
                return lf
        from .grouping import time_link_forest, verified_link_forest

        if self.checker is not None:
            lf, stats = verified_link_forest(forest, np.asarray(self.scope.vectors), self.times, floor, self.window_s,
                                             self.window_link, self.checker.rejects)
            self.check_stats = stats
            if self.checker.store is not None:
                self.checker.store.save()  # the next dedup or sweep checks only the pairs it has not seen
        else:
            lf = time_link_forest(forest, np.asarray(self.scope.vectors), self.times, floor, self.window_s,
                                  self.window_link)
        self._links[float(floor)] = lf
        return lf

    def group_at(self, forest: SimilarityForest, t: float, links: SimilarityForest | None = None,
                 max_passes: int = 4) -> tuple["Grouping", np.ndarray, pa.Table, int, bool]:
        """``(grouping, rank, meta, passes, settled)`` at threshold ``t``: what ``dedup`` at ``t`` decides.

        ``central`` (a member's mean similarity to its group) is computed over the groups the run
        forms: first over the transitive components, then again over the groups that ranking
        formed, until the groups no longer change (``settled``; at most ``max_passes``, after which
        ``central`` is that of the previous pass's groups).
        """
        scope = self.scope
        X = np.asarray(scope.vectors)  # a plain view of a memory map: row gathers without memmap overhead
        if links is None:
            links = self.links(forest, t)
        labels_for_central = forest.components(t) if self.uses_central else None
        passes = 0
        while True:
            passes += 1
            meta = self.meta
            if self.uses_central:
                meta = meta.append_column("central", from_numpy(
                    group_centrality(X, labels_for_central, scope.ids)))
            rank = priority_rank(meta, self.policy)
            if self.boost is not None:
                rank = np.where(self.boost, rank - len(rank), rank)
            g = group_nodes(forest, X, t, rank, self.mode, self.bound, times=self.times,
                            window_s=self.window_s, window_link=self.window_link, links=links)
            settled = not self.uses_central or np.array_equal(_canonical_labels(g.labels),
                                                              _canonical_labels(labels_for_central))
            if settled or passes >= max_passes:
                return g, rank, meta, passes, settled
            labels_for_central = g.labels

    def counts(self, g: "Grouping") -> dict[str, int]:
        """groups, suppressed, retained, largest group of one grouping (reviewer decisions applied)."""
        n = len(g.labels)
        size = np.bincount(g.labels, minlength=n)
        suppressed = int(((g.master != np.arange(n)) & ~self.kept).sum())
        total = n + len(self.not_dup)
        return dict(groups=int((size >= 2).sum()), suppressed=suppressed, retained=total - suppressed,
                    largest_group=int(size.max()) if n else 1)


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renamed to each group's smallest member index (equal arrays = equal partitions)."""
    labels = np.asarray(labels)
    n = len(labels)
    low = np.full(n, n, dtype=np.int64)
    np.minimum.at(low, labels, np.arange(n))
    return low[labels]


def grouping_text(mode: str, bound: float | None, window_s: float | None = None,
                  window_link: float | None = None, verify: bool = False) -> str:
    """A run's grouping in words (summary, sweep header)."""
    if mode != "bounded":
        return mode
    text = f"bounded (bound {bound:.4g}"
    if window_s is not None and window_link is not None:
        text += f"; captured > {window_s:g} s apart: linked from {window_link:.4g}"
        if verify:  # below the window link, pairs with an untimed image: neardup.verify
            return text + ") + geometric check"
    return text + ")"


def capture_seconds(catalog: Catalog, ids: np.ndarray) -> np.ndarray:
    """``images.captured_at`` of each id in seconds (float64; NaN where unknown), in the order given."""
    from .policy import _num

    if "captured_at" not in set(catalog.image_columns()):
        return np.full(len(ids), np.nan)
    t = catalog.images(["id", "captured_at"])
    secs = _num(t, "captured_at") / 1e6   # microseconds since the epoch, NaN where unknown
    pos = {k: i for i, k in enumerate(t["id"].to_pylist())}
    take = np.fromiter((pos.get(i, -1) for i in ids.tolist()), dtype=np.int64, count=len(ids))
    out = np.full(len(ids), np.nan)
    out[take >= 0] = secs[take[take >= 0]]
    return out


def plan_run(catalog: Catalog, *, model: str | None = None, ids: Sequence[str] | None = None,
             mode: str | None = None, bound: float | None = None, window: float | None = None,
             window_link: float | None = None, prefer: str | Sequence[str] | None = DEFAULT_POLICY,
             verify: bool | None = None) -> RunPlan:
    """What a run on ``model`` (and ``ids``) decides from. Writes nothing: decisions that no longer apply
    (``stale``) are left out here and set aside by ``dedup`` in the transaction that records its run.

    ``verify`` (default: on wherever the capture-time window is): pairs with an image that has no
    capture time and a similarity below the window's link similarity link only if the geometric
    check (:mod:`neardup.verify`, on the scan's thumbnails) does not find them to be different pictures.
    """
    check_options(mode=mode, bound=bound, window=window, window_link=window_link)
    policy = parse_policy(prefer)
    overrides = catalog.overrides()
    # decisions on images whose vector changed or whose file vanished since no longer apply
    from .incremental import stale_decisions

    stale = stale_decisions(catalog, model or catalog.default_model())
    if stale:
        overrides = {k: v - set(stale) for k, v in overrides.items()}
    base = load_scope(catalog, model, ids)
    not_dup = overrides["not_duplicate"] & set(base.ids.tolist())
    scope = load_scope(catalog, base.model, base.ids.tolist() if ids is not None else None, exclude=sorted(not_dup)) \
        if not_dup else base
    given_bound, given_window = bound, bool(window) or window_link is not None
    mode, bound = default_grouping(scope.model, mode, bound)
    if mode != "bounded" and (given_bound is not None or given_window):  # not silently ignored
        raise InputError(f"--bound/--window/--window-link apply to mode bounded; model {scope.model!r} groups by "
                         f"{mode} by default (add --mode bounded)")
    window_s, link = default_window(scope.model, mode, window, window_link)

    cols = policy_columns(policy)
    have = set(catalog.image_columns())
    meta = catalog.images([c for c in cols if c in have])
    pos = {k: i for i, k in enumerate(meta["id"].to_pylist())}
    take = np.fromiter((pos[i] for i in scope.ids.tolist()), dtype=np.int64, count=len(scope))
    meta = meta.take(from_numpy(take))
    forced = overrides["master"] & set(scope.ids.tolist())
    boost = np.fromiter((i in forced for i in scope.ids.tolist()), dtype=bool, count=len(scope)) if forced else None
    keep = overrides["keep"]
    kept = np.fromiter((i in keep for i in scope.ids.tolist()), dtype=bool, count=len(scope)) if keep \
        else np.zeros(len(scope), bool)
    times = capture_seconds(catalog, scope.ids) if window_s is not None else None
    if verify and window_s is None:
        raise InputError("--verify checks the untimed pairs of the capture-time window: it needs mode bounded with "
                         "a window (not --window 0)")
    checker = thumbnail_checker(catalog, scope.ids) if verify is not False and window_s is not None else None
    return RunPlan(scope, base, policy, meta, mode, bound, window_s, link, times, boost, kept, not_dup, stale,
                   checker)


def thumbnail_checker(catalog: Catalog, ids: np.ndarray) -> Any:
    """A :class:`neardup.verify.PairChecker` over the scan's thumbnails of ``ids`` (node order); no thumbnail: no verdict."""
    from .sources import thumbnail_path
    from .verify import PairChecker, VerdictStore, load_gray

    t = catalog.images(["id", "sha256"])
    sha = dict(zip(t["id"].to_pylist(), t["sha256"].to_pylist()))
    node_sha = [sha.get(i) for i in ids.tolist()]
    sidecar = catalog.sidecar

    def image_of(node: int) -> np.ndarray | None:
        h = node_sha[node]
        if not h:
            return None
        p = thumbnail_path(sidecar, h)
        try:
            return load_gray(p)
        except OSError:
            return None

    store = VerdictStore(None if catalog.read_only else sidecar / "verify" / "pairs.npz")
    return PairChecker(image_of, key_of=lambda node: node_sha[node] or None, store=store)


def dedup(catalog: Catalog, threshold: float, *, model: str | None = None, mode: str | None = None,
          prefer: str | Sequence[str] | None = DEFAULT_POLICY, dry_run: bool = False,
          ids: Sequence[str] | None = None, index: str = "exact", engine: str = "local",
          floor: float | None = None, progress: ProgressFn | None = None, top_groups: int = 5,
          bound: float | None = None, group_score: str = "sum", keep_previous: bool = False,
          release: bool = False, window: float | None = None, window_link: float | None = None,
          verify: bool | None = None) -> DedupResult:
    """Group near-duplicates at ``threshold`` and (unless ``dry_run``) apply the run to the catalog.

    ``mode``/``bound`` default to the model's (:func:`neardup.grouping.default_grouping`), and so
    does the capture-time window of mode bounded (``window`` seconds, ``window_link``;
    :func:`neardup.grouping.default_window`; ``window=0`` turns it off).
    Each member row carries its group's size and its members' ``score`` aggregated by
    ``group_score`` (sum, max or mean; missing scores are left out), so the master -- the one
    visible image -- carries the whole group's votes.
    Reviewer overrides are respected: ``keep`` images are never suppressed, ``master`` images
    become the master of their group, ``not_duplicate`` images stay out of every group.

    One run is in force per model and scope: the new run replaces the applied run(s) of the same
    model and scope (``ids``, or the whole collection) in the same transaction, unless
    ``keep_previous``. When the run in force already has this exact result and these settings,
    nothing is written (``result.unchanged``; ``run_id`` is that run).

    ``release``: close the catalog file during the similarity pass and the grouping, so that other
    processes (``neardup review``, which opens it per request) can use it meanwhile. The run is then
    recorded only if what the pass read (:func:`inputs_digest`) is unchanged, checked in the
    recording transaction; if it changed, the pass is computed again with the file held and
    ``summary["recomputed"]`` says what had changed. Ignored inside a transaction or read-only.
    """
    kwargs = dict(model=model, mode=mode, prefer=prefer, dry_run=dry_run, ids=ids, index=index, engine=engine,
                  floor=floor, progress=progress, top_groups=top_groups, bound=bound, group_score=group_score,
                  keep_previous=keep_previous, window=window, window_link=window_link, verify=verify)
    if release and not catalog.read_only and not catalog.in_transaction:
        try:
            return _dedup(catalog, threshold, release=True, **kwargs)  # type: ignore[arg-type]
        except InputsChanged as exc:
            return _dedup(catalog, threshold, recomputed=str(exc), **kwargs)  # type: ignore[arg-type]
    return _dedup(catalog, threshold, **kwargs)  # type: ignore[arg-type]


def _dedup(catalog: Catalog, threshold: float, *, model: str | None, mode: str | None,
           prefer: str | Sequence[str] | None, dry_run: bool, ids: Sequence[str] | None, index: str, engine: str,
           floor: float | None, progress: ProgressFn | None, top_groups: int, bound: float | None,
           group_score: str, keep_previous: bool, window: float | None = None, window_link: float | None = None,
           verify: bool | None = None, release: bool = False, recomputed: str | None = None) -> DedupResult:
    """One attempt of :func:`dedup`; with ``release``, raises :class:`InputsChanged` (nothing written)
    when the catalog changed while its file was released."""
    t = check_threshold(threshold)
    check_options(mode=mode, bound=bound, window=window, window_link=window_link)
    if not dry_run and catalog.read_only:
        raise CatalogError(f"{catalog.path}: the catalog was opened read-only; a dedup that records its run "
                           "needs a read-write open (or dry_run=True)")
    if group_score not in GROUP_SCORES:
        raise InputError(f"group score {group_score!r}: use one of {', '.join(GROUP_SCORES)}")
    plan = plan_run(catalog, model=model, ids=ids, mode=mode, bound=bound, window=window, window_link=window_link,
                    prefer=prefer, verify=verify)
    policy, scope, base, not_dup, stale = plan.policy, plan.scope, plan.base, plan.not_dup, plan.stale
    mode, bound = plan.mode, plan.bound
    policy_text = _policy_text(policy)
    inputs = inputs_digest(catalog, scope.model) if release else None

    # the long part needs no query: with ``release`` other processes may open the catalog meanwhile
    with catalog.released() if release else contextlib.nullcontext():
        forest = similarity_forest(catalog, min(t, floor) if floor else t, scope=scope, index=index, engine=engine,
                                   progress=progress)
        grouping, rank, meta, central_passes, settled = plan.group_at(forest, t)
    labels, master, sims = grouping.labels, grouping.master, grouping.sim
    node = np.arange(len(scope))
    is_master = master == node
    decided = decided_by(labels, master, meta, policy)
    forced = plan.boost is not None
    if forced:  # a reviewer's "make master" decided those groups
        decided[np.isin(master, np.flatnonzero(plan.boost))] = "reviewer"
    size = np.bincount(labels, minlength=len(scope))[labels]
    kept_flag = plan.kept
    would_suppress = ~is_master
    suppressed = would_suppress & ~kept_flag

    # group ids: duplicate groups by size desc then master id; singletons after, by id
    ids_arr = scope.ids
    grp_keys = np.unique(labels[size >= 2])
    grp_master_ids = ids_arr[master[grp_keys]] if len(grp_keys) else np.empty(0, object)
    grp_sizes = np.bincount(labels, minlength=len(scope))[grp_keys]
    g_order = sorted(range(len(grp_keys)), key=lambda k: (-int(grp_sizes[k]), str(grp_master_ids[k])))
    gid_of_label = np.zeros(len(scope), dtype=np.int64)
    gid_of_label[grp_keys[g_order]] = np.arange(1, len(grp_keys) + 1)
    group_id = gid_of_label[labels]
    single = size < 2
    n_groups = len(grp_keys)
    if single.any():
        s_nodes = np.flatnonzero(single)
        s_nodes = s_nodes[np.argsort(ids_arr[s_nodes].astype(str), kind="stable")]
        group_id[s_nodes] = np.arange(n_groups + 1, n_groups + 1 + len(s_nodes))

    scores = _scores(catalog, ids_arr)
    g_size, g_score = aggregate_scores(labels, scores, group_score)
    # built from buffers (arrow_numpy): pa.array would import pandas
    members = pa.table({
        "image_id": from_strings(ids_arr.tolist()),
        "group_id": from_numpy(np.asarray(group_id, dtype=np.int64)),
        "master_id": from_strings(ids_arr[master].tolist()),
        "is_master": from_numpy(np.asarray(is_master, dtype=bool)),
        "is_suppressed": from_numpy(np.asarray(suppressed, dtype=bool)),
        "sim_to_master": from_numpy(sims.astype(np.float32)),
        "group_size": from_numpy(np.asarray(g_size, dtype=np.int64)),
        "group_score": from_numpy(np.asarray(g_score, dtype=np.float64), null=np.isnan(g_score)),
        "decided_by": from_strings(decided.tolist()),
    })
    # reviewer's not-a-duplicate images: singletons of their own
    if not_dup:
        extra = sorted(not_dup)
        own = _scores(catalog, np.asarray(extra, dtype=object))
        members = pa.concat_tables([members, pa.table({
            "image_id": from_strings(extra),
            "group_id": from_numpy(np.arange(len(scope) + 1, len(scope) + 1 + len(extra), dtype=np.int64)),
            "master_id": from_strings(extra),
            "is_master": from_numpy(np.ones(len(extra), bool)),
            "is_suppressed": from_numpy(np.zeros(len(extra), bool)),
            "sim_to_master": from_numpy(np.ones(len(extra), np.float32)),
            "group_size": from_numpy(np.ones(len(extra), np.int64)),
            "group_score": from_numpy(np.asarray(own, dtype=np.float64), null=np.isnan(own)),
            "decided_by": pa.nulls(len(extra), pa.string()),
        })])

    # summary, with the chaining of the largest groups made visible
    weakest = group_weakest_links(grouping.links or forest, t, labels) if mode != "leader" else {}
    split = grouping.split_groups()
    comp_size = np.bincount(grouping.component, minlength=len(scope))[grouping.component]
    min_sim = np.full(len(scope), 2.0, dtype=np.float64)
    np.minimum.at(min_sim, labels, sims)
    largest: list[dict[str, Any]] = []
    for k in g_order[:top_groups]:
        lab = int(grp_keys[k])
        largest.append(dict(group_id=int(gid_of_label[lab]), size=int(grp_sizes[k]), master_id=str(grp_master_ids[k]),
                            weakest_link=round(float(weakest.get(lab, min_sim[lab])), 6),
                            min_sim_to_master=round(float(min_sim[lab]), 6), split=bool(split[lab]),
                            chain_size=int(comp_size[lab]), decided_by=decided[master[lab]]))
    n_total = members.num_rows
    n_supp = int(suppressed.sum())
    summary = dict(
        model=scope.model, threshold=t, mode=mode, bound=bound, window_s=grouping.window_s,
        window_link=grouping.window_link, grouping=plan.describe(), policy=policy_text, images=n_total, groups=n_groups,
        split_groups=int(len(np.unique(labels[split & (size >= 2)]))),
        suppressed=n_supp, retained=n_total - n_supp, group_score=group_score,
        largest_group=int(grp_sizes.max()) if len(grp_sizes) else 1,
        pairs=forest.pair_count(t) if mode == "components" or t >= forest.floor else None,
        largest_groups=largest,
        decided_by=_count_decided(decided[master[grp_keys]] if len(grp_keys) else []),
        captured=int((~np.isnan(plan.times)).sum()) if plan.times is not None else None,
        central_passes=central_passes if plan.uses_central else None,
        central_settled=settled if plan.uses_central else None,
        geometric_check=({"pairs_checked": plan.check_stats.get("checked", 0),
                          "rejected": plan.check_stats.get("rejected", 0)} if plan.checker is not None else None),
        overrides_respected=dict(keep=int((would_suppress & kept_flag).sum()),
                                 master=int(plan.boost.sum()) if forced else 0,
                                 not_duplicate=len(not_dup)),
    )
    summary["index"] = index_summary(index, forest, len(scope))
    if stale:
        summary["decisions_invalidated"] = {r: sum(1 for v in stale.values() if v == r) for r in ("changed", "vanished")}
    update = (forest.meta or {}).get("update")
    if update:
        summary["pass"] = {k: v for k, v in update.items() if k != "changed_ids"}
    summary.update(masters_changed(catalog, scope.model, ids_arr, is_master))
    if recomputed:
        summary["recomputed"] = recomputed
    result = DedupResult(t, mode, scope.model, policy_text, members, summary, None, dry_run, forest)
    if not dry_run:
        info = dict(model=scope.model, threshold=t, mode=mode, policy=policy_text,
                    scope="all" if ids is None else f"{len(base)} ids", scope_key=scope_key(ids),
                    n_images=n_total, n_groups=n_groups, n_suppressed=n_supp, n_retained=n_total - n_supp,
                    largest_group=summary["largest_group"], summary=summary)
        with catalog.transaction():
            if inputs is not None:  # the file was released during the pass: record only what it read
                now = inputs_digest(catalog, scope.model)
                if now != inputs:
                    what = ", ".join(k for k in inputs if inputs[k] != now[k])
                    raise InputsChanged(f"{catalog.path}: the catalog changed during the similarity pass ({what}); "
                                        "computed again with the catalog held")
            if stale:  # set aside in the run's own transaction: an interrupted dedup leaves them in place
                from .incremental import invalidate_decisions

                invalidate_decisions(catalog, stale)
            rec = catalog.record_run(info, members, replace=not keep_previous)  # completes the summary
        result.run_id, result.replaced, result.unchanged = rec.run_id, rec.replaced, rec.unchanged
    return result


def _scores(catalog: Catalog, ids: np.ndarray) -> np.ndarray:
    """``images.score`` of each id (NaN where missing), in the order given."""
    t = catalog.images(["id", "score"])
    pos = {k: i for i, k in enumerate(t["id"].to_pylist())}
    vals = to_float64(t["score"])
    take = np.fromiter((pos.get(i, -1) for i in ids.tolist()), dtype=np.int64, count=len(ids))
    out = np.full(len(ids), np.nan)
    out[take >= 0] = vals[take[take >= 0]]
    return out


def aggregate_scores(labels: np.ndarray, scores: np.ndarray, how: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """Per node: its group's size and its members' scores aggregated (sum, max or mean; NaN ignored).

    A group with no score at all gets NaN (stored as NULL).
    """
    n = len(labels)
    size = np.bincount(labels, minlength=n)
    have = ~np.isnan(scores)
    cnt = np.bincount(labels, weights=have.astype(np.float64), minlength=n)
    if how == "max":
        agg = np.full(n, -np.inf)
        np.maximum.at(agg, labels[have], scores[have])
    else:
        agg = np.bincount(labels, weights=np.where(have, scores, 0.0), minlength=n)
        if how == "mean":
            agg = np.divide(agg, cnt, out=np.zeros(n), where=cnt > 0)
    agg = np.where(cnt > 0, agg, np.nan)
    return size[labels], agg[labels]


def masters_changed(catalog: Catalog, model: str, scope_ids: np.ndarray, is_master: np.ndarray) -> dict[str, Any]:
    """How many masters of the latest applied run (same model), still in this pass, are masters no longer.

    A master is replaced only when its group gains a member the policy ranks higher (or merges
    with a group whose master ranks higher); images that left the pass are not counted.
    """
    run_id = catalog.scalar("SELECT max(id) FROM runs WHERE status = 'applied' AND model = ?", [model])
    if run_id is None:
        return {}
    prev = catalog.sql("SELECT image_id FROM run_members WHERE run_id = ? AND is_master", [int(run_id)])
    prev_set = set(prev.column(0).to_pylist())
    now_not_master = scope_ids[~is_master].tolist()
    return dict(masters_changed=sum(1 for i in now_not_master if i in prev_set), compared_with_run=int(run_id))


def scope_key(ids: Sequence[str] | None) -> str:
    """Which runs a run replaces: ``"all"`` for the whole collection, else a digest of the id list."""
    if ids is None:
        return "all"
    wanted = sorted(set(map(str, ids)))
    return f"ids:{len(wanted)}:" + hashlib.sha1("\n".join(wanted).encode()).hexdigest()[:16]


#: export columns, in order; optional ones appear when the run records them (other branches add them)
EXPORT_COLUMNS = ("image_id", "path", "group_id", "group_size", "master_id", "is_master", "is_suppressed",
                  "sim_to_master")
EXPORT_OPTIONAL = ("decided_by", "group_score")


def export_table(catalog: Catalog, run_id: int) -> pa.Table:
    """One row per image of a run, duplicate groups first (largest first, master first).

    ``group_id`` is NULL for an image with no duplicate (``group_size`` 1), so the distinct
    ``group_id`` values are exactly the run's duplicate groups (the summary's ``groups``).
    """
    catalog.run(run_id)
    have = {r[0] for r in catalog.con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'run_members'").fetchall()}
    extra = "".join(f", m.{c}" for c in EXPORT_OPTIONAL if c in have)
    return catalog.sql(
        f"""SELECT m.image_id, i.path, CASE WHEN s.n >= 2 THEN m.group_id END AS group_id, s.n AS group_size,
                   m.master_id, m.is_master, m.is_suppressed, m.sim_to_master{extra}
            FROM run_members m
            JOIN (SELECT group_id, count(*) AS n FROM run_members WHERE run_id = ? GROUP BY group_id) s USING (group_id)
            LEFT JOIN images i ON i.id = m.image_id
            WHERE m.run_id = ?
            ORDER BY s.n < 2, m.group_id, NOT m.is_master, m.image_id""", [run_id, run_id])


def export_run(catalog: Catalog, run_id: int, out: str | Path, fmt: str | None = None) -> int:
    """Write a run's membership (one row per image) as CSV, Parquet or JSON; returns rows written."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
    if fmt not in ("csv", "parquet", "json"):
        raise InputError(f"export format {fmt!r}: use csv, parquet or json")
    check_output_file(out)  # before the query: a bad --out is refused at once
    table = export_table(catalog, run_id)
    with atomic_output(out) as tmp, open(tmp, "xb") as fh:  # never a half file, never a stray one
        if fmt == "csv":
            pacsv.write_csv(table, fh)
        elif fmt == "parquet":
            pq.write_table(table, fh)
        else:
            fh.write((json.dumps(table.to_pylist(), indent=None, default=float) + "\n").encode("utf-8"))
    return table.num_rows

