"""Master selection: an ordered policy of keys decides which image of a group is kept.

A policy is a list of keys, compared in order (lexicographically); ``id asc`` is always the
last, total tie-break, so the same collection gives the same masters whatever order its rows
arrive in. Missing values sort last.

The default, :data:`DEFAULT_POLICY`, is the seed's rule on top — ``score`` first where the
catalog has scores — and otherwise the best-quality copy: the most content pixels, colour over
greyscale, the higher JPEG quality, no padding, no clipped pixels, the sharper, the one most
like the rest of its group, and finally the brighter (the seed's last key). The quality keys
compare *bucketed* measures (``quality.py``: e.g. content pixels in 2% steps), so that
measurement noise between two equal copies is a tie and the next key decides. Where a
catalog has none of a key's measures (imported embeddings), the key ties everywhere and is
skipped: ``--prefer score,brightness`` and the default give the seed's table there.

Which key decided a group — ``decided_by``: the first policy key at which the master's value
differs from its runner-up's (the member that would be master without it) — is recorded per
group by :func:`decided_by`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_numpy import from_numpy, to_float64
from .defaults import DEFAULT_POLICY, QUALITY_POLICY  # noqa: F401  (defined there: the CLI reads them without numba)
from .errors import InputError
from .jit import nb

Values = Callable[[pa.Table], np.ndarray]


def _num(table: pa.Table, col: str) -> np.ndarray:
    """A column as float64 (NaN where missing or absent)."""
    if col not in table.column_names:
        return np.full(table.num_rows, np.nan)
    c = table[col]
    if pa.types.is_timestamp(c.type) or pa.types.is_date(c.type):
        c = pc.cast(pc.cast(c, pa.timestamp("us")), pa.int64())
    if pa.types.is_boolean(c.type):
        c = pc.cast(c, pa.int8())
    return to_float64(c)


def _log_bucket(x: np.ndarray, step: float) -> np.ndarray:
    """``x`` in buckets of a relative ``step`` (log scale); values ≤ 0 go to the lowest bucket."""
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.floor(np.log(np.maximum(x, 1e-300)) / np.log1p(step))
    return np.where(np.isnan(x), np.nan, b)


def _lin_bucket(x: np.ndarray, step: float) -> np.ndarray:
    return np.floor(x / step)


def _content(t: pa.Table) -> np.ndarray:
    px = _num(t, "width") * _num(t, "height")
    border = _num(t, "border")
    return _log_bucket(px * (1.0 - np.where(np.isnan(border), 0.0, border)), CONTENT_STEP)


@dataclass(frozen=True)
class PolicyKey:
    """One policy key: the image columns it reads, its natural direction and how its value is made."""

    columns: tuple[str, ...]
    descending: bool
    values: Values | None = None     # None: the single column as is (strings rank by value)
    doc: str = ""


#: bucket widths of the quality keys (chosen from the measured spread of equal copies, see
#: docs/benchmarks-images.md "Which copy is kept")
CONTENT_STEP = 0.02        # content pixels: 2% (padding trimmed on the thumbnail is within ~1.5%)
BORDER_STEP = 0.02         # border share of the area
CLIPPED_STEP = 0.005       # clipped share of the pixels: half a percent
SHARPNESS_STEP = 0.25      # sharpness: 25% (a re-save moves it by < 5%, a blur by > 10%)
CENTRAL_STEP = 0.002       # mean similarity to the rest of the group
COLOUR_MIN = 1.0           # colourfulness below this is greyscale
JPEG_HIGH = 90.0           # JPEG quality from which files tie (visually lossless)
JPEG_STEP = 5.0

#: key name -> what it compares. ``central`` is relative to the group: dedup computes it.
POLICY_KEYS: dict[str, PolicyKey] = {
    "score": PolicyKey(("score",), True, doc="the catalog's score column"),
    "brightness": PolicyKey(("brightness",), True, doc="mean luminance"),
    "resolution": PolicyKey(("width", "height"), True, lambda t: _num(t, "width") * _num(t, "height"),
                            "width × height"),
    "content": PolicyKey(("width", "height", "border"), True, _content,
                         "width × height less uniform borders, in 2% steps"),
    "colour": PolicyKey(("colorfulness",), True,
                        lambda t: np.where(np.isnan(c := _num(t, "colorfulness")), np.nan, (c >= COLOUR_MIN) * 1.0),
                        "colour (1) over greyscale (0)"),
    "jpeg_quality": PolicyKey(("jpeg_quality",), True,
                              lambda t: _lin_bucket(np.minimum(_num(t, "jpeg_quality"), JPEG_HIGH), JPEG_STEP),
                              "estimated JPEG quality (100 for lossless files) in steps of 5; 90 and above "
                              "tie (visually lossless: a camera's 92 is no evidence against an export's 95)"),
    "border": PolicyKey(("border",), False, lambda t: _lin_bucket(_num(t, "border"), BORDER_STEP),
                        "share of the area in uniform edge rows/columns, in 2% steps"),
    "clipped": PolicyKey(("clipped",), False, lambda t: _lin_bucket(_num(t, "clipped"), CLIPPED_STEP),
                         "share of pixels at black or white, in 0.5% steps"),
    "sharpness": PolicyKey(("sharpness",), True, lambda t: _log_bucket(_num(t, "sharpness"), SHARPNESS_STEP),
                           "Laplacian variance over image variance (128 px greyscale), in 25% steps"),
    "sharpness_raw": PolicyKey(("sharpness",), True, doc="sharpness, unbucketed"),
    "central": PolicyKey(("central",), True, lambda t: _lin_bucket(_num(t, "central"), CENTRAL_STEP),
                         "mean similarity to the other members of the group (the source of edited "
                         "copies is nearest to all of them), in 0.002 steps"),
    "file_size": PolicyKey(("file_size",), True, doc="bytes on disk"),
    "newest": PolicyKey(("captured_at",), True, doc="EXIF capture time"),
    "oldest": PolicyKey(("captured_at",), False, doc="EXIF capture time"),
    "path": PolicyKey(("path",), False, doc="file path"),
    "modified": PolicyKey(("mtime",), False, doc="file modification time, oldest first (a byte-identical "
                          "copy is usually written after the file it copies)"),
    "id": PolicyKey(("id",), False, doc="image id"),
}
#: keys computed per group by dedup, not read from the images table
GROUP_KEYS = frozenset({"central"})
SEED_POLICY = "score,brightness"


def parse_policy(spec: str | Sequence[str] | None) -> list[tuple[str, bool]]:
    """Parse ``"score,brightness"`` (or ``"score:asc,-brightness"``, ``"score desc"``) into ``[(key, descending)]``.

    ``quality`` expands to the default's quality keys. ``id asc`` is always appended as the
    final, total tie-break.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: list[tuple[str, bool]] = []
    for raw in parts:
        p = raw.strip()
        if not p:
            continue
        if p == "quality":
            out.extend((k, POLICY_KEYS[k].descending) for k in QUALITY_POLICY.split(","))
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
            raise InputError(f"unknown policy key {p!r}; use any of {', '.join(POLICY_KEYS)}, quality")
        out.append((p, POLICY_KEYS[p].descending if desc is None else desc))
    if not out or out[-1][0] != "id":
        out.append(("id", False))
    return out


def policy_text(policy: list[tuple[str, bool]]) -> str:
    """``"score desc,brightness desc,id asc"``: how runs store a policy (parses back)."""
    return ",".join(f"{k} {'desc' if d else 'asc'}" for k, d in policy)


def policy_columns(policy: list[tuple[str, bool]]) -> list[str]:
    """The image columns a policy reads (group keys such as ``central`` excluded)."""
    cols = {"id"}
    for key, _ in policy:
        if key not in GROUP_KEYS:
            cols.update(POLICY_KEYS[key].columns)
    return sorted(cols)


def key_values(table: pa.Table, key: str, descending: bool) -> np.ndarray:
    """A float64 sort key where smaller sorts first and missing values sort last (+inf)."""
    spec = POLICY_KEYS[key]
    if spec.values is None:
        col = table[spec.columns[0]] if spec.columns[0] in table.column_names else pa.nulls(table.num_rows)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type):
            vals = np.asarray(col.to_pylist(), dtype=object)
            present = np.array([v is not None for v in vals], dtype=bool)
            ranks = np.full(len(vals), np.inf)
            if present.any():
                _, inv = np.unique(vals[present].astype(str), return_inverse=True)
                ranks[present] = inv
            return ranks if not descending else np.where(np.isinf(ranks), np.inf, -ranks)
        key_vals = _num(table, spec.columns[0])
    else:
        key_vals = np.asarray(spec.values(table), dtype=np.float64)
    key_vals = np.where(np.isnan(key_vals) | np.isinf(key_vals), np.inf, key_vals)
    if descending:
        key_vals = np.where(np.isinf(key_vals), np.inf, -key_vals)
    return key_vals


def _as_policy(policy: list[tuple[str, bool]] | str | None) -> list[tuple[str, bool]]:
    return parse_policy(policy if policy is not None else DEFAULT_POLICY) if not isinstance(policy, list) else policy


def priority_rank(table: pa.Table, policy: list[tuple[str, bool]] | str | None = None) -> np.ndarray:
    """Rank of each row under the policy (0 = the best candidate for master)."""
    keys = [key_values(table, k, d) for k, d in _as_policy(policy)]
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


@nb.njit(cache=True)
def _centrality(X: np.ndarray, order: np.ndarray, starts: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """For each group (rows ``order[starts[g]:starts[g + 1]]``): sum its vectors in float64, then
    each member's ``(x · sum − x · x) / (k − 1)``. Reads rows in place (no gathered copy)."""
    d = X.shape[1]
    acc = np.zeros(d)
    for g in range(len(starts) - 1):
        a, b = starts[g], starts[g + 1]
        acc[:] = 0.0
        for p in range(a, b):
            r = order[p]
            for j in range(d):
                acc[j] += X[r, j]
        for p in range(a, b):
            r = order[p]
            dot = 0.0
            sq = 0.0
            for j in range(d):
                x = np.float64(X[r, j])
                dot += x * acc[j]
                sq += x * x
            out[r] = (dot - sq) / (b - a - 1)


def group_centrality(vectors: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Each node's mean cosine similarity to the other members of its group (NaN for singletons).

    For unit vectors this is ``(x_i · Σ_group x_j − x_i · x_i) / (k − 1)``: two passes over the
    grouped rows, O(n·d) whatever the group sizes, reading the (possibly memory-mapped) matrix in
    place. Sums run in float64 over members sorted by group and then ``ids`` (when given), so the
    value does not depend on the order rows arrive in.
    """
    labels = np.asarray(labels)
    n = len(labels)
    out = np.full(n, np.nan)
    sizes = np.bincount(labels, minlength=n)
    in_group = np.flatnonzero(sizes[labels] >= 2)
    if not len(in_group):
        return out
    sort_keys = (np.asarray(ids)[in_group].astype(str),) if ids is not None else (in_group,)
    order = in_group[np.lexsort(sort_keys + (labels[in_group],))]   # by group, then id
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1], True]).astype(np.int64)
    X = vectors if vectors.dtype in (np.float32, np.float64) else np.asarray(vectors, dtype=np.float32)
    _centrality(X, order.astype(np.int64), starts, out)
    return out


def decided_by(labels: np.ndarray, master: np.ndarray, table: pa.Table,
               policy: list[tuple[str, bool]] | str | None = None) -> np.ndarray:
    """Per node, the policy key that decided its group's master (None for singletons).

    The runner-up is the member with the best rank after the master; the deciding key is the
    first key of the policy at which the master's value differs from the runner-up's (the
    master's is then the better one, as the ranking is lexicographic over the same values).
    """
    pol = _as_policy(policy)
    labels = np.asarray(labels)
    n = len(labels)
    out = np.full(n, None, dtype=object)
    if n == 0:
        return out
    keys = [key_values(table, k, d) for k, d in pol]
    rank = np.lexsort(keys[::-1])
    r = np.empty(n, dtype=np.int64)
    r[rank] = np.arange(n)
    non_master = master != np.arange(n)
    # runner-up per group: the non-master with the lowest rank
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, labels[non_master], r[non_master])
    grp = np.flatnonzero(best != np.iinfo(np.int64).max)   # labels of groups with ≥ 2 members
    if not len(grp):
        return out
    runner = rank[best[grp]]
    m_of_label = np.full(n, -1, dtype=np.int64)
    m_of_label[labels[~non_master]] = np.flatnonzero(~non_master)
    mast = m_of_label[grp]
    K = np.stack(keys)                                   # keys × nodes
    diff = K[:, mast] != K[:, runner]
    first = np.where(diff.any(axis=0), diff.argmax(axis=0), len(pol) - 1)
    names = np.array([k for k, _ in pol], dtype=object)
    by_label = np.full(n, None, dtype=object)
    by_label[grp] = names[first]
    out[:] = by_label[labels]
    return out


def master_of_group(meta: pa.Table, policy: list[tuple[str, bool]] | str | None = None,
                    vectors: np.ndarray | None = None) -> tuple[int, str | None]:
    """One group's master (row index into ``meta``) and the policy key that decided it.

    ``meta`` holds the group's members (the policy's image columns); group keys (``central``)
    are computed over exactly these members from ``vectors`` (their rows, same order) -- what a
    reviewer decision that changes a group's membership needs to re-decide its master as dedup
    would. ``decided_by`` is None for a group of one.
    """
    pol = _as_policy(policy)
    n = meta.num_rows
    if any(k in GROUP_KEYS for k, _ in pol) and "central" not in meta.column_names:
        cen = group_centrality(np.asarray(vectors, dtype=np.float32), np.zeros(n, np.int64)) if vectors is not None \
            else np.full(n, np.nan)
        meta = meta.append_column("central", from_numpy(np.asarray(cen, dtype=np.float64)))
    rank = priority_rank(meta, pol)
    m = int(np.argmin(rank))
    master = np.full(n, m, dtype=np.int64)
    return m, decided_by(np.zeros(n, np.int64), master, meta, pol)[m] if n >= 2 else None
