"""Sweep: what each threshold would do (pairs, groups, suppressed, retained, largest group).

All thresholds come from one similarity pass: the forest is built once at the lowest threshold
and cut at every other one (and cached, so a later dedup or sweep above that floor is free).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .catalog import Catalog
from .dedup import check_threshold, load_scope, similarity_forest
from .errors import InputError

DEFAULT_THRESHOLDS = (0.99, 0.98, 0.97, 0.95)
SWEEP_KEYS = ("threshold", "pairs", "groups", "suppressed", "retained", "largest_group")


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


def sweep(catalog: Catalog, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, model: str | None = None,
          ids: Sequence[str] | None = None, index: str = "exact", engine: str = "local",
          progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One row per threshold with the keys in :data:`SWEEP_KEYS`, in the order given."""
    ts = [check_threshold(t) for t in thresholds]
    if not ts:
        raise InputError("no thresholds given")
    scope = load_scope(catalog, model, ids)
    forest = similarity_forest(catalog, min(ts), scope=scope, index=index, engine=engine, progress=progress)
    return forest.sweep(ts)
