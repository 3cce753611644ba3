"""Master selection: an ordered policy of keys decides which image of a group is kept.

The default, ``score desc, brightness desc, id asc``, is deterministic: the same collection
gives the same masters whatever order its rows arrive in. Missing values sort last.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError

#: key name -> (image column or expression, default direction is descending?)
POLICY_KEYS: dict[str, tuple[str, bool]] = {
    "score": ("score", True),
    "brightness": ("brightness", True),
    "resolution": ("width * height", True),
    "file_size": ("file_size", True),
    "newest": ("captured_at", True),
    "oldest": ("captured_at", False),
    "path": ("path", False),
    "id": ("id", False),
}
DEFAULT_POLICY = "score,brightness"


def parse_policy(spec: str | Sequence[str] | None) -> list[tuple[str, bool]]:
    """Parse ``"score,brightness"`` (or ``"score:asc,-brightness"``, ``"score desc"``) into ``[(key, descending)]``.

    ``id asc`` is always appended as the final, total tie-break.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: list[tuple[str, bool]] = []
    for raw in parts:
        p = raw.strip()
        if not p:
            continue
        desc = None
        if p.startswith("-"):
            p, desc = p[1:], False
        if ":" in p or " " in p:  # "score:asc", or "score asc" as runs.policy stores it
            p, d = (x.strip() for x in (p.split(":", 1) if ":" in p else p.split(None, 1)))
            if d not in ("asc", "desc"):
                raise InputError(f"policy key {raw!r}: direction must be asc or desc")
            desc = d == "desc"
        if p not in POLICY_KEYS:
            raise InputError(f"unknown policy key {p!r}; use any of {', '.join(POLICY_KEYS)}")
        out.append((p, POLICY_KEYS[p][1] if desc is None else desc))
    if not out or out[-1][0] != "id":
        out.append(("id", False))
    return out


def policy_columns(policy: list[tuple[str, bool]]) -> list[str]:
    """The image columns a policy reads."""
    cols = {"id"}
    for key, _ in policy:
        expr = POLICY_KEYS[key][0]
        cols.update(c.strip() for c in expr.split("*"))
    return sorted(cols)


def _key_array(table: pa.Table, key: str, descending: bool) -> np.ndarray:
    """A float64 sort key where smaller sorts first and missing values sort last."""
    expr = POLICY_KEYS[key][0]
    if "*" in expr:
        a, b = (c.strip() for c in expr.split("*"))
        col = pc.multiply(pc.cast(table[a], pa.float64()), pc.cast(table[b], pa.float64()))
    else:
        col = table[expr] if expr in table.column_names else pa.nulls(table.num_rows)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type):
        vals = np.asarray(col.to_pylist(), dtype=object)
        present = np.array([v is not None for v in vals])
        ranks = np.full(len(vals), np.inf)
        if present.any():
            _, inv = np.unique(vals[present].astype(str), return_inverse=True)
            ranks[present] = inv
        key_vals = ranks
    else:
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64())
        key_vals = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        key_vals = np.where(np.isnan(key_vals), np.inf, key_vals)
    if descending:
        key_vals = np.where(np.isinf(key_vals), np.inf, -key_vals)
    return key_vals


def priority_rank(table: pa.Table, policy: list[tuple[str, bool]] | str | None = None) -> np.ndarray:
    """Rank of each row under the policy (0 = the best candidate for master)."""
    pol = parse_policy(policy if policy is not None else DEFAULT_POLICY) if not isinstance(policy, list) else policy
    keys = [_key_array(table, k, d) for k, d in pol]
    order = np.lexsort(keys[::-1])  # lexsort: last key is primary
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def select_masters(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each node, the node index of its group's master (the member with the lowest rank)."""
    labels = np.asarray(labels)
    n = len(labels)
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, labels, rank)
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    return by_rank[best[labels]]
