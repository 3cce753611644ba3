"""What the review pages show, read from the catalog: shared by the web app and the static report.

Every function takes an open :class:`~neardup.catalog.Catalog` and returns plain dicts/lists,
so the same Jinja templates render both the live app and the one-file report. Nothing here
writes to the catalog except the cached similarity forest that ``sweep`` may build.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..catalog import Catalog
from ..errors import NeardupError

#: Members shown per page of a group (a 6,810-member group is 114 pages, each one query).
MEMBERS_PER_PAGE = 60
#: Groups listed per page.
GROUPS_PER_PAGE = 25
#: Member sort orders of a group page.
MEMBER_SORTS = {
    "sim_asc": "least similar to the master first",
    "sim_desc": "most similar first",
    "id": "by id",
}
#: Largest group for which the weakest link is found by a dense maximum spanning tree.
DENSE_MST_MAX = 5000
#: The similarity pass for the sweep is computed on page load only up to this many vectors (~3 s at 12k).
SWEEP_AUTO_MAX = 25_000

_SHA = re.compile(r"^[0-9a-f]{64}$")

def _one(cat: Catalog, query: str, params: Sequence[Any] = ()) -> tuple | None:
    """First row of a query, fully fetched (DuckDB 2 refuses new work while a result is unfinished)."""
    rows = cat.con.execute(query, list(params)).fetchall()
    return rows[0] if rows else None


_IMAGE_COLS = ("id", "path", "sha256", "width", "height", "brightness", "score", "cluster_id", "is_suppressed")


# -- images --------------------------------------------------------------------------------

def thumbnail_file(cat: Catalog, sha256: str | None) -> Path | None:
    """The scanner's thumbnail for a content hash, if it exists (hash checked: no path tricks)."""
    if not sha256 or not _SHA.match(sha256):
        return None
    try:
        from ..sources import thumbnail_path
    except ImportError:  # pragma: no cover - sources is part of the core package
        p = cat.sidecar / "thumbs" / sha256[:2] / f"{sha256}.jpg"
    else:
        p = thumbnail_path(cat.sidecar, sha256)
    return p if p.is_file() else None


def image_source(cat: Catalog, row: dict[str, Any]) -> tuple[str, Path] | None:
    """Where pixels for an image row come from: ``("thumb", file)``, ``("file", path)`` or None."""
    t = thumbnail_file(cat, row.get("sha256"))
    if t is not None:
        return "thumb", t
    p = row.get("path")
    if p:
        try:
            pp = Path(p)
            if pp.is_absolute() and pp.is_file():
                return "file", pp
        except (OSError, ValueError):
            return None
    return None


def image_rows(cat: Catalog, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Catalog facts of ``ids`` (current suppression, reviewer decisions, whether pixels exist)."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    if not ids:
        return {}
    have = set(cat.image_columns())
    cols = ", ".join(f'"{c}"' for c in _IMAGE_COLS if c in have)
    out: dict[str, dict[str, Any]] = {}
    for s in range(0, len(ids), 500):
        chunk = ids[s:s + 500]
        marks = ", ".join("?" * len(chunk))
        for r in cat.sql(f"SELECT {cols} FROM images WHERE id IN ({marks})", chunk).to_pylist():
            out[r["id"]] = r
        for image_id, kind in cat.con.execute(f"SELECT image_id, kind FROM overrides WHERE image_id IN ({marks})",
                                              chunk).fetchall():
            if image_id in out:
                out[image_id].setdefault("overrides", set()).add(kind)
    for r in out.values():
        r.setdefault("overrides", set())
        r["has_pixels"] = image_source(cat, r) is not None
    return out


def image_row(cat: Catalog, image_id: str) -> dict[str, Any] | None:
    """One image's row (see :func:`image_rows`), or None when the id is not in the catalog."""
    return image_rows(cat, [image_id]).get(image_id)


# -- runs and overview ---------------------------------------------------------------------

def runs(cat: Catalog) -> list[dict[str, Any]]:
    """Every run, newest first, with its summary."""
    return list(reversed(cat.runs()))


def pick_run(cat: Catalog, run_id: int | None) -> dict[str, Any] | None:
    """The run asked for, else the latest applied run, else the latest run; None when there is none."""
    if run_id is not None:
        try:
            return cat.run(int(run_id))
        except NeardupError:
            return None
    rid = cat.latest_run_id("applied")
    if rid is None:
        rid = cat.latest_run_id(None)
    return None if rid is None else cat.run(rid)


def counts(cat: Catalog) -> dict[str, int]:
    """Collection size, visible, suppressed, and reviewer decisions by kind."""
    row = _one(cat, "SELECT count(*), count(*) FILTER (WHERE is_suppressed) FROM images")
    ov = dict(cat.con.execute("SELECT kind, count(*) FROM overrides GROUP BY kind").fetchall())
    n, supp = int(row[0]), int(row[1])
    return dict(images=n, suppressed=supp, visible=n - supp, keep=int(ov.get("keep", 0)),
                master=int(ov.get("master", 0)), not_duplicate=int(ov.get("not_duplicate", 0)))


def status_counts(cat: Catalog, run_id: int | None = None) -> dict[str, Any]:
    """The counts every page shows in its status line, all read from the catalog now.

    Retained is the number of rows of the ``visible`` view (what downstream reads), suppressed the
    rest of the catalog; reviewed/total are the duplicate groups of ``run_id`` (default: the latest
    applied run) that have a review decision, of all its duplicate groups.
    """
    from ..group_review import progress

    n = int(_one(cat, "SELECT count(*) FROM images")[0])
    retained = int(_one(cat, "SELECT count(*) FROM visible")[0])
    r = pick_run(cat, run_id) if run_id is not None else pick_run(cat, None)
    reviewed, total = progress(cat, r["id"]) if r else (0, 0)
    return dict(run=r["id"] if r else None, reviewed=reviewed, total=total, retained=retained,
                suppressed=n - retained, images=n)


def default_threshold(cat: Catalog, model: str | None = None) -> float | None:
    """The default threshold for this catalog and model (:mod:`neardup.thresholds`); None without embeddings."""
    from ..thresholds import default_threshold as catalog_default

    try:
        return float(catalog_default(cat, model))
    except Exception:  # no embeddings yet: nothing to centre on
        return None


def centre(cat: Catalog, run: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """``(threshold the sweep and explorer centre on, default threshold)``: the run's, else the default."""
    default = default_threshold(cat, run["model"] if run else None)
    return (float(run["threshold"]) if run else default), default


def sweep_range(chosen: float | None) -> tuple[float, float]:
    """The similarity range the sweep chart and explorer cover: 0.95–1.00 unless a run chose lower."""
    if chosen is None or chosen >= 0.96:
        return 0.95, 1.0
    return max(0.05, round(chosen - 0.1, 2)), 1.0


def cached_floor(cat: Catalog, model: str) -> float | None:
    """The lowest floor of a whole-collection similarity forest already on disk for ``model`` (None: none)."""
    from ..incremental import whole_catalog_forests

    try:
        found = whole_catalog_forests(cat, model)
    except Exception:
        return None
    return min(f for f, _ in found) if found else None


def run_grouping(run: dict[str, Any] | None) -> dict[str, Any]:
    """The grouping options of a run (mode, bound, capture-time window, policy), for a sweep that counts like it."""
    if not run:
        return {}
    s = run.get("summary") or {}
    if isinstance(s, str):
        import json

        s = json.loads(s) if s else {}
    return dict(mode=run.get("mode") or s.get("mode"), bound=s.get("bound"), window=s.get("window_s") or 0,
                window_link=s.get("window_link"), prefer=run.get("policy") or None,
                verify=s.get("geometric_check") is not None)


def sweep_data(cat: Catalog, chosen: float | None, model: str | None = None, *,
               compute: bool | None = None, default: float | None = None,
               run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sweep rows over :func:`sweep_range` (plus the chosen threshold) or why there are none.

    Counted under ``run``'s grouping (mode, bound, capture-time window, policy) when given, else
    under the one a plain ``dedup`` would use; ``grouping`` names it.

    Built from one similarity pass (cached beside the catalog). On page load the pass is
    computed only for collections up to :data:`SWEEP_AUTO_MAX` vectors; above that the chart
    uses whatever pass is cached (a dedup at 0.98 caches one for 0.98–1.00) and says which
    command widens it.
    """
    lo, hi = sweep_range(chosen)
    edges = {round(x, 6) for band in bands_for(chosen) for x in band}
    marks = {round(v, 6) for v in (chosen, default) if v is not None and lo <= v <= hi}
    ts = sorted({round(float(x), 4) for x in np.linspace(lo, hi, 21)} | edges | marks)
    ts = [t for t in ts if 0 < t <= 1]
    try:
        models = cat.embedding_models()
    except Exception:
        models = []
    if not models:
        return dict(rows=[], chosen=chosen, default=default, lo=lo, hi=hi, reason="no embeddings in this catalog yet")
    model = model or cat.default_model()
    n = next((m["count"] for m in models if m["model"] == model), 0)
    note = None
    if compute is None:
        compute = n <= SWEEP_AUTO_MAX
        if not compute:
            f = cached_floor(cat, model)
            if f is not None and f < 1.0:
                compute = True
                if f > lo + 1e-9:
                    lo = math.ceil(f * 1000 - 1e-6) / 1000
                    ts = [t for t in ts if t >= f - 1e-12]
                    if len(ts) < 5:
                        ts = sorted({round(float(x), 4) for x in np.linspace(max(lo, f), hi, 11)} | set(ts))
                        ts = [t for t in ts if t >= f - 1e-12]
                    note = (f"limited to {f:g}–1.00 (the similarity pass cached by the last run); "
                            f"`neardup sweep --thresholds {sweep_range(chosen)[0]},{hi}` widens it")
    if not compute:
        return dict(rows=[], chosen=chosen, default=default, lo=lo, hi=hi, model=model,
                    reason=f"{n:,} vectors: run `neardup sweep --thresholds {lo},{hi}` once to compute the sweep")
    from ..sweep import plan_rows, sweep_plan

    plan, forest = sweep_plan(cat, ts, model=model, **run_grouping(run))
    rows = plan_rows(plan, forest, ts)
    return dict(rows=rows, chosen=chosen, default=default, lo=lo, hi=hi, model=model, reason=None, note=note,
                grouping=plan.describe())


def sweep_svg(sweep: dict[str, Any], width: int = 720, height: int = 300) -> str:
    """An inline SVG line chart of retained and suppressed images vs threshold, chosen one marked.

    Plain SVG (no script, no fonts to fetch) so it works offline and in the static report. The
    text in it is numbers only (nothing user-supplied).
    """
    rows = sorted(sweep.get("rows") or [], key=lambda r: r["threshold"])
    if len(rows) < 2:
        return ""
    ml, mr, mt, mb = 64, 16, 16, 44
    pw, ph = width - ml - mr, height - mt - mb
    x0, x1 = rows[0]["threshold"], rows[-1]["threshold"]
    ymax = max(max(r["retained"], r["suppressed"]) for r in rows) or 1
    ymax = _nice_ceiling(ymax)

    def X(t: float) -> float:
        return ml + (t - x0) / (x1 - x0 or 1) * pw

    def Y(v: float) -> float:
        return mt + ph - v / ymax * ph

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="retained and suppressed images by threshold" xmlns="http://www.w3.org/2000/svg">']
    for k in range(5):
        v = ymax * k / 4
        y = Y(v)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_short(v)}</text>')
    ticks = np.linspace(x0, x1, 6)
    for t in ticks:
        parts.append(f'<text x="{X(t):.1f}" y="{mt + ph + 18}" text-anchor="middle" class="tick">{t:.3f}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" class="axis">'
                 f'similarity threshold</text>')
    for key, cls in (("retained", "s-retained"), ("suppressed", "s-suppressed")):
        pts = " ".join(f"{X(r['threshold']):.1f},{Y(r[key]):.1f}" for r in rows)
        parts.append(f'<polyline points="{pts}" class="{cls}"/>')
        for r in rows:
            parts.append(f'<circle cx="{X(r["threshold"]):.1f}" cy="{Y(r[key]):.1f}" r="2.5" class="{cls}">'
                         f'<title>{r["threshold"]:.4f}: {r[key]:,} {key}</title></circle>')
    chosen, default = sweep.get("chosen"), sweep.get("default")
    if default is not None and x0 <= default <= x1 and (chosen is None or abs(chosen - default) > 1e-9):
        dx = X(default)
        parts.append(f'<line x1="{dx:.1f}" x2="{dx:.1f}" y1="{mt}" y2="{mt + ph}" class="chosen default"/>')
        parts.append(f'<text x="{dx + 4:.1f}" y="{mt + 26}" class="chosen-label">model default {default:.4g}</text>')
    if chosen is not None and x0 <= chosen <= x1:
        cx = X(chosen)
        what = "model default" if default is not None and abs(chosen - default) <= 1e-9 else "chosen"
        parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{mt}" y2="{mt + ph}" class="chosen"/>')
        parts.append(f'<text x="{cx + 4:.1f}" y="{mt + 12}" class="chosen-label">{what} {chosen:.4g}</text>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_ceiling(v: float) -> float:
    e = 10 ** math.floor(math.log10(max(v, 1)))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _short(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:,.0f}"


# -- groups --------------------------------------------------------------------------------

def group_list(cat: Catalog, run_id: int, page: int = 1, per_page: int = GROUPS_PER_PAGE,
               strip: int = 6) -> dict[str, Any]:
    """Duplicate groups (2+ members) of a run, largest first, one page of them.

    Each group: id, size, master, suppressed count, lowest similarity to master, and a strip of
    members (least similar to the master first) for a first look.
    """
    total = int(_one(cat,
        "SELECT count(*) FROM (SELECT group_id FROM run_members WHERE run_id = ? GROUP BY group_id HAVING count(*) >= 2)",
        [run_id])[0])
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, page), pages)
    groups = cat.sql(
        """SELECT group_id, count(*) AS size, any_value(master_id) AS master_id,
                  count(*) FILTER (WHERE is_suppressed) AS n_suppressed, min(sim_to_master) AS min_sim
           FROM run_members WHERE run_id = ? GROUP BY group_id HAVING count(*) >= 2
           ORDER BY size DESC, group_id LIMIT ? OFFSET ?""",
        [run_id, per_page, (page - 1) * per_page]).to_pylist()
    gids = [g["group_id"] for g in groups]
    strips: dict[int, list[dict[str, Any]]] = {g: [] for g in gids}
    if gids and strip > 0:
        marks = ", ".join("?" * len(gids))
        rows = cat.sql(
            f"""SELECT group_id, image_id, sim_to_master FROM (
                  SELECT group_id, image_id, sim_to_master,
                         row_number() OVER (PARTITION BY group_id ORDER BY sim_to_master, image_id) AS k
                  FROM run_members WHERE run_id = ? AND NOT is_master AND group_id IN ({marks}))
                WHERE k <= ? ORDER BY group_id, k""",
            [run_id, *gids, strip]).to_pylist()
        for r in rows:
            strips[r["group_id"]].append(r)
    ids = [g["master_id"] for g in groups] + [r["image_id"] for rs in strips.values() for r in rs]
    info = image_rows(cat, ids)
    for g in groups:
        g["master"] = info.get(g["master_id"], {"id": g["master_id"], "overrides": set(), "has_pixels": False})
        g["strip"] = [dict(info.get(r["image_id"], {"id": r["image_id"], "overrides": set(), "has_pixels": False}),
                           sim=r["sim_to_master"]) for r in strips[g["group_id"]]]
    return dict(groups=groups, total=total, page=page, pages=pages, per_page=per_page)


def group_detail(cat: Catalog, run_id: int, group_id: int, page: int = 1, per_page: int = MEMBERS_PER_PAGE,
                 sort: str = "sim_asc") -> dict[str, Any] | None:
    """One group of a run: its master and one page of members, or None when it does not exist."""
    head = _one(cat,
        """SELECT count(*), any_value(master_id), min(sim_to_master), count(*) FILTER (WHERE is_suppressed),
                  any_value(decided_by) FROM run_members WHERE run_id = ? AND group_id = ?""", [run_id, group_id])
    if not head or not head[0]:
        return None
    size, master_id, min_sim, n_supp, decided = int(head[0]), head[1], head[2], int(head[3]), head[4]
    order = {"sim_asc": "sim_to_master, image_id", "sim_desc": "sim_to_master DESC, image_id",
             "id": "image_id"}.get(sort, "sim_to_master, image_id")
    n_members = size - 1
    pages = max(1, math.ceil(n_members / per_page))
    page = min(max(1, page), pages)
    rows = cat.sql(
        f"""SELECT image_id, is_suppressed AS run_suppressed, sim_to_master FROM run_members
            WHERE run_id = ? AND group_id = ? AND NOT is_master ORDER BY {order} LIMIT ? OFFSET ?""",
        [run_id, group_id, per_page, (page - 1) * per_page]).to_pylist()
    info = image_rows(cat, [master_id] + [r["image_id"] for r in rows])
    members = []
    for r in rows:
        d = dict(info.get(r["image_id"], {"id": r["image_id"], "overrides": set(), "has_pixels": False}))
        d.update(sim=r["sim_to_master"], run_suppressed=r["run_suppressed"])
        members.append(d)
    master = dict(info.get(master_id, {"id": master_id, "overrides": set(), "has_pixels": False}), sim=1.0)
    return dict(group_id=group_id, size=size, master=master, members=members, min_sim=min_sim,
                n_suppressed=n_supp, decided_by=decided, page=page, pages=pages, per_page=per_page, sort=sort)


def member_page(cat: Catalog, run_id: int, group_id: int, image_id: str, sort: str = "sim_asc",
                per_page: int = MEMBERS_PER_PAGE) -> int | None:
    """The page of a group (in ``sort`` order) that shows ``image_id``; None for the master or a non-member."""
    row = _one(cat, "SELECT sim_to_master, is_master FROM run_members WHERE run_id = ? AND group_id = ? AND image_id = ?",
               [run_id, group_id, image_id])
    if row is None or row[1]:
        return None
    sim = row[0]
    before = {"sim_asc": "(sim_to_master < ? OR (sim_to_master = ? AND image_id < ?))",
              "sim_desc": "(sim_to_master > ? OR (sim_to_master = ? AND image_id < ?))",
              "id": "(image_id < ?)"}.get(sort, "(sim_to_master < ? OR (sim_to_master = ? AND image_id < ?))")
    params = [image_id] if sort == "id" else [sim, sim, image_id]
    n = _one(cat, f"SELECT count(*) FROM run_members WHERE run_id = ? AND group_id = ? AND NOT is_master AND {before}",
             [run_id, group_id, *params])[0]
    return int(n) // per_page + 1


@dataclass
class WeakestLink:
    """The lowest-similarity edge holding a group together (its bottleneck: below it the group splits)."""

    a: str
    b: str
    sim: float
    how: str  # "forest" (the run's cached similarity forest) or "exact" (computed on the group)


def weakest_link(cat: Catalog, run: dict[str, Any], group_id: int) -> WeakestLink | None:
    """The weakest link of a transitive (``components``) group: the minimum edge of its maximum spanning tree.

    Read from the cached similarity forest when it spans the group, else computed on the group's
    vectors for groups up to :data:`DENSE_MST_MAX` members. None for leader-mode runs (every
    member is within the threshold of its master there) or when it cannot be had cheaply.
    """
    if run.get("mode") != "components":
        return None
    ids = cat.con.execute("SELECT image_id FROM run_members WHERE run_id = ? AND group_id = ?",
                          [run["id"], group_id]).fetchall()
    ids = [r[0] for r in ids]
    if len(ids) < 2:
        return None
    try:
        es = cat.load_embeddings(run.get("model"))
    except NeardupError:
        return None
    pos = {k: i for i, k in enumerate(es.ids.tolist())}
    rows = np.array([pos[i] for i in ids if i in pos], dtype=np.int64)
    if len(rows) != len(ids):
        return None
    t = float(run["threshold"])
    wl = _weakest_from_forest(cat, es.model, es.version, rows, t, es.ids)
    if wl is not None:
        return wl
    if len(rows) > DENSE_MST_MAX:
        return None
    X = np.asarray(es.vectors[np.sort(rows)], dtype=np.float32)
    order = np.sort(rows)
    a, b, w = _max_spanning_min_edge(X)
    return WeakestLink(str(es.ids[order[a]]), str(es.ids[order[b]]), float(w), "exact")


def _weakest_from_forest(cat: Catalog, model: str, version: int, rows: np.ndarray, t: float,
                         all_ids: np.ndarray) -> WeakestLink | None:
    from ..incremental import load_forest, whole_catalog_forests

    best: tuple[float, Path] | None = None
    for f, p in whole_catalog_forests(cat, model):
        if f <= t + 1e-9 and (best is None or f > best[0]):
            best = (f, p)
    if best is None:
        return None
    try:
        forest = load_forest(best[1])
    except Exception:
        return None
    if forest.n != len(all_ids):
        return None
    src, dst, w = forest.edges_at(t)
    inside = np.zeros(forest.n, dtype=bool)
    inside[rows] = True
    sel = inside[src] & inside[dst]
    if int(sel.sum()) != len(rows) - 1:  # the forest does not span this group (e.g. not-duplicate exclusions)
        return None
    k = int(np.argmin(np.where(sel, w, np.inf)))
    return WeakestLink(str(all_ids[src[k]]), str(all_ids[dst[k]]), float(w[k]), "forest")


def _max_spanning_min_edge(X: np.ndarray) -> tuple[int, int, float]:
    """Prim's maximum spanning tree on a dense similarity matrix; returns its lightest edge."""
    n = len(X)
    S = X @ X.T
    in_tree = np.zeros(n, dtype=bool)
    best = S[0].copy()
    parent = np.zeros(n, dtype=np.int64)
    in_tree[0] = True
    best[0] = -np.inf
    low = (0, 0, np.inf)
    for _ in range(n - 1):
        cand = np.where(in_tree, -np.inf, best)
        k = int(np.argmax(cand))
        if cand[k] < low[2]:
            low = (int(parent[k]), k, float(cand[k]))
        in_tree[k] = True
        upd = S[k] > best
        upd &= ~in_tree
        best[upd] = S[k][upd]
        parent[upd] = k
    return low


# -- clusters ------------------------------------------------------------------------------

def clusters(cat: Catalog, strip: int = 10, limit: int | None = None) -> dict[str, Any]:
    """Per cluster: images before (all) and after (visible), and a strip of its unique members.

    Uses ``neardup.cluster`` output (``images.cluster_id``); the strip shows visible images,
    best score first. Empty with a hint when the collection has not been clustered.
    """
    have = set(cat.image_columns())
    if "cluster_id" not in have:
        return dict(clusters=[], reason="no clusters yet: run `neardup cluster --k 25`")
    rows = cat.sql(
        """SELECT cluster_id, count(*) AS before, count(*) FILTER (WHERE NOT is_suppressed) AS after
           FROM images WHERE cluster_id IS NOT NULL GROUP BY cluster_id ORDER BY before DESC, cluster_id""").to_pylist()
    if not rows:
        return dict(clusters=[], reason="no clusters yet: run `neardup cluster --k 25`")
    n_all = len(rows)
    totals = (sum(r["before"] for r in rows), sum(r["after"] for r in rows))
    if limit is not None:
        rows = rows[:limit]
    order = "score DESC NULLS LAST, " if "score" in have else ""
    picks = cat.sql(
        f"""SELECT cluster_id, id FROM (
              SELECT cluster_id, id, row_number() OVER (PARTITION BY cluster_id ORDER BY {order}id) AS k
              FROM images WHERE cluster_id IS NOT NULL AND NOT is_suppressed)
            WHERE k <= ? ORDER BY cluster_id, k""", [strip]).to_pylist()
    shown = {r["cluster_id"] for r in rows}
    picks = [p for p in picks if p["cluster_id"] in shown]
    info = image_rows(cat, [p["id"] for p in picks])
    by: dict[int, list[dict[str, Any]]] = {}
    for p in picks:
        by.setdefault(p["cluster_id"], []).append(info.get(p["id"], {"id": p["id"], "overrides": set(), "has_pixels": False}))
    extra = _cluster_table_rows(cat)
    for r in rows:
        r.update(extra.get(r["cluster_id"], {}))
        r["strip"] = by.get(r["cluster_id"], [])
        r["kept_pct"] = 100.0 * r["after"] / r["before"] if r["before"] else 0.0
    return dict(clusters=rows, reason=None, total_before=totals[0], total_after=totals[1], n_clusters=n_all)


def _cluster_table_rows(cat: Catalog) -> dict[int, dict[str, Any]]:
    """Duplicate groups, largest group and browse hint per cluster from ``neardup.cluster``, when it has a labelling."""
    try:
        from ..cluster import cluster_table

        table = cluster_table(cat)
    except Exception:  # no clustering recorded (cluster ids came from elsewhere), or the module is absent
        return {}
    return {int(r["cluster"]): dict(groups=r.get("groups"), largest_group=r.get("largest_group"), browse=r.get("browse"))
            for r in table.rows}


# -- threshold explorer --------------------------------------------------------------------

def bands_for(chosen: float | None, lo: float | None = None, step: float | None = None,
              n: int = 5) -> list[tuple[float, float]]:
    """Similarity bands: 0.95–0.96 … 0.99–1.00 by default; for a run with a lower threshold (other
    models' scales) five 0.05-wide bands from 0.1 below it; or ``n`` bands of ``step`` from ``lo``."""
    low_scale = chosen is not None and chosen < 0.96
    if step is None:
        step = 0.05 if low_scale and lo is None else 0.01
    if lo is None:
        lo = sweep_range(chosen)[0]
    out = []
    for k in range(n):
        a = round(lo + k * step, 6)
        b = round(min(1.0, lo + (k + 1) * step), 6)
        if a >= 1.0:
            break
        out.append((a, b))
    return out


def sample_pairs(cat: Catalog, bands: Sequence[tuple[float, float]], per_band: int = 6, *, model: str | None = None,
                 seed: int = 0, budget_s: float = 2.0) -> dict[str, Any]:
    """Random pairs of images whose similarity falls in each band, for the threshold explorer.

    Uses ``neardup.pairs`` when it is installed; otherwise scans random query rows against the
    whole collection (blocked matrix products) until every band has enough candidates or the
    time budget is spent, then samples ``per_band`` pairs per band.
    """
    try:
        es = cat.load_embeddings(model)
    except NeardupError as exc:
        return dict(bands=[], reason=str(exc))
    n = len(es)
    if n < 2:
        return dict(bands=[], reason="fewer than two images with embeddings")
    rng = np.random.default_rng(seed)
    X = es.vectors
    want = per_band * 8
    cand: list[list[tuple[int, int, float]]] = [[] for _ in bands]
    seen: set[tuple[int, int]] = set()
    los = np.array([b[0] for b in bands], dtype=np.float64)
    his = np.array([b[1] for b in bands], dtype=np.float64)
    queries = rng.permutation(n)
    t0 = time.perf_counter()
    qstep = 128
    cstep = 1 << 16
    for qs in range(0, n, qstep):
        q = np.sort(queries[qs:qs + qstep])
        Q = np.asarray(X[q], dtype=np.float32)
        for cs in range(0, n, cstep):
            S = Q @ np.asarray(X[cs:cs + cstep], dtype=np.float32).T
            for bi in range(len(bands)):
                if len(cand[bi]) >= want:
                    continue
                upper = S <= his[bi] + 1e-7 if his[bi] >= 1.0 else S < his[bi]
                qi, cj = np.nonzero((S >= los[bi]) & upper)
                if len(qi) > 4 * want:
                    pick = rng.choice(len(qi), 4 * want, replace=False)
                    qi, cj = qi[pick], cj[pick]
                for a, b in zip(qi.tolist(), cj.tolist()):
                    i, j = int(q[a]), cs + b
                    if i == j:
                        continue
                    key = (min(i, j), max(i, j))
                    if key in seen:
                        continue
                    seen.add(key)
                    cand[bi].append((key[0], key[1], float(S[a, b])))
                    if len(cand[bi]) >= want:
                        break
        if all(len(c) >= want for c in cand) or time.perf_counter() - t0 > budget_s:
            break
    out = []
    for (lo, hi), c in zip(bands, cand):
        if len(c) > per_band:
            idx = rng.choice(len(c), per_band, replace=False)
            c = [c[i] for i in sorted(idx)]
        out.append(dict(lo=lo, hi=hi, pairs=[dict(a=str(es.ids[i]), b=str(es.ids[j]), sim=s) for i, j, s in c]))
    ids = [p[k] for band in out for p in band["pairs"] for k in ("a", "b")]
    info = image_rows(cat, ids)
    for band in out:
        for p in band["pairs"]:
            p["ia"] = info.get(p["a"], {"id": p["a"], "overrides": set(), "has_pixels": False})
            p["ib"] = info.get(p["b"], {"id": p["b"], "overrides": set(), "has_pixels": False})
    return dict(bands=out, reason=None, model=es.model, searched=min(n, qs + qstep), n=n)


def mark_grouped(cat: Catalog, ex: dict[str, Any], run_id: int | None) -> None:
    """Tag each sampled pair with whether the run put both images in one group (``p["same_group"]``)."""
    if run_id is None:
        return
    ids = sorted({p[k] for band in ex.get("bands", []) for p in band["pairs"] for k in ("a", "b")})
    if not ids:
        return
    group: dict[str, int] = {}
    for s in range(0, len(ids), 500):
        chunk = ids[s:s + 500]
        for image_id, gid in cat.con.execute(
                f"SELECT image_id, group_id FROM run_members WHERE run_id = ? AND image_id IN ({', '.join('?' * len(chunk))})",
                [run_id, *chunk]).fetchall():
            group[image_id] = gid
    for band in ex["bands"]:
        for p in band["pairs"]:
            ga, gb = group.get(p["a"]), group.get(p["b"])
            p["same_group"] = None if ga is None or gb is None else ga == gb


def band_pair_counts(sweep: dict[str, Any], bands: Sequence[tuple[float, float]]) -> dict[tuple[float, float], int]:
    """Pairs per band from the sweep's pair counts (pairs >= lo minus pairs >= hi), where both are known."""
    by_t = {round(r["threshold"], 4): r["pairs"] for r in sweep.get("rows") or []}
    out = {}
    for lo, hi in bands:
        a, b = by_t.get(round(lo, 4)), by_t.get(round(hi, 4))
        if a is not None and b is not None:
            out[(lo, hi)] = max(0, a - b)
    return out
