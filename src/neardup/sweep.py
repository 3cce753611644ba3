"""Sweep: what each threshold would do (pairs, groups, suppressed, retained, largest group).

All thresholds come from one similarity pass: the forest is built once at the lowest threshold
and cut at every other one (and cached, so a later dedup or sweep above that floor is free).
The counts are those of the grouping a run would use (:class:`neardup.dedup.RunPlan`: the
model's mode -- bounded for SSCD, with its capture-time window --, the master policy and the
reviewer decisions), computed from that one forest: a sweep row at t says what ``dedup`` at t
would print. ``pairs`` counts pairs of images with similarity >= t, whatever the grouping.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .catalog import Catalog
from .dedup import RunPlan, check_threshold, plan_run, similarity_forest
from .errors import InputError
from .similarity.forest import SimilarityForest

#: the seed's CLIP-scale sweep, for vectors of a model neardup does not know
DEFAULT_THRESHOLDS = (0.99, 0.98, 0.97, 0.95)
SWEEP_KEYS = ("threshold", "pairs", "groups", "suppressed", "retained", "largest_group")


def default_thresholds(catalog: Catalog, model: str | None = None) -> tuple[list[float], float]:
    """``(thresholds, default)``: what a sweep shows when no thresholds are given, high to low.

    The model's own scale (``sweep_thresholds`` in the embedding registry; the seed's CLIP
    0.99-0.95 for vectors of a model neardup does not know), moved so that it is centred on the
    default threshold for this catalog and model (:func:`neardup.thresholds.default_threshold`:
    a calibrated threshold when there is one, else the model's), which is always among them.
    """
    from .embed import canonical_name, get_model
    from .thresholds import FALLBACK_THRESHOLD, default_threshold

    name = model or catalog.default_model()
    t = float(default_threshold(catalog, name))
    try:
        m = get_model(canonical_name(name))
        base, t0 = tuple(m.sweep_thresholds), float(m.default_threshold)
    except InputError:
        base, t0 = DEFAULT_THRESHOLDS, FALLBACK_THRESHOLD
    if not any(abs(b - t0) < 1e-9 for b in base):
        base = (*base, t0)
    values = {round(b + (t - t0), 4) for b in base if abs(b - t0) > 1e-9}
    out = sorted([v for v in values if 0.0 < v <= 1.0 and abs(v - t) > 1e-9] + [t], reverse=True)
    return out, t


def parse_thresholds(text: str | Sequence[float]) -> list[float]:
    """``"0.99,0.98"`` -> ``[0.99, 0.98]``, each checked to lie in (0, 1]."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"thresholds {text!r}: give numbers separated by commas, e.g. 0.99,0.98") from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise InputError("no thresholds given")
    return [check_threshold(v) for v in values]


def plan_rows(plan: RunPlan, forest: SimilarityForest, thresholds: Sequence[float]) -> list[dict]:
    """Sweep rows (:data:`SWEEP_KEYS`) of ``plan``'s grouping at each threshold, from one forest.

    Components without "keep" decisions: one union-find pass over the forest for every threshold
    (:meth:`SimilarityForest.sweep`). Otherwise each threshold is grouped as ``dedup`` groups it
    (bounded: the single-linkage tree cut to the bound, from the forest -- or the capture-time
    links built once at the lowest threshold).
    """
    ts = [float(t) for t in thresholds]
    extra = len(plan.not_dup)
    if plan.mode == "components" and not plan.kept.any():
        rows = forest.sweep(ts)
        for r in rows:
            r["retained"] += extra
        return rows
    links = plan.links(forest, min(ts)) if ts else None
    rows, seen = [], {}
    for t in ts:
        # thresholds that cut the same forest edges (and links) group identically: grouped once
        key = (forest.n_edges_at(t), links.n_edges_at(t) if links is not None else None)
        if key not in seen:
            seen[key] = plan.counts(plan.group_at(forest, t, links=links)[0])
        rows.append(dict(threshold=t, pairs=forest.pair_count(t), **seen[key]))
    return rows


def sweep_plan(catalog: Catalog, thresholds: Sequence[float], *, model: str | None = None,
               ids: Sequence[str] | None = None, index: str = "exact", engine: str = "local",
               progress: Callable[[int, int], None] | None = None, **grouping: Any) -> tuple[RunPlan, SimilarityForest]:
    """The run plan (model defaults, reviewer decisions) and the one forest a sweep of ``thresholds`` reads.

    ``grouping``: ``mode``, ``bound``, ``window``, ``window_link``, ``prefer`` as ``dedup`` takes
    them (default: the model's, as a plain ``dedup`` uses).
    """
    ts = [check_threshold(t) for t in thresholds]
    if not ts:
        raise InputError("no thresholds given")
    plan = plan_run(catalog, model=model, ids=ids, **grouping)
    forest = similarity_forest(catalog, min(ts), scope=plan.scope, index=index, engine=engine, progress=progress)
    return plan, forest


def sweep(catalog: Catalog, thresholds: Sequence[float] | None = None, *, model: str | None = None,
          ids: Sequence[str] | None = None, index: str = "exact", engine: str = "local",
          progress: Callable[[int, int], None] | None = None, **grouping: Any) -> list[dict]:
    """One row per threshold with the keys in :data:`SWEEP_KEYS`, in the order given.

    Counted under the grouping ``dedup`` uses by default for the model, or the one given in
    ``grouping`` (``mode``, ``bound``, ``window``, ``window_link``, ``prefer``; see :func:`plan_rows`).
    Without ``thresholds``: :func:`default_thresholds` (the model's scale, centred on its default).
    """
    if thresholds is None:
        thresholds = default_thresholds(catalog, model)[0]
    plan, forest = sweep_plan(catalog, thresholds, model=model, ids=ids, index=index, engine=engine, progress=progress,
                              **grouping)
    return plan_rows(plan, forest, thresholds)
